//! Rate limits through a real Envoy and the real `tollgate-ratelimit` (issue 4): a client
//! over its budget gets 429 with `x-ratelimit-*` and `retry-after` headers and the gateway's
//! JSON body, and the upstream sees exactly the budget; API keys, consumers and tiers each
//! get their own budget; routes without limits are untouched; with Redis holding the
//! counters, an outage fails open or closed as configured and recovery restores the limits,
//! and behind Redis Sentinel a failover fails closed until a replica is promoted, after
//! which the limits hold again with no restart.
//!
//! Every limit here is per minute and sliding (the default algorithm), which never forgets
//! an admitted request sooner than one window after it. A burst of requests therefore
//! starts fresh and must see exactly its budget pass, unless the burst itself outlasted the
//! window; `assert_budget` states exactly that instead of assuming the machine is fast.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_conformance::ratelimit::{
    assert_budget, send_burst, RateLimitService, RunningRateLimitService,
};
use tollgate_conformance::{
    eventually, get, request, reserve_port, ControlPlane, Envoy, ExtAuthz, RunningControlPlane,
    RunningEnvoy, Upstream, UpstreamHandle,
};
use tollgate_testkit::jwt::{self, TestKey};
use tollgate_testkit::redis::{RedisSentinels, RedisServer};

/// How long Envoy waits for the rate-limit service. Longer than the 50 ms default so that a
/// debug build on a busy machine never times out: a timed-out check fails open after the
/// service has already counted it, which would blur every count below.
const SIDECAR_TIMEOUT: &str = "2s";

/// Requests sent past the budget in each burst.
const EXTRA: usize = 3;

// ---------------------------------------------------------------------------------------
// Scenarios sharing one gateway: Envoy, control plane, tollgate-ratelimit (memory store).
// ---------------------------------------------------------------------------------------

/// A gateway with one route per kind of limit, an open route, and each route's own upstream
/// so a test can count exactly what got through where.
struct Gateway {
    port: u16,
    by_ip: UpstreamHandle,
    by_key: UpstreamHandle,
    open: UpstreamHandle,
    envoy: RunningEnvoy,
    _rls: RunningRateLimitService,
    _cp: RunningControlPlane,
}

impl Gateway {
    async fn start() -> Gateway {
        let by_ip = Upstream::new("by-ip").spawn().await;
        let by_key = Upstream::new("by-key").spawn().await;
        let open = Upstream::new("open").spawn().await;
        let port = reserve_port();
        let rls = RateLimitService::new();
        let cp = ControlPlane::new()
            .routes(format!(
                r#"version: 1
listeners:
  - {{name: public, address: "127.0.0.1:{port}"}}
services:
  by-ip: {{endpoints: ["{by_ip}"]}}
  by-key: {{endpoints: ["{by_key}"]}}
  open: {{endpoints: ["{open}"]}}
routes:
  - name: limited
    match: {{prefix: /limited/}}
    service: by-ip
    rate_limit:
      - {{by: client_ip, requests: 5, per: minute}}
  - name: keyed
    match: {{prefix: /keyed/}}
    service: by-key
    rate_limit:
      - {{by: header, header: x-api-key, requests: 3, per: minute}}
  - {{name: open, match: {{prefix: /open/}}, service: open}}
sidecars:
  rate_limit: {{address: "{rls}", timeout: {SIDECAR_TIMEOUT}, failure_mode_deny: false, domain: tollgate}}
"#,
                by_ip = by_ip.endpoint(),
                by_key = by_key.endpoint(),
                open = open.endpoint(),
                rls = rls.grpc_addr(),
            ))
            .start()
            .await;
        let rls = rls.routes_file(cp.routes_path()).start().await;
        let envoy = Envoy::new().control_plane(&cp).start().await;
        // The open route is in the same route configuration as the limited ones; probing it
        // spends no budget.
        eventually("the routes are served", async || {
            get(port, "/open/probe").await?.expect_upstream("open")?;
            Ok(())
        })
        .await;
        Gateway {
            port,
            by_ip,
            by_key,
            open,
            envoy,
            _rls: rls,
            _cp: cp,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_its_limit_a_client_gets_429_with_rate_limit_headers_and_a_json_body() {
    let gw = Gateway::start().await;
    let limited = request(gw.port).path("/limited/orders");
    // The extra requests each claim another client address: the gateway is the edge
    // (use_remote_address), so a forged x-forwarded-for must not buy a fresh budget.
    let burst = send_burst(5 + EXTRA, |i| {
        if i < 5 {
            limited.clone()
        } else {
            limited
                .clone()
                .header("x-forwarded-for", &format!("203.0.113.{i}"))
        }
    })
    .await;
    let passed = assert_budget("client_ip 5/minute", &burst, 5, "by-ip");
    assert_eq!(
        gw.by_ip.requests(),
        passed,
        "the upstream sees exactly the requests that passed"
    );
    if burst.within_window() {
        assert_eq!(passed, 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_api_key_has_its_own_budget_and_requests_without_a_key_are_not_limited_by_it() {
    let gw = Gateway::start().await;
    let keyed = |key: &str| {
        request(gw.port)
            .path("/keyed/items")
            .header("x-api-key", key)
    };

    let alpha = send_burst(3 + EXTRA, |_| keyed("alpha")).await;
    let alpha_passed = assert_budget("x-api-key alpha, 3/minute", &alpha, 3, "by-key");
    let beta = send_burst(3 + EXTRA, |_| keyed("beta")).await;
    let beta_passed = assert_budget(
        "x-api-key beta after alpha's budget is spent",
        &beta,
        3,
        "by-key",
    );

    // No key, no descriptor: Envoy does not even ask the service, so nothing limits these
    // (three budgets' worth) and no rate limit headers are added.
    let stats_before = rate_limit_stats(&gw.envoy).await;
    for i in 0..9 {
        let response = request(gw.port)
            .path("/keyed/items")
            .send()
            .await
            .expect("request");
        response
            .expect_upstream("by-key")
            .unwrap_or_else(|e| panic!("request {i} without x-api-key: {e:#}"));
        assert_eq!(
            response.header("x-ratelimit-limit"),
            None,
            "request {i} without x-api-key was judged by a limit: {:?}",
            response.headers
        );
    }
    assert_eq!(
        rate_limit_stats(&gw.envoy).await,
        stats_before,
        "a request without x-api-key made Envoy consult the rate-limit service"
    );
    assert_eq!(gw.by_key.requests(), alpha_passed + beta_passed + 9);
    if alpha.within_window() && beta.within_window() {
        assert_eq!((alpha_passed, beta_passed), (3, 3));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_without_limits_are_untouched_by_other_routes_limits() {
    let gw = Gateway::start().await;
    let spent = send_burst(5 + 1, |_| request(gw.port).path("/limited/x")).await;
    assert_budget("client_ip 5/minute", &spent, 5, "by-ip");
    let before = gw.open.requests();

    // The same client, its budget on /limited/ spent: the open route neither refuses it
    // nor asks the rate-limit service about it.
    let stats_before = rate_limit_stats(&gw.envoy).await;
    for i in 0..10 {
        let response = get(gw.port, "/open/x").await.expect("request");
        response
            .expect_upstream("open")
            .unwrap_or_else(|e| panic!("open request {i}: {e:#}"));
        assert_eq!(
            response.header("x-ratelimit-limit"),
            None,
            "open request {i} was judged by a limit: {:?}",
            response.headers
        );
    }
    assert_eq!(gw.open.requests(), before + 10);
    let stats_after = rate_limit_stats(&gw.envoy).await;
    assert_eq!(
        stats_before, stats_after,
        "the open route made Envoy consult the rate-limit service"
    );
    // And a limited route with a different key is not affected by the spent client_ip
    // budget of another route either.
    let keyed = send_burst(3, |_| {
        request(gw.port)
            .path("/keyed/x")
            .header("x-api-key", "gamma")
    })
    .await;
    assert_budget("x-api-key gamma", &keyed, 3, "by-key");
}

// ---------------------------------------------------------------------------------------
// Consumers and tiers: ext-authz in front of the rate limit.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_and_tiers_get_their_own_budgets_after_ext_authz() {
    let api = Upstream::new("api").spawn().await;
    let port = reserve_port();
    let authz = ExtAuthz::new();
    let rls = RateLimitService::new();
    let cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - {{name: public, address: "127.0.0.1:{port}"}}
services:
  api: {{endpoints: ["{api}"]}}
auth_providers:
  idp:
    issuer: {issuer}
    audiences: [{audience}]
    jwks_file: jwks.json
    forward_claims: {{tier: x-consumer-tier}}
routes:
  - name: authed
    match: {{prefix: /authed/}}
    service: api
    auth: {{provider: idp}}
  - name: per-consumer
    match: {{prefix: /consumer/}}
    service: api
    auth: {{provider: idp}}
    rate_limit:
      - {{by: consumer, requests: 3, per: minute}}
  - name: tiered
    match: {{prefix: /tiered/}}
    service: api
    auth: {{provider: idp}}
    rate_limit:
      - {{by: consumer, tier_header: x-consumer-tier, tiers: {{free: 2/minute, premium: 5/minute}}}}
sidecars:
  ext_authz: {{address: "{authz}", timeout: 2s}}
  rate_limit: {{address: "{rls}", timeout: {SIDECAR_TIMEOUT}, failure_mode_deny: false, domain: tollgate}}
"#,
            api = api.endpoint(),
            issuer = jwt::ISSUER,
            audience = jwt::AUDIENCE,
            authz = authz.grpc_addr(),
            rls = rls.grpc_addr(),
        ))
        .start()
        .await;
    let key = TestKey::p256("rate-limit-test");
    let _authz = authz
        .routes_file(cp.routes_path())
        .jwks(&jwt::jwks(&[&key]))
        .start()
        .await;
    let _rls = rls.routes_file(cp.routes_path()).start().await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;
    let token = |sub: &str, tier: Option<&str>| {
        let mut claims = jwt::claims();
        claims["sub"] = json!(sub);
        if let Some(tier) = tier {
            claims["tier"] = json!(tier);
        }
        format!("Bearer {}", key.mint(&claims))
    };
    let as_consumer =
        |path: &str, token: &str| request(port).path(path).header("authorization", token);
    eventually("authenticated requests are served", async || {
        as_consumer("/authed/probe", &token("probe", None))
            .send()
            .await?
            .expect_upstream("api")?;
        Ok(())
    })
    .await;

    // Per consumer: alice's spent budget is not bob's. Alice's extra requests forge
    // x-consumer-id: the gateway strips it and ext-authz sets it from the token.
    let before = api.requests();
    let alice_token = token("alice", None);
    let alice = send_burst(3 + EXTRA, |i| {
        let request = as_consumer("/consumer/x", &alice_token);
        if i < 3 {
            request
        } else {
            request.header("x-consumer-id", &format!("not-alice-{i}"))
        }
    })
    .await;
    let alice_passed = assert_budget("consumer alice, 3/minute", &alice, 3, "api");
    let bob_token = token("bob", None);
    let bob = send_burst(3 + EXTRA, |_| as_consumer("/consumer/x", &bob_token)).await;
    let bob_passed = assert_budget("consumer bob after alice's budget is spent", &bob, 3, "api");
    assert_eq!(api.requests() - before, alice_passed + bob_passed);

    // Tiers: each token gets its tier's quota, reported in x-ratelimit-limit.
    let before = api.requests();
    let free_token = token("carol", Some("free"));
    let free = send_burst(2 + EXTRA, |_| as_consumer("/tiered/x", &free_token)).await;
    let free_passed = assert_budget("tier free, 2/minute", &free, 2, "api");
    let premium_token = token("dave", Some("premium"));
    let premium = send_burst(5 + EXTRA, |_| as_consumer("/tiered/x", &premium_token)).await;
    let premium_passed = assert_budget("tier premium, 5/minute", &premium, 5, "api");
    // No tier claim: the strictest tier, even when the client names a tier itself (the
    // gateway strips every header ext-authz fills from a claim).
    let untiered_token = token("erin", None);
    let untiered = send_burst(2 + EXTRA, |_| {
        as_consumer("/tiered/x", &untiered_token).header("x-consumer-tier", "premium")
    })
    .await;
    let untiered_passed = assert_budget(
        "no tier claim (and a forged x-consumer-tier: premium), strictest tier 2/minute",
        &untiered,
        2,
        "api",
    );
    // A tier the rule does not know buys nothing either.
    let unknown_token = token("frank", Some("platinum"));
    let unknown = send_burst(2 + EXTRA, |_| as_consumer("/tiered/x", &unknown_token)).await;
    let unknown_passed = assert_budget(
        "unknown tier platinum, strictest tier 2/minute",
        &unknown,
        2,
        "api",
    );
    assert_eq!(
        api.requests() - before,
        free_passed + premium_passed + untiered_passed + unknown_passed
    );
}

// ---------------------------------------------------------------------------------------
// Redis: an outage fails open or closed as configured, and recovery restores the limits.
// ---------------------------------------------------------------------------------------

fn redis_routes(port: u16, api: &UpstreamHandle, rls: SocketAddr, deny: bool) -> String {
    format!(
        r#"version: 1
listeners:
  - {{name: public, address: "127.0.0.1:{port}"}}
services:
  api: {{endpoints: ["{api}"]}}
routes:
  - name: limited
    match: {{prefix: /limited/}}
    service: api
    rate_limit:
      - {{by: header, header: x-api-key, requests: 3, per: minute}}
  - {{name: open, match: {{prefix: /open/}}, service: api}}
sidecars:
  rate_limit: {{address: "{rls}", timeout: {SIDECAR_TIMEOUT}, failure_mode_deny: {deny}, domain: tollgate}}
"#,
        api = api.endpoint(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_open_or_closed_as_configured_and_recovery_restores_limits() {
    let mut redis = RedisServer::start();
    let api = Upstream::new("api").spawn().await;
    let port = reserve_port();
    let rls = RateLimitService::new();
    let rls_addr = rls.grpc_addr();
    let mut cp = ControlPlane::new()
        .routes(redis_routes(port, &api, rls_addr, false))
        .start()
        .await;
    // Well under the sidecar timeout, so that a failing Redis is the service's UNAVAILABLE
    // (which failure_mode_deny judges) and never Envoy's own timeout.
    let _rls = rls
        .routes_file(cp.routes_path())
        .redis(&redis)
        .redis_timeout(Duration::from_millis(500))
        .start()
        .await;
    let envoy = Envoy::new().control_plane(&cp).start().await;
    eventually("the routes are served", async || {
        get(port, "/open/probe").await?.expect_upstream("api")?;
        Ok(())
    })
    .await;
    let keyed = |key: &str| request(port).path("/limited/x").header("x-api-key", key);

    // Redis up: the limit holds.
    let before = send_burst(3 + 1, |_| keyed("before-outage")).await;
    assert_budget("x-api-key with redis up", &before, 3, "api");

    // Redis down, failure_mode_deny false: every request passes, by Envoy's failure mode
    // (not because the service said yes).
    redis.kill();
    let allowed_before = stat_sum(&envoy, "ratelimit.failure_mode_allowed").await;
    let upstream_before = api.requests();
    for i in 0..6 {
        let response = keyed("during-outage").send().await.expect("request");
        response
            .expect_upstream("api")
            .unwrap_or_else(|e| panic!("request {i} with redis down, failing open: {e:#}"));
    }
    assert_eq!(api.requests(), upstream_before + 6);
    let allowed = stat_sum(&envoy, "ratelimit.failure_mode_allowed").await - allowed_before;
    assert_eq!(
        allowed,
        6,
        "every request passed by failure mode; ratelimit stats: {:?}",
        rate_limit_stats(&envoy).await
    );

    // The same outage with failure_mode_deny true: refused, and the upstream never asked.
    cp.write_by_rename(&redis_routes(port, &api, rls_addr, true));
    eventually("envoy's ratelimit filter denies on failure", async || {
        let dump = envoy.config_dump().await?;
        let filters = active_rate_limit_filters(&dump);
        anyhow::ensure!(
            !filters.is_empty() && filters.iter().all(|f| f["failure_mode_deny"] == true),
            "active ratelimit filters: {filters:?}"
        );
        Ok(())
    })
    .await;
    let upstream_before = api.requests();
    let errors_before = stat_sum(&envoy, "ratelimit.error").await;
    for i in 0..3 {
        let response = keyed("failing-closed").send().await.expect("request");
        assert!(
            response.status.is_server_error(),
            "request {i} with redis down, failing closed: expected 5xx, got {} {:?}",
            response.status,
            response.text()
        );
        // The gateway's own reply, like every other: JSON with the request id.
        let body = response.json().expect("a JSON body");
        assert!(
            body["error"].is_string() && body["request_id"].is_string(),
            "{body}"
        );
    }
    assert_eq!(
        api.requests(),
        upstream_before,
        "a request reached the upstream while failing closed"
    );
    assert_eq!(stat_sum(&envoy, "ratelimit.error").await - errors_before, 3);

    // Redis back on the same port (empty): the service reconnects by itself. While failing
    // closed, a 200 means the service answered from Redis again.
    redis.restart();
    let mut probe = 0;
    eventually("requests pass again once redis is back", async || {
        probe += 1;
        keyed(&format!("recovery-probe-{probe}"))
            .send()
            .await?
            .expect_upstream("api")?;
        Ok(())
    })
    .await;
    let after = send_burst(3 + EXTRA, |_| keyed("after-recovery")).await;
    let passed = assert_budget("x-api-key after redis recovered", &after, 3, "api");
    if after.within_window() {
        assert_eq!(passed, 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_sentinel_failover_limited_routes_fail_closed_then_are_limited_again() {
    /// What a request may take while failing closed: the service answers UNAVAILABLE at
    /// once or within its Redis timeout (500 ms), far below the 2 s sidecar timeout; the
    /// rest is slack for a busy machine.
    const LONGEST_REQUEST: Duration = Duration::from_secs(3);
    /// Sentinel's down-after (1 s) and an election take seconds; this allows for a busy
    /// machine.
    const FAILOVER_PATIENCE: Duration = Duration::from_secs(60);

    let mut redis = RedisSentinels::start(1);
    let api = Upstream::new("api").spawn().await;
    let port = reserve_port();
    let rls = RateLimitService::new();
    let rls_addr = rls.grpc_addr();
    let cp = ControlPlane::new()
        .routes(redis_routes(port, &api, rls_addr, true))
        .start()
        .await;
    let _rls = rls
        .routes_file(cp.routes_path())
        .redis_sentinels(&redis)
        .redis_timeout(Duration::from_millis(500))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;
    eventually("the routes are served", async || {
        get(port, "/open/probe").await?.expect_upstream("api")?;
        Ok(())
    })
    .await;
    let keyed = |key: &str| request(port).path("/limited/x").header("x-api-key", key);
    let before = send_burst(3 + 1, |_| keyed("before-failover")).await;
    assert_budget("x-api-key before the failover", &before, 3, "api");

    // Kill the primary; each request carries a fresh key, so none is over its limit and
    // each is either checked (passes) or fails closed (5xx, by failure_mode_deny).
    let primary = redis.primary();
    redis.kill(primary);
    let killed = Instant::now();
    let (mut refused, mut passed_after_refusal, mut last_refused) = (0, 0, Duration::ZERO);
    let mut upstream_expected = api.requests();
    for i in 0.. {
        let sent = Instant::now();
        let response = keyed(&format!("during-failover-{i}"))
            .send()
            .await
            .expect("request");
        let took = sent.elapsed();
        assert!(took < LONGEST_REQUEST, "request {i} took {took:?}");
        if response.status.is_server_error() {
            refused += 1;
            last_refused = killed.elapsed();
        } else {
            response
                .expect_upstream("api")
                .unwrap_or_else(|e| panic!("request {i}: {e:#}"));
            upstream_expected += 1;
            if refused > 0 {
                passed_after_refusal += 1;
            }
        }
        // Recovered: a few requests in a row checked again after the outage.
        if passed_after_refusal >= 5 {
            break;
        }
        assert!(
            killed.elapsed() < FAILOVER_PATIENCE,
            "no recovery after {FAILOVER_PATIENCE:?}: {refused} refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused > 0, "killing the primary failed no request");
    assert_eq!(
        api.requests(),
        upstream_expected,
        "a request failing closed reached the upstream"
    );
    eprintln!(
        "sentinel failover through envoy: {refused} requests failed closed, the last {last_refused:?} after the kill"
    );

    // After the failover, with no restart: the client over its budget is still refused,
    // and a fresh budget holds exactly.
    let again = keyed("before-failover").send().await.expect("request");
    assert_eq!(again.status, 429, "{:?}", again.text());
    let after = send_burst(3 + EXTRA, |_| keyed("after-failover")).await;
    let passed = assert_budget("x-api-key after the failover", &after, 3, "api");
    if after.within_window() {
        assert_eq!(passed, 3);
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Envoy's rate limit filter counters (`cluster.<service>.ratelimit.*`), sorted.
async fn rate_limit_stats(envoy: &RunningEnvoy) -> Vec<(String, u64)> {
    let mut stats: Vec<(String, u64)> = envoy
        .stats("ratelimit")
        .await
        .expect("envoy /stats")
        .into_iter()
        .filter(|(name, _)| name.contains(".ratelimit."))
        .collect();
    stats.sort();
    stats
}

/// The sum of the rate limit counters whose names end with `suffix`.
async fn stat_sum(envoy: &RunningEnvoy, suffix: &str) -> u64 {
    rate_limit_stats(envoy)
        .await
        .iter()
        .filter(|(name, _)| name.ends_with(suffix))
        .map(|(_, value)| value)
        .sum()
}

/// The typed configs of the ratelimit HTTP filters in Envoy's active listeners.
fn active_rate_limit_filters(dump: &Value) -> Vec<Value> {
    let listeners = dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|config| config["dynamic_listeners"].as_array().into_iter().flatten());
    listeners
        .flat_map(|listener| {
            listener["active_state"]["listener"]["filter_chains"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .flat_map(|chain| chain["filters"].as_array().into_iter().flatten())
        .flat_map(|filter| {
            filter["typed_config"]["http_filters"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .filter(|filter| filter["name"] == "envoy.filters.http.ratelimit")
        .map(|filter| filter["typed_config"].clone())
        .collect()
}
