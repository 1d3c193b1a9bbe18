//! The soak's load: a fixed pool of keep-alive HTTP/1.1 connections to Envoy carrying a
//! fixed mix of requests, either closed-loop (each connection sends its next request as soon
//! as the last one answered: the capacity) or open-loop (requests are due at a fixed rate
//! whatever the answers; a request waits in a queue while every connection is busy).
//!
//! `wrk`, which `e2e_bench` drives, is closed-loop only, sends one request line, and counts a
//! 429 as a failure; the soak needs a rate, a mix, a token that changes under way and 429s
//! that are right answers. Open-loop latency runs from the moment a request was due, not
//! from when a connection was free to send it, so a stall shows in the percentiles instead
//! of quietly lowering the rate (coordinated omission).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use crate::keys::Tokens;

/// Keep-alive connections from the load to Envoy, in both modes: as many as `e2e_bench`
/// opens, enough to keep Envoy's one worker busy without making queueing the whole latency.
pub const CONNECTIONS: usize = 16;

/// A request still unanswered this long after it was due is an error. Far above any
/// latency the chain has at half its capacity; the sidecar timeouts are 1 s.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The rate limit of the `x-client-id` rule (`per: second`, fixed window), which the
/// greedy client exceeds on purpose and every other client id (used once) never reaches.
pub const CLIENT_BUDGET_PER_SECOND: u64 = 5;

/// What a request is for; each has its own right answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `/public/…`, no credential: 200.
    Public,
    /// `/orders/…` with a token of the current key: 200.
    Protected,
    /// `/metered/…` with a token and an `x-client-id` used once: 200 (within both budgets).
    Metered,
    /// `/metered/…` with a token and `x-client-id: greedy`, sent faster than its budget:
    /// 200 while the budget lasts, then 429.
    Greedy,
}

/// One cycle of the mix: 40% public, 30% protected, 25% metered, 5% greedy.
const MIX: [Class; 20] = {
    use Class::*;
    [
        Public, Protected, Metered, Public, Protected, Metered, Public, Protected, Public, Metered,
        Greedy, Public, Protected, Metered, Public, Protected, Public, Metered, Protected, Public,
    ]
};

/// The share of the mix that is metered (a fresh client id each): how many rate-limit keys
/// a second of load creates.
pub const METERED_SHARE: f64 = 5.0 / 20.0;

/// The greedy client's share of the mix.
pub const GREEDY_SHARE: f64 = 1.0 / 20.0;

impl Class {
    fn of(seq: u64) -> Class {
        MIX[(seq % MIX.len() as u64) as usize]
    }
}

/// How one request ended, judged by its class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    /// The greedy client's 429: a right answer.
    Limited,
    Error,
}

/// What the load saw in one interval.
#[derive(Debug, Default, Clone)]
pub struct IntervalStats {
    pub requests: u64,
    pub errors: u64,
    /// 429s to the greedy client.
    pub limited: u64,
    /// The greedy client's requests that were let through.
    pub greedy_admitted: u64,
    /// Microseconds from due to answered, every request of the interval.
    latencies_us: Vec<u32>,
    /// The first few errors, as text.
    pub error_samples: Vec<String>,
}

impl IntervalStats {
    /// The `p` quantile of the latencies by nearest rank, as `testkit::bench::percentile`
    /// takes it, in milliseconds.
    pub fn percentile_ms(&mut self, p: f64) -> f64 {
        self.latencies_us.sort_unstable();
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let rank = ((self.latencies_us.len() as f64 * p).ceil() as usize)
            .clamp(1, self.latencies_us.len());
        f64::from(self.latencies_us[rank - 1]) / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.latencies_us
            .iter()
            .max()
            .map_or(0.0, |us| f64::from(*us) / 1000.0)
    }
}

/// What the load saw in one second: enough to find when the slow requests were due.
#[derive(Debug, Default, Clone, Copy)]
pub struct SecondStats {
    pub requests: u32,
    /// Requests slower than [`SLOW`].
    pub slow: u32,
    pub max_us: u32,
}

/// A request this slow is counted per second, so that the report can say when they were.
pub const SLOW: Duration = Duration::from_millis(100);

/// Per-interval and per-second statistics, filled by every connection.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    interval: Duration,
    intervals: Mutex<Vec<IntervalStats>>,
    seconds: Mutex<Vec<SecondStats>>,
}

/// How many error texts an interval keeps.
const ERROR_SAMPLES: usize = 10;

impl Recorder {
    /// Intervals of `interval` counted from `start` by when each request was due.
    pub fn new(start: Instant, interval: Duration) -> Self {
        Recorder {
            start,
            interval,
            intervals: Mutex::new(Vec::new()),
            seconds: Mutex::new(Vec::new()),
        }
    }

    fn record(&self, due: Instant, class: Class, outcome: Result<u16, String>) {
        let latency = due.elapsed();
        let latency_us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        let since_start = due.saturating_duration_since(self.start);
        {
            let mut seconds = self
                .seconds
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let second = since_start.as_secs() as usize;
            if seconds.len() <= second {
                seconds.resize_with(second + 1, SecondStats::default);
            }
            let stats = &mut seconds[second];
            stats.requests += 1;
            stats.slow += u32::from(latency >= SLOW);
            stats.max_us = stats.max_us.max(latency_us);
        }
        let index = (since_start.as_nanos() / self.interval.as_nanos().max(1)) as usize;
        let verdict = match (&outcome, class) {
            (Ok(200), _) => Verdict::Ok,
            (Ok(429), Class::Greedy) => Verdict::Limited,
            _ => Verdict::Error,
        };
        let mut intervals = self
            .intervals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if intervals.len() <= index {
            intervals.resize_with(index + 1, IntervalStats::default);
        }
        let stats = &mut intervals[index];
        stats.requests += 1;
        stats.latencies_us.push(latency_us);
        match verdict {
            Verdict::Ok if class == Class::Greedy => stats.greedy_admitted += 1,
            Verdict::Ok => {}
            Verdict::Limited => stats.limited += 1,
            Verdict::Error => {
                stats.errors += 1;
                if stats.error_samples.len() < ERROR_SAMPLES {
                    let what = match outcome {
                        Ok(status) => format!("status {status}"),
                        Err(error) => error,
                    };
                    stats.error_samples.push(format!(
                        "{class:?} at {:.1} s: {what}",
                        due.saturating_duration_since(self.start).as_secs_f64()
                    ));
                }
            }
        }
    }

    /// Every second so far, by when its requests were due.
    pub fn take_seconds(&self) -> Vec<SecondStats> {
        std::mem::take(
            &mut *self
                .seconds
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Every interval so far (intervals without a request are empty).
    pub fn take(&self) -> Vec<IntervalStats> {
        std::mem::take(
            &mut *self
                .intervals
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

/// The tokens requests carry, swapped whole at each key rotation. A request holds the
/// `Arc` of the set it used until it is answered, so the rotation can tell when no request
/// with the old key's tokens is in flight any more.
pub type TokenSlot = Arc<RwLock<Arc<Tokens>>>;

/// A request that is due.
struct Due {
    seq: u64,
    at: Instant,
}

/// Where a connection gets its next request.
enum Source {
    /// Open loop: from the scheduler's queue.
    Queue(Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Due>>>),
    /// Closed loop: at once, until `until`.
    Now {
        next: Arc<AtomicU64>,
        until: Instant,
    },
}

impl Source {
    async fn next(&self) -> Option<Due> {
        match self {
            Source::Queue(queue) => queue.lock().await.recv().await,
            Source::Now { next, until } => {
                let at = Instant::now();
                (at < *until).then(|| Due {
                    seq: next.fetch_add(1, Ordering::Relaxed),
                    at,
                })
            }
        }
    }
}

/// Where the load goes and what it carries.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tokens: TokenSlot,
}

/// Closed loop on [`CONNECTIONS`] connections for `duration`, recorded into `recorder`.
pub async fn closed_loop(target: &Target, duration: Duration, recorder: Arc<Recorder>) {
    let source = Arc::new(Source::Now {
        next: Arc::new(AtomicU64::new(0)),
        until: Instant::now() + duration,
    });
    run_connections(target, source, recorder).await;
}

/// Open loop at `rate` requests per second from `start` until `until`, recorded into
/// `recorder`; returns once every request due before `until` is answered (or failed).
pub async fn open_loop(
    target: &Target,
    rate: f64,
    start: Instant,
    until: Instant,
    recorder: Arc<Recorder>,
) {
    let (queue, receiver) = mpsc::unbounded_channel();
    let source = Arc::new(Source::Queue(Arc::new(tokio::sync::Mutex::new(receiver))));
    let connections = tokio::spawn({
        let target = target.clone();
        async move { run_connections(&target, source, recorder).await }
    });
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut seq: u64 = 0;
    loop {
        let now = Instant::now();
        let mut due = start + period.mul_f64(seq as f64);
        while due <= now && due < until {
            // The connections outlive the queue's sender, so a send cannot fail.
            let _ = queue.send(Due { seq, at: due });
            seq += 1;
            due = start + period.mul_f64(seq as f64);
        }
        if due >= until {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
    }
    drop(queue);
    if let Err(error) = connections.await {
        panic!("the load's connections failed: {error}");
    }
}

async fn run_connections(target: &Target, source: Arc<Source>, recorder: Arc<Recorder>) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        let (target, source, recorder) = (target.clone(), source.clone(), recorder.clone());
        tasks.spawn(async move { connection(target, source, recorder).await });
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(error) = done {
            panic!("a load connection failed: {error}");
        }
    }
}

/// One keep-alive connection: sends its requests one at a time, reconnecting after an
/// error or a `connection: close`.
async fn connection(target: Target, source: Arc<Source>, recorder: Arc<Recorder>) {
    let mut sender: Option<SendRequest<Empty<Bytes>>> = None;
    while let Some(due) = source.next().await {
        let class = Class::of(due.seq);
        if due.at.elapsed() >= REQUEST_TIMEOUT {
            recorder.record(
                due.at,
                class,
                Err("never sent: every connection was busy".into()),
            );
            continue;
        }
        let tokens = target
            .tokens
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let outcome = match ready(&mut sender, target.addr).await {
            Ok(ready) => {
                let request = build(class, due.seq, &tokens);
                let remaining = REQUEST_TIMEOUT.saturating_sub(due.at.elapsed());
                match tokio::time::timeout(remaining, exchange(ready, request)).await {
                    Ok(Ok(status)) => Ok(status),
                    Ok(Err(error)) => Err(error),
                    Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?} of due")),
                }
            }
            Err(error) => Err(error),
        };
        if outcome.is_err() {
            // Whatever state the connection is in, the next request gets a fresh one.
            sender = None;
        }
        recorder.record(due.at, class, outcome);
        drop(tokens);
    }
}

/// A connection ready to send: the current one, or a new one if it was closed (Envoy
/// closes a keep-alive connection after answering `connection: close`, as when it drains
/// a listener). Only a failure to connect is an error: no request was sent on a closed one.
async fn ready(
    sender: &mut Option<SendRequest<Empty<Bytes>>>,
    addr: SocketAddr,
) -> Result<&mut SendRequest<Empty<Bytes>>, String> {
    if let Some(current) = sender.as_mut() {
        if current.ready().await.is_err() {
            *sender = None;
        }
    }
    if sender.is_none() {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (new, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/1.1 handshake with {addr}: {e}"))?;
        tokio::spawn(async move {
            // Ends when the connection closes; the next send then reconnects.
            let _ = driver.await;
        });
        *sender = Some(new);
    }
    match sender.as_mut() {
        Some(ready) => Ok(ready),
        None => Err("no connection".into()),
    }
}

/// Sends `request`, reads the whole answer, returns its status.
async fn exchange(
    sender: &mut SendRequest<Empty<Bytes>>,
    request: hyper::Request<Empty<Bytes>>,
) -> Result<u16, String> {
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("response body: {e}"))?;
    Ok(status)
}

/// The request number `seq` of the mix.
fn build(class: Class, seq: u64, tokens: &Tokens) -> hyper::Request<Empty<Bytes>> {
    let bearer = || tokens.bearer(seq);
    let (path, headers): (String, Vec<(&str, String)>) = match class {
        Class::Public => (format!("/public/{}", seq % 100), Vec::new()),
        Class::Protected => (
            format!("/orders/{}", seq % 100),
            vec![("authorization", bearer())],
        ),
        Class::Metered => (
            "/metered/x".to_owned(),
            vec![
                ("authorization", bearer()),
                ("x-client-id", format!("c-{seq}")),
            ],
        ),
        Class::Greedy => (
            "/metered/x".to_owned(),
            vec![
                ("authorization", bearer()),
                ("x-client-id", "greedy".to_owned()),
            ],
        ),
    };
    let mut request = hyper::Request::builder()
        .uri(path)
        .header("host", "soak.example");
    for (name, value) in headers {
        request = request.header(name, value);
    }
    request
        .body(Empty::new())
        .expect("a request built from valid parts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_has_the_shares_it_announces() {
        let count = |class| MIX.iter().filter(|c| **c == class).count() as f64;
        assert_eq!(count(Class::Metered) / MIX.len() as f64, METERED_SHARE);
        assert_eq!(count(Class::Greedy) / MIX.len() as f64, GREEDY_SHARE);
        assert_eq!(count(Class::Public), 8.0);
        assert_eq!(count(Class::Protected), 6.0);
    }

    #[test]
    fn only_the_greedy_client_may_be_answered_429() {
        let recorder = Recorder::new(Instant::now(), Duration::from_secs(60));
        let due = Instant::now();
        recorder.record(due, Class::Greedy, Ok(429));
        recorder.record(due, Class::Greedy, Ok(200));
        recorder.record(due, Class::Metered, Ok(429));
        recorder.record(due, Class::Public, Err("reset".into()));
        recorder.record(due, Class::Protected, Ok(200));
        let stats = &recorder.take()[0];
        assert_eq!(stats.requests, 5);
        assert_eq!(stats.limited, 1);
        assert_eq!(stats.greedy_admitted, 1);
        assert_eq!(stats.errors, 2);
    }
}
