//! Fetching a JWKS over HTTP(S): one GET with a deadline and a size limit. Redirects are
//! not followed and nothing in a token (`jku`, `x5u`) ever chooses the URL: only
//! routes.yaml does (RFC 8725 §3.10, avoiding server-side request forgery).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{JwksError, MAX_JWKS_BYTES};

/// Long enough for a slow issuer, short enough that a hung one does not pin requests that
/// wait on an unknown-`kid` refetch beyond Envoy's ext_authz timeout for long.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid jwks_uri \"{uri}\": {reason}")]
    Uri { uri: String, reason: String },
    #[error("GET {uri}: {reason}")]
    Transport { uri: String, reason: String },
    #[error("GET {uri}: status {status}")]
    Status { uri: String, status: StatusCode },
    #[error("GET {uri}: no answer within {FETCH_TIMEOUT:?}")]
    Timeout { uri: String },
    #[error(transparent)]
    Jwks(JwksError),
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
                // Plain-http and file providers still work; https fetches will fail loudly.
                tracing::warn!(%error, "no system CA certificates: https jwks_uri fetches will fail");
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

/// One provider's JWKS endpoint.
#[derive(Debug)]
pub struct RemoteJwks {
    uri: Uri,
    client: HttpClient,
}

impl RemoteJwks {
    pub fn new(uri: &str, client: HttpClient) -> Result<RemoteJwks, FetchError> {
        let parsed: Uri =
            uri.parse()
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
        Ok(RemoteJwks {
            uri: parsed,
            client,
        })
    }

    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// GETs the document; any status but 200 is a failure.
    pub async fn fetch(&self) -> Result<Bytes, FetchError> {
        let uri = self.uri.to_string();
        let request = Request::get(self.uri.clone())
            .header(
                hyper::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .header(hyper::header::USER_AGENT, "tollgate-ext-authz")
            .body(Empty::new())
            .map_err(|e| FetchError::Uri {
                uri: uri.clone(),
                reason: e.to_string(),
            })?;
        let exchange =
            async {
                let response = self.client.inner.request(request).await.map_err(|e| {
                    FetchError::Transport {
                        uri: uri.clone(),
                        reason: e.to_string(),
                    }
                })?;
                if response.status() != StatusCode::OK {
                    return Err(FetchError::Status {
                        uri: uri.clone(),
                        status: response.status(),
                    });
                }
                Limited::new(response.into_body(), MAX_JWKS_BYTES)
                    .collect()
                    .await
                    .map(|body| body.to_bytes())
                    .map_err(|e| FetchError::Transport {
                        uri: uri.clone(),
                        reason: format!("reading the body: {e}"),
                    })
            };
        tokio::time::timeout(FETCH_TIMEOUT, exchange)
            .await
            .map_err(|_| FetchError::Timeout { uri: uri.clone() })?
    }
}
