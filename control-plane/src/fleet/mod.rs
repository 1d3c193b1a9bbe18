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
//! With several control-plane replicas, Envoys spread over them; each replica asks the others
//! (`serve --peer`) which Envoys they hold ([`peers`]) and counts the union by node id, so
//! that every replica computes the same sizes and serves the same bytes, and an Envoy moving
//! between replicas is counted once.

mod membership;
pub mod peers;

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Serialize;
use tollgate_routes::policy::{LimitQuota, RateLimitRule};
use tollgate_routes::{Certificates, RoutesConfig};

use crate::snapshot::{Served, Snapshot, SnapshotCache};
use crate::translate::{share, translate_shared};

pub use membership::{count_members, JOIN_BATCH, LEAVE_GRACE};

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
