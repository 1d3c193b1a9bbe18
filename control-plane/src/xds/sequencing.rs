//! Bookkeeping both xDS variants share: nonces, the answer to a pushed response, and the stale
//! clusters kept alive while a new snapshot rolls out (make-before-break).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::snapshot::{Resource, Snapshot};

use super::served::ServedType;

/// The explicit wildcard resource name (xDS protocol, "How the client specifies what resources
/// to return").
pub(crate) const WILDCARD: &str = "*";

/// Fresh nonces for one stream. A nonce only needs to be unique on its stream: it pairs an
/// ACK/NACK with the response it answers (xDS protocol, "Resource updates").
#[derive(Debug, Default)]
pub(crate) struct NonceSource {
    last: u64,
}

impl NonceSource {
    pub fn next_nonce(&mut self) -> String {
        self.last += 1;
        self.last.to_string()
    }
}

/// What the client made of the latest response of one type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Nothing of this type was pushed on this stream yet.
    #[default]
    NothingSent,
    /// Pushed; neither ACK nor NACK arrived yet.
    Pending,
    Acked,
    Nacked,
}

/// The response a stream is waiting on. Only one is outstanding at a time: Envoy applies and
/// ACKs each response before the next type is pushed, which is what makes the order
/// CDS → EDS → LDS → RDS hold on the client (xDS protocol, "Aggregated Discovery Service").
#[derive(Debug)]
pub(crate) struct InFlight {
    pub served: ServedType,
    pub nonce: String,
}

/// Clusters the client still holds but the newest snapshot dropped.
///
/// xDS protocol, "Eventual consistency considerations": stale clusters may only be removed after
/// the listeners and routes that stopped referring to them are in place, so they are still
/// served until EDS, LDS and RDS of the new snapshot were ACKed.
#[derive(Debug, Default)]
pub(crate) struct RetainedClusters {
    resources: BTreeMap<String, Resource>,
}

impl RetainedClusters {
    /// Recomputes the stale set when `next` replaces `previous`: every cluster in `held` (what
    /// the client has or is being sent) that `next` lacks is kept, with the newest body known.
    pub fn on_new_snapshot<'a>(
        &mut self,
        held: impl IntoIterator<Item = &'a String>,
        previous: Option<&Snapshot>,
        next: &Snapshot,
    ) {
        let next_clusters = &next.resources(ServedType::Cluster.url()).resources;
        let previous_clusters = previous.map(|p| &p.resources(ServedType::Cluster.url()).resources);
        let mut kept = BTreeMap::new();
        for name in held {
            if next_clusters.contains_key(name) {
                continue;
            }
            let body = previous_clusters
                .and_then(|clusters| clusters.get(name))
                .or_else(|| self.resources.get(name));
            if let Some(body) = body {
                kept.insert(name.clone(), body.clone());
            }
        }
        self.resources = kept;
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    pub fn clear(&mut self) {
        self.resources.clear();
    }

    pub fn get(&self, name: &str) -> Option<&Resource> {
        self.resources.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.resources.keys()
    }

    /// The CDS version announced while stale clusters are still served: distinct from the
    /// snapshot's own CDS version, so an ACK of it never counts as being in sync.
    pub fn version_with(&self, snapshot_version: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(snapshot_version.as_bytes());
        for (name, resource) in &self.resources {
            hasher.update([0]);
            hasher.update(name.as_bytes());
            hasher.update([0]);
            hasher.update(resource.version.as_bytes());
        }
        let digest = hasher.finalize();
        format!("{snapshot_version}+{}", hex::encode(&digest[..4]))
    }
}

/// Looks a resource up in the target snapshot, then among retained clusters.
pub(crate) fn find_resource<'a>(
    target: &'a Snapshot,
    retained: Option<&'a RetainedClusters>,
    served: ServedType,
    name: &str,
) -> Option<&'a Resource> {
    target
        .resources(served.url())
        .resources
        .get(name)
        .or_else(|| match served {
            ServedType::Cluster => retained.and_then(|r| r.get(name)),
            _ => None,
        })
}

/// The version a type is announced at: the snapshot's, or a distinct one while stale clusters
/// are still included.
pub(crate) fn announced_version(
    target: &Snapshot,
    retained: Option<&RetainedClusters>,
    served: ServedType,
) -> String {
    let version = &target.resources(served.url()).version;
    match retained {
        Some(retained) if served == ServedType::Cluster && !retained.is_empty() => {
            retained.version_with(version)
        }
        _ => version.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::type_url;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    fn clusters(names: &[&str]) -> Snapshot {
        Snapshot::new(names.iter().map(|name| {
            let cluster = Cluster {
                name: name.to_string(),
                ..Default::default()
            };
            (
                type_url::CLUSTER,
                Resource::new(*name, type_url::CLUSTER, &cluster),
            )
        }))
    }

    #[test]
    fn clusters_dropped_by_the_new_snapshot_are_retained_with_their_bodies() {
        let old = clusters(&["a", "b"]);
        let new = clusters(&["a"]);
        let held = ["a".to_string(), "b".to_string()];
        let mut retained = RetainedClusters::default();
        retained.on_new_snapshot(&held, Some(&old), &new);
        assert_eq!(retained.names().collect::<Vec<_>>(), ["b"]);
        assert!(find_resource(&new, Some(&retained), ServedType::Cluster, "b").is_some());
        assert_ne!(
            announced_version(&new, Some(&retained), ServedType::Cluster),
            new.resources(type_url::CLUSTER).version
        );

        // A cluster that comes back is served from the snapshot again, not retained.
        retained.on_new_snapshot(&held, Some(&new), &old);
        assert!(retained.is_empty());
    }

    #[test]
    fn nonces_are_never_repeated_on_a_stream() {
        let mut nonces = NonceSource::default();
        assert_ne!(nonces.next_nonce(), nonces.next_nonce());
    }
}
