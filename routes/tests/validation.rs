//! One test per class of routes.yaml error, each asserting the line and column reported.

mod common;

use common::{assert_error_at, errors};
use std::time::Duration;

use tollgate_routes::{parse, PathMatch};

const GOOD: &str = "\
version: 1
listeners:
  - name: public
    address: 0.0.0.0:8080
  - name: mobile
    address: 127.0.0.1:8081
services:
  invoice-service:
    endpoints: [\"127.0.0.1:3000\", \"invoices.internal:3001\"]
    connect_timeout: 1s
routes:
  - name: invoices
    listener: public
    match:
      prefix: /api/v1/invoices
      methods: [GET, post]
      headers: {X-Tenant: acme}
    service: invoice-service
    rewrite_prefix: /invoices
    timeout: 15s
  - name: health
    match: {path: /healthz}
    service: invoice-service
  - name: by-id
    match: {regex: '/items/[0-9]+'}
    service: invoice-service
";

#[test]
fn a_complete_config_parses_into_the_model() {
    let config = parse("routes.yaml", GOOD).expect("valid config");
    assert_eq!(config.listeners.len(), 2);
    let service = &config.services["invoice-service"];
    assert_eq!(service.connect_timeout, Duration::from_secs(1));
    assert!(service.endpoints[0].is_ip());
    assert!(!service.endpoints[1].is_ip());
    let route = &config.routes[0];
    assert_eq!(
        route.matcher.path,
        PathMatch::Prefix("/api/v1/invoices".into())
    );
    assert_eq!(route.matcher.methods, ["GET", "POST"]);
    assert_eq!(route.matcher.headers["x-tenant"], "acme");
    assert_eq!(route.timeout, Some(Duration::from_secs(15)));
    assert_eq!(config.routes_on("mobile").count(), 2);
    assert_eq!(config.routes_on("public").count(), 3);
}

#[test]
fn unknown_field_is_reported_where_it_stands() {
    let text = GOOD.replace(
        "    timeout: 15s\n",
        "    timeout: 15s\n    retry_budget: 3\n",
    );
    assert_error_at(&text, "21:5:", "unknown field `retry_budget`");
}

#[test]
fn yaml_syntax_error_is_located() {
    let text = GOOD.replace("methods: [GET, post]", "methods: [GET, post");
    let errors = errors(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("17:") || errors[0].starts_with("16:"),
        "{errors:?}"
    );
}

#[test]
fn wrong_type_is_located() {
    let text = GOOD.replace("version: 1", "version: one");
    assert_error_at(&text, "1:10:", "");
}

#[test]
fn route_naming_a_missing_service_points_at_the_service() {
    let text = GOOD.replace(
        "    service: invoice-service\n    rewrite",
        "    service: billing\n    rewrite",
    );
    assert_error_at(
        &text,
        "18:14:",
        "unknown service \"billing\" in route \"invoices\"",
    );
}

#[test]
fn route_naming_a_missing_listener_points_at_the_listener() {
    let text = GOOD.replace("listener: public", "listener: partner");
    assert_error_at(&text, "13:15:", "unknown listener \"partner\"");
}

#[test]
fn duplicate_route_names_are_rejected() {
    let text = GOOD.replace("- name: health", "- name: invoices");
    assert_error_at(&text, "21:11:", "duplicate route name \"invoices\"");
}

#[test]
fn duplicate_listener_names_are_rejected() {
    let text = GOOD.replace("- name: mobile", "- name: public");
    assert_error_at(&text, "5:11:", "duplicate listener name");
}

#[test]
fn duplicate_service_keys_are_rejected() {
    let text = GOOD.replace(
        "routes:\n",
        "  invoice-service:\n    endpoints: [\"127.0.0.1:4000\"]\nroutes:\n",
    );
    let errors = errors(&text);
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("11:") && e.contains("duplicate")),
        "{errors:?}"
    );
}

#[test]
fn duplicate_keys_deep_inside_a_route_are_rejected_where_they_stand() {
    // A map read without care keeps the last of two keys; the file must be refused instead.
    let text = GOOD.replace(
        "headers: {X-Tenant: acme}",
        "headers: {X-Tenant: acme, X-Tenant: evil}",
    );
    assert_error_at(&text, "17:", "duplicate");
}

#[test]
fn anchors_aliases_and_merge_keys_mean_what_they_expand_to() {
    let shared = GOOD
        .replace(
            "    connect_timeout: 1s\n",
            "    connect_timeout: &quick 1s\n  billing-service: &billing\n    endpoints: [\"127.0.0.1:3002\"]\n    connect_timeout: *quick\n  ledger-service:\n    <<: *billing\n",
        );
    let expanded = GOOD.replace(
        "    connect_timeout: 1s\n",
        "    connect_timeout: 1s\n  billing-service:\n    endpoints: [\"127.0.0.1:3002\"]\n    connect_timeout: 1s\n  ledger-service:\n    endpoints: [\"127.0.0.1:3002\"]\n    connect_timeout: 1s\n",
    );
    let shared = parse("routes.yaml", &shared).expect("anchors and merge keys are accepted");
    let expanded = parse("routes.yaml", &expanded).expect("the expanded file is accepted");
    assert_eq!(shared, expanded);
    assert_eq!(shared.services.len(), 3);
}

#[test]
fn bad_listener_address_is_rejected() {
    let text = GOOD.replace("127.0.0.1:8081", "localhost:99999");
    assert_error_at(&text, "6:14:", "invalid listener address");
}

#[test]
fn two_listeners_on_one_address_are_rejected_including_wildcards() {
    let text = GOOD.replace("127.0.0.1:8081", "127.0.0.1:8080");
    assert_error_at(&text, "6:14:", "overlaps listener \"public\"");
}

#[test]
fn bad_endpoint_is_rejected() {
    let text = GOOD.replace("invoices.internal:3001", "invoices..internal");
    assert_error_at(&text, "9:35:", "invalid endpoint");
}

#[test]
fn bad_duration_is_rejected() {
    let text = GOOD.replace("timeout: 15s", "timeout: 15 seconds");
    assert_error_at(&text, "20:14:", "invalid duration \"15 seconds\"");
}

#[test]
fn bad_regex_is_rejected() {
    let text = GOOD.replace("'/items/[0-9]+'", "'/items/[0-9+'");
    assert_error_at(&text, "25:20:", "invalid regex");
}

#[test]
fn match_needs_exactly_one_path_kind() {
    let text = GOOD.replace(
        "match: {path: /healthz}",
        "match: {path: /healthz, prefix: /h}",
    );
    assert_error_at(
        &text,
        "22:12:",
        "exactly one of prefix, path, regex or grpc_service",
    );
}

#[test]
fn unknown_method_is_rejected() {
    let text = GOOD.replace("[GET, post]", "[GET, FETCH]");
    assert_error_at(&text, "16:22:", "unknown HTTP method \"FETCH\"");
}

#[test]
fn unsupported_version_is_rejected() {
    assert_error_at(
        &GOOD.replace("version: 1", "version: 2"),
        "1:10:",
        "unsupported version 2",
    );
}

#[test]
fn every_error_is_reported_not_only_the_first() {
    let text = GOOD
        .replace("listener: public", "listener: partner")
        .replace("timeout: 15s", "timeout: soon")
        .replace("'/items/[0-9]+'", "'('");
    let errors = errors(&text);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    // In file order.
    assert!(errors[0].starts_with("13:"));
    assert!(errors[1].starts_with("20:"));
    assert!(errors[2].starts_with("25:"));
}

#[test]
fn errors_display_as_file_line_col() {
    let text = GOOD.replace("listener: public", "listener: partner");
    let rendered = parse("conf/routes.yaml", &text).unwrap_err().to_string();
    assert!(
        rendered.starts_with("conf/routes.yaml:13:15: unknown listener"),
        "{rendered}"
    );
}

#[test]
fn service_names_in_tollgates_own_namespace_are_rejected() {
    let text = GOOD
        .replace("  invoice-service:\n", "  tollgate_xds:\n")
        .replace("service: invoice-service", "service: tollgate_xds");
    assert_error_at(&text, "9:16:", "reserved");
}

#[test]
fn a_route_for_exactly_the_gateways_health_path_is_rejected() {
    let text = GOOD.replace("match: {path: /healthz}", "match: {path: /health}");
    assert_error_at(
        &text,
        "22:19:",
        "the gateway's own health path on listener \"public\", \"mobile\"",
    );
    let moved = text
        .replace(
            "    address: 0.0.0.0:8080\n",
            "    address: 0.0.0.0:8080\n    health_path: /live\n",
        )
        .replace(
            "    address: 127.0.0.1:8081\n",
            "    address: 127.0.0.1:8081\n    health_path: \"\"\n",
        );
    parse("routes.yaml", &moved).expect("with the health paths moved, the route is fine");
}

#[test]
fn a_list_left_empty_is_refused_at_its_key_not_read_as_no_routes() {
    // `routes:` with nothing after it is a null, not an empty list: a file cut short there
    // must not load as a gateway with no routes. (Found by `make fuzz-smoke`, where the two
    // YAML readers disagreed.)
    let text = "version: 1\nlisteners: [{name: public, address: 127.0.0.1:8080}]\nroutes:\n";
    let errors = errors(text);
    assert!(errors.iter().any(|e| e.starts_with("3:")), "{errors:?}");
}

#[test]
fn a_comment_glued_to_a_flow_collection_is_refused_at_its_place() {
    // YAML 1.2 §6.6 wants whitespace before a comment. libyaml, the quick reader, took `{}#`
    // as a comment, so release builds loaded this file where the located reader refuses it.
    // (Found by `make fuzz-smoke`, where the two YAML readers disagreed.)
    let text = "version: 1\nlisteners: []\nservices: {}#\nroutes: []\n";
    let errors = errors(text);
    assert!(errors.iter().any(|e| e.starts_with("3:13:")), "{errors:?}");
}
