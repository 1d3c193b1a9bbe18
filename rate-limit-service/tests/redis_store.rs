//! The service against a real Redis: shared counters across instances, every algorithm's
//! script, failure and recovery.

mod support;

use std::time::{Duration, Instant};

use futures::future::join_all;
use redis::AsyncCommands;
use support::{clock_now, instance_on, race, race_among, routes_tree, Instance, PATIENCE};
use tollgate_proto::envoy::service::ratelimit::v3::rate_limit_response::Code;
use tollgate_ratelimit::algorithm::{Clock, ManualClock};
use tollgate_ratelimit::limits::{dropin, DescriptorTree};
use tollgate_ratelimit::store::redis::RedisTarget;
use tollgate_ratelimit::store::Store as _;
use tollgate_testkit::rate_limit::{call, descriptor, request};
use tollgate_testkit::redis::RedisServer;

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
        name: sliding
        requests: 5
        per: second
      - by: client_ip
        name: bucket
        requests: 10
        per: second
        burst: 4
      - by: header
        header: x-api-key
        name: fixed
        requests: 20
        per: minute
        algorithm: fixed
sidecars:
  rate_limit:
    address: 127.0.0.1:8081
    domain: edge
"#;

const DROP_IN: &str = r#"
domain: d
descriptors:
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 1}
"#;

fn integrated() -> DescriptorTree {
    routes_tree(ROUTES)
}

fn drop_in() -> DescriptorTree {
    dropin::parse(&[dropin::SourceFile {
        name: "d.yaml".into(),
        text: DROP_IN.into(),
    }])
    .expect("valid")
}

fn rule(
    rule: &str,
    key: &str,
    value: &str,
) -> tollgate_proto::envoy::service::ratelimit::v3::RateLimitRequest {
    request(
        "edge",
        vec![descriptor(&[
            ("route", "api"),
            ("rule", rule),
            (key, value),
        ])],
    )
}

const TIMEOUT: Duration = Duration::from_millis(250);

async fn instance(
    redis: &RedisServer,
    tree: DescriptorTree,
    clock: ManualClock,
    timeout: Duration,
) -> Instance {
    instance_on(&RedisTarget::Single(redis.url()), tree, clock, timeout).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_limit_passes_when_two_instances_share_redis() {
    let redis = RedisServer::start();
    let clock = clock_now();
    let a = instance(&redis, integrated(), clock.clone(), TIMEOUT).await;
    let b = instance(&redis, integrated(), clock.clone(), TIMEOUT).await;
    let r = rule("fixed", "header", "key-1");
    assert_eq!(race(&a, &b, &r, 35).await, (20, 15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_limit_passes_when_three_instances_share_redis() {
    let redis = RedisServer::start();
    let clock = clock_now();
    let a = instance(&redis, integrated(), clock.clone(), TIMEOUT).await;
    let b = instance(&redis, integrated(), clock.clone(), TIMEOUT).await;
    let c = instance(&redis, integrated(), clock.clone(), TIMEOUT).await;
    // The fixed window admits 20 a minute, the sliding one 5 a second.
    for (algorithm, by, key, limit) in [
        ("fixed", "header", "key-3", 20),
        ("sliding", "remote_address", "10.0.0.9", 5),
    ] {
        let r = rule(algorithm, by, key);
        assert_eq!(
            race_among(&[&a, &b, &c], &r, 35).await,
            (limit, 35 - limit),
            "{algorithm}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sliding_window_never_admits_more_than_the_limit_in_any_second() {
    let redis = RedisServer::start();
    let clock = clock_now();
    let a = instance(&redis, integrated(), clock.clone(), TIMEOUT).await;
    let b = instance(&redis, integrated(), clock.clone(), TIMEOUT).await;
    let r = rule("sliding", "remote_address", "10.0.0.7");
    let mut admitted: Vec<u64> = Vec::new();
    // 150 steps of 37 ms (5.5 s), three concurrent calls per step over both instances.
    for _ in 0..150 {
        clock.advance(Duration::from_millis(37));
        let calls = [&a.client, &b.client, &a.client].map(|c| call(c, &r));
        for response in join_all(calls).await {
            if response.expect("a decision").overall_code == Code::Ok as i32 {
                admitted.push(clock.now_us());
            }
        }
    }
    for (i, &end) in admitted.iter().enumerate() {
        let inside = admitted[..=i]
            .iter()
            .filter(|&&t| t + 1_000_000 > end)
            .count();
        assert!(
            inside <= 5,
            "{inside} admitted in the second ending at {end}"
        );
    }
    // 5.5 s at 5/s, less the buckets' 5% caution.
    assert!(admitted.len() >= 24, "only {} admitted", admitted.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_bucket_allows_its_burst_then_its_rate() {
    let redis = RedisServer::start();
    let clock = clock_now();
    let a = instance(&redis, integrated(), clock.clone(), TIMEOUT).await;
    let r = rule("bucket", "remote_address", "10.0.0.8");
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(call(&a.client, &r).await.expect("a decision").overall_code);
    }
    let ok = Code::Ok as i32;
    let over = Code::OverLimit as i32;
    assert_eq!(codes, vec![ok, ok, ok, ok, over, over]);
    // One token every 100 ms.
    clock.advance(Duration::from_millis(100));
    assert_eq!(
        call(&a.client, &r).await.expect("a decision").overall_code,
        ok
    );
    assert_eq!(
        call(&a.client, &r).await.expect("a decision").overall_code,
        over
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_window_keys_are_envoyproxy_ratelimit_keys() {
    let redis = RedisServer::start();
    let clock = clock_now();
    let a = instance(&redis, drop_in(), clock.clone(), TIMEOUT).await;
    let response = call(&a.client, &request("d", vec![descriptor(&[("k", "v")])]))
        .await
        .expect("a decision");
    assert_eq!(response.overall_code, Code::Ok as i32);
    let window_start = clock.now_us() / 1_000_000 / 60 * 60;
    let key = format!("d_k_v_{window_start}");
    let mut conn = redis.client().await;
    let count: Option<u64> = conn.get(&key).await.expect("GET");
    assert_eq!(count, Some(1), "{key}");
    let ttl: i64 = conn.ttl(&key).await.expect("TTL");
    assert!((1..=60).contains(&ttl), "ttl {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_script_cache_is_refilled() {
    let redis = RedisServer::start();
    let clock = clock_now();
    let a = instance(&redis, integrated(), clock.clone(), TIMEOUT).await;
    let r = rule("sliding", "remote_address", "10.0.0.9");
    assert_eq!(
        call(&a.client, &r).await.expect("a decision").overall_code,
        Code::Ok as i32
    );
    let mut conn = redis.client().await;
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .expect("flush");
    let response = call(&a.client, &r)
        .await
        .expect("a decision after NOSCRIPT");
    assert_eq!(response.overall_code, Code::Ok as i32);
    assert_eq!(
        response.statuses[0].limit_remaining, 3,
        "both hits were counted once"
    );
    assert_eq!(a.store.script_reloads(), 1);
    let [sha, _] = a.store.script_shas();
    let exists: Vec<bool> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(sha)
        .query_async(&mut conn)
        .await
        .expect("exists");
    assert_eq!(exists, vec![true]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_or_dead_redis_is_unavailable_within_the_timeout_and_recovery_is_automatic() {
    let mut redis = RedisServer::start();
    let clock = clock_now();
    let a = instance(&redis, integrated(), clock.clone(), TIMEOUT).await;
    let r = rule("fixed", "header", "key-2");
    assert_eq!(
        call(&a.client, &r).await.expect("a decision").overall_code,
        Code::Ok as i32
    );

    // Stuck: the connection is up but nothing answers.
    redis.pause();
    let started = Instant::now();
    let status = call(&a.client, &r).await.expect_err("no decision");
    let elapsed = started.elapsed();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    // The timeout, plus scheduling slack on a busy machine; far below any client default.
    assert!(
        elapsed < TIMEOUT + Duration::from_millis(500),
        "answered after {elapsed:?}"
    );
    redis.resume();

    // Dead: connections refused.
    redis.kill();
    let started = Instant::now();
    let status = call(&a.client, &r).await.expect_err("no decision");
    let elapsed = started.elapsed();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        elapsed < TIMEOUT + Duration::from_millis(500),
        "answered after {elapsed:?}"
    );
    // What `/readyz` and gRPC health follow.
    assert!(
        a.store.probe().await.is_err(),
        "a dead redis reads as ready"
    );

    // Back on the same port: the service reconnects by itself.
    redis.restart();
    let deadline = Instant::now() + PATIENCE;
    loop {
        match call(&a.client, &r).await {
            Ok(response) => {
                assert_eq!(response.overall_code, Code::Ok as i32);
                a.store.probe().await.expect("ready again");
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable);
                assert!(Instant::now() < deadline, "no recovery: {status:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_known_to_be_over_is_answered_without_redis() {
    let mut redis = RedisServer::start();
    let clock = clock_now();
    let a = instance(&redis, drop_in(), clock.clone(), TIMEOUT).await;
    let r = request("d", vec![descriptor(&[("k", "hammer")])]);
    assert_eq!(
        call(&a.client, &r).await.expect("a decision").overall_code,
        Code::Ok as i32
    );
    assert_eq!(
        call(&a.client, &r).await.expect("a decision").overall_code,
        Code::OverLimit as i32
    );
    redis.kill();
    let response = call(&a.client, &r)
        .await
        .expect("answered from the local cache");
    assert_eq!(response.overall_code, Code::OverLimit as i32);
    let other = request("d", vec![descriptor(&[("k", "fresh")])]);
    let status = call(&a.client, &other)
        .await
        .expect_err("this one needs redis");
    assert_eq!(status.code(), tonic::Code::Unavailable);
}

/// What a serving thread's store shares with the others: the counts (in Redis, through its
/// own connection, opened on its own runtime) and the local over-limit cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_threads_store_shares_counts_and_the_over_limit_cache() {
    use std::sync::Arc;
    use tollgate_ratelimit::algorithm::{FixedWindow, Policy};
    use tollgate_ratelimit::store::redis::{RedisStore, RedisTarget};
    use tollgate_ratelimit::store::Check;

    let mut redis = RedisServer::start();
    let main = Arc::new(
        RedisStore::connect(&RedisTarget::Single(redis.url()), TIMEOUT).expect("valid url"),
    );
    let deadline = Instant::now() + PATIENCE;
    while let Err(error) = main.load_scripts().await {
        assert!(Instant::now() < deadline, "redis did not answer: {error}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let policy = Policy::Fixed(FixedWindow::new(2, Duration::from_secs(60)));
    let now_us = clock_now().now_us();
    let check = |key: &'static str| Check {
        key,
        policy: &policy,
        hits: 1,
    };

    // The thread's store is made on, and used from, a runtime of its own.
    let (to_thread, mut in_thread) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let (from_thread, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let shared = Arc::clone(&main);
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let own = shared.for_this_runtime().expect("connects");
            while let Some(key) = in_thread.recv().await {
                let checks = [Check {
                    key,
                    policy: &policy,
                    hits: 1,
                }];
                let _ = from_thread.send(own.check(&checks, now_us).await.map(|d| d[0].allowed));
            }
        });
    });
    let mut ask_thread = async |key| {
        to_thread.send(key).expect("the thread runs");
        answers.recv().await.expect("an answer")
    };

    // One hit here and one there use up the key's limit of two: the count is shared.
    let here = main
        .check(&[check("shared_")], now_us)
        .await
        .expect("redis answers");
    assert!(here[0].allowed);
    assert!(ask_thread("shared_").await.expect("redis answers"));
    let third = main
        .check(&[check("shared_")], now_us)
        .await
        .expect("redis answers");
    assert!(!third[0].allowed, "the third hit is over the limit of two");

    // With Redis gone, the thread still knows the key is over: the cache is shared. A key
    // it has no answer for needs Redis.
    redis.kill();
    let known = ask_thread("shared_").await;
    assert!(!known.expect("answered from the shared cache"));
    assert!(ask_thread("fresh_").await.is_err(), "this one needs redis");
    drop(to_thread);
    thread.join().expect("the thread ends");
}
