//! Incremental ADS (`DeltaAggregatedResources`): responses carry only the resources that changed
//! and the names of those removed, judged against what this stream's client is known to hold.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use tollgate_proto::envoy::config::core::v3::Node;
use tollgate_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use tollgate_proto::google::rpc::Status as RpcStatus;
use tracing::{debug, warn};

use crate::snapshot::{Resource, Snapshot};

use super::held::HeldVersions;
use super::nodes::{StreamRecords, TypeRecord};
use super::sequencing::{
    announced_version, changed_resources, find_resource, Answer, InFlight, NonceSource,
    PushedNames, RetainedResources, WILDCARD,
};
use super::served::ServedType;
use super::shared_response::DeltaResponse;
use super::stream::TransportVariant;

/// Which resources of a type the client tracks.
#[derive(Debug, Default)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
}

impl Subscription {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

#[derive(Debug, Default)]
struct TypeState {
    /// `None` until the client first asks for this type on this stream.
    subscription: Option<Subscription>,
    /// Resource name → version the client holds, as far as this stream knows: seeded from
    /// `initial_resource_versions` on a reconnect, updated as responses are pushed.
    client_versions: HeldVersions,
    /// Names the client just subscribed to: they must be answered even if the client seems to
    /// hold them already (xDS protocol, "Subscribing to Resources"), or announced as absent.
    must_answer: BTreeSet<String>,
    /// Nonce of the latest response of this type; only an answer carrying it is an ACK/NACK.
    latest_nonce: Option<String>,
    /// `system_version_info` of the latest response.
    latest_version: String,
    answer: Answer,
    record: TypeRecord,
}

/// What the client lacks for one type.
#[derive(Debug, Default)]
struct Diff<'a> {
    updated: Vec<&'a Resource>,
    removed: Vec<String>,
}

impl Diff<'_> {
    fn is_empty(&self) -> bool {
        self.updated.is_empty() && self.removed.is_empty()
    }
}

/// Compares what the client holds with what `target` (plus retained resources) offers for the
/// names it tracks; `None` when the client never asked for the type.
///
/// For a wildcard, every resource offered is compared as it is iterated, and only the names
/// offered nowhere (deleted, or subscribed but absent) are collected: this runs at each step
/// of every stream, against every cluster of the snapshot.
fn diff<'a>(
    target: &'a Snapshot,
    retained: Option<&'a RetainedResources>,
    served: ServedType,
    state: &TypeState,
) -> Option<Diff<'a>> {
    let subscription = state.subscription.as_ref()?;
    let mut diff = Diff::default();
    let mut compare = |name: &str, offered: Option<&'a Resource>| {
        let must_answer = state.must_answer.contains(name);
        match offered {
            Some(resource) => {
                let held = state.client_versions.get(name);
                if must_answer || held != Some(resource.version.as_str()) {
                    diff.updated.push(resource);
                }
            }
            // Deleted resources are named in `removed_resources` (xDS protocol, "Deleting
            // Resources"), as are subscribed names that do not exist.
            None if must_answer || state.client_versions.contains(name) => {
                diff.removed.push(name.to_string());
            }
            None => {}
        }
    };
    let offered_set = &served.set_in(target).resources;
    let retained_set = retained.and_then(|r| r.of(served));
    let is_offered = |name: &str| {
        offered_set.contains_key(name) || retained_set.is_some_and(|set| set.contains_key(name))
    };
    let mut others: BTreeSet<&str> = BTreeSet::new();
    let nothing_retained = retained_set.is_none_or(BTreeMap::is_empty);
    if subscription.wildcard
        && nothing_retained
        && state.must_answer.is_empty()
        && state.client_versions.is_exactly(served.set_in(target))
    {
        // In sync: what this stream checks after every request of every node.
        return Some(diff);
    }
    let changes = state
        .client_versions
        .base()
        .and_then(|base| served.set_in(target).changes_since(base));
    if let (true, Some(changes)) = (subscription.wildcard, changes) {
        // The client holds the set the target's replaced, apart from its exceptions: only
        // what changed between the two, the exceptions, the retained and the names owed an
        // answer can differ. This is every stream's first step after an edit.
        let candidates: BTreeSet<&str> = changes
            .changed
            .iter()
            .chain(&changes.removed)
            .chain(&state.must_answer)
            .map(String::as_str)
            .chain(state.client_versions.exception_names())
            .chain(
                retained_set
                    .into_iter()
                    .flat_map(|set| set.keys().map(String::as_str)),
            )
            .collect();
        for name in candidates {
            compare(name, find_resource(target, retained, served, name));
        }
        return Some(diff);
    }
    if subscription.wildcard {
        for resource in offered_set.values() {
            compare(&resource.name, Some(resource));
        }
        for resource in retained_set.into_iter().flat_map(|set| set.values()) {
            if !offered_set.contains_key(&resource.name) {
                compare(&resource.name, Some(resource));
            }
        }
    } else {
        others.extend(subscription.names.iter().map(String::as_str));
    }
    if subscription.wildcard {
        others.extend(
            state
                .client_versions
                .missing_from(served.set_in(target))
                .into_iter()
                .chain(state.must_answer.iter().map(String::as_str))
                .filter(|name| !is_offered(name)),
        );
    } else {
        others.extend(
            state
                .client_versions
                .names()
                .chain(state.must_answer.iter().map(String::as_str)),
        );
    }
    for name in others {
        compare(name, find_resource(target, retained, served, name));
    }
    // One order, by name, as the names were visited before.
    diff.updated.sort_by(|a, b| a.name.cmp(&b.name));
    diff.removed.sort();
    Some(diff)
}

/// One incremental ADS stream.
#[derive(Debug, Default)]
pub(crate) struct DeltaStream {
    target: Option<Arc<Snapshot>>,
    retained: RetainedResources,
    types: [TypeState; ServedType::ALL.len()],
    /// Pushes awaiting an ACK/NACK; see [`InFlight`] for the ordering it enforces.
    in_flight: InFlight,
    nonces: NonceSource,
    /// Empty answers owed to requests for types Tollgate does not serve.
    unserved_replies: VecDeque<DeltaResponse>,
}

impl DeltaStream {
    /// Drops the stale clusters and endpoints once every later type of the new snapshot is
    /// delivered and ACKed, so their `removed_resources` go out last (xDS protocol, "Eventual
    /// consistency considerations").
    fn release_retained_when_settled(&mut self) {
        let Some(target) = self.target.as_deref() else {
            return;
        };
        if self.retained.is_empty() {
            return;
        }
        for served in ServedType::ALL {
            let state = &self.types[served.index()];
            let Some(diff) = diff(target, Some(&self.retained), served, state) else {
                continue;
            };
            let settled = diff.is_empty()
                && match served {
                    ServedType::Cluster => true,
                    // A NACK keeps the node on listeners and routes that may still use the
                    // stale clusters, so they stay until a newer snapshot.
                    _ => matches!(state.answer, Answer::NothingSent | Answer::Acked),
                };
            if !settled {
                return;
            }
        }
        self.retained.clear();
    }

    /// Envoy re-warms a cluster whose settings change, and a warming EDS cluster waits for an
    /// EDS answer even when its endpoints did not change, for the whole initial fetch timeout
    /// (15 s) otherwise, holding back every later push (go-control-plane #245). The changed
    /// clusters' assignments must therefore be answered again, right after this CDS push.
    fn resend_endpoints_of_changed_clusters(&mut self, clusters: &[(String, String)]) {
        let held = &self.types[ServedType::Cluster.index()].client_versions;
        let pushed = clusters
            .iter()
            .map(|(name, version)| (name.as_str(), version.as_str()));
        let changed = changed_resources(held, pushed);
        let endpoints = &mut self.types[ServedType::Endpoint.index()];
        let Some(subscription) = &endpoints.subscription else {
            return;
        };
        for name in changed {
            if subscription.wants(&name) {
                endpoints.must_answer.insert(name);
            }
        }
    }

    fn record_answer(&mut self, served: ServedType, error: Option<&RpcStatus>, node: &str) {
        self.in_flight.answered(served);
        let state = &mut self.types[served.index()];
        // Only the first answer to a response counts; later requests repeating its nonce only
        // change the subscription.
        if state.answer != Answer::Pending {
            return;
        }
        let version = state.latest_version.clone();
        let short = served.short_name();
        match error {
            // The client keeps what it had; `client_versions` already counts the rejected
            // versions as sent, so they are not pushed again until they change.
            Some(error) => {
                warn!(node = %node, type = short, version = %version, error = %error.message, "nacked");
                state.answer = Answer::Nacked;
                state.record.nack = Some(error.message.clone());
                state.record.nack_version = Some(version);
            }
            None => {
                debug!(node = %node, type = short, version = %version, "acked");
                state.answer = Answer::Acked;
                state.record.acked_version = Some(version);
                state.record.nack = None;
                state.record.nack_version = None;
            }
        }
    }
}

impl TransportVariant for DeltaStream {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaResponse;

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn on_request(&mut self, request: DeltaDiscoveryRequest, node: &str) {
        let Some(served) = ServedType::from_url(&request.type_url) else {
            if request.response_nonce.is_empty() {
                debug!(node = %node, type_url = %request.type_url, "request for unserved type");
                let nonce = self.nonces.next_nonce();
                self.unserved_replies.push_back(
                    DeltaDiscoveryResponse {
                        type_url: request.type_url,
                        nonce,
                        ..Default::default()
                    }
                    .into(),
                );
            }
            return;
        };
        let state = &mut self.types[served.index()];
        let first = state.subscription.is_none();
        let subscription = state.subscription.get_or_insert_with(|| Subscription {
            // Legacy wildcard: a first LDS/CDS request naming nothing wants everything (xDS
            // protocol, "How the client specifies what resources to return").
            wildcard: served.allows_wildcard() && request.resource_names_subscribe.is_empty(),
            names: BTreeSet::new(),
        });
        if first {
            // xDS protocol, "Incremental xDS": a reconnecting client lists what it holds, so
            // that unchanged resources are not sent again.
            state.client_versions = request.initial_resource_versions.into_iter().collect();
        }
        for name in request.resource_names_subscribe {
            if name == WILDCARD {
                subscription.wildcard = true;
                continue;
            }
            if !(first && state.client_versions.contains(&name)) {
                state.must_answer.insert(name.clone());
            }
            subscription.names.insert(name);
        }
        for name in &request.resource_names_unsubscribe {
            if name == WILDCARD {
                subscription.wildcard = false;
            } else {
                subscription.names.remove(name);
            }
        }
        // The client forgets what it no longer tracks; nothing needs removing for those.
        if !subscription.wildcard {
            state
                .client_versions
                .retain(|name| subscription.wants(name));
        }
        state.must_answer.retain(|name| subscription.wants(name));
        state.record.subscribed = true;

        let nonce = request.response_nonce.as_str();
        if nonce.is_empty() {
            return;
        }
        if state.latest_nonce.as_deref() == Some(nonce) {
            self.record_answer(served, request.error_detail.as_ref(), node);
        } else {
            // A stale answer is not an ACK/NACK (xDS protocol, "Resource updates"); its
            // subscription changes were still applied above because, unlike SotW, incremental
            // requests are deltas the client will not repeat.
            debug!(node = %node, type = served.short_name(), nonce = %nonce, "stale nonce");
        }
    }

    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) {
        let previous = self.target.replace(Arc::clone(&snapshot));
        for served in [ServedType::Cluster, ServedType::Endpoint] {
            let gone = self.types[served.index()]
                .client_versions
                .missing_from(served.set_in(&snapshot));
            self.retained
                .on_new_snapshot(served, gone, previous.as_deref());
        }
    }

    fn next_response(&mut self, node: &str) -> Option<DeltaResponse> {
        if let Some(reply) = self.unserved_replies.pop_front() {
            return Some(reply);
        }
        let target = Arc::clone(self.target.as_ref()?);
        self.release_retained_when_settled();
        for served in ServedType::ALL {
            if !self.in_flight.may_push(served) {
                continue;
            }
            let state = &self.types[served.index()];
            let Some(diff) = diff(&target, Some(&self.retained), served, state) else {
                continue;
            };
            if diff.is_empty() {
                continue;
            }
            // Against what the client applied, so names of a NACKed push do not count as held.
            let names = if matches!(state.answer, Answer::Acked | Answer::NothingSent)
                && diff
                    .updated
                    .iter()
                    .all(|resource| state.client_versions.contains(&resource.name))
            {
                PushedNames::OnlyHeld
            } else {
                PushedNames::SomeNew
            };
            let version = announced_version(&target, Some(&self.retained), served).into_owned();
            let shared: Vec<_> = diff
                .updated
                .iter()
                .map(|resource| resource.as_delta_field().clone())
                .collect();
            let wildcard = self.types[served.index()]
                .subscription
                .as_ref()
                .is_some_and(|s| s.wildcard);
            let tracks_endpoints = self.types[ServedType::Endpoint.index()]
                .subscription
                .is_some();
            // The names and versions pushed, where the bookkeeping below needs them: a first
            // push to a wildcard client is every resource, and its copy of every name and
            // version would be garbage at once.
            let resources: Vec<(String, String)> =
                if !wildcard || (served == ServedType::Cluster && tracks_endpoints) {
                    diff.updated
                        .iter()
                        .map(|resource| (resource.name.clone(), resource.version.clone()))
                        .collect()
                } else {
                    Vec::new()
                };
            let removed = diff.removed;
            let nonce = self.nonces.next_nonce();

            if served == ServedType::Cluster {
                self.resend_endpoints_of_changed_clusters(&resources);
            }
            let retained = &self.retained;
            let state = &mut self.types[served.index()];
            if wildcard {
                // A wildcard client now holds exactly what is offered: the target's set by
                // reference, and the retained resources.
                let mut held = HeldVersions::whole(served.set_in(&target));
                for resource in retained.of(served).into_iter().flat_map(|set| set.values()) {
                    held.insert(&resource.name, &resource.version);
                }
                state.client_versions = held;
            } else {
                for (name, version) in &resources {
                    state.client_versions.insert(name, version);
                }
                for name in &removed {
                    state.client_versions.remove(name);
                }
            }
            state.must_answer.clear();
            state.latest_nonce = Some(nonce.clone());
            state.latest_version = version.clone();
            state.answer = Answer::Pending;
            self.in_flight.push(served, names);
            debug!(
                node = %node,
                type = served.short_name(),
                version = %version,
                nonce = %nonce,
                resources = shared.len(),
                removed = removed.len(),
                "pushing"
            );
            return Some(DeltaResponse {
                head: DeltaDiscoveryResponse {
                    system_version_info: version,
                    type_url: served.url().to_string(),
                    removed_resources: removed,
                    nonce,
                    ..Default::default()
                },
                shared,
            });
        }
        None
    }

    fn write_records(&self, records: &mut StreamRecords) -> bool {
        let mut changed = false;
        for served in ServedType::ALL {
            let state = &self.types[served.index()];
            // In sync when nothing is left to send against the snapshot without stale
            // clusters and the last push (if any) was accepted.
            let in_sync = self.target.as_deref().filter(|target| {
                let accepted = matches!(state.answer, Answer::NothingSent | Answer::Acked);
                accepted && diff(target, None, served, state).is_some_and(|diff| diff.is_empty())
            });
            let acked_version = match in_sync {
                Some(target) => Some(served.set_in(target).version.as_str()),
                None => state.record.acked_version.as_deref(),
            };
            changed |= records.get_mut(served).show(&state.record, acked_version);
        }
        changed
    }
}
