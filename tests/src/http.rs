//! A small HTTP/1.1 client for sending requests through the gateway.
//!
//! Each request uses a fresh connection (no pooling): a pooled connection that Envoy closed
//! while idle (for instance when a listener is drained after an update) would otherwise
//! surface as a spurious failure that says nothing about routing.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Longer than any route timeout a test configures, so a gateway timeout (504) is what a
/// test observes, never a client-side one.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts building a request to `127.0.0.1:port`.
pub fn request(port: u16) -> RequestBuilder {
    RequestBuilder {
        port,
        method: Method::GET,
        path: "/".to_owned(),
        headers: Vec::new(),
        body: Bytes::new(),
    }
}

/// Sends `GET path` to `127.0.0.1:port`.
pub async fn get(port: u16, path: &str) -> anyhow::Result<Response> {
    request(port).path(path).send().await
}

/// A request being built; see [`request`].
#[derive(Debug, Clone)]
pub struct RequestBuilder {
    port: u16,
    method: Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Bytes,
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

    /// Sends the request and reads the whole response.
    pub async fn send(&self) -> anyhow::Result<Response> {
        let uri = format!("http://127.0.0.1:{}{}", self.port, self.path);
        let mut builder = hyper::Request::builder()
            .method(self.method.clone())
            .uri(&uri);
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(Full::new(self.body.clone()))
            .with_context(|| format!("building {} {uri}", self.method))?;
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http::<Full<Bytes>>();
        let exchange = async {
            let response = client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            anyhow::Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
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

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
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
