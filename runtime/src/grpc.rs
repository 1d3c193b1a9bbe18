//! The gRPC listening socket every sidecar serves on.

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// Connections accepted on `listener`, with TCP_NODELAY: without it a small response can
/// wait for the peer's delayed ACK (40 ms on Linux), which was once a sidecar's whole p99.
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}
