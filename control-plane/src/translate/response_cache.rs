//! `cache`: Envoy's `cache_v2` HTTP filter, filled through an internal listener.
//!
//! Since Envoy 1.33 the cache filter fetches a miss itself, with its own side-channel request
//! straight to the routed cluster, so the router's route actions (prefix and regex rewrites,
//! host rewrite, header edits, timeouts, retries) never apply to it (envoyproxy/envoy issue
//! #39135). `cache_v2`'s `override_upstream_cluster` is Envoy's documented workaround: the side
//! channel goes to a cluster whose only endpoint is an internal listener (a listener in
//! Envoy's memory, no socket), and that listener routes the request with the same route
//! actions as the public one. So each listener with cached routes gets three more resources,
//! all named [`fill_name`]: the internal listener, the cluster that reaches it, and its route
//! configuration, which holds only the cached routes, in file order. The side channel only
//! carries requests that matched a cached route on the public listener, and every route
//! before that one failed to match them, so the first match among the cached routes alone is
//! that same route.
//!
//! The internal listener runs only what the side channel needs: auth and rate limits already
//! ran on the client's request, CORS answers on the public listener's way back.

use tollgate_proto::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType},
    Cluster,
};
use tollgate_proto::envoy::config::core::v3::{
    address, data_source, envoy_internal_address::AddressNameSpecifier,
    header_value_option::HeaderAppendAction, Address, DataSource, EnvoyInternalAddress,
    HeaderValue, HeaderValueOption,
};
use tollgate_proto::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use tollgate_proto::envoy::config::listener::v3::{
    listener::InternalListenerConfig, listener::ListenerSpecifier, Listener,
};
use tollgate_proto::envoy::config::route::v3::FilterConfig;
use tollgate_proto::envoy::extensions::filters::http::cache_v2::v3::CacheV2Config;
use tollgate_proto::envoy::extensions::filters::http::lua::v3::Lua;
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter,
};
use tollgate_proto::envoy::extensions::http::cache_v2::simple_http_cache::v3::SimpleHttpCacheV2Config;
use tollgate_proto::google::protobuf::Any;
use tollgate_routes::route_policy::ResponseCache;

use super::{any, listener, local_reply};

pub(super) const FILTER_NAME: &str = "envoy.filters.http.cache_v2";

/// The name of the internal listener, its cluster and its route configuration for one
/// public listener. `tollgate_` is reserved for Tollgate's own clusters, and `:` is outside
/// the alphabet of listener names, so no name from routes.yaml can collide with it.
pub(super) fn fill_name(listener: &str) -> String {
    format!("tollgate_cache_fill:{listener}")
}

/// The public listener's filter: off by default, switched on by the cached routes
/// ([`per_route`]), so routes without `cache` never cache.
pub(super) fn filter(listener: &str) -> HttpFilter {
    let config = CacheV2Config {
        // Envoy's in-memory store, per Envoy process.
        typed_config: Some(any(&SimpleHttpCacheV2Config {})),
        override_upstream_cluster: fill_name(listener),
        // A client's `cache-control: no-cache` would otherwise send its request upstream:
        // any client could make every request a miss and the cache no shield at all (Kong's
        // proxy-cache ignores it too by default).
        ignore_request_cache_control_header: true,
        ..Default::default()
    };
    HttpFilter {
        disabled: true,
        ..listener::http_filter(FILTER_NAME, any(&config))
    }
}

/// Switches the listener's cache filter on for one route. Envoy reads a present but empty
/// `config` (no type URL) as "enabled, with the listener's settings"; an absent one is an
/// error.
pub(super) fn per_route() -> Any {
    any(&FilterConfig {
        config: Some(Any::default()),
        is_optional: false,
        disabled: false,
    })
}

/// What a cached route adds on the side channel only: Envoy stores only answers with
/// freshness information, so an answer without `cache-control` gets `max-age=<ttl>`
/// (`ADD_IF_ABSENT`: whatever the upstream said about caching, `no-store`, `private`, a
/// shorter or longer `max-age`, wins).
pub(super) fn default_freshness(cache: &ResponseCache) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: "cache-control".into(),
            value: format!("max-age={}", cache.ttl.as_secs()),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::AddIfAbsent as i32,
        ..Default::default()
    }
}

/// Two repairs on the side channel, made on the internal listener before its router.
///
/// On the way up: Envoy's async client, which the cache filter fetches a miss with, appends
/// Envoy's own address to `x-forwarded-for` (its `send_xff` option, on by default and not
/// exposed by the cache filter). The public listener already named the client there, so
/// that last entry is dropped and the upstream sees the header a plain route would send.
///
/// On the way down: Envoy's cache stores an answer carrying `set-cookie` like any other (it
/// checks only `no-store` and `private`), which would hand one client's cookie, often a
/// session, to every client after it. Marking such answers `private` keeps them out of the
/// cache (and out of any shared cache past the gateway, RFC 9111 §5.2.2.7), while the
/// client itself still gets them as sent.
const SIDE_CHANNEL_REPAIRS: &str = r#"
function envoy_on_request(handle)
  local headers = handle:headers()
  local forwarded = headers:get("x-forwarded-for")
  if forwarded ~= nil then
    local before_envoy = forwarded:match("^(.-)%s*,[^,]*$")
    if before_envoy == nil or before_envoy == "" then
      headers:remove("x-forwarded-for")
    else
      headers:replace("x-forwarded-for", before_envoy)
    end
  end
end

function envoy_on_response(handle)
  local headers = handle:headers()
  if headers:get("set-cookie") ~= nil then
    local directives = headers:get("cache-control")
    if directives == nil or directives == "" then
      headers:replace("cache-control", "private")
    else
      headers:replace("cache-control", directives .. ", private")
    end
  end
end
"#;

/// The internal listener the side channel reaches: routes from [`fill_name`] over RDS, then
/// the side channel's repairs, then the router.
pub(super) fn fill_listener(listener: &str) -> Listener {
    let name = fill_name(listener);
    let lua = Lua {
        default_source_code: Some(DataSource {
            specifier: Some(data_source::Specifier::InlineString(
                SIDE_CHANNEL_REPAIRS.trim_start().to_string(),
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    let http_filters = vec![
        listener::http_filter("envoy.filters.http.lua", any(&lua)),
        listener::router_filter(),
    ];
    let manager = HttpConnectionManager {
        stat_prefix: name.clone(),
        route_specifier: Some(listener::rds(&name)),
        // The public listener already set x-forwarded-for to the client and made or kept
        // the request id; this hop must pass both on unchanged (its peer is Envoy itself).
        skip_xff_append: true,
        preserve_external_request_id: true,
        // The gateway's JSON errors (504 on a route timeout, 503 when the upstream is
        // unreachable) are made here for cached routes, so they must look the same.
        local_reply_config: Some(local_reply::local_reply_config(&[])),
        http_filters,
        ..Default::default()
    };
    Listener {
        name,
        listener_specifier: Some(ListenerSpecifier::InternalListener(
            InternalListenerConfig {},
        )),
        filter_chains: vec![listener::http_filter_chain(&manager)],
        ..Default::default()
    }
}

/// The cluster `override_upstream_cluster` names: one endpoint, the internal listener.
pub(super) fn fill_cluster(listener: &str) -> Cluster {
    let name = fill_name(listener);
    let endpoint = LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::EnvoyInternalAddress(
                    EnvoyInternalAddress {
                        address_name_specifier: Some(AddressNameSpecifier::ServerListenerName(
                            name.clone(),
                        )),
                        ..Default::default()
                    },
                )),
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name,
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![endpoint],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}
