//! Envoy's edge-proxy practices on every listener and service cluster, and the listener
//! `limits` that change them.

use prost::Message;
use tollgate_proto::envoy::config::cluster::v3::Cluster;
use tollgate_proto::envoy::config::core::v3::http_protocol_options::HeadersWithUnderscoresAction;
use tollgate_proto::envoy::config::listener::v3::{filter, Listener};
use tollgate_proto::envoy::extensions::filters::network::connection_limit::v3::ConnectionLimit;
use tollgate_proto::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{explicit_http_config::ProtocolConfig, UpstreamProtocolOptions},
    HttpProtocolOptions,
};
use tollgate_proto::google::protobuf::Duration as ProtoDuration;

use super::super::tests::{decode, manager};
use crate::snapshot::{type_url, Snapshot};
use crate::translate::translate;

const CONFIG: &str = "\
version: 1
listeners:
  - {name: public, address: 0.0.0.0:8080}
  - name: behind-lb
    address: 0.0.0.0:8081
    trusted_proxies: 1
    limits:
      max_request_headers_kb: 96
      request_headers_timeout: 3s
      stream_idle_timeout: 1m
      connection_idle_timeout: 10m
      max_concurrent_streams: 16
      max_connections: 500
      connection_buffer_kb: 64
services:
  api: {endpoints: [\"127.0.0.1:3000\"]}
  grpc: {endpoints: [\"127.0.0.1:3001\"], protocol: grpc}
routes:
  - {name: all, match: {prefix: /}, service: api}
";

fn snapshot() -> Snapshot {
    translate(
        &tollgate_routes::parse("routes.yaml", CONFIG).expect("valid"),
        &Default::default(),
    )
}

fn seconds(seconds: i64) -> Option<ProtoDuration> {
    Some(ProtoDuration { seconds, nanos: 0 })
}

fn connection_limit(snapshot: &Snapshot, listener: &str) -> ConnectionLimit {
    let listener: Listener = decode(snapshot, type_url::LISTENER, listener);
    let first = &listener.filter_chains[0].filters[0];
    assert_eq!(first.name, "envoy.filters.network.connection_limit");
    let Some(filter::ConfigType::TypedConfig(any)) = &first.config_type else {
        panic!("typed config expected")
    };
    ConnectionLimit::decode(any.value.as_slice()).expect("connection limit")
}

#[test]
fn underscore_headers_are_refused_on_every_listener() {
    let snapshot = snapshot();
    for listener in ["public", "behind-lb"] {
        let options = manager(&snapshot, listener)
            .common_http_protocol_options
            .expect("protocol options");
        assert_eq!(
            options.headers_with_underscores_action,
            HeadersWithUnderscoresAction::RejectRequest as i32,
            "{listener}"
        );
    }
}

#[test]
fn a_listener_without_limits_gets_envoys_edge_settings() {
    let snapshot = snapshot();
    let hcm = manager(&snapshot, "public");
    assert_eq!(hcm.max_request_headers_kb.map(|v| v.value), Some(60));
    assert_eq!(hcm.request_headers_timeout, seconds(10));
    assert_eq!(hcm.stream_idle_timeout, seconds(300));
    assert_eq!(
        hcm.request_timeout, None,
        "a whole-request timeout would cut uploads, gRPC streams and WebSockets"
    );
    assert_eq!(
        hcm.common_http_protocol_options
            .expect("options")
            .idle_timeout,
        seconds(3600)
    );
    let http2 = hcm.http2_protocol_options.expect("h2 options");
    assert_eq!(http2.max_concurrent_streams.map(|v| v.value), Some(100));
    assert_eq!(
        http2.initial_stream_window_size.map(|v| v.value),
        Some(65_536)
    );
    assert_eq!(
        http2.initial_connection_window_size.map(|v| v.value),
        Some(1_048_576)
    );
    let listener: Listener = decode(&snapshot, type_url::LISTENER, "public");
    assert_eq!(
        listener.per_connection_buffer_limit_bytes.map(|v| v.value),
        Some(32 * 1024)
    );
    let limit = connection_limit(&snapshot, "public");
    assert_eq!(limit.max_connections.map(|v| v.value), Some(10_000));
    assert_eq!(limit.stat_prefix, "public");
}

#[test]
fn the_client_is_the_peer_unless_the_listener_trusts_proxies() {
    let snapshot = snapshot();
    let public = manager(&snapshot, "public");
    assert_eq!(public.use_remote_address.map(|b| b.value), Some(true));
    assert_eq!(public.xff_num_trusted_hops, 0);
    let behind = manager(&snapshot, "behind-lb");
    assert_eq!(behind.use_remote_address.map(|b| b.value), Some(true));
    assert_eq!(behind.xff_num_trusted_hops, 1);
}

#[test]
fn a_listeners_limits_replace_the_defaults() {
    let snapshot = snapshot();
    let hcm = manager(&snapshot, "behind-lb");
    assert_eq!(hcm.max_request_headers_kb.map(|v| v.value), Some(96));
    assert_eq!(hcm.request_headers_timeout, seconds(3));
    assert_eq!(hcm.stream_idle_timeout, seconds(60));
    assert_eq!(
        hcm.common_http_protocol_options
            .expect("options")
            .idle_timeout,
        seconds(600)
    );
    let http2 = hcm.http2_protocol_options.expect("h2 options");
    assert_eq!(http2.max_concurrent_streams.map(|v| v.value), Some(16));
    let listener: Listener = decode(&snapshot, type_url::LISTENER, "behind-lb");
    assert_eq!(
        listener.per_connection_buffer_limit_bytes.map(|v| v.value),
        Some(64 * 1024)
    );
    let limit = connection_limit(&snapshot, "behind-lb");
    assert_eq!(limit.max_connections.map(|v| v.value), Some(500));
}

#[test]
fn service_clusters_buffer_32_kib_per_connection_with_edge_http2_windows() {
    let snapshot = snapshot();
    for name in ["api", "grpc"] {
        let cluster: Cluster = decode(&snapshot, type_url::CLUSTER, name);
        assert_eq!(
            cluster.per_connection_buffer_limit_bytes.map(|v| v.value),
            Some(32 * 1024),
            "{name}"
        );
    }
    let grpc: Cluster = decode(&snapshot, type_url::CLUSTER, "grpc");
    let options = &grpc.typed_extension_protocol_options
        ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    let options = HttpProtocolOptions::decode(options.value.as_slice()).expect("decodes");
    let Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) =
        options.upstream_protocol_options
    else {
        panic!("explicit HTTP config expected")
    };
    let Some(ProtocolConfig::Http2ProtocolOptions(http2)) = explicit.protocol_config else {
        panic!("HTTP/2 expected")
    };
    assert_eq!(
        http2.initial_stream_window_size.map(|v| v.value),
        Some(65_536)
    );
    assert_eq!(
        http2.initial_connection_window_size.map(|v| v.value),
        Some(1_048_576)
    );
}
