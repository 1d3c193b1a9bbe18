//! Per-route traffic policies as Envoy sees them: route settings, per-route filter configs,
//! and the filters a listener runs for them, in order.

use prost::Message;
use tollgate_proto::envoy::config::cluster::v3::Cluster;
use tollgate_proto::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use tollgate_proto::envoy::config::listener::v3::{listener::ListenerSpecifier, Listener};
use tollgate_proto::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, route::Action, route_action::HostRewriteSpecifier,
    FilterConfig, Route as EnvoyRoute, RouteAction, RouteConfiguration,
};
use tollgate_proto::envoy::extensions::filters::http::buffer::v3::{
    buffer_per_route::Override as BufferOverride, BufferPerRoute,
};
use tollgate_proto::envoy::extensions::filters::http::cache_v2::v3::CacheV2Config;
use tollgate_proto::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpFilter,
};
use tollgate_proto::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use tollgate_proto::google::protobuf::Any;

use super::super::tests::{decode, manager as manager_of, route_named as route, switched_off};
use super::super::translate;
use crate::snapshot::{type_url, Snapshot};

const CONFIG: &str = r#"
version: 1
listeners:
  - {name: public, address: 0.0.0.0:8080}
  - {name: plain, address: 127.0.0.1:8081}
services:
  invoices: {endpoints: ["127.0.0.1:3000"]}
auth_providers:
  main: {issuer: https://id.example.com, audiences: [api], jwks_file: jwks.json}
routes:
  - name: invoices
    listener: public
    match: {prefix: /v1/, methods: [GET, POST]}
    service: invoices
    auth: {provider: main}
    retries: {attempts: 3, per_try_timeout: 1s, on: [5xx, reset, "503"], backoff: {base: 50ms, max: 400ms}}
    idle_timeout: 30s
    cors: {origins: ["https://app.example.com"], methods: [GET, POST], headers: [authorization], expose_headers: [x-request-id], credentials: true, max_age: 1h}
    request_headers: {add: {x-from: gw}, set: {x-env: "100% prod"}, remove: [x-debug]}
    response_headers: {remove: [x-powered-by]}
    rewrite_regex: {pattern: "^/v1/(.*)$", substitution: "/\\1"}
    host_rewrite: invoices.internal
    max_request_bytes: 1024
  - name: open
    listener: public
    match: {prefix: /, methods: [GET]}
    service: invoices
  - name: plain
    listener: plain
    match: {prefix: /}
    service: invoices
sidecars:
  ext_authz: {address: 127.0.0.1:9191}
"#;

fn snapshot(text: &str) -> Snapshot {
    translate(
        &tollgate_routes::parse("routes.yaml", text).expect("valid"),
        &Default::default(),
    )
}

fn routes(snapshot: &Snapshot, listener: &str) -> RouteConfiguration {
    decode(snapshot, type_url::ROUTE, listener)
}

fn action(route: &EnvoyRoute) -> &RouteAction {
    match &route.action {
        Some(Action::Route(action)) => action,
        other => panic!("route action expected, got {other:?}"),
    }
}

fn http_filter_names(snapshot: &Snapshot, listener: &str) -> Vec<String> {
    manager_of(snapshot, listener)
        .http_filters
        .into_iter()
        .map(|f| f.name)
        .collect()
}

fn decode_any<M: Message + Default>(any: &Any) -> M {
    M::decode(any.value.as_slice()).expect("decodes")
}

fn method_regex(route: &EnvoyRoute) -> String {
    let matcher = route.r#match.as_ref().expect("match");
    matcher
        .headers
        .iter()
        .find(|h| h.name == ":method")
        .and_then(|h| match &h.header_match_specifier {
            Some(HeaderMatchSpecifier::StringMatch(m)) => match &m.match_pattern {
                Some(MatchPattern::SafeRegex(r)) => Some(r.regex.clone()),
                _ => None,
            },
            _ => None,
        })
        .expect("a method matcher")
}

#[test]
fn retries_count_tries_and_become_envoy_retries() {
    let config = routes(&snapshot(CONFIG), "public");
    let retry = action(route(&config, "invoices"))
        .retry_policy
        .clone()
        .expect("retry policy");
    assert_eq!(retry.retry_on, "5xx,reset,retriable-status-codes");
    assert_eq!(retry.retriable_status_codes, [503]);
    assert_eq!(
        retry.num_retries.map(|n| n.value),
        Some(2),
        "3 attempts are the first try and 2 retries"
    );
    assert_eq!(retry.per_try_timeout.map(|d| d.seconds), Some(1));
    let backoff = retry.retry_back_off.expect("backoff");
    assert_eq!(backoff.base_interval.map(|d| d.nanos), Some(50_000_000));
    assert_eq!(backoff.max_interval.map(|d| d.nanos), Some(400_000_000));
    // Retries go to another endpoint than the one that failed.
    assert_eq!(
        retry.retry_host_predicate[0].name,
        "envoy.retry_host_predicates.previous_hosts"
    );
    assert_eq!(retry.host_selection_retry_max_attempts, 3);
    assert_eq!(action(route(&config, "open")).retry_policy, None);
}

#[test]
fn rewrites_and_idle_timeout_are_route_action_settings() {
    let config = routes(&snapshot(CONFIG), "public");
    let action = action(route(&config, "invoices"));
    let rewrite = action.regex_rewrite.as_ref().expect("regex rewrite");
    assert_eq!(
        rewrite.pattern.as_ref().map(|p| p.regex.as_str()),
        Some("^/v1/(.*)$")
    );
    assert_eq!(rewrite.substitution, "/\\1");
    assert_eq!(action.prefix_rewrite, "");
    assert_eq!(
        action.host_rewrite_specifier,
        Some(HostRewriteSpecifier::HostRewriteLiteral(
            "invoices.internal".into()
        ))
    );
    assert_eq!(action.idle_timeout.map(|d| d.seconds), Some(30));
}

#[test]
fn header_edits_set_overwrites_add_appends_and_percent_stays_literal() {
    let config = routes(&snapshot(CONFIG), "public");
    let route = route(&config, "invoices");
    let edits: Vec<(&str, &str, i32)> = route
        .request_headers_to_add
        .iter()
        .map(|o| {
            let header = o.header.as_ref().expect("header");
            (header.key.as_str(), header.value.as_str(), o.append_action)
        })
        .collect();
    assert_eq!(
        edits,
        [
            (
                "x-env",
                "100%% prod",
                HeaderAppendAction::OverwriteIfExistsOrAdd as i32
            ),
            (
                "x-from",
                "gw",
                HeaderAppendAction::AppendIfExistsOrAdd as i32
            ),
        ]
    );
    assert_eq!(route.request_headers_to_remove, ["x-debug"]);
    assert_eq!(route.response_headers_to_remove, ["x-powered-by"]);
    assert!(route.response_headers_to_add.is_empty());
}

#[test]
fn cors_runs_first_so_preflights_never_meet_ext_authz() {
    let names = http_filter_names(&snapshot(CONFIG), "public");
    assert_eq!(
        names,
        [
            "envoy.filters.http.cors",
            "envoy.filters.http.ext_authz",
            "envoy.filters.http.buffer",
            "envoy.filters.http.router"
        ]
    );
    assert_eq!(
        http_filter_names(&snapshot(CONFIG), "plain"),
        ["envoy.filters.http.router"],
        "a listener whose routes need neither runs neither filter"
    );
}

#[test]
fn a_route_cors_policy_is_its_per_route_cors_config() {
    let config = routes(&snapshot(CONFIG), "public");
    let invoices = route(&config, "invoices");
    let policy: CorsPolicy =
        decode_any(&invoices.typed_per_filter_config["envoy.filters.http.cors"]);
    assert_eq!(
        policy.allow_origin_string_match[0].match_pattern,
        Some(MatchPattern::Exact("https://app.example.com".into()))
    );
    assert_eq!(policy.allow_methods, "GET,POST");
    assert_eq!(policy.allow_headers, "authorization");
    assert_eq!(policy.expose_headers, "x-request-id");
    assert_eq!(policy.max_age, "3600");
    assert_eq!(policy.allow_credentials.map(|b| b.value), Some(true));
    assert_eq!(
        policy.forward_not_matching_preflights.map(|b| b.value),
        Some(false)
    );
    assert!(
        method_regex(invoices).contains("OPTIONS"),
        "a preflight must match the route to find its policy"
    );
    let open = route(&config, "open");
    assert!(
        switched_off(&open.typed_per_filter_config["envoy.filters.http.cors"]),
        "the listener runs the cors filter for `invoices`; `open` has no policy"
    );
    assert_eq!(
        method_regex(open),
        "^(?:GET)$",
        "without a CORS policy OPTIONS is not added"
    );
}

#[test]
fn top_level_cors_sits_on_the_virtual_host_for_routes_without_their_own() {
    let text = format!("{CONFIG}cors: {{origins: [\"*\"]}}\n");
    let snapshot = snapshot(&text);
    let config = routes(&snapshot, "plain");
    let policy: CorsPolicy =
        decode_any(&config.virtual_hosts[0].typed_per_filter_config["envoy.filters.http.cors"]);
    assert_eq!(
        policy.allow_origin_string_match[0].match_pattern,
        Some(MatchPattern::Exact("*".into()))
    );
    assert_eq!(policy.allow_credentials.map(|b| b.value), Some(false));
    assert_eq!(
        http_filter_names(&snapshot, "plain"),
        ["envoy.filters.http.cors", "envoy.filters.http.router"]
    );
    let public = routes(&snapshot, "public");
    assert_eq!(method_regex(route(&public, "open")), "^(?:GET|OPTIONS)$");
    assert!(
        !route(&public, "open")
            .typed_per_filter_config
            .contains_key("envoy.filters.http.cors"),
        "a route without its own policy inherits the virtual host's"
    );
}

#[test]
fn a_route_opting_out_of_the_top_level_cors_switches_the_filter_off() {
    let text = format!("{CONFIG}cors: {{origins: [\"*\"]}}\n").replace(
        "    match: {prefix: /}\n    service: invoices\nsidecars",
        "    match: {prefix: /}\n    service: invoices\n    cors: {enabled: false}\nsidecars",
    );
    let plain = routes(&snapshot(&text), "plain");
    assert!(switched_off(
        &route(&plain, "plain").typed_per_filter_config["envoy.filters.http.cors"]
    ));
}

#[test]
fn buffering_is_off_on_the_virtual_host_and_on_where_a_route_limits_bodies() {
    let config = routes(&snapshot(CONFIG), "public");
    assert!(switched_off(
        &config.virtual_hosts[0].typed_per_filter_config["envoy.filters.http.buffer"]
    ));
    let limited: BufferPerRoute = decode_any(
        &route(&config, "invoices").typed_per_filter_config["envoy.filters.http.buffer"],
    );
    let Some(BufferOverride::Buffer(buffer)) = limited.r#override else {
        panic!("a buffer override expected")
    };
    assert_eq!(buffer.max_request_bytes.map(|b| b.value), Some(1024));
    assert!(!route(&config, "open")
        .typed_per_filter_config
        .contains_key("envoy.filters.http.buffer"));
}

#[test]
fn policies_with_maps_translate_to_the_same_version_every_time() {
    let text = format!("{CONFIG}cors: {{origins: [\"*\"]}}\n");
    let versions: std::collections::HashSet<String> = (0..20)
        .map(|_| snapshot(&text).version().to_string())
        .collect();
    assert_eq!(versions.len(), 1, "{versions:?}");
}

const CACHED: &str = r#"
version: 1
listeners:
  - {name: public, address: 0.0.0.0:8080}
  - {name: plain, address: 127.0.0.1:8081}
services:
  catalogue: {endpoints: ["127.0.0.1:3000"]}
routes:
  - name: uncached-first
    listener: public
    match: {prefix: /v1/live/}
    service: catalogue
  - name: catalogue
    listener: public
    match: {prefix: /v1/}
    service: catalogue
    rewrite_prefix: /items/
    request_headers: {set: {x-from: gw}}
    response_headers: {set: {x-served-by: gw}}
    timeout: 2s
    cache: {ttl: 30s}
  - name: plain
    listener: plain
    match: {prefix: /}
    service: catalogue
"#;

fn cache_filter(snapshot: &Snapshot, listener: &str) -> Option<HttpFilter> {
    manager_of(snapshot, listener)
        .http_filters
        .into_iter()
        .find(|f| f.name == "envoy.filters.http.cache_v2")
}

#[test]
fn the_cache_filter_runs_last_before_the_router_and_only_where_a_route_caches() {
    let snapshot = snapshot(CACHED);
    let names = http_filter_names(&snapshot, "public");
    assert_eq!(
        names[names.len() - 2..],
        ["envoy.filters.http.cache_v2", "envoy.filters.http.router"]
    );
    assert!(cache_filter(&snapshot, "plain").is_none());
    assert!(!snapshot
        .resources(type_url::LISTENER)
        .resources
        .contains_key("tollgate_cache_fill:plain"));
}

#[test]
fn the_cache_filter_is_off_by_default_and_switched_on_by_cached_routes_only() {
    let snapshot = snapshot(CACHED);
    let filter = cache_filter(&snapshot, "public").expect("cache filter");
    assert!(filter.disabled, "routes without cache must never cache");
    let Some(http_filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
        panic!("typed config expected")
    };
    let config: CacheV2Config = decode_any(any);
    assert_eq!(
        config.override_upstream_cluster,
        "tollgate_cache_fill:public"
    );
    assert!(config.ignore_request_cache_control_header);
    let routes = routes(&snapshot, "public");
    let on: FilterConfig = decode_any(
        &route(&routes, "catalogue").typed_per_filter_config["envoy.filters.http.cache_v2"],
    );
    assert!(!on.disabled);
    assert!(!route(&routes, "uncached-first")
        .typed_per_filter_config
        .contains_key("envoy.filters.http.cache_v2"));
}

#[test]
fn the_side_channel_reaches_an_internal_listener_routing_with_the_same_actions() {
    let snapshot = snapshot(CACHED);
    let cluster: Cluster = decode(&snapshot, type_url::CLUSTER, "tollgate_cache_fill:public");
    let endpoint = &cluster.load_assignment.expect("endpoints").endpoints[0].lb_endpoints[0];
    assert!(format!("{endpoint:?}").contains("ServerListenerName(\"tollgate_cache_fill:public\")"));
    let listener: Listener = decode(&snapshot, type_url::LISTENER, "tollgate_cache_fill:public");
    assert!(matches!(
        listener.listener_specifier,
        Some(ListenerSpecifier::InternalListener(_))
    ));
    let manager = manager_of(&snapshot, "tollgate_cache_fill:public");
    let names: Vec<&str> = manager
        .http_filters
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    // No ext_authz or rate limit again: they ran on the client's request.
    assert_eq!(
        names,
        ["envoy.filters.http.lua", "envoy.filters.http.router"]
    );
    assert!(manager.skip_xff_append);

    let public = routes(&snapshot, "public");
    let fill = routes(&snapshot, "tollgate_cache_fill:public");
    assert_eq!(
        fill.virtual_hosts[0]
            .routes
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["catalogue"],
        "only cached routes: the side channel carries nothing else"
    );
    let (public_route, fill_route) = (route(&public, "catalogue"), route(&fill, "catalogue"));
    assert_eq!(public_route.r#match, fill_route.r#match);
    assert_eq!(action(public_route), action(fill_route));
    assert_eq!(
        public_route.request_headers_to_add,
        fill_route.request_headers_to_add
    );
    assert!(fill_route.typed_per_filter_config.is_empty());
    let added = &fill_route.response_headers_to_add;
    assert_eq!(
        added[..added.len() - 1],
        public_route.response_headers_to_add[..]
    );
    let freshness = added.last().expect("default freshness");
    let header = freshness.header.as_ref().expect("header");
    assert_eq!(
        (header.key.as_str(), header.value.as_str()),
        ("cache-control", "max-age=30")
    );
    assert_eq!(
        freshness.append_action,
        HeaderAppendAction::AddIfAbsent as i32
    );
}
