//! A real Redis as a guarded process, and a Redis Cluster of them.
//!
//! [`RedisServer::start`] runs `redis-server` on a reserved loopback port, without
//! persistence (`--save "" --appendonly no`: a restart starts empty, as a fresh cache node
//! would), and returns once it answers as itself: `INFO server` names its process id, so a
//! port taken by another test's server is noticed. A test can kill it to simulate an outage,
//! freeze it, and restart it on the same port, so that the clients already configured with
//! its URL find it again. [`RedisCluster`] joins several into one cluster with `redis-cli`,
//! as an operator would.
//!
//! Starting blocks: Redis starts in milliseconds, and benches start it where no runtime
//! runs.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::ports::reserve_port;
use crate::process::{scratch_dir, Process};

/// `redis-server` starts in milliseconds; this allows for a busy 2-core machine.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// One command never takes this long unless the server is gone or stuck.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Forming a cluster takes `redis-cli` a few seconds of gossip; this allows for a busy
/// 2-core machine.
const CLUSTER_PATIENCE: Duration = Duration::from_secs(60);

/// A running (or deliberately killed or paused) `redis-server`; dropping it kills the
/// process.
#[derive(Debug)]
pub struct RedisServer {
    // Field order matters for Drop: the process dies before its directory is removed.
    process: Process,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` on a fresh port and waits until it answers.
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

    /// `extra_args`, given the server's directory, follow the standalone arguments.
    fn start_with(port: u16, extra_args: impl FnOnce(&std::path::Path) -> Vec<String>) -> Self {
        let dir = scratch_dir("tollgate-redis-");
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(extra_args(dir.path()));
        let process = Process::spawn(&format!("redis-{port}"), command, dir.path())
            .expect("spawn redis-server (scripts/provision.sh installs it)");
        let mut server = RedisServer {
            process,
            port,
            _dir: dir,
        };
        server.wait_until_answering();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`, as given to `tollgate-ratelimit --redis-url`.
    pub fn url(&self) -> String {
        url(self.port)
    }

    /// Kills the server (SIGKILL): clients see their connections reset and new ones refused.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port (empty: nothing was persisted) and waits
    /// until it answers.
    pub fn restart(&mut self) {
        self.process
            .restart()
            .expect("spawn redis-server (scripts/provision.sh installs it)");
        self.wait_until_answering();
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
        let pid = self.process.pid();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Sends `PING` on a fresh connection; fails unless the answer is `PONG`.
    pub fn ping(&self) -> redis::RedisResult<()> {
        let pong: String = redis::cmd("PING").query(&mut connection(self.port)?)?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "PING answered",
                pong,
            )))
        }
    }

    /// A plain client for looking inside.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connects")
    }

    fn wait_until_answering(&mut self) {
        let (pid, port) = (self.process.pid(), self.port);
        self.process
            .wait_until_ready_blocking(START_PATIENCE, "answering", || {
                match answering_pid(port) {
                    Ok(answering) if answering == pid => Ok(()),
                    // Our server is still starting or about to fail to bind (its log says so).
                    Ok(answering) => Err(format!(
                        "port {port} answered by another redis-server (pid {answering})"
                    )),
                    Err(error) => Err(error.to_string()),
                }
            });
    }
}

/// A blocking connection to the server on `port` that gives up on a server that does not
/// answer.
fn connection(port: u16) -> redis::RedisResult<redis::Connection> {
    let connection =
        redis::Client::open(url(port))?.get_connection_with_timeout(COMMAND_TIMEOUT)?;
    connection.set_read_timeout(Some(COMMAND_TIMEOUT))?;
    connection.set_write_timeout(Some(COMMAND_TIMEOUT))?;
    Ok(connection)
}

/// The process id of the server answering on `port` (`INFO server`), which tells our own
/// server apart from another test's that took the port first.
fn answering_pid(port: u16) -> redis::RedisResult<u32> {
    let info: redis::InfoDict = redis::cmd("INFO")
        .arg("server")
        .query(&mut connection(port)?)?;
    info.get("process_id").ok_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "no process_id in INFO server",
        ))
    })
}

fn url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}")
}

/// A Redis Cluster of primaries without replicas, each a [`RedisServer`] (so each is
/// killed on drop), formed with `redis-cli --cluster create` as an operator would.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// Where `redis-cli --cluster create` logs.
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
            dir: scratch_dir("tollgate-redis-cluster-"),
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
        let mut command = Command::new("redis-cli");
        command
            .args(["--cluster", "create"])
            .args(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())))
            .args(["--cluster-replicas", "0", "--cluster-yes"]);
        // Its output is printed by the guard if forming the cluster fails.
        let mut create = Process::spawn("redis-cli-create", command, self.dir.path())
            .expect("redis-cli runs (scripts/provision.sh installs it)");
        // `redis-cli` waits for the nodes to agree and could wait forever if they never do.
        let deadline = Instant::now() + CLUSTER_PATIENCE;
        let status = loop {
            if let Some(status) = create.exit_status() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "redis-cli --cluster create still running after {CLUSTER_PATIENCE:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "redis-cli --cluster create: {status}");
    }

    fn wait_until_formed(&self) {
        let expected_nodes = format!("cluster_known_nodes:{}", self.nodes.len());
        let deadline = Instant::now() + CLUSTER_PATIENCE;
        for node in &self.nodes {
            loop {
                let info = redis_cli(node.port(), &["cluster", "info"]);
                if info.contains("cluster_state:ok") && info.contains(&expected_nodes) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} not in a formed cluster after {CLUSTER_PATIENCE:?}:\n{info}",
                    node.port()
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
            .position(|n| n.port() == owner)
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
