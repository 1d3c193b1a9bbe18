//! A small HTTP client for sending requests through the gateway: HTTP/1.1, or HTTP/2 with
//! prior knowledge (h2c); [`crate::tls`] sends the same requests over TLS.
//!
//! Each request uses a fresh connection (no pooling): a pooled connection that Envoy closed
//! while idle (for instance when a listener is drained after an update) would otherwise
//! surface as a spurious failure that says nothing about routing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate_testkit::process::Process;

/// Longer than any route timeout a test configures, so a gateway timeout (504) is what a
/// test observes, never a client-side one.
pub(crate) const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts building a request to `127.0.0.1:port`.
pub fn request(port: u16) -> RequestBuilder {
    request_to(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
}

/// Starts building a request to `addr`, e.g. a service in a network namespace.
pub fn request_to(addr: SocketAddr) -> RequestBuilder {
    RequestBuilder {
        addr,
        method: Method::GET,
        path: "/".to_owned(),
        headers: Vec::new(),
        body: Bytes::new(),
        http2_prior_knowledge: false,
    }
}

/// Sends `GET path` to `127.0.0.1:port`.
pub async fn get(port: u16, path: &str) -> anyhow::Result<Response> {
    request(port).path(path).send().await
}

/// Sends `GET path` to `addr`.
pub async fn get_at(addr: SocketAddr, path: &str) -> anyhow::Result<Response> {
    request_to(addr).path(path).send().await
}

/// Polls `GET http://{addr}{path}` until it answers 200. Panics with
/// the last answer once `patience` runs out, and at once if `process` exits (a service that
/// failed to start must not look ready because something else answers its port).
pub async fn wait_until_ok(
    process: &mut Process,
    addr: SocketAddr,
    path: &str,
    patience: Duration,
) {
    process
        .wait_until_ready(patience, &format!("answering 200 on {path}"), async || {
            get_at(addr, path).await?.expect_status(200)?;
            anyhow::Ok(())
        })
        .await;
}

/// A request being built; see [`request`].
#[derive(Debug, Clone)]
pub struct RequestBuilder {
    addr: SocketAddr,
    method: Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Bytes,
    http2_prior_knowledge: bool,
}

impl RequestBuilder {
    pub fn method(mut self, method: &str) -> Self {
        self.method = Method::from_bytes(method.as_bytes()).expect("a valid HTTP method");
        self
    }

    /// Path and query, e.g. `/api/v1/invoices?page=2`.
    pub fn path(mut self, path: &str) -> Self {
        self.path = path.to_owned();
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Speaks HTTP/2 from the first byte, without TLS or an upgrade (RFC 9113 §3.3).
    pub fn http2_prior_knowledge(mut self) -> Self {
        self.http2_prior_knowledge = true;
        self
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The request for `uri` (absolute, or origin-form with `host` set by the caller).
    pub(crate) fn build(&self, uri: &str) -> anyhow::Result<hyper::Request<Full<Bytes>>> {
        let mut builder = hyper::Request::builder()
            .method(self.method.clone())
            .uri(uri);
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        builder
            .body(Full::new(self.body.clone()))
            .with_context(|| format!("building {} {uri}", self.method))
    }

    /// Sends the request and reads the whole response.
    pub async fn send(&self) -> anyhow::Result<Response> {
        let uri = format!("http://{}{}", self.addr, self.path);
        let request = self.build(&uri)?;
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .http2_only(self.http2_prior_knowledge)
            .build_http::<Full<Bytes>>();
        self.within_timeout(&uri, async {
            read_response(client.request(request).await?).await
        })
        .await
    }

    pub(crate) fn path_and_query(&self) -> &str {
        &self.path
    }

    /// Runs `exchange` under the client timeout, naming the request in any error.
    pub(crate) async fn within_timeout<T>(
        &self,
        uri: &str,
        exchange: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        tokio::time::timeout(CLIENT_TIMEOUT, exchange)
            .await
            .with_context(|| {
                format!(
                    "{} {uri}: no response within {CLIENT_TIMEOUT:?}",
                    self.method
                )
            })?
            .with_context(|| format!("{} {uri}", self.method))
    }
}

/// Reads a whole response.
pub(crate) async fn read_response(
    response: hyper::Response<hyper::body::Incoming>,
) -> anyhow::Result<Response> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    /// The HTTP version the response arrived in.
    pub version: hyper::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response body is not JSON: {:?}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
        self.headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    }

    /// The name of the test upstream that answered, from its JSON echo.
    pub fn upstream(&self) -> Option<String> {
        let echo = self.json().ok()?;
        echo.get("upstream")?.as_str().map(str::to_owned)
    }

    /// The path (with query) the test upstream saw, from its JSON echo.
    pub fn upstream_path(&self) -> Option<String> {
        let echo = self.json().ok()?;
        echo.get("path")?.as_str().map(str::to_owned)
    }

    /// The value of request header `name` as the test upstream received it, from its JSON
    /// echo (the demo upstream of `make up` and compose/ echoes the same way).
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        let echo = self.json().ok()?;
        echo["headers"][name].as_str().map(str::to_owned)
    }

    /// Fails unless the response is a 200 from upstream `name`; the error shows the response.
    pub fn expect_upstream(&self, name: &str) -> anyhow::Result<&Self> {
        anyhow::ensure!(
            self.status == StatusCode::OK && self.upstream().as_deref() == Some(name),
            "expected 200 from upstream {name:?}, got {} with body {:?}",
            self.status,
            self.text()
        );
        Ok(self)
    }

    /// Fails unless the status is `status`; the error shows the response.
    pub fn expect_status(&self, status: u16) -> anyhow::Result<&Self> {
        anyhow::ensure!(
            self.status.as_u16() == status,
            "expected status {status}, got {} with body {:?}",
            self.status,
            self.text()
        );
        Ok(self)
    }
}
