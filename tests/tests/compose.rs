//! `docker compose up` runs the `make up` demo from container images (compose/), on a real
//! Docker engine. Ignored by `make test`, which needs no engine: `make test-compose` starts
//! one, builds the images and runs this with `--ignored`.
//!
//! One stack serves the whole scenario, in the order a user meets it: the demo's routes
//! through the published port, a live edit of the routes directory, the control plane stopped
//! and restarted under traffic, Redis killed and started again, every service stopping by
//! itself (Envoy drained), and `down -v` leaving nothing behind.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use tollgate_conformance::compose::{ComposeStack, RunningStack};
use tollgate_conformance::eventually::{eventually, eventually_within};
use tollgate_conformance::http::{self, Response};
use tollgate_conformance::ratelimit::LONGEST_RESET_SECS;
use tollgate_conformance::traffic::traffic_of;

/// The demo's free tier: 10 requests a minute per consumer (compose/routes.yaml).
const FREE_TIER_PER_MINUTE: usize = 10;

/// The promise for a live edit: a new route answers within 5 s. Polled, not timed:
/// the test fails only if the route never answers within this patience.
const EDIT_PATIENCE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine and the images; run by `make test-compose`"]
async fn the_demo_runs_from_containers() {
    let stack = ComposeStack::new()
        .expect("a compose project")
        .start()
        .await
        .expect("every service healthy");

    demo_routes_answer_through_the_published_port(&stack).await;
    a_routes_edit_on_the_host_changes_the_gateway(&stack).await;
    a_control_plane_stop_or_restart_fails_no_request(&stack).await;
    a_dead_redis_fails_open_and_recovers(&stack).await;

    every_service_stops_by_itself_and_envoy_drains(&stack);

    let project = stack.project().to_owned();
    stack.down().expect("compose down");
    drop(stack);
    let left = RunningStack::leftovers(&project).expect("docker answers");
    assert!(left.is_empty(), "down -v left {left:?}");
}

async fn demo_routes_answer_through_the_published_port(stack: &RunningStack) {
    let port = stack.public_port();
    let public = http::get(port, "/api/v1/catalogue/shoes")
        .await
        .expect("public route");
    public.expect_status(200).expect("public route 200");
    public
        .expect_upstream("account-service")
        .expect("routed to the catalogue's service");

    let anonymous = http::get(port, "/api/v1/invoices/42")
        .await
        .expect("protected route");
    anonymous.expect_status(401).expect("no token: 401");
    let challenge = anonymous.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Bearer "), "challenge {challenge:?}");

    let token = stack.token("alice", "free").expect("a demo token");
    let response = invoices(port, &token).await.expect("protected route");
    response.expect_status(200).expect("with a demo token: 200");
    assert_eq!(
        response.upstream_header("x-consumer-id").as_deref(),
        Some("alice"),
        "identity forwarded: {}",
        response.text()
    );
    assert_eq!(
        response.upstream_header("x-consumer-tier").as_deref(),
        Some("free"),
        "tier forwarded: {}",
        response.text()
    );
    the_free_tier_is_limited(stack, "free-tier").await;

    // The partner route takes the demo API key: its consumer upstream, the key not.
    let key = stack.api_key().expect("the demo API key");
    let partner = http::request(port)
        .path("/partner/v1/invoices/42")
        .header("x-api-key", &key)
        .send()
        .await
        .expect("partner route");
    partner
        .expect_status(200)
        .expect("with the demo API key: 200");
    assert_eq!(
        partner.upstream_header("x-consumer-id").as_deref(),
        Some("partner-acme"),
        "identity forwarded: {}",
        partner.text()
    );
    assert_eq!(
        partner.upstream_header("x-api-key"),
        None,
        "the key went upstream"
    );

    let mobile = http::request(stack.mobile_port())
        .path("/mobile/v1/accounts/7")
        .header("authorization", &format!("Bearer {token}"))
        .send()
        .await
        .expect("mobile listener");
    mobile
        .expect_status(200)
        .expect("the mobile listener is published too");

    // The second host name, released as a canary (90/10): over 100 requests both versions
    // answer (the chance that v2 gets none is 0.9^100, about 3 in 100,000).
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let response = http::request(port)
            .path("/")
            .header("host", "shop.localhost")
            .send()
            .await
            .expect("the storefront's host");
        answered.insert(response.upstream().expect("an upstream answered"));
    }
    assert_eq!(
        answered,
        std::collections::BTreeSet::from(["storefront".to_string(), "storefront-v2".to_string()])
    );
}

async fn a_routes_edit_on_the_host_changes_the_gateway(stack: &RunningStack) {
    let port = stack.public_port();
    let original = std::fs::read_to_string(stack.routes_file()).expect("routes.yaml");
    let added = "  - name: added-live\n    listener: public\n    match: {prefix: /added-live}\n    service: account-service\n    rewrite_prefix: /accounts\n\n";
    let edited = original.replacen("routes:\n", &format!("routes:\n{added}"), 1);
    assert_ne!(edited, original, "the demo has a routes: section");
    stack.write_routes(&edited).expect("edit routes.yaml");
    eventually_within(EDIT_PATIENCE, "the added route answers", async || {
        let response = http::get(port, "/added-live/7").await?;
        response
            .expect_status(200)?
            .expect_upstream("account-service")?;
        Ok(())
    })
    .await;

    // A broken edit: a route naming a service that does not exist.
    let broken = edited.replacen(
        "service: account-service\n    rewrite_prefix: /accounts\n\n",
        "service: no-such-service\n    rewrite_prefix: /accounts\n\n",
        1,
    );
    assert_ne!(broken, edited);
    let broken_line = broken
        .lines()
        .position(|line| line.contains("no-such-service"))
        .expect("the broken line")
        + 1;
    stack.write_routes(&broken).expect("edit routes.yaml");
    let refusal = eventually("the control plane refuses the broken edit", async || {
        let logs = stack.logs("control-plane")?;
        match logs.lines().find(|line| line.contains("no-such-service")) {
            Some(line) => Ok(line.to_owned()),
            None => bail!("not refused yet"),
        }
    })
    .await;
    assert!(
        refusal.contains(&format!("routes.yaml:{broken_line}:")),
        "the refusal names routes.yaml:{broken_line}:COL: {refusal}"
    );
    // The last good routes keep answering, the added one included.
    for path in ["/added-live/7", "/api/v1/catalogue/boots"] {
        let response = http::get(port, path).await.expect("gateway answers");
        response
            .expect_status(200)
            .unwrap_or_else(|e| panic!("{path}: {e:#}"));
    }
    stack.write_routes(&original).expect("restore routes.yaml");
}

async fn a_control_plane_stop_or_restart_fails_no_request(stack: &RunningStack) {
    let port = stack.public_port();
    // acme-accounts: protected (a call to ext-authz), one upstream and no rate limit, so a
    // steady stream stays within every quota and names one upstream.
    let token = stack.token("traffic", "premium").expect("a demo token");
    let stream = traffic_of(
        http::request(port)
            .path("/api/v1/accounts/7")
            .header("x-tenant", "acme")
            .header("authorization", &format!("Bearer {token}")),
        "account-service",
    );
    eventually("the stream is under way", async || {
        ensure!(stream.sent() > 0, "no request yet");
        Ok(())
    })
    .await;
    // Stopped: Envoy keeps serving its last config, for as long as the outage lasts.
    stack
        .compose(&["stop", "control-plane"])
        .expect("stop the control plane");
    assert!(
        http::get(stack.admin_port(), "/readyz").await.is_err(),
        "the control plane still answers after stop"
    );
    let sent_when_stopped = stream.sent();
    eventually(
        "requests served while the control plane is down",
        async || {
            ensure!(
                stream.sent() >= sent_when_stopped + 50,
                "{} sent so far",
                stream.sent()
            );
            Ok(())
        },
    )
    .await;
    stack
        .compose(&["start", "control-plane"])
        .expect("start the control plane");
    control_plane_ready(stack).await;
    // And the restart, with the stream still running.
    stack
        .compose(&["restart", "control-plane"])
        .expect("restart");
    control_plane_ready(stack).await;
    let report = stream.stop().await;
    assert!(
        report.sent >= 10,
        "too few requests to mean anything: {}",
        report.sent
    );
    assert!(
        report.failures.is_empty(),
        "{} of {} requests failed across the restart: {:?}",
        report.failures.len(),
        report.sent,
        report.failures
    );
}

async fn control_plane_ready(stack: &RunningStack) {
    eventually("the control plane serves again", async || {
        http::get(stack.admin_port(), "/readyz")
            .await?
            .expect_status(200)?;
        Ok(())
    })
    .await;
}

async fn a_dead_redis_fails_open_and_recovers(stack: &RunningStack) {
    let port = stack.public_port();
    stack.compose(&["kill", "redis"]).expect("kill redis");
    // With Redis gone the limits cannot be counted; the demo's rate_limit sidecar fails
    // open (failure_mode_deny: false), so a consumer gets past its quota.
    let token = stack.token("dora", "free").expect("a demo token");
    for sent in 1..=FREE_TIER_PER_MINUTE + 2 {
        let response = invoices(port, &token).await.expect("protected route");
        response
            .expect_status(200)
            .unwrap_or_else(|e| panic!("request {sent} with Redis dead: {e:#}"));
    }

    stack.compose(&["start", "redis"]).expect("start redis");
    the_free_tier_is_limited(stack, "after-redis").await;
}

/// A fresh free-tier consumer gets 10 requests a minute, then 429 with `retry-after`.
/// Retried with another consumer should a check time out: Envoy waits 50 ms for the
/// rate-limit service and lets the request pass when it does not answer (the demo fails
/// open), which a busy machine can cause once in a while.
async fn the_free_tier_is_limited(stack: &RunningStack, label: &str) {
    let port = stack.public_port();
    let mut attempt = 0;
    eventually_within(
        Duration::from_secs(120),
        "the free tier limited",
        async || {
            attempt += 1;
            let token = stack.token(&format!("{label}-{attempt}"), "free")?;
            let mut statuses = Vec::new();
            let mut over = None;
            for _ in 0..=FREE_TIER_PER_MINUTE {
                let response = invoices(port, &token).await?;
                statuses.push(response.status.as_u16());
                over = Some(response);
            }
            ensure!(
                statuses[..FREE_TIER_PER_MINUTE].iter().all(|s| *s == 200)
                    && statuses[FREE_TIER_PER_MINUTE] == 429,
                "statuses {statuses:?}"
            );
            let retry_after = over.as_ref().and_then(|r| r.header("retry-after"));
            let seconds: u64 = retry_after.and_then(|s| s.parse().ok()).ok_or_else(|| {
                anyhow::anyhow!("429 without retry-after in seconds: {retry_after:?}")
            })?;
            ensure!(
                (1..=LONGEST_RESET_SECS).contains(&seconds),
                "retry-after {seconds}"
            );
            Ok(())
        },
    )
    .await;
}

/// `stop` gives each container 10 s after SIGTERM before it kills it (exit 137): every
/// service must be gone by then, by itself, and Envoy must have drained first.
fn every_service_stops_by_itself_and_envoy_drains(stack: &RunningStack) {
    let started = Instant::now();
    stack
        .compose(&["stop", "--timeout", "10"])
        .expect("compose stop");
    eprintln!("compose stop took {:?}", started.elapsed());
    let codes = stack.exit_codes().expect("docker answers");
    assert!(codes.len() >= 8, "containers {codes:?}");
    let killed: Vec<_> = codes.iter().filter(|(_, code)| *code != 0).collect();
    assert!(killed.is_empty(), "not ended by SIGTERM alone: {killed:?}");
    let envoy = stack.logs("envoy").expect("envoy's logs");
    assert!(
        envoy.contains("envoy-run: draining"),
        "Envoy was stopped without a drain:\n{envoy}"
    );
}

async fn invoices(port: u16, token: &str) -> anyhow::Result<Response> {
    http::request(port)
        .path("/api/v1/invoices/42")
        .header("authorization", &format!("Bearer {token}"))
        .send()
        .await
}
