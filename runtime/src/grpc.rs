//! The gRPC listening socket every sidecar serves on, and the allocator it runs with.

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// Connections accepted on `listener`, with TCP_NODELAY: without it a small response can
/// wait for the peer's delayed ACK (40 ms on Linux), which was once a sidecar's whole p99.
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// The sidecars' global allocator: jemalloc instead of glibc's malloc. gRPC over HTTP/2
/// allocates and frees small buffers on every call, and jemalloc's thread caches cut the
/// sidecars' CPU per call by about a sixth in `make bench`. mimalloc saved a little more
/// CPU but added multi-millisecond stalls to the rate-limit bench's half-load p99, which
/// is itself a target.
pub use tikv_jemallocator::Jemalloc as Allocator;
