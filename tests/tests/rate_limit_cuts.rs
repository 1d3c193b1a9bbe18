//! Rate limiting across network cuts (issue 21): a rate-limit replica, and the Redis
//! primary behind Sentinel, each on a host of its own (a network namespace) that a cut drops
//! every packet to and from ([`NetworkNamespace::cut`]): nothing is refused or reset, so
//! Envoy, the service and the sentinels learn of the loss only from their timeouts and
//! health checks, as across real hosts. Requests flow through the Envoy all along, and each
//! is accounted for: admitted, refused over its limit, or failed as `failure_mode_deny`
//! says; afterwards a fresh budget admits exactly its limit.
//!
//! Like `network_cuts.rs`, these need root, so `cargo test` skips them (`#[ignore]`) and
//! `make test-netcut` runs them with `--ignored`.

use std::time::{Duration, Instant};

use tollgate_conformance::ratelimit::{
    assert_budget, send_burst, RateLimitService, RunningRateLimitService,
};
use tollgate_conformance::replica_cut::SidecarReplicaCut;
use tollgate_conformance::{
    eventually, get, request, reserve_port, traffic::traffic_of, ControlPlane, Envoy,
    NetworkNamespace, RunningEnvoy, Upstream, UpstreamHandle,
};
use tollgate_testkit::redis::{RedisSentinels, RedisServer};

/// The budget of the `limited` route, per minute and per `x-api-key`.
const BUDGET: u64 = 5;

/// Requests sent past the budget in each burst.
const EXTRA: usize = 3;

/// The rate-limit sidecar's call timeout in routes.yaml.
const SIDECAR_TIMEOUT: Duration = Duration::from_secs(1);

/// A route whose limit the steady traffic never reaches, so that every request of it is
/// checked and none is refused for being over; and a route with a small budget, where
/// exactness is judged. Both go to `api`.
fn routes(port: u16, api: &UpstreamHandle, replicas: &[std::net::SocketAddr]) -> String {
    let addresses: Vec<String> = replicas.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"version: 1
listeners:
  - {{name: public, address: "127.0.0.1:{port}"}}
services:
  api: {{endpoints: ["{api}"]}}
routes:
  - name: steady
    match: {{prefix: /steady/}}
    service: api
    rate_limit:
      - {{by: header, header: x-api-key, requests: 1000000, per: minute}}
  - name: limited
    match: {{prefix: /limited/}}
    service: api
    rate_limit:
      - {{by: header, header: x-api-key, requests: {BUDGET}, per: minute}}
sidecars:
  rate_limit: {{address: [{addresses}], timeout: {timeout}ms, failure_mode_deny: true, domain: tollgate}}
"#,
        api = api.endpoint(),
        addresses = addresses.join(", "),
        timeout = SIDECAR_TIMEOUT.as_millis(),
    )
}

/// Sends `BUDGET + EXTRA` requests on `/limited/` with the fresh key `key` and checks that
/// exactly the budget passed (when the burst fit in the window).
async fn exactly_the_budget(port: u16, key: &str, what: &str) {
    let burst = send_burst(BUDGET as usize + EXTRA, |_| {
        request(port).path("/limited/x").header("x-api-key", key)
    })
    .await;
    let passed = assert_budget(what, &burst, BUDGET, "api");
    if burst.within_window() {
        assert_eq!(passed, BUDGET as usize, "{what}");
    }
}

/// The sum of Envoy's counters whose names match the RE2 `filter`.
async fn stat(envoy: &RunningEnvoy, filter: &str) -> u64 {
    envoy
        .stats(filter)
        .await
        .expect("Envoy stats")
        .iter()
        .map(|(_, value)| value)
        .sum()
}

/// Each try's timeout with several replicas: half the call's (see `network_cuts.rs`).
const PER_TRY_TIMEOUT: Duration = Duration::from_millis(500);

/// How long the traffic runs after the cut: past outlier detection's 5 s ejection, so that
/// a replica ejected but not yet marked unhealthy would be seen getting calls again.
const REPLICA_CUT_HELD: Duration = Duration::from_secs(8);

/// How many requests may wait out a try's timeout on the cut-off replica: outlier detection
/// ejects it after two tries in a row time out (`consecutive_5xx: 2`), and the sequential
/// traffic has one request in flight at a time; one more because Envoy ejects on its main
/// thread and the worker learns of it a moment later, in which it may pick the replica
/// again (seen with ext-authz on a loaded machine). Health checks alone would take 2-3 s,
/// in which one request in three (round robin over three replicas) waits the 500 ms out.
const MOST_DELAYED: usize = 3;

/// The service's wait for Redis: well under a try's timeout, so that a Redis that fails
/// is the service's UNAVAILABLE, never Envoy's timeout.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and network namespaces: make test-netcut"]
async fn a_rate_limit_replica_cut_off_under_load_fails_no_request_is_ejected_and_the_limit_stays_exact(
) {
    // Declared first, dropped last: every process in them dies before they go.
    let namespaces: [NetworkNamespace; 3] = std::array::from_fn(|_| NetworkNamespace::create());
    let redis = RedisServer::start_reachable_from(&namespaces.each_ref().map(|ns| ns.host()));
    let api = Upstream::new("api").spawn().await;
    let port = reserve_port();
    let builders = namespaces.each_ref().map(RateLimitService::in_namespace);
    let addrs = builders.each_ref().map(RateLimitService::grpc_addr);
    let cp = ControlPlane::new()
        .routes(routes(port, &api, &addrs))
        .start()
        .await;
    let mut replicas: Vec<RunningRateLimitService> = Vec::new();
    for builder in builders {
        replicas.push(
            builder
                .routes_file(cp.routes_path())
                .redis(&redis)
                .redis_timeout(REDIS_TIMEOUT)
                .start()
                .await,
        );
    }
    let envoy = Envoy::new().control_plane(&cp).start().await;
    let steady = || {
        request(port)
            .path("/steady/x")
            .header("x-api-key", "steady")
    };
    eventually("every replica is healthy and decides", async || {
        steady().send().await?.expect_upstream("api")?;
        for (address, replica) in addrs.iter().zip(&replicas) {
            let flags = envoy.health_flags("tollgate_ratelimit", *address).await;
            anyhow::ensure!(flags == "healthy", "{address}: {flags}");
            anyhow::ensure!(replica.hits().await? > 0.0, "{address} decided nothing yet");
        }
        Ok(())
    })
    .await;

    let stream = traffic_of(steady(), "api");
    let cut_addr = addrs[0];
    SidecarReplicaCut {
        envoy: &envoy,
        cluster: "tollgate_ratelimit",
        replica: cut_addr,
        held: REPLICA_CUT_HELD,
        per_try_timeout: PER_TRY_TIMEOUT,
        timeout: SIDECAR_TIMEOUT,
        most_delayed: MOST_DELAYED,
    }
    .cut(&namespaces[0], stream)
    .await;

    // The two replicas left count in the one Redis: a fresh budget admits exactly its
    // limit, decided by both.
    let live = &replicas[1..];
    let mut before = Vec::new();
    for replica in live {
        before.push(replica.hits().await.expect("metrics"));
    }
    exactly_the_budget(port, "after-the-cut", "a fresh budget after the cut").await;
    for (replica, before) in live.iter().zip(before) {
        let after = replica.hits().await.expect("metrics");
        assert!(
            after > before,
            "{} decided none of the burst: the limit was not judged across both replicas",
            replica.grpc_addr()
        );
    }
}

/// How long the test waits for the sentinels to promote the replica and the service to
/// follow: seconds, with `down-after-milliseconds 1000`; this allows for a busy machine.
const FAILOVER_PATIENCE: Duration = Duration::from_secs(60);

/// Requests on the steady route that must pass in a row once the window is over.
const RECOVERED_AFTER: usize = 50;

/// The sentinels and the replica stay on this host, where they still see each other and
/// the service: the cut takes the primary's host away from all of them at once, which is
/// what losing that host does (the sentinels each on a host of their own would add nothing
/// here, as they all lose the primary alike; a partition that leaves some of them with the
/// primary is another test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and network namespaces: make test-netcut"]
async fn with_the_redis_primary_cut_off_limited_routes_fail_closed_until_the_sentinels_promote_its_replica(
) {
    let primary_ns = NetworkNamespace::create();
    let redis = RedisSentinels::start_with_primary_in(&primary_ns.host(), 1);
    let api = Upstream::new("api").spawn().await;
    let port = reserve_port();
    let rls = RateLimitService::new();
    let cp = ControlPlane::new()
        .routes(routes(port, &api, &[rls.grpc_addr()]))
        .start()
        .await;
    let _rls = rls
        .routes_file(cp.routes_path())
        .redis_sentinels(&redis)
        .redis_timeout(REDIS_TIMEOUT)
        .start()
        .await;
    let envoy = Envoy::new().control_plane(&cp).start().await;
    eventually("the routes are served", async || {
        get(port, "/steady/probe").await?.expect_upstream("api")?;
        Ok(())
    })
    .await;
    exactly_the_budget(port, "before-the-cut", "a budget before the cut").await;

    let steady = || {
        request(port)
            .path("/steady/x")
            .header("x-api-key", "steady")
    };
    let stream = traffic_of(steady(), "api");
    let old = redis.primary();
    let errors_before = stat(&envoy, "\\.ratelimit\\.error$").await;
    let cut = Instant::now();
    primary_ns.cut();
    let promoted = tokio::task::block_in_place(|| redis.wait_for_new_primary(old));
    let promoted_after = cut.elapsed();
    eprintln!(
        "the sentinels promoted {} {promoted_after:?} after the cut",
        redis.servers()[promoted].addr()
    );
    // Recovered: the last RECOVERED_AFTER requests all passed, after some failed.
    let since = stream.sent();
    eventually_recovered(&stream, since).await;
    let report = stream.stop().await;
    let errors = stat(&envoy, "\\.ratelimit\\.error$").await - errors_before;

    let failed: Vec<_> = report.requests.iter().filter(|sent| !sent.ok).collect();
    let statuses: std::collections::BTreeSet<Option<u16>> =
        failed.iter().map(|sent| sent.status).collect();
    let (first, last) = (
        failed.first().map(|sent| sent.at - cut),
        failed.last().map(|sent| sent.at + sent.took - cut),
    );
    let slowest = report.requests.iter().map(|sent| sent.took).max();
    eprintln!(
        "{} requests around the cut: {} failed closed ({statuses:?}), the first sent {first:?} \
         and the last answered {last:?} after the cut; slowest {slowest:?}; Envoy counted \
         {errors} rate limit service errors",
        report.sent,
        failed.len(),
    );
    assert!(
        !failed.is_empty(),
        "cutting the primary off failed no request"
    );
    // Each failure is the configured one: a 5xx because the service said it could not
    // decide (Envoy counts it as a rate limit service error), not a refusal, a hang or a
    // lost request.
    assert!(
        statuses
            .iter()
            .all(|status| status.is_some_and(|s| s >= 500)),
        "requests failed otherwise than closed: {statuses:?}; {:?}",
        report.failures
    );
    assert_eq!(
        errors,
        failed.len() as u64,
        "every failed request should be a rate limit service error, and only those"
    );
    assert!(
        slowest < Some(SIDECAR_TIMEOUT),
        "a request waited out the check's {SIDECAR_TIMEOUT:?} timeout: slowest {slowest:?}"
    );

    // After the failover, with no restart: the client over its budget is still refused,
    // and a fresh budget holds exactly.
    let again = request(port)
        .path("/limited/x")
        .header("x-api-key", "before-the-cut")
        .send()
        .await
        .expect("a request");
    assert_eq!(again.status, 429, "{:?}", again.text());
    exactly_the_budget(
        port,
        "after-the-failover",
        "a fresh budget after the failover",
    )
    .await;
}

/// Waits until the last [`RECOVERED_AFTER`] requests of `stream` passed, counting only
/// those sent after the first `since`.
async fn eventually_recovered(stream: &tollgate_conformance::Traffic, since: usize) {
    tollgate_conformance::eventually_within(
        FAILOVER_PATIENCE,
        "limited routes are checked again",
        async || {
            let passing = stream.passing_in_a_row();
            anyhow::ensure!(
                stream.sent() >= since + RECOVERED_AFTER && passing >= RECOVERED_AFTER,
                "{passing} in a row passed"
            );
            Ok(())
        },
    )
    .await;
}
