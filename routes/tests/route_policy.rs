//! Per-route traffic policies in routes.yaml: what a valid one becomes in the model, its
//! defaults, and every mistake reported at its line and column.

mod common;

use common::assert_error_at;

fn assert_one_error(snippet: &str, at: &str, contains: &str) {
    assert_error_at(&with_route_policy(snippet), at, contains)
}

use std::time::Duration;

use tollgate_routes::parse;
use tollgate_routes::route_policy::{AllowedOrigin, Backoff, RetryOn, RouteCors};

/// A route whose policy lines are appended at the end (line 9 onwards, column 5).
fn with_route_policy(policy: &str) -> String {
    format!(
        "\
version: 1
listeners: [{{name: public, address: 127.0.0.1:8080}}]
services:
  invoices: {{endpoints: [\"127.0.0.1:3000\"]}}
routes:
  - name: invoices
    match: {{prefix: /v1/}}
    service: invoices
{policy}"
    )
}

#[test]
fn a_full_policy_parses_into_the_model() {
    let text = with_route_policy(
        r#"    retries: {attempts: 3, per_try_timeout: 1s, on: [5xx, reset, connect-failure, retriable-4xx, "503"], backoff: {base: 25ms, max: 250ms}}
    idle_timeout: 30s
    cors: {origins: ["https://App.example.com"], methods: [get, POST], headers: [Authorization], expose_headers: [x-request-id], credentials: true, max_age: 1h}
    request_headers: {add: {x-from: gw}, set: {X-Env: prod}, remove: [x-debug]}
    response_headers: {remove: [server]}
    rewrite_regex: {pattern: "^/v1/(.*)$", substitution: "/\\1"}
    host_rewrite: invoices.internal
    max_request_bytes: 1048576
"#,
    );
    let config = parse("routes.yaml", &text).expect("valid");
    let traffic = &config.routes[0].traffic;
    let retries = traffic.retries.as_ref().expect("retries");
    assert_eq!(retries.attempts, 3);
    assert_eq!(retries.per_try_timeout, Some(Duration::from_secs(1)));
    assert_eq!(
        retries.on,
        [
            RetryOn::ServerError,
            RetryOn::Reset,
            RetryOn::ConnectFailure,
            RetryOn::Retriable4xx,
            RetryOn::Status(503)
        ]
    );
    assert_eq!(traffic.idle_timeout, Some(Duration::from_secs(30)));
    let RouteCors::Own(cors) = &traffic.cors else {
        panic!("the route has its own cors policy: {:?}", traffic.cors);
    };
    assert_eq!(
        cors.origins,
        [AllowedOrigin::Exact("https://app.example.com".into())],
        "origins compare as browsers serialize them, in lower case"
    );
    assert_eq!(cors.methods, ["GET", "POST"]);
    assert_eq!(cors.headers, ["authorization"]);
    assert!(cors.credentials);
    assert_eq!(cors.max_age, Some(Duration::from_secs(3600)));
    assert_eq!(traffic.request_headers.set["x-env"], "prod");
    assert_eq!(traffic.request_headers.add["x-from"], "gw");
    assert_eq!(traffic.request_headers.remove, ["x-debug"]);
    assert_eq!(traffic.response_headers.remove, ["server"]);
    let rewrite = traffic.rewrite_regex.as_ref().expect("rewrite");
    assert_eq!(rewrite.substitution, "/\\1");
    assert_eq!(traffic.host_rewrite.as_deref(), Some("invoices.internal"));
    assert_eq!(traffic.max_request_bytes, Some(1_048_576));
    assert_eq!(config.cors, None);
}

#[test]
fn retries_default_to_failures_where_the_upstream_did_no_work() {
    let config = parse(
        "routes.yaml",
        &with_route_policy("    retries: {attempts: 2}\n"),
    )
    .expect("valid");
    let retries = config.routes[0].traffic.retries.as_ref().expect("retries");
    assert_eq!(
        retries.on,
        [RetryOn::ConnectFailure, RetryOn::RefusedStream]
    );
    assert_eq!(retries.per_try_timeout, None);
    assert_eq!(retries.backoff, Backoff::default());
}

#[test]
fn backoff_max_defaults_to_ten_times_the_base() {
    let config = parse(
        "routes.yaml",
        &with_route_policy("    retries: {attempts: 2, backoff: {base: 100ms}}\n"),
    )
    .expect("valid");
    let backoff = config.routes[0]
        .traffic
        .retries
        .as_ref()
        .expect("retries")
        .backoff;
    assert_eq!(backoff.max, Duration::from_secs(1));
}

#[test]
fn a_route_without_policies_has_an_empty_one() {
    let config = parse("routes.yaml", &with_route_policy("")).expect("valid");
    assert_eq!(config.routes[0].traffic, Default::default());
}

#[test]
fn top_level_cors_is_the_default_policy() {
    let text = format!(
        "{}cors: {{origins: [\"*\"], methods: [GET]}}\n",
        with_route_policy("")
    );
    let config = parse("routes.yaml", &text).expect("valid");
    let cors = config.cors.expect("global cors");
    assert_eq!(cors.origins, [AllowedOrigin::Any]);
    assert!(!cors.credentials);
}

#[test]
fn a_route_can_switch_the_top_level_cors_off_and_a_switched_off_policy_needs_no_origins() {
    let text = format!(
        "{}cors: {{origins: [\"*\"]}}\n",
        with_route_policy("    cors: {enabled: false}\n")
    );
    let config = parse("routes.yaml", &text).expect("valid");
    assert_eq!(config.routes[0].traffic.cors, RouteCors::Off);
    assert!(config.cors.is_some());

    let text = format!(
        "{}cors: {{enabled: false, origins: [\"*\"]}}\n",
        with_route_policy("")
    );
    let config = parse("routes.yaml", &text).expect("valid");
    assert_eq!(
        config.cors, None,
        "a top-level policy switched off is no default"
    );
    assert_eq!(config.routes[0].traffic.cors, RouteCors::Inherit);
}

#[test]
fn an_enabled_cors_policy_needs_origins_and_a_disabled_one_is_still_checked() {
    assert_one_error(
        "    cors: {methods: [GET]}\n",
        "9:11:",
        "cors needs origins",
    );
    assert_one_error(
        "    cors: {enabled: false, origins: [\"ftp://x\"]}\n",
        "9:",
        "invalid cors origin",
    );
}

#[test]
fn attempts_out_of_range_are_located() {
    assert_one_error("    retries: {attempts: 0}\n", "9:25:", "out of range");
    assert_one_error("    retries: {attempts: 11}\n", "9:25:", "expected 1 to 10");
}

#[test]
fn unknown_retry_condition_is_located() {
    assert_one_error(
        "    retries: {attempts: 2, on: [5xx, sometimes]}\n",
        "9:38:",
        "unknown retry condition \"sometimes\"",
    );
}

#[test]
fn empty_retry_conditions_are_refused() {
    assert_one_error(
        "    retries: {attempts: 2, on: []}\n",
        "9:32:",
        "retries.on is empty",
    );
}

#[test]
fn per_try_timeout_longer_than_the_route_timeout_is_refused() {
    assert_one_error(
        "    timeout: 2s\n    retries: {attempts: 2, per_try_timeout: 3s}\n",
        "10:45:",
        "longer than the route's timeout",
    );
    // Without a timeout of its own the route has Envoy's 15 s.
    assert_one_error(
        "    retries: {attempts: 2, per_try_timeout: 20s}\n",
        "9:45:",
        "longer than the route's timeout (15s)",
    );
}

#[test]
fn backoff_max_below_base_is_refused() {
    assert_one_error(
        "    retries: {attempts: 2, backoff: {base: 1s, max: 100ms}}\n",
        "9:53:",
        "backoff max 100ms is shorter than base 1s",
    );
}

#[test]
fn zero_idle_timeout_is_refused() {
    assert_one_error("    idle_timeout: 0s\n", "9:19:", "greater than zero");
}

#[test]
fn wildcard_origin_with_credentials_is_refused() {
    assert_one_error(
        "    cors: {origins: [\"*\"], credentials: true}\n",
        "9:22:",
        "cannot be combined with credentials",
    );
}

#[test]
fn malformed_origins_are_located() {
    for bad in [
        "app.example.com",
        "https://app.example.com/",
        "ftp://x.example",
        "https://",
        "https://a b",
    ] {
        assert_one_error(
            &format!("    cors: {{origins: [\"{bad}\"]}}\n"),
            "9:22:",
            "invalid cors origin",
        );
    }
}

#[test]
fn origins_with_ports_and_ip_literals_are_accepted() {
    let text = with_route_policy(
        "    cors: {origins: [\"http://localhost:3000\", \"http://[::1]:8080\", \"http://127.0.0.1\"]}\n",
    );
    parse("routes.yaml", &text).expect("valid");
}

#[test]
fn empty_origins_are_refused() {
    assert_one_error(
        "    cors: {origins: []}\n",
        "9:21:",
        "cors.origins is empty",
    );
}

#[test]
fn cors_max_age_must_be_whole_seconds() {
    assert_one_error(
        "    cors: {origins: [\"*\"], max_age: 1500ms}\n",
        "9:37:",
        "whole seconds",
    );
}

#[test]
fn cors_unknown_method_is_located() {
    assert_one_error(
        "    cors: {origins: [\"*\"], methods: [GET, FETCH]}\n",
        "9:43:",
        "unknown HTTP method \"FETCH\"",
    );
}

#[test]
fn header_edits_may_not_touch_framing_or_host() {
    assert_one_error(
        "    request_headers: {set: {host: evil.example}}\n",
        "9:35:",
        "use host_rewrite",
    );
    assert_one_error(
        "    response_headers: {remove: [transfer-encoding]}\n",
        "9:33:",
        "may not change \"transfer-encoding\"",
    );
}

#[test]
fn a_route_may_not_forge_the_consumer_identity() {
    assert_one_error(
        "    request_headers: {add: {X-Consumer-Id: admin}}\n",
        "9:44:",
        "ext-authz sets it from a verified token",
    );
}

#[test]
fn a_header_in_two_edits_is_refused() {
    assert_one_error(
        "    request_headers: {set: {x-env: prod}, remove: [x-env]}\n",
        "9:36:",
        "in both request_headers.remove and request_headers.set",
    );
}

#[test]
fn header_values_with_line_breaks_are_refused() {
    assert_one_error(
        "    response_headers: {add: {x-a: \"one\\r\\nset-cookie: x=1\"}}\n",
        "9:35:",
        "control character",
    );
}

#[test]
fn rewrite_regex_and_rewrite_prefix_are_exclusive() {
    assert_one_error(
        "    rewrite_prefix: /\n    rewrite_regex: {pattern: \"^/v1\", substitution: \"\"}\n",
        "10:20:",
        "use rewrite_prefix or rewrite_regex, not both",
    );
}

#[test]
fn rewrite_regex_problems_are_located() {
    assert_one_error(
        "    rewrite_regex: {pattern: \"^/v1/(.*\", substitution: \"/\"}\n",
        "9:30:",
        "invalid regex",
    );
    assert_one_error(
        "    rewrite_regex: {pattern: \"^/v1/(.*)$\", substitution: \"/\\\\2\"}\n",
        "9:58:",
        "refers to group \\2, but the pattern has 1",
    );
    assert_one_error(
        "    rewrite_regex: {pattern: \"^/v1/(.*)$\", substitution: \"/$1\\\\n\"}\n",
        "9:58:",
        "a backslash must be followed by a group digit",
    );
}

#[test]
fn host_rewrite_must_be_a_host() {
    assert_one_error(
        "    host_rewrite: \"invoices internal\"\n",
        "9:19:",
        "invalid host_rewrite",
    );
    parse(
        "routes.yaml",
        &with_route_policy("    host_rewrite: invoices.internal:8443\n"),
    )
    .expect("a port is allowed");
}

#[test]
fn max_request_bytes_out_of_range_is_located() {
    assert_one_error("    max_request_bytes: 0\n", "9:24:", "out of range");
    assert_one_error(
        "    max_request_bytes: 4294967296\n",
        "9:24:",
        "expected 1 to 4294967295",
    );
}

#[test]
fn the_server_header_cannot_be_set_but_removing_it_is_harmless() {
    assert_one_error(
        "    response_headers: {set: {server: mine}}\n",
        "9:38:",
        "the gateway always sets its own",
    );
    parse(
        "routes.yaml",
        &with_route_policy("    response_headers: {remove: [server]}\n"),
    )
    .expect("removing server is accepted");
}

#[test]
fn cache_parses_its_ttl() {
    let config = parse(
        "routes.yaml",
        &with_route_policy("    cache: {ttl: 1m30s}\n"),
    )
    .expect("valid");
    let cache = config.routes[0].traffic.cache.expect("cache");
    assert_eq!(cache.ttl, Duration::from_secs(90));
}

#[test]
fn routes_without_cache_have_none() {
    let config = parse("routes.yaml", &with_route_policy("")).expect("valid");
    assert_eq!(config.routes[0].traffic.cache, None);
}

#[test]
fn cache_ttl_must_be_whole_positive_seconds() {
    assert_one_error("    cache: {ttl: 0s}\n", "9:18:", "greater than zero");
    assert_one_error("    cache: {ttl: 1500ms}\n", "9:18:", "whole seconds");
    assert_one_error("    cache: {ttl: soon}\n", "9:18:", "");
    assert_one_error("    cache: {}\n", "9:", "ttl");
    assert_one_error("    cache: {ttl: 1s, max_age: 2s}\n", "9:", "unknown field");
}

#[test]
fn cache_is_refused_on_a_route_with_auth() {
    let text = "\
version: 1
listeners: [{name: public, address: 127.0.0.1:8080}]
services:
  invoices: {endpoints: [\"127.0.0.1:3000\"]}
auth_providers:
  main: {issuer: https://id.example.com, audiences: [api], jwks_file: jwks.json}
sidecars:
  ext_authz: {address: 127.0.0.1:9191}
routes:
  - name: invoices
    match: {prefix: /v1/}
    service: invoices
    auth: {provider: main}
    cache: {ttl: 30s}
";
    assert_error_at(text, "14:12:", "cache cannot be combined with auth");
}

#[test]
fn cache_is_refused_on_a_route_matching_neither_get_nor_head() {
    let text = with_route_policy("    cache: {ttl: 30s}\n").replace(
        "match: {prefix: /v1/}",
        "match: {prefix: /v1/, methods: [POST]}",
    );
    assert_error_at(&text, "9:12:", "only to GET and HEAD");
    let head_only = with_route_policy("    cache: {ttl: 30s}\n").replace(
        "match: {prefix: /v1/}",
        "match: {prefix: /v1/, methods: [head]}",
    );
    parse("routes.yaml", &head_only).expect("HEAD is cacheable");
}
