//! Fetching a document over HTTP(S): one GET with a deadline and a size limit, for the key
//! sets (JWKS) that routes.yaml names by URL. Redirects are not followed and only routes.yaml
//! chooses the URL, never anything a client sends (RFC 8725 §3.10: no server-side request
//! forgery through `jku` or `x5u`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid URL \"{uri}\": {reason}")]
    Uri { uri: String, reason: String },
    #[error("GET {uri}: {reason}")]
    Transport { uri: String, reason: String },
    #[error("GET {uri}: status {status}")]
    Status { uri: String, status: StatusCode },
    #[error("GET {uri}: no answer within {timeout:?}")]
    Timeout { uri: String, timeout: Duration },
}

/// A shared HTTP(S) client; TLS uses rustls on aws-lc-rs and the system's trust store.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl HttpClient {
    /// Fails only if rustls rejects its own safe defaults, which would be a build problem.
    pub fn new() -> Result<HttpClient, rustls::Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(Arc::clone(&provider))
        {
            Ok(builder) => builder,
            Err(error) => {
                // Plain-http sources still work; https fetches will fail loudly.
                tracing::warn!(%error, "no system CA certificates: https fetches will fail");
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            }
        };
        let connector = builder.https_or_http().enable_http1().build();
        Ok(HttpClient {
            inner: Client::builder(TokioExecutor::new()).build(connector),
        })
    }
}

/// An http(s) URL with a host, as a fetch needs it.
pub fn parse_url(uri: &str) -> Result<Uri, FetchError> {
    let parsed: Uri = uri
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| FetchError::Uri {
            uri: uri.to_string(),
            reason: e.to_string(),
        })?;
    if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.host().is_none() {
        return Err(FetchError::Uri {
            uri: uri.to_string(),
            reason: "expected an http(s) URL with a host".into(),
        });
    }
    Ok(parsed)
}

/// What one fetch asks for.
#[derive(Clone, Copy, Debug)]
pub struct FetchLimits {
    /// The `Accept` header.
    pub accept: &'static str,
    pub user_agent: &'static str,
    /// A longer body is a failure.
    pub max_bytes: usize,
    /// For the whole exchange.
    pub timeout: Duration,
}

/// How a JSON Web Key Set is asked for, by ext-authz and the control plane alike: up to
/// 1 MiB, within 5 s (long enough for a slow issuer, short enough that a hung one does not
/// pin the requests that wait on an unknown-`kid` refetch for long).
pub const JWKS_FETCH: FetchLimits = FetchLimits {
    accept: "application/jwk-set+json, application/json",
    user_agent: "tollgate",
    max_bytes: 1024 * 1024,
    timeout: Duration::from_secs(5),
};

/// GETs `uri`; any status but 200 is a failure.
pub async fn get(client: &HttpClient, uri: &Uri, limits: FetchLimits) -> Result<Bytes, FetchError> {
    let text = uri.to_string();
    let request = Request::get(uri.clone())
        .header(hyper::header::ACCEPT, limits.accept)
        .header(hyper::header::USER_AGENT, limits.user_agent)
        .body(Empty::new())
        .map_err(|e| FetchError::Uri {
            uri: text.clone(),
            reason: e.to_string(),
        })?;
    let exchange = async {
        let response = client
            .inner
            .request(request)
            .await
            .map_err(|e| FetchError::Transport {
                uri: text.clone(),
                reason: e.to_string(),
            })?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status {
                uri: text.clone(),
                status: response.status(),
            });
        }
        Limited::new(response.into_body(), limits.max_bytes)
            .collect()
            .await
            .map(|body| body.to_bytes())
            .map_err(|e| FetchError::Transport {
                uri: text.clone(),
                reason: format!("reading the body: {e}"),
            })
    };
    tokio::time::timeout(limits.timeout, exchange)
        .await
        .map_err(|_| FetchError::Timeout {
            uri: text.clone(),
            timeout: limits.timeout,
        })?
}
