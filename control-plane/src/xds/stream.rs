//! The event loop of one ADS stream, shared by the SotW and incremental variants: requests and
//! new snapshots go in, at most one response at a time comes out.

use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures::StreamExt;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tollgate_proto::envoy::config::core::v3::Node;
use tonic::{Status, Streaming};
use tracing::{debug, warn};

use crate::snapshot::{Served, Snapshot};

use super::identity::ClientIdentity;
use super::nodes::{NodeRegistry, StreamNode, StreamRecords};

/// One of the two xDS transport variants (xDS protocol, "Variants of the xDS Transport
/// Protocol"), as the state of a single stream.
pub(crate) trait TransportVariant: Send + Unpin + 'static {
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

    /// Brings `records`, what the node registry shows of every type's state, up to date;
    /// whether anything changed.
    fn write_records(&self, records: &mut StreamRecords) -> bool;
}

/// Everything a stream needs besides its variant state.
pub(crate) struct StreamContext<V: TransportVariant> {
    pub requests: Streaming<V::Request>,
    pub snapshots: watch::Receiver<Option<Arc<Served>>>,
    pub registry: Arc<NodeRegistry>,
    pub stopping: watch::Receiver<bool>,
    /// When set, the node ids this client's certificate permits; any other ends the stream.
    pub permitted_nodes: Option<ClientIdentity>,
}

/// One ADS stream: requests and new snapshots go in, its responses come out, until the
/// client goes away, the stream breaks or the server stops. Errors end this stream only; the
/// client reconnects and starts a new one.
///
/// It runs in the polls of the body that sends its responses, not in a task of its own: a
/// response then reaches HTTP/2 without crossing a channel or waking another task, which at
/// ten thousand nodes was a channel hop and a task wake-up for every node at every push.
pub(crate) struct StreamLoop<V: TransportVariant> {
    variant: V,
    requests: Streaming<V::Request>,
    snapshots: WatchStream<Option<Arc<Served>>>,
    /// The newest snapshot seen on `snapshots`.
    latest: Option<Arc<Served>>,
    stopping: WatchStream<bool>,
    registry: Arc<NodeRegistry>,
    permitted_nodes: Option<ClientIdentity>,
    node: StreamNode,
    given: GivenSnapshot,
    /// Whether an input was taken in since the records were last published.
    unpublished: bool,
    ended: bool,
}

/// What taking in the next input did.
enum Input {
    Taken,
    /// The stream ends, with this status if not OK.
    End(Option<Status>),
}

impl<V: TransportVariant> StreamLoop<V> {
    pub fn new(variant: V, context: StreamContext<V>) -> Self {
        StreamLoop {
            variant,
            requests: context.requests,
            // The current snapshot comes first: requests that arrive before the first valid
            // configuration are held, as the variant answers nothing until it has one.
            snapshots: WatchStream::new(context.snapshots),
            latest: None,
            stopping: WatchStream::new(context.stopping),
            registry: context.registry,
            permitted_nodes: context.permitted_nodes,
            node: StreamNode::default(),
            given: GivenSnapshot::default(),
            unpublished: false,
            ended: false,
        }
    }

    /// The next response, or the status the stream ends with (`None`: OK).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<V::Response, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        loop {
            if let Some(response) = self.variant.next_response(self.node.id()) {
                return Poll::Ready(Some(Ok(response)));
            }
            if std::mem::take(&mut self.unpublished) {
                let variant = &self.variant;
                self.node.publish(|records| variant.write_records(records));
            }
            match ready!(self.poll_input(cx)) {
                Input::Taken => self.unpublished = true,
                Input::End(status) => {
                    self.ended = true;
                    return Poll::Ready(status.map(Err));
                }
            }
        }
    }

    /// Takes in the next of: the server stopping, a new snapshot, a request. In that order,
    /// so that a client sending without pause holds up neither.
    fn poll_input(&mut self, cx: &mut Context<'_>) -> Poll<Input> {
        loop {
            match self.stopping.poll_next_unpin(cx) {
                Poll::Ready(Some(false)) => continue,
                Poll::Ready(_) => return Poll::Ready(Input::End(None)),
                Poll::Pending => break,
            }
        }
        match self.snapshots.poll_next_unpin(cx) {
            Poll::Ready(Some(served)) => {
                self.latest = served;
                self.given
                    .offer(&mut self.variant, self.latest.as_deref(), self.node.group());
                return Poll::Ready(Input::Taken);
            }
            Poll::Ready(None) => return Poll::Ready(Input::End(None)),
            Poll::Pending => {}
        }
        let request = match ready!(self.requests.poll_next_unpin(cx)) {
            Some(Ok(request)) => request,
            None => {
                debug!(node = %self.node.id(), "xds stream closed by client");
                return Poll::Ready(Input::End(None));
            }
            Some(Err(status)) => {
                debug!(node = %self.node.id(), error = %status, "xds stream broken");
                return Poll::Ready(Input::End(None));
            }
        };
        if let Some(identity) = &self.permitted_nodes {
            if let Err(status) = check_node(identity, V::node(&request), self.node.is_known()) {
                // Refused before the node is registered: it never shows in /status.
                return Poll::Ready(Input::End(Some(status)));
            }
        }
        self.node.observe(&self.registry, V::node(&request));
        // The first request names the node, and so its group and share.
        self.given
            .offer(&mut self.variant, self.latest.as_deref(), self.node.group());
        self.variant.on_request(request, self.node.id());
        Poll::Ready(Input::Taken)
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
        if self.0.as_ref().is_some_and(|given| {
            Arc::ptr_eq(given, snapshot) || given.version() == snapshot.version()
        }) {
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
