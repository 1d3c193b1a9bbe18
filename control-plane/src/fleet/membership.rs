//! Counting each group's Envoys from the node registry (and the peers' reports), debounced
//! as [`super`] explains.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use crate::xds::{Member, NodeRegistry};

use super::peers::{PeerReports, RemoteMember};
use super::Fleet;

/// How long joins are gathered before a recount: short next to any rate-limit window, long
/// enough that Envoys reconnecting together are counted together.
pub const JOIN_BATCH: Duration = Duration::from_millis(250);

/// How long a node must stay away before its share goes back to the others: longer than a
/// reconnect (Envoy's ADS retry back-off starts at 250 ms in our bootstrap) so that a
/// flapping node moves no budget.
pub const LEAVE_GRACE: Duration = Duration::from_secs(2);

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

/// Every node this replica or a peer knows: connected when either holds its stream, and if
/// neither does, gone since the later of the two last saw it.
pub fn merge(local: Vec<Member>, remote: &BTreeMap<String, RemoteMember>) -> Vec<Member> {
    let mut merged: BTreeMap<String, Member> =
        local.into_iter().map(|m| (m.id.clone(), m)).collect();
    for (id, seen) in remote {
        let from_peer = Member {
            id: id.clone(),
            group: seen.group.clone(),
            connected: seen.connected,
            since: seen.last_seen,
        };
        match merged.get_mut(id) {
            None => {
                merged.insert(id.clone(), from_peer);
            }
            Some(here) if here.connected => {}
            Some(here) if from_peer.connected => *here = from_peer,
            Some(here) => here.since = here.since.max(from_peer.since),
        }
    }
    merged.into_values().collect()
}

/// Counts the connected Envoys of each group, here and at the peers, until `stop`, resizing
/// `fleet` whenever a group's count changes (debounced as the module says).
pub async fn count_members(
    registry: Arc<NodeRegistry>,
    peers: Arc<PeerReports>,
    fleet: Arc<Fleet>,
    stop: impl Future<Output = ()>,
) {
    let mut changes = registry.membership_changes();
    let mut peer_changes = peers.changes();
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
            changed = peer_changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = leaver_due => {}
        }
        changes.borrow_and_update();
        peer_changes.borrow_and_update();
        let now = Instant::now();
        let members = merge(registry.members(), &peers.members(now.into_std()));
        let (next, next_recheck) = settle(&counted, &members, now, LEAVE_GRACE);
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

    #[test]
    fn a_node_held_here_or_by_a_peer_is_connected_once() {
        let now = Instant::now();
        let earlier = now - Duration::from_secs(5);
        let local = vec![
            member("here", "edge", true, earlier),
            member("moved-away", "edge", false, earlier),
            member("gone", "edge", false, earlier),
        ];
        let remote = BTreeMap::from([
            (
                "moved-away".to_string(),
                RemoteMember {
                    group: "edge".to_string(),
                    connected: true,
                    last_seen: now.into_std(),
                },
            ),
            (
                "there".to_string(),
                RemoteMember {
                    group: "edge".to_string(),
                    connected: true,
                    last_seen: now.into_std(),
                },
            ),
            (
                "gone".to_string(),
                RemoteMember {
                    group: "edge".to_string(),
                    connected: false,
                    last_seen: now.into_std(),
                },
            ),
        ]);
        let merged = merge(local, &remote);
        let connected: Vec<_> = merged
            .iter()
            .filter(|m| m.connected)
            .map(|m| m.id.as_str())
            .collect();
        assert_eq!(connected, ["here", "moved-away", "there"]);
        let gone = merged.iter().find(|m| m.id == "gone").expect("listed");
        assert_eq!(
            gone.since,
            now.into_std(),
            "gone since the peer last saw it, later than here"
        );
    }
}
