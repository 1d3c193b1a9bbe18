//! Fetching a provider's JWKS over HTTP(S) ([`tollgate_runtime::fetch`]: one GET with a
//! deadline and a size limit, no redirects; only routes.yaml chooses the URL).

use std::time::Duration;

use bytes::Bytes;
use hyper::Uri;
use tollgate_runtime::fetch::{self, FetchLimits};

pub use tollgate_runtime::fetch::HttpClient;

use super::{JwksError, MAX_JWKS_BYTES};

/// Long enough for a slow issuer, short enough that a hung one does not pin requests that
/// wait on an unknown-`kid` refetch beyond Envoy's ext_authz timeout for long.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// How a JWKS is asked for.
pub const JWKS_FETCH: FetchLimits = FetchLimits {
    accept: "application/jwk-set+json, application/json",
    user_agent: "tollgate",
    max_bytes: MAX_JWKS_BYTES,
    timeout: FETCH_TIMEOUT,
};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Get(#[from] fetch::FetchError),
    #[error(transparent)]
    Jwks(JwksError),
}

/// One provider's JWKS endpoint.
#[derive(Debug)]
pub struct RemoteJwks {
    uri: Uri,
    client: HttpClient,
}

impl RemoteJwks {
    pub fn new(uri: &str, client: HttpClient) -> Result<RemoteJwks, FetchError> {
        Ok(RemoteJwks {
            uri: fetch::parse_url(uri)?,
            client,
        })
    }

    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// GETs the document; any status but 200 is a failure.
    pub async fn fetch(&self) -> Result<Bytes, FetchError> {
        Ok(fetch::get(&self.client, &self.uri, JWKS_FETCH).await?)
    }
}
