//! Test harness: a real `redis-server` on an ephemeral port owned by a guard, a Redis
//! Cluster of such servers, and in-process service instances on 127.0.0.1:0 reached through
//! tonic clients.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tollgate_proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use tollgate_proto::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use tollgate_proto::envoy::service::ratelimit::v3::rate_limit_response::Code;
use tollgate_proto::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use tollgate_proto::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tollgate_ratelimit::algorithm::ManualClock;
use tollgate_ratelimit::limits::DescriptorTree;
use tollgate_ratelimit::metrics::Metrics;
use tollgate_ratelimit::server;
use tollgate_ratelimit::service::{CurrentLimits, LimitSet, RateLimiter};
use tollgate_ratelimit::store::redis::{RedisStore, RedisTarget};
use tonic::transport::Channel;

/// Generous: CI machines are slow, and nothing here waits unless something is wrong.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// Forming a cluster takes `redis-cli` a few seconds of gossip; this allows for a busy
/// 2-core machine.
pub const CLUSTER_PATIENCE: Duration = Duration::from_secs(60);

/// A redis-server child process, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// Arguments after the standalone ones (cluster mode), kept for restarts.
    extra_args: Vec<String>,
    dir: tempfile::TempDir,
}

// The conformance harness's port reservation: below the ephemeral range, so that the
// outgoing sockets these tests open in numbers (cluster clients, redis-cli) cannot take a
// port between its reservation and redis-server binding it.
// Its unit test is compiled here too, idle in the bench that includes this file.
#[path = "../../../tests/src/ports.rs"]
#[allow(unused_imports)]
mod ports;
pub use ports::reserve_port;

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(reserve_port(), |_| Vec::new())
    }

    /// A cluster-enabled node that belongs to no cluster yet (see [`RedisCluster`]). Its
    /// `nodes.conf` lives in its own directory, so a restart rejoins with the same identity.
    fn start_cluster_node() -> Self {
        // The cluster bus defaults to the port + 10000; a port of its own keeps it among
        // the reserved ones.
        let bus_port = reserve_port();
        Self::start_with(reserve_port(), |dir| {
            let nodes_conf = dir.join("nodes.conf").display().to_string();
            [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &nodes_conf,
                "--cluster-port",
                &bus_port.to_string(),
                // A node a test pauses must not be declared failed meanwhile: without
                // replicas, that takes the whole cluster down (default 15 s).
                "--cluster-node-timeout",
                "120000",
            ]
            .map(String::from)
            .to_vec()
        })
    }

    fn start_with(port: u16, extra_args: impl FnOnce(&std::path::Path) -> Vec<String>) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut server = RedisServer {
            child: None,
            port,
            extra_args: extra_args(dir.path()),
            dir,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and waits for PING to answer.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", &self.dir.path().display().to_string()])
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/provision.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        while !self.pings() {
            // Else a Redis someone else started on this port would pass for ours.
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("redis-server on port {} exited: {status}", self.port);
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers, as with
    /// a Redis stuck in a long command or behind a dead network.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }

    fn pings(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// A plain client for looking inside.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connects")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of primaries without replicas, each a [`RedisServer`] (so each is
/// killed on drop), formed with `redis-cli --cluster create` as an operator would.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// `redis-cli --cluster create`'s output, shown if forming the cluster fails.
    dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts `primaries` nodes, joins them into one cluster and returns once every node
    /// reports `cluster_state:ok` and knows every other node, so that any of them can be
    /// a client's seed and none answers `CLUSTERDOWN`.
    pub fn start(primaries: usize) -> Self {
        let cluster = Self::start_unformed(primaries);
        cluster.form();
        cluster
    }

    /// The nodes, running but not yet joined: each answers `PING` and serves no slot.
    pub fn start_unformed(primaries: usize) -> Self {
        let nodes = (0..primaries)
            .map(|_| RedisServer::start_cluster_node())
            .collect();
        RedisCluster {
            nodes,
            dir: tempfile::tempdir().expect("a temp dir"),
        }
    }

    /// Joins the nodes into one cluster (see [`Self::start`]).
    pub fn form(&self) {
        self.create();
        self.wait_until_formed();
    }

    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Kills node `index` (SIGKILL). The others go on serving their slots: they would
    /// declare it failed only after the (long) node timeout.
    pub fn kill_node(&mut self, index: usize) {
        self.nodes[index].kill();
    }

    /// Kills node `index` if it runs and starts it again on the same ports, empty (nothing is
    /// persisted, scripts included) but with its `nodes.conf`, so it rejoins serving the
    /// same slots; returns once the cluster is whole again.
    pub fn restart_node(&mut self, index: usize) {
        self.nodes[index].restart();
        self.wait_until_formed();
    }

    /// Every node's URL, what `--redis-cluster-url` takes as a comma list.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    fn create(&self) {
        let log_path = self.dir.path().join("redis-cli-create.log");
        let log = File::create(&log_path).expect("a log file");
        let mut child = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a second handle"))
            .stderr(log)
            .spawn()
            .expect("redis-cli runs (scripts/provision.sh installs it)");
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        // `redis-cli` waits for the nodes to agree and could wait forever if they never do.
        let deadline = Instant::now() + CLUSTER_PATIENCE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("redis-cli waits") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "redis-cli --cluster create still running after {CLUSTER_PATIENCE:?}:\n{}",
                    log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "redis-cli --cluster create: {status}\n{}",
            log()
        );
    }

    fn wait_until_formed(&self) {
        let expected_nodes = format!("cluster_known_nodes:{}", self.nodes.len());
        let deadline = Instant::now() + CLUSTER_PATIENCE;
        for node in &self.nodes {
            loop {
                let info = redis_cli(node.port, &["cluster", "info"]);
                if info.contains("cluster_state:ok") && info.contains(&expected_nodes) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} not in a formed cluster after {CLUSTER_PATIENCE:?}:\n{info}",
                    node.port
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The index in [`Self::nodes`] of the node serving `key`'s hash slot, as the cluster
    /// itself says (`CLUSTER KEYSLOT`, then `CLUSTER NODES`' slot ranges).
    pub async fn node_of(&self, key: &str) -> usize {
        let mut conn = self.nodes[0].client().await;
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("CLUSTER KEYSLOT");
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await
            .expect("CLUSTER NODES");
        // `<id> <ip:port@bus> <flags> <primary> <ping> <pong> <epoch> <link> <slot ranges…>`
        let owner = nodes
            .lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let serves = fields.get(8..)?.iter().any(|range| {
                    let (first, last) = range.split_once('-').unwrap_or((range, range));
                    matches!((first.parse::<u16>(), last.parse::<u16>()),
                        (Ok(first), Ok(last)) if (first..=last).contains(&slot))
                });
                let port = fields
                    .get(1)?
                    .split(['@', ':'])
                    .nth(1)?
                    .parse::<u16>()
                    .ok()?;
                serves.then_some(port)
            })
            .unwrap_or_else(|| panic!("no node serves slot {slot}:\n{nodes}"));
        self.nodes
            .iter()
            .position(|n| n.port == owner)
            .unwrap_or_else(|| panic!("slot {slot} served by unknown port {owner}"))
    }
}

/// `redis-cli -p PORT ARGS…`'s output (stdout and stderr); a failure to run is a panic.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let Output { stdout, stderr, .. } = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    )
}

/// One in-process service instance; stops when dropped.
pub struct Instance {
    pub addr: SocketAddr,
    pub store: Arc<RedisStore>,
    pub client: RateLimitServiceClient<Channel>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub async fn instance(
    redis: &RedisServer,
    tree: DescriptorTree,
    clock: ManualClock,
    timeout: Duration,
) -> Instance {
    instance_on(&RedisTarget::Single(redis.url()), tree, clock, timeout).await
}

/// An instance on any Redis target, returned once its store has loaded the scripts: a
/// cluster connection is made in the background, so until then loading fails and is retried.
pub async fn instance_on(
    target: &RedisTarget,
    tree: DescriptorTree,
    clock: ManualClock,
    timeout: Duration,
) -> Instance {
    let store = Arc::new(RedisStore::connect(target, timeout).expect("valid url"));
    let deadline = Instant::now() + PATIENCE;
    while let Err(error) = store.load_scripts().await {
        assert!(Instant::now() < deadline, "scripts did not load: {error}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = Metrics::unregistered();
    let limiter = RateLimiter::new(
        CurrentLimits::new(LimitSet::new(tree, &metrics)),
        store.clone(),
        clock,
        metrics,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(listener, limiter, async {
        let _ = stopped.await;
    }));
    let client = RateLimitServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connects");
    Instance {
        addr,
        store,
        client,
        _stop: stop,
    }
}

pub fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        ..RateLimitDescriptor::default()
    }
}

pub fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_string(),
        descriptors,
        hits_addend: 0,
    }
}

/// The limits an integrated routes.yaml text declares.
pub fn routes_tree(yaml: &str) -> DescriptorTree {
    match tollgate_routes::parse("routes.yaml", yaml) {
        Ok(config) => tollgate_ratelimit::limits::routes::build(&config),
        Err(e) => panic!("{e}"),
    }
}

/// Decisions as (admitted, over limit); any call that failed fails the test.
pub fn tally(responses: Vec<Result<RateLimitResponse, tonic::Status>>) -> (usize, usize) {
    let codes: Vec<i32> = responses
        .into_iter()
        .map(|r| r.expect("a decision").overall_code)
        .collect();
    let ok = codes.iter().filter(|&&c| c == Code::Ok as i32).count();
    let over = codes
        .iter()
        .filter(|&&c| c == Code::OverLimit as i32)
        .count();
    (ok, over)
}

/// `calls` concurrent requests, alternating between `a` and `b`: (admitted, over limit).
pub async fn race(
    a: &Instance,
    b: &Instance,
    r: &RateLimitRequest,
    calls: usize,
) -> (usize, usize) {
    let calls = (0..calls).map(|i| call(if i % 2 == 0 { &a.client } else { &b.client }, r));
    tally(futures::future::join_all(calls).await)
}

pub async fn call(
    client: &RateLimitServiceClient<Channel>,
    request: &RateLimitRequest,
) -> Result<RateLimitResponse, tonic::Status> {
    client
        .clone()
        .should_rate_limit(request.clone())
        .await
        .map(tonic::Response::into_inner)
}

/// Now, as the service's clock would say, so that keys look like production ones.
pub fn clock_now() -> ManualClock {
    ManualClock::at(tollgate_ratelimit::algorithm::unix_micros(
        std::time::SystemTime::now(),
    ))
}
