//! The service against a real three-node Redis Cluster (`--redis-cluster-url`): service
//! instances sharing the cluster enforce one limit, counters spread over the nodes by hash
//! slot, the Lua scripts are called by SHA on every node, both forms of the flag reach every
//! node, and a stuck, dead or late node costs only the requests whose counters it holds.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use clap::Parser as _;
use futures::future::join_all;
use support::{clock_now, instance_on, race, race_among, routes_tree, Instance, PATIENCE};
use tollgate_proto::envoy::service::ratelimit::v3::rate_limit_response::Code;
use tollgate_proto::envoy::service::ratelimit::v3::RateLimitRequest;
use tollgate_ratelimit::algorithm::{Clock, ManualClock};
use tollgate_ratelimit::limits::DescriptorTree;
use tollgate_ratelimit::settings::Settings;
use tollgate_ratelimit::store::redis::{RedisStore, RedisTarget};
use tollgate_ratelimit::store::{storage_key, Check, Store as _};
use tollgate_testkit::rate_limit::{call, descriptor, request};
use tollgate_testkit::redis::RedisCluster;

/// Per minute, so that no window or bucket turns over while a test runs (the clock is a
/// manual one and stands still anyway).
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
        requests: 20
        per: minute
      - by: client_ip
        name: bucket
        requests: 10
        per: minute
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

/// These tests count decisions, not time: a generous timeout keeps a busy machine from
/// turning a slow answer into UNAVAILABLE.
const TIMEOUT: Duration = Duration::from_secs(5);

const NODES: usize = 3;

/// The node the failure tests stop; the others must carry on.
const FAILING: usize = 1;

fn healthy_nodes() -> impl Iterator<Item = usize> {
    (0..NODES).filter(|&n| n != FAILING)
}

fn integrated() -> DescriptorTree {
    routes_tree(ROUTES)
}

/// The descriptor entries Envoy sends for `rule` of route `api` and the client's `value`.
fn entries<'a>(rule: &'a str, value: &'a str) -> [(&'a str, &'a str); 3] {
    let key = if rule == "fixed" {
        "header"
    } else {
        "remote_address"
    };
    [("route", "api"), ("rule", rule), (key, value)]
}

fn rule_request(rules: &[&str], value: &str) -> RateLimitRequest {
    let descriptors = rules
        .iter()
        .map(|rule| descriptor(&entries(rule, value)))
        .collect();
    request("edge", descriptors)
}

/// The Redis key the service keeps `rule`'s counter for `value` under, as the library
/// computes it (the cluster routes by this key's hash slot).
fn redis_key(tree: &DescriptorTree, rule: &str, value: &str, now_us: u64) -> String {
    let found = tree.find("edge", &entries(rule, value)).expect("a limit");
    let (_, policy) = found.limit.rate.as_ref().expect("limited");
    let check = Check {
        key: &found.counter_key,
        policy,
        hits: 1,
    };
    storage_key(&check, now_us)
}

/// One client value per node whose `rule` key that node serves, in node order.
async fn value_per_node(cluster: &RedisCluster, rule: &str, now_us: u64) -> Vec<String> {
    let tree = integrated();
    let mut found: Vec<Option<String>> = vec![None; cluster.nodes().len()];
    for i in 0..1_000 {
        let value = format!("10.0.{}.{}", i / 256, i % 256);
        let node = cluster
            .node_of(&redis_key(&tree, rule, &value, now_us))
            .await;
        found[node].get_or_insert(value);
        if found.iter().all(Option::is_some) {
            return found.into_iter().flatten().collect();
        }
    }
    panic!("no value of {rule} for some node in 1,000 tries: {found:?}");
}

async fn cluster_instance(cluster: &RedisCluster, clock: &ManualClock) -> Instance {
    instance_on(
        &RedisTarget::Cluster(cluster.urls()),
        integrated(),
        clock.clone(),
        TIMEOUT,
    )
    .await
}

/// Whether `node` holds each of `instance`'s scripts (sliding window, token bucket), as
/// `SCRIPT EXISTS` asked directly reports.
async fn scripts_on(cluster: &RedisCluster, node: usize, instance: &Instance) -> Vec<bool> {
    let shas = instance.store.script_shas();
    let mut conn = cluster.nodes()[node].client().await;
    redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&shas)
        .query_async(&mut conn)
        .await
        .expect("SCRIPT EXISTS")
}

async fn keys_on(cluster: &RedisCluster, node: usize) -> BTreeSet<String> {
    let mut conn = cluster.nodes()[node].client().await;
    redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .expect("KEYS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_limit_passes_in_a_fixed_window_when_two_instances_share_a_cluster() {
    let cluster = RedisCluster::start(NODES);
    let clock = clock_now();
    let a = cluster_instance(&cluster, &clock).await;
    let b = cluster_instance(&cluster, &clock).await;
    let r = rule_request(&["fixed"], "key-1");
    assert_eq!(race(&a, &b, &r, 35).await, (20, 15));
    let key = redis_key(&integrated(), "fixed", "key-1", clock.now_us());
    let node = cluster.node_of(&key).await;
    assert_eq!(keys_on(&cluster, node).await, BTreeSet::from([key]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_limit_passes_when_three_instances_share_a_cluster() {
    let cluster = RedisCluster::start(NODES);
    let clock = clock_now();
    let a = cluster_instance(&cluster, &clock).await;
    let b = cluster_instance(&cluster, &clock).await;
    let c = cluster_instance(&cluster, &clock).await;
    for (descriptor, value) in [("fixed", "key-3"), ("sliding", "10.0.0.9")] {
        let r = rule_request(&[descriptor], value);
        assert_eq!(
            race_among(&[&a, &b, &c], &r, 35).await,
            (20, 15),
            "{descriptor}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_limit_passes_in_a_sliding_window_when_two_instances_share_a_cluster() {
    let cluster = RedisCluster::start(NODES);
    let clock = clock_now();
    let a = cluster_instance(&cluster, &clock).await;
    let b = cluster_instance(&cluster, &clock).await;
    // SCRIPT LOAD went to every node, not only to one: any key's node can run EVALSHA.
    for node in 0..NODES {
        assert_eq!(
            scripts_on(&cluster, node, &a).await,
            [true, true],
            "node {node}"
        );
    }
    let r = rule_request(&["sliding"], "10.0.0.7");
    assert_eq!(race(&a, &b, &r, 35).await, (20, 15));
    // Every call went by EVALSHA and found its script.
    assert_eq!((a.store.script_reloads(), b.store.script_reloads()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_that_lacks_the_script_gets_it_by_one_eval() {
    let cluster = RedisCluster::start(NODES);
    let clock = clock_now();
    let a = cluster_instance(&cluster, &clock).await;
    // As if each node had restarted or joined after the scripts were loaded.
    for node in cluster.nodes() {
        let mut conn = node.client().await;
        let () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .expect("SCRIPT FLUSH");
    }
    let values = value_per_node(&cluster, "sliding", clock.now_us()).await;
    for (node, value) in values.iter().enumerate() {
        let r = rule_request(&["sliding"], value);
        for remaining in [19, 18] {
            let response = call(&a.client, &r).await.expect("a decision");
            assert_eq!(response.overall_code, Code::Ok as i32, "node {node}");
            assert_eq!(
                response.statuses[0].limit_remaining, remaining,
                "node {node}: each hit counted once"
            );
        }
        // The first call's NOSCRIPT was followed by one EVAL, which cached the script on
        // this node; the second went by EVALSHA.
        assert_eq!(a.store.script_reloads(), node as u64 + 1, "node {node}");
        assert!(scripts_on(&cluster, node, &a).await[0], "node {node}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_spread_over_the_nodes_and_each_keeps_its_own_budget() {
    let cluster = RedisCluster::start(NODES);
    let clock = clock_now();
    let a = cluster_instance(&cluster, &clock).await;
    let b = cluster_instance(&cluster, &clock).await;
    let clients: Vec<String> = (1..=9).map(|i| format!("10.0.2.{i}")).collect();
    // Burst 4 and a clock standing still: 4 of 6 per client, whatever the others do.
    let (a, b) = (&a, &b);
    let races = clients
        .iter()
        .map(|client| async move { race(a, b, &rule_request(&["bucket"], client), 6).await });
    for (client, admitted) in clients.iter().zip(join_all(races).await) {
        assert_eq!(admitted, (4, 2), "{client}");
    }

    let tree = integrated();
    let mut on_node = vec![BTreeSet::new(); NODES];
    for client in &clients {
        let key = redis_key(&tree, "bucket", client, clock.now_us());
        on_node[cluster.node_of(&key).await].insert(key);
    }
    for (node, expected) in on_node.iter().enumerate() {
        assert_eq!(&keys_on(&cluster, node).await, expected, "node {node}");
    }
    // Keys carry no hash tag: each descriptor's counter lives where its own slot is.
    let holding = on_node.iter().filter(|keys| !keys.is_empty()).count();
    assert!(holding > 1, "every key on one node: {on_node:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_with_descriptors_on_three_nodes_is_decided_whole() {
    let cluster = RedisCluster::start(NODES);
    let clock = clock_now();
    let a = cluster_instance(&cluster, &clock).await;
    let tree = integrated();
    let rules = ["sliding", "bucket", "fixed"];
    // A client whose three counters live on three different nodes (so in three different
    // slots: one multi-key command would fail with CROSSSLOT).
    let mut client = None;
    for i in 0..1_000 {
        let value = format!("client-{i}");
        let mut nodes = BTreeSet::new();
        for rule in rules {
            nodes.insert(
                cluster
                    .node_of(&redis_key(&tree, rule, &value, clock.now_us()))
                    .await,
            );
        }
        if nodes.len() == rules.len() {
            client = Some(value);
            break;
        }
    }
    let client = client.expect("a client with its counters on three nodes");
    let r = rule_request(&rules, &client);

    let first = call(&a.client, &r).await.expect("a decision");
    assert_eq!(first.overall_code, Code::Ok as i32);
    let remaining: Vec<u32> = first.statuses.iter().map(|s| s.limit_remaining).collect();
    assert_eq!(remaining, [19, 3, 19]);
    for _ in 0..3 {
        let response = call(&a.client, &r).await.expect("a decision");
        assert_eq!(response.overall_code, Code::Ok as i32);
    }
    // The bucket's burst of 4 is spent; the two windows still have room.
    let fifth = call(&a.client, &r).await.expect("a decision");
    assert_eq!(fifth.overall_code, Code::OverLimit as i32);
    let per_descriptor: Vec<i32> = fifth.statuses.iter().map(|s| s.code).collect();
    assert_eq!(
        per_descriptor,
        [Code::Ok as i32, Code::OverLimit as i32, Code::Ok as i32]
    );
    for rule in rules {
        let key = redis_key(&tree, rule, &client, clock.now_us());
        let node = cluster.node_of(&key).await;
        assert!(
            keys_on(&cluster, node).await.contains(&key),
            "{key} on node {node}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_seed_url_and_a_comma_list_both_reach_every_node() {
    let cluster = RedisCluster::start(NODES);
    let urls = cluster.urls();
    let target = |flag: &str| {
        Settings::try_parse_from([
            "tollgate-ratelimit",
            "--config",
            "ratelimit.yaml",
            "--redis-cluster-url",
            flag,
        ])
        .expect("flags parse")
        .redis_target()
        .expect("a redis target")
    };
    let listed = target(&urls.join(","));
    assert_eq!(listed, RedisTarget::Cluster(urls.clone()));
    // Not the first node: the others must be discovered from the seed.
    let seeded = target(&urls[1]);
    assert_eq!(seeded, RedisTarget::Cluster(vec![urls[1].clone()]));

    let clock = clock_now();
    let a = instance_on(&listed, integrated(), clock.clone(), TIMEOUT).await;
    let b = instance_on(&seeded, integrated(), clock.clone(), TIMEOUT).await;
    for (node, value) in value_per_node(&cluster, "bucket", clock.now_us())
        .await
        .iter()
        .enumerate()
    {
        let r = rule_request(&["bucket"], value);
        let mut codes = Vec::new();
        for client in [&a.client, &b.client, &a.client, &b.client, &b.client] {
            codes.push(call(client, &r).await.expect("a decision").overall_code);
        }
        let ok = Code::Ok as i32;
        assert_eq!(
            codes,
            [ok, ok, ok, ok, Code::OverLimit as i32],
            "node {node}: one budget of 4 for both instances"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_node_fails_only_its_own_keys_within_the_timeout() {
    const SHORT: Duration = Duration::from_millis(300);
    let cluster = RedisCluster::start(NODES);
    let clock = clock_now();
    let a = instance_on(
        &RedisTarget::Cluster(cluster.urls()),
        integrated(),
        clock.clone(),
        SHORT,
    )
    .await;
    let values = value_per_node(&cluster, "sliding", clock.now_us()).await;
    let requests: Vec<RateLimitRequest> = values
        .iter()
        .map(|v| rule_request(&["sliding"], v))
        .collect();
    for r in &requests {
        assert_eq!(
            call(&a.client, r).await.expect("a decision").overall_code,
            Code::Ok as i32
        );
    }

    cluster.nodes()[FAILING].pause();
    let started = Instant::now();
    let status = call(&a.client, &requests[FAILING])
        .await
        .expect_err("no decision while its node is stuck");
    let elapsed = started.elapsed();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    // Bounded by the store's timeout (plus slack for a busy machine), not a client default.
    assert!(
        elapsed < SHORT + Duration::from_secs(2),
        "answered after {elapsed:?}"
    );
    for node in healthy_nodes() {
        let response = call(&a.client, &requests[node])
            .await
            .unwrap_or_else(|s| panic!("node {node} is fine, yet {s:?}"));
        assert_eq!(response.overall_code, Code::Ok as i32, "node {node}");
    }
    // Readiness: the scripts cannot load on every node while one is stuck, yet the other
    // primaries answer, so the replica stays ready (see the dead-node test for why).
    assert!(a.store.load_scripts().await.is_err());
    a.store
        .probe()
        .await
        .expect("ready while two nodes of three answer");

    cluster.nodes()[FAILING].resume();
    let deadline = Instant::now() + PATIENCE;
    loop {
        match call(&a.client, &requests[FAILING]).await {
            Ok(response) => {
                assert_eq!(response.overall_code, Code::Ok as i32);
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
async fn a_dead_node_fails_only_its_own_keys_and_is_found_again_when_it_returns() {
    let mut cluster = RedisCluster::start(NODES);
    let clock = clock_now();
    let a = cluster_instance(&cluster, &clock).await;
    let values = value_per_node(&cluster, "sliding", clock.now_us()).await;
    let requests: Vec<RateLimitRequest> = values
        .iter()
        .map(|v| rule_request(&["sliding"], v))
        .collect();
    for r in &requests {
        let response = call(&a.client, r).await.expect("a decision");
        assert_eq!(response.statuses[0].limit_remaining, 19);
    }

    cluster.kill_node(FAILING);
    let status = call(&a.client, &requests[FAILING])
        .await
        .expect_err("no decision while its node is down");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    for node in healthy_nodes() {
        let response = call(&a.client, &requests[node])
            .await
            .unwrap_or_else(|s| panic!("node {node} is fine, yet {s:?}"));
        assert_eq!(response.statuses[0].limit_remaining, 18, "node {node}");
    }
    // Readiness: the other nodes answer, so the replica stays ready (every replica shares
    // the cluster: calling them all unready would fail every key, not a third of them),
    // whatever the decisions just did.
    a.store
        .probe()
        .await
        .expect("ready while two nodes of three answer");

    cluster.restart_node(FAILING);
    // The client's connection to the old process is dead; it must find the new one.
    let deadline = Instant::now() + PATIENCE;
    let response = loop {
        match call(&a.client, &requests[FAILING]).await {
            Ok(response) => break response,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable);
                assert!(Instant::now() < deadline, "no recovery: {status:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // The node came back empty: its counter starts again, and its script cache too.
    assert_eq!(response.overall_code, Code::Ok as i32);
    assert_eq!(response.statuses[0].limit_remaining, 19);
    let reloads = a.store.script_reloads();
    assert!(
        reloads >= 1,
        "the restarted node ran the script without EVAL"
    );
    assert!(scripts_on(&cluster, FAILING, &a).await[0]);
    // The other nodes kept their counters and their scripts.
    for node in healthy_nodes() {
        let response = call(&a.client, &requests[node]).await.expect("a decision");
        assert_eq!(response.statuses[0].limit_remaining, 17, "node {node}");
    }
    assert_eq!(a.store.script_reloads(), reloads);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_formed_after_the_service_started_is_used_once_whole() {
    let cluster = RedisCluster::start_unformed(NODES);
    let clock = clock_now();
    // As the service starts: the connection is made in the background, nothing waits.
    let store =
        RedisStore::connect(&RedisTarget::Cluster(cluster.urls()), TIMEOUT).expect("valid urls");
    assert!(store.load_scripts().await.is_err(), "no cluster yet");
    cluster.form();
    let deadline = Instant::now() + PATIENCE;
    while let Err(error) = store.load_scripts().await {
        assert!(Instant::now() < deadline, "scripts never loaded: {error}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let values = value_per_node(&cluster, "sliding", clock.now_us()).await;
    let tree = integrated();
    for (node, value) in values.iter().enumerate() {
        let found = tree
            .find("edge", &entries("sliding", value))
            .expect("a limit");
        let (_, policy) = found.limit.rate.as_ref().expect("limited");
        let check = Check {
            key: &found.counter_key,
            policy,
            hits: 1,
        };
        let decisions = store
            .check(&[check], clock.now_us())
            .await
            .unwrap_or_else(|e| panic!("node {node}: {e}"));
        assert!(decisions[0].allowed, "node {node}");
        assert_eq!(decisions[0].remaining, 19, "node {node}");
        assert!(keys_on(&cluster, node)
            .await
            .contains(&storage_key(&check, clock.now_us())));
    }
}
