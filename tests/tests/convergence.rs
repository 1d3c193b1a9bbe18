//! Convergence of Envoys on the control plane's state: two Envoys follow the same edit and
//! are reported in sync, an Envoy speaking Delta ADS follows edits like a SotW one, a
//! configuration Envoy refuses is reported (and never half-applied), a control-plane restart
//! under traffic costs no request and leaves Envoy following edits, and neither does an edit
//! that changes a cluster in place or adds one a route then names.

use tollgate_conformance::{
    eventually, get, reserve_port, traffic, ControlPlane, Envoy, RoutesYaml, RunningControlPlane,
    RunningEnvoy, Upstream, XdsVariant,
};

/// The resource types every node is served.
const TYPES: [&str; 4] = ["cluster", "listener", "route", "endpoint"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_envoys_converge_on_an_edit_and_are_reported_in_sync() {
    let a = Upstream::new("a").spawn().await;
    let b = Upstream::new("b").spawn().await;
    // Both Envoys get the same listener; Envoy binds listeners with SO_REUSEPORT on Linux,
    // so both can hold the port and the kernel spreads connections across them.
    let port = reserve_port();
    let base = RoutesYaml::new()
        .listener("public", port)
        .service("svc-a", &a)
        .service("svc-b", &b)
        .route("a", "/a", "svc-a");
    let mut cp = ControlPlane::new().routes(base.to_string()).start().await;
    let envoys = [
        Envoy::new()
            .node_id("node-a")
            .control_plane(&cp)
            .start()
            .await,
        Envoy::new()
            .node_id("node-b")
            .control_plane(&cp)
            .start()
            .await,
    ];
    eventually("the initial route is served", async || {
        get(port, "/a").await?.expect_upstream("a")?;
        Ok(())
    })
    .await;
    let before = eventually("both nodes in sync before the edit", async || {
        nodes_in_sync(&cp, &["node-a", "node-b"]).await
    })
    .await;

    cp.write_by_rename(
        &base
            .clone()
            .route("converged", "/converged", "svc-b")
            .to_string(),
    );

    for envoy in &envoys {
        eventually(
            &format!("{} has the new route in its config", envoy.node_id()),
            async || has_in_config(envoy, "/converged").await,
        )
        .await;
    }
    eventually(
        "every connection, whichever Envoy takes it, routes the edit",
        async || {
            for _ in 0..10 {
                get(port, "/converged/1").await?.expect_upstream("b")?;
            }
            Ok(())
        },
    )
    .await;
    let after = eventually("both nodes in sync after the edit", async || {
        let version = nodes_in_sync(&cp, &["node-a", "node-b"]).await?;
        anyhow::ensure!(
            version != before,
            "/status version still {version} after the edit"
        );
        Ok(version)
    })
    .await;
    assert_ne!(after, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_xds_envoy_follows_edits() {
    let a = Upstream::new("a").spawn().await;
    let b = Upstream::new("b").spawn().await;
    let port = reserve_port();
    let base = RoutesYaml::new()
        .listener("public", port)
        .service("svc-a", &a);
    let mut cp = ControlPlane::new()
        .routes(base.clone().route("a", "/a", "svc-a").to_string())
        .start()
        .await;
    let envoy = Envoy::new()
        .node_id("delta-node")
        .xds_variant(XdsVariant::Delta)
        .control_plane(&cp)
        .start()
        .await;
    eventually("the initial route is served over Delta ADS", async || {
        get(port, "/a").await?.expect_upstream("a")?;
        Ok(())
    })
    .await;

    cp.write_by_rename(
        &base
            .clone()
            .service("svc-b", &b)
            .route("a", "/a", "svc-a")
            .route("b", "/b", "svc-b")
            .to_string(),
    );
    eventually("an added route and service arrive as a delta", async || {
        get(port, "/b").await?.expect_upstream("b")?;
        Ok(())
    })
    .await;
    let timeouts = envoy.initial_fetch_timeouts().await.unwrap();
    assert!(
        timeouts.is_empty(),
        "Envoy gave up waiting for the control plane's first answer to: {timeouts:?}"
    );

    // Removing the service and its route must reach Envoy as removals.
    cp.write_by_rename(&base.clone().route("a", "/a", "svc-a").to_string());
    eventually("a removed route is gone", async || {
        get(port, "/b").await?.expect_status(404)?;
        Ok(())
    })
    .await;
    get(port, "/a").await.unwrap().expect_upstream("a").unwrap();
    eventually("the delta node is in sync", async || {
        nodes_in_sync(&cp, &["delta-node"]).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_restart_under_traffic_loses_no_request() {
    let a = Upstream::new("a").spawn().await;
    let b = Upstream::new("b").spawn().await;
    let port = reserve_port();
    let base = RoutesYaml::new()
        .listener("public", port)
        .service("svc-a", &a)
        .service("svc-b", &b)
        .route("a", "/a", "svc-a");
    let mut cp = ControlPlane::new().routes(base.to_string()).start().await;
    let envoy = Envoy::new()
        .node_id("node-a")
        .control_plane(&cp)
        .start()
        .await;
    eventually("the route is served", async || {
        get(port, "/a").await?.expect_upstream("a")?;
        Ok(())
    })
    .await;

    let load = traffic(port, "/a", "a");
    wait_for_more_requests(&load, 20, "before the restart").await;

    cp.kill();
    wait_for_more_requests(&load, 50, "while the control plane is down").await;

    cp.restart().await;
    eventually("Envoy reconnects and is in sync again", async || {
        nodes_in_sync(&cp, &[envoy.node_id()]).await
    })
    .await;
    wait_for_more_requests(&load, 50, "after the restart").await;

    // The restarted control plane still drives Envoy.
    cp.write_by_rename(&base.clone().route("b", "/b", "svc-b").to_string());
    eventually("an edit after the restart is served", async || {
        get(port, "/b").await?.expect_upstream("b")?;
        Ok(())
    })
    .await;

    load.stop()
        .await
        .assert_every_request_succeeded("the restart");
}

/// A cluster changed in place lets the route table follow it before Envoy has answered the
/// clusters (the control plane no longer waits: Envoy serves the old cluster until the new
/// one warms); a new cluster still goes first and is answered before a route names it.
/// Under traffic, neither may cost a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_changing_a_cluster_in_place_or_adding_one_lose_no_request_sotw() {
    edits_changing_a_cluster_lose_no_request(XdsVariant::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_changing_a_cluster_in_place_or_adding_one_lose_no_request_delta() {
    edits_changing_a_cluster_lose_no_request(XdsVariant::Delta).await;
}

async fn edits_changing_a_cluster_lose_no_request(variant: XdsVariant) {
    let a = Upstream::new("a").spawn().await;
    let port = reserve_port();
    // Edit `k` moves the service's connect timeout and the route's timeout; `moved` sends the
    // route to a second service (a new cluster) on the same upstream.
    let routes = |k: u32, moved: bool| {
        let service = if moved { "svc-a2" } else { "svc-a" };
        format!(
            "version: 1
listeners:
  - {{name: public, address: 127.0.0.1:{port}}}
services:
  svc-a: {{endpoints: [\"{a}\"], connect_timeout: {connect}ms}}
{second}routes:
  - {{name: a, match: {{prefix: /a}}, service: {service}, timeout: {timeout}ms}}
",
            a = a.endpoint(),
            connect = 200 + k,
            timeout = 5_000 + k,
            second = if moved {
                format!("  svc-a2: {{endpoints: [\"{}\"]}}\n", a.endpoint())
            } else {
                String::new()
            },
        )
    };
    let mut cp = ControlPlane::new().routes(routes(0, false)).start().await;
    let envoy = Envoy::new()
        .node_id("edited")
        .xds_variant(variant)
        .control_plane(&cp)
        .start()
        .await;
    let mut version = eventually("Envoy is in sync", async || {
        nodes_in_sync(&cp, &[envoy.node_id()]).await
    })
    .await;
    let load = traffic(port, "/a", "a");
    wait_for_more_requests(&load, 20, "before the edits").await;

    for (k, moved) in [(1, false), (2, false), (3, false), (4, true), (5, true)] {
        cp.write_by_rename(&routes(k, moved));
        let previous = version.clone();
        version = eventually(&format!("Envoy is in sync with edit {k}"), async || {
            let now = nodes_in_sync(&cp, &[envoy.node_id()]).await?;
            anyhow::ensure!(now != previous, "still at {previous}");
            Ok(now)
        })
        .await;
        wait_for_more_requests(&load, 10, &format!("after edit {k}")).await;
    }
    eventually("the route is on the added cluster", async || {
        has_in_config(&envoy, "svc-a2").await
    })
    .await;

    load.stop()
        .await
        .assert_every_request_succeeded(&format!("the edits ({variant:?})"));
}

async fn wait_for_more_requests(load: &tollgate_conformance::Traffic, more: usize, when: &str) {
    let target = load.sent() + more;
    eventually(&format!("{more} requests sent {when}"), async || {
        let sent = load.sent();
        anyhow::ensure!(sent >= target, "{sent} of {target} sent");
        Ok(())
    })
    .await;
}

/// Succeeds with the snapshot version once every node in `ids` is connected, in sync and
/// has no NACK outstanding for any type, according to `/status`.
async fn nodes_in_sync(
    cp: &RunningControlPlane,
    ids: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let status = cp.status().await?;
    anyhow::ensure!(
        status["version"].is_string(),
        "no snapshot version: {status}"
    );
    for id in ids {
        let node = status["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|node| node["id"] == *id))
            .ok_or_else(|| anyhow::anyhow!("node {id} not in /status: {status}"))?;
        anyhow::ensure!(node["connected"] == true, "node {id} not connected: {node}");
        anyhow::ensure!(node["in_sync"] == true, "node {id} not in sync: {node}");
        for kind in TYPES {
            let state = &node["types"][kind];
            anyhow::ensure!(state.is_object(), "node {id} has no {kind} state: {node}");
            anyhow::ensure!(state["nack"].is_null(), "node {id} NACKed {kind}: {node}");
        }
    }
    Ok(status["version"].clone())
}

/// Succeeds once `needle` appears in Envoy's `/config_dump`.
async fn has_in_config(envoy: &RunningEnvoy, needle: &str) -> anyhow::Result<()> {
    let dump = envoy.config_dump().await?.to_string();
    anyhow::ensure!(
        dump.contains(needle),
        "{needle:?} not in the config dump yet"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_envoy_rejects_is_reported_and_the_old_routes_keep_serving() {
    let a = Upstream::new("a").spawn().await;
    let port = reserve_port();
    let base = RoutesYaml::new()
        .listener("public", port)
        .service("svc-a", &a)
        .route("a", "/a", "svc-a");
    let mut cp = ControlPlane::new().routes(base.to_string()).start().await;
    let envoy = Envoy::new()
        .node_id("node-a")
        .control_plane(&cp)
        .start()
        .await;
    eventually("the initial route is served", async || {
        get(port, "/a").await?.expect_upstream("a")?;
        Ok(())
    })
    .await;
    eventually("node in sync before the edit", async || {
        nodes_in_sync(&cp, &["node-a"]).await
    })
    .await;

    // A regex Rust's regex crate accepts and RE2 does not (RE2 knows Unicode scripts and
    // general categories, not binary properties such as Emoji), so Envoy refuses the route
    // configuration unless the control plane catches it first.
    let picky = "/(alpha|bravo)/\\\\p{Emoji}+";
    let yaml = format!(
        "{base}  - name: picky\n    match:\n      regex: \"{picky}\"\n    service: svc-a\n  - name: extra\n    match:\n      prefix: /extra\n    service: svc-a\n"
    );
    cp.write_by_rename(&yaml);

    let outcome = eventually("the rejection shows in /status", async || {
        let status = cp.status().await?;
        if status["last_reload"]["ok"] == false {
            return Ok(format!(
                "refused by the control plane: {}",
                status["last_reload"]
            ));
        }
        let node = cp.node_status("node-a").await?;
        for kind in TYPES {
            if !node["types"][kind]["nack"].is_null() {
                anyhow::ensure!(
                    node["in_sync"] == false,
                    "node with a NACKed {kind} reported in sync: {node}"
                );
                anyhow::ensure!(
                    !node["types"][kind]["nack_version"].is_null(),
                    "NACK without the version it rejected: {node}"
                );
                return Ok(format!("NACKed by Envoy: {node}"));
            }
        }
        anyhow::bail!("neither a failed reload nor a NACK yet: {status}")
    })
    .await;
    eprintln!("{outcome}");
    get(port, "/a")
        .await
        .unwrap()
        .expect_upstream("a")
        .expect("the routes Envoy had keep serving");
    get(port, "/extra")
        .await
        .unwrap()
        .expect_status(404)
        .expect("the rejected configuration is not partly applied");

    // A fixed file is taken by Envoy and clears the NACK.
    cp.write_by_rename(&yaml.replace(picky, "/(alpha|bravo)/[0-9]+"));
    eventually("the fixed configuration is served", async || {
        get(port, "/alpha/42").await?.expect_upstream("a")?;
        get(port, "/extra").await?.expect_upstream("a")?;
        Ok(())
    })
    .await;
    eventually("node in sync again, without a NACK", async || {
        nodes_in_sync(&cp, &["node-a"]).await
    })
    .await;
    let rejected: u64 = envoy
        .stats("update_rejected")
        .await
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert!(
        rejected <= 2,
        "Envoy rejected {rejected} updates: a NACKed version must not be re-sent in a loop \
         (go-control-plane #46, #962)"
    );
}
