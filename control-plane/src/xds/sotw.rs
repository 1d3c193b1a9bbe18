//! State-of-the-World ADS (`StreamAggregatedResources`): every response carries the complete
//! set of requested resources of one type at one version.

use std::borrow::Cow;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use tollgate_proto::envoy::config::core::v3::Node;
use tollgate_proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tracing::{debug, warn};

use crate::snapshot::{Resource, Snapshot};

use super::held::HeldVersions;
use super::nodes::{StreamRecords, TypeRecord};
use super::sequencing::{
    announced_version, changed_resources, find_resource, Answer, InFlight, NonceSource,
    PushedNames, RetainedResources, WILDCARD,
};
use super::served::ServedType;
use super::shared_response::SotwResponse;
use super::stream::TransportVariant;

/// Which resources of a type the client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Subscription {
    Wildcard,
    Named(BTreeSet<String>),
}

impl Subscription {
    fn from_request(served: ServedType, names: &[String]) -> Self {
        // Envoy always subscribes to LDS and CDS with no names (wildcard); "*" asks for
        // wildcard explicitly (xDS protocol, "How the client specifies what resources to
        // return").
        if names.iter().any(|name| name == WILDCARD)
            || (names.is_empty() && served.allows_wildcard())
        {
            Subscription::Wildcard
        } else {
            Subscription::Named(names.iter().cloned().collect())
        }
    }
}

/// What the client holds of one type, by this stream's account.
#[derive(Clone, Debug)]
struct Held {
    /// The subscription answered so far: names added to it must be answered even if nothing
    /// changed (xDS protocol, "How the client specifies what resources to return"; Envoy keeps
    /// a cluster warming until EDS answers for it).
    answered: Subscription,
    resources: HeldVersions,
    /// `version_info` of the response that brought them.
    version: String,
}

/// The response the client should have for one type, borrowed from the stream's state and
/// target: every step of every stream asks whether one is due, and a fleet of ten thousand
/// nodes made that an allocation of names and versions per type per step.
struct Desired<'a> {
    served: ServedType,
    subscription: &'a Subscription,
    target: &'a Snapshot,
    retained: Option<&'a RetainedResources>,
    version: Cow<'a, str>,
}

impl<'a> Desired<'a> {
    /// The requested resources that exist, for a named subscription. A wildcard's are listed
    /// only when a response is built ([`Desired::into_held`]): its version already names
    /// them all.
    fn named(&self) -> Option<impl Iterator<Item = &'a Resource> + 'a> {
        let Subscription::Named(names) = self.subscription else {
            return None;
        };
        let (target, retained, served) = (self.target, self.retained, self.served);
        Some(
            names
                .iter()
                .filter_map(move |name| find_resource(target, retained, served, name)),
        )
    }

    /// What the client holds once it has this: the subscription answered, the version, and
    /// every resource's version (for a wildcard, the target's whole set by reference plus the
    /// retained resources sent with it).
    fn into_held(self) -> Held {
        let resources = match self.named() {
            Some(named) => named
                .map(|resource| (resource.name.clone(), resource.version.clone()))
                .collect(),
            None => {
                let mut versions = HeldVersions::whole(self.served.set_in(self.target));
                for resource in self
                    .retained
                    .and_then(|retained| retained.of(self.served))
                    .into_iter()
                    .flat_map(|set| set.values())
                {
                    versions.insert(&resource.name, &resource.version);
                }
                versions
            }
        };
        Held {
            answered: self.subscription.clone(),
            resources,
            version: self.version.into_owned(),
        }
    }

    /// Whether a response is due for a client holding `held`. For LDS/CDS every response is
    /// the whole set, so any difference counts; for EDS/RDS a resource left out of a response
    /// is not removed on the client (xDS protocol, "Deleting Resources"), so only new or
    /// changed resources and newly requested names do.
    fn is_due(&self, held: Option<&Held>) -> bool {
        let Some(held) = held else {
            return true;
        };
        match self.subscription {
            // A wildcard's version is a hash of every (name, version) it holds, stale clusters
            // included (`announced_version`): equal versions, equal resources.
            Subscription::Wildcard => {
                held.answered != *self.subscription || held.version != self.version
            }
            Subscription::Named(names) => {
                let newly_requested = match &held.answered {
                    Subscription::Wildcard => false,
                    Subscription::Named(answered) => !names.is_subset(answered),
                };
                newly_requested
                    || self.named().into_iter().flatten().any(|resource| {
                        held.resources.get(&resource.name) != Some(resource.version.as_str())
                    })
            }
        }
    }
}

#[derive(Debug, Default)]
struct TypeState {
    /// `None` until the client first asks for this type on this stream.
    subscription: Option<Subscription>,
    /// `version_info` of the first request on this stream: a reconnecting client names what it
    /// already holds.
    reconnect_version: Option<String>,
    /// Nonce of the latest response of this type; requests carrying an older one are stale.
    latest_nonce: Option<String>,
    /// Set by the latest response (or by what a reconnecting client announced holding).
    held: Option<Held>,
    answer: Answer,
    record: TypeRecord,
}

/// One SotW ADS stream.
#[derive(Debug, Default)]
pub(crate) struct SotwStream {
    target: Option<Arc<Snapshot>>,
    retained: RetainedResources,
    types: [TypeState; ServedType::ALL.len()],
    /// Pushes awaiting an ACK/NACK; see [`InFlight`] for the ordering it enforces.
    in_flight: InFlight,
    nonces: NonceSource,
    /// Empty answers owed to requests for types Tollgate does not serve.
    unserved_replies: VecDeque<SotwResponse>,
}

impl SotwStream {
    fn state(&self, served: ServedType) -> &TypeState {
        &self.types[served.index()]
    }

    fn state_mut(&mut self, served: ServedType) -> &mut TypeState {
        &mut self.types[served.index()]
    }

    /// The response the client should have for `served`, or `None` when it asked for nothing
    /// (no request yet, or an empty list of names) or no snapshot exists yet.
    fn desired<'a>(
        &'a self,
        served: ServedType,
        retained: Option<&'a RetainedResources>,
    ) -> Option<Desired<'a>> {
        let target = self.target.as_deref()?;
        let subscription = self.state(served).subscription.as_ref()?;
        // An empty list of names means "no longer interested"; Envoy does not ACK an empty
        // answer to it, so none is sent.
        if matches!(subscription, Subscription::Named(names) if names.is_empty()) {
            return None;
        }
        Some(Desired {
            served,
            subscription,
            target,
            retained,
            version: announced_version(target, retained, served),
        })
    }

    /// A reconnecting client that already holds the current version needs no resend (xDS
    /// protocol, "Basic Protocol Overview": the server sends what changed since the version the
    /// client indicated).
    fn accept_reconnect_versions(&mut self) {
        for served in ServedType::ALL {
            let Some(announced) = self.state_mut(served).reconnect_version.take() else {
                continue;
            };
            let Some(desired) = self.desired(served, Some(&self.retained)) else {
                continue;
            };
            if self.state(served).held.is_some() || desired.version != announced {
                continue;
            }
            let held = desired.into_held();
            let state = self.state_mut(served);
            state.record.acked_version = Some(held.version.clone());
            state.held = Some(held);
            state.answer = Answer::Acked;
        }
    }

    /// Drops the stale clusters and endpoints once every later type of the new snapshot is
    /// ACKed, so the final CDS without them goes out last (xDS protocol, "Eventual consistency
    /// considerations": stale CDS clusters and related EDS endpoints can then be removed).
    fn release_retained_when_settled(&mut self) {
        if self.retained.is_empty() {
            return;
        }
        for served in ServedType::ALL {
            let Some(desired) = self.desired(served, Some(&self.retained)) else {
                continue;
            };
            let state = self.state(served);
            let delivered = !desired.is_due(state.held.as_ref());
            let settled = match served {
                // The CDS that still carries the stale clusters only has to be out.
                ServedType::Cluster => delivered,
                // A NACK keeps the node on listeners and routes that may still use the stale
                // clusters, so they stay until a newer snapshot.
                _ => delivered && state.answer == Answer::Acked,
            };
            if !settled {
                return;
            }
        }
        self.retained.clear();
    }

    /// Pushes what the client will then hold.
    fn respond(&mut self, served: ServedType, held: Held) -> SotwResponse {
        let nonce = self.nonces.next_nonce();
        let mut response = SotwResponse::from(DiscoveryResponse {
            version_info: held.version.clone(),
            type_url: served.url().to_string(),
            nonce: nonce.clone(),
            ..Default::default()
        });
        if let Some(target) = self.target.as_deref() {
            let set = served.set_in(target);
            if held.resources.is_exactly(set) {
                // The common case, every node's CDS and LDS: one chunk for the whole set.
                response.shared = vec![set.encoded_as_response_field().clone()];
            } else {
                let retained = Some(&self.retained);
                response.shared = held
                    .resources
                    .resources(|name| find_resource(target, retained, served, name))
                    .map(|resource| resource.as_sotw_field().clone())
                    .collect();
            }
        }
        if served == ServedType::Cluster {
            self.resend_endpoints_of_changed_clusters(&held.resources);
        }
        let state = self.state_mut(served);
        // What the client applied, so a NACKed push does not count as held.
        let names = match &state.held {
            Some(before)
                if state.answer == Answer::Acked
                    && held.resources.names_surely_within(&before.resources) =>
            {
                PushedNames::OnlyHeld
            }
            _ => PushedNames::SomeNew,
        };
        state.latest_nonce = Some(nonce.clone());
        state.held = Some(held);
        state.answer = Answer::Pending;
        self.in_flight.push(served, names);
        response
    }

    /// Envoy re-warms a cluster whose settings change, and a warming EDS cluster waits for an
    /// EDS answer even when its endpoints did not change, for the whole initial fetch timeout
    /// (15 s) otherwise, holding back every later push (go-control-plane #245). Forgetting
    /// that the client holds those assignments makes them due, right after this CDS push.
    fn resend_endpoints_of_changed_clusters(&mut self, clusters: &HeldVersions) {
        let holds_endpoints = self
            .state(ServedType::Endpoint)
            .held
            .as_ref()
            .is_some_and(|endpoints| endpoints.resources.names().next().is_some());
        let Some(held_clusters) = &self.state(ServedType::Cluster).held else {
            return;
        };
        if !holds_endpoints {
            return;
        }
        let pushed = clusters
            .names()
            .filter_map(|name| clusters.get(name).map(|version| (name, version)));
        let changed = changed_resources(&held_clusters.resources, pushed);
        if let Some(endpoints) = &mut self.state_mut(ServedType::Endpoint).held {
            for name in &changed {
                endpoints.resources.remove(name);
            }
        }
    }

    fn record_answer(&mut self, served: ServedType, request: &DiscoveryRequest, node: &str) {
        self.in_flight.answered(served);
        let state = self.state_mut(served);
        // Only the first answer to a response counts; Envoy repeats the nonce on later
        // requests that only change the subscription.
        if state.answer != Answer::Pending {
            return;
        }
        let sent_version = state
            .held
            .as_ref()
            .map(|held| held.version.clone())
            .unwrap_or_default();
        let short = served.short_name();
        match &request.error_detail {
            // xDS protocol, "ACK and NACK semantics summary": only a NACK has error_detail.
            Some(error) => {
                warn!(node = %node, type = short, version = %sent_version, error = %error.message, "nacked");
                state.answer = Answer::Nacked;
                state.record.nack = Some(error.message.clone());
                state.record.nack_version = Some(sent_version);
            }
            None => {
                debug!(node = %node, type = short, version = %sent_version, "acked");
                state.answer = Answer::Acked;
                state.record.acked_version = Some(sent_version);
                state.record.nack = None;
                state.record.nack_version = None;
            }
        }
    }
}

impl TransportVariant for SotwStream {
    type Request = DiscoveryRequest;
    type Response = SotwResponse;

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn on_request(&mut self, request: DiscoveryRequest, node: &str) {
        let Some(served) = ServedType::from_url(&request.type_url) else {
            // Answer an unserved type once, empty, so the client does not wait on it; its ACK
            // (which carries a nonce) is not answered again.
            if request.response_nonce.is_empty() {
                debug!(node = %node, type_url = %request.type_url, "request for unserved type");
                let nonce = self.nonces.next_nonce();
                self.unserved_replies.push_back(
                    DiscoveryResponse {
                        type_url: request.type_url,
                        nonce,
                        ..Default::default()
                    }
                    .into(),
                );
            }
            return;
        };
        let state = self.state_mut(served);
        match (&state.latest_nonce, request.response_nonce.as_str()) {
            // A first request of this type on the stream, one racing our first response, or one
            // carrying a nonce from an earlier stream: nothing here to ACK.
            (_, "") | (None, _) => {
                if state.held.is_none() && !request.version_info.is_empty() {
                    state.reconnect_version = Some(request.version_info.clone());
                }
            }
            (Some(latest), nonce) if latest != nonce => {
                // xDS protocol, "Resource updates": a request carrying a nonce older than the
                // latest response is stale and must not be answered; the client re-sends its
                // subscription with the ACK/NACK of the latest response.
                debug!(node = %node, type = served.short_name(), nonce = %nonce, "ignoring stale request");
                return;
            }
            (Some(_), _) => self.record_answer(served, &request, node),
        }
        let state = self.state_mut(served);
        let subscription = Subscription::from_request(served, &request.resource_names);
        if let (Some(held), Subscription::Named(names)) = (&mut state.held, &subscription) {
            // The client forgets resources it no longer asks for; asking again later must be
            // answered again.
            held.resources.retain(|name| names.contains(name));
            if let Subscription::Named(answered) = &mut held.answered {
                answered.retain(|name| names.contains(name));
            }
        }
        state.subscription = Some(subscription);
        state.record.subscribed = true;
    }

    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) {
        let previous = self.target.replace(Arc::clone(&snapshot));
        for served in [ServedType::Cluster, ServedType::Endpoint] {
            // What the client holds of this type: everything in the latest response.
            let held = self.types[served.index()]
                .held
                .as_ref()
                .map(|held| held.resources.missing_from(served.set_in(&snapshot)));
            self.retained
                .on_new_snapshot(served, held.into_iter().flatten(), previous.as_deref());
        }
    }

    fn next_response(&mut self, node: &str) -> Option<SotwResponse> {
        if let Some(reply) = self.unserved_replies.pop_front() {
            return Some(reply);
        }
        self.target.as_ref()?;
        self.accept_reconnect_versions();
        self.release_retained_when_settled();
        for served in ServedType::ALL {
            if !self.in_flight.may_push(served) {
                continue;
            }
            let Some(desired) = self.desired(served, Some(&self.retained)) else {
                continue;
            };
            // "When to send an update": only when the resources (or the subscription) changed.
            // This also keeps a NACKed response from being re-sent (go-control-plane #46,
            // #962): it stays what the client holds by our account until a newer snapshot
            // changes what is desired.
            if !desired.is_due(self.state(served).held.as_ref()) {
                continue;
            }
            let response = self.respond(served, desired.into_held());
            debug!(
                node = %node,
                type = served.short_name(),
                version = %response.head.version_info,
                nonce = %response.head.nonce,
                resources = response.shared_count(),
                "pushing"
            );
            return Some(response);
        }
        None
    }

    fn write_records(&self, records: &mut StreamRecords) -> bool {
        let mut changed = false;
        for served in ServedType::ALL {
            let state = self.state(served);
            // The node holds the current content when its last answer was an ACK of what
            // the snapshot (without stale clusters) requires; for named types the set
            // version can move on without the requested resources changing.
            let current = (state.answer == Answer::Acked)
                .then(|| self.desired(served, None))
                .flatten()
                .filter(|desired| !desired.is_due(state.held.as_ref()));
            let unsubscribed = state.subscription == Some(Subscription::Named(BTreeSet::new()));
            let acked_version = match (&current, &self.target) {
                (Some(desired), _) => Some(&*desired.version),
                (None, Some(target)) if unsubscribed => {
                    Some(served.set_in(target).version.as_str())
                }
                _ => state.record.acked_version.as_deref(),
            };
            changed |= records.get_mut(served).show(&state.record, acked_version);
        }
        changed
    }
}
