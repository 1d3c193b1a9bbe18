use prost::Message;
use tollgate_proto::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DnsLookupFamily},
    Cluster,
};
use tollgate_proto::envoy::config::core::v3::{data_source, DataSource};
use tollgate_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use tollgate_proto::envoy::config::listener::v3::{filter, Listener};
use tollgate_proto::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, route::Action, route_match::PathSpecifier,
    RouteConfiguration,
};
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use tollgate_proto::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use tollgate_proto::envoy::r#type::matcher::v3::string_matcher::MatchPattern;

use tollgate_proto::envoy::config::core::v3::health_check::HealthChecker;
use tollgate_proto::envoy::extensions::filters::http::ext_authz::v3::{
    ext_authz::Services, ExtAuthz,
};
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;

use super::translate;
use crate::snapshot::{type_url, Snapshot};

const CONFIG: &str = "\
version: 1
listeners:
  - {name: public, address: 0.0.0.0:8080}
  - {name: mobile, address: 127.0.0.1:8081}
services:
  invoices: {endpoints: [\"127.0.0.1:3000\", \"127.0.0.1:3001\"], connect_timeout: 250ms}
  legacy: {endpoints: [\"legacy.internal:80\"]}
routes:
  - name: list
    listener: public
    match: {prefix: /api/v1/invoices, methods: [GET, POST], headers: {x-tenant: acme}}
    service: invoices
    rewrite_prefix: /invoices
    timeout: 2s
  - name: by-id
    match: {regex: '/items/[0-9]+'}
    service: legacy
";

fn snapshot() -> Snapshot {
    translate(
        &tollgate_routes::parse("routes.yaml", CONFIG).expect("valid"),
        &Default::default(),
    )
}

pub(super) fn route_named<'a>(
    config: &'a RouteConfiguration,
    name: &str,
) -> &'a tollgate_proto::envoy::config::route::v3::Route {
    config.virtual_hosts[0]
        .routes
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no route {name}"))
}

pub(super) fn decode<M: Message + Default>(snapshot: &Snapshot, type_url: &str, name: &str) -> M {
    let resource = &snapshot.resources(type_url).resources[name];
    M::decode(resource.body.value.as_slice()).expect("decodes")
}

/// The (certificate chain, private key) of the SDS secret `name`, both inline.
pub(super) fn secret_pair(snapshot: &Snapshot, name: &str) -> (Vec<u8>, Vec<u8>) {
    let secret: Secret = decode(snapshot, type_url::SECRET, name);
    let Some(secret::Type::TlsCertificate(pair)) = secret.r#type else {
        panic!("a TLS certificate secret expected")
    };
    let bytes = |source: Option<DataSource>| match source.and_then(|s| s.specifier) {
        Some(data_source::Specifier::InlineBytes(bytes)) => bytes,
        other => panic!("inline bytes expected, got {other:?}"),
    };
    (bytes(pair.certificate_chain), bytes(pair.private_key))
}

/// The names of every SDS secret in `snapshot`.
pub(super) fn secret_names(snapshot: &Snapshot) -> Vec<String> {
    snapshot
        .resources(type_url::SECRET)
        .resources
        .keys()
        .cloned()
        .collect()
}

#[test]
fn ip_services_become_eds_clusters_with_their_endpoints() {
    let snapshot = snapshot();
    let cluster: Cluster = decode(&snapshot, type_url::CLUSTER, "invoices");
    assert_eq!(
        cluster.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(3)),
        "EDS"
    );
    assert_eq!(cluster.connect_timeout.map(|d| d.nanos), Some(250_000_000));
    let assignment: ClusterLoadAssignment = decode(&snapshot, type_url::ENDPOINT, "invoices");
    assert_eq!(assignment.endpoints[0].lb_endpoints.len(), 2);
}

#[test]
fn dns_services_become_strict_dns_clusters_without_eds() {
    let snapshot = snapshot();
    let cluster: Cluster = decode(&snapshot, type_url::CLUSTER, "legacy");
    assert_eq!(
        cluster.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(1))
    );
    assert!(cluster.load_assignment.is_some());
    assert_eq!(
        cluster.dns_lookup_family,
        DnsLookupFamily::V4Preferred as i32,
        "IPv4 first: `localhost` must not become [::1]"
    );
    assert!(!snapshot
        .resources(type_url::ENDPOINT)
        .resources
        .contains_key("legacy"));
}

#[test]
fn each_listener_gets_its_own_route_configuration_over_rds() {
    let snapshot = snapshot();
    let manager = manager(&snapshot, "mobile");
    let Some(RouteSpecifier::Rds(rds)) = manager.route_specifier else {
        panic!("rds expected")
    };
    assert_eq!(rds.route_config_name, "mobile");
    let mobile: RouteConfiguration = decode(&snapshot, type_url::ROUTE, "mobile");
    let names: Vec<_> = mobile.virtual_hosts[0]
        .routes
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["tollgate_health", "by-id"],
        "the public-only route is not on mobile"
    );
}

#[test]
fn route_matches_rewrite_and_timeout_are_carried_over() {
    let public: RouteConfiguration = decode(&snapshot(), type_url::ROUTE, "public");
    let route = route_named(&public, "list");
    let matcher = route.r#match.as_ref().expect("match");
    assert_eq!(
        matcher.path_specifier,
        Some(PathSpecifier::Prefix("/api/v1/invoices".into()))
    );
    let patterns: Vec<_> = matcher
        .headers
        .iter()
        .map(|h| match &h.header_match_specifier {
            Some(HeaderMatchSpecifier::StringMatch(m)) => {
                (h.name.as_str(), m.match_pattern.clone())
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert!(matches!(&patterns[0], ("x-tenant", Some(MatchPattern::Exact(v))) if v == "acme"));
    assert!(
        matches!(&patterns[1], (":method", Some(MatchPattern::SafeRegex(r))) if r.regex == "^(?:GET|POST)$")
    );
    let Some(Action::Route(action)) = &route.action else {
        panic!("route action expected")
    };
    assert_eq!(action.prefix_rewrite, "/invoices");
    assert_eq!(action.timeout.map(|d| d.seconds), Some(2));
}

#[test]
fn translating_the_same_config_twice_gives_the_same_version() {
    assert_eq!(snapshot().version(), snapshot().version());
}

const PROTECTED: &str = "\
version: 1
listeners:
  - {name: public, address: 0.0.0.0:8080}
  - {name: internal, address: 127.0.0.1:8081}
services:
  invoices: {endpoints: [\"127.0.0.1:3000\"]}
auth_providers:
  main:
    issuer: https://id.example.com
    audiences: [api]
    jwks_file: jwks.json
    forward_claims: {tier: x-consumer-tier}
routes:
  - name: secured
    listener: public
    match: {prefix: /api}
    service: invoices
    auth: {provider: main, scopes: [read, write]}
    rate_limit:
      - {by: consumer, requests: 10, per: second}
      - {by: consumer, tier_header: x-consumer-tier, tiers: {free: 1/second}}
  - name: open
    match: {prefix: /}
    service: invoices
sidecars:
  ext_authz: {address: 127.0.0.1:9191}
  rate_limit: {address: 127.0.0.1:8082, domain: edge}
";

fn protected() -> Snapshot {
    translate(
        &tollgate_routes::parse("routes.yaml", PROTECTED).expect("valid"),
        &Default::default(),
    )
}

/// The HTTP connection manager of `listener`: its one filter chain's last network filter.
pub(super) fn manager(snapshot: &Snapshot, listener: &str) -> HttpConnectionManager {
    let listener: Listener = decode(snapshot, type_url::LISTENER, listener);
    let last = listener.filter_chains[0].filters.last().expect("filters");
    assert_eq!(last.name, "envoy.filters.network.http_connection_manager");
    let Some(filter::ConfigType::TypedConfig(any)) = &last.config_type else {
        panic!("typed config expected")
    };
    HttpConnectionManager::decode(any.value.as_slice()).expect("hcm")
}

#[test]
fn sidecars_get_http2_clusters() {
    let snapshot = protected();
    for name in ["tollgate_ext_authz", "tollgate_ratelimit"] {
        let cluster: Cluster = decode(&snapshot, type_url::CLUSTER, name);
        assert!(
            cluster
                .typed_extension_protocol_options
                .contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
            "{name} speaks HTTP/2"
        );
    }
}

#[test]
fn replicated_sidecars_are_health_checked_and_their_calls_retried_on_another() {
    let one = protected();
    let replicated_yaml = PROTECTED
        .replace(
            "ext_authz: {address: 127.0.0.1:9191}",
            "ext_authz: {address: [127.0.0.1:9191, 127.0.0.2:9191]}",
        )
        .replace(
            "rate_limit: {address: 127.0.0.1:8082, domain: edge}",
            "rate_limit: {address: [\"127.0.0.1:8082\", \"127.0.0.2:8082\"], domain: edge}",
        );
    let replicated = translate(
        &tollgate_routes::parse("routes.yaml", &replicated_yaml).expect("valid"),
        &Default::default(),
    );
    for (name, health_service) in [
        ("tollgate_ext_authz", "envoy.service.auth.v3.Authorization"),
        (
            "tollgate_ratelimit",
            "envoy.service.ratelimit.v3.RateLimitService",
        ),
    ] {
        let single: Cluster = decode(&one, type_url::CLUSTER, name);
        assert!(single.health_checks.is_empty() && single.outlier_detection.is_none());
        let cluster: Cluster = decode(&replicated, type_url::CLUSTER, name);
        let Some(HealthChecker::GrpcHealthCheck(grpc)) = &cluster.health_checks[0].health_checker
        else {
            panic!(
                "{name}: a gRPC health check expected: {:?}",
                cluster.health_checks
            )
        };
        assert_eq!(grpc.service_name, health_service);
        assert!(cluster.outlier_detection.is_some(), "{name}");
        // A call queued on a connection to a silent replica must fail over while its
        // timeout leaves room (ext-authz's default 200 ms: a 100 ms try, so the floor).
        let connect = cluster.connect_timeout.expect("a connect timeout");
        assert_eq!((connect.seconds, connect.nanos), (0, 100_000_000), "{name}");
        assert_eq!(single.connect_timeout.map(|d| d.seconds), Some(1), "{name}");
        let thresholds = &cluster
            .circuit_breakers
            .as_ref()
            .expect("{name}")
            .thresholds[0];
        assert_eq!(
            thresholds.max_retries.map(|v| v.value),
            Some(1024),
            "{name}"
        );
        assert!(single.circuit_breakers.is_none(), "{name}");
    }
    let grpc_retry = |snapshot: &Snapshot| {
        let manager = manager(snapshot, "public");
        let filter = manager
            .http_filters
            .iter()
            .find(|f| f.name == "envoy.filters.http.ext_authz")
            .expect("ext_authz");
        let Some(http_filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
            panic!("typed config expected")
        };
        let ext_authz = ExtAuthz::decode(any.value.as_slice()).expect("ext_authz");
        let Some(Services::GrpcService(service)) = ext_authz.services else {
            panic!("a gRPC service expected")
        };
        service.retry_policy
    };
    assert!(grpc_retry(&one).is_none(), "one replica: nowhere to retry");
    let retry = grpc_retry(&replicated).expect("a retry policy with two replicas");
    assert!(
        retry.retry_on.contains("connect-failure"),
        "{}",
        retry.retry_on
    );
    assert_eq!(
        retry.retry_host_predicate[0].name,
        "envoy.retry_host_predicates.previous_hosts"
    );
    // Envoy makes the longest backoff each try's timeout: half of ext-authz's default 200 ms.
    let per_try = retry
        .retry_back_off
        .and_then(|b| b.max_interval)
        .expect("a longest backoff");
    assert_eq!((per_try.seconds, per_try.nanos), (0, 100_000_000));
}

#[test]
fn a_sidecar_try_gets_half_the_timeout_but_never_under_50_ms() {
    use std::time::Duration;
    let ms = Duration::from_millis;
    assert_eq!(super::auth::per_try_timeout(ms(1000)), ms(500));
    assert_eq!(super::auth::per_try_timeout(ms(200)), ms(100));
    assert_eq!(super::auth::per_try_timeout(ms(80)), ms(50));
    assert_eq!(super::auth::per_try_timeout(ms(50)), ms(50));
    assert_eq!(super::auth::per_try_timeout(ms(20)), ms(20));
}

#[test]
fn a_replicated_sidecar_connects_within_half_a_try() {
    use std::time::Duration;
    let ms = Duration::from_millis;
    assert_eq!(super::cluster::replica_connect_timeout(ms(1000)), ms(250));
    assert_eq!(super::cluster::replica_connect_timeout(ms(600)), ms(150));
    assert_eq!(super::cluster::replica_connect_timeout(ms(200)), ms(100));
    assert_eq!(super::cluster::replica_connect_timeout(ms(50)), ms(100));
    assert_eq!(
        super::cluster::replica_connect_timeout(ms(10_000)),
        ms(1000)
    );
}

#[test]
fn filters_run_only_on_listeners_whose_routes_need_them() {
    let snapshot = protected();
    let names = |l| {
        manager(&snapshot, l)
            .http_filters
            .iter()
            .map(|f| f.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names("public"),
        [
            "envoy.filters.http.ext_authz",
            "envoy.filters.http.ratelimit",
            "envoy.filters.http.router"
        ]
    );
    assert_eq!(names("internal"), ["envoy.filters.http.router"]);
}

#[test]
fn identity_headers_are_stripped_on_every_listener() {
    use tollgate_proto::envoy::config::common::mutation_rules::v3::header_mutation::Action as MutationAction;
    use tollgate_proto::envoy::extensions::http::early_header_mutation::header_mutation::v3::HeaderMutation;
    let snapshot = protected();
    for listener in ["public", "internal"] {
        let hcm = manager(&snapshot, listener);
        let config = hcm.early_header_mutation_extensions[0]
            .typed_config
            .as_ref()
            .expect("config");
        let mutation = HeaderMutation::decode(config.value.as_slice()).expect("decodes");
        let removed: Vec<_> = mutation
            .mutations
            .iter()
            .filter_map(|m| match &m.action {
                Some(MutationAction::Remove(h)) => Some(h.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(removed, ["x-consumer-id", "x-consumer-tier"], "{listener}");
    }
}

#[test]
fn ext_authz_is_sent_only_the_headers_a_check_reads() {
    use tollgate_proto::envoy::extensions::filters::http::ext_authz::v3::ExtAuthz;
    use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
    let yaml = PROTECTED.replace(
        "auth_providers:\n",
        "auth_providers:\n  \
         by_header: {issuer: i, audiences: [a], jwks_file: j.json, token: {header: X-Api-Token}}\n  \
         by_cookie: {issuer: i, audiences: [a], jwks_file: j.json, token: {cookie: session}}\n  \
         by_query: {issuer: i, audiences: [a], jwks_file: j.json, token: {query: access_token}}\n",
    );
    let snapshot = translate(
        &tollgate_routes::parse("routes.yaml", &yaml).expect("valid"),
        &Default::default(),
    );
    let filter = &manager(&snapshot, "public").http_filters[0];
    let Some(ConfigType::TypedConfig(any)) = &filter.config_type else {
        panic!("typed config expected")
    };
    let config = ExtAuthz::decode(any.value.as_slice()).expect("decodes");
    let allowed: Vec<(String, bool)> = config
        .allowed_headers
        .expect("a header allow-list")
        .patterns
        .into_iter()
        .map(|m| match m.match_pattern {
            Some(MatchPattern::Exact(name)) => (name, m.ignore_case),
            other => panic!("exact names expected, got {other:?}"),
        })
        .collect();
    assert_eq!(
        allowed,
        [
            ("authorization".to_string(), true),
            ("cookie".to_string(), true),
            ("x-api-token".to_string(), true),
            ("x-request-id".to_string(), true),
        ]
    );
}

#[test]
fn protected_routes_carry_provider_and_scopes_and_public_routes_skip_the_check() {
    use tollgate_proto::envoy::extensions::filters::http::ext_authz::v3::{
        ext_authz_per_route::Override, ExtAuthzPerRoute,
    };
    let routes: RouteConfiguration = decode(&protected(), type_url::ROUTE, "public");
    let ext_authz = |name: &str| {
        route_named(&routes, name).typed_per_filter_config["envoy.filters.http.ext_authz"].clone()
    };
    let secured = ext_authz("secured");
    let Some(Override::CheckSettings(settings)) =
        ExtAuthzPerRoute::decode(secured.value.as_slice())
            .expect("decodes")
            .r#override
    else {
        panic!("check settings expected")
    };
    assert_eq!(settings.context_extensions["route"], "secured");
    assert_eq!(settings.context_extensions["provider"], "main");
    assert_eq!(settings.context_extensions["scopes"], "read write");
    assert!(switched_off(&ext_authz("open")), "a public route");
    assert!(
        switched_off(&ext_authz("tollgate_health")),
        "the health answer needs no token"
    );
}

/// Whether a per-filter setting leaves the filter out of the route's requests altogether.
pub(super) fn switched_off(any: &tollgate_proto::google::protobuf::Any) -> bool {
    use tollgate_proto::envoy::config::route::v3::FilterConfig;
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.config.route.v3.FilterConfig"
    );
    FilterConfig::decode(any.value.as_slice())
        .expect("decodes")
        .disabled
}

#[test]
fn routes_without_limits_switch_the_ratelimit_filter_off() {
    let routes: RouteConfiguration = decode(&protected(), type_url::ROUTE, "public");
    let ratelimit = |name: &str| {
        route_named(&routes, name)
            .typed_per_filter_config
            .get("envoy.filters.http.ratelimit")
            .cloned()
    };
    assert_eq!(
        ratelimit("secured"),
        None,
        "a limited route runs the filter"
    );
    assert!(switched_off(&ratelimit("open").expect("a setting")));
    assert!(switched_off(
        &ratelimit("tollgate_health").expect("a setting")
    ));
}

#[test]
fn each_rate_limit_rule_becomes_one_descriptor_named_like_the_service_expects() {
    use tollgate_proto::envoy::config::route::v3::rate_limit::action::ActionSpecifier;
    let routes: RouteConfiguration = decode(&protected(), type_url::ROUTE, "public");
    let Some(Action::Route(action)) = &route_named(&routes, "secured").action else {
        panic!("route action expected")
    };
    let described: Vec<Vec<String>> = action
        .rate_limits
        .iter()
        .map(|limit| {
            limit
                .actions
                .iter()
                .map(|a| match &a.action_specifier {
                    Some(ActionSpecifier::GenericKey(g)) => {
                        format!("{}={}", g.descriptor_key, g.descriptor_value)
                    }
                    Some(ActionSpecifier::RequestHeaders(h)) => format!(
                        "{}<-{}{}",
                        h.descriptor_key,
                        h.header_name,
                        if h.skip_if_absent { "?" } else { "" }
                    ),
                    other => format!("{other:?}"),
                })
                .collect()
        })
        .collect();
    assert_eq!(
        described,
        [
            vec!["route=secured", "rule=consumer", "consumer<-x-consumer-id"],
            vec![
                "route=secured",
                "rule=consumer.tiered.x-consumer-tier",
                "consumer<-x-consumer-id",
                "tier<-x-consumer-tier?"
            ],
        ]
    );
}

#[test]
fn resources_with_maps_hash_the_same_every_time() {
    // Protobuf maps are HashMaps, each built with its own hasher (`proto_map`), so their
    // iteration order differs every time; versions must not depend on it.
    let versions: std::collections::HashSet<String> =
        (0..20).map(|_| protected().version().to_string()).collect();
    assert_eq!(versions.len(), 1, "{versions:?}");
}

#[test]
fn the_example_config_with_every_feature_hashes_the_same_every_time() {
    let example = tollgate_routes::parse(
        "examples/routes.yaml",
        include_str!("../../../examples/routes.yaml"),
    )
    .expect("the example is valid");
    let versions: std::collections::HashSet<String> = (0..20)
        .map(|_| {
            translate(&example, &Default::default())
                .version()
                .to_string()
        })
        .collect();
    assert_eq!(versions.len(), 1, "{versions:?}");
}

#[test]
fn each_listener_answers_health_itself_before_any_user_route() {
    let public: RouteConfiguration = decode(&snapshot(), type_url::ROUTE, "public");
    let first = &public.virtual_hosts[0].routes[0];
    assert_eq!(
        first
            .r#match
            .as_ref()
            .and_then(|m| m.path_specifier.clone()),
        Some(PathSpecifier::Path("/health".into()))
    );
    assert!(matches!(&first.action, Some(Action::DirectResponse(d)) if d.status == 200));
}

#[test]
fn listeners_normalise_paths_keep_request_ids_and_log_json() {
    let hcm = manager(&snapshot(), "public");
    assert_eq!(hcm.normalize_path.map(|b| b.value), Some(true));
    assert!(hcm.merge_slashes);
    assert_eq!(
        hcm.path_with_escaped_slashes_action, 2,
        "REJECT_REQUEST by default"
    );
    assert!(hcm.preserve_external_request_id && hcm.always_set_request_id_in_response);
    assert_eq!(hcm.access_log.len(), 1);
    assert!(!hcm
        .local_reply_config
        .expect("local replies")
        .mappers
        .is_empty());
}

#[test]
fn routes_keep_per_route_stats_unless_turned_off() {
    let on = snapshot();
    let routes: RouteConfiguration = decode(&on, type_url::ROUTE, "public");
    assert_eq!(route_named(&routes, "list").stat_prefix, "list");

    let off = translate(
        &tollgate_routes::parse(
            "routes.yaml",
            &format!("{CONFIG}observability: {{route_stats: false}}\n"),
        )
        .expect("valid"),
        &Default::default(),
    );
    let routes: RouteConfiguration = decode(&off, type_url::ROUTE, "public");
    assert!(routes.virtual_hosts[0]
        .routes
        .iter()
        .all(|r| r.stat_prefix.is_empty()));
    assert_eq!(route_named(&routes, "list").name, "list");
}

#[test]
fn hosts_become_virtual_hosts_each_with_every_route_that_accepts_its_names() {
    let config = "\
version: 1
listeners: [{name: public, address: 0.0.0.0:8080}]
services: {shop: {endpoints: [\"127.0.0.1:3000\"]}}
routes:
  - {name: shop-api, match: {prefix: /api/, hosts: [shop.example.com, \"*.shop.example.com\"], query: {v: '2', debug: {present: true}}}, service: shop}
  - {name: eu, match: {prefix: /eu/, hosts: [\"*.eu.shop.example.com\"]}, service: shop}
  - {name: anywhere, match: {prefix: /}, service: shop}
";
    let snapshot = translate(
        &tollgate_routes::parse("routes.yaml", config).expect("valid"),
        &Default::default(),
    );
    let table: RouteConfiguration = decode(&snapshot, type_url::ROUTE, "public");
    assert!(table.ignore_port_in_host_matching);
    let hosts: Vec<(Vec<&str>, Vec<&str>)> = table
        .virtual_hosts
        .iter()
        .map(|host| {
            (
                host.domains.iter().map(String::as_str).collect(),
                host.routes.iter().map(|r| r.name.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        hosts,
        [
            (
                vec!["shop.example.com", "*.shop.example.com"],
                vec!["tollgate_health", "shop-api", "anywhere"]
            ),
            (
                vec!["*.eu.shop.example.com"],
                vec!["tollgate_health", "shop-api", "eu", "anywhere"]
            ),
            (vec!["*"], vec!["tollgate_health", "anywhere"]),
        ]
    );
    assert_eq!(
        table.virtual_hosts[2].name, "public",
        "the any-host keeps its name"
    );
    let names: Vec<&str> = table
        .virtual_hosts
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(
        names[..2],
        ["public_shop_example_com", "public_any_eu_shop_example_com"]
    );
    let query = &table.virtual_hosts[0].routes[1]
        .r#match
        .as_ref()
        .expect("match")
        .query_parameters;
    assert_eq!(query.len(), 2);
    assert_eq!(query[0].name, "debug");
    assert_eq!(query[1].name, "v");
}

#[test]
fn websocket_upgrades_are_on_for_websocket_routes_only() {
    let config = "\
version: 1
listeners: [{name: public, address: 0.0.0.0:8080}, {name: other, address: 0.0.0.0:8081}]
services: {chat: {endpoints: [\"127.0.0.1:3000\"]}}
routes:
  - {name: chat, listener: public, match: {prefix: /ws/}, service: chat, websocket: true}
  - {name: rest, match: {prefix: /}, service: chat}
";
    let snapshot = translate(
        &tollgate_routes::parse("routes.yaml", config).expect("valid"),
        &Default::default(),
    );
    let public = manager(&snapshot, "public");
    assert_eq!(public.upgrade_configs.len(), 1);
    assert_eq!(public.upgrade_configs[0].upgrade_type, "websocket");
    assert_eq!(
        public.upgrade_configs[0].enabled.map(|b| b.value),
        Some(false)
    );
    assert!(
        public
            .http2_protocol_options
            .expect("h2 options")
            .allow_connect
    );
    let other = manager(&snapshot, "other");
    assert!(other.upgrade_configs.is_empty());
    assert!(
        !other
            .http2_protocol_options
            .expect("h2 options")
            .allow_connect,
        "no extended CONNECT where no route passes WebSockets"
    );

    let table: RouteConfiguration = decode(&snapshot, type_url::ROUTE, "public");
    let upgrades = |name: &str| match &route_named(&table, name).action {
        Some(Action::Route(action)) => action.upgrade_configs.clone(),
        other => panic!("{name}: {other:?}"),
    };
    let chat = upgrades("chat");
    assert_eq!(chat.len(), 1);
    assert_eq!(
        (
            chat[0].upgrade_type.as_str(),
            chat[0].enabled.map(|b| b.value)
        ),
        ("websocket", Some(true))
    );
    assert!(upgrades("rest").is_empty());
}

#[test]
fn a_grpc_service_is_http2_with_grpc_health_checks_and_its_routes_honour_grpc_timeout() {
    use tollgate_proto::envoy::config::cluster::v3::Cluster;
    use tollgate_proto::envoy::config::core::v3::health_check::HealthChecker;
    let config = "\
version: 1
listeners: [{name: public, address: 0.0.0.0:8080}]
services:
  orders: {endpoints: [\"127.0.0.1:50051\"], protocol: grpc, health_check: {grpc_service: shop.v1.Orders}}
  web: {endpoints: [\"127.0.0.1:3000\"], protocol: http2}
  legacy: {endpoints: [\"127.0.0.1:3001\"]}
routes:
  - {name: orders, match: {grpc_service: shop.v1.Orders}, service: orders, timeout: 20s}
  - {name: web, match: {prefix: /}, service: web}
";
    let snapshot = translate(
        &tollgate_routes::parse("routes.yaml", config).expect("valid"),
        &Default::default(),
    );
    let http2 = |name: &str| {
        decode::<Cluster>(&snapshot, type_url::CLUSTER, name)
            .typed_extension_protocol_options
            .contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
    };
    assert!(http2("orders") && http2("web") && !http2("legacy"));
    let orders: Cluster = decode(&snapshot, type_url::CLUSTER, "orders");
    let Some(HealthChecker::GrpcHealthCheck(check)) = &orders.health_checks[0].health_checker
    else {
        panic!("a gRPC health check: {:?}", orders.health_checks);
    };
    assert_eq!(check.service_name, "shop.v1.Orders");

    let table: RouteConfiguration = decode(&snapshot, type_url::ROUTE, "public");
    let route = route_named(&table, "orders");
    let matcher = route.r#match.as_ref().expect("match");
    assert_eq!(
        matcher.path_specifier,
        Some(PathSpecifier::Prefix("/shop.v1.Orders/".into()))
    );
    assert!(matcher.grpc.is_some(), "gRPC requests only");
    let Some(Action::Route(action)) = &route.action else {
        panic!("a forwarding route");
    };
    let cap = action
        .max_stream_duration
        .as_ref()
        .and_then(|d| d.grpc_timeout_header_max.as_ref())
        .map(|d| d.seconds);
    assert_eq!(
        cap,
        Some(20),
        "grpc-timeout is honoured up to the route's timeout"
    );
    let Some(Action::Route(web)) = &route_named(&table, "web").action else {
        panic!("a forwarding route");
    };
    assert!(web.max_stream_duration.is_none());
}

#[test]
fn ip_rules_run_first_with_the_listeners_rules_and_a_routes_own_on_top() {
    use tollgate_proto::envoy::config::rbac::v3::principal::Identifier;
    use tollgate_proto::envoy::extensions::filters::http::rbac::v3::{Rbac, RbacPerRoute};
    use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
    let config = "\
version: 1
listeners: [{name: public, address: 0.0.0.0:8080, deny_ips: [192.0.2.0/24]}, {name: other, address: 0.0.0.0:8081}]
services: {app: {endpoints: [\"127.0.0.1:3000\"]}}
routes:
  - {name: admin, listener: public, match: {prefix: /admin/}, service: app, allow_ips: [10.0.0.0/8]}
  - {name: rest, match: {prefix: /}, service: app}
";
    let snapshot = translate(
        &tollgate_routes::parse("routes.yaml", config).expect("valid"),
        &Default::default(),
    );
    let public = manager(&snapshot, "public");
    assert_eq!(public.http_filters[0].name, "envoy.filters.http.rbac");
    let Some(HttpFilterConfig::TypedConfig(any)) = &public.http_filters[0].config_type else {
        panic!("a typed config");
    };
    let listener_rules = Rbac::decode(any.value.as_slice()).expect("RBAC");
    let policy = &listener_rules.rules.expect("the listener's rules").policies["tollgate_ip_rules"];
    assert!(
        matches!(policy.principals[0].identifier, Some(Identifier::NotId(_))),
        "a deny list alone: not in it"
    );
    assert!(
        manager(&snapshot, "other")
            .http_filters
            .iter()
            .all(|f| f.name != "envoy.filters.http.rbac"),
        "a listener without rules, on it or its routes, runs no RBAC filter"
    );

    let table: RouteConfiguration = decode(&snapshot, type_url::ROUTE, "public");
    let own = RbacPerRoute::decode(
        route_named(&table, "admin").typed_per_filter_config["envoy.filters.http.rbac"]
            .value
            .as_slice(),
    )
    .expect("per-route RBAC");
    let principal =
        &own.rbac.expect("rules").rules.expect("rules").policies["tollgate_ip_rules"].principals[0];
    let Some(Identifier::AndIds(both)) = &principal.identifier else {
        panic!("the route's allow list and the listener's deny list, together: {principal:?}");
    };
    assert_eq!(both.ids.len(), 2);
    assert!(!route_named(&table, "rest")
        .typed_per_filter_config
        .contains_key("envoy.filters.http.rbac"));
    let health = RbacPerRoute::decode(
        route_named(&table, "tollgate_health").typed_per_filter_config["envoy.filters.http.rbac"]
            .value
            .as_slice(),
    )
    .expect("per-route RBAC");
    assert!(health.rbac.is_none(), "the health path is never fenced");
}

#[test]
fn a_transcoding_route_turns_the_listeners_transcoder_on_with_its_descriptor_set() {
    use tollgate_proto::envoy::config::route::v3::FilterConfig;
    use tollgate_proto::envoy::extensions::filters::http::grpc_json_transcoder::v3::{
        grpc_json_transcoder::DescriptorSet, GrpcJsonTranscoder,
    };
    let mut config = tollgate_routes::parse(
        "routes.yaml",
        "\
version: 1
listeners: [{name: public, address: 0.0.0.0:8080}]
services: {orders: {endpoints: [\"127.0.0.1:50051\"], protocol: grpc}, web: {endpoints: [\"127.0.0.1:3000\"]}}
routes:
  - {name: orders-rest, match: {prefix: /v1/orders}, service: orders, transcode: {descriptor_set: orders.pb, services: [shop.v1.Orders]}}
  - {name: web, match: {prefix: /}, service: web}
",
    )
    .expect("valid");
    // What the control plane reads through the files routes.yaml names.
    let descriptor_set = b"a descriptor set".to_vec();
    if let Some(transcode) = config.routes[0].transcode.as_mut() {
        transcode.descriptor_set = descriptor_set.clone();
    }
    let snapshot = translate(&config, &Default::default());
    let filters = &manager(&snapshot, "public").http_filters;
    let names: Vec<&str> = filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names[names.len() - 2..],
        [
            "envoy.filters.http.grpc_json_transcoder",
            "envoy.filters.http.router"
        ],
        "last before the router"
    );
    assert!(
        filters[names.len() - 2].disabled,
        "off unless a route turns it on"
    );

    let table: RouteConfiguration = decode(&snapshot, type_url::ROUTE, "public");
    let on = FilterConfig::decode(
        route_named(&table, "orders-rest").typed_per_filter_config
            ["envoy.filters.http.grpc_json_transcoder"]
            .value
            .as_slice(),
    )
    .expect("a filter config");
    assert!(!on.disabled);
    let transcoder = GrpcJsonTranscoder::decode(on.config.expect("its config").value.as_slice())
        .expect("decodes");
    assert_eq!(
        transcoder.descriptor_set,
        Some(DescriptorSet::ProtoDescriptorBin(descriptor_set))
    );
    assert_eq!(transcoder.services, ["shop.v1.Orders"]);
    assert!(transcoder.match_incoming_request_route && transcoder.convert_grpc_status);
    assert!(!route_named(&table, "web")
        .typed_per_filter_config
        .contains_key("envoy.filters.http.grpc_json_transcoder"));
}

/// PROTECTED with a route whose rules are local (one) and local and global (the other).
fn with_local_rules() -> Snapshot {
    let yaml = PROTECTED.replace(
        "  - name: open\n",
        "  - name: local-only
    listener: public
    match: {prefix: /local}
    service: invoices
    rate_limit:
      - {by: client_ip, requests: 100, per: second, burst: 200, mode: local}
  - name: mixed
    listener: public
    match: {prefix: /mixed}
    service: invoices
    auth: {provider: main}
    rate_limit:
      - {by: client_ip, requests: 100, per: second, mode: local, max_keys: 300}
      - {by: consumer, requests: 1000, per: minute}
  - name: open\n",
    );
    translate(
        &tollgate_routes::parse("routes.yaml", &yaml).unwrap_or_else(|e| panic!("{e}")),
        &Default::default(),
    )
}

#[test]
fn local_limits_run_after_ext_authz_and_before_the_ratelimit_filter() {
    let names: Vec<String> = manager(&with_local_rules(), "public")
        .http_filters
        .iter()
        .map(|f| f.name.clone())
        .collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.ext_authz",
            "envoy.filters.http.local_ratelimit",
            "envoy.filters.http.ratelimit",
            "envoy.filters.http.router"
        ],
        "local limits count by x-consumer-id, which ext_authz sets, and a request they refuse never reaches the ratelimit filter"
    );
    assert!(
        !manager(&protected(), "public")
            .http_filters
            .iter()
            .any(|f| f.name == "envoy.filters.http.local_ratelimit"),
        "no local rule, no filter"
    );
}

#[test]
fn local_rules_go_to_the_local_filter_and_never_to_the_rate_limit_service() {
    use tollgate_proto::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
    let routes: RouteConfiguration = decode(&with_local_rules(), type_url::ROUTE, "public");
    let global_rules = |name: &str| {
        let Some(Action::Route(action)) = &route_named(&routes, name).action else {
            panic!("route action expected")
        };
        action.rate_limits.len()
    };
    let per_filter = |name: &str, filter: &str| {
        route_named(&routes, name)
            .typed_per_filter_config
            .get(filter)
            .cloned()
    };
    assert_eq!(global_rules("local-only"), 0);
    assert_eq!(global_rules("mixed"), 1, "only the consumer rule is global");
    assert!(switched_off(
        &per_filter("local-only", "envoy.filters.http.ratelimit").expect("a setting")
    ));
    assert_eq!(per_filter("mixed", "envoy.filters.http.ratelimit"), None);
    let local = per_filter("mixed", "envoy.filters.http.local_ratelimit").expect("a setting");
    let local = LocalRateLimit::decode(local.value.as_slice()).expect("decodes");
    assert_eq!(local.descriptors.len(), 1);
    assert_eq!(local.max_dynamic_descriptors.map(|v| v.value), Some(300));
    assert!(switched_off(
        &per_filter("secured", "envoy.filters.http.local_ratelimit").expect("a setting")
    ));
}

#[test]
fn a_config_with_only_local_rules_has_no_rate_limit_cluster() {
    let yaml = "\
version: 1
listeners: [{name: public, address: 0.0.0.0:8080}]
services: {api: {endpoints: [\"127.0.0.1:3000\"]}}
routes:
  - name: api
    match: {prefix: /}
    service: api
    rate_limit: [{by: client_ip, requests: 5, per: second, mode: local}]
";
    let snapshot = translate(
        &tollgate_routes::parse("routes.yaml", yaml).unwrap_or_else(|e| panic!("{e}")),
        &Default::default(),
    );
    assert!(!snapshot
        .resources(type_url::CLUSTER)
        .resources
        .contains_key("tollgate_ratelimit"));
    let names: Vec<String> = manager(&snapshot, "public")
        .http_filters
        .iter()
        .map(|f| f.name.clone())
        .collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.local_ratelimit",
            "envoy.filters.http.router"
        ]
    );
}
