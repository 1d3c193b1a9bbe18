//! Bookkeeping both xDS variants share: nonces, the answer to a pushed response, and the stale
//! clusters and endpoints kept alive while a new snapshot rolls out (make-before-break).

use std::borrow::Cow;
use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::snapshot::{Resource, Snapshot};

use super::held::HeldVersions;
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

/// The pushes on one stream that await an ACK/NACK.
///
/// Envoy applies each response before answering it, so holding back the later types until a
/// push is answered is what makes CDS → EDS → LDS → RDS hold on the client (xDS protocol,
/// "Aggregated Discovery Service"): a route naming a new cluster must not arrive before the
/// cluster. A push that names nothing the client lacked cannot leave a later type pointing at
/// something missing, since Envoy keeps serving the old version of a changed cluster or
/// listener until the new one has warmed; so the later types follow it at once, still in
/// order and usually in the same write. That is an ordinary edit's CDS (one cluster's
/// settings), and it halves the edit's round trips and writes per node.
///
/// One more exception: Envoy does not answer a CDS response until every new cluster has
/// warmed, and a cluster warms only when its EDS answer arrives (xDS protocol, "Eventual
/// consistency considerations"; Envoy keeps such a cluster warming until then). So endpoints
/// may pass an unanswered CDS push, or the CDS ACK would wait out Envoy's initial fetch
/// timeout (15 s).
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    pending: [Option<PushedNames>; ServedType::ALL.len()],
}

/// What an unanswered push named, against what the client held before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PushedNames {
    /// Some name the client did not hold, or it could not be told cheaply: later types wait.
    SomeNew,
    /// Only names the client held, at other versions or fewer of them: later types follow.
    OnlyHeld,
}

impl InFlight {
    pub fn push(&mut self, served: ServedType, names: PushedNames) {
        self.pending[served.index()] = Some(names);
    }

    pub fn answered(&mut self, served: ServedType) {
        self.pending[served.index()] = None;
    }

    /// Whether a response of `served` may go out now.
    pub fn may_push(&self, served: ServedType) -> bool {
        ServedType::ALL
            .into_iter()
            .take_while(|earlier| *earlier != served)
            .all(|earlier| match self.pending[earlier.index()] {
                None | Some(PushedNames::OnlyHeld) => true,
                Some(PushedNames::SomeNew) => {
                    earlier == ServedType::Cluster && served == ServedType::Endpoint
                }
            })
            && self.pending[served.index()].is_none()
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

/// Clusters and endpoint assignments the client still holds but the newest snapshot dropped.
///
/// xDS protocol, "Eventual consistency considerations": stale CDS clusters and their EDS
/// endpoints may only be removed after the listeners and routes that stopped referring to them
/// are in place, so they are still served until EDS, LDS and RDS of the new snapshot were ACKed.
#[derive(Debug, Default)]
pub(crate) struct RetainedResources {
    clusters: BTreeMap<String, Resource>,
    endpoints: BTreeMap<String, Resource>,
}

impl RetainedResources {
    /// Recomputes the stale set of `served` when a new snapshot replaces `previous`: `gone`
    /// names what the client has (or is being sent) that the new snapshot lacks; each is kept
    /// with the newest body known.
    pub fn on_new_snapshot<'a>(
        &mut self,
        served: ServedType,
        gone: impl IntoIterator<Item = &'a str>,
        previous: Option<&Snapshot>,
    ) {
        let Some(retained) = self.map_mut(served) else {
            return;
        };
        let previous_set = previous.map(|p| &served.set_in(p).resources);
        let mut kept = BTreeMap::new();
        for name in gone {
            let body = previous_set
                .and_then(|set| set.get(name))
                .or_else(|| retained.get(name));
            if let Some(body) = body {
                kept.insert(name.to_string(), body.clone());
            }
        }
        *retained = kept;
    }

    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty() && self.endpoints.is_empty()
    }

    pub fn clear(&mut self) {
        self.clusters.clear();
        self.endpoints.clear();
    }

    /// The retained resources of one type (only clusters and endpoints are ever retained).
    pub fn of(&self, served: ServedType) -> Option<&BTreeMap<String, Resource>> {
        match served {
            ServedType::Cluster => Some(&self.clusters),
            ServedType::Endpoint => Some(&self.endpoints),
            ServedType::Listener | ServedType::Route | ServedType::Secret => None,
        }
    }

    fn map_mut(&mut self, served: ServedType) -> Option<&mut BTreeMap<String, Resource>> {
        match served {
            ServedType::Cluster => Some(&mut self.clusters),
            ServedType::Endpoint => Some(&mut self.endpoints),
            ServedType::Listener | ServedType::Route | ServedType::Secret => None,
        }
    }
}

/// Looks a resource up in the target snapshot, then among retained ones.
pub(crate) fn find_resource<'a>(
    target: &'a Snapshot,
    retained: Option<&'a RetainedResources>,
    served: ServedType,
    name: &str,
) -> Option<&'a Resource> {
    served.set_in(target).resources.get(name).or_else(|| {
        retained
            .and_then(|r| r.of(served))
            .and_then(|set| set.get(name))
    })
}

/// The version a type is announced at: the snapshot's, or a distinct one while stale resources
/// are still included, so an ACK of that never counts as holding the snapshot's version.
pub(crate) fn announced_version<'a>(
    target: &'a Snapshot,
    retained: Option<&RetainedResources>,
    served: ServedType,
) -> Cow<'a, str> {
    let version = &served.set_in(target).version;
    let Some(set) = retained
        .and_then(|r| r.of(served))
        .filter(|set| !set.is_empty())
    else {
        return Cow::Borrowed(version);
    };
    let mut hasher = Sha256::new();
    hasher.update(version.as_bytes());
    for (name, resource) in set {
        hasher.update([0]);
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(resource.version.as_bytes());
    }
    let digest = hasher.finalize();
    Cow::Owned(format!("{version}+{}", hex::encode(&digest[..4])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::type_url;
    use tollgate_proto::envoy::config::cluster::v3::Cluster;

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
        let mut retained = RetainedResources::default();
        retained.on_new_snapshot(ServedType::Cluster, ["b"], Some(&old));
        assert_eq!(
            retained
                .of(ServedType::Cluster)
                .map(|set| set.keys().map(String::as_str).collect::<Vec<_>>()),
            Some(vec!["b"])
        );
        assert!(find_resource(&new, Some(&retained), ServedType::Cluster, "b").is_some());
        assert_ne!(
            announced_version(&new, Some(&retained), ServedType::Cluster),
            new.resources(type_url::CLUSTER).version
        );
    }

    #[test]
    fn nonces_are_never_repeated_on_a_stream() {
        let mut nonces = NonceSource::default();
        assert_ne!(nonces.next_nonce(), nonces.next_nonce());
    }
}

#[cfg(test)]
mod in_flight_tests {
    use super::*;

    #[test]
    fn endpoints_may_pass_an_unanswered_cluster_push_but_nothing_else_may() {
        let mut in_flight = InFlight::default();
        in_flight.push(ServedType::Cluster, PushedNames::SomeNew);
        assert!(in_flight.may_push(ServedType::Endpoint));
        assert!(!in_flight.may_push(ServedType::Cluster));
        assert!(!in_flight.may_push(ServedType::Listener));
        assert!(!in_flight.may_push(ServedType::Route));
        in_flight.push(ServedType::Endpoint, PushedNames::SomeNew);
        assert!(!in_flight.may_push(ServedType::Endpoint));
        in_flight.answered(ServedType::Cluster);
        assert!(
            !in_flight.may_push(ServedType::Listener),
            "EDS still unanswered"
        );
        in_flight.answered(ServedType::Endpoint);
        assert!(in_flight.may_push(ServedType::Listener));
    }

    #[test]
    fn a_later_type_never_passes_an_earlier_unanswered_push_of_new_names() {
        let mut in_flight = InFlight::default();
        in_flight.push(ServedType::Listener, PushedNames::SomeNew);
        assert!(
            in_flight.may_push(ServedType::Cluster),
            "earlier types are not held back"
        );
        assert!(!in_flight.may_push(ServedType::Route));
    }

    #[test]
    fn later_types_follow_a_push_of_held_names_but_its_own_type_waits_for_the_answer() {
        let mut in_flight = InFlight::default();
        in_flight.push(ServedType::Cluster, PushedNames::OnlyHeld);
        assert!(in_flight.may_push(ServedType::Endpoint));
        assert!(in_flight.may_push(ServedType::Listener));
        assert!(in_flight.may_push(ServedType::Route));
        assert!(!in_flight.may_push(ServedType::Cluster));
        // A push of new names further along still holds back what comes after it.
        in_flight.push(ServedType::Listener, PushedNames::SomeNew);
        assert!(!in_flight.may_push(ServedType::Route));
        in_flight.answered(ServedType::Listener);
        assert!(in_flight.may_push(ServedType::Route));
    }
}

/// Names held at one version and now pushed at another: resources changed in place.
pub(crate) fn changed_resources<'a>(
    held: &HeldVersions,
    pushed: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<String> {
    pushed
        .into_iter()
        .filter(|(name, version)| held.get(name).is_some_and(|old| old != *version))
        .map(|(name, _)| name.to_string())
        .collect()
}
