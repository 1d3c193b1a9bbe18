//! CORS answered by the gateway: Envoy's `cors` HTTP filter, first in the chain, with each
//! route's policy (or the top-level default, on the virtual host) as its per-route config.
//!
//! Being first, the filter answers a preflight before ext_authz could ask for a token a
//! browser never sends on a preflight (Fetch standard §3.2.2: preflights carry no
//! credentials), and its response headers also reach the replies later filters make.

use tollgate_proto::envoy::extensions::filters::http::cors::v3::{Cors, CorsPolicy as EnvoyCors};
use tollgate_proto::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use tollgate_proto::google::protobuf::{Any, BoolValue};
use tollgate_routes::route_policy::{AllowedOrigin, CorsPolicy};

use super::any;

pub(super) const FILTER_NAME: &str = "envoy.filters.http.cors";

/// The filter itself has no settings: everything is per route.
pub(super) fn filter() -> Any {
    any(&Cors {})
}

pub(super) fn per_route(policy: &CorsPolicy) -> Any {
    let origins = policy
        .origins
        .iter()
        .map(|origin| StringMatcher {
            // Envoy checks each matcher against "*" before the request's origin, so an
            // exact "*" allows every origin.
            match_pattern: Some(MatchPattern::Exact(match origin {
                AllowedOrigin::Any => "*".to_string(),
                AllowedOrigin::Exact(origin) => origin.clone(),
            })),
            ignore_case: false,
        })
        .collect();
    any(&EnvoyCors {
        allow_origin_string_match: origins,
        allow_methods: policy.methods.join(","),
        allow_headers: policy.headers.join(","),
        expose_headers: policy.expose_headers.join(","),
        max_age: policy
            .max_age
            .map(|age| age.as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: Some(BoolValue {
            value: policy.credentials,
        }),
        // The gateway owns CORS: a preflight from an origin not allowed is answered here
        // too (without any allow header), never passed to the upstream.
        forward_not_matching_preflights: Some(BoolValue { value: false }),
        ..Default::default()
    })
}
