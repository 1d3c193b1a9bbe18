//! The xDS protocol server: Aggregated Discovery Service over gRPC, in both the
//! State-of-the-World and the incremental (Delta) variants.
//!
//! This module only speaks the protocol (streams, versions, nonces, ACK/NACK, push order)
//! against the [`SnapshotCache`]; it knows nothing of where resources come from. Every stream
//! converges its client to the newest snapshot, pushing CDS → EDS → LDS → RDS → SDS one response at a
//! time and removing stale clusters last, as the xDS protocol's make-before-break rules ask
//! (<https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol>).

mod connection;
mod delta;
mod held;
mod identity;
mod nodes;
mod sequencing;
mod served;
mod service;
mod shared_response;
mod sotw;
mod stream;
#[cfg(test)]
mod tests;
mod transport;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::{Request, Streaming};

use tollgate_runtime::reload::Reloader;
use tollgate_runtime::server_tls::ServerTls;

use crate::snapshot::SnapshotCache;

pub use identity::ClientIdentity;
pub use nodes::{Member, NodeRegistry, NodeStatus, TypeStatus};

use stream::{StreamContext, StreamLoop, TransportVariant};

/// The ADS service: every stream reads the same snapshot cache.
#[derive(Debug, Clone)]
pub struct AdsServer {
    cache: Arc<SnapshotCache>,
    nodes: Arc<NodeRegistry>,
    /// Set when the server shuts down, so that long-lived streams end and graceful shutdown
    /// does not wait on them forever.
    stopping: Arc<watch::Sender<bool>>,
    /// Whether a stream may only use a node id its client certificate names.
    bind_node_ids: bool,
}

impl AdsServer {
    pub fn new(cache: Arc<SnapshotCache>, nodes: Arc<NodeRegistry>) -> Self {
        AdsServer {
            cache,
            nodes,
            stopping: Arc::new(watch::channel(false).0),
            bind_node_ids: false,
        }
    }

    /// Refuses every stream whose node id is not named by its client's certificate (see
    /// [`ClientIdentity::permits_node`]). Only meaningful when serving with client
    /// certificates required: a stream without a verified certificate is always refused.
    pub fn bind_node_ids_to_certificates(mut self) -> Self {
        self.bind_node_ids = true;
        self
    }

    /// A stream of `variant` on `request`'s messages.
    pub(crate) fn open_stream<V: TransportVariant>(
        &self,
        variant: V,
        request: Request<Streaming<V::Request>>,
    ) -> StreamLoop<V> {
        let permitted_nodes = self.bind_node_ids.then(|| {
            request
                .extensions()
                .get::<ClientIdentity>()
                .cloned()
                .unwrap_or_default()
        });
        let context = StreamContext {
            requests: request.into_inner(),
            snapshots: self.cache.subscribe(),
            registry: Arc::clone(&self.nodes),
            stopping: self.stopping.subscribe(),
            permitted_nodes,
        };
        StreamLoop::new(variant, context)
    }
}

/// Serves ADS on an already-bound listener until `shutdown` resolves: over TLS with the
/// newest of `tls`'s certificate files when given, in plaintext otherwise. Then every stream
/// ends, every connection is closed gracefully (HTTP/2 GOAWAY), and this returns once all
/// have closed.
pub async fn serve(
    listener: TcpListener,
    server: AdsServer,
    tls: Option<Arc<Reloader<ServerTls>>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let address = listener.local_addr().map_or_else(
        |_| "an unknown address".to_string(),
        |a: SocketAddr| a.to_string(),
    );
    let stopping = Arc::clone(&server.stopping);
    let shutdown = async move {
        shutdown.await;
        stopping.send_replace(true);
    };
    let service = service::AdsService(server);
    match tls {
        Some(tls) => {
            tracing::info!(
                address = %address,
                client_certificates = tls.config().requires_client_certificate(),
                "serving xds over TLS"
            );
            connection::serve_all(transport::tls_connections(listener, tls), service, shutdown)
                .await;
        }
        None => {
            tracing::info!(address = %address, "serving xds");
            connection::serve_all(transport::plain_connections(listener), service, shutdown).await;
        }
    }
}
