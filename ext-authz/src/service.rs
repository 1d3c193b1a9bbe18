//! The `envoy.service.auth.v3.Authorization` service: a `CheckRequest` in, a
//! `CheckResponse` out. The route's provider and required scopes arrive in the request's
//! `context_extensions` (set per route by the control plane), so this service needs no
//! copy of the routes.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use tonic::{Request, Response, Status};

use crate::cache::{cache_key, TokenCache};
use crate::extract::{find_token, Found, RequestView};
use crate::jwks::KeyOrigin;
use crate::metrics::Metrics;
use crate::providers::{Provider, Providers};
use crate::response::{self, Denial};
use crate::verify::{self, Rejection, VerifiedToken, MAX_TOKEN_BYTES};

/// `context_extensions` keys the control plane sets on each authenticated route.
pub const ROUTE_KEY: &str = "route";
pub const PROVIDER_KEY: &str = "provider";
pub const SCOPES_KEY: &str = "scopes";

/// The outcome of one check.
#[derive(Debug)]
pub enum Decision {
    Allow(Arc<VerifiedToken>),
    Deny(Denial),
}

/// Seconds since the epoch; injected so tests can move time.
pub type Clock = fn() -> u64;

pub fn system_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Clone)]
pub struct AuthService {
    providers: Arc<Providers>,
    cache: Arc<TokenCache>,
    metrics: Arc<Metrics>,
    realm: Arc<str>,
    clock: Clock,
}

impl AuthService {
    pub fn new(
        providers: Arc<Providers>,
        cache: Arc<TokenCache>,
        metrics: Arc<Metrics>,
        realm: &str,
        clock: Clock,
    ) -> AuthService {
        AuthService {
            providers,
            cache,
            metrics,
            realm: realm.into(),
            clock,
        }
    }

    /// Decides one request.
    pub async fn decide(&self, request: &CheckRequest) -> Decision {
        let empty = Default::default();
        let attributes = request.attributes.as_ref();
        let context = attributes.map_or(&empty, |a| &a.context_extensions);
        let route = context.get(ROUTE_KEY).map_or("", String::as_str);
        let Some(provider_name) = context.get(PROVIDER_KEY) else {
            tracing::warn!(
                route,
                "check without a provider in context_extensions; denying"
            );
            return Decision::Deny(Denial::UnknownProvider);
        };
        let table = self.providers.load();
        let Some(provider) = table.get(provider_name) else {
            tracing::warn!(route, provider = %provider_name, "unknown auth provider; denying");
            return Decision::Deny(Denial::UnknownProvider);
        };

        let http = attributes
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let no_headers = Default::default();
        let view = RequestView {
            headers: http.map_or(&no_headers, |h| &h.headers),
            header_map: http.and_then(|h| h.header_map.as_ref()),
            path: http.map_or("", |h| h.path.as_str()),
        };
        let token = match find_token(&provider.config.token, &view) {
            Found::Token(token) => token,
            Found::Missing => return Decision::Deny(Denial::MissingToken),
            Found::Ambiguous => return Decision::Deny(Denial::AmbiguousToken),
        };
        let verified = match self.verify_cached(provider, &token).await {
            Ok(verified) => verified,
            Err(rejection) => {
                // The kid and the class are safe to log; the token never is.
                tracing::debug!(route, provider = %provider_name, reason = rejection.class(), detail = ?rejection, "token rejected");
                return Decision::Deny(Denial::InvalidToken(rejection));
            }
        };

        let required = context.get(SCOPES_KEY).map_or("", String::as_str);
        let required: Vec<&str> = required.split_ascii_whitespace().collect();
        if !verified.missing_scopes(&required).is_empty() {
            return Decision::Deny(Denial::InsufficientScope {
                required: required.join(" "),
            });
        }
        Decision::Allow(verified)
    }

    async fn verify_cached(
        &self,
        provider: &Provider,
        token: &str,
    ) -> Result<Arc<VerifiedToken>, Rejection> {
        // Checked here too so an oversized token is not even hashed.
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Rejection::TooLarge);
        }
        let now = (self.clock)();
        let key = cache_key(&provider.config.name, token);
        let epoch = provider.keys.epoch();
        if let Some(hit) = self.cache.get(&key, epoch, now) {
            self.metrics.cache_lookup(true);
            return Ok(hit);
        }
        self.metrics.cache_lookup(false);
        // Epoch before keys: if they change in between, the entry is stored under the old
        // epoch and simply never hits, rather than vouching for keys it was not checked with.
        let mut epoch = provider.keys.epoch();
        let mut keys = provider.keys.current();
        let mut result = verify::verify(token, &keys, &provider.config, now);
        if let Err(Rejection::UnknownKey { kid }) = &result {
            if matches!(provider.keys.origin(), KeyOrigin::Remote(_)) {
                tracing::debug!(provider = %provider.config.name, kid = ?kid, "unknown kid; refreshing the JWKS");
                if provider.keys.refresh_for_unknown_kid().await {
                    epoch = provider.keys.epoch();
                    keys = provider.keys.current();
                    result = verify::verify(token, &keys, &provider.config, now);
                }
            }
        }
        let verified = Arc::new(result?);
        self.cache.insert(key, epoch, Arc::clone(&verified));
        Ok(verified)
    }

    /// Decides and renders the response, recording metrics.
    pub async fn check_request(&self, request: &CheckRequest) -> CheckResponse {
        let started = Instant::now();
        let decision = self.decide(request).await;
        let seconds = started.elapsed().as_secs_f64();
        match decision {
            Decision::Allow(token) => {
                self.metrics.check(true, "ok", seconds);
                response::allowed(&token)
            }
            Decision::Deny(denial) => {
                self.metrics.check(false, denial.class(), seconds);
                response::denied(&self.realm, &denial)
            }
        }
    }
}

#[tonic::async_trait]
impl Authorization for AuthService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(self.check_request(request.get_ref()).await))
    }
}
