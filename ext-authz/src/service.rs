//! The `envoy.service.auth.v3.Authorization` service: a `CheckRequest` in, a
//! `CheckResponse` out. The route's provider and required scopes arrive in the request's
//! `context_extensions` (set per route by the control plane), so this service needs no
//! copy of the routes.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tollgate_proto::envoy::service::auth::v3::CheckResponse;
use tollgate_routes::policy::REQUEST_ID_HEADER;
use tollgate_sidecar::telemetry::{self, TraceId, TraceParent, SPAN_TARGET};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::cache::{cache_key, TokenCache};
use crate::extract::{find_token, Found, RequestView};
use crate::jwks::KeyOrigin;
use crate::metrics::Metrics;
use crate::providers::{Provider, Providers};
use crate::response::{self, Denial};
use crate::verify::{self, Rejection, VerifiedToken, MAX_TOKEN_BYTES};
use tollgate_proto::check_request::CheckCall;

/// The gRPC service Envoy's ext_authz filter calls, as gRPC health names it, and its method.
pub const AUTHORIZATION_SERVICE: &str = "envoy.service.auth.v3.Authorization";
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

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

    /// Decides one request; log lines name the call by `ids`.
    async fn decide_logged(
        &self,
        request: &CheckCall,
        view: RequestView<'_>,
        ids: &CallIds<'_>,
    ) -> Decision {
        let route = request.context(ROUTE_KEY).unwrap_or("");
        let Some(provider_name) = request.context(PROVIDER_KEY) else {
            tracing::warn!(
                request_id = ids.request_id(),
                trace_id = ids.trace_id(),
                route,
                "check without a provider in context_extensions; denying"
            );
            return Decision::Deny(Denial::UnknownProvider);
        };
        let table = self.providers.load();
        let Some(provider) = table.get(provider_name) else {
            tracing::warn!(
                request_id = ids.request_id(),
                trace_id = ids.trace_id(),
                route,
                provider = %provider_name,
                "unknown auth provider; denying"
            );
            return Decision::Deny(Denial::UnknownProvider);
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
                tracing::debug!(
                    request_id = ids.request_id(),
                    trace_id = ids.trace_id(),
                    route,
                    provider = %provider_name,
                    reason = rejection.class(),
                    detail = ?rejection,
                    "token rejected"
                );
                return Decision::Deny(Denial::InvalidToken(rejection));
            }
        };

        let required = request.context(SCOPES_KEY).unwrap_or("");
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

    /// Decides and renders the response, recording metrics; also returns the outcome's
    /// class (`ok` or the denial's reason) for the call's log line and span.
    async fn check_logged(
        &self,
        request: &CheckCall,
        view: RequestView<'_>,
        ids: &CallIds<'_>,
    ) -> (CheckResponse, &'static str) {
        let started = Instant::now();
        let decision = self.decide_logged(request, view, ids).await;
        let seconds = started.elapsed().as_secs_f64();
        match decision {
            Decision::Allow(token) => {
                self.metrics.check(true, "ok", seconds);
                (response::allowed(&token), "ok")
            }
            Decision::Deny(denial) => {
                self.metrics.check(false, denial.class(), seconds);
                (response::denied(&self.realm, &denial), denial.class())
            }
        }
    }
}

/// The request as Envoy describes it in a `CheckRequest`.
fn view(request: &CheckCall) -> RequestView<'_> {
    let http = request.http();
    RequestView {
        headers: http.map_or(&[], |h| &h.headers),
        header_map: http.and_then(|h| h.header_map.as_ref()),
        path: http.map_or("", |h| h.path.as_str()),
    }
}

/// What the log lines and the span about one call name it by: the gateway's `x-request-id`
/// (Envoy sends the request's headers) and the trace of Envoy's call, when it sent one.
struct CallIds<'a> {
    request_id: Option<Cow<'a, str>>,
    trace_id: Option<TraceId>,
}

impl<'a> CallIds<'a> {
    fn of(view: RequestView<'a>, parent: Option<&TraceParent>) -> Self {
        CallIds {
            request_id: view.header(REQUEST_ID_HEADER),
            trace_id: parent.map(|p| p.trace_id),
        }
    }

    fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    fn trace_id(&self) -> Option<tracing::field::DisplayValue<TraceId>> {
        self.trace_id.map(tracing::field::display)
    }
}

impl AuthService {
    /// `envoy.service.auth.v3.Authorization/Check`: a verdict for every call, never a gRPC
    /// error (a denial is a verdict).
    pub async fn check(
        &self,
        request: Request<CheckCall>,
    ) -> Result<Response<CheckResponse>, Status> {
        let parent = TraceParent::from_metadata(request.metadata());
        let check = request.get_ref();
        let view = view(check);
        let ids = CallIds::of(view, parent.as_ref());
        let route = check.context(ROUTE_KEY).unwrap_or("");
        let span = telemetry::server_span(parent.as_ref(), || {
            tracing::info_span!(
                target: SPAN_TARGET,
                "check",
                otel.name = "envoy.service.auth.v3.Authorization/Check",
                otel.kind = "server",
                rpc.system = "grpc",
                request_id = ids.request_id(),
                route,
                result = tracing::field::Empty,
            )
        });
        let (response, result) = self
            .check_logged(check, view, &ids)
            .instrument(span.clone())
            .await;
        span.record("result", result);
        tracing::debug!(
            request_id = ids.request_id(),
            trace_id = ids.trace_id(),
            route,
            result,
            "checked"
        );
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use tollgate_proto::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Request as AttributesRequest,
    };
    use tollgate_proto::envoy::service::auth::v3::{AttributeContext, CheckRequest};

    use super::*;
    use crate::cache::TokenCache;
    use crate::metrics::Metrics;
    use crate::providers::{ProviderTable, Providers};

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn service() -> AuthService {
        AuthService::new(
            Arc::new(Providers::new(ProviderTable::default())),
            Arc::new(TokenCache::new(10)),
            Arc::new(Metrics::default()),
            "tollgate",
            system_clock,
        )
    }

    /// A call for route `r` with provider `gone`, which the (empty) table does not know.
    fn call(request_id: Option<&str>, traceparent: Option<&str>) -> Request<CheckCall> {
        let headers = request_id
            .map(|id| (REQUEST_ID_HEADER.to_string(), id.to_string()))
            .into_iter()
            .collect();
        let sent = CheckRequest {
            attributes: Some(AttributeContext {
                context_extensions: [
                    (ROUTE_KEY.to_string(), "r".to_string()),
                    (PROVIDER_KEY.to_string(), "gone".to_string()),
                ]
                .into_iter()
                .collect(),
                request: Some(AttributesRequest {
                    http: Some(HttpRequest {
                        headers,
                        path: "/x".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        // As the server decodes what Envoy sends.
        let received = CheckCall::decode(sent.encode_to_vec().as_slice()).expect("decodes");
        let mut call = Request::new(received);
        if let Some(value) = traceparent {
            call.metadata_mut()
                .insert("traceparent", value.parse().expect("ascii"));
        }
        call
    }

    #[tokio::test(flavor = "current_thread")]
    async fn log_lines_about_a_call_carry_its_request_id_and_trace_id() {
        let (logs, _guard) = tollgate_runtime::logging::capture();
        service()
            .check(call(Some("req-7f3a"), Some(TRACEPARENT)))
            .await
            .expect("a verdict");
        for message in ["unknown auth provider", "checked"] {
            let lines = logs.lines_with(message);
            assert_eq!(lines.len(), 1, "{message}: {lines:?}");
            assert!(
                lines[0].contains("request_id=\"req-7f3a\"")
                    && lines[0].contains("trace_id=4bf92f3577b34da6a3ce929d0e0e4736"),
                "{}",
                lines[0]
            );
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_call_without_ids_is_still_logged() {
        let (logs, _guard) = tollgate_runtime::logging::capture();
        service()
            .check(call(None, Some("not a traceparent")))
            .await
            .expect("a verdict");
        let lines = logs.lines_with("checked");
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(!lines[0].contains("request_id") && !lines[0].contains("trace_id"));
    }
}
