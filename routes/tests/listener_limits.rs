//! A listener's `limits`: Envoy's edge-proxy defaults, and the values a listener sets instead.

mod common;

use std::time::Duration;

use common::{assert_error_at, errors};

use tollgate_routes::{parse, ListenerLimits};

const TEXT: &str = "version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
    limits:
      max_request_headers_kb: 96
      request_headers_timeout: 2s
      stream_idle_timeout: 1m
      connection_idle_timeout: 10m
      max_concurrent_streams: 250
      max_connections: 40000
      connection_buffer_kb: 64
  - {name: admin, address: 127.0.0.1:8081}
services: {app: {endpoints: [\"127.0.0.1:3000\"]}}
routes:
  - {name: all, match: {prefix: /}, service: app}
";

#[test]
fn a_listener_without_limits_gets_the_edge_defaults() {
    let config = parse("routes.yaml", TEXT).expect("valid");
    let limits = config.listeners[1].limits;
    assert_eq!(limits, ListenerLimits::default());
    assert_eq!(limits.max_request_headers_kb, 60);
    assert_eq!(limits.request_headers_timeout, Duration::from_secs(10));
    assert_eq!(limits.stream_idle_timeout, Duration::from_secs(300));
    assert_eq!(limits.connection_idle_timeout, Duration::from_secs(3600));
    assert_eq!(limits.max_concurrent_streams, 100);
    assert_eq!(limits.max_connections, 10_000);
    assert_eq!(limits.connection_buffer_kb, 32);
}

#[test]
fn every_limit_a_listener_sets_replaces_its_default() {
    let config = parse("routes.yaml", TEXT).expect("valid");
    assert_eq!(
        config.listeners[0].limits,
        ListenerLimits {
            max_request_headers_kb: 96,
            request_headers_timeout: Duration::from_secs(2),
            stream_idle_timeout: Duration::from_secs(60),
            connection_idle_timeout: Duration::from_secs(600),
            max_concurrent_streams: 250,
            max_connections: 40_000,
            connection_buffer_kb: 64,
        }
    );
}

#[test]
fn an_unset_limit_keeps_its_default_beside_one_that_is_set() {
    let text = TEXT.replace(
        "  - {name: admin, address: 127.0.0.1:8081}",
        "  - {name: admin, address: 127.0.0.1:8081, limits: {max_request_headers_kb: 8}}",
    );
    let limits = parse("routes.yaml", &text).expect("valid").listeners[1].limits;
    assert_eq!(limits.max_request_headers_kb, 8);
    assert_eq!(
        ListenerLimits {
            max_request_headers_kb: ListenerLimits::DEFAULT_MAX_REQUEST_HEADERS_KB,
            ..limits
        },
        ListenerLimits::default()
    );
}

#[test]
fn limits_out_of_envoys_range_are_reported_where_they_stand() {
    assert_error_at(
        &TEXT.replace("max_request_headers_kb: 96", "max_request_headers_kb: 9000"),
        "6:31:",
        "max_request_headers_kb 9000 is out of range: expected 1 to 8192",
    );
    assert_error_at(
        &TEXT.replace("max_concurrent_streams: 250", "max_concurrent_streams: 0"),
        "10:31:",
        "max_concurrent_streams 0 is out of range: expected 1 to 2147483647",
    );
    assert_error_at(
        &TEXT.replace("max_connections: 40000", "max_connections: 0"),
        "11:24:",
        "max_connections 0 is out of range",
    );
    assert_error_at(
        &TEXT.replace("connection_buffer_kb: 64", "connection_buffer_kb: 2000000"),
        "12:29:",
        "connection_buffer_kb 2000000 is out of range: expected 1 to 1048576",
    );
}

#[test]
fn limit_durations_must_be_durations_greater_than_zero() {
    assert_error_at(
        &TEXT.replace("request_headers_timeout: 2s", "request_headers_timeout: 0s"),
        "7:32:",
        "must be greater than zero",
    );
    let both = TEXT
        .replace("stream_idle_timeout: 1m", "stream_idle_timeout: soon")
        .replace(
            "connection_idle_timeout: 10m",
            "connection_idle_timeout: 0ms",
        );
    let found = errors(&both);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].starts_with("8:28: invalid duration \"soon\""),
        "{found:?}"
    );
    assert!(found[1].starts_with("9:32: duration \"0ms\""), "{found:?}");
}

#[test]
fn an_unknown_limit_is_refused() {
    assert_error_at(
        &TEXT.replace("max_connections: 40000", "max_conns: 40000"),
        "11:",
        "max_conns",
    );
}
