//! The service through a Redis failover, behind Sentinel (`--redis-sentinel-url`) and on a
//! Redis Cluster with replicas: calls go on while the primary holding their counters is
//! killed (SIGKILL); every call answers a decision or `UNAVAILABLE` within the timeout,
//! calls succeed again once a replica is promoted, with no restart, and a budget whose
//! counts reached the replica before the kill is still enforced after it; behind Sentinel
//! also with a master that requires a password (`--redis-auth`). Each test prints the
//! window during which calls failed.

// Each test file uses its own part of the helpers.
#[allow(dead_code)]
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser as _;
use support::{clock_now, instance_on, routes_tree, Instance, PATIENCE};
use tollgate_proto::envoy::service::ratelimit::v3::rate_limit_response::Code;
use tollgate_proto::envoy::service::ratelimit::v3::RateLimitRequest;
use tollgate_ratelimit::algorithm::Clock as _;
use tollgate_ratelimit::limits::DescriptorTree;
use tollgate_ratelimit::settings::Settings;
use tollgate_ratelimit::store::redis::RedisTarget;
use tollgate_ratelimit::store::{storage_key, Check, Store as _};
use tollgate_testkit::rate_limit::{call, descriptor, request};
use tollgate_testkit::redis::{RedisCluster, RedisSentinels, RedisServer};

/// `steady` carries the traffic and is never reached; `budget` is spent before the kill
/// and after it. Per minute, and the clock stands still, so no window turns over.
const ROUTES: &str = r#"
version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
services:
  api:
    endpoints: ["127.0.0.1:3000"]
routes:
  - name: api
    match: {prefix: /}
    service: api
    rate_limit:
      - by: client_ip
        name: steady
        requests: 100000
        per: minute
      - by: header
        header: x-api-key
        name: budget
        requests: 20
        per: minute
        algorithm: fixed
sidecars:
  rate_limit:
    address: 127.0.0.1:8081
    domain: edge
"#;

/// `steady`'s and `budget`'s limits, as ROUTES says.
const STEADY_LIMIT: u32 = 100_000;
const BUDGET: u32 = 20;

/// Spent before the kill, and replicated (`WAIT`) before it.
const SPENT_BEFORE: u32 = 12;

/// The store's timeout: above the 40 ms default so that a busy 2-core machine does not turn
/// slow answers before the kill into failures, still far below the slack below.
const TIMEOUT: Duration = Duration::from_millis(100);

/// What a call may take beyond the timeout on a loaded machine (gRPC, scheduling: 0.7 s
/// was seen with two builds running). A call that waited on a dead master or on the
/// sentinels would wait for as long as the outage lasts.
const SLACK: Duration = Duration::from_millis(1900);

/// Between two calls of the traffic: calls answered at once while Redis is down must not
/// spin a core.
const PACE: Duration = Duration::from_millis(5);

/// Successes in a row after the last failure that count as recovered.
const RECOVERED_AFTER: usize = 20;

/// A failover takes seconds (the node timeout, an election); this allows for a busy machine.
const FAILOVER_PATIENCE: Duration = Duration::from_secs(60);

fn limits() -> DescriptorTree {
    routes_tree(ROUTES)
}

fn steady(client_ip: &str) -> RateLimitRequest {
    request(
        "edge",
        vec![descriptor(&[
            ("route", "api"),
            ("rule", "steady"),
            ("remote_address", client_ip),
        ])],
    )
}

fn budget(api_key: &str) -> RateLimitRequest {
    request(
        "edge",
        vec![descriptor(&[
            ("route", "api"),
            ("rule", "budget"),
            ("header", api_key),
        ])],
    )
}

/// The Redis key of `r`'s (only) descriptor, as the service computes it.
fn redis_key(r: &RateLimitRequest, now_us: u64) -> String {
    let entries: Vec<(&str, &str)> = r.descriptors[0]
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    let tree = limits();
    let found = tree.find("edge", &entries).expect("a limit");
    let (_, policy) = found.limit.rate.as_ref().expect("limited");
    storage_key(
        &Check {
            key: &found.counter_key,
            policy,
            hits: 1,
        },
        now_us,
    )
}

/// One call of the traffic: when it started (since the traffic did), how long it took,
/// and its answer (a decision, or the gRPC code it failed with).
#[derive(Clone, Copy, Debug)]
struct Call {
    at: Duration,
    took: Duration,
    answer: Result<(), tonic::Code>,
}

impl Call {
    fn end(&self) -> Duration {
        self.at + self.took
    }
}

/// Calls `r` one after another until stopped, recording each.
struct Traffic {
    calls: Arc<Mutex<Vec<Call>>>,
    started: Instant,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(instance: &Instance, r: RateLimitRequest) -> Self {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let client = instance.client.clone();
        let record = calls.clone();
        let task = tokio::spawn(async move {
            while !*stopped.borrow() {
                let at = started.elapsed();
                let answer = match call(&client, &r).await {
                    Ok(response) => {
                        assert_eq!(response.overall_code, Code::Ok as i32, "never reached");
                        Ok(())
                    }
                    Err(status) => Err(status.code()),
                };
                let took = started.elapsed() - at;
                record
                    .lock()
                    .expect("not poisoned")
                    .push(Call { at, took, answer });
                tokio::time::sleep(PACE).await;
            }
        });
        Traffic {
            calls,
            started,
            stop,
            task,
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("not poisoned").clone()
    }

    /// Waits until `n` calls have succeeded.
    async fn wait_for_successes(&self, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.calls().iter().filter(|c| c.answer.is_ok()).count() < n {
            assert!(
                Instant::now() < deadline,
                "calls fail: {:?}",
                self.calls().last()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until, after `since`, at least one call failed and then [`RECOVERED_AFTER`]
    /// calls in a row succeeded; stops the traffic and returns every call.
    async fn stop_once_recovered(self, since: Duration) -> Vec<Call> {
        let deadline = Instant::now() + FAILOVER_PATIENCE;
        loop {
            let calls = self.calls();
            let after: Vec<&Call> = calls.iter().filter(|c| c.end() >= since).collect();
            let failed = after.iter().any(|c| c.answer.is_err());
            let tail = after.iter().rev().take_while(|c| c.answer.is_ok()).count();
            if failed && tail >= RECOVERED_AFTER {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no recovery {FAILOVER_PATIENCE:?} after the kill: {} calls since, {} failed, last {:?}",
                after.len(),
                after.iter().filter(|c| c.answer.is_err()).count(),
                after.last()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop().await
    }

    /// Waits until [`RECOVERED_AFTER`] calls started after `since` succeeded in a row;
    /// stops the traffic and returns every call.
    async fn stop_once_answering_since(self, since: Duration) -> Vec<Call> {
        let deadline = Instant::now() + FAILOVER_PATIENCE;
        loop {
            let calls = self.calls();
            let tail = calls
                .iter()
                .rev()
                .take_while(|c| c.at >= since && c.answer.is_ok())
                .count();
            if tail >= RECOVERED_AFTER {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "calls fail {FAILOVER_PATIENCE:?} after the switchover: last {:?}",
                calls.last()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop().await
    }

    async fn stop(self) -> Vec<Call> {
        let _ = self.stop.send(true);
        let calls = self.calls.clone();
        self.task.await.expect("the traffic did not panic");
        let calls = calls.lock().expect("not poisoned").clone();
        calls
    }
}

/// What the calls saw around a kill at `killed` (since the traffic started).
#[derive(Debug)]
struct Window {
    /// From the kill to the end of the last failed call.
    unavailable: Duration,
    failed: usize,
    answered: usize,
    slowest: Duration,
}

/// Checks every call (a decision or `UNAVAILABLE`, within the timeout and slack) and
/// measures the window.
fn judge(calls: &[Call], killed: Duration) -> Window {
    for c in calls {
        assert!(
            c.took < TIMEOUT + SLACK,
            "a call took {:?} (timeout {TIMEOUT:?}): {c:?}",
            c.took
        );
        if let Err(code) = c.answer {
            assert_eq!(code, tonic::Code::Unavailable, "{c:?}");
        }
    }
    let after: Vec<&Call> = calls.iter().filter(|c| c.end() >= killed).collect();
    let last_failure = after
        .iter()
        .filter(|c| c.answer.is_err())
        .map(|c| c.end())
        .max()
        .expect("the kill failed some calls");
    Window {
        unavailable: last_failure.saturating_sub(killed),
        failed: after.iter().filter(|c| c.answer.is_err()).count(),
        answered: after.iter().filter(|c| c.answer.is_ok()).count(),
        slowest: calls.iter().map(|c| c.took).max().unwrap_or_default(),
    }
}

/// Spends `n` of `r`'s budget; each call must be admitted.
async fn spend(instance: &Instance, r: &RateLimitRequest, n: u32) {
    for i in 0..n {
        let response = call(&instance.client, r).await.expect("a decision");
        assert_eq!(response.overall_code, Code::Ok as i32, "call {i}");
    }
}

/// How many calls of `r` are admitted before the first refusal (a failed call fails the
/// test: by now the failover is over).
async fn admitted_until_refused(instance: &Instance, r: &RateLimitRequest) -> u32 {
    let mut admitted = 0;
    loop {
        let response = call(&instance.client, r).await.expect("a decision");
        if response.overall_code == Code::OverLimit as i32 {
            return admitted;
        }
        admitted += 1;
        assert!(admitted <= BUDGET, "the budget is no longer enforced");
    }
}

/// Sends `WAIT replicas 5000` to the server on `conn`: returns once the writes so far have
/// reached `replicas` replicas, so that the kill cannot lose them.
async fn wait_for_replicas(conn: &mut redis::aio::MultiplexedConnection, replicas: usize) {
    let acked: usize = redis::cmd("WAIT")
        .arg(replicas)
        .arg(5000)
        .query_async(conn)
        .await
        .expect("WAIT");
    assert_eq!(acked, replicas, "writes replicated before the kill");
}

/// The counter of `steady` after the failover against the calls admitted: how many
/// increments the failover lost (those not yet replicated when the primary died), less
/// those of failed calls that counted all the same (their reply was lost).
async fn lost_increments(instance: &Instance, r: &RateLimitRequest, calls: &[Call]) -> i64 {
    let response = call(&instance.client, r).await.expect("a decision");
    let counted = i64::from(STEADY_LIMIT - response.statuses[0].limit_remaining);
    let admitted = calls.iter().filter(|c| c.answer.is_ok()).count() as i64 + 1;
    let made = calls.len() as i64 + 1;
    // A failed call may have counted (its reply was lost), so the counter can exceed the
    // admitted calls by those; never the calls made.
    assert!(counted <= made, "{counted} counted of {made} calls");
    admitted - counted
}

/// Polls the servers' `ROLE` until one of them is a primary; returns when (since the
/// traffic started) that was first seen. Polled beside the traffic, so that the window can
/// be split into Redis's part (detection, election) and the service's (finding the new
/// primary).
async fn promoted_at(servers: &[&RedisServer], traffic: &Traffic) -> Duration {
    let deadline = Instant::now() + FAILOVER_PATIENCE;
    loop {
        for server in servers {
            if is_primary(server).await {
                return traffic.started.elapsed();
            }
        }
        assert!(Instant::now() < deadline, "no replica promoted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether `server` says it is a primary (`ROLE`'s first element), asked on a connection of
/// its own: Sentinel disconnects every client of the servers it reconfigures
/// (`CLIENT KILL TYPE normal`), a kept connection would fail from then on.
async fn is_primary(server: &RedisServer) -> bool {
    let Ok(client) = redis::Client::open(server.url()) else {
        return false;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    let role: Vec<redis::Value> = redis::cmd("ROLE")
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    matches!(role.first(), Some(redis::Value::BulkString(role)) if role == b"master")
}

/// Whether a client of `server` runs the service's scripts (`CLIENT LIST` names each
/// connection's last command): the service checks there. Sentinel disconnects every client
/// of a server it promotes, so on a new primary this is the service's new connection.
async fn runs_scripts(server: &RedisServer) -> bool {
    let Ok(client) = redis::Client::open(server.url()) else {
        return false;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    clients
        .lines()
        .any(|c| c.contains("cmd=evalsha") || c.contains("cmd=eval "))
}

/// The flag as envoyproxy/ratelimit users write it: `MASTER_NAME,HOST:PORT,…`, and
/// `--redis-auth PASSWORD` for a master that requires one.
fn sentinel_target(redis: &RedisSentinels, password: Option<&str>) -> RedisTarget {
    sentinel_target_with(
        redis,
        password.map_or_else(Vec::new, |p| vec!["--redis-auth", p]),
    )
}

/// As [`sentinel_target`], with `extra` flags after the sentinel list.
fn sentinel_target_with(redis: &RedisSentinels, extra: Vec<&str>) -> RedisTarget {
    let list = redis.sentinel_list();
    let mut flags = vec![
        "tollgate-ratelimit",
        "--config",
        "ratelimit.yaml",
        "--redis-sentinel-url",
        &list,
    ];
    flags.extend(extra);
    Settings::try_parse_from(flags)
        .expect("flags parse")
        .redis_target()
        .expect("a redis target")
}

/// What the servers of the password test require (`requirepass`).
const PASSWORD: &str = "tollgate-sentinel-test";

fn report(what: &str, window: &Window, promoted: Duration, lost: i64) {
    eprintln!(
        "{what}: calls failed (UNAVAILABLE) for {:?} after the kill (a replica was a primary \
         after {promoted:?}): {} failed, {} answered since; slowest call {:?}; increments \
         lost less failed calls counted: {lost}",
        window.unavailable, window.failed, window.answered, window.slowest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_sentinel_calls_follow_a_failover_to_the_promoted_replica_without_a_restart() {
    let redis = RedisSentinels::start(2);
    let target = sentinel_target(&redis, None);
    follow_a_failover(redis, &target, "sentinel failover").await;
}

/// Every server requires the password, so nothing would answer a service that did not
/// give it: not the first master, not the library's `ROLE` check, not the promoted replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_sentinel_a_master_requiring_a_password_is_reached_with_redis_auth_and_followed() {
    let redis = RedisSentinels::start_with_password(2, PASSWORD);
    let target = sentinel_target(&redis, Some(PASSWORD));
    follow_a_failover(redis, &target, "sentinel failover with a password").await;
}

/// The database envoyproxy/ratelimit users may give their master (`--redis-db`): the
/// counters are there and nowhere else, on the first master and on the replica promoted
/// after it is killed, where the budget spent before goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_sentinel_counters_land_in_the_database_redis_db_names_and_follow_a_failover_there()
{
    const DB: i64 = 5;
    let mut redis = RedisSentinels::start(2);
    let target = sentinel_target_with(&redis, vec!["--redis-db", "5"]);
    let clock = clock_now();
    let a = instance_on(&target, limits(), clock.clone(), TIMEOUT).await;
    let primary = redis.primary();
    let r = budget("key-in-db-5");
    let key = redis_key(&r, clock.now_us());
    spend(&a, &r, SPENT_BEFORE).await;

    let mut conn = redis.servers()[primary].client().await;
    let counted_in = async |conn: &mut redis::aio::MultiplexedConnection, db: i64| {
        redis::cmd("SELECT")
            .arg(db)
            .query_async::<()>(conn)
            .await
            .expect("SELECT");
        let count: Option<u32> = redis::cmd("GET")
            .arg(&key)
            .query_async(conn)
            .await
            .expect("GET");
        let keys: u64 = redis::cmd("DBSIZE")
            .query_async(conn)
            .await
            .expect("DBSIZE");
        (count, keys)
    };
    assert_eq!(counted_in(&mut conn, DB).await, (Some(SPENT_BEFORE), 1));
    assert_eq!(
        counted_in(&mut conn, 0).await,
        (None, 0),
        "nothing in database 0"
    );

    // The replicas have it (`WAIT`, on the connection that made no write, would not say).
    let deadline = Instant::now() + PATIENCE;
    for replica in (0..redis.servers().len()).filter(|i| *i != primary) {
        let mut conn = redis.servers()[replica].client().await;
        while counted_in(&mut conn, DB).await.0 != Some(SPENT_BEFORE) {
            assert!(
                Instant::now() < deadline,
                "replica {replica} has not copied the count"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    redis.kill(primary);
    let promoted = tokio::task::block_in_place(|| redis.wait_for_new_primary(primary));
    let deadline = Instant::now() + FAILOVER_PATIENCE;
    while call(&a.client, &r).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the service never reached the promoted replica"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // That call was admitted and counted: the budget went on from where it was.
    assert_eq!(
        admitted_until_refused(&a, &r).await,
        BUDGET - SPENT_BEFORE - 1,
        "the budget spent before the failover"
    );
    let mut conn = redis.servers()[promoted].client().await;
    assert_eq!(counted_in(&mut conn, DB).await.0, Some(BUDGET + 1));
    assert_eq!(
        counted_in(&mut conn, 0).await,
        (None, 0),
        "nothing in database 0"
    );
}

/// Calls through `target` go on while the primary is killed, fail only until a replica is
/// promoted, and a budget spent before the kill holds after it.
async fn follow_a_failover(mut redis: RedisSentinels, target: &RedisTarget, what: &str) {
    let clock = clock_now();
    let a = instance_on(target, limits(), clock.clone(), TIMEOUT).await;
    let primary = redis.primary();
    let (steady, budget) = (steady("10.0.0.1"), budget("key-1"));

    spend(&a, &budget, SPENT_BEFORE).await;
    wait_for_replicas(&mut redis.servers()[primary].client().await, 2).await;
    let traffic = Traffic::start(&a, steady.clone());
    traffic.wait_for_successes(20).await;
    let killed = traffic.started.elapsed();
    redis.kill(primary);
    // Readiness follows: no master answers until the sentinels promote one.
    let deadline = Instant::now() + PATIENCE;
    while a.store.probe().await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "still ready with the master dead"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let replicas: Vec<&RedisServer> = (0..redis.servers().len())
        .filter(|&i| i != primary)
        .map(|i| &redis.servers()[i])
        .collect();
    let promoted = promoted_at(&replicas, &traffic).await - killed;
    let calls = traffic.stop_once_recovered(killed).await;
    let window = judge(&calls, killed);

    let new_primary = redis.wait_for_new_primary(primary);
    assert_ne!(new_primary, primary);
    a.store.probe().await.expect("ready again");
    assert_eq!(
        admitted_until_refused(&a, &budget).await,
        BUDGET - SPENT_BEFORE,
        "the counts replicated before the kill hold after it"
    );
    let lost = lost_increments(&a, &steady, &calls).await;
    report(what, &window, promoted, lost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_sentinel_a_switchover_with_the_old_primary_alive_is_followed() {
    let redis = RedisSentinels::start(1);
    let clock = clock_now();
    let a = instance_on(
        &sentinel_target(&redis, None),
        limits(),
        clock.clone(),
        TIMEOUT,
    )
    .await;
    let old = redis.primary();
    let traffic = Traffic::start(&a, steady("10.0.0.2"));
    traffic.wait_for_successes(20).await;
    let switched = traffic.started.elapsed();
    redis.fail_over();
    let new = tokio::task::block_in_place(|| redis.wait_for_new_primary(old));
    assert_ne!(new, old);
    let named = traffic.started.elapsed();
    // The old primary accepts writes until Sentinel demotes it (up to 10 s later); the
    // service must not wait for that to move: it asks the sentinels every second.
    let deadline = Instant::now() + FAILOVER_PATIENCE;
    while !runs_scripts(&redis.servers()[new]).await {
        assert!(
            Instant::now() < deadline,
            "the service never moved to the new primary"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let moved = traffic.started.elapsed();
    // Sentinel demotes the old primary only once it has reported itself a primary for 8 s
    // (4 × its 2 s publish period) after the switch: the service moved well before that,
    // on its own recheck, not because its connection broke.
    assert!(
        is_primary(&redis.servers()[old]).await,
        "the old primary was demoted before the service moved ({:?} after the switch)",
        moved - switched
    );
    // Once the old primary is a replica it refuses writes (READONLY): the calls answered
    // from then on were counted on the new one.
    let deadline = Instant::now() + FAILOVER_PATIENCE;
    while is_primary(&redis.servers()[old]).await {
        assert!(
            Instant::now() < deadline,
            "the old primary was never demoted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let demoted = traffic.started.elapsed();
    let calls = traffic.stop_once_answering_since(demoted).await;
    for c in &calls {
        assert!(c.took < TIMEOUT + SLACK, "a call took {:?}: {c:?}", c.took);
        if let Err(code) = c.answer {
            assert_eq!(code, tonic::Code::Unavailable, "{c:?}");
        }
    }
    let failed: Vec<&Call> = calls.iter().filter(|c| c.answer.is_err()).collect();
    eprintln!(
        "sentinel switchover: the sentinels named the new primary {:?} after SENTINEL \
         FAILOVER, the service wrote there from {:?}, the old primary was a replica after \
         {:?}; {} calls failed, the last ending {:?} after SENTINEL FAILOVER",
        named - switched,
        moved - switched,
        demoted - switched,
        failed.len(),
        failed.last().map(|c| c.end().saturating_sub(switched)),
    );
    let response = call(&a.client, &steady("10.0.0.2"))
        .await
        .expect("a decision");
    assert_eq!(response.overall_code, Code::Ok as i32);
    a.store.probe().await.expect("ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_with_replicas_calls_follow_a_failover_to_the_promoted_replica() {
    let mut cluster = RedisCluster::start_with_replicas(3);
    let clock = clock_now();
    let a = instance_on(
        &RedisTarget::Cluster(cluster.urls()),
        limits(),
        clock.clone(),
        TIMEOUT,
    )
    .await;
    let steady = steady("10.0.0.1");
    let primary = cluster.node_of(&redis_key(&steady, clock.now_us())).await;
    // A budget whose counter lives on the same primary, so the kill takes both.
    let mut budget_on_primary = None;
    for i in 0..1_000 {
        let r = budget(&format!("key-{i}"));
        if cluster.node_of(&redis_key(&r, clock.now_us())).await == primary {
            budget_on_primary = Some(r);
            break;
        }
    }
    let budget = budget_on_primary.expect("a budget key on the primary");
    let replica = cluster.replica_of(primary);
    // A client whose counter another primary holds.
    let mut elsewhere = None;
    for i in 2..1_000 {
        let r = crate::steady(&format!("10.0.{}.{}", i / 256, i % 256));
        if cluster.node_of(&redis_key(&r, clock.now_us())).await != primary {
            elsewhere = Some(r);
            break;
        }
    }
    let elsewhere = elsewhere.expect("a client on another primary");

    spend(&a, &budget, SPENT_BEFORE).await;
    wait_for_replicas(&mut cluster.nodes()[primary].client().await, 1).await;
    let traffic = Traffic::start(&a, steady.clone());
    let traffic_elsewhere = Traffic::start(&a, elsewhere);
    traffic.wait_for_successes(20).await;
    let killed = traffic.started.elapsed();
    let killed_elsewhere = traffic_elsewhere.started.elapsed();
    cluster.kill_node(primary);
    let promoted = promoted_at(&[&cluster.nodes()[replica]], &traffic).await - killed;
    let calls = traffic.stop_once_recovered(killed).await;
    let window = judge(&calls, killed);
    // With Redis's default `cluster-require-full-coverage yes`, the whole cluster refuses
    // keys (CLUSTERDOWN) from the moment the dead primary is declared failed until its
    // replica takes over: the other primaries' keys fail too, for less time.
    let calls_elsewhere = traffic_elsewhere.stop().await;
    for c in &calls_elsewhere {
        assert!(c.took < TIMEOUT + SLACK, "a call took {:?}: {c:?}", c.took);
    }
    let failed_elsewhere: Vec<&Call> = calls_elsewhere
        .iter()
        .filter(|c| c.answer.is_err() && c.end() >= killed_elsewhere)
        .collect();
    eprintln!(
        "cluster failover: on another primary {} calls failed, from {:?} to {:?} after the kill",
        failed_elsewhere.len(),
        failed_elsewhere
            .first()
            .map(|c| c.at.saturating_sub(killed_elsewhere)),
        failed_elsewhere.last().map(|c| c.end() - killed_elsewhere),
    );

    cluster.wait_until_promoted(replica);
    assert_eq!(
        cluster.node_of(&redis_key(&steady, clock.now_us())).await,
        replica,
        "the replica serves the dead primary's slots"
    );
    assert_eq!(
        admitted_until_refused(&a, &budget).await,
        BUDGET - SPENT_BEFORE,
        "the counts replicated before the kill hold after it"
    );
    let lost = lost_increments(&a, &steady, &calls).await;
    report("cluster failover", &window, promoted, lost);
}
