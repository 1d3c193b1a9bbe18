//! Rate limits on Envoy's side: the `ratelimit` HTTP filter pointed at tollgate-ratelimit,
//! and one route-level rate limit per routes.yaml rule.
//!
//! Each rule becomes one descriptor, `("route", name), ("rule", id), <key>[, ("tier", t)]`;
//! tollgate-ratelimit derives its limits from the same routes.yaml by the same names, so
//! the two cannot disagree on what a descriptor means.

use tollgate_proto::envoy::config::core::v3::ApiVersion;
use tollgate_proto::envoy::config::ratelimit::v3::RateLimitServiceConfig;
use tollgate_proto::envoy::config::route::v3::{
    rate_limit::{
        action::{ActionSpecifier, GenericKey, RemoteAddress, RequestHeaders},
        Action,
    },
    RateLimit as RouteRateLimit,
};
use tollgate_proto::envoy::extensions::filters::http::ratelimit::v3::{
    rate_limit::XRateLimitHeadersRfcVersion, RateLimit,
};
use tollgate_proto::google::protobuf::Any;
use tollgate_routes::policy::{LimitKey, LimitQuota, RateLimitRule, RateLimitSidecar};

use super::auth::{grpc_service, CONSUMER_HEADER};
use super::{any, proto_duration};

pub(super) const FILTER_NAME: &str = "envoy.filters.http.ratelimit";
pub(super) const CLUSTER: &str = tollgate_routes::policy::RATE_LIMIT_CLUSTER;
/// The `grpc.health.v1` service name tollgate-ratelimit reports SERVING under (while its
/// counters are reachable).
pub(super) const HEALTH_SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";

pub(super) fn filter(sidecar: &RateLimitSidecar) -> Any {
    any(&RateLimit {
        domain: sidecar.domain.clone(),
        timeout: Some(proto_duration(sidecar.timeout)),
        failure_mode_deny: sidecar.failure_mode_deny,
        rate_limit_service: Some(RateLimitServiceConfig {
            grpc_service: Some(grpc_service(
                CLUSTER,
                sidecar.timeout,
                sidecar.addresses.len(),
            )),
            transport_api_version: ApiVersion::V3 as i32,
        }),
        enable_x_ratelimit_headers: XRateLimitHeadersRfcVersion::DraftVersion03 as i32,
        enable_retry_after_header: true,
        // A refused gRPC call reads RESOURCE_EXHAUSTED, not the UNAVAILABLE that 429 maps to.
        rate_limited_as_resource_exhausted: true,
        ..Default::default()
    })
}

/// The route-level rate limits for `route`'s global rules (local ones never reach the
/// route's `rate_limits`, which this filter reads: see [`super::local_rate_limit`]).
pub(super) fn route_rate_limits<'a>(
    route: &str,
    rules: impl Iterator<Item = &'a RateLimitRule>,
) -> Vec<RouteRateLimit> {
    rules
        .map(|rule| {
            let mut actions = vec![
                generic_key("route", route),
                generic_key("rule", &rule.id),
                key_action(&rule.key),
            ];
            if let LimitQuota::Tiered { header, .. } = &rule.quota {
                // A missing tier must still be limited (by the strictest tier, in the
                // service), so its absence may not drop the whole descriptor.
                actions.push(request_header(header, "tier", true));
            }
            RouteRateLimit {
                actions,
                ..Default::default()
            }
        })
        .collect()
}

/// The action making a rule's key entry, named by [`key_entry`].
pub(super) fn key_action(key: &LimitKey) -> Action {
    match key {
        LimitKey::Consumer => request_header(CONSUMER_HEADER, "consumer", false),
        LimitKey::ClientIp => action(ActionSpecifier::RemoteAddress(RemoteAddress {})),
        LimitKey::Header(header) => request_header(header, "header", false),
    }
}

/// The descriptor key of a rule's key entry: Envoy names the client address
/// `remote_address` itself.
pub(super) fn key_entry(key: &LimitKey) -> &'static str {
    match key {
        LimitKey::Consumer => "consumer",
        LimitKey::ClientIp => "remote_address",
        LimitKey::Header(_) => "header",
    }
}

pub(super) fn generic_key(key: &str, value: &str) -> Action {
    action(ActionSpecifier::GenericKey(GenericKey {
        descriptor_key: key.to_string(),
        descriptor_value: value.to_string(),
        ..Default::default()
    }))
}

pub(super) fn request_header(header: &str, key: &str, skip_if_absent: bool) -> Action {
    action(ActionSpecifier::RequestHeaders(RequestHeaders {
        header_name: header.to_string(),
        descriptor_key: key.to_string(),
        skip_if_absent,
    }))
}

fn action(specifier: ActionSpecifier) -> Action {
    Action {
        action_specifier: Some(specifier),
    }
}
