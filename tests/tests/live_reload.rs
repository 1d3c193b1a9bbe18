//! Live reload: edits to routes.yaml reach Envoy without a restart, whichever way the file
//! is written (in place, by rename, or as a Kubernetes ConfigMap symlink swap); a bad edit
//! is rejected as a whole, keeps the old routes serving and is reported with its line and
//! column; fixing the file recovers.

use tollgate_conformance::{
    eventually, get, reserve_port, ControlPlane, Envoy, RoutesYaml, RunningEnvoy, Upstream,
    UpstreamHandle, WriteStyle,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_follows_edits_written_in_place() {
    envoy_follows_add_change_remove(WriteStyle::InPlace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_follows_edits_renamed_over_the_file() {
    envoy_follows_add_change_remove(WriteStyle::Rename).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_follows_configmap_symlink_swaps() {
    envoy_follows_add_change_remove(WriteStyle::ConfigMapSwap).await;
}

/// Adds a route (and its service), points it at another service, then removes it, checking
/// after each edit that Envoy serves exactly the new routes.
async fn envoy_follows_add_change_remove(style: WriteStyle) {
    let a = Upstream::new("a").spawn().await;
    let b = Upstream::new("b").spawn().await;
    let c = Upstream::new("c").spawn().await;
    let port = reserve_port();
    let base = RoutesYaml::new()
        .listener("public", port)
        .service("svc-a", &a);
    let mut cp = ControlPlane::new().routes(base.clone().route("a", "/a", "svc-a").to_string());
    if style == WriteStyle::ConfigMapSwap {
        cp = cp.configmap();
    }
    let mut cp = cp.start().await;
    let envoy = Envoy::new().control_plane(&cp).start().await;
    eventually("the initial route is served", async || {
        get(port, "/a").await?.expect_upstream("a")?;
        Ok(())
    })
    .await;
    get(port, "/b").await.unwrap().expect_status(404).unwrap();

    // Add a route to a new service.
    cp.write(
        style,
        &base
            .clone()
            .service("svc-b", &b)
            .route("a", "/a", "svc-a")
            .route("b", "/b", "svc-b")
            .to_string(),
    );
    eventually("the added route is served", async || {
        get(port, "/b/1").await?.expect_upstream("b")?;
        Ok(())
    })
    .await;
    assert_every_subscription_answered(&envoy).await;
    get(port, "/a").await.unwrap().expect_upstream("a").unwrap();

    // Change the route to a service that replaces the old one.
    cp.write(
        style,
        &base
            .clone()
            .service("svc-c", &c)
            .route("a", "/a", "svc-a")
            .route("b", "/b", "svc-c")
            .to_string(),
    );
    eventually(
        "the changed route is served by the new service",
        async || {
            get(port, "/b/2").await?.expect_upstream("c")?;
            Ok(())
        },
    )
    .await;
    assert_every_subscription_answered(&envoy).await;
    get(port, "/a").await.unwrap().expect_upstream("a").unwrap();

    // Remove the route.
    cp.write(style, &base.clone().route("a", "/a", "svc-a").to_string());
    eventually("the removed route is no longer served", async || {
        get(port, "/b/3").await?.expect_status(404)?;
        Ok(())
    })
    .await;
    get(port, "/a").await.unwrap().expect_upstream("a").unwrap();
    assert_one_reload_per_edit_at_least(&cp, 3).await;
}

/// Convergence must come from the control plane answering Envoy, not from Envoy giving up
/// on an unanswered subscription and carrying on (which also converges, 15s later).
async fn assert_every_subscription_answered(envoy: &RunningEnvoy) {
    let timeouts = envoy.initial_fetch_timeouts().await.unwrap();
    assert!(
        timeouts.is_empty(),
        "Envoy {} gave up waiting for the control plane's first answer to: {timeouts:?}",
        envoy.node_id()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_added_and_removed_by_an_edit_follow() {
    let a = Upstream::new("a").spawn().await;
    let public = reserve_port();
    let internal = reserve_port();
    let one_listener = RoutesYaml::new()
        .listener("public", public)
        .service("svc-a", &a)
        .route("a", "/a", "svc-a");
    let two_listeners = RoutesYaml::new()
        .listener("public", public)
        .listener("internal", internal)
        .service("svc-a", &a)
        .route("a", "/a", "svc-a");
    let mut cp = ControlPlane::new()
        .routes(one_listener.to_string())
        .start()
        .await;
    let envoy = Envoy::new().control_plane(&cp).start().await;
    eventually("the first listener serves", async || {
        get(public, "/a").await?.expect_upstream("a")?;
        Ok(())
    })
    .await;
    assert!(
        get(internal, "/a").await.is_err(),
        "nothing listens on the second port yet"
    );

    cp.write_by_rename(&two_listeners.to_string());
    eventually("the added listener serves", async || {
        get(internal, "/a").await?.expect_upstream("a")?;
        Ok(())
    })
    .await;
    assert_every_subscription_answered(&envoy).await;
    get(public, "/a")
        .await
        .unwrap()
        .expect_upstream("a")
        .unwrap();

    cp.write_by_rename(&one_listener.to_string());
    eventually("the removed listener stops serving", async || {
        anyhow::ensure!(
            get(internal, "/a").await.is_err(),
            "the removed listener still accepts connections"
        );
        Ok(())
    })
    .await;
    get(public, "/a")
        .await
        .unwrap()
        .expect_upstream("a")
        .unwrap();
}

async fn assert_one_reload_per_edit_at_least(
    cp: &tollgate_conformance::RunningControlPlane,
    edits: usize,
) {
    let ok = cp
        .metric(r#"tollgate_config_reloads_total{result="ok"}"#)
        .await
        .unwrap()
        .expect("tollgate_config_reloads_total{result=\"ok\"} in /metrics");
    assert!(
        ok >= edits as f64,
        "{edits} edits were served but /metrics counts {ok} successful reloads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_edit_keeps_the_old_routes_and_reports_where_it_is() {
    let a = Upstream::new("a").spawn().await;
    let port = reserve_port();
    let good = good_routes(port, &a);
    let mut cp = ControlPlane::new().routes(good.to_string()).start().await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;
    eventually("the initial route is served", async || {
        get(port, "/a").await?.expect_upstream("a")?;
        Ok(())
    })
    .await;
    let version_before = cp.status().await.unwrap()["version"].clone();
    assert!(
        version_before.is_string(),
        "/status version once a config is loaded: {version_before}"
    );

    // A valid new route next to one naming a service that does not exist: the whole edit
    // must be refused, not just the bad route.
    let bad = good
        .clone()
        .route("c", "/c", "svc-a")
        .route("broken", "/broken", "missing")
        .to_string();
    let bad_line = 1 + bad
        .lines()
        .position(|line| line.trim() == "service: missing")
        .expect("the bad line is in the document");
    cp.write_by_rename(&bad);

    let status = eventually("/status reports the failed reload", async || {
        let status = cp.status().await?;
        anyhow::ensure!(
            status["last_reload"]["ok"] == false,
            "last_reload not failed yet: {status}"
        );
        Ok(status)
    })
    .await;
    let errors: Vec<&str> = status["last_reload"]["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("last_reload.errors is a list: {status}"))
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    let located = regex::Regex::new(r"routes\.yaml:(\d+):(\d+): ").unwrap();
    assert!(
        errors.iter().any(|error| {
            error.contains(r#""missing""#)
                && located
                    .captures(error)
                    .is_some_and(|at| at[1] == bad_line.to_string() && &at[2] != "0")
        }),
        "expected an error at routes.yaml:{bad_line}:COL naming service \"missing\", got {errors:?}"
    );
    assert_eq!(
        cp.status().await.unwrap()["version"],
        version_before,
        "a rejected edit must not produce a new snapshot"
    );
    cp.admin_get("/readyz")
        .await
        .unwrap()
        .expect_status(200)
        .expect("still ready: the previous config is being served");
    let errors_counted = cp
        .metric(r#"tollgate_config_reloads_total{result="error"}"#)
        .await
        .unwrap();
    assert!(
        errors_counted.is_some_and(|n| n >= 1.0),
        "tollgate_config_reloads_total{{result=\"error\"}} is {errors_counted:?}"
    );
    get(port, "/a")
        .await
        .unwrap()
        .expect_upstream("a")
        .expect("the old routes keep serving");
    get(port, "/c")
        .await
        .unwrap()
        .expect_status(404)
        .expect("no part of a rejected edit is applied");

    // Fixing the file applies the whole edit.
    cp.write_by_rename(
        &good
            .clone()
            .route("c", "/c", "svc-a")
            .route("broken", "/broken", "svc-a")
            .to_string(),
    );
    eventually("the fixed edit is served", async || {
        get(port, "/broken").await?.expect_upstream("a")?;
        get(port, "/c").await?.expect_upstream("a")?;
        Ok(())
    })
    .await;
    let status = cp.status().await.unwrap();
    assert_eq!(status["last_reload"]["ok"], true, "{status}");
    assert_ne!(status["version"], version_before, "{status}");
}

fn good_routes(port: u16, a: &UpstreamHandle) -> RoutesYaml {
    RoutesYaml::new()
        .listener("public", port)
        .service("svc-a", a)
        .route("a", "/a", "svc-a")
}
