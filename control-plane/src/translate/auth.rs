//! JWT auth on Envoy's side: the `ext_authz` HTTP filter pointed at tollgate-ext-authz, and
//! the per-route settings that enable it where routes.yaml asks for auth.
//!
//! Public routes switch the filter off ([`super::listener::filter_off`]), so they cost no call and
//! Envoy does not even build the filter for their requests. On protected
//! routes the route's provider and scopes travel in `context_extensions`, which come from
//! Envoy's configuration, never from the client, so ext-authz needs no route table of its
//! own and can never disagree with Envoy about which rules apply.

use std::collections::{BTreeMap, BTreeSet};
use tollgate_proto::envoy::config::core::v3::{
    grpc_service::{EnvoyGrpc, TargetSpecifier},
    retry_policy::{retry_host_predicate::ConfigType, RetryHostPredicate},
    ApiVersion, BackoffStrategy, GrpcService, RetryPolicy,
};
use tollgate_proto::envoy::extensions::filters::http::ext_authz::v3::{
    ext_authz::Services, ext_authz_per_route::Override, CheckSettings, ExtAuthz, ExtAuthzPerRoute,
};
use tollgate_proto::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use tollgate_proto::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, ListStringMatcher, StringMatcher,
};
use tollgate_proto::envoy::r#type::v3::{HttpStatus, StatusCode};
use tollgate_proto::google::protobuf::Any;
use tollgate_proto::google::protobuf::UInt32Value;
use tollgate_routes::policy::{
    AuthProvider, Credentials, ExtAuthzSidecar, RouteAuth, REQUEST_ID_HEADER,
};

use super::{any, proto_duration, proto_map};

pub(super) const FILTER_NAME: &str = "envoy.filters.http.ext_authz";
pub(super) const CLUSTER: &str = tollgate_routes::policy::EXT_AUTHZ_CLUSTER;
/// The `grpc.health.v1` service name tollgate-ext-authz reports SERVING under.
pub(super) const HEALTH_SERVICE: &str = "envoy.service.auth.v3.Authorization";

/// The header ext-authz sets from the provider's `consumer_claim`.
pub use tollgate_routes::policy::CONSUMER_HEADER;

pub(super) fn filter(sidecar: &ExtAuthzSidecar, providers: &BTreeMap<String, AuthProvider>) -> Any {
    any(&ExtAuthz {
        // Only the headers a check reads: the providers' token and key headers (or
        // `cookie`) and the request id. Envoy otherwise copies every request header into each
        // CheckRequest, which costs its worker time per call and hands ext-authz cookies
        // and credentials it has no use for. Query-parameter tokens travel in the path,
        // which is always sent.
        allowed_headers: Some(ListStringMatcher {
            patterns: check_headers(providers)
                .into_iter()
                .map(|name| StringMatcher {
                    match_pattern: Some(MatchPattern::Exact(name)),
                    ignore_case: true,
                })
                .collect(),
        }),
        services: Some(Services::GrpcService(grpc_service(
            CLUSTER,
            sidecar.timeout,
            sidecar.addresses.len(),
        ))),
        transport_api_version: ApiVersion::V3 as i32,
        failure_mode_allow: sidecar.failure_mode_allow,
        // Client-certificate providers read the certificate Envoy verified; Envoy encodes it
        // once per connection. Without them, no certificate is sent.
        include_peer_certificate: providers
            .values()
            .any(|p| matches!(p.credentials, Credentials::ClientCertificate(_))),
        // An unreachable auth service is an outage, not a verdict on the client: answer
        // 503 rather than Envoy's default 403.
        status_on_error: Some(HttpStatus {
            code: StatusCode::ServiceUnavailable as i32,
        }),
        ..Default::default()
    })
}

/// The request headers ext-authz reads, in a stable order.
fn check_headers(providers: &BTreeMap<String, AuthProvider>) -> BTreeSet<String> {
    providers
        .values()
        .filter_map(AuthProvider::credential_header)
        .chain([REQUEST_ID_HEADER])
        .map(str::to_ascii_lowercase)
        .collect()
}

/// The setting of a protected route: what to check, and for which route, so ext-authz's
/// logs and denials can name it. Public routes switch the filter off instead.
pub(super) fn per_route(route: &str, auth: &RouteAuth) -> Any {
    any(&ExtAuthzPerRoute {
        r#override: Some(Override::CheckSettings(CheckSettings {
            context_extensions: proto_map(
                [
                    ("route".to_string(), route.to_string()),
                    // Provider names have no spaces: `any_of` travels as a list, in order.
                    ("provider".to_string(), auth.providers.join(" ")),
                    ("scopes".to_string(), auth.scopes.join(" ")),
                ]
                .into_iter()
                .chain(
                    // Sent only where a route names its consumers: every call carries these.
                    (!auth.consumers.is_empty())
                        .then(|| ("consumers".to_string(), auth.consumers.join(" "))),
                ),
            ),
            ..Default::default()
        })),
    })
}

/// The wait before a sidecar call is tried on another replica.
const RETRY_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

/// How long one try of a replicated sidecar call may take: half the call's `timeout`, so
/// that a try left unanswered leaves the other half for a retry, but never under 50 ms,
/// where a slow check (a JWKS fetch, a busy Redis) would be cut short; so the rate-limit
/// service's default 50 ms is never retried after a timeout, where a try that was only
/// slow could count a hit twice.
pub(super) fn per_try_timeout(timeout: std::time::Duration) -> std::time::Duration {
    (timeout / 2)
        .max(std::time::Duration::from_millis(50))
        .min(timeout)
}

/// Calls to `cluster`, each bounded by `timeout`. With several `replicas`, a call that could
/// not reach one (refused, reset, or answered UNAVAILABLE) is tried once more on another at
/// once, so a replica that just died costs no request, and so is a try that went unanswered
/// for [`per_try_timeout`], so a replica cut off the network costs a delay, not a failure.
pub(super) fn grpc_service(
    cluster: &str,
    timeout: std::time::Duration,
    replicas: usize,
) -> GrpcService {
    let per_try = per_try_timeout(timeout);
    GrpcService {
        target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
            cluster_name: cluster.to_string(),
            ..Default::default()
        })),
        timeout: Some(proto_duration(timeout)),
        retry_policy: (replicas > 1).then(|| RetryPolicy {
            retry_on: "connect-failure,refused-stream,reset,unavailable".to_string(),
            num_retries: Some(UInt32Value { value: 1 }),
            // Envoy makes the longest backoff each try's timeout as well
            // (`Http::Utility::convertCoreToRouteRetryPolicy` sets `per_try_timeout` from
            // `max_interval`); the wait before the retry is the base interval.
            retry_back_off: Some(BackoffStrategy {
                base_interval: Some(proto_duration(per_try.min(RETRY_WAIT))),
                max_interval: Some(proto_duration(per_try)),
            }),
            retry_host_predicate: vec![RetryHostPredicate {
                name: "envoy.retry_host_predicates.previous_hosts".to_string(),
                config_type: Some(ConfigType::TypedConfig(any(&PreviousHostsPredicate {}))),
            }],
            host_selection_retry_max_attempts: 3,
            ..Default::default()
        }),
        ..Default::default()
    }
}
