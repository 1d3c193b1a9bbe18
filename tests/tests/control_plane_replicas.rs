//! Several control-plane replicas (issue 21, in part): an Envoy bootstrapped with every
//! replica (`tollgate-control-plane bootstrap --xds-addr A --xds-addr B`) keeps serving when
//! the replica it is connected to dies, moves its stream to the other, and takes later edits
//! from there; `/status` of the replica it moved to shows it. With every replica gone it
//! keeps serving its last configuration, and when one returns it resyncs without replacing,
//! draining or removing a listener or a cluster. Replicas serve byte-identical resources
//! under identical versions, so an Envoy that moves is sent nothing it already holds.

use std::time::Instant;

use tollgate_conformance::replicas::{first_holds_stream, stream_moves_to};
use tollgate_conformance::routes_yaml::{added_route_arrives, app_then_added};
use tollgate_conformance::{
    eventually, get, reserve_port, traffic, ControlPlane, Envoy, RunningControlPlane, RunningEnvoy,
    Upstream, UpstreamHandle, XdsVariant,
};

const NODE: &str = "edge-replicas";

/// Two control-plane replicas serving one routes.yaml in front of two upstreams: everything
/// goes to `app` until the edit that sends `/added/` to `other`.
struct Replicas {
    app: UpstreamHandle,
    other: UpstreamHandle,
    port: u16,
    first: RunningControlPlane,
    second: RunningControlPlane,
}

impl Replicas {
    async fn start(added: bool) -> Replicas {
        let app = Upstream::new("app").spawn().await;
        let other = Upstream::new("other").spawn().await;
        let port = reserve_port();
        let first = ControlPlane::new()
            .routes(app_then_added(port, &app, &other, added))
            .start()
            .await;
        let second = first.replica().await;
        Replicas {
            app,
            other,
            port,
            first,
            second,
        }
    }

    /// An Envoy bootstrapped with both replicas (the first listed first), once it serves.
    async fn envoy(&self, variant: XdsVariant) -> RunningEnvoy {
        let envoy = Envoy::new()
            .node_id(NODE)
            .xds_variant(variant)
            .control_planes(&[&self.first, &self.second])
            .start()
            .await;
        eventually("the gateway serves", async || {
            get(self.port, "/").await?.expect_upstream("app")?;
            Ok(())
        })
        .await;
        envoy
    }

    /// The routes with `/added/` sent to `other`.
    fn edited(&self) -> String {
        app_then_added(self.port, &self.app, &self.other, true)
    }
}

/// The two replicas, the one holding the node's stream first, once one alone does.
async fn holder_first<'a>(
    first: &'a mut RunningControlPlane,
    second: &'a mut RunningControlPlane,
) -> (&'a mut RunningControlPlane, &'a mut RunningControlPlane) {
    if first_holds_stream(first, second, NODE).await {
        (first, second)
    } else {
        (second, first)
    }
}

/// Writes `edited` (which sends `/added/` to `other`) on `live`, and waits until Envoy on
/// `port` routes by it.
async fn edit_arrives_through(live: &mut RunningControlPlane, edited: &str, port: u16) {
    live.write_by_rename(edited);
    added_route_arrives(port, "the edit reaches Envoy through the live replica").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_moves_to_a_live_replica_without_failing_a_request_and_takes_edits_from_it() {
    let mut replicas = Replicas::start(false).await;
    let _envoy = replicas.envoy(XdsVariant::Sotw).await;
    let edited = replicas.edited();
    let Replicas {
        port,
        first,
        second,
        ..
    } = &mut replicas;
    let port = *port;
    // Kill whichever replica holds the stream; the other must take it over.
    let (dead, live) = holder_first(first, second).await;

    let stream = traffic(port, "/steady", "app");
    let killed = Instant::now();
    dead.kill();
    stream_moves_to(live, NODE).await;
    eprintln!(
        "the node reconnected to the live replica {:?} after the kill",
        killed.elapsed()
    );
    // An edit now reaches Envoy through the live replica.
    edit_arrives_through(live, &edited, port).await;
    let report = stream.stop().await;
    assert!(report.sent > 0, "no traffic was sent");
    assert!(
        report.failures.is_empty(),
        "{} of {} requests failed while a replica died: {:?}",
        report.failures.len(),
        report.sent,
        report.failures
    );
}

/// Envoy's counts of CDS, LDS and RDS responses applied.
async fn updates(envoy: &RunningEnvoy) -> Vec<(String, u64)> {
    let mut counters = envoy
        .stats("^(cluster_manager\\.cds|listener_manager\\.lds|http\\..*\\.rds\\..*)\\.update_success$")
        .await
        .expect("Envoy stats");
    counters.sort();
    counters
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_identical_versions_so_an_envoy_that_moves_is_sent_nothing_again() {
    let mut replicas = Replicas::start(false).await;
    let envoy = replicas.envoy(XdsVariant::Sotw).await;
    let edited = replicas.edited();
    let Replicas {
        port,
        first,
        second,
        ..
    } = &mut replicas;
    let port = *port;
    // The listener's access log is a JSON `Struct` of 17 fields: a protobuf map, which each
    // process would order its own way without the canonical encoding.
    let version =
        async |cp: &RunningControlPlane| cp.status().await.expect("status")["version"].clone();
    let (a, b) = (version(first).await, version(second).await);
    assert!(a.is_string(), "no version served: {a}");
    assert_eq!(
        a, b,
        "the replicas serve different versions of one routes.yaml"
    );

    let (dead, live) = holder_first(first, second).await;
    let before = updates(&envoy).await;
    dead.kill();
    stream_moves_to(live, NODE).await;
    // The edit changes the route table only; responses on one stream arrive in order, so
    // once it applies, any resend at the reconnect has been counted too.
    edit_arrives_through(live, &edited, port).await;
    let after = updates(&envoy).await;
    let grown: Vec<(&String, u64)> = before
        .iter()
        .zip(&after)
        .filter(|((_, then), (_, now))| now > then)
        .map(|((name, then), (_, now))| (name, now - then))
        .collect();
    assert_eq!(before.len(), after.len(), "{before:?} then {after:?}");
    assert!(
        grown.len() == 1 && grown[0].0.contains(".rds.") && grown[0].1 == 1,
        "only the edited route table should have been sent after the move: {grown:?}"
    );
}

async fn outage_then_resync(variant: XdsVariant) {
    let mut replicas = Replicas::start(false).await;
    let envoy = replicas.envoy(variant).await;
    let edited = replicas.edited();
    let Replicas {
        port,
        first,
        second,
        ..
    } = &mut replicas;
    let port = *port;
    eventually("the node is in sync", async || {
        let on = if first.holds_stream_of(NODE).await {
            &*first
        } else {
            &*second
        };
        let node = on.node_status(NODE).await?;
        anyhow::ensure!(node["in_sync"] == true, "{node}");
        Ok(())
    })
    .await;
    let before = envoy.churn().await;
    assert_eq!(before.len(), 5, "{before:?}");

    // Every control plane gone: the gateway serves on what it has.
    let stream = traffic(port, "/steady", "app");
    first.kill();
    second.kill();
    while stream.sent() < 100 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // One returns: Envoy reconnects and resyncs, and nothing it holds is replaced.
    first.restart().await;
    eventually("the node reconnects and is in sync", async || {
        let node = first.node_status(NODE).await?;
        anyhow::ensure!(
            node["connected"] == true && node["in_sync"] == true,
            "{node}"
        );
        Ok(())
    })
    .await;
    assert_eq!(
        envoy.churn().await,
        before,
        "the resync replaced or removed something"
    );
    let report = stream.stop().await;
    assert!(
        report.failures.is_empty(),
        "{} of {} requests failed during the outage: {:?}",
        report.failures.len(),
        report.sent,
        report.failures
    );
    // And an edit after the outage reaches Envoy.
    first.write_by_rename(&edited);
    added_route_arrives(port, "the edit reaches Envoy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_replica_gone_envoy_serves_on_and_resyncs_without_churn_sotw() {
    outage_then_resync(XdsVariant::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_replica_gone_envoy_serves_on_and_resyncs_without_churn_delta() {
    outage_then_resync(XdsVariant::Delta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_starting_while_a_replica_is_down_gets_its_config_from_the_other() {
    let mut replicas = Replicas::start(true).await;
    // The first replica listed, and so the first tried, is the one that is down.
    replicas.first.kill();
    let _envoy = replicas.envoy(XdsVariant::Sotw).await;
    get(replicas.port, "/added/x")
        .await
        .expect("a request")
        .expect_upstream("other")
        .expect("the config from the live replica");
    assert!(
        replicas.second.holds_stream_of(NODE).await,
        "the live replica serves the node"
    );
}
