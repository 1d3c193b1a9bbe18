//! The `envoy.service.auth.v3.Authorization` service: a `CheckRequest` in, a
//! `CheckResponse` out. The route's providers, required scopes and admitted consumers arrive
//! in the request's `context_extensions` (set per route by the control plane), so this
//! service needs no copy of the routes.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tollgate_proto::envoy::service::auth::v3::CheckResponse;
use tollgate_routes::policy::REQUEST_ID_HEADER;
use tollgate_sidecar::telemetry::{self, TraceId, TraceParent, SPAN_TARGET};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use tollgate_routes::policy::{JwtProvider, KeyLocation};

use crate::api_keys::KeyMatch;
use crate::cache::{cache_key, TokenCache};
use crate::certificate::{self, CertificateProblem};
use crate::extract::{find_key, find_token, Found, RequestView};
use crate::identity::Identity;
use crate::jwks::{KeyOrigin, KeyStore};
use crate::metrics::Metrics;
use crate::providers::{Provider, Providers, Verifier};
use crate::response::{self, Challenge, Denial, Outcome};
use crate::verify::{self, Rejection, VerifiedToken, MAX_TOKEN_BYTES};
use tollgate_proto::check_request::CheckCall;

/// The gRPC service Envoy's ext_authz filter calls, as gRPC health names it, and its method.
pub const AUTHORIZATION_SERVICE: &str = "envoy.service.auth.v3.Authorization";
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// `context_extensions` keys the control plane sets on each authenticated route.
pub const ROUTE_KEY: &str = "route";
pub const PROVIDER_KEY: &str = "provider";
pub const SCOPES_KEY: &str = "scopes";
/// Present only on routes that name the consumers they admit.
pub const CONSUMERS_KEY: &str = "consumers";

/// The outcome of one check.
#[derive(Debug)]
pub enum Decision {
    /// Admitted, with the identity the upstream is told.
    Allow {
        grant: Grant,
        /// Where the route's API-key providers read keys: every such key is removed
        /// before the upstream, whichever credential admitted the request.
        keys: Vec<KeyLocation>,
    },
    Deny(Denial),
}

/// The identity a credential proved.
#[derive(Debug)]
pub enum Grant {
    /// A verified (possibly cached) token.
    Token(Arc<VerifiedToken>),
    /// A key's or a certificate's consumer.
    Consumer(Arc<Identity>),
}

impl Grant {
    pub fn identity(&self) -> &Identity {
        match self {
            Grant::Token(token) => &token.identity,
            Grant::Consumer(identity) => identity,
        }
    }
}

/// What one provider made of a request.
enum Attempt {
    Allowed(Grant),
    /// No credential of this provider's kind: the challenge that asks for one.
    Missing(Challenge),
    Denied(Denial),
}

/// What a route requires besides a valid credential, from its `context_extensions`.
struct RouteRequirements<'a> {
    route: &'a str,
    scopes: Vec<&'a str>,
    /// Empty admits every consumer.
    consumers: Vec<&'a str>,
}

impl RouteRequirements<'_> {
    fn admits(&self, identity: &Identity) -> bool {
        self.consumers.is_empty()
            || identity
                .consumer
                .as_deref()
                .is_some_and(|c| self.consumers.contains(&c))
    }
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

    /// Decides one request; log lines name the call by `ids`. The route's providers are
    /// tried in order: the first whose credential holds admits the request; otherwise the
    /// first refusal of a credential that was presented answers, or, when none was, a 401
    /// naming every kind the route accepts.
    async fn decide_logged(
        &self,
        request: &CheckCall,
        view: RequestView<'_>,
        ids: &CallIds<'_>,
    ) -> Decision {
        let route = request.context(ROUTE_KEY).unwrap_or("");
        let names = request.context(PROVIDER_KEY).unwrap_or("");
        if names.trim().is_empty() {
            tracing::warn!(
                request_id = ids.request_id(),
                trace_id = ids.trace_id(),
                route,
                "check without a provider in context_extensions; denying"
            );
            return Decision::Deny(Denial::UnknownProvider);
        }
        let requirements = RouteRequirements {
            route,
            scopes: request
                .context(SCOPES_KEY)
                .unwrap_or("")
                .split_ascii_whitespace()
                .collect(),
            consumers: request
                .context(CONSUMERS_KEY)
                .unwrap_or("")
                .split_ascii_whitespace()
                .collect(),
        };
        let table = self.providers.load();
        let mut refusal = None;
        let mut challenges = Vec::new();
        for name in names.split_ascii_whitespace() {
            let Some(provider) = table.get(name) else {
                tracing::warn!(
                    request_id = ids.request_id(),
                    trace_id = ids.trace_id(),
                    route,
                    provider = %name,
                    "unknown auth provider; denying"
                );
                return Decision::Deny(Denial::UnknownProvider);
            };
            let attempt = self
                .attempt(provider, request, view, &requirements, ids)
                .await;
            match attempt {
                Attempt::Allowed(grant) => {
                    provider.outcomes.record(Outcome::Allowed);
                    let keys = names
                        .split_ascii_whitespace()
                        .filter_map(|name| match &table.get(name)?.verifier {
                            Verifier::ApiKey { location, .. } => Some(location.clone()),
                            _ => None,
                        })
                        .collect();
                    return Decision::Allow { grant, keys };
                }
                Attempt::Missing(challenge) => {
                    provider.outcomes.record(Outcome::Missing);
                    challenges.push(challenge);
                }
                Attempt::Denied(denial) => {
                    provider.outcomes.record(denial.outcome());
                    refusal.get_or_insert(denial);
                }
            }
        }
        Decision::Deny(refusal.unwrap_or(Denial::Missing(challenges)))
    }

    /// What `provider` makes of the request's credential of its kind.
    async fn attempt(
        &self,
        provider: &Provider,
        request: &CheckCall,
        view: RequestView<'_>,
        requirements: &RouteRequirements<'_>,
        ids: &CallIds<'_>,
    ) -> Attempt {
        let grant = match &provider.verifier {
            Verifier::Jwt { rules, keys } => {
                let token = match find_token(&rules.token, &view) {
                    Found::Token(token) => token,
                    Found::Missing => return Attempt::Missing(Challenge::Bearer),
                    Found::Ambiguous => return Attempt::Denied(Denial::AmbiguousToken),
                };
                let verified = match self.verify_cached(provider, rules, keys, &token).await {
                    Ok(verified) => verified,
                    Err(rejection) => {
                        // The kid and the class are safe to log; the token never is.
                        tracing::debug!(
                            request_id = ids.request_id(),
                            trace_id = ids.trace_id(),
                            route = requirements.route,
                            provider = %provider.config.name,
                            reason = rejection.class(),
                            detail = ?rejection,
                            "token rejected"
                        );
                        return Attempt::Denied(Denial::InvalidToken(rejection));
                    }
                };
                if !verified.missing_scopes(&requirements.scopes).is_empty() {
                    return Attempt::Denied(Denial::InsufficientScope {
                        required: requirements.scopes.join(" "),
                    });
                }
                Grant::Token(verified)
            }
            Verifier::ApiKey { location, keys } => {
                let presented = match find_key(location, &view) {
                    Found::Token(key) => key,
                    Found::Missing => return Attempt::Missing(Challenge::ApiKey(location.clone())),
                    Found::Ambiguous => {
                        return Attempt::Denied(Denial::InvalidKey(location.clone()))
                    }
                };
                let table = keys.current();
                match table.lookup(&presented, (self.clock)()) {
                    KeyMatch::Valid(identity) => Grant::Consumer(Arc::clone(identity)),
                    KeyMatch::Expired => {
                        return Attempt::Denied(Denial::ExpiredKey(location.clone()))
                    }
                    KeyMatch::Unknown => {
                        return Attempt::Denied(Denial::InvalidKey(location.clone()))
                    }
                }
            }
            Verifier::ClientCertificate(consumers) => {
                let Some(sent) = request.peer_certificate() else {
                    return Attempt::Missing(Challenge::ClientCertificate);
                };
                let id = match certificate::consumer_of(sent, consumers.field) {
                    Ok(id) => id,
                    Err(CertificateProblem::NoConsumer(field)) => {
                        return Attempt::Denied(Denial::CertificateWithoutConsumer(field))
                    }
                    Err(CertificateProblem::Unreadable) => {
                        return Attempt::Denied(Denial::UnreadableCertificate)
                    }
                };
                match consumers.identity(&id) {
                    Some(identity) => Grant::Consumer(identity),
                    None => return Attempt::Denied(Denial::ConsumerNotAllowed),
                }
            }
        };
        if !requirements.admits(grant.identity()) {
            return Attempt::Denied(Denial::ConsumerNotAllowed);
        }
        Attempt::Allowed(grant)
    }

    async fn verify_cached(
        &self,
        provider: &Provider,
        rules: &JwtProvider,
        keys: &KeyStore,
        token: &str,
    ) -> Result<Arc<VerifiedToken>, Rejection> {
        // Checked here too so an oversized token is not even hashed.
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Rejection::TooLarge);
        }
        let name = &provider.config.name;
        let forward_claims = &provider.config.forward_claims;
        let now = (self.clock)();
        let key = cache_key(name, token);
        let epoch = keys.epoch();
        if let Some(hit) = self.cache.get(&key, epoch, now) {
            self.metrics.cache_lookup(true);
            return Ok(hit);
        }
        self.metrics.cache_lookup(false);
        // Epoch before keys: if they change in between, the entry is stored under the old
        // epoch and simply never hits, rather than vouching for keys it was not checked with.
        let mut epoch = keys.epoch();
        let mut current = keys.current();
        let mut result = verify::verify(token, &current, rules, forward_claims, now);
        if let Err(Rejection::UnknownKey { kid }) = &result {
            if matches!(keys.origin(), KeyOrigin::Remote(_)) {
                tracing::debug!(provider = %name, kid = ?kid, "unknown kid; refreshing the JWKS");
                if keys.refresh_for_unknown_kid().await {
                    epoch = keys.epoch();
                    current = keys.current();
                    result = verify::verify(token, &current, rules, forward_claims, now);
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
            Decision::Allow { grant, keys } => {
                self.metrics.check(true, "ok", seconds);
                (response::allowed(grant.identity(), &keys), "ok")
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
