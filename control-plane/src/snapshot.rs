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
    /// Shared, so that a stream can hold "everything of this set" as a reference rather than
    /// a copy of a thousand names and versions.
    sets: BTreeMap<&'static str, Arc<ResourceSet>>,
}

impl Snapshot {
    /// Builds a snapshot from resources grouped by type URL; types absent are served empty.
    pub fn new(resources: impl IntoIterator<Item = (&'static str, Resource)>) -> Self {
        let mut sets: BTreeMap<&'static str, ResourceSet> = type_url::ORDERED
            .iter()
            .map(|t| (*t, ResourceSet::default()))
            .collect();
        for (type_url, resource) in resources {
            sets.entry(type_url)
                .or_default()
                .resources
                .insert(resource.name.clone(), resource);
        }
        let mut whole = Sha256::new();
        for (type_url, set) in sets.iter_mut() {
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
            sets: sets
                .into_iter()
                .map(|(type_url, set)| (type_url, Arc::new(set)))
                .collect(),
        }
    }

    /// Notes in each set what changed since `previous`'s, so that every stream whose client
    /// holds `previous` finds what to send without comparing whole sets.
    fn record_changes_since(&mut self, previous: &Snapshot) {
        for (type_url, set) in self.sets.iter_mut() {
            let older = previous.resources(type_url);
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
        self.sets
            .get(type_url)
            .unwrap_or_else(|| EMPTY.get_or_init(Arc::default))
    }
}

fn short_hash(hasher: Sha256) -> String {
    hex::encode(&hasher.finalize()[..8])
}

/// Holds the current snapshot; every xDS stream subscribes to it.
///
/// One snapshot serves every node: Tollgate's config has no per-node variation, and listeners
/// are selected per client type inside the one config.
#[derive(Debug)]
pub struct SnapshotCache {
    current: watch::Sender<Option<Arc<Snapshot>>>,
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

    /// Installs `snapshot`; returns false (and wakes nobody) when its version is already current.
    ///
    /// The changes since the current snapshot are found before taking the lock every stream
    /// reads under. Only the reload task sets snapshots; were another to race it, changes
    /// recorded against a set that is not the one replaced would go unused, as
    /// [`ResourceSet::changes_since`] checks the version they start from.
    pub fn set(&self, mut snapshot: Snapshot) -> bool {
        let previous = self.current();
        if previous.as_ref().map(|s| s.version()) == Some(snapshot.version()) {
            return false;
        }
        if let Some(previous) = &previous {
            snapshot.record_changes_since(previous);
        }
        self.current.send_replace(Some(Arc::new(snapshot)));
        true
    }

    /// The snapshot being served, if one has been set.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.current.borrow().clone()
    }

    /// A receiver that sees every later snapshot; `None` until the first valid config loads.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.current.subscribe()
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
    fn setting_the_same_snapshot_twice_wakes_nobody() {
        let cache = SnapshotCache::new();
        assert!(cache.set(Snapshot::new([cluster("a")])));
        assert!(!cache.set(Snapshot::new([cluster("a")])));
        assert!(cache.set(Snapshot::new([cluster("b")])));
    }
}
