//! Test upstreams: small real HTTP/1.1 servers running as tasks in the test's runtime.
//!
//! Each answers every request with a JSON echo of what it received,
//! `{"upstream": NAME, "method": …, "path": …, "headers": {…}}`, so a test can tell which
//! service Envoy chose and what path and headers reached it. Options: a fixed status, a
//! delay for chosen paths (to provoke route timeouts), extra response headers for chosen
//! paths (`cache-control`, `set-cookie`, for caches), and a health path whose status the
//! test flips at run time ([`UpstreamHandle::set_health`]). Every request is counted, except
//! those to the health path, so that counts show where traffic went. An upstream can be
//! killed, its listener and connections closed at once as a crashed process's are, and
//! restarted on the same address ([`UpstreamHandle::kill`], [`UpstreamHandle::restart`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
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
    /// Path → (how many requests fail, with which status).
    failures: HashMap<String, (usize, StatusCode)>,
    health_path: Option<String>,
    /// Path → headers added to its answers.
    headers: HashMap<String, Vec<(String, String)>>,
}

impl Upstream {
    /// An upstream that identifies itself as `name` in its echo.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            status: StatusCode::OK,
            delays: HashMap::new(),
            failures: HashMap::new(),
            health_path: None,
            headers: HashMap::new(),
        }
    }

    /// Adds `name: value` to every answer to exactly `path` (without query).
    pub fn header_on(mut self, path: &str, name: &str, value: &str) -> Self {
        self.headers
            .entry(path.to_owned())
            .or_default()
            .push((name.to_owned(), value.to_owned()));
        self
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

    /// Answers `path` (without query) with a status the test sets with
    /// [`UpstreamHandle::set_health`], 200 until then, for active health checks.
    pub fn health(mut self, path: &str) -> Self {
        self.health_path = Some(path.to_owned());
        self
    }

    /// Answers the first `count` requests to exactly `path` with `status`, later ones as
    /// usual: an upstream that recovers, for retries.
    pub fn fail_first(mut self, path: &str, count: usize, status: u16) -> Self {
        let status = StatusCode::from_u16(status).expect("a valid HTTP status");
        self.failures.insert(path.to_owned(), (count, status));
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
            health: AtomicU16::new(200),
            paths: Mutex::new(Vec::new()),
            failed: Mutex::new(HashMap::new()),
        });
        let task = tokio::spawn(serve(listener, state.clone()));
        UpstreamHandle {
            addr,
            state,
            task: Some(task),
        }
    }
}

/// A running upstream; dropping it stops the server and its connections.
#[derive(Debug)]
pub struct UpstreamHandle {
    addr: SocketAddr,
    state: Arc<State>,
    /// The accept loop; `None` once [killed](UpstreamHandle::kill).
    task: Option<JoinHandle<()>>,
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

    /// Sets the status the health path answers from now on.
    pub fn set_health(&self, status: u16) {
        self.state.health.store(status, Ordering::SeqCst);
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

impl UpstreamHandle {
    /// Stops serving at once, as `kill -9` stops an upstream process: the listener and every
    /// open connection are closed, and answers not yet written are never sent. Returns once
    /// the port is closed.
    pub async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            // Aborting the accept loop drops its JoinSet, which aborts every connection task.
            task.abort();
            // Cancelled is the expected end; the listener is dropped by then.
            let _ = task.await;
        }
    }

    /// Kills the upstream if it serves and serves again on the same address, with the same
    /// behaviour and counters, as a supervisor restarts a crashed upstream process.
    pub async fn restart(&mut self) {
        self.kill().await;
        // tokio sets SO_REUSEADDR, so the connections the kill left in TIME_WAIT do not keep
        // the port.
        let listener = TcpListener::bind(self.addr).await.unwrap_or_else(|e| {
            panic!("bind upstream {} again on {}: {e}", self.name(), self.addr)
        });
        self.task = Some(tokio::spawn(serve(listener, self.state.clone())));
    }
}

impl Drop for UpstreamHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Aborting the accept loop drops its JoinSet, which aborts every connection task.
            task.abort();
        }
    }
}

#[derive(Debug)]
struct State {
    config: Upstream,
    requests: AtomicUsize,
    health: AtomicU16,
    paths: Mutex<Vec<String>>,
    /// Path → how many requests to it have been failed on purpose.
    failed: Mutex<HashMap<String, usize>>,
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
    if state.config.health_path.as_deref() == Some(request.uri().path()) {
        let status = StatusCode::from_u16(state.health.load(Ordering::SeqCst))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let response = hyper::Response::builder()
            .status(status)
            .body(Full::new(Bytes::new()))
            .expect("a response built from valid parts");
        return Ok(response);
    }
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
    let mut status = state.config.status;
    if let Some((count, failure)) = state.config.failures.get(request.uri().path()) {
        let mut failed = state
            .failed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let so_far = failed.entry(request.uri().path().to_owned()).or_insert(0);
        if *so_far < *count {
            *so_far += 1;
            status = *failure;
        }
    }
    let mut response = hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (name, value) in state
        .config
        .headers
        .get(request.uri().path())
        .into_iter()
        .flatten()
    {
        response = response.header(name, value);
    }
    let response = response
        .body(Full::new(Bytes::from(echo.to_string())))
        .expect("a response built from valid parts");
    Ok(response)
}
