//! Local rate limits shared among the Envoys of a group (issue 23): the control plane gives
//! each of N connected Envoys an Nth of every local budget, so that N Envoys with the load
//! spread over them admit the limit between them, and shares the budget anew when an Envoy
//! joins or leaves.
//!
//! Every Envoy here binds the same listener port (Envoy sets SO_REUSEPORT by default), and
//! every request comes on a new connection, which the kernel hands to one of them by a hash
//! of its addresses. Sending several times the budget makes every Envoy see more than its
//! share, so each spends its whole bucket: the total admitted is the sum of the shares, not
//! a matter of luck. Limits are per hour, so no bucket refills noticeably during a burst,
//! and each phase counts a new key (an `x-client` value), so no phase inherits another's
//! spent buckets.

use std::collections::BTreeSet;

use serde_json::Value;
use tollgate_conformance::{
    eventually, request, reserve_port, ControlPlane, Envoy, RunningControlPlane, RunningEnvoy,
    Upstream, UpstreamHandle,
};
use tollgate_testkit::ports::reserve_addr;

/// The route's local budget, per hour, shared by the group.
const LIMIT: u64 = 60;
/// Requests sent per Envoy of the group in each phase: every Envoy gets several times its
/// share, whatever the kernel's spread.
const REQUESTS_PER_ENVOY: usize = 80;
/// The default group of `tollgate-control-plane bootstrap`.
const GROUP: &str = "tollgate";

struct Group {
    port: u16,
    shared: UpstreamHandle,
    _open: UpstreamHandle,
    cp: RunningControlPlane,
    envoys: Vec<RunningEnvoy>,
}

impl Group {
    async fn start(envoys: usize) -> Group {
        let shared = Upstream::new("shared").spawn().await;
        let open = Upstream::new("open").spawn().await;
        let port = reserve_port();
        let cp = ControlPlane::new()
            .routes(routes(port, &shared, &open))
            .start()
            .await;
        let mut group = Group {
            port,
            shared,
            _open: open,
            cp,
            envoys: Vec::new(),
        };
        for _ in 0..envoys {
            group.join().await;
        }
        group
    }

    async fn join(&mut self) {
        let id = format!("shared-{}", self.envoys.len() + 1);
        let envoy = Envoy::new()
            .node_id(&id)
            .control_plane(&self.cp)
            .start()
            .await;
        self.envoys.push(envoy);
    }

    /// Waits until the control plane counts `n` Envoys in the group, /status shows the
    /// route's share for them, and every Envoy has that share in its config and its
    /// listener serving.
    async fn shared_by(&self, n: u64) -> u64 {
        let share = LIMIT.div_ceil(n);
        eventually(&format!("the budget shared by {n} Envoys"), async || {
            let status = self.cp.status().await?;
            let sharing = &status["budget_sharing"];
            anyhow::ensure!(
                sharing["groups"][GROUP] == n,
                "the group is not counted as {n} yet: {sharing}"
            );
            let limit = sharing["local_limits"]
                .as_array()
                .and_then(|limits| limits.iter().find(|l| l["route"] == "shared"))
                .ok_or_else(|| anyhow::anyhow!("no share for the route in {sharing}"))?;
            anyhow::ensure!(
                limit["shares"][GROUP]["requests"] == share,
                "the route's share is not {share} yet: {limit}"
            );
            let counted = self
                .cp
                .metric(&format!("tollgate_group_envoys{{group=\"{GROUP}\"}}"))
                .await?;
            anyhow::ensure!(counted == Some(n as f64), "the metric says {counted:?}");
            for envoy in &self.envoys {
                let buckets = bucket_sizes(&envoy.config_dump().await?);
                anyhow::ensure!(
                    buckets == BTreeSet::from([share]),
                    "{} holds buckets of {buckets:?}, not {share}",
                    envoy.node_id()
                );
                let active = envoy
                    .stats("listener_manager.total_listeners_active")
                    .await?;
                anyhow::ensure!(
                    active.iter().any(|(_, count)| *count >= 1),
                    "{} has no active listener yet",
                    envoy.node_id()
                );
            }
            Ok(())
        })
        .await;
        share
    }

    /// [`burst`] through the group, several times the budget: checks that every admitted
    /// request, and no refused one, reached the upstream.
    async fn burst(&self, client: &str) -> u64 {
        let before = self.shared.requests();
        let admitted = burst(self.port, client, REQUESTS_PER_ENVOY * self.envoys.len()).await;
        assert_eq!(
            self.shared.requests() - before,
            admitted as usize,
            "every admitted request reached the upstream, and no refused one"
        );
        admitted
    }

    /// Requests each Envoy admitted on the route so far.
    async fn admitted_per_envoy(&self) -> Vec<u64> {
        let mut counts = Vec::new();
        for envoy in &self.envoys {
            let stats = envoy
                .stats("tollgate_local.shared.http_local_rate_limit.ok")
                .await
                .expect("stats");
            counts.push(stats.iter().map(|(_, count)| count).sum());
        }
        counts
    }
}

/// The route `shared`, limited to [`LIMIT`] per hour per `x-client` value in `mode: local`,
/// and `open`, unlimited.
fn routes(port: u16, shared: &UpstreamHandle, open: &UpstreamHandle) -> String {
    format!(
        r#"version: 1
listeners:
  - {{name: public, address: "127.0.0.1:{port}"}}
services:
  shared: {{endpoints: ["{shared}"]}}
  open: {{endpoints: ["{open}"]}}
routes:
  - name: shared
    match: {{prefix: /shared/}}
    service: shared
    rate_limit:
      - {{by: header, header: x-client, requests: {LIMIT}, per: hour, mode: local}}
  - {{name: open, match: {{prefix: /open/}}, service: open}}
"#,
        shared = shared.endpoint(),
        open = open.endpoint(),
    )
}

/// Sends `requests` for key `client` to `/shared/`, each on a new connection; returns how
/// many were admitted, having checked every other answer is the rate limit's 429.
async fn burst(port: u16, client: &str, requests: usize) -> u64 {
    let mut admitted = 0;
    for _ in 0..requests {
        let response = request(port)
            .path("/shared/x")
            .header("x-client", client)
            .send()
            .await
            .expect("an answer");
        match response.status.as_u16() {
            200 => admitted += 1,
            429 => {}
            other => panic!("{client}: unexpected {other}: {}", response.text()),
        }
    }
    admitted
}

/// The sizes of the route's local buckets in an Envoy's config dump, leaving out the
/// default bucket (for requests without the key), which is never a budget.
fn bucket_sizes(dump: &Value) -> BTreeSet<u64> {
    fn walk(value: &Value, sizes: &mut BTreeSet<u64>) {
        match value {
            Value::Object(map) => {
                if let Some(descriptors) = map.get("descriptors").and_then(Value::as_array) {
                    for descriptor in descriptors {
                        if let Some(size) = descriptor["token_bucket"]["max_tokens"].as_u64() {
                            sizes.insert(size);
                        }
                    }
                }
                map.values().for_each(|v| walk(v, sizes));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, sizes)),
            _ => {}
        }
    }
    let mut sizes = BTreeSet::new();
    walk(dump, &mut sizes);
    sizes
}

/// The total admitted is within 10% under the limit (each Envoy saw more than its share)
/// and never above N shares.
fn assert_admitted(phase: &str, admitted: u64, envoys: u64, share: u64) {
    eprintln!("{phase}: {admitted} admitted, a share of {share} each");
    let floor = LIMIT - LIMIT / 10;
    assert!(
        (floor..=envoys * share).contains(&admitted),
        "{phase}: {envoys} Envoys admitted {admitted} of a budget of {LIMIT} \
         ({share} each); expected {floor}..={}",
        envoys * share
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_envoys_admit_the_limit_between_them_and_share_anew_as_one_joins_and_leaves() {
    let mut group = Group::start(3).await;
    eventually("the routes are served", async || {
        request(group.port)
            .path("/open/probe")
            .send()
            .await?
            .expect_upstream("open")?;
        Ok(())
    })
    .await;

    let share = group.shared_by(3).await;
    assert_eq!(share, 20);
    let admitted = group.burst("three").await;
    assert_admitted("three Envoys", admitted, 3, share);
    let per_envoy = group.admitted_per_envoy().await;
    assert!(
        per_envoy.iter().all(|&n| n <= share),
        "no Envoy admits more than its share: {per_envoy:?}"
    );

    // A fourth joins: within one push every Envoy holds a quarter.
    group.join().await;
    let share = group.shared_by(4).await;
    assert_eq!(share, 15);
    let admitted = group.burst("four").await;
    assert_admitted("four Envoys", admitted, 4, share);

    // It leaves: once it has stayed away, the three left get a third again.
    let gone = group.envoys.pop().expect("the fourth");
    drop(gone);
    let share = group.shared_by(3).await;
    let admitted = group.burst("three again").await;
    assert_admitted("three Envoys again", admitted, 3, share);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_alone_enforces_the_whole_budget_and_another_group_does_not_count() {
    let group = Group::start(1).await;
    // An Envoy of another gateway group on the same control plane: it is served the same
    // routes, with its own group's share.
    let other = Envoy::new()
        .node_id("other-group-1")
        .group("internal")
        .control_plane(&group.cp)
        .start()
        .await;
    eventually("both groups counted", async || {
        let status = group.cp.status().await?;
        let groups = &status["budget_sharing"]["groups"];
        anyhow::ensure!(
            groups[GROUP] == 1 && groups["internal"] == 1,
            "groups: {groups}"
        );
        Ok(())
    })
    .await;
    for envoy in [&group.envoys[0], &other] {
        eventually(
            &format!("{} holds the whole budget", envoy.node_id()),
            async || {
                let buckets = bucket_sizes(&envoy.config_dump().await?);
                anyhow::ensure!(buckets == BTreeSet::from([LIMIT]), "buckets {buckets:?}");
                Ok(())
            },
        )
        .await;
    }
    // Here both bind one port; the burst is for the first group's Envoy alone.
    drop(other);
    eventually("the other group's Envoy gone", async || {
        let status = group.cp.status().await?;
        let node = status["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["id"] == "other-group-1"))
            .cloned()
            .unwrap_or_default();
        anyhow::ensure!(node["connected"] == false, "still connected: {node}");
        Ok(())
    })
    .await;
    let share = group.shared_by(1).await;
    assert_eq!(share, LIMIT, "one Envoy alone gets the whole budget");
    assert_eq!(group.burst("alone").await, LIMIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_on_two_peered_replicas_share_one_budget_and_get_identical_bytes() {
    let shared = Upstream::new("shared").spawn().await;
    let open = Upstream::new("open").spawn().await;
    let port = reserve_port();
    let second_admin = reserve_addr();
    let first = ControlPlane::new()
        .routes(routes(port, &shared, &open))
        .peer(second_admin)
        .start()
        .await;
    let second = first.peered_replica(second_admin).await;
    let on_first = Envoy::new()
        .node_id("on-first")
        .control_planes(&[&first])
        .start()
        .await;
    let on_second = Envoy::new()
        .node_id("on-second")
        .control_planes(&[&second])
        .start()
        .await;

    let half = LIMIT / 2;
    let mut acked_routes = Vec::new();
    for (cp, node) in [(&first, "on-first"), (&second, "on-second")] {
        let acked = eventually(
            &format!("the replica holding {node} counts both Envoys"),
            async || {
                let status = cp.status().await?;
                let sharing = &status["budget_sharing"];
                anyhow::ensure!(sharing["groups"][GROUP] == 2, "{sharing}");
                let node = cp.node_status(node).await?;
                anyhow::ensure!(node["in_sync"] == true, "not in sync: {node}");
                Ok(node["types"]["route"]["acked_version"].clone())
            },
        )
        .await;
        acked_routes.push(acked);
    }
    assert_eq!(
        acked_routes[0], acked_routes[1],
        "both replicas serve the same route table for the same group size"
    );
    for envoy in [&on_first, &on_second] {
        eventually(
            &format!("{} holds half the budget", envoy.node_id()),
            async || {
                let buckets = bucket_sizes(&envoy.config_dump().await?);
                anyhow::ensure!(buckets == BTreeSet::from([half]), "buckets {buckets:?}");
                let active = envoy
                    .stats("listener_manager.total_listeners_active")
                    .await?;
                anyhow::ensure!(active.iter().any(|(_, n)| *n >= 1), "no active listener");
                Ok(())
            },
        )
        .await;
    }
    let admitted = burst(port, "replicas", REQUESTS_PER_ENVOY * 2).await;
    assert_admitted("two Envoys on two replicas", admitted, 2, half);
}
