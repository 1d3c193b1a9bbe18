//! Versioned, content-hashed sets of Envoy resources, and the cache that hands the current
//! one to every xDS stream.
//!
//! As in go-control-plane, translation builds an immutable [`Snapshot`] and the xDS server only
//! ever reads one; it never knows where resources came from. Every version is a hash of
//! content, so rebuilding an unchanged routes.yaml yields equal versions and pushes nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tollgate_proto::envoy::service::discovery::v3::Resource as DeltaResource;
use tollgate_proto::google::protobuf::Any;

/// The xDS type URLs Tollgate serves, in make-before-break order (xDS protocol,
/// "Eventual consistency considerations": CDS, EDS, LDS, RDS), then SDS.
///
/// Secrets come last, as in go-control-plane's response order (`pkg/cache/types/types.go`):
/// only listeners refer to them, and a listener whose certificate has not arrived yet warms
/// (keeping its predecessor serving) instead of failing, so nothing is lost by sending them
/// after LDS, while a secret is only ever withdrawn after the listener that used it.
pub mod type_url {
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

    /// Every served type, in the order updates must reach Envoy.
    pub const ORDERED: [&str; 5] = [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET];
}

/// One named resource with the hash of its encoded bytes.
#[derive(Clone, Debug)]
pub struct Resource {
    pub name: String,
    /// Hex SHA-256 of `body.value`: the per-resource version used by Delta xDS.
    pub version: String,
    pub body: Any,
    /// The resource as a SotW response carries it, encoded on first use and then shared by
    /// every stream that sends it.
    as_sotw_field: OnceLock<Bytes>,
    /// The same for Delta responses.
    as_delta_field: OnceLock<Bytes>,
}

impl PartialEq for Resource {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.version == other.version && self.body == other.body
    }
}

impl Resource {
    pub fn new(name: impl Into<String>, type_url: &str, message: &impl Message) -> Self {
        let value = crate::canonical::encode(type_url, message);
        let version = hex::encode(Sha256::digest(&value));
        Resource {
            name: name.into(),
            version,
            body: Any {
                type_url: type_url.to_string(),
                value,
            },
            as_sotw_field: OnceLock::new(),
            as_delta_field: OnceLock::new(),
        }
    }

    /// This resource as one `resources` field (number 2) of a SotW `DiscoveryResponse`.
    pub fn as_sotw_field(&self) -> &Bytes {
        self.as_sotw_field.get_or_init(|| {
            let mut buf = Vec::new();
            prost::encoding::message::encode(2, &self.body, &mut buf);
            Bytes::from(buf)
        })
    }

    /// This resource as one `resources` field (number 2) of a `DeltaDiscoveryResponse`:
    /// its name, version and body.
    pub fn as_delta_field(&self) -> &Bytes {
        self.as_delta_field.get_or_init(|| {
            let resource = DeltaResource {
                name: self.name.clone(),
                version: self.version.clone(),
                resource: Some(self.body.clone()),
                ..Default::default()
            };
            let mut buf = Vec::new();
            prost::encoding::message::encode(2, &resource, &mut buf);
            Bytes::from(buf)
        })
    }
}

/// The resources of one type, by name, and the version of that set.
#[derive(Clone, Debug, Default)]
pub struct ResourceSet {
    /// Hash over every (name, resource version) pair: the SotW `version_info` of this type.
    pub version: String,
    pub resources: BTreeMap<String, Resource>,
    /// Every resource as a `resources` field of a `DiscoveryResponse`, encoded on first use
    /// and then shared by every stream that sends the whole set.
    encoded_as_response_field: OnceLock<Bytes>,
    /// Hash over the names alone: sets with equal digests name the same resources.
    names_digest: [u8; 16],
    /// What changed since the set this one replaced in the cache, if it replaced one.
    changes: Option<SetChanges>,
}

/// The difference between two sets of one type, from the older to the newer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SetChanges {
    /// The version of the older set.
    pub since_version: String,
    /// Names new in the newer set or at another version there.
    pub changed: Vec<String>,
    /// Names only the older set has.
    pub removed: Vec<String>,
}

impl SetChanges {
    /// Walks both sets side by side, once per new snapshot rather than once per stream.
    fn between(older: &ResourceSet, newer: &ResourceSet) -> Self {
        let mut changes = SetChanges {
            since_version: older.version.clone(),
            ..Default::default()
        };
        let mut old = older.resources.iter().peekable();
        for (name, resource) in &newer.resources {
            while let Some((gone, _)) = old.next_if(|(o, _)| *o < name) {
                changes.removed.push(gone.clone());
            }
            match old.next_if(|(o, _)| *o == name) {
                Some((_, before)) if before.version == resource.version => {}
                _ => changes.changed.push(name.clone()),
            }
        }
        changes.removed.extend(old.map(|(gone, _)| gone.clone()));
        changes
    }
}

impl PartialEq for ResourceSet {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version && self.resources == other.resources
    }
}

impl ResourceSet {
    /// The whole set as the repeated `resources` field (number 2) of a SotW
    /// `DiscoveryResponse`, in name order: encoded once, however many streams send it.
    pub fn encoded_as_response_field(&self) -> &Bytes {
        self.encoded_as_response_field.get_or_init(|| {
            let fields = self.resources.values().map(Resource::as_sotw_field);
            let mut buf = Vec::with_capacity(fields.clone().map(Bytes::len).sum());
            for field in fields {
                buf.extend_from_slice(field);
            }
            Bytes::from(buf)
        })
    }

    /// What changed since `older`, when this set replaced it in the cache; `None` when the
    /// set was made from another (the client is further behind) or the change is not known.
    pub fn changes_since(&self, older: &ResourceSet) -> Option<&SetChanges> {
        self.changes
            .as_ref()
            .filter(|changes| changes.since_version == older.version)
    }

    /// Whether `other` (a set of the same type) has the same names, whatever their versions.
    pub fn has_names_of(&self, other: &ResourceSet) -> bool {
        self.names_digest == other.names_digest
    }
}

/// An immutable, complete configuration for Envoy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    version: String,
    /// One set per type of [`type_url::ORDERED`], at its position there: every step of every
    /// xDS stream looks sets up, and by type URL that was a string comparison of 50-byte
    /// URLs with a 33-byte common prefix each time. Shared, so that a stream can hold
    /// "everything of this set" as a reference rather than a copy of a thousand names and
    /// versions.
    sets: [Arc<ResourceSet>; type_url::ORDERED.len()],
}

/// The position of `type_url` in [`type_url::ORDERED`], if it is a served type.
fn position_of(type_url: &str) -> Option<usize> {
    type_url::ORDERED
        .iter()
        .position(|served| *served == type_url)
}

impl Snapshot {
    /// Builds a snapshot from resources grouped by type URL; types absent are served empty.
    ///
    /// # Panics
    /// On a resource of a type not in [`type_url::ORDERED`]: translation makes no other.
    pub fn new(resources: impl IntoIterator<Item = (&'static str, Resource)>) -> Self {
        let mut sets: [ResourceSet; type_url::ORDERED.len()] = Default::default();
        for (type_url, resource) in resources {
            let position = position_of(type_url)
                .unwrap_or_else(|| panic!("{type_url} is not a type Tollgate serves"));
            sets[position]
                .resources
                .insert(resource.name.clone(), resource);
        }
        // The types in alphabetical order of their URLs (which `ORDERED` is), as when the sets
        // were a map by URL: the same resources keep the same version across releases.
        let mut whole = Sha256::new();
        for (type_url, set) in type_url::ORDERED.iter().zip(sets.iter_mut()) {
            let mut hasher = Sha256::new();
            let mut names = Sha256::new();
            for (name, resource) in &set.resources {
                hasher.update(name.as_bytes());
                hasher.update([0]);
                hasher.update(resource.version.as_bytes());
                hasher.update([0]);
                names.update(name.as_bytes());
                names.update([0]);
            }
            set.version = short_hash(hasher);
            set.names_digest.copy_from_slice(&names.finalize()[..16]);
            whole.update(type_url.as_bytes());
            whole.update(set.version.as_bytes());
        }
        Snapshot {
            version: short_hash(whole),
            sets: sets.map(Arc::new),
        }
    }

    /// Notes in each set what changed since `previous`'s, so that every stream whose client
    /// holds `previous` finds what to send without comparing whole sets.
    fn record_changes_since(&mut self, previous: &Snapshot) {
        for (set, older) in self.sets.iter_mut().zip(&previous.sets) {
            if older.version == set.version {
                continue;
            }
            let changes = SetChanges::between(older, set);
            if let Some(set) = Arc::get_mut(set) {
                set.changes = Some(changes);
            }
        }
    }

    /// The version of the whole snapshot: changes when any resource changes.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The resources of one type; an empty set for a type this snapshot does not serve.
    pub fn resources(&self, type_url: &str) -> &ResourceSet {
        self.resource_set(type_url)
    }

    /// The resources of one type as a shared set (an empty one for a type not served).
    pub fn resource_set(&self, type_url: &str) -> &Arc<ResourceSet> {
        static EMPTY: OnceLock<Arc<ResourceSet>> = OnceLock::new();
        match position_of(type_url) {
            Some(position) => &self.sets[position],
            None => EMPTY.get_or_init(Arc::default),
        }
    }

    /// The resources of the type at `position` in [`type_url::ORDERED`].
    ///
    /// # Panics
    /// If `position` is not one.
    pub(crate) fn set_at(&self, position: usize) -> &Arc<ResourceSet> {
        &self.sets[position]
    }
}

fn short_hash(hasher: Sha256) -> String {
    hex::encode(&hasher.finalize()[..8])
}

/// What every group of Envoys is served: one snapshot per number of Envoys sharing the local
/// rate limits' budgets, and how many Envoys each group has.
///
/// Local limits are the only part of the configuration that depends on who is connected: a
/// group of N Envoys gets each local bucket divided by N ([`crate::fleet`]). A configuration
/// without local limits, or a group of one, is served [`Served::whole`], the same bytes for
/// every node.
#[derive(Clone, Debug, Default)]
pub struct Served {
    /// For one Envoy alone, and for every node when budgets are not shared.
    whole: Arc<Snapshot>,
    /// By number of Envoys (two or more), for the group sizes in `group_sizes`.
    shared: BTreeMap<u32, Arc<Snapshot>>,
    /// Envoys per group (a node's `cluster` in its bootstrap), as counted for sharing.
    group_sizes: BTreeMap<String, u32>,
}

/// Equal when every group is served the same versions: content-hashed, so comparing them
/// is comparing content.
impl PartialEq for Served {
    fn eq(&self, other: &Self) -> bool {
        let versions = |served: &Served| {
            served
                .by_envoys()
                .map(|(envoys, snapshot)| (envoys, snapshot.version.clone()))
                .collect::<Vec<_>>()
        };
        self.group_sizes == other.group_sizes && versions(self) == versions(other)
    }
}

impl From<Snapshot> for Served {
    fn from(snapshot: Snapshot) -> Self {
        Served {
            whole: Arc::new(snapshot),
            ..Default::default()
        }
    }
}

impl Served {
    /// `whole`, and for each number of Envoys that `group_sizes` names, the snapshot that
    /// `shared` holds for it; a size without one is served `whole`.
    pub fn new(
        whole: Arc<Snapshot>,
        shared: BTreeMap<u32, Arc<Snapshot>>,
        group_sizes: BTreeMap<String, u32>,
    ) -> Self {
        Served {
            whole,
            shared,
            group_sizes,
        }
    }

    /// The snapshot with every budget whole: its version names the configuration.
    pub fn whole(&self) -> &Arc<Snapshot> {
        &self.whole
    }

    /// What a node of `group` is served.
    pub fn for_group(&self, group: &str) -> &Arc<Snapshot> {
        self.group_sizes
            .get(group)
            .and_then(|size| self.shared.get(size))
            .unwrap_or(&self.whole)
    }

    /// Envoys per group, as counted when this was made.
    pub fn group_sizes(&self) -> &BTreeMap<String, u32> {
        &self.group_sizes
    }

    /// The snapshots by number of Envoys sharing budgets, `whole` under 1.
    pub fn by_envoys(&self) -> impl Iterator<Item = (u32, &Arc<Snapshot>)> {
        std::iter::once((1, &self.whole)).chain(self.shared.iter().map(|(n, s)| (*n, s)))
    }
}

/// Holds what is being served; every xDS stream subscribes to it.
///
/// Listeners are selected per client type inside the one config; the only variation between
/// nodes is the share of local rate-limit budgets their group gets ([`Served`]).
#[derive(Debug)]
pub struct SnapshotCache {
    current: watch::Sender<Option<Arc<Served>>>,
}

impl Default for SnapshotCache {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotCache {
    pub fn new() -> Self {
        SnapshotCache {
            current: watch::channel(None).0,
        }
    }

    /// Installs `snapshot` for every node; returns false (and wakes nobody) when its version
    /// is already current.
    pub fn set(&self, snapshot: Snapshot) -> bool {
        self.set_served(Served::from(snapshot))
    }

    /// Installs `served`; returns false (and wakes nobody) when it serves every group what
    /// it already does.
    ///
    /// Each new snapshot notes what changed since the one it replaces (the same number of
    /// Envoys, or the whole one), found before taking the lock every stream reads under.
    /// Snapshots kept from the current `Served` (shared by `Arc`) are installed as they are.
    /// Only one task sets snapshots at a time; were another to race it, changes recorded
    /// against a set that is not the one replaced would go unused, as
    /// [`ResourceSet::changes_since`] checks the version they start from.
    pub fn set_served(&self, served: Served) -> bool {
        let previous = self.current.borrow().clone();
        if previous.as_deref() == Some(&served) {
            return false;
        }
        let served = match &previous {
            Some(previous) => with_changes_since(served, previous),
            None => served,
        };
        self.current.send_replace(Some(Arc::new(served)));
        true
    }

    /// The snapshot with every budget whole, if one has been set: its version is the
    /// configuration's.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.current.borrow().as_ref().map(|s| s.whole.clone())
    }

    /// Everything being served, if a configuration has been set.
    pub fn current_served(&self) -> Option<Arc<Served>> {
        self.current.borrow().clone()
    }

    /// A receiver that sees every later change; `None` until the first valid config loads.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Served>>> {
        self.current.subscribe()
    }
}

/// `served` with each snapshot new to it noting its changes since what `previous` served
/// for the same number of Envoys, or whole.
fn with_changes_since(served: Served, previous: &Served) -> Served {
    let replaced = |envoys: u32| {
        previous
            .shared
            .get(&envoys)
            .unwrap_or(&previous.whole)
            .as_ref()
    };
    let noted = |snapshot: Arc<Snapshot>, envoys: u32| {
        let older = replaced(envoys);
        if Arc::ptr_eq(
            &snapshot,
            previous.shared.get(&envoys).unwrap_or(&previous.whole),
        ) || older.version == snapshot.version
        {
            return snapshot;
        }
        match Arc::try_unwrap(snapshot) {
            Ok(mut snapshot) => {
                snapshot.record_changes_since(older);
                Arc::new(snapshot)
            }
            Err(shared) => shared,
        }
    };
    Served {
        whole: noted(served.whole, 1),
        shared: served
            .shared
            .into_iter()
            .map(|(envoys, snapshot)| (envoys, noted(snapshot, envoys)))
            .collect(),
        group_sizes: served.group_sizes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_proto::envoy::config::cluster::v3::Cluster;

    fn cluster(name: &str) -> (&'static str, Resource) {
        let c = Cluster {
            name: name.into(),
            ..Default::default()
        };
        (
            type_url::CLUSTER,
            Resource::new(name, type_url::CLUSTER, &c),
        )
    }

    #[test]
    fn served_types_are_in_the_alphabetical_order_of_their_urls() {
        // A snapshot's version hashes its sets in this order; it was the order of a map by
        // URL before, and versions must not change with the layout.
        assert!(type_url::ORDERED.is_sorted());
    }

    #[test]
    fn equal_content_gives_equal_versions() {
        let a = Snapshot::new([cluster("a"), cluster("b")]);
        let b = Snapshot::new([cluster("b"), cluster("a")]);
        assert_eq!(a.version(), b.version());
        assert_ne!(a.version(), Snapshot::new([cluster("a")]).version());
    }

    #[test]
    fn unchanged_types_keep_their_version() {
        let a = Snapshot::new([cluster("a")]);
        let b = Snapshot::new([cluster("b")]);
        assert_eq!(
            a.resources(type_url::LISTENER).version,
            b.resources(type_url::LISTENER).version
        );
        assert_ne!(
            a.resources(type_url::CLUSTER).version,
            b.resources(type_url::CLUSTER).version
        );
    }

    #[test]
    fn a_set_knows_what_changed_since_the_one_it_replaced() {
        let cache = SnapshotCache::new();
        let edited = |timeout: u32| {
            let c = Cluster {
                name: "b".into(),
                per_connection_buffer_limit_bytes: Some(
                    tollgate_proto::google::protobuf::UInt32Value { value: timeout },
                ),
                ..Default::default()
            };
            (type_url::CLUSTER, Resource::new("b", type_url::CLUSTER, &c))
        };
        cache.set(Snapshot::new([cluster("a"), edited(1), cluster("c")]));
        let first = cache.current().unwrap();
        cache.set(Snapshot::new([cluster("a"), edited(2), cluster("d")]));
        let second = cache.current().unwrap();
        let clusters = second.resources(type_url::CLUSTER);
        let changes = clusters
            .changes_since(first.resources(type_url::CLUSTER))
            .expect("changes since the replaced set");
        assert_eq!(changes.changed, ["b", "d"]);
        assert_eq!(changes.removed, ["c"]);
        assert!(clusters.changes_since(clusters).is_none());
    }

    #[test]
    fn a_group_is_served_the_snapshot_for_its_size_and_any_other_the_whole() {
        let whole = Arc::new(Snapshot::new([cluster("whole")]));
        let for_three = Arc::new(Snapshot::new([cluster("three")]));
        let served = Served::new(
            whole.clone(),
            BTreeMap::from([(3, for_three.clone())]),
            BTreeMap::from([("edge".to_string(), 3), ("alone".to_string(), 1)]),
        );
        assert_eq!(served.for_group("edge").version(), for_three.version());
        assert_eq!(served.for_group("alone").version(), whole.version());
        assert_eq!(
            served.for_group("unknown").version(),
            whole.version(),
            "a node not counted yet"
        );
    }

    #[test]
    fn a_snapshot_made_for_a_new_size_knows_what_changed_since_the_whole_one() {
        let cache = SnapshotCache::new();
        cache.set(Snapshot::new([cluster("a"), cluster("b")]));
        let whole = cache.current().expect("set");
        let for_two = Arc::new(Snapshot::new([cluster("a"), cluster("c")]));
        let sizes = BTreeMap::from([("edge".to_string(), 2)]);
        assert!(cache.set_served(Served::new(
            whole.clone(),
            BTreeMap::from([(2, for_two)]),
            sizes.clone(),
        )));
        let served = cache.current_served().expect("served");
        let clusters = served.for_group("edge").resources(type_url::CLUSTER);
        let changes = clusters
            .changes_since(whole.resources(type_url::CLUSTER))
            .expect("changes since the whole snapshot, which the group held");
        assert_eq!(changes.changed, ["c"]);
        assert_eq!(changes.removed, ["b"]);
        assert!(
            !cache.set_served(Served::new(
                whole,
                BTreeMap::from([(2, Arc::new(Snapshot::new([cluster("a"), cluster("c")])))]),
                sizes,
            )),
            "the same versions for the same groups wake nobody"
        );
    }

    #[test]
    fn setting_the_same_snapshot_twice_wakes_nobody() {
        let cache = SnapshotCache::new();
        assert!(cache.set(Snapshot::new([cluster("a")])));
        assert!(!cache.set(Snapshot::new([cluster("a")])));
        assert!(cache.set(Snapshot::new([cluster("b")])));
    }
}
