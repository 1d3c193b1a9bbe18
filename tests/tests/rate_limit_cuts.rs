//! Rate limiting across network cuts (issue 21): a rate-limit replica, and the Redis
//! primary behind Sentinel, each on a host of its own (a network namespace) that a cut drops
//! every packet to and from ([`NetworkNamespace::cut`]); and a partition between two such
//! hosts that leaves the Redis primary with a minority of the sentinels while the service
//! still reaches both sides ([`NetworkNamespace::link_to`]); and a Redis Cluster primary
//! cut off from the other nodes and the service. Nothing is refused or reset, so
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
use tollgate_testkit::redis::{RedisCluster, RedisSentinels, RedisServer};

/// The budget of the `limited` route, per minute and per `x-api-key`.
const BUDGET: u64 = 5;

/// Requests sent past the budget in each burst.
const EXTRA: usize = 3;

/// The rate-limit sidecar's call timeout in routes.yaml.
const SIDECAR_TIMEOUT: Duration = Duration::from_secs(1);

/// A budget per hour, spent across a partition: a test that takes tens of seconds on a
/// busy machine stays well within one window, so every hit it made still counts at its end.
const HOURLY_BUDGET: usize = 6;

/// A route whose limit the steady traffic never reaches, so that every request of it is
/// checked and none is refused for being over; and routes with a small budget, where
/// exactness is judged. All go to `api`.
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
  - name: hourly
    match: {{prefix: /hourly/}}
    service: api
    rate_limit:
      - {{by: header, header: x-api-key, requests: {HOURLY_BUDGET}, per: hour}}
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

/// Of [`HOURLY_BUDGET`], what is spent before the partition (and replicated); the rest is
/// spent while it lasts, on whichever primary the service then writes to.
const SPENT_BEFORE_THE_PARTITION: usize = 2;

/// The partition Sentinel's quorum exists for, with the service in the worst place: the
/// primary and one sentinel on one side, two replicas and two sentinels on the other, and
/// the service still reaching both (it runs here, each side in a namespace of its own, the
/// two joined by a link of their own that the test cuts). The majority promotes a replica;
/// the sentinel on the minority side cannot agree to anything, so it goes on naming the old
/// primary, which still says `ROLE` master. That sentinel is listed first, as a client that
/// takes the first answer would ask it first: the service must follow the majority's newer
/// configuration (the higher config epoch) instead, or its increments land on the old
/// primary and are lost when the partition heals and the old primary is demoted. A service
/// that reaches only the majority side is the primary cut above, where the minority's
/// answer never arrives, so it would not test this.
///
/// The servers refuse writes with no replica acknowledging within a few seconds
/// (`min-replicas-to-write 1`, what docs/operations.md advises): that bounds what the old
/// primary takes after the cut, and is the window during which limited routes fail closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and network namespaces: make test-netcut"]
async fn a_partition_leaving_the_primary_with_a_minority_of_sentinels_moves_the_service_to_the_majority_s_primary(
) {
    // Declared first, dropped last: every process in them dies before they go.
    let minority = NetworkNamespace::create();
    let majority = NetworkNamespace::create();
    let link = minority.link_to(&majority);
    let redis = RedisSentinels::start_split(&minority.host(), &majority.host());
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
    let hourly = || {
        request(port)
            .path("/hourly/x")
            .header("x-api-key", "across-the-partition")
    };
    let admitted = hourly_burst(hourly, SPENT_BEFORE_THE_PARTITION).await;
    assert_eq!(admitted, SPENT_BEFORE_THE_PARTITION, "before the partition");
    let old = redis.primary();
    // What was spent is on the replicas, so no failover can lose it.
    tokio::task::block_in_place(|| redis.wait_until_replicated());

    let steady = || {
        request(port)
            .path("/steady/x")
            .header("x-api-key", "steady")
    };
    let stream = traffic_of(steady(), "api");
    let errors_before = stat(&envoy, "\\.ratelimit\\.error$").await;
    let cut = Instant::now();
    link.cut();
    // The sentinels on the majority side (the second and third listed) promote a replica.
    let promoted = tokio::task::block_in_place(|| redis.wait_for_promotion_by(&[1, 2], old));
    let promoted_after = cut.elapsed();
    // Until the service checks on the promoted replica, its increments go to the old
    // primary (while that still takes them) and are lost with it.
    let new_primary = &redis.servers()[promoted];
    tollgate_conformance::eventually_within(
        FAILOVER_PATIENCE,
        "the service checks on the promoted replica",
        async || {
            let calls = script_calls(new_primary);
            anyhow::ensure!(calls > 0, "no EVALSHA there yet");
            Ok(())
        },
    )
    .await;
    let moved_after = cut.elapsed();
    let since = stream.sent();
    eventually_recovered(&stream, since).await;
    let recovered_after = cut.elapsed();
    let report = stream.stop().await;
    let errors = stat(&envoy, "\\.ratelimit\\.error$").await - errors_before;
    // The risk was live all along: the old primary still took itself for one, and the
    // service could reach it.
    let old_role = redis.servers()[old].info("replication");
    assert!(
        old_role.contains("role:master"),
        "the old primary was demoted during the partition, which tests nothing:\n{old_role}"
    );

    let failed: Vec<_> = report.requests.iter().filter(|sent| !sent.ok).collect();
    let statuses: std::collections::BTreeSet<Option<u16>> =
        failed.iter().map(|sent| sent.status).collect();
    let (first, last) = (
        failed.first().map(|sent| sent.at - cut),
        failed.last().map(|sent| sent.at + sent.took - cut),
    );
    let slowest = report.requests.iter().map(|sent| sent.took).max();
    eprintln!(
        "partition: the majority promoted {} {promoted_after:?} after the cut, and the service \
         checked there {moved_after:?} after it (within 0.1 s); {} requests around it, {} failed closed ({statuses:?}), the first sent {first:?} and the last \
         answered {last:?} after the cut; {RECOVERED_AFTER} in a row passed again \
         {recovered_after:?} after it; slowest {slowest:?}; Envoy counted {errors} rate limit \
         service errors",
        redis.servers()[promoted].addr(),
        report.sent,
        failed.len(),
    );
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

    // Still partitioned: the rest of the budget is admitted, counted where the service now
    // writes.
    let rest = HOURLY_BUDGET - SPENT_BEFORE_THE_PARTITION;
    let admitted = hourly_burst(hourly, rest + EXTRA).await;
    assert_eq!(
        admitted, rest,
        "during the partition, of {HOURLY_BUDGET} with {SPENT_BEFORE_THE_PARTITION} spent before"
    );

    // Healed: the sentinels demote the old primary, which drops whatever it took alone.
    // Had the service counted there, the budget would now admit again.
    let healed = Instant::now();
    link.restore();
    tokio::task::block_in_place(|| redis.wait_until_demoted(old));
    eprintln!(
        "partition healed: the old primary was a replica again {:?} later",
        healed.elapsed()
    );
    let admitted = hourly_burst(hourly, EXTRA).await;
    assert_eq!(
        admitted, 0,
        "after the partition healed, the budget was spent"
    );
    exactly_the_budget(
        port,
        "after-the-partition",
        "a fresh budget after the partition",
    )
    .await;
}

/// How many `EVALSHA` calls `server` has served (`INFO commandstats`): only clients make
/// them (a replica is sent a script's effects, not the script), so on a replica promoted
/// since, they are the service's checks.
fn script_calls(server: &RedisServer) -> u64 {
    server
        .info("commandstats")
        .lines()
        .find_map(|line| {
            let calls = line.strip_prefix("cmdstat_evalsha:calls=")?;
            calls.split(',').next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// Sends `count` requests of `build` one after another; returns how many passed, and
/// checks every other one was refused over its limit (429), not failed.
async fn hourly_burst(
    build: impl Fn() -> tollgate_conformance::http::RequestBuilder,
    count: usize,
) -> usize {
    let mut passed = 0;
    for i in 0..count {
        let response = build().send().await.expect("a response");
        match response.status.as_u16() {
            200 => passed += 1,
            429 => {}
            other => panic!("request {i} of a burst: {other} {:?}", response.text()),
        }
    }
    passed
}

/// A Redis Cluster primary (with a replica, as every primary of the cluster has) cut off
/// the network, not killed: its host is a namespace of its own, the other five nodes stay
/// here, each announcing an address the others reach. The cluster notices after
/// `cluster-node-timeout` and promotes the replica; meanwhile the checks of the keys in the
/// cut node's slots wait out `--redis-timeout` on a connection that answers nothing, and
/// fail closed; the service then finds the promoted replica by itself, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and network namespaces: make test-netcut"]
async fn with_a_redis_cluster_primary_cut_off_its_keys_fail_closed_until_its_replica_takes_over() {
    let ns = NetworkNamespace::create();
    let cluster = RedisCluster::start_with_replicas_and_a_node_in(&ns.host(), 3);
    let replica = cluster.replica_of(0);
    let api = Upstream::new("api").spawn().await;
    let port = reserve_port();
    let rls = RateLimitService::new();
    let cp = ControlPlane::new()
        .routes(routes(port, &api, &[rls.grpc_addr()]))
        .start()
        .await;
    let _rls = rls
        .routes_file(cp.routes_path())
        .redis_cluster(&cluster)
        .redis_timeout(REDIS_TIMEOUT)
        .start()
        .await;
    let envoy = Envoy::new().control_plane(&cp).start().await;
    eventually("the routes are served", async || {
        get(port, "/steady/probe").await?.expect_upstream("api")?;
        Ok(())
    })
    .await;
    // The traffic's counter is on the node to be cut, or the cut would fail nothing.
    let key = key_counted_on(&cluster.nodes()[0], port).await;
    let stream = traffic_of(
        request(port).path("/steady/x").header("x-api-key", &key),
        "api",
    );
    let errors_before = stat(&envoy, "\\.ratelimit\\.error$").await;
    let cut = Instant::now();
    ns.cut();
    tokio::task::block_in_place(|| cluster.wait_until_promoted(replica));
    let promoted_after = cut.elapsed();
    let since = stream.sent();
    eventually_recovered(&stream, since).await;
    let recovered_after = cut.elapsed();
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
        "cluster node cut: the replica was a primary {promoted_after:?} after the cut; {} \
         requests around it, {} failed closed ({statuses:?}), the first sent {first:?} and \
         the last answered {last:?} after the cut; {RECOVERED_AFTER} in a row passed again \
         {recovered_after:?} after it; slowest {slowest:?}; Envoy counted {errors} rate limit \
         service errors",
        report.sent,
        failed.len(),
    );
    assert!(!failed.is_empty(), "cutting the node off failed no request");
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
    exactly_the_budget(
        port,
        "after-the-cluster-failover",
        "a fresh budget after the cluster failover",
    )
    .await;
}

/// An `x-api-key` whose counter on the steady route `node` holds: each candidate is sent
/// once, and the first after which `node` holds one key more is it (a third of them are).
async fn key_counted_on(node: &RedisServer, port: u16) -> String {
    for i in 0..100 {
        let key = format!("steady-{i}");
        let before = keys_on(node);
        request(port)
            .path("/steady/x")
            .header("x-api-key", &key)
            .send()
            .await
            .expect("a response")
            .expect_upstream("api")
            .expect("checked and passed");
        if keys_on(node) > before {
            return key;
        }
    }
    panic!("no key of 100 was counted on {}", node.addr())
}

/// How many keys `node` holds in database 0 (`INFO keyspace`).
fn keys_on(node: &RedisServer) -> u64 {
    let info = node.info("keyspace");
    info.lines()
        .find_map(|line| {
            let keys = line.strip_prefix("db0:keys=")?;
            keys.split(',').next()?.parse().ok()
        })
        .unwrap_or(0)
}
