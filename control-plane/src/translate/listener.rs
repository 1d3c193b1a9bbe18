//! One Envoy listener per routes.yaml listener, each an HTTP connection manager whose routes
//! arrive over RDS under the listener's own name.

use tollgate_proto::envoy::config::common::mutation_rules::v3::{
    header_mutation::Action as MutationAction, HeaderMutation as MutationRule,
};
use tollgate_proto::envoy::config::core::v3::TypedExtensionConfig;
use tollgate_proto::envoy::config::core::v3::{
    address, socket_address::PortSpecifier, Address, SocketAddress,
};
use tollgate_proto::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use tollgate_proto::envoy::config::route::v3::FilterConfig;
use tollgate_proto::envoy::extensions::filters::http::router::v3::Router;
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager, HttpFilter, Rds,
    ResponseMapper,
};
use tollgate_proto::envoy::extensions::http::early_header_mutation::header_mutation::v3::HeaderMutation;
use tollgate_proto::google::protobuf::Any;
use tollgate_proto::google::protobuf::BoolValue;
use tollgate_proto::envoy::config::accesslog::v3::AccessLog;
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::PathWithEscapedSlashesAction;
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing as HcmTracing;
use tollgate_routes::{EscapedSlashes, Listener as ListenerConfig};

use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::CodecType;
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::UpgradeConfig;
use tollgate_proto::envoy::config::core::v3::{
    http_protocol_options::HeadersWithUnderscoresAction, Http2ProtocolOptions,
    HttpProtocolOptions,
};
use tollgate_proto::envoy::extensions::filters::network::connection_limit::v3::ConnectionLimit;
use tollgate_proto::google::protobuf::{UInt32Value, UInt64Value};
use tollgate_routes::ListenerLimits;

/// The upgrade type of WebSockets, in Envoy's upgrade configs.
pub(super) const WEBSOCKET: &str = "websocket";

use super::{
    ads_config_source, any, auth, body_limit, cors, http2, ip_rules, jwt_authn, listener_tls,
    local_rate_limit, local_reply, proto_duration, rate_limit,
};

/// HTTP/2 towards clients: the edge windows, at most `limits.max_concurrent_streams` streams
/// per connection (Envoy's default, 2^31 - 1, lets one connection open streams without
/// bound), and extended CONNECT when a route passes WebSockets.
fn downstream_http2(limits: &ListenerLimits, websocket: bool) -> Http2ProtocolOptions {
    Http2ProtocolOptions {
        max_concurrent_streams: Some(UInt32Value {
            value: limits.max_concurrent_streams,
        }),
        allow_connect: websocket,
        ..http2::windows()
    }
}

/// The listener's first network filter: at most `limits.max_connections` client connections
/// at once, counted across Envoy's worker threads; more are closed as they are accepted,
/// before TLS or HTTP costs anything.
fn connection_limit(listener: &str, limits: &ListenerLimits) -> Filter {
    Filter {
        name: CONNECTION_LIMIT_FILTER.into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&ConnectionLimit {
            stat_prefix: listener.to_string(),
            max_connections: Some(UInt64Value {
                value: limits.max_connections,
            }),
            ..Default::default()
        }))),
    }
}

/// The network filter that caps a listener's connections.
pub(super) const CONNECTION_LIMIT_FILTER: &str = "envoy.filters.network.connection_limit";

fn escaped_slashes_action(escaped: EscapedSlashes) -> PathWithEscapedSlashesAction {
    match escaped {
        EscapedSlashes::Reject => PathWithEscapedSlashesAction::RejectRequest,
        EscapedSlashes::Redirect => PathWithEscapedSlashesAction::UnescapeAndRedirect,
        EscapedSlashes::Keep => PathWithEscapedSlashesAction::KeepUnchanged,
    }
}

pub(super) fn http_filter(name: &str, config: Any) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

fn strip_headers(headers: &[String]) -> TypedExtensionConfig {
    let mutations = headers
        .iter()
        .map(|h| MutationRule {
            action: Some(MutationAction::Remove(h.clone())),
        })
        .collect();
    TypedExtensionConfig {
        name: "tollgate.strip_identity_headers".into(),
        typed_config: Some(any(&HeaderMutation { mutations })),
    }
}

/// A route's (or virtual host's) setting for a listener filter that has no work there:
/// Envoy then leaves the filter out of the request's chain altogether. A filter's own
/// "disabled" setting (`ExtAuthzPerRoute`, `BufferPerRoute`, ...) still builds the filter for
/// every request, and ext_authz and ratelimit build a gRPC client with it: under callgrind,
/// Envoy 1.40 spent about 14,000 instructions per request on each of those two filters on
/// a route that used neither, 13% of a bare proxied request.
pub(super) fn filter_off() -> Any {
    any(&FilterConfig {
        config: None,
        is_optional: false,
        disabled: true,
    })
}

/// The last filter of every chain: the one that forwards.
pub(super) fn router_filter() -> HttpFilter {
    http_filter("envoy.filters.http.router", any(&Router::default()))
}

/// Routes from the route configuration `name`, over ADS.
pub(super) fn rds(name: &str) -> RouteSpecifier {
    RouteSpecifier::Rds(Rds {
        config_source: Some(ads_config_source()),
        route_config_name: name.to_string(),
    })
}

/// The HTTP filters one listener runs, decided from the routes it serves.
pub(super) struct ListenerFilters {
    /// The RBAC filter config, when the listener or a route on it has IP rules.
    pub ip_rules: Option<Any>,
    /// The cors filter config, when a route on this listener has a CORS policy.
    pub cors: Option<Any>,
    /// Request headers no client may send: the identity ext-authz vouches for.
    pub strip_headers: Vec<String>,
    /// The jwt_authn filter config, when a route on this listener has Envoy check tokens.
    pub jwt_authn: Option<Any>,
    /// With jwt_authn: the RBAC filter for the claims every token must carry.
    pub jwt_claims: Option<Any>,
    /// The RBAC filter for such routes' scopes and consumers, when one has them.
    pub jwt_scopes: Option<Any>,
    /// Local reply mappers tried before the gateway's own (jwt_authn's refusals).
    pub reply_mappers: Vec<ResponseMapper>,
    /// The ext_authz filter config, when a route on this listener requires auth of
    /// tollgate-ext-authz.
    pub ext_authz: Option<Any>,
    /// The local_ratelimit filter config, when a route on this listener has local rules.
    pub local_rate_limit: Option<Any>,
    /// The ratelimit filter config, when a route on this listener has global rules.
    pub rate_limit: Option<Any>,
    /// The buffer filter config, when a route on this listener limits request bodies.
    pub body_limit: Option<Any>,
    /// The cache filter, when a route on this listener has `cache`.
    pub cache: Option<HttpFilter>,
    pub access_log: Option<AccessLog>,
    /// OpenTelemetry tracing, when routes.yaml turns it on.
    pub tracing: Option<HcmTracing>,
    /// A route on this listener lets WebSocket upgrades through.
    pub websocket: bool,
    /// The gRPC-JSON transcoder, off unless a route turns it on, when a route transcodes.
    pub transcode: Option<HttpFilter>,
}

pub(super) fn listener(config: &ListenerConfig, filters: &ListenerFilters) -> Listener {
    // Order matters. CORS first, so preflights are answered before anything asks for a
    // token. Buffering after auth and rate limits, so a client refused by them never makes
    // the gateway hold its body in memory. The cache last: an answer from the cache still
    // needs the token and counts against the limits, as one from the upstream does.
    // IP rules first of all: a refused client costs nothing else, not even a preflight.
    // Local limits after ext_authz, whose `x-consumer-id` they count by, and before the
    // global ones, so that a request refused locally costs no call to the rate-limit
    // service.
    let mut http_filters: Vec<HttpFilter> = [
        (ip_rules::FILTER_NAME, filters.ip_rules.as_ref()),
        (cors::FILTER_NAME, filters.cors.as_ref()),
        (jwt_authn::FILTER_NAME, filters.jwt_authn.as_ref()),
        (jwt_authn::CLAIMS_FILTER_NAME, filters.jwt_claims.as_ref()),
        (jwt_authn::SCOPES_FILTER_NAME, filters.jwt_scopes.as_ref()),
        (auth::FILTER_NAME, filters.ext_authz.as_ref()),
        (
            local_rate_limit::FILTER_NAME,
            filters.local_rate_limit.as_ref(),
        ),
        (rate_limit::FILTER_NAME, filters.rate_limit.as_ref()),
        (body_limit::FILTER_NAME, filters.body_limit.as_ref()),
    ]
    .into_iter()
    .filter_map(|(name, config)| config.map(|c| http_filter(name, c.clone())))
    .collect();
    http_filters.extend(filters.cache.iter().cloned());
    // Last before the router: auth, limits and the cache see the REST request as sent.
    http_filters.extend(filters.transcode.iter().cloned());
    http_filters.push(router_filter());
    let limits = &config.limits;
    let manager = HttpConnectionManager {
        stat_prefix: config.name.clone(),
        // HTTP/2 or HTTP/1.1 as ALPN chose on TLS listeners; on plaintext ones, HTTP/2 when
        // the connection opens with its preface (prior knowledge, RFC 9113 §3.3), else 1.1.
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(rds(&config.name)),
        // The gateway is the edge: trust the peer address, not a client-supplied
        // x-forwarded-for, when deciding who the client is; behind `trusted_proxies` load
        // balancers, the address that many entries from the right of x-forwarded-for (what
        // RBAC's `remote_ip` and rate limits by client address then see).
        use_remote_address: Some(BoolValue { value: true }),
        xff_num_trusted_hops: config.trusted_proxies,
        // Correlation ids: keep the client's, make one otherwise, and echo it back.
        generate_request_id: Some(BoolValue { value: true }),
        preserve_external_request_id: true,
        always_set_request_id_in_response: true,
        // A path must not reach a route by a spelling that dodges the route's auth rule
        // (`/a/../b`, `//b`, `%2F`): normalise per RFC 3986 §6 before routing.
        normalize_path: Some(BoolValue { value: true }),
        merge_slashes: true,
        path_with_escaped_slashes_action: escaped_slashes_action(config.escaped_slashes) as i32,
        local_reply_config: Some(local_reply::local_reply_config(&filters.reply_mappers)),
        access_log: filters.access_log.iter().cloned().collect(),
        tracing: filters.tracing.clone(),
        request_id_extension: filters
            .tracing
            .as_ref()
            .map(|_| super::tracing::request_id_extension()),
        // Before routing and before ext_authz: a client-sent x-consumer-id (or any
        // header ext-authz fills from a claim) must never reach an upstream or a rate
        // limit, on public routes too.
        early_header_mutation_extensions: vec![strip_headers(&filters.strip_headers)],
        http_filters,
        // Upgrades stay off by default and only the routes with `websocket` turn them on
        // (RouteAction.upgrade_configs); HTTP/2 clients upgrade by extended CONNECT (RFC
        // 8441), which Envoy turns into an HTTP/1.1 Upgrade towards the upstream.
        upgrade_configs: filters
            .websocket
            .then(|| UpgradeConfig {
                upgrade_type: WEBSOCKET.to_string(),
                enabled: Some(BoolValue { value: false }),
                ..Default::default()
            })
            .into_iter()
            .collect(),
        http2_protocol_options: Some(downstream_http2(limits, filters.websocket)),
        // Envoy's edge-proxy guide: an upstream that treats `_` and `-` alike (CGI, and the
        // frameworks built on its environment variables) would otherwise take a client's
        // `x_consumer_id` for the `x-consumer-id` the gateway stripped. 400 over HTTP/1, a
        // reset stream over HTTP/2.
        common_http_protocol_options: Some(HttpProtocolOptions {
            idle_timeout: Some(proto_duration(limits.connection_idle_timeout)),
            headers_with_underscores_action: HeadersWithUnderscoresAction::RejectRequest as i32,
            ..Default::default()
        }),
        max_request_headers_kb: Some(UInt32Value {
            value: limits.max_request_headers_kb,
        }),
        request_headers_timeout: Some(proto_duration(limits.request_headers_timeout)),
        stream_idle_timeout: Some(proto_duration(limits.stream_idle_timeout)),
        // No `request_timeout` (Envoy's default, off), against the edge guide's 5 minutes: it
        // bounds the whole request, so it would cut long uploads, client-streaming gRPC and
        // WebSockets, which routes.yaml promises; the idle and header timeouts bound a client
        // that stalls instead.
        ..Default::default()
    };
    Listener {
        name: config.name.clone(),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: config.address.ip().to_string(),
                port_specifier: Some(PortSpecifier::PortValue(u32::from(config.address.port()))),
                ..Default::default()
            })),
        }),
        filter_chains: vec![with_connection_limit(
            FilterChain {
                transport_socket: config
                    .tls
                    .as_ref()
                    .map(|tls| listener_tls::downstream_tls(&config.name, tls)),
                ..http_filter_chain(&manager)
            },
            connection_limit(&config.name, limits),
        )],
        // Envoy's edge-proxy guide: 32 KiB read and write buffers per client connection
        // (Envoy's default is 1 MiB), so slow or stalled clients cannot make the gateway hold
        // much of what it reads for them.
        per_connection_buffer_limit_bytes: Some(UInt32Value {
            value: limits.connection_buffer_kb.saturating_mul(1024),
        }),
        ..Default::default()
    }
}

/// `chain` with `limit` as its first network filter.
fn with_connection_limit(mut chain: FilterChain, limit: Filter) -> FilterChain {
    chain.filters.insert(0, limit);
    chain
}

/// A listener's one filter chain: the HTTP connection manager.
pub(super) fn http_filter_chain(manager: &HttpConnectionManager) -> FilterChain {
    FilterChain {
        filters: vec![Filter {
            name: "envoy.filters.network.http_connection_manager".into(),
            config_type: Some(filter::ConfigType::TypedConfig(any(manager))),
        }],
        ..Default::default()
    }
}

#[cfg(test)]
#[path = "listener_limits_tests.rs"]
mod listener_limits_tests;
