//! What the other control-plane replicas report of their Envoys.
//!
//! Each replica serves `GET /members` on its admin port: the nodes holding a stream to it,
//! and nothing it learnt from others (so reports never echo). A replica started with
//! `--peer ADMIN_ADDR` polls each peer every [`POLL_INTERVAL`] and counts the union of its
//! own nodes and the peers' by node id: an Envoy that moved is counted once, and every
//! replica arrives at the same group sizes, hence the same bytes for the same file.
//!
//! A peer that stops answering keeps its last report for [`STALE_AFTER`]: its Envoys, if it
//! died, reconnect to a live replica well within that (and count there, once), while a peer
//! merely cut off from this one still holds them; after that its Envoys count as gone.
//! Counting an Envoy too long only makes shares smaller, never larger.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, warn};

/// How often each peer is asked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long one answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a peer's last report counts once it stops answering.
pub const STALE_AFTER: Duration = Duration::from_secs(15);

/// `GET /members`: the nodes with a stream open to this replica.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersReport {
    pub members: Vec<ReportedMember>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ReportedMember {
    pub id: String,
    pub group: String,
}

/// A node another replica holds, as last reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteMember {
    pub group: String,
    /// In a report that still counts.
    pub connected: bool,
    /// When a report last named it.
    pub last_seen: Instant,
}

/// Every peer's last report, shared between the poller and the counter.
#[derive(Debug)]
pub struct PeerReports {
    reports: Mutex<BTreeMap<String, (MembersReport, Instant)>>,
    /// Bumped when the nodes reported connected change.
    changes: watch::Sender<u64>,
}

impl Default for PeerReports {
    fn default() -> Self {
        PeerReports {
            reports: Mutex::default(),
            changes: watch::channel(0).0,
        }
    }
}

impl PeerReports {
    /// Woken when the nodes the peers hold change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Every node a peer has reported, by id, judged at `now`.
    pub fn members(&self, now: Instant) -> BTreeMap<String, RemoteMember> {
        remote_members(&self.lock(), now)
    }

    /// Records `peer`'s answer, received at `at`.
    pub fn record(&self, peer: &str, report: MembersReport, at: Instant) {
        let mut reports = self.lock();
        let before = connected_ids(&remote_members(&reports, at));
        reports.insert(peer.to_string(), (report, at));
        let after = connected_ids(&remote_members(&reports, at));
        drop(reports);
        if before != after {
            self.changes.send_modify(|generation| *generation += 1);
        }
    }

    /// Wakes the counter if, at `now`, a report has gone stale since `was`.
    fn notice_staleness(&self, was: &[(String, String)], now: Instant) {
        if connected_ids(&self.members(now)) != was {
            self.changes.send_modify(|generation| *generation += 1);
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, (MembersReport, Instant)>> {
        self.reports.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The union of `reports` by node id: connected when a report younger than [`STALE_AFTER`]
/// names it.
fn remote_members(
    reports: &BTreeMap<String, (MembersReport, Instant)>,
    now: Instant,
) -> BTreeMap<String, RemoteMember> {
    let mut members: BTreeMap<String, RemoteMember> = BTreeMap::new();
    for (report, at) in reports.values() {
        let fresh = now.saturating_duration_since(*at) < STALE_AFTER;
        for member in &report.members {
            let seen = RemoteMember {
                group: member.group.clone(),
                connected: fresh,
                last_seen: *at,
            };
            match members.get(&member.id) {
                Some(known) if known.connected && !fresh => {}
                Some(known) if known.connected == fresh && known.last_seen >= *at => {}
                _ => {
                    members.insert(member.id.clone(), seen);
                }
            }
        }
    }
    members
}

fn connected_ids(members: &BTreeMap<String, RemoteMember>) -> Vec<(String, String)> {
    members
        .iter()
        .filter(|(_, m)| m.connected)
        .map(|(id, m)| (id.clone(), m.group.clone()))
        .collect()
}

/// Asks every peer (admin `HOST:PORT`) for its members every [`POLL_INTERVAL`] until
/// `stop`, recording each answer in `reports`.
pub async fn poll(peers: Vec<String>, reports: Arc<PeerReports>, stop: impl Future<Output = ()>) {
    if peers.is_empty() {
        return;
    }
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = ticks.tick() => {}
        }
        let was = connected_ids(&reports.members(Instant::now()));
        let answers = futures::future::join_all(peers.iter().map(|peer| ask(&client, peer))).await;
        for (peer, answer) in peers.iter().zip(answers) {
            match answer {
                Ok(report) => reports.record(peer, report, Instant::now()),
                Err(error) => debug!(%peer, %error, "a peer did not report its members"),
            }
        }
        reports.notice_staleness(&was, Instant::now());
    }
}

async fn ask(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    peer: &str,
) -> Result<MembersReport, String> {
    let uri: hyper::Uri = format!("http://{peer}/members")
        .parse()
        .map_err(|e| format!("bad peer address: {e}"))?;
    let exchange = async {
        let response = client.get(uri).await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("not a members report: {e}"))
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, exchange).await {
        Ok(answer) => answer,
        Err(_) => Err(format!("no answer within {ANSWER_TIMEOUT:?}")),
    }
}

/// Warns once at start-up about peers that cannot be asked, so a typo shows.
pub fn check_addresses(peers: &[String]) {
    for peer in peers {
        if format!("http://{peer}/members")
            .parse::<hyper::Uri>()
            .is_err()
        {
            warn!(%peer, "a --peer is not HOST:PORT; it will never answer");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ids: &[(&str, &str)]) -> MembersReport {
        MembersReport {
            members: ids
                .iter()
                .map(|(id, group)| ReportedMember {
                    id: id.to_string(),
                    group: group.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_peers_nodes_count_until_its_report_goes_stale() {
        let reports = PeerReports::default();
        let start = Instant::now();
        reports.record("cp-2:18001", report(&[("e2", "edge")]), start);
        let members = reports.members(start + Duration::from_secs(1));
        assert!(members["e2"].connected);
        let later = start + STALE_AFTER + Duration::from_secs(1);
        let members = reports.members(later);
        assert!(!members["e2"].connected, "a silent peer's report expires");
        assert_eq!(members["e2"].last_seen, start);
    }

    #[test]
    fn a_node_two_peers_report_is_one_member_connected_if_either_report_is_fresh() {
        let reports = PeerReports::default();
        let start = Instant::now();
        reports.record("cp-2:18001", report(&[("e", "edge")]), start);
        let moved = start + STALE_AFTER;
        reports.record("cp-3:18001", report(&[("e", "edge")]), moved);
        let members = reports.members(moved + Duration::from_secs(1));
        assert_eq!(members.len(), 1);
        assert!(members["e"].connected);
        assert_eq!(members["e"].last_seen, moved);
    }

    #[test]
    fn only_a_change_of_connected_nodes_wakes_the_counter() {
        let reports = PeerReports::default();
        let mut changes = reports.changes();
        let start = Instant::now();
        reports.record("cp-2:18001", report(&[("e", "edge")]), start);
        assert!(changes.has_changed().expect("alive"));
        changes.borrow_and_update();
        reports.record(
            "cp-2:18001",
            report(&[("e", "edge")]),
            start + Duration::from_secs(1),
        );
        assert!(!changes.has_changed().expect("alive"), "the same nodes");
        reports.record("cp-2:18001", report(&[]), start + Duration::from_secs(2));
        assert!(changes.has_changed().expect("alive"));
    }
}
