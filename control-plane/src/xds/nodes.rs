//! Which Envoy nodes are connected and what each has accepted, for the admin status page.
//!
//! Every xDS stream publishes its per-type ACK/NACK state here under the node id it learnt from
//! its first request (xDS protocol, "Basic Protocol Overview": only the first request on a stream
//! is guaranteed to carry the node). Several streams may share one node id (a reconnect racing
//! the old stream, or two Envoys configured alike), so state is kept per stream and summarised
//! per node.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::watch;
use tollgate_proto::envoy::config::core::v3::Node;

use crate::snapshot::{Served, Snapshot};

use super::served::ServedType;

/// What one node has done with each resource type, judged against the snapshot being served.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    pub id: String,
    /// The gateway group the node belongs to: the `cluster` its bootstrap names.
    pub group: String,
    /// A stream for this node is open now.
    pub connected: bool,
    /// Every type the node subscribed to has ACKed the current snapshot's content, including the
    /// final CDS that drops clusters kept for make-before-break.
    pub in_sync: bool,
    /// Keyed by short type name: "cluster", "endpoint", "listener", "route", "secret".
    pub types: BTreeMap<String, TypeStatus>,
}

/// ACK/NACK state of one resource type on one node.
#[derive(Clone, Debug, Serialize)]
pub struct TypeStatus {
    /// The version the node holds and has accepted.
    pub acked_version: Option<String>,
    /// `error_detail.message` of the last NACK; cleared by a later ACK.
    pub nack: Option<String>,
    /// The version that was rejected by that NACK.
    pub nack_version: Option<String>,
}

/// The state a stream reports for one type.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct TypeRecord {
    /// The client has asked for this type on the stream.
    pub subscribed: bool,
    pub acked_version: Option<String>,
    pub nack: Option<String>,
    pub nack_version: Option<String>,
}

impl TypeRecord {
    /// Makes this record show `record`, but with `acked_version` as the acked version,
    /// reusing its strings' buffers; whether anything changed.
    pub fn show(&mut self, record: &TypeRecord, acked_version: Option<&str>) -> bool {
        let mut changed = self.subscribed != record.subscribed;
        self.subscribed = record.subscribed;
        changed |= show_text(&mut self.acked_version, acked_version);
        changed |= show_text(&mut self.nack, record.nack.as_deref());
        changed |= show_text(&mut self.nack_version, record.nack_version.as_deref());
        changed
    }
}

/// Sets `field` to `text` unless it is already, reusing its buffer; whether it changed.
fn show_text(field: &mut Option<String>, text: Option<&str>) -> bool {
    if field.as_deref() == text {
        return false;
    }
    match (field.as_mut(), text) {
        (Some(shown), Some(text)) => {
            shown.clear();
            shown.push_str(text);
        }
        (_, text) => *field = text.map(str::to_owned),
    }
    true
}

/// Per-type records of one stream, one for each [`ServedType`].
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct StreamRecords([TypeRecord; ServedType::ALL.len()]);

impl StreamRecords {
    pub fn get_mut(&mut self, served: ServedType) -> &mut TypeRecord {
        &mut self.0[served.index()]
    }

    fn iter(&self) -> impl Iterator<Item = (ServedType, &TypeRecord)> {
        ServedType::ALL.into_iter().zip(&self.0)
    }
}

#[derive(Debug)]
struct NodeEntry {
    /// The `cluster` the node's newest stream named.
    group: String,
    /// When the node last connected (its first stream opened) or disconnected (its last
    /// stream closed).
    changed_at: Instant,
    /// Open streams by stream id; ids grow, so the last entry is the newest stream. Each
    /// stream writes its own records, without the registry's lock.
    open: BTreeMap<u64, Arc<Mutex<StreamRecords>>>,
    /// What the most recently closed stream last reported, shown while none is open.
    last_closed: Option<StreamRecords>,
}

/// Every node seen on any stream since start-up.
#[derive(Debug)]
pub struct NodeRegistry {
    nodes: Mutex<BTreeMap<String, NodeEntry>>,
    next_stream: AtomicU64,
    /// Bumped on every change, so waiters (tests, status pages) need not poll.
    changes: watch::Sender<u64>,
    /// Bumped when a node connects, disconnects or changes group: what budget sharing
    /// watches, without waking at every ACK.
    membership_changes: watch::Sender<u64>,
}

/// One node as budget sharing sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub group: String,
    /// A stream for the node is open.
    pub connected: bool,
    /// When `connected` last changed.
    pub since: Instant,
}

impl Default for NodeRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeRegistry {
    pub fn new() -> Self {
        NodeRegistry {
            nodes: Mutex::new(BTreeMap::new()),
            next_stream: AtomicU64::new(0),
            changes: watch::channel(0).0,
            membership_changes: watch::channel(0).0,
        }
    }

    /// Status of every node, judged against what `served` serves its group.
    pub fn statuses(&self, served: Option<&Served>) -> Vec<NodeStatus> {
        self.lock()
            .iter()
            .map(|(id, entry)| {
                let current = served.map(|served| served.for_group(&entry.group).as_ref());
                let connected = !entry.open.is_empty();
                let open: Vec<_> = entry.open.values().map(|records| lock(records)).collect();
                let shown = open
                    .last()
                    .map(|records| &**records)
                    .or(entry.last_closed.as_ref());
                let in_sync = if connected {
                    open.iter().all(|records| in_sync(records, current))
                } else {
                    shown.is_some_and(|records| in_sync(records, current))
                };
                let types = shown
                    .into_iter()
                    .flat_map(StreamRecords::iter)
                    .filter(|(_, record)| record.subscribed)
                    .map(|(served, record)| {
                        let status = TypeStatus {
                            acked_version: record.acked_version.clone(),
                            nack: record.nack.clone(),
                            nack_version: record.nack_version.clone(),
                        };
                        (served.short_name().to_string(), status)
                    })
                    .collect();
                NodeStatus {
                    id: id.clone(),
                    group: entry.group.clone(),
                    connected,
                    in_sync,
                    types,
                }
            })
            .collect()
    }

    /// A receiver woken whenever any node's state changes.
    #[cfg(test)]
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Every node seen, connected or not, with its group.
    pub fn members(&self) -> Vec<Member> {
        self.lock()
            .iter()
            .map(|(id, entry)| Member {
                id: id.clone(),
                group: entry.group.clone(),
                connected: !entry.open.is_empty(),
                since: entry.changed_at,
            })
            .collect()
    }

    /// A receiver woken whenever a node connects, disconnects or changes group.
    pub fn membership_changes(&self) -> watch::Receiver<u64> {
        self.membership_changes.subscribe()
    }

    fn open_stream(self: &Arc<Self>, node: &str, group: &str) -> StreamRegistration {
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let mut nodes = self.lock();
        let entry = nodes.entry(node.to_string()).or_insert_with(|| NodeEntry {
            group: group.to_string(),
            changed_at: Instant::now(),
            open: BTreeMap::new(),
            last_closed: None,
        });
        let joined = entry.open.is_empty();
        let moved = entry.group != group;
        if joined {
            entry.changed_at = Instant::now();
        }
        entry.group = group.to_string();
        let records = Arc::new(Mutex::new(StreamRecords::default()));
        entry.open.insert(stream, Arc::clone(&records));
        drop(nodes);
        self.bump();
        if joined || moved {
            self.membership_changes
                .send_modify(|generation| *generation += 1);
        }
        StreamRegistration {
            registry: Arc::clone(self),
            node: node.to_string(),
            group: group.to_string(),
            stream,
            records,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, NodeEntry>> {
        lock(&self.nodes)
    }

    fn bump(&self) {
        self.changes.send_modify(|generation| *generation += 1);
    }
}

/// A panic elsewhere while holding a lock leaves plain data behind; status is still worth
/// serving. The registry's lock is taken before a stream's, never the other way round.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A node is in sync when it subscribed to something and every subscribed type holds the
/// version `current` serves.
fn in_sync(records: &StreamRecords, current: Option<&Snapshot>) -> bool {
    let Some(current) = current else {
        return false;
    };
    let mut subscribed = records.iter().filter(|(_, r)| r.subscribed).peekable();
    subscribed.peek().is_some()
        && subscribed.all(|(served, record)| {
            record.acked_version.as_deref() == Some(served.set_in(current).version.as_str())
        })
}

/// One open stream's place in the registry; removing it on drop marks the stream closed.
#[derive(Debug)]
struct StreamRegistration {
    registry: Arc<NodeRegistry>,
    node: String,
    group: String,
    stream: u64,
    /// This stream's records, as the registry shows them.
    records: Arc<Mutex<StreamRecords>>,
}

impl StreamRegistration {
    /// Lets `update` bring the records the registry shows up to date, in place, under this
    /// stream's own lock; `update` says whether it changed any.
    fn publish(&self, update: impl FnOnce(&mut StreamRecords) -> bool) {
        let changed = update(&mut lock(&self.records));
        if changed {
            self.registry.bump();
        }
    }
}

impl Drop for StreamRegistration {
    fn drop(&mut self) {
        let mut nodes = self.registry.lock();
        let mut left = false;
        if let Some(entry) = nodes.get_mut(&self.node) {
            if let Some(records) = entry.open.remove(&self.stream) {
                entry.last_closed = Some(std::mem::take(&mut *lock(&records)));
            }
            if entry.open.is_empty() {
                entry.changed_at = Instant::now();
                left = true;
            }
        }
        drop(nodes);
        self.registry.bump();
        if left {
            self.registry
                .membership_changes
                .send_modify(|generation| *generation += 1);
        }
    }
}

/// The node behind one stream, known once a request names it.
#[derive(Debug, Default)]
pub(crate) struct StreamNode {
    registration: Option<StreamRegistration>,
}

impl StreamNode {
    /// Registers the stream under the first node id a request carries; later ids are ignored
    /// (xDS protocol: the node identifier is identical whenever it is repeated on a stream).
    pub fn observe(&mut self, registry: &Arc<NodeRegistry>, node: Option<&Node>) {
        if self.registration.is_some() {
            return;
        }
        if let Some(node) = node.filter(|node| !node.id.is_empty()) {
            self.registration = Some(registry.open_stream(&node.id, &node.cluster));
        }
    }

    /// The node's group (its bootstrap's `cluster`); "" until a request names the node.
    pub fn group(&self) -> &str {
        self.registration
            .as_ref()
            .map_or("", |registration| registration.group.as_str())
    }

    /// Whether a request has named the node yet.
    pub fn is_known(&self) -> bool {
        self.registration.is_some()
    }

    /// The node id for logs; "unknown" until a request names it.
    pub fn id(&self) -> &str {
        self.registration
            .as_ref()
            .map_or("unknown", |registration| registration.node.as_str())
    }

    /// Lets `update` bring the records the registry shows for this stream up to date (every
    /// type's); `update` says whether it changed any. Nothing is shown before a request
    /// names the node.
    pub fn publish(&mut self, update: impl FnOnce(&mut StreamRecords) -> bool) {
        if let Some(registration) = &self.registration {
            registration.publish(update);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{type_url, Resource};
    use tollgate_proto::envoy::config::cluster::v3::Cluster;

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            ..Default::default()
        }
    }

    fn one_cluster_snapshot() -> Snapshot {
        let cluster = Cluster {
            name: "a".into(),
            ..Default::default()
        };
        Snapshot::new([(
            type_url::CLUSTER,
            Resource::new("a", type_url::CLUSTER, &cluster),
        )])
    }

    fn acked(version: &str) -> TypeRecord {
        TypeRecord {
            subscribed: true,
            acked_version: Some(version.into()),
            ..Default::default()
        }
    }

    #[test]
    fn node_is_in_sync_only_when_every_subscribed_type_acked_the_current_versions() {
        let registry = Arc::new(NodeRegistry::new());
        let snapshot = one_cluster_snapshot();
        let mut stream = StreamNode::default();
        stream.observe(&registry, Some(&node("edge-1")));

        let cluster_version = snapshot.resources(type_url::CLUSTER).version.clone();
        let mut records = StreamRecords::default();
        *records.get_mut(ServedType::Cluster) = acked(&cluster_version);
        *records.get_mut(ServedType::Listener) = acked("old");
        stream.publish(|into| {
            into.clone_from(&records);
            true
        });
        assert!(!registry.statuses(Some(&Served::from(snapshot.clone())))[0].in_sync);

        let listener_version = snapshot.resources(type_url::LISTENER).version.clone();
        *records.get_mut(ServedType::Listener) = acked(&listener_version);
        // Unsubscribed types do not count.
        *records.get_mut(ServedType::Route) = TypeRecord::default();
        stream.publish(|into| {
            into.clone_from(&records);
            true
        });
        let status = &registry.statuses(Some(&Served::from(snapshot.clone())))[0];
        assert!(status.in_sync);
        assert_eq!(status.types.len(), 2);
        assert!(!registry.statuses(None)[0].in_sync);
    }

    #[test]
    fn a_record_shown_again_unchanged_reports_no_change() {
        let record = TypeRecord {
            subscribed: true,
            acked_version: Some("v0".into()),
            nack: Some("bad cluster".into()),
            nack_version: Some("v1".into()),
        };
        let mut shown = TypeRecord::default();
        assert!(shown.show(&record, Some("v2")));
        assert_eq!(
            shown,
            TypeRecord {
                acked_version: Some("v2".into()),
                ..record.clone()
            }
        );
        assert!(!shown.show(&record, Some("v2")), "nothing changed");
        assert!(shown.show(&record, None), "the acked version went");
        assert_eq!(shown.acked_version, None);
        let fixed = TypeRecord {
            nack: None,
            ..record.clone()
        };
        assert!(shown.show(&fixed, None));
        assert_eq!(shown.nack, None);
    }

    #[test]
    fn closed_stream_leaves_node_disconnected_with_its_last_state() {
        let registry = Arc::new(NodeRegistry::new());
        let mut stream = StreamNode::default();
        stream.observe(&registry, Some(&node("edge-1")));
        let mut records = StreamRecords::default();
        *records.get_mut(ServedType::Cluster) = acked("v1");
        stream.publish(|into| {
            into.clone_from(&records);
            true
        });
        assert!(registry.statuses(None)[0].connected);

        drop(stream);
        let status = &registry.statuses(None)[0];
        assert!(!status.connected);
        assert_eq!(status.types["cluster"].acked_version.as_deref(), Some("v1"));
    }

    #[test]
    fn stream_without_node_id_is_not_listed() {
        let registry = Arc::new(NodeRegistry::new());
        let mut stream = StreamNode::default();
        stream.observe(&registry, None);
        stream.observe(&registry, Some(&node("")));
        assert_eq!(stream.id(), "unknown");
        assert!(registry.statuses(None).is_empty());
    }
}
