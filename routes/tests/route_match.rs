//! `match.hosts`, `match.query`, and routes that an earlier route makes unreachable.

mod common;

use common::{assert_error_at, errors};

use tollgate_routes::{parse, QueryMatch};

/// A file with `routes` (YAML list items, indented by two spaces) after one listener and
/// one service.
fn with_routes(routes: &str) -> String {
    format!(
        "version: 1\nlisteners: [{{name: public, address: 127.0.0.1:8080}}]\nservices: {{shop: {{endpoints: [\"127.0.0.1:3000\"]}}}}\nroutes:\n{routes}"
    )
}

#[test]
fn hosts_and_query_parse_into_the_model() {
    let text = with_routes(
        "  - name: canary
    match:
      hosts: [Shop.Example.com, \"*.shop.example.com\", 10.0.0.7]
      prefix: /api/
      query: {version: \"2\", page: 3, debug: {present: true}}
    service: shop
",
    );
    let config = parse("routes.yaml", &text).expect("valid");
    let matcher = &config.routes[0].matcher;
    assert_eq!(
        matcher.hosts,
        ["shop.example.com", "*.shop.example.com", "10.0.0.7"]
    );
    assert_eq!(matcher.query["version"], QueryMatch::Exact("2".into()));
    assert_eq!(matcher.query["page"], QueryMatch::Exact("3".into()));
    assert_eq!(matcher.query["debug"], QueryMatch::Present);
    assert!(matcher.accepts_host("a.shop.example.com"));
    assert!(matcher.accepts_host("*.b.shop.example.com"));
    assert!(!matcher.accepts_host("example.com"));
}

#[test]
fn a_bad_host_is_reported_where_it_stands_with_why() {
    for (host, why) in [
        ("\"*\"", "leave out `hosts`"),
        ("shop.example.com:8080", "without its port"),
        ("\"shop.*.com\"", "only `*.` before a name"),
        ("\"*shop.com\"", "only `*.` before a name"),
        ("-shop.com", "DNS name"),
        ("shop..com", "DNS name"),
        ("\"sh op.com\"", "DNS name"),
    ] {
        let text = with_routes(&format!(
            "  - name: r\n    match: {{prefix: /, hosts: [a.com, {host}]}}\n    service: shop\n"
        ));
        assert_error_at(&text, "6:39:", why);
    }
}

#[test]
fn a_host_listed_twice_in_any_case_is_refused() {
    let text = with_routes(
        "  - name: r\n    match: {prefix: /, hosts: [a.com, A.com]}\n    service: shop\n",
    );
    assert_error_at(&text, "6:39:", "listed twice");
}

#[test]
fn present_false_and_a_list_as_a_query_value_are_refused() {
    let text = with_routes(
        "  - name: r\n    match: {prefix: /, query: {debug: {present: false}}}\n    service: shop\n",
    );
    assert_error_at(&text, "6:39:", "`present: false` cannot be matched");
    let text = with_routes(
        "  - name: r\n    match: {prefix: /, query: {debug: [a, b]}}\n    service: shop\n",
    );
    assert_eq!(errors(&text).len(), 1, "{:?}", errors(&text));
}

#[test]
fn a_route_covered_by_an_earlier_prefix_is_refused_naming_both_lines() {
    let text = with_routes(
        "  - name: all-api
    match: {prefix: /api/}
    service: shop
  - name: orders
    match: {prefix: /api/orders, methods: [GET]}
    service: shop
",
    );
    assert_error_at(
        &text,
        "9:12:",
        "route \"orders\" is never matched: route \"all-api\" (line 6) comes first",
    );
}

#[test]
fn identical_matches_are_refused_for_paths_and_regexes_alike() {
    for matcher in [
        "{path: /a}",
        "{regex: '/items/[0-9]+'}",
        "{prefix: /a, hosts: [x.com]}",
    ] {
        let text = with_routes(&format!(
            "  - name: first\n    match: {matcher}\n    service: shop\n  - name: second\n    match: {matcher}\n    service: shop\n"
        ));
        assert_error_at(&text, "9:12:", "route \"second\" is never matched");
    }
}

#[test]
fn a_wildcard_host_covers_its_names_and_no_host_covers_every_host() {
    let covered = [
        ("[\"*.shop.com\"]", "[a.shop.com, b.shop.com]"),
        ("[\"*.shop.com\"]", "[\"*.eu.shop.com\"]"),
        ("[]", "[a.com]"),
    ];
    for (first, second) in covered {
        let text = with_routes(&format!(
            "  - name: first\n    match: {{prefix: /, hosts: {first}}}\n    service: shop\n  - name: second\n    match: {{prefix: /x, hosts: {second}}}\n    service: shop\n"
        ));
        assert_error_at(&text, "9:12:", "is never matched");
    }
}

#[test]
fn a_route_an_earlier_one_only_partly_covers_is_accepted() {
    let reachable = [
        // Narrower hosts first.
        "{prefix: /, hosts: [a.com]}|{prefix: /x}",
        "{prefix: /, hosts: [\"*.shop.com\"]}|{prefix: /x, hosts: [shop.com]}",
        // Narrower methods, headers or query first.
        "{prefix: /, methods: [GET]}|{prefix: /x}",
        "{prefix: /, methods: [GET]}|{prefix: /x, methods: [GET, POST]}",
        "{prefix: /, headers: {x-v: '2'}}|{prefix: /x}",
        "{prefix: /, query: {v: '2'}}|{prefix: /x, query: {v: '3'}}",
        "{prefix: /, query: {v: '2'}}|{prefix: /x, query: {v: {present: true}}}",
        // A longer prefix first, and a regex, which only the same regex covers.
        "{prefix: /api/orders}|{prefix: /api/}",
        "{regex: '/.*'}|{path: /a}",
        "{path: /a}|{prefix: /a}",
    ];
    for pair in reachable {
        let (first, second) = pair.split_once('|').expect("pair");
        let text = with_routes(&format!(
            "  - name: first\n    match: {first}\n    service: shop\n  - name: second\n    match: {second}\n    service: shop\n"
        ));
        parse("routes.yaml", &text).unwrap_or_else(|e| panic!("{pair}: {e}"));
    }
}

#[test]
fn a_route_on_another_listener_is_not_covered() {
    let text = "version: 1
listeners: [{name: public, address: 127.0.0.1:8080}, {name: admin, address: 127.0.0.1:8081}]
services: {shop: {endpoints: [\"127.0.0.1:3000\"]}}
routes:
  - {name: first, listener: public, match: {prefix: /}, service: shop}
  - {name: second, match: {prefix: /x}, service: shop}
  - {name: third, listener: public, match: {prefix: /y}, service: shop}
";
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("7:44: route \"third\" is never matched"),
        "{errors:?}"
    );
}

#[test]
fn grpc_service_is_a_prefix_match_for_grpc_requests_to_grpc_services() {
    let text = "version: 1
listeners: [{name: public, address: 127.0.0.1:8080}]
services:
  orders: {endpoints: [\"127.0.0.1:50051\"], protocol: grpc, health_check: {interval: 2s}}
  web: {endpoints: [\"127.0.0.1:3000\"]}
routes:
  - {name: orders, match: {grpc_service: shop.v1.Orders}, service: orders}
";
    let config = parse("routes.yaml", text).expect("valid");
    let matcher = &config.routes[0].matcher;
    assert_eq!(
        matcher.path,
        tollgate_routes::PathMatch::Prefix("/shop.v1.Orders/".into())
    );
    assert!(matcher.grpc);

    let to_http1 = text.replace("service: orders}\n", "service: web}\n");
    assert_error_at(
        &to_http1,
        "7:27:",
        "service \"web\" has no `protocol: grpc`",
    );
    let with_prefix = text.replace(
        "{grpc_service: shop.v1.Orders}",
        "{grpc_service: shop.v1.Orders, prefix: /x}",
    );
    assert_error_at(
        &with_prefix,
        "7:42:",
        "give it without prefix, path or regex",
    );
    let bad_name = text.replace("{grpc_service: shop.v1.Orders}", "{grpc_service: shop/v1}");
    assert_error_at(&bad_name, "7:42:", "expected a full service name");
}

#[test]
fn a_grpc_service_is_checked_by_grpc_health_and_an_http_one_by_path() {
    let text = "version: 1
services:
  a: {endpoints: [\"127.0.0.1:1\"], protocol: grpc, health_check: {path: /health}}
  b: {endpoints: [\"127.0.0.1:2\"], health_check: {path: /health, grpc_service: x.Y}}
  c: {endpoints: [\"127.0.0.1:3\"], protocol: http3}
";
    let found = errors(text);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(
        found[0].starts_with("3:72: service \"a\": a grpc service is checked by grpc.health.v1"),
        "{found:?}"
    );
    assert!(
        found[1].starts_with("4:79: service \"b\": grpc_service needs protocol: grpc"),
        "{found:?}"
    );
    assert!(
        found[2].starts_with("5:45: unknown protocol \"http3\""),
        "{found:?}"
    );
}

#[test]
fn the_first_covering_route_is_named_among_many() {
    // Routes are compared only with the earlier ones whose path could cover theirs; the
    // one named is still the first in the table that does, wherever it sits among them.
    let mut routes = String::new();
    for i in 0..500 {
        routes.push_str(&format!(
            "  - {{name: r{i}, match: {{prefix: /r/{i}/}}, service: shop}}\n"
        ));
    }
    routes.push_str(
        "  - {name: posts-get, match: {prefix: /blog/posts, methods: [GET]}, service: shop}\n",
    );
    routes.push_str("  - {name: blog, match: {prefix: /blog/}, service: shop}\n");
    routes.push_str("  - {name: exact, match: {path: /blog/posts/1}, service: shop}\n");
    routes.push_str("  - {name: again, match: {path: /blog/posts/1}, service: shop}\n");
    let text = with_routes(&routes);
    let errors = errors(&text);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains("route \"exact\" is never matched: route \"blog\""),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("route \"again\" is never matched: route \"blog\""),
        "{errors:?}"
    );
}
