//! Several control-plane replicas (issue 21, in part): an Envoy bootstrapped with every
//! replica (`tollgate-control-plane bootstrap --xds-addr A --xds-addr B`) keeps serving when
//! the replica it is connected to dies, moves its stream to the other, and takes later edits
//! from there; `/status` of the replica it moved to shows it.

use std::time::Instant;

use tollgate_conformance::{
    eventually, get, reserve_port, traffic, ControlPlane, Envoy, RunningControlPlane, Upstream,
    UpstreamHandle,
};

const NODE: &str = "edge-replicas";

/// Everything to `app`; with `added`, `/added/` to `other` first.
fn routes(port: u16, app: &UpstreamHandle, other: &UpstreamHandle, added: bool) -> String {
    let extra = if added {
        "  - {name: added, match: {prefix: /added/}, service: other}\n"
    } else {
        ""
    };
    format!(
        "version: 1
listeners:
  - {{name: public, address: \"127.0.0.1:{port}\"}}
services:
  app: {{endpoints: [\"{app}\"]}}
  other: {{endpoints: [\"{other}\"]}}
routes:
{extra}  - {{name: all, match: {{prefix: /}}, service: app}}
",
        app = app.endpoint(),
        other = other.endpoint(),
    )
}

/// Whether `cp`'s `/status` shows the node with an open stream.
async fn serves_node(cp: &RunningControlPlane) -> bool {
    cp.node_status(NODE)
        .await
        .is_ok_and(|node| node["connected"] == true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_moves_to_a_live_replica_without_failing_a_request_and_takes_edits_from_it() {
    let app = Upstream::new("app").spawn().await;
    let other = Upstream::new("other").spawn().await;
    let port = reserve_port();
    let mut first = ControlPlane::new()
        .routes(routes(port, &app, &other, false))
        .start()
        .await;
    let mut second = first.replica().await;
    let _envoy = Envoy::new()
        .node_id(NODE)
        .control_planes(&[&first, &second])
        .start()
        .await;
    eventually("the gateway serves", async || {
        get(port, "/added/x").await?.expect_upstream("app")?;
        Ok(())
    })
    .await;
    // Kill whichever replica holds the stream; the other must take it over.
    let on_first = eventually("one replica holds the node's stream", async || {
        match (serves_node(&first).await, serves_node(&second).await) {
            (true, false) => Ok(true),
            (false, true) => Ok(false),
            both => anyhow::bail!("connected to first, second: {both:?}"),
        }
    })
    .await;
    let (dead, live) = if on_first {
        (&mut first, &mut second)
    } else {
        (&mut second, &mut first)
    };

    let stream = traffic(port, "/steady", "app");
    let killed = Instant::now();
    dead.kill();
    eventually("the node's stream moves to the live replica", async || {
        anyhow::ensure!(serves_node(live).await, "not yet");
        Ok(())
    })
    .await;
    eprintln!(
        "the node reconnected to the live replica {:?} after the kill",
        killed.elapsed()
    );
    // An edit now reaches Envoy through the live replica.
    live.write_by_rename(&routes(port, &app, &other, true));
    eventually(
        "the edit reaches Envoy through the live replica",
        async || {
            get(port, "/added/x").await?.expect_upstream("other")?;
            Ok(())
        },
    )
    .await;
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
