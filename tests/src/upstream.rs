//! Test upstreams: small real HTTP/1.1 servers running as tasks in the test's runtime.
//!
//! Each answers every request with a JSON echo of what it received,
//! `{"upstream": NAME, "method": …, "path": …, "headers": {…}}`, so a test can tell which
//! service Envoy chose and what path and headers reached it. Options: a fixed status, and a
//! delay for chosen paths (to provoke route timeouts). Every request is counted.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// Builder for a test upstream.
#[derive(Debug, Clone)]
pub struct Upstream {
    name: String,
    status: StatusCode,
    delays: HashMap<String, Duration>,
}

impl Upstream {
    /// An upstream that identifies itself as `name` in its echo.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            status: StatusCode::OK,
            delays: HashMap::new(),
        }
    }

    /// Answers every request with `status` (the body is still the echo).
    pub fn status(mut self, status: u16) -> Self {
        self.status = StatusCode::from_u16(status).expect("a valid HTTP status");
        self
    }

    /// Waits `delay` before answering requests whose path (without query) is exactly `path`.
    pub fn delay(mut self, path: &str, delay: Duration) -> Self {
        self.delays.insert(path.to_owned(), delay);
        self
    }

    /// Binds `127.0.0.1:0` and starts serving; the server stops when the handle is dropped.
    pub async fn spawn(self) -> UpstreamHandle {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an upstream on 127.0.0.1:0");
        let addr = listener.local_addr().expect("upstream local address");
        let state = Arc::new(State {
            config: self,
            requests: AtomicUsize::new(0),
            paths: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(serve(listener, state.clone()));
        UpstreamHandle { addr, state, task }
    }
}

/// A running upstream; dropping it stops the server and its connections.
#[derive(Debug)]
pub struct UpstreamHandle {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl UpstreamHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, as written in a routes.yaml `endpoints:` list.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    pub fn name(&self) -> &str {
        &self.state.config.name
    }

    /// How many requests have arrived so far (counted before any delay).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// The paths (with query) of every request received, in arrival order.
    pub fn paths(&self) -> Vec<String> {
        self.state
            .paths
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl Drop for UpstreamHandle {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

#[derive(Debug)]
struct State {
    config: Upstream,
    requests: AtomicUsize,
    paths: Mutex<Vec<String>>,
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Transient accept errors (e.g. EMFILE under load) must not end the server.
                Err(_) => continue,
            },
            // Reap finished connection tasks so the set does not grow without bound.
            Some(_) = connections.join_next() => continue,
        };
        let state = state.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| answer(request, state.clone()));
            // A client hanging up mid-request is normal in these tests (timeouts, resets).
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    request: hyper::Request<Incoming>,
    state: Arc<State>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let path = request.uri().path_and_query().map_or_else(
        || request.uri().path().to_owned(),
        |pq| pq.as_str().to_owned(),
    );
    state
        .paths
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(path.clone());
    if let Some(delay) = state.config.delays.get(request.uri().path()) {
        tokio::time::sleep(*delay).await;
    }
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                serde_json::Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()),
            )
        })
        .collect();
    let echo = serde_json::json!({
        "upstream": state.config.name,
        "method": request.method().as_str(),
        "path": path,
        "headers": headers,
    });
    let response = hyper::Response::builder()
        .status(state.config.status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(echo.to_string())))
        .expect("a response built from valid parts");
    Ok(response)
}
