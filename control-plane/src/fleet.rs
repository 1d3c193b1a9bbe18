//! Budget sharing: which Envoys of each gateway group are connected, and what each group is
//! served because of it.
//!
//! A local rate limit (`mode: local`) is counted inside each Envoy, so N Envoys serving one
//! route would together admit N times its budget. The control plane sees every Envoy that
//! holds an ADS stream, so it gives each of a group's N Envoys an Nth of every local budget
//! ([`crate::translate::share`]) and serves the group a snapshot translated for N. A node's
//! group is the `cluster` of its bootstrap (`tollgate-control-plane bootstrap --group`).
//!
//! Counting is debounced so that membership churn costs few pushes:
//! - joins are counted in batches ([`JOIN_BATCH`]): a storm of reconnects after a control
//!   plane restart becomes a few recounts rather than one per Envoy. A join is counted at
//!   once (within the batch) because a group counted too small over-admits;
//! - a node that leaves is counted until it has stayed away for [`LEAVE_GRACE`], so an Envoy
//!   that reconnects (a flapping link, a move between control-plane replicas) changes no
//!   share and causes no push; meanwhile the others keep their smaller, safe share.
//!
//! Each replica counts the Envoys connected to it: with several control-plane replicas,
//! each group's Envoys should all use one of them at a time (the bootstrap's replica order
//! does that) or shares are computed per replica.

use std::collections::BTreeMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tollgate_routes::policy::{LimitQuota, RateLimitRule};
use tollgate_routes::{Certificates, RoutesConfig};
use tracing::info;

use crate::snapshot::{Served, Snapshot, SnapshotCache};
use crate::translate::{share, translate_shared};
use crate::xds::{Member, NodeRegistry};

/// How long joins are gathered before a recount: short next to any rate-limit window, long
/// enough that Envoys reconnecting together are counted together.
pub const JOIN_BATCH: Duration = Duration::from_millis(250);

/// How long a node must stay away before its share goes back to the others: longer than a
/// reconnect (Envoy's ADS retry back-off starts at 500 ms) so that a flapping node moves no
/// budget.
pub const LEAVE_GRACE: Duration = Duration::from_secs(2);

/// routes.yaml as loaded, kept to translate it again for other numbers of Envoys.
#[derive(Debug)]
pub struct LoadedRoutes {
    pub config: RoutesConfig,
    pub certificates: Certificates,
}

/// The snapshots served to each group, made again when the configuration or a group's size
/// changes.
#[derive(Debug)]
pub struct Fleet {
    cache: Arc<SnapshotCache>,
    state: Mutex<FleetState>,
}

#[derive(Debug, Default)]
struct FleetState {
    /// The configuration being served, when it has local limits to share.
    routes: Option<Arc<LoadedRoutes>>,
    /// Envoys counted per group; groups with none are absent.
    group_sizes: BTreeMap<String, u32>,
}

impl Fleet {
    pub fn new(cache: Arc<SnapshotCache>) -> Self {
        Fleet {
            cache,
            state: Mutex::default(),
        }
    }

    pub fn cache(&self) -> &Arc<SnapshotCache> {
        &self.cache
    }

    /// Envoys counted per group.
    pub fn group_sizes(&self) -> BTreeMap<String, u32> {
        self.lock().group_sizes.clone()
    }

    /// Serves a newly loaded configuration: `whole` is its snapshot for an Envoy alone,
    /// `shared` those already made for other numbers of Envoys, and `routes` the
    /// configuration to make more from (`None` when it has no local limit). Returns false
    /// when every group is already served the same.
    pub fn serve_config(
        &self,
        whole: Snapshot,
        shared: BTreeMap<u32, Snapshot>,
        routes: Option<Arc<LoadedRoutes>>,
    ) -> bool {
        let mut state = self.lock();
        state.routes = routes;
        let made = shared.into_iter().map(|(n, s)| (n, Arc::new(s))).collect();
        self.install(&state, Arc::new(whole), made)
    }

    /// Serves each group for its new size.
    pub fn resize(&self, group_sizes: BTreeMap<String, u32>) -> bool {
        let mut state = self.lock();
        state.group_sizes = group_sizes;
        let Some(current) = self.cache.current_served() else {
            return false;
        };
        let made = current
            .by_envoys()
            .filter(|(n, _)| *n > 1)
            .map(|(n, s)| (n, s.clone()))
            .collect();
        self.install(&state, current.whole().clone(), made)
    }

    /// What `/status` shows: each group's size and each local limit's share in it.
    pub fn status(&self) -> SharingStatus {
        let state = self.lock();
        let local_limits = state
            .routes
            .iter()
            .flat_map(|routes| routes.config.routes.iter())
            .flat_map(|route| {
                route
                    .local_rate_limits()
                    .flat_map(|rule| limit_shares(&route.name, rule, &state.group_sizes))
            })
            .collect();
        SharingStatus {
            groups: state.group_sizes.clone(),
            local_limits,
        }
    }

    /// Installs `whole` and a snapshot for each group size of two or more, taken from
    /// `made` or translated now.
    fn install(
        &self,
        state: &FleetState,
        whole: Arc<Snapshot>,
        mut made: BTreeMap<u32, Arc<Snapshot>>,
    ) -> bool {
        let mut shared = BTreeMap::new();
        if let Some(routes) = &state.routes {
            for &envoys in state.group_sizes.values() {
                let Some(n) = NonZeroU32::new(envoys).filter(|n| n.get() > 1) else {
                    continue;
                };
                if shared.contains_key(&envoys) {
                    continue;
                }
                let snapshot = made.remove(&envoys).unwrap_or_else(|| {
                    Arc::new(translate_shared(&routes.config, &routes.certificates, n))
                });
                shared.insert(envoys, snapshot);
            }
        }
        self.cache
            .set_served(Served::new(whole, shared, state.group_sizes.clone()))
    }

    fn lock(&self) -> MutexGuard<'_, FleetState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Group sizes and local limit shares, for `/status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SharingStatus {
    /// Envoys counted per group.
    pub groups: BTreeMap<String, u32>,
    /// One entry per local rule (per tier of a tiered rule).
    pub local_limits: Vec<LimitShare>,
}

/// One local budget and what each group's Envoys get of it.
#[derive(Clone, Debug, Serialize)]
pub struct LimitShare {
    pub route: String,
    pub rule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// The budget: requests per window, and the bucket's size.
    pub requests: u64,
    pub per: &'static str,
    pub burst: u64,
    /// By group: what each of its Envoys enforces.
    pub shares: BTreeMap<String, EnvoyShare>,
}

/// What each Envoy of a group enforces of one budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct EnvoyShare {
    pub envoys: u32,
    pub requests: u64,
    pub burst: u64,
}

fn limit_shares(
    route: &str,
    rule: &RateLimitRule,
    group_sizes: &BTreeMap<String, u32>,
) -> Vec<LimitShare> {
    let quotas: Vec<_> = match &rule.quota {
        LimitQuota::Flat(quota) => vec![(None, *quota)],
        LimitQuota::Tiered { tiers, .. } => tiers
            .iter()
            .map(|(tier, quota)| (Some(tier.clone()), *quota))
            .collect(),
    };
    quotas
        .into_iter()
        .map(|(tier, quota)| {
            let burst = rule.burst.unwrap_or(quota.requests);
            let shares = group_sizes
                .iter()
                .filter_map(|(group, &envoys)| {
                    let n = NonZeroU32::new(envoys)?;
                    let envoy_share = EnvoyShare {
                        envoys,
                        requests: share(quota.requests, n),
                        burst: share(burst, n),
                    };
                    Some((group.clone(), envoy_share))
                })
                .collect();
            LimitShare {
                route: route.to_string(),
                rule: rule.id.clone(),
                tier,
                requests: quota.requests,
                per: quota.per.as_str(),
                burst,
                shares,
            }
        })
        .collect()
}

/// Node ids counted, with their group.
pub type Counted = BTreeMap<String, String>;

/// The nodes to count now, given those `counted` before and every member's state: every
/// connected node, and those that left less than `grace` ago. Also when to look again for a
/// leaver whose grace runs out.
pub fn settle(
    counted: &Counted,
    members: &[Member],
    now: Instant,
    grace: Duration,
) -> (Counted, Option<Instant>) {
    let mut next = Counted::new();
    let mut recheck: Option<Instant> = None;
    for member in members {
        if member.connected {
            next.insert(member.id.clone(), member.group.clone());
            continue;
        }
        let Some(group) = counted.get(&member.id) else {
            continue;
        };
        let gone_at = Instant::from_std(member.since) + grace;
        if now < gone_at {
            next.insert(member.id.clone(), group.clone());
            recheck = Some(recheck.map_or(gone_at, |r| r.min(gone_at)));
        }
    }
    (next, recheck)
}

/// Envoys per group among `counted`.
pub fn group_sizes(counted: &Counted) -> BTreeMap<String, u32> {
    let mut sizes = BTreeMap::new();
    for group in counted.values() {
        *sizes.entry(group.clone()).or_insert(0) += 1;
    }
    sizes
}

/// Counts the connected Envoys of each group until `stop`, resizing `fleet` whenever a
/// group's count changes (debounced as the module says).
pub async fn count_members(
    registry: Arc<NodeRegistry>,
    fleet: Arc<Fleet>,
    stop: impl Future<Output = ()>,
) {
    let mut changes = registry.membership_changes();
    let mut counted = Counted::new();
    let mut recheck: Option<Instant> = None;
    tokio::pin!(stop);
    loop {
        let leaver_due = async {
            match recheck {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut stop => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                tokio::time::sleep(JOIN_BATCH).await;
            }
            () = leaver_due => {}
        }
        changes.borrow_and_update();
        let (next, next_recheck) =
            settle(&counted, &registry.members(), Instant::now(), LEAVE_GRACE);
        recheck = next_recheck;
        let sizes = group_sizes(&next);
        counted = next;
        if sizes == fleet.group_sizes() {
            continue;
        }
        info!(groups = ?sizes, "envoys per group changed; sharing local limits anew");
        let fleet = fleet.clone();
        // Translating for a new size is CPU work; keep it off the async workers.
        let _ = tokio::task::spawn_blocking(move || fleet.resize(sizes)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, group: &str, connected: bool, since: Instant) -> Member {
        Member {
            id: id.to_string(),
            group: group.to_string(),
            connected,
            since: since.into_std(),
        }
    }

    #[test]
    fn connected_nodes_count_in_their_group_at_once() {
        let now = Instant::now();
        let members = [
            member("a", "edge", true, now),
            member("b", "edge", true, now),
            member("c", "internal", true, now),
            member("d", "edge", false, now),
        ];
        let (counted, recheck) = settle(&Counted::new(), &members, now, LEAVE_GRACE);
        assert_eq!(
            group_sizes(&counted),
            BTreeMap::from([("edge".to_string(), 2), ("internal".to_string(), 1)]),
            "d was never counted, so its leaving needs no grace"
        );
        assert_eq!(recheck, None);
    }

    #[test]
    fn a_node_that_left_counts_until_it_stays_away_for_the_grace() {
        let start = Instant::now();
        let both = [
            member("a", "edge", true, start),
            member("b", "edge", true, start),
        ];
        let (counted, _) = settle(&Counted::new(), &both, start, LEAVE_GRACE);
        let left_at = start + Duration::from_secs(10);
        let b_gone = [
            member("a", "edge", true, start),
            member("b", "edge", false, left_at),
        ];
        let soon = left_at + Duration::from_millis(500);
        let (still, recheck) = settle(&counted, &b_gone, soon, LEAVE_GRACE);
        assert_eq!(group_sizes(&still)["edge"], 2, "b may only be reconnecting");
        assert_eq!(recheck, Some(left_at + LEAVE_GRACE));
        let (after, recheck) = settle(&still, &b_gone, left_at + LEAVE_GRACE, LEAVE_GRACE);
        assert_eq!(group_sizes(&after)["edge"], 1);
        assert_eq!(recheck, None);
    }

    #[test]
    fn a_flapping_node_keeps_its_count() {
        let start = Instant::now();
        let (mut counted, _) = settle(
            &Counted::new(),
            &[member("f", "edge", true, start)],
            start,
            LEAVE_GRACE,
        );
        for flap in 1..20u64 {
            let at = start + Duration::from_millis(300 * flap);
            let state = [member("f", "edge", flap % 2 == 0, at)];
            let (next, _) = settle(&counted, &state, at, LEAVE_GRACE);
            assert_eq!(
                group_sizes(&next),
                group_sizes(&counted),
                "flap {flap}: the count must not move"
            );
            counted = next;
        }
    }
}
