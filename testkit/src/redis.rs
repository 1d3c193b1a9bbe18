//! A real Redis as a guarded process, a Redis Cluster of them (with or without replicas),
//! and a primary with replicas watched by Redis Sentinel.
//!
//! [`RedisServer::start`] runs `redis-server` on a reserved loopback port, without
//! persistence (`--save "" --appendonly no`: a restart starts empty, as a fresh cache node
//! would), and returns once it answers as itself: `INFO server` names its process id, so a
//! port taken by another test's server is noticed. A test can kill it to simulate an outage,
//! freeze it, and restart it on the same port, so that the clients already configured with
//! its URL find it again. [`RedisCluster`] joins several into one cluster with `redis-cli`,
//! as an operator would. [`RedisSentinels`] runs a primary, its replicas and three sentinels
//! (`redis-server --sentinel`: Debian's redis-server package has no `redis-sentinel`), with
//! failure detection short enough for a test to watch a failover.
//!
//! A server can also run in a network namespace, as on a host of its own that a test can
//! cut off the network ([`RedisServer::start_in`]; the primary behind Sentinel too), or
//! stay here and be reachable from such namespaces ([`RedisServer::start_reachable_from`]);
//! so can one node of a cluster, the others announcing where that node reaches them
//! ([`RedisCluster::start_with_replicas_and_a_node_in`]); and a primary with one sentinel
//! on one side of a partition, its replicas with the other sentinels on the other
//! ([`RedisSentinels::start_split`]).
//!
//! Starting blocks: Redis starts in milliseconds, and benches start it where no runtime
//! runs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::host::Host;
use crate::ports::reserve_port;
use crate::process::{scratch_dir, Process};

/// `redis-server` starts in milliseconds; this allows for a busy 2-core machine.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// One command never takes this long unless the server is gone or stuck.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Forming a cluster takes `redis-cli` a few seconds of gossip; this allows for a busy
/// 2-core machine.
const CLUSTER_PATIENCE: Duration = Duration::from_secs(60);

/// A cluster without replicas: a node a test pauses must not be declared failed meanwhile,
/// since with no replica to promote that takes the whole cluster down (default 15 s).
const NODE_TIMEOUT_WITHOUT_REPLICAS: Duration = Duration::from_secs(120);

/// A cluster with replicas: how long a primary may be unreachable before its replica takes
/// over. Short, so that a test sees a failover within seconds; not so short that a busy
/// 2-core machine, where a node can miss a beat for a few hundred milliseconds, fails a
/// primary over that nobody killed.
pub const NODE_TIMEOUT_WITH_REPLICAS: Duration = Duration::from_millis(2000);

/// Sentinel's `down-after-milliseconds`: how long the primary may not answer before the
/// sentinels call it down and elect a replica; short for the same reasons as above.
pub const SENTINEL_DOWN_AFTER: Duration = Duration::from_millis(1000);

/// Sentinel's `failover-timeout`: how long a failover may take before it is retried (by
/// another sentinel, after twice this). A few times what a promotion takes on loopback.
const SENTINEL_FAILOVER_TIMEOUT: Duration = Duration::from_millis(3000);

/// Sentinels learn of replicas from the primary's `INFO` (every 10 s) and of each other
/// from hello messages (every 2 s); this allows for both and a busy machine.
const SENTINEL_PATIENCE: Duration = Duration::from_secs(60);

/// `min-replicas-max-lag` of [`RedisSentinels::start_split`]: a replica counts while its
/// last acknowledgement (sent every second, timed in whole seconds) is at most this old.
/// One second would count a replica lost whenever an acknowledgement straddles a second
/// boundary late; three leave a busy machine a missed beat.
pub const MIN_REPLICAS_MAX_LAG: Duration = Duration::from_secs(3);

/// A running (or deliberately killed or paused) `redis-server`; dropping it kills the
/// process.
#[derive(Debug)]
pub struct RedisServer {
    // Field order matters for Drop: the process dies before its directory is removed.
    process: Process,
    /// Where it answers from here: loopback, or its namespace's address.
    ip: IpAddr,
    port: u16,
    /// What it requires of clients (`--requirepass`), if anything.
    password: Option<String>,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` on a fresh port and waits until it answers.
    pub fn start() -> Self {
        Self::start_with(reserve_port(), None, &[], None, |_| Vec::new())
    }

    /// Starts `redis-server` inside `host`'s network namespace, bound to its address, as on a
    /// host of its own, and waits until it answers there.
    pub fn start_in(host: &Host) -> Self {
        Self::start_with(reserve_port(), Some(host), &[], None, |_| Vec::new())
    }

    /// Starts `redis-server` on loopback and on this side's address of each of `hosts`'
    /// links, so that processes in those namespaces reach it too ([`Self::url_from`]).
    pub fn start_reachable_from(hosts: &[Host]) -> Self {
        let outside: Vec<IpAddr> = hosts.iter().map(Host::outside_ip).collect();
        Self::start_with(reserve_port(), None, &outside, None, |_| Vec::new())
    }

    /// A replica of `primary`, returned once it answers (its copy may still be syncing),
    /// with the primary's password if it has one. It announces its loopback address, which
    /// the sentinels here reach, rather than the address its link to the primary comes from
    /// (another, when the primary runs in a namespace).
    pub fn start_replica_of(primary: &RedisServer) -> Self {
        Self::start_replica(primary, None, Vec::new())
    }

    /// A replica of `primary` on loopback or in `host`'s namespace, announcing the address
    /// it is reached at from here; `extra` follows the other arguments.
    fn start_replica(primary: &RedisServer, host: Option<&Host>, extra: Vec<String>) -> Self {
        let (primary_ip, primary_port) = (primary.ip.to_string(), primary.port().to_string());
        let announce = host.map_or_else(loopback, Host::ip).to_string();
        let password = primary.password.as_deref();
        Self::start_with(reserve_port(), host, &[], password, |_| {
            let mut args: Vec<String> = [
                "--replicaof",
                &primary_ip,
                &primary_port,
                "--replica-announce-ip",
                &announce,
            ]
            .map(String::from)
            .to_vec();
            args.extend(extra);
            args
        })
    }

    /// A primary (on loopback) that requires `password` of every client, replicas included.
    fn start_requiring(password: &str) -> Self {
        Self::start_with(reserve_port(), None, &[], Some(password), |_| Vec::new())
    }

    /// A cluster-enabled node that belongs to no cluster yet (see [`RedisCluster`]). Its
    /// `nodes.conf` lives in its own directory, so a restart rejoins with the same identity.
    fn start_cluster_node(node_timeout: Duration) -> Self {
        Self::start_cluster_node_at(node_timeout, &NodePlace::Loopback)
    }

    /// As [`Self::start_cluster_node`], at `place`: the node announces (`cluster-announce-ip`)
    /// the address the other nodes and the clients reach it at.
    fn start_cluster_node_at(node_timeout: Duration, place: &NodePlace) -> Self {
        // The cluster bus defaults to the port + 10000; a port of its own keeps it among
        // the reserved ones.
        let bus_port = reserve_port();
        let (host, also_bind, announce) = match place {
            NodePlace::Loopback => (None, vec![], None),
            NodePlace::In(host) => (Some(*host), vec![], Some(host.ip())),
            NodePlace::ReachableFrom(host) => {
                (None, vec![host.outside_ip()], Some(host.outside_ip()))
            }
        };
        Self::start_with(reserve_port(), host, &also_bind, None, |dir| {
            let nodes_conf = dir.join("nodes.conf").display().to_string();
            let mut args: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &nodes_conf,
                "--cluster-port",
                &bus_port.to_string(),
                "--cluster-node-timeout",
                &node_timeout.as_millis().to_string(),
            ]
            .map(String::from)
            .to_vec();
            if let Some(ip) = announce {
                args.extend(["--cluster-announce-ip".to_owned(), ip.to_string()]);
            }
            args
        })
    }

    /// A sentinel watching `primary` under `master_name`, with a quorum of 2 (of the three
    /// [`RedisSentinels`] runs), on loopback or in `host`'s namespace. Sentinel rewrites its
    /// configuration file as it learns, so the file lives in the sentinel's own directory.
    /// It announces the address it is reached at from here to the other sentinels, rather
    /// than the address its link to the primary comes from (another, when the primary runs
    /// in a namespace).
    fn start_sentinel(master_name: &str, primary: &RedisServer, host: Option<&Host>) -> Self {
        let port = reserve_port();
        let ip = host.map_or_else(loopback, Host::ip);
        let dir = scratch_dir("tollgate-sentinel-");
        let config = dir.path().join("sentinel.conf");
        let text = format!(
            "port {port}\n\
             bind {ip}\n\
             {protected_mode}\
             dir {dir}\n\
             sentinel announce-ip {ip}\n\
             sentinel monitor {master_name} {primary_ip} {primary_port} 2\n\
             sentinel down-after-milliseconds {master_name} {down_after}\n\
             sentinel failover-timeout {master_name} {failover_timeout}\n\
             {auth_pass}",
            // As for a server in a namespace (see `start_with`).
            protected_mode = if host.is_some() {
                "protected-mode no\n"
            } else {
                ""
            },
            dir = dir.path().display(),
            primary_ip = primary.ip,
            primary_port = primary.port,
            down_after = SENTINEL_DOWN_AFTER.as_millis(),
            failover_timeout = SENTINEL_FAILOVER_TIMEOUT.as_millis(),
            auth_pass = primary
                .password
                .as_ref()
                .map_or_else(String::new, |password| {
                    format!("sentinel auth-pass {master_name} {password}\n")
                }),
        );
        std::fs::write(&config, text).unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
        let mut command = Command::new("redis-server");
        command.arg(&config).arg("--sentinel");
        if let Some(host) = host {
            command = host.wrap(&command);
        }
        Self::spawn(ip, port, None, dir, command, "sentinel")
    }

    /// A server on `port`, on loopback or in `host`'s namespace, also bound to `also_bind`,
    /// requiring `password` when given (and using it with its primary, should it become a
    /// replica); `extra_args`, given the server's directory, follow the standalone arguments.
    fn start_with(
        port: u16,
        host: Option<&Host>,
        also_bind: &[IpAddr],
        password: Option<&str>,
        extra_args: impl FnOnce(&std::path::Path) -> Vec<String>,
    ) -> Self {
        let ip = host.map_or_else(loopback, Host::ip);
        let dir = scratch_dir("tollgate-redis-");
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string()])
            .arg("--bind")
            .args(std::iter::once(&ip).chain(also_bind).map(IpAddr::to_string))
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path());
        if host.is_some() || !also_bind.is_empty() {
            // Without a password, protected mode answers only loopback clients; these
            // addresses are a test's own veth link, which nothing else reaches.
            command.args(["--protected-mode", "no"]);
        }
        if let Some(password) = password {
            command.args(["--requirepass", password, "--masterauth", password]);
        }
        command.args(extra_args(dir.path()));
        if let Some(host) = host {
            command = host.wrap(&command);
        }
        Self::spawn(ip, port, password, dir, command, "redis")
    }

    /// Runs `command` (a server that will listen on `ip`:`port`, requiring `password`) with
    /// its logs in `dir`, and waits until it answers.
    fn spawn(
        ip: IpAddr,
        port: u16,
        password: Option<&str>,
        dir: tempfile::TempDir,
        command: Command,
        kind: &str,
    ) -> Self {
        let process = Process::spawn(&format!("{kind}-{port}"), command, dir.path())
            .expect("spawn redis-server (scripts/provision.sh installs it)");
        let mut server = RedisServer {
            process,
            ip,
            port,
            password: password.map(str::to_owned),
            _dir: dir,
        };
        server.wait_until_answering();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where it answers from here.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// `redis://[:PASSWORD@]IP:PORT`, as given to `tollgate-ratelimit --redis-url`.
    pub fn url(&self) -> String {
        self.url_at(self.addr())
    }

    /// The URL a process in `host`'s namespace reaches this server at, for one started
    /// [`Self::start_reachable_from`] that host.
    pub fn url_from(&self, host: &Host) -> String {
        self.url_at(SocketAddr::new(host.outside_ip(), self.port))
    }

    fn url_at(&self, addr: SocketAddr) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@{addr}"),
            None => format!("redis://{addr}"),
        }
    }

    /// `redis-cli ARGS…` against this server, with its password.
    fn cli(&self, args: &[&str]) -> String {
        redis_cli_at(self.addr(), self.password.as_deref(), args)
    }

    /// `INFO SECTION`'s text, asked on a connection of its own.
    pub fn info(&self, section: &str) -> String {
        self.cli(&["info", section])
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
        self.process.pause();
    }

    pub fn resume(&self) {
        self.process.resume();
    }

    /// Sends `PING` on a fresh connection; fails unless the answer is `PONG`.
    pub fn ping(&self) -> redis::RedisResult<()> {
        let pong: String = redis::cmd("PING").query(&mut connection(&self.url())?)?;
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

    /// The operating-system process id of the server (of its last start).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// How many keys the server holds (`DBSIZE`), asked on a connection of its own. Keys
    /// that have expired but that Redis has not reclaimed yet are counted.
    pub fn dbsize(&self) -> redis::RedisResult<u64> {
        redis::cmd("DBSIZE").query(&mut connection(&self.url())?)
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
        let (pid, addr, url) = (self.process.pid(), self.addr(), self.url());
        self.process
            .wait_until_ready_blocking(START_PATIENCE, "answering", || {
                match answering_pid(&url) {
                    Ok(answering) if answering == pid => Ok(()),
                    // Our server is still starting or about to fail to bind (its log says so).
                    Ok(answering) => Err(format!(
                        "{addr} answered by another redis-server (pid {answering})"
                    )),
                    Err(error) => Err(error.to_string()),
                }
            });
    }
}

/// A blocking connection to the server at `url` that gives up on a server that does not
/// answer.
fn connection(url: &str) -> redis::RedisResult<redis::Connection> {
    let connection = redis::Client::open(url)?.get_connection_with_timeout(COMMAND_TIMEOUT)?;
    connection.set_read_timeout(Some(COMMAND_TIMEOUT))?;
    connection.set_write_timeout(Some(COMMAND_TIMEOUT))?;
    Ok(connection)
}

/// The process id of the server answering at `url` (`INFO server`), which tells our own
/// server apart from another test's that took the port first.
fn answering_pid(url: &str) -> redis::RedisResult<u32> {
    let info: redis::InfoDict = redis::cmd("INFO")
        .arg("server")
        .query(&mut connection(url)?)?;
    info.get("process_id").ok_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "no process_id in INFO server",
        ))
    })
}

/// Where everything but a server started in a namespace listens.
fn loopback() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

/// Where a cluster node runs: on loopback; in a namespace; or here, reachable from (and
/// announcing the address it has on the link to) a namespace.
enum NodePlace<'a> {
    Loopback,
    In(&'a Host),
    ReachableFrom(&'a Host),
}

/// A Redis Cluster, each node a [`RedisServer`] (so each is killed on drop), formed with
/// `redis-cli --cluster create` as an operator would: primaries only, or each primary with
/// one replica that takes over when it fails.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// Where each node says it is (`cluster-announce-ip`, or loopback): what the cluster is
    /// formed with.
    announced: Vec<SocketAddr>,
    /// `--cluster-replicas`: 0, or 1 for a replica per primary.
    replicas_per_primary: usize,
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

    /// `primaries` primaries and as many replicas, one each, with a node timeout of
    /// [`NODE_TIMEOUT_WITH_REPLICAS`]; returns once the cluster is formed (as
    /// [`Self::start`]) and every replica has copied its primary, so that killing a primary
    /// promotes its replica.
    pub fn start_with_replicas(primaries: usize) -> Self {
        let nodes = (0..primaries * 2)
            .map(|_| RedisServer::start_cluster_node(NODE_TIMEOUT_WITH_REPLICAS))
            .collect();
        Self::form_with_replicas(nodes, vec![loopback(); primaries * 2])
    }

    /// As [`Self::start_with_replicas`], with the first node in `host`'s namespace, as on a
    /// host of its own that a test can cut off, and the others here, reachable from it; every
    /// node announces the address it is reached at from both. The first node is a primary
    /// (`redis-cli` spreads the primaries over the addresses first), and its replica is here.
    pub fn start_with_replicas_and_a_node_in(host: &Host, primaries: usize) -> Self {
        let mut nodes = vec![RedisServer::start_cluster_node_at(
            NODE_TIMEOUT_WITH_REPLICAS,
            &NodePlace::In(host),
        )];
        let mut announced = vec![host.ip()];
        for _ in 1..primaries * 2 {
            nodes.push(RedisServer::start_cluster_node_at(
                NODE_TIMEOUT_WITH_REPLICAS,
                &NodePlace::ReachableFrom(host),
            ));
            announced.push(host.outside_ip());
        }
        let cluster = Self::form_with_replicas(nodes, announced);
        let primary = cluster.nodes[0].cli(&["role"]);
        assert!(
            primary.starts_with("master"),
            "the node in the namespace is not a primary:\n{primary}"
        );
        cluster
    }

    fn form_with_replicas(nodes: Vec<RedisServer>, announced: Vec<IpAddr>) -> Self {
        let announced = nodes
            .iter()
            .zip(announced)
            .map(|(node, ip)| SocketAddr::new(ip, node.port()))
            .collect();
        let cluster = RedisCluster {
            nodes,
            announced,
            replicas_per_primary: 1,
            dir: scratch_dir("tollgate-redis-cluster-"),
        };
        cluster.form();
        let deadline = Instant::now() + CLUSTER_PATIENCE;
        for node in &cluster.nodes {
            loop {
                let info = node.cli(&["info", "replication"]);
                if info.contains("role:master") || info.contains("master_link_status:up") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "replica {} not in sync after {CLUSTER_PATIENCE:?}:\n{info}",
                    node.port()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    /// The nodes, running but not yet joined: each answers `PING` and serves no slot.
    pub fn start_unformed(primaries: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..primaries)
            .map(|_| RedisServer::start_cluster_node(NODE_TIMEOUT_WITHOUT_REPLICAS))
            .collect();
        RedisCluster {
            announced: nodes.iter().map(RedisServer::addr).collect(),
            nodes,
            replicas_per_primary: 0,
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
            .args(self.announced.iter().map(SocketAddr::to_string))
            .args([
                "--cluster-replicas",
                &self.replicas_per_primary.to_string(),
                "--cluster-yes",
            ]);
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
                let info = node.cli(&["cluster", "info"]);
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

    /// The index of the replica of primary `index`, as `CLUSTER NODES` says.
    pub fn replica_of(&self, index: usize) -> usize {
        let nodes = self.nodes[index].cli(&["cluster", "nodes"]);
        let lines: Vec<Vec<&str>> = nodes
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let primary_id = lines
            .iter()
            .find(|f| f.get(2).is_some_and(|flags| flags.contains("myself")))
            .and_then(|f| f.first())
            .unwrap_or_else(|| panic!("no myself line:\n{nodes}"));
        let replica_port = lines
            .iter()
            .find(|f| f.get(3) == Some(primary_id))
            .and_then(|f| node_port(f.get(1)?))
            .unwrap_or_else(|| panic!("node {index} has no replica:\n{nodes}"));
        self.index_of_port(replica_port)
    }

    /// Waits until node `index` is a primary serving slots and sees the cluster whole
    /// (`cluster_state:ok`), as after its primary failed and it was promoted.
    pub fn wait_until_promoted(&self, index: usize) {
        let node = &self.nodes[index];
        let port = node.port();
        let deadline = Instant::now() + CLUSTER_PATIENCE;
        loop {
            let role = node.cli(&["role"]);
            let info = node.cli(&["cluster", "info"]);
            if role.starts_with("master") && info.contains("cluster_state:ok") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {port} not promoted after {CLUSTER_PATIENCE:?}:\n{role}\n{info}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn index_of_port(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// The index in [`Self::nodes`] of the node serving `key`'s hash slot, as the cluster
    /// itself says (`CLUSTER KEYSLOT`, then `CLUSTER NODES`' slot ranges), asked of the
    /// first node that answers.
    pub async fn node_of(&self, key: &str) -> usize {
        let live = self
            .nodes
            .iter()
            .find(|n| n.ping().is_ok())
            .expect("a node that answers");
        let mut conn = live.client().await;
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
                let port = node_port(fields.get(1)?)?;
                serves.then_some(port)
            })
            .unwrap_or_else(|| panic!("no node serves slot {slot}:\n{nodes}"));
        self.nodes
            .iter()
            .position(|n| n.port() == owner)
            .unwrap_or_else(|| panic!("slot {slot} served by unknown port {owner}"))
    }
}

/// The port in `CLUSTER NODES`' `ip:port@bus` field.
fn node_port(address: &str) -> Option<u16> {
    address.split(['@', ':']).nth(1)?.parse().ok()
}

/// A primary, its replicas and three sentinels watching them (quorum 2), each a
/// [`RedisServer`] killed on drop. The replicas and the sentinels run on loopback; the
/// primary too, or in a network namespace of its own ([`Self::start_with_primary_in`]).
pub struct RedisSentinels {
    /// `servers[0]` is the first primary; the sentinels may promote any of them.
    servers: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

impl RedisSentinels {
    /// The name the sentinels monitor the primary under.
    pub const MASTER_NAME: &'static str = "tollgate";

    /// Starts a primary and `replicas` replicas, waits until the replicas have copied it,
    /// then starts three sentinels and returns once each knows the primary, every replica
    /// and the two other sentinels: before that a failover could not be agreed on.
    pub fn start(replicas: usize) -> Self {
        Self::start_with_primary(RedisServer::start(), replicas)
    }

    /// As [`Self::start`], with every server requiring `password` (`requirepass`, and
    /// `masterauth` to replicate) and the sentinels given it (`auth-pass`); the sentinels
    /// themselves require none.
    pub fn start_with_password(replicas: usize, password: &str) -> Self {
        Self::start_with_primary(RedisServer::start_requiring(password), replicas)
    }

    /// As [`Self::start`], with the primary in `host`'s network namespace, as on a host of
    /// its own that a test can cut off while the replicas and the sentinels still see each
    /// other.
    pub fn start_with_primary_in(host: &Host, replicas: usize) -> Self {
        Self::start_with_primary(RedisServer::start_in(host), replicas)
    }

    /// A partition waiting to happen: the primary and one sentinel in `minority`'s
    /// namespace, two replicas and the two other sentinels in `majority`'s, the two
    /// namespaces joined directly (a link the test cuts) and both reachable from here.
    /// Every server refuses writes while fewer than one replica has acknowledged the
    /// replication stream within [`MIN_REPLICAS_MAX_LAG`] (`min-replicas-to-write 1`), as
    /// docs/operations.md advises: so the primary left with the minority stops taking
    /// increments that its demotion would lose, and the replica promoted on the other side
    /// still has one to count.
    pub fn start_split(minority: &Host, majority: &Host) -> Self {
        let min_replicas = || {
            [
                "--min-replicas-to-write",
                "1",
                "--min-replicas-max-lag",
                &MIN_REPLICAS_MAX_LAG.as_secs().to_string(),
            ]
            .map(String::from)
            .to_vec()
        };
        let primary = RedisServer::start_with(reserve_port(), Some(minority), &[], None, |_| {
            min_replicas()
        });
        let replicas = (0..2)
            .map(|_| RedisServer::start_replica(&primary, Some(majority), min_replicas()))
            .collect();
        Self::assemble(
            primary,
            replicas,
            [Some(minority), Some(majority), Some(majority)],
        )
    }

    fn start_with_primary(primary: RedisServer, replicas: usize) -> Self {
        let replicas = (0..replicas)
            .map(|_| RedisServer::start_replica_of(&primary))
            .collect();
        Self::assemble(primary, replicas, [None, None, None])
    }

    /// Waits until `replicas` have copied `primary`, then starts a sentinel on each of
    /// `sentinel_hosts` (loopback for `None`) and returns once each knows the primary,
    /// every replica and the two other sentinels: before that a failover could not be
    /// agreed on.
    fn assemble(
        primary: RedisServer,
        replicas: Vec<RedisServer>,
        sentinel_hosts: [Option<&Host>; 3],
    ) -> Self {
        let mut servers = replicas;
        let replicas = servers.len();
        servers.insert(0, primary);
        let deadline = Instant::now() + SENTINEL_PATIENCE;
        for replica in &servers[1..] {
            loop {
                let info = replica.cli(&["info", "replication"]);
                if info.contains("master_link_status:up") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "replica {} not in sync after {SENTINEL_PATIENCE:?}:\n{info}",
                    replica.port()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let sentinels: Vec<RedisServer> = sentinel_hosts
            .iter()
            .map(|host| RedisServer::start_sentinel(Self::MASTER_NAME, &servers[0], *host))
            .collect();
        for sentinel in &sentinels {
            loop {
                let master = sentinel_master(sentinel);
                let known = |field: &str, n: usize| {
                    master.get(field).map(String::as_str) == Some(&n.to_string())
                };
                if master.get("flags").map(String::as_str) == Some("master")
                    && known("num-slaves", replicas)
                    && known("num-other-sentinels", 2)
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "sentinel {} does not know the whole set after {SENTINEL_PATIENCE:?}: {master:?}",
                    sentinel.addr()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        RedisSentinels { servers, sentinels }
    }

    /// The primary and replicas, in the order they were started.
    pub fn servers(&self) -> &[RedisServer] {
        &self.servers
    }

    /// `MASTER_NAME,IP:PORT,…`: what `--redis-sentinel-url` takes, in
    /// envoyproxy/ratelimit's form.
    pub fn sentinel_list(&self) -> String {
        std::iter::once(Self::MASTER_NAME.to_string())
            .chain(self.sentinels.iter().map(|s| s.addr().to_string()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index in [`Self::servers`] of the server the (first answering) sentinel names as
    /// the primary.
    pub fn primary(&self) -> usize {
        let addr = self
            .sentinels
            .iter()
            .find_map(named_primary)
            .expect("a sentinel that names the primary");
        self.index_of(addr)
    }

    fn index_of(&self, addr: SocketAddr) -> usize {
        self.servers
            .iter()
            .position(|s| s.addr() == addr)
            .unwrap_or_else(|| panic!("the sentinels name an unknown primary at {addr}"))
    }

    /// Has a sentinel hand the primary's role to a replica while the primary runs
    /// (`SENTINEL FAILOVER`, a switchover as for maintenance): the old primary becomes a
    /// replica of the new one.
    pub fn fail_over(&self) {
        let reply = self.sentinels[0].cli(&["sentinel", "failover", Self::MASTER_NAME]);
        assert_eq!(reply.trim(), "OK", "SENTINEL FAILOVER");
    }

    /// Kills server `index` (SIGKILL).
    pub fn kill(&mut self, index: usize) {
        self.servers[index].kill();
    }

    /// Waits until every sentinel names a primary other than `old` and that server says it
    /// is one (`ROLE`); returns its index.
    /// The old primary is never asked anything: it may be cut off the network, where a
    /// question would wait for TCP to give up.
    pub fn wait_for_new_primary(&self, old: usize) -> usize {
        let old_addr = self.servers[old].addr();
        let deadline = Instant::now() + SENTINEL_PATIENCE;
        loop {
            let named: Vec<Option<SocketAddr>> = self.sentinels.iter().map(named_primary).collect();
            if let Some(Some(addr)) = named.first() {
                let agreed = named.iter().all(|n| *n == Some(*addr));
                if agreed
                    && *addr != old_addr
                    && self.servers[self.index_of(*addr)]
                        .cli(&["role"])
                        .starts_with("master")
                {
                    return self.index_of(*addr);
                }
            }
            assert!(
                Instant::now() < deadline,
                "no new primary after {SENTINEL_PATIENCE:?}: sentinels name {named:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl RedisSentinels {
    /// Waits until the sentinels at `sentinels` (indices, in the order [`Self::sentinel_list`]
    /// lists them) all name a primary other than `old`, and that server says it is one
    /// (`ROLE`); returns its index. For a partition, where the sentinels on the old
    /// primary's side go on naming it.
    pub fn wait_for_promotion_by(&self, sentinels: &[usize], old: usize) -> usize {
        let old_addr = self.servers[old].addr();
        let deadline = Instant::now() + SENTINEL_PATIENCE;
        loop {
            let named: Vec<Option<SocketAddr>> = sentinels
                .iter()
                .map(|&i| named_primary(&self.sentinels[i]))
                .collect();
            if let Some(Some(addr)) = named.first() {
                if named.iter().all(|n| *n == Some(*addr))
                    && *addr != old_addr
                    && self.servers[self.index_of(*addr)]
                        .cli(&["role"])
                        .starts_with("master")
                {
                    return self.index_of(*addr);
                }
            }
            assert!(
                Instant::now() < deadline,
                "sentinels {sentinels:?} promoted nothing after {SENTINEL_PATIENCE:?}: they name {named:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every replica of the primary has acknowledged the replication stream up
    /// to where it stood when this was called (`INFO replication`'s `master_repl_offset`
    /// against each `slaveN:…,offset=…`): the writes made so far survive a failover.
    pub fn wait_until_replicated(&self) {
        let primary = &self.servers[self.primary()];
        let field = |info: &str, name: &str| -> Option<u64> {
            info.lines()
                .find_map(|line| line.trim().strip_prefix(name)?.parse().ok())
        };
        let info = primary.info("replication");
        let target = field(&info, "master_repl_offset:")
            .unwrap_or_else(|| panic!("no master_repl_offset:\n{info}"));
        let replicas = self.servers.len() - 1;
        let deadline = Instant::now() + SENTINEL_PATIENCE;
        loop {
            let info = primary.info("replication");
            let acknowledged = info
                .lines()
                .filter(|line| line.starts_with("slave") && line.contains(":ip="))
                .filter_map(|line| {
                    line.split(',')
                        .find_map(|part| part.strip_prefix("offset=")?.trim().parse::<u64>().ok())
                })
                .filter(|offset| *offset >= target)
                .count();
            if acknowledged == replicas {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{acknowledged} of {replicas} replicas at offset {target} after {SENTINEL_PATIENCE:?}:\n{info}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until server `index` is a replica in sync with a primary (`ROLE` and
    /// `master_link_status:up`), as an old primary is once the sentinels reach it again.
    pub fn wait_until_demoted(&self, index: usize) {
        let server = &self.servers[index];
        let deadline = Instant::now() + SENTINEL_PATIENCE;
        loop {
            let info = server.info("replication");
            if info.contains("role:slave") && info.contains("master_link_status:up") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not demoted after {SENTINEL_PATIENCE:?}:\n{info}",
                server.addr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `SENTINEL MASTER <name>` on `sentinel`, as field → value.
fn sentinel_master(sentinel: &RedisServer) -> std::collections::HashMap<String, String> {
    let reply = sentinel.cli(&["sentinel", "master", RedisSentinels::MASTER_NAME]);
    let lines: Vec<&str> = reply.lines().collect();
    lines
        .chunks_exact(2)
        .map(|pair| (pair[0].to_string(), pair[1].to_string()))
        .collect()
}

/// The primary's address as `sentinel` names it (`SENTINEL GET-MASTER-ADDR-BY-NAME`);
/// `None` if it does not answer.
fn named_primary(sentinel: &RedisServer) -> Option<SocketAddr> {
    let reply = sentinel.cli(&[
        "sentinel",
        "get-master-addr-by-name",
        RedisSentinels::MASTER_NAME,
    ]);
    let mut lines = reply.lines();
    let ip = lines.next()?.trim().parse().ok()?;
    let port = lines.next()?.trim().parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

/// `redis-cli -h IP -p PORT [-a PASSWORD] ARGS…`'s output (stdout and stderr); a failure to
/// run is a panic.
fn redis_cli_at(addr: SocketAddr, password: Option<&str>, args: &[&str]) -> String {
    let mut command = Command::new("redis-cli");
    if let Some(password) = password {
        command.args(["-a", password, "--no-auth-warning"]);
    }
    let Output { stdout, stderr, .. } = command
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
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
