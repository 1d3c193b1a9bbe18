//! One replica of a sidecar cut off the network while traffic runs through Envoy, and the
//! most that may cost the traffic: shared by the ext-authz and the rate-limit cut tests.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::traffic::{Traffic, TrafficReport};
use crate::{eventually, NetworkNamespace, RunningEnvoy};

/// What a cut of one replica of a replicated sidecar may cost.
#[derive(Debug)]
pub struct SidecarReplicaCut<'a> {
    pub envoy: &'a RunningEnvoy,
    /// Envoy's cluster of the sidecar (`tollgate_ext_authz`, `tollgate_ratelimit`).
    pub cluster: &'static str,
    /// The replica cut off.
    pub replica: SocketAddr,
    /// How long the traffic runs from the cut: past outlier detection's ejection, so that a
    /// replica let back in too early would be seen.
    pub held: Duration,
    /// Each try's timeout, and the call's.
    pub per_try_timeout: Duration,
    pub timeout: Duration,
    /// The most requests that may wait out a try on the silent replica before it is ejected.
    pub most_delayed: usize,
}

/// What the traffic saw through a cut that cost no more than allowed.
#[derive(Debug)]
pub struct CutSeen {
    pub report: TrafficReport,
    /// Tries Envoy gave up on at the per-try timeout.
    pub per_try_timeouts: u64,
}

impl SidecarReplicaCut<'_> {
    /// Cuts `namespace` (the replica's host) off while `traffic` runs; checks that Envoy
    /// takes the replica out of rotation and keeps it out, failing health checks, for
    /// `held`; then that no request failed, none waited out the call's timeout, at most
    /// `most_delayed` waited out a try, and that the silent replica was really called.
    pub async fn cut(&self, namespace: &NetworkNamespace, traffic: Traffic) -> CutSeen {
        let (envoy, cluster, replica) = (self.envoy, self.cluster, self.replica);
        let cut = Instant::now();
        namespace.cut();
        let out = eventually("the cut-off replica is out of rotation", async || {
            let flags = envoy.health_flags(cluster, replica).await;
            anyhow::ensure!(flags != "healthy", "{replica}: {flags}");
            Ok(flags)
        })
        .await;
        eprintln!(
            "{replica} out of rotation ({out}) {:?} after the cut",
            cut.elapsed()
        );
        tokio::time::sleep(self.held.saturating_sub(cut.elapsed())).await;
        let flags = envoy.health_flags(cluster, replica).await;
        assert!(
            flags.contains("failed_active_hc"),
            "the cut-off replica should be failing its health checks: {flags}"
        );
        let report = traffic.stop().await;
        let counter = async |name: &str| -> u64 {
            let filter = format!("^cluster\\.{cluster}\\.{name}$");
            let stats = envoy.stats(&filter).await.expect("Envoy stats");
            stats.iter().map(|(_, value)| value).sum()
        };
        let per_try_timeouts = counter("upstream_rq_per_try_timeout").await;
        let rescued = counter("upstream_rq_retry_success").await;
        let slowest = report.requests.iter().map(|sent| sent.took).max();
        let delayed = report
            .requests
            .iter()
            .filter(|sent| sent.took >= self.per_try_timeout)
            .count();
        let (per_try, timeout, held) = (self.per_try_timeout, self.timeout, self.held);
        eprintln!(
            "{} requests in the {held:?} from the cut: {} failed, {delayed} took {per_try:?} or \
             more (slowest {slowest:?}); Envoy counted {per_try_timeouts} tries timed out and \
             {rescued} retries that succeeded",
            report.sent,
            report.failures.len(),
        );
        assert!(report.sent > 0, "no traffic was sent");
        // The cut replica was called while silent, else this test saw nothing.
        assert!(
            per_try_timeouts > 0,
            "no call to the cut-off replica timed out: did any reach it?"
        );
        // A try that gets no answer within the per-try timeout is retried on another replica,
        // and outlier detection, then health checks, take the silent one out of rotation.
        assert!(
            report.failures.is_empty(),
            "{} of {} requests failed while a {cluster} replica was cut off: {:?}",
            report.failures.len(),
            report.sent,
            report.failures
        );
        assert!(
            slowest < Some(timeout),
            "a request waited out the call's {timeout:?} timeout: slowest {slowest:?}"
        );
        assert!(
            delayed <= self.most_delayed,
            "{delayed} requests waited out a try's {per_try:?} on the cut-off replica; \
             ejecting it should have stopped that after {}",
            self.most_delayed
        );
        CutSeen {
            report,
            per_try_timeouts,
        }
    }
}
