//! Fetching a provider's JWKS over HTTP(S) ([`tollgate_runtime::fetch`]: one GET with a
//! deadline and a size limit, no redirects; only routes.yaml chooses the URL).

use bytes::Bytes;
use hyper::Uri;
use tollgate_runtime::fetch::{self, JWKS_FETCH};

pub use tollgate_runtime::fetch::HttpClient;

use super::JwksError;

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
