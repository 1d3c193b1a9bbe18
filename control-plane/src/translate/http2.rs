//! HTTP/2 settings the gateway uses towards clients and upstreams alike.

use tollgate_proto::envoy::config::core::v3::Http2ProtocolOptions;
use tollgate_proto::google::protobuf::UInt32Value;

/// HTTP/2 flow-control windows from Envoy's edge-proxy guide, for client and upstream
/// connections alike: 64 KiB per stream, 1 MiB per connection. Envoy's defaults (256 MiB
/// each) let one peer make the gateway buffer that much before flow control stops it.
pub(super) fn windows() -> Http2ProtocolOptions {
    Http2ProtocolOptions {
        initial_stream_window_size: Some(UInt32Value { value: 64 * 1024 }),
        initial_connection_window_size: Some(UInt32Value { value: 1024 * 1024 }),
        ..Default::default()
    }
}
