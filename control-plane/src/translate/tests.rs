use envoy_types::pb::envoy::config::cluster::v3::{cluster::ClusterDiscoveryType, Cluster};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, route::Action, route_match::PathSpecifier,
    RouteConfiguration,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use prost::Message;

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
    translate(&tollgate_routes::parse("routes.yaml", CONFIG).expect("valid"))
}

fn decode<M: Message + Default>(snapshot: &Snapshot, type_url: &str, name: &str) -> M {
    let resource = &snapshot.resources(type_url).resources[name];
    M::decode(resource.body.value.as_slice()).expect("decodes")
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
    assert!(!snapshot
        .resources(type_url::ENDPOINT)
        .resources
        .contains_key("legacy"));
}

#[test]
fn each_listener_gets_its_own_route_configuration_over_rds() {
    let snapshot = snapshot();
    let listener: Listener = decode(&snapshot, type_url::LISTENER, "mobile");
    let Some(filter::ConfigType::TypedConfig(any)) =
        &listener.filter_chains[0].filters[0].config_type
    else {
        panic!("typed config expected")
    };
    let manager = HttpConnectionManager::decode(any.value.as_slice()).expect("hcm");
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
    assert_eq!(names, ["by-id"], "the public-only route is not on mobile");
}

#[test]
fn route_matches_rewrite_and_timeout_are_carried_over() {
    let public: RouteConfiguration = decode(&snapshot(), type_url::ROUTE, "public");
    let route = &public.virtual_hosts[0].routes[0];
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
