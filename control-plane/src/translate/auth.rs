//! JWT auth on Envoy's side: the `ext_authz` HTTP filter pointed at tollgate-ext-authz, and
//! the per-route settings that enable it where routes.yaml asks for auth.
//!
//! The filter is disabled per route on public routes, so they cost no call. On protected
//! routes the route's provider and scopes travel in `context_extensions`, which come from
//! Envoy's configuration, never from the client, so ext-authz needs no route table of its
//! own and can never disagree with Envoy about which rules apply.

use envoy_types::pb::envoy::config::core::v3::{
    grpc_service::{EnvoyGrpc, TargetSpecifier},
    ApiVersion, GrpcService,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    ext_authz::Services, ext_authz_per_route::Override, CheckSettings, ExtAuthz, ExtAuthzPerRoute,
};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode};
use envoy_types::pb::google::protobuf::Any;
use tollgate_routes::policy::{ExtAuthzSidecar, RouteAuth};

use super::{any, proto_duration, stable_map};

pub(super) const FILTER_NAME: &str = "envoy.filters.http.ext_authz";
pub(super) const CLUSTER: &str = "tollgate_ext_authz";

/// The header ext-authz sets from the provider's `consumer_claim`.
pub use tollgate_routes::policy::CONSUMER_HEADER;

pub(super) fn filter(sidecar: &ExtAuthzSidecar) -> Any {
    any(&ExtAuthz {
        services: Some(Services::GrpcService(grpc_service(
            CLUSTER,
            sidecar.timeout,
        ))),
        transport_api_version: ApiVersion::V3 as i32,
        failure_mode_allow: sidecar.failure_mode_allow,
        // An unreachable auth service is an outage, not a verdict on the client: answer
        // 503 rather than Envoy's default 403.
        status_on_error: Some(HttpStatus {
            code: StatusCode::ServiceUnavailable as i32,
        }),
        ..Default::default()
    })
}

/// The per-route setting: skip the check on public routes, say what to check otherwise
/// (and for which route, so ext-authz's logs and denials can name it).
pub(super) fn per_route(route: &str, auth: Option<&RouteAuth>) -> Any {
    let r#override = match auth {
        None => Override::Disabled(true),
        Some(auth) => Override::CheckSettings(CheckSettings {
            context_extensions: stable_map([
                ("route".to_string(), route.to_string()),
                ("provider".to_string(), auth.provider.clone()),
                ("scopes".to_string(), auth.scopes.join(" ")),
            ]),
            ..Default::default()
        }),
    };
    any(&ExtAuthzPerRoute {
        r#override: Some(r#override),
    })
}

pub(super) fn grpc_service(cluster: &str, timeout: std::time::Duration) -> GrpcService {
    GrpcService {
        target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
            cluster_name: cluster.to_string(),
            ..Default::default()
        })),
        timeout: Some(proto_duration(timeout)),
        ..Default::default()
    }
}
