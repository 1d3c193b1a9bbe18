//! The xDS protocol server: Aggregated Discovery Service over gRPC, in both the
//! State-of-the-World and the incremental (Delta) variants.
//!
//! This module only speaks the protocol (streams, versions, nonces, ACK/NACK, push order)
//! against the [`SnapshotCache`]; it knows nothing of where resources come from. Every stream
//! converges its client to the newest snapshot, pushing CDS → EDS → LDS → RDS → SDS one response at a
//! time and removing stale clusters last, as the xDS protocol's make-before-break rules ask
//! (<https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol>).

mod delta;
mod nodes;
mod sequencing;
mod served;
mod sotw;
mod stream;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tollgate_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use tollgate_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tonic::{Request, Response, Status, Streaming};

use crate::snapshot::SnapshotCache;

pub use nodes::{NodeRegistry, NodeStatus, TypeStatus};

use stream::{StreamContext, TransportVariant};

/// Responses buffered per stream. Only one response is outstanding at a time (plus empty
/// answers for unserved types), so a small buffer never blocks a stream for long.
const RESPONSE_BUFFER: usize = 8;

/// A failure of the xDS server as a whole; failures of one stream only end that stream.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("xds server on {address} failed")]
    Serve {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// The ADS service: one task per stream, all reading the same snapshot cache.
#[derive(Debug, Clone)]
pub struct AdsServer {
    cache: Arc<SnapshotCache>,
    nodes: Arc<NodeRegistry>,
    /// Set when the server shuts down, so that long-lived streams end and graceful shutdown
    /// does not wait on them forever.
    stopping: Arc<watch::Sender<bool>>,
}

impl AdsServer {
    pub fn new(cache: Arc<SnapshotCache>, nodes: Arc<NodeRegistry>) -> Self {
        AdsServer {
            cache,
            nodes,
            stopping: Arc::new(watch::channel(false).0),
        }
    }

    fn spawn_stream<V: TransportVariant>(
        &self,
        variant: V,
        requests: Streaming<V::Request>,
    ) -> ReceiverStream<Result<V::Response, Status>> {
        let (responses, receiver) = mpsc::channel(RESPONSE_BUFFER);
        let context = StreamContext {
            requests,
            responses,
            snapshots: self.cache.subscribe(),
            registry: Arc::clone(&self.nodes),
            stopping: self.stopping.subscribe(),
        };
        tokio::spawn(stream::run(variant, context));
        ReceiverStream::new(receiver)
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let variant = sotw::SotwStream::default();
        Ok(Response::new(
            self.spawn_stream(variant, request.into_inner()),
        ))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let variant = delta::DeltaStream::default();
        Ok(Response::new(
            self.spawn_stream(variant, request.into_inner()),
        ))
    }
}

/// Serves ADS on an already-bound listener until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    server: AdsServer,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), XdsError> {
    let address = listener.local_addr().map_or_else(
        |_| "an unknown address".to_string(),
        |a: SocketAddr| a.to_string(),
    );
    let stopping = Arc::clone(&server.stopping);
    let shutdown = async move {
        shutdown.await;
        stopping.send_replace(true);
    };
    tracing::info!(address = %address, "serving xds");
    tonic::transport::Server::builder()
        .add_service(AggregatedDiscoveryServiceServer::new(server))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(|source| XdsError::Serve { address, source })
}
