//! A steady stream of requests through the gateway, recording every failure.
//!
//! Used to show that something (a control-plane restart, a reload) happens without a single
//! request failing: the stream runs in the background while the test does its thing, then
//! the test stops it and inspects the failures. The stream is paced and bounded so that it
//! cannot starve the processes under test on a small machine nor run forever.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::http;

/// Pause between requests: enough traffic to cover every moment of a restart, little enough
/// load to leave the 2 cores to Envoy and the control plane.
const PACE: Duration = Duration::from_millis(10);

/// An upper bound so a stream whose test forgot to stop it (or is stuck) still ends.
const MAX_REQUESTS: usize = 20_000;

/// Starts sending `GET path` to `127.0.0.1:port`, expecting a 200 from upstream `upstream`.
pub fn traffic(port: u16, path: &str, upstream: &str) -> Traffic {
    traffic_of(http::request(port).path(path), upstream)
}

/// Starts sending `request` over and over (with its headers: a token, say), expecting a 200
/// from upstream `upstream`.
pub fn traffic_of(request: http::RequestBuilder, upstream: &str) -> Traffic {
    let shared = Arc::new(Shared::default());
    let task = tokio::spawn(run(request, upstream.to_owned(), shared.clone()));
    Traffic {
        shared,
        task: Some(task),
    }
}

/// A running stream of requests; see [`traffic`]. Dropping it stops the stream.
#[derive(Debug)]
pub struct Traffic {
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    sent: AtomicUsize,
    failures: Mutex<Vec<String>>,
    requests: Mutex<Vec<Sent>>,
}

/// One request of a stream.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// When it was sent.
    pub at: Instant,
    /// From sending it to having the whole response (or the error).
    pub took: Duration,
    pub ok: bool,
    /// The response's status; `None` when none came.
    pub status: Option<u16>,
}

/// What a stopped stream saw.
#[derive(Debug, Clone)]
pub struct TrafficReport {
    pub sent: usize,
    /// One line per failed request: its number and what went wrong.
    pub failures: Vec<String>,
    /// Every request, in order: how long it took and whether it succeeded.
    pub requests: Vec<Sent>,
    /// Whether the stream ended by reaching its bound rather than being stopped.
    pub hit_bound: bool,
}

impl TrafficReport {
    /// Asserts that the stream ran until stopped and that every request of it succeeded;
    /// `across` names what it ran through (for the message).
    pub fn assert_every_request_succeeded(&self, across: &str) {
        assert!(
            !self.hit_bound,
            "the traffic ran out before the test finished"
        );
        assert!(
            self.failures.is_empty(),
            "{} of {} requests failed across {across}:\n{}",
            self.failures.len(),
            self.sent,
            self.failures.join("\n")
        );
    }
}

impl Traffic {
    /// Requests completed so far (successful or not).
    pub fn sent(&self) -> usize {
        self.shared.sent.load(Ordering::SeqCst)
    }

    /// How many of the latest requests passed, counting back from the last to the latest
    /// that failed.
    pub fn passing_in_a_row(&self) -> usize {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .rev()
            .take_while(|sent| sent.ok)
            .count()
    }

    /// Stops the stream after the request in flight and reports.
    pub async fn stop(mut self) -> TrafficReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        let task = self.task.take().expect("a stream is stopped once");
        let hit_bound = task.is_finished();
        if let Err(error) = task.await {
            panic!("traffic loop failed: {error}");
        }
        let failures = self
            .shared
            .failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let requests = self
            .shared
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        TrafficReport {
            sent: self.sent(),
            failures,
            requests,
            hit_bound,
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn run(request: http::RequestBuilder, upstream: String, shared: Arc<Shared>) {
    let mut pace = tokio::time::interval(PACE);
    for number in 1..=MAX_REQUESTS {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        pace.tick().await;
        let started = Instant::now();
        let (outcome, status) = match request.send().await {
            Ok(response) => (
                response.expect_upstream(&upstream).map(|_| ()),
                Some(response.status.as_u16()),
            ),
            Err(error) => (Err(error), None),
        };
        shared
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Sent {
                at: started,
                took: started.elapsed(),
                ok: outcome.is_ok(),
                status,
            });
        if let Err(error) = outcome {
            shared
                .failures
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(format!(
                    "request {number} ({:?}): {error:#}",
                    started.elapsed()
                ));
        }
        shared.sent.fetch_add(1, Ordering::SeqCst);
    }
}
