//! The event loop of one ADS stream, shared by the SotW and incremental variants: requests and
//! new snapshots go in, at most one response at a time comes out.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tollgate_proto::envoy::config::core::v3::Node;
use tonic::{Status, Streaming};
use tracing::{debug, warn};

use crate::snapshot::{Served, Snapshot};

use super::identity::ClientIdentity;
use super::nodes::{NodeRegistry, StreamNode, StreamRecords};

/// One of the two xDS transport variants (xDS protocol, "Variants of the xDS Transport
/// Protocol"), as the state of a single stream.
pub(crate) trait TransportVariant: Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;

    /// The node named by a request, if any.
    fn node(request: &Self::Request) -> Option<&Node>;

    /// Takes in a request: subscription change, ACK, NACK, or a stale message to ignore.
    fn on_request(&mut self, request: Self::Request, node: &str);

    /// Makes `snapshot` the one the client should converge to.
    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>);

    /// The next response to push, if one is due and nothing is awaiting an answer.
    fn next_response(&mut self, node: &str) -> Option<Self::Response>;

    /// Writes every type's state for the node registry into `records`.
    fn write_records(&self, records: &mut StreamRecords);
}

/// Everything a stream task needs besides its variant state.
pub(crate) struct StreamContext<V: TransportVariant> {
    pub requests: Streaming<V::Request>,
    pub responses: mpsc::Sender<Result<Box<V::Response>, Status>>,
    pub snapshots: watch::Receiver<Option<Arc<Served>>>,
    pub registry: Arc<NodeRegistry>,
    pub stopping: watch::Receiver<bool>,
    /// When set, the node ids this client's certificate permits; any other ends the stream.
    pub permitted_nodes: Option<ClientIdentity>,
}

/// Serves one stream until the client goes away, the stream breaks or the server stops. Errors
/// end this stream only; the client reconnects and starts a new one.
pub(crate) async fn run<V: TransportVariant>(mut variant: V, context: StreamContext<V>) {
    let StreamContext {
        mut requests,
        responses,
        mut snapshots,
        registry,
        mut stopping,
        permitted_nodes,
    } = context;
    let mut node = StreamNode::default();
    let mut refusal = None;
    let mut given = GivenSnapshot::default();
    // Requests that arrive before the first valid configuration are held: the variant answers
    // nothing until it has a snapshot.
    given.offer(
        &mut variant,
        snapshots.borrow_and_update().as_deref(),
        node.group(),
    );
    loop {
        tokio::select! {
            message = requests.message() => match message {
                Ok(Some(request)) => {
                    let permitted = permitted_nodes.as_ref().map_or(Ok(()), |identity| {
                        check_node(identity, V::node(&request), node.is_known())
                    });
                    if let Err(status) = permitted {
                        // Refused before the node is registered: it never shows in /status.
                        refusal = Some(status);
                        break;
                    }
                    node.observe(&registry, V::node(&request));
                    // The first request names the node, and so its group and share.
                    given.offer(&mut variant, snapshots.borrow().as_deref(), node.group());
                    variant.on_request(request, node.id());
                }
                Ok(None) => {
                    debug!(node = %node.id(), "xds stream closed by client");
                    break;
                }
                Err(status) => {
                    debug!(node = %node.id(), error = %status, "xds stream broken");
                    break;
                }
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break;
                }
                given.offer(&mut variant, snapshots.borrow_and_update().as_deref(), node.group());
            }
            _ = stopping.wait_for(|stopping| *stopping) => break,
        }
        while let Some(response) = variant.next_response(node.id()) {
            if responses.send(Ok(Box::new(response))).await.is_err() {
                debug!(node = %node.id(), "xds stream receiver gone");
                return;
            }
        }
        node.publish(|records| variant.write_records(records));
    }
    if let Some(status) = refusal {
        let _ = responses.send(Err(status)).await;
    }
}

/// The snapshot last given to a stream's variant.
#[derive(Default)]
struct GivenSnapshot(Option<Arc<Snapshot>>);

impl GivenSnapshot {
    /// Gives the variant what `served` serves `group`, unless it has it already: a change
    /// for other groups alone wakes the stream but sends nothing.
    fn offer<V: TransportVariant>(
        &mut self,
        variant: &mut V,
        served: Option<&Served>,
        group: &str,
    ) {
        let Some(snapshot) = served.map(|served| served.for_group(group)) else {
            return;
        };
        if self
            .0
            .as_ref()
            .is_some_and(|given| given.version() == snapshot.version())
        {
            return;
        }
        self.0 = Some(snapshot.clone());
        variant.on_snapshot(snapshot.clone());
    }
}

/// Whether a client may go on: a request naming a node must name one `identity` permits, and
/// the first request must name one (`known`: an earlier request did).
fn check_node(identity: &ClientIdentity, named: Option<&Node>, known: bool) -> Result<(), Status> {
    let id = match named {
        Some(node) if !node.id.is_empty() => node.id.as_str(),
        _ if known => return Ok(()),
        _ => {
            warn!(certificate = %identity.describe(), "xds stream refused: its first request names no node");
            return Err(Status::permission_denied(
                "the first request must name a node",
            ));
        }
    };
    if identity.permits_node(id) {
        return Ok(());
    }
    warn!(
        node = %id,
        certificate = %identity.describe(),
        "xds stream refused: the node id is not one the client certificate names"
    );
    Err(Status::permission_denied(format!(
        "node id \"{id}\" is not named by the client certificate"
    )))
}
