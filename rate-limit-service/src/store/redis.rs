//! Counters in Redis, shared by every instance of the service.
//!
//! One multiplexed connection (a `ConnectionManager`, or a cluster connection for Redis
//! Cluster) carries every request: the checks of concurrent requests are written back to
//! back and pipelined by the connection. A fixed window is `INCRBY` + `EXPIRE` in one round
//! trip, as envoyproxy/ratelimit does; sliding windows and token buckets run a Lua script
//! (`scripts/*.lua`), loaded with `SCRIPT LOAD` and called by `EVALSHA`. A Redis that lost
//! its script cache (a restart, `SCRIPT FLUSH`) answers `NOSCRIPT`; that call is then made
//! with `EVAL`, which runs the script and caches it again, so the next `EVALSHA` succeeds
//! on whichever node the key lives.
//!
//! Every batch is bounded by the configured timeout; a Redis that is down or slow yields a
//! [`StoreError`], never a wait on a client default. The connection reconnects by itself in
//! the background when Redis comes back.
//!
//! Behind Redis Sentinel the connection goes to the master the sentinels name
//! ([`sentinel`]); a failure that a failover would explain (a broken or refused connection,
//! a timeout, a `READONLY` reply from a demoted master) has the sentinels asked again, so
//! the service follows a failover by itself.

mod sentinel;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisFuture, ServerErrorKind, Value};
use tokio::sync::OnceCell;

use self::sentinel::SentinelPrimary;
use super::over_limit::OverLimitCache;
use super::{storage_key, Check, Store, StoreError};
use crate::algorithm::{Decision, Policy, SlidingCounts, SLIDING_BUCKETS};

const SLIDING_WINDOW_LUA: &str = include_str!("scripts/sliding_window.lua");
const TOKEN_BUCKET_LUA: &str = include_str!("scripts/token_bucket.lua");

/// How long a cluster node's connection may hold requests that its node never
/// acknowledges (`TCP_USER_TIMEOUT`) before the kernel closes it. A node cut off the
/// network answers nothing, not even a reset, and a request that times out is only retried
/// on the same connection: without this the cluster connection would wait on the cut node
/// forever and never ask the cluster for the replica promoted in its place. A slow or
/// stuck Redis still acknowledges at the TCP level, so only a lost host or link trips it.
/// A few retransmissions (200 ms apart at first) fit within it.
const CLUSTER_CUT_OFF_AFTER: Duration = Duration::from_secs(1);

/// How many times the cluster connection tries to reconnect to a node it lost before it
/// drops the node and refreshes its slot map from the others (which then name the replica
/// promoted in the node's place, or the node again if it is still the primary).
const CLUSTER_RECONNECT_ATTEMPTS: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(3) {
    Some(n) => n,
    None => unreachable!(),
};

#[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
fn cluster_tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_user_timeout(CLUSTER_CUT_OFF_AFTER)
}

#[cfg(not(any(target_os = "android", target_os = "fuchsia", target_os = "linux")))]
fn cluster_tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default()
}

/// Where Redis is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://host:port[/db]`
    Single(String),
    /// Seed nodes of a Redis Cluster.
    Cluster(Vec<String>),
    /// The primary that the sentinels (`redis://host:port` each) monitor under `master`,
    /// reached with `master_auth` when it requires a password, counting in database `db`.
    Sentinel {
        master: String,
        sentinels: Vec<String>,
        master_auth: Option<RedisAuth>,
        db: i64,
    },
}

/// What Redis's `AUTH` takes: a password, and the user it belongs to (Redis 6 ACLs; without
/// one, the `default` user). Its `Debug` leaves the password out, so that it stays out of
/// logs.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisAuth {
    pub username: Option<String>,
    pub password: String,
}

impl std::fmt::Debug for RedisAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAuth")
            .field("username", &self.username)
            .field("password", &"…")
            .finish()
    }
}

/// A Lua script and its SHA1, what `EVALSHA` names it by.
#[derive(Clone, Debug)]
struct LoadedScript {
    body: &'static str,
    sha: String,
}

impl LoadedScript {
    fn new(body: &'static str) -> Self {
        LoadedScript {
            body,
            sha: redis::Script::new(body).get_hash().to_string(),
        }
    }
}

/// The connection requests go out on; cloning it is cheap and shares the socket.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(MultiplexedConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
            Connection::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
            Connection::Sentinel(c) => c.get_db(),
        }
    }
}

enum Source {
    Single(ConnectionManager),
    /// The connection is filled by a background task once a node answers; it then
    /// follows topology changes and reconnects by itself. The seeds are kept apart for the
    /// readiness probe (see [`RedisStore::probe`]).
    Cluster {
        connection: Arc<OnceCell<ClusterConnection>>,
        seeds: Vec<redis::Client>,
    },
    Sentinel(SentinelPrimary),
}

impl Source {
    /// Opens connections on the current runtime, without waiting for Redis.
    fn open(target: &RedisTarget, timeout: Duration) -> Result<Self, StoreError> {
        Ok(match target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(Duration::from_secs(1))
                    .set_number_of_retries(4);
                Source::Single(ConnectionManager::new_lazy_with_config(client, config)?)
            }
            RedisTarget::Cluster(nodes) => {
                let client = redis::cluster::ClusterClient::builder(nodes.clone())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .tcp_settings(cluster_tcp_settings())
                    .max_connection_attempts(CLUSTER_RECONNECT_ATTEMPTS)
                    .build()?;
                let seeds = nodes
                    .iter()
                    .map(|url| redis::Client::open(url.as_str()))
                    .collect::<Result<_, _>>()?;
                let cell = Arc::new(OnceCell::new());
                tokio::spawn(connect_cluster(client, cell.clone()));
                Source::Cluster {
                    connection: cell,
                    seeds,
                }
            }
            RedisTarget::Sentinel {
                master,
                sentinels,
                master_auth,
                db,
            } => Source::Sentinel(SentinelPrimary::open(
                master,
                sentinels,
                master_node(master_auth.as_ref(), *db),
                timeout,
            )?),
        })
    }
}

/// How to talk to a master found through Sentinel (and to any replica promoted in its
/// place): its password, and the database to select.
fn master_node(auth: Option<&RedisAuth>, db: i64) -> redis::RedisConnectionInfo {
    let mut info = redis::RedisConnectionInfo::default().set_db(db);
    if let Some(auth) = auth {
        info = info.set_password(&auth.password);
        if let Some(username) = &auth.username {
            info = info.set_username(username);
        }
    }
    info
}

/// The Redis store.
///
/// Each serving thread has its own (see [`Store::for_this_runtime`]): its own connection,
/// and a copy of the rest, which shares the over-limit cache and the counters.
pub struct RedisStore {
    source: Source,
    shared: Shared,
}

/// What every serving thread's store has alike.
#[derive(Clone)]
struct Shared {
    target: RedisTarget,
    sliding: LoadedScript,
    bucket: LoadedScript,
    over_limit: Arc<OverLimitCache>,
    timeout: Duration,
    script_reloads: Arc<AtomicU64>,
    local_hits: Option<prometheus_client::metrics::counter::Counter>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("timeout", &self.shared.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Sets up the connection without waiting for Redis: a Redis that is down at start-up
    /// makes checks and probes fail (so `/readyz` says not ready) until it comes up. Must
    /// run inside a Tokio runtime. Fails only for a malformed URL.
    pub fn connect(target: &RedisTarget, timeout: Duration) -> Result<Self, StoreError> {
        let store = RedisStore {
            source: Source::open(target, timeout)?,
            shared: Shared {
                target: target.clone(),
                sliding: LoadedScript::new(SLIDING_WINDOW_LUA),
                bucket: LoadedScript::new(TOKEN_BUCKET_LUA),
                over_limit: Arc::new(OverLimitCache::new()),
                timeout,
                script_reloads: Arc::new(AtomicU64::new(0)),
                local_hits: None,
            },
        };
        Ok(store)
    }

    /// Loads both scripts (`SCRIPT LOAD`) so that the first checks find them; also tells
    /// whether Redis answers. Bounded by the timeout.
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        let loaded = self.load_scripts_once().await;
        self.follow_failover(loaded)
    }

    async fn load_scripts_once(&self) -> Result<(), StoreError> {
        let mut connection = self.connection()?;
        let load = async {
            for script in [&self.shared.sliding, &self.shared.bucket] {
                let sha: String = redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(script.body)
                    .query_async(&mut connection)
                    .await?;
                if sha != script.sha {
                    return Err(StoreError::BadReply(format!(
                        "SCRIPT LOAD returned sha {sha}, expected {}",
                        script.sha
                    )));
                }
            }
            Ok(())
        };
        self.bounded(load).await
    }

    /// Counts denials answered from the local over-limit cache in `counter`.
    pub fn count_local_hits(
        mut self,
        counter: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        self.shared.local_hits = Some(counter);
        self
    }

    /// The SHA1s `EVALSHA` calls the sliding-window and token-bucket scripts by, in that
    /// order: what `SCRIPT EXISTS` on a node reports for this store.
    pub fn script_shas(&self) -> [&str; 2] {
        [&self.shared.sliding.sha, &self.shared.bucket.sha]
    }

    /// How many times a script was missing from Redis's cache and sent again.
    pub fn script_reloads(&self) -> u64 {
        self.shared.script_reloads.load(Ordering::Relaxed)
    }

    fn connection(&self) -> Result<Connection, StoreError> {
        match &self.source {
            Source::Single(manager) => Ok(Connection::Single(manager.clone())),
            Source::Cluster { connection, .. } => connection
                .get()
                .cloned()
                .map(Connection::Cluster)
                .ok_or_else(|| StoreError::NotConnected("no cluster node answered yet".into())),
            Source::Sentinel(primary) => {
                primary
                    .connection()
                    .map(Connection::Sentinel)
                    .ok_or_else(|| {
                        StoreError::NotConnected("no master found through sentinel yet".into())
                    })
            }
        }
    }

    /// Behind Sentinel, has the sentinels asked again when `result` failed in a way that a
    /// failover explains; passes `result` on. A Redis Cluster's connection follows failovers
    /// by itself (it refreshes its slot map on `MOVED`, `READONLY` and lost connections).
    fn follow_failover<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let (Source::Sentinel(primary), Err(error)) = (&self.source, &result) {
            if may_mean_failover(error) {
                primary.suspect();
            }
        }
        result
    }

    async fn bounded<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.shared.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(self.shared.timeout)),
        }
    }

    async fn check_one(&self, check: &Check<'_>, now_us: u64) -> Result<Decision, StoreError> {
        let key = storage_key(check, now_us);
        if let Some(denied) = self.shared.over_limit.lookup(&key, check.hits, now_us) {
            if let Some(counter) = &self.shared.local_hits {
                counter.inc();
            }
            return Ok(denied);
        }
        let mut connection = self.connection()?;
        let decision = match check.policy {
            Policy::Fixed(window) => {
                let (count,): (u64,) = redis::pipe()
                    .cmd("INCRBY")
                    .arg(&key)
                    .arg(check.hits)
                    .cmd("EXPIRE")
                    .arg(&key)
                    .arg(window.window.as_secs().max(1))
                    .ignore()
                    .query_async(&mut connection)
                    .await?;
                window.decide(count, now_us)
            }
            Policy::Sliding(window) => {
                let current = now_us / window.bucket_us();
                let first = current.saturating_sub(SLIDING_BUCKETS);
                let ttl_ms = (window.window_us() + window.bucket_us()).div_ceil(1_000);
                let args = [current, first, window.limit, check.hits, ttl_ms];
                let reply: Vec<u64> = self
                    .eval(&self.shared.sliding, &mut connection, &key, &args)
                    .await?;
                if !reply.len().is_multiple_of(2) {
                    return Err(StoreError::BadReply(format!(
                        "{} numbers from the sliding window script",
                        reply.len()
                    )));
                }
                let mut buckets: Vec<(u64, u64)> =
                    reply.chunks_exact(2).map(|p| (p[0], p[1])).collect();
                buckets.sort_unstable();
                window.decide(&mut SlidingCounts { buckets }, now_us, check.hits)
            }
            Policy::TokenBucket(bucket) => {
                let emission = bucket.emission_us();
                let args = [
                    now_us,
                    emission,
                    bucket.burst.saturating_mul(emission),
                    check.hits,
                ];
                let reply: String = self
                    .eval(&self.shared.bucket, &mut connection, &key, &args)
                    .await?;
                let tat = reply.parse::<u64>().map_err(|_| {
                    StoreError::BadReply(format!("{reply:?} from the token bucket script"))
                })?;
                bucket.decide(Some(tat), now_us, check.hits).0
            }
        };
        self.shared
            .over_limit
            .remember(&key, check.policy, &decision, now_us);
        Ok(decision)
    }

    async fn eval<T: redis::FromRedisValue>(
        &self,
        script: &LoadedScript,
        connection: &mut Connection,
        key: &str,
        args: &[u64],
    ) -> Result<T, StoreError> {
        let reply = redis::cmd("EVALSHA")
            .arg(&script.sha)
            .arg(1)
            .arg(key)
            .arg(args)
            .query_async(connection)
            .await;
        match reply {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.shared.script_reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(sha = %script.sha, "redis lost the script (restart or flush), sending it again");
                Ok(redis::cmd("EVAL")
                    .arg(script.body)
                    .arg(1)
                    .arg(key)
                    .arg(args)
                    .query_async(connection)
                    .await?)
            }
            other => Ok(other?),
        }
    }
}

/// Whether `error` is what a request sees while its master is dead, unreachable, stuck,
/// demoted, or cut off from its replicas (`NOREPLICAS`, from a master with
/// `min-replicas-to-write` on the minority side of a partition, where the majority may
/// have promoted another): then the master may have moved. A script error or a bad reply
/// is not.
fn may_mean_failover(error: &StoreError) -> bool {
    match error {
        StoreError::Timeout(_) | StoreError::NotConnected(_) => true,
        StoreError::Command(e) => {
            e.code() == Some("NOREPLICAS")
                || e.is_io_error()
                || e.is_connection_dropped()
                || e.is_unrecoverable_error()
                || matches!(
                    e.kind(),
                    ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
                )
        }
        StoreError::BadReply(_) => false,
    }
}

/// `PING` on a connection of its own, so that nothing queued elsewhere delays it.
async fn ping(node: &redis::Client, timeout: Duration) -> Result<(), StoreError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut connection = node
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    redis::cmd("PING")
        .query_async::<()>(&mut connection)
        .await?;
    Ok(())
}

async fn connect_cluster(
    client: redis::cluster::ClusterClient,
    cell: Arc<OnceCell<ClusterConnection>>,
) {
    let mut delay = Duration::from_millis(50);
    loop {
        match client.get_async_connection().await {
            Ok(connection) => {
                let _ = cell.set(connection);
                tracing::info!("connected to the redis cluster");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?delay, "cannot reach the redis cluster");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

impl Store for RedisStore {
    async fn check<'a>(
        &'a self,
        checks: &'a [Check<'a>],
        now_us: u64,
    ) -> Result<Vec<Decision>, StoreError> {
        let all = futures::future::try_join_all(checks.iter().map(|c| self.check_one(c, now_us)));
        let decided = self.bounded(all).await;
        self.follow_failover(decided)
    }

    /// Ready when the scripts load everywhere or, on a cluster, when at least one node
    /// answers. Readiness gates traffic to this replica, and the cluster is shared by every
    /// replica: calling them all unready because one node of the cluster is down would
    /// turn a partial outage (only that node's keys fail) into a whole one.
    ///
    /// On a cluster the primaries are asked through the shared connection and, at the same
    /// time, each seed on a connection of its own: while the shared connection refreshes
    /// its slot map it holds every request, and a refresh that asks a stuck node waits out
    /// the whole timeout, so a probe through it alone would call a working cluster down.
    async fn probe(&self) -> Result<(), StoreError> {
        let Err(not_loaded) = self.load_scripts().await else {
            return Ok(());
        };
        let Source::Cluster { connection, seeds } = &self.source else {
            return Err(not_loaded);
        };
        let Some(mut cluster) = connection.get().cloned() else {
            return Err(not_loaded);
        };
        let any_primary = RoutingInfo::MultiNode((
            MultipleNodeRoutingInfo::AllMasters,
            Some(ResponsePolicy::OneSucceeded),
        ));
        let through_cluster = async move {
            cluster
                .route_command(redis::cmd("PING"), any_primary)
                .await?;
            Ok(())
        }
        .boxed();
        let direct = seeds
            .iter()
            .map(|seed| ping(seed, self.shared.timeout).boxed());
        self.bounded(async {
            futures::future::select_ok(std::iter::once(through_cluster).chain(direct)).await?;
            Ok(())
        })
        .await
    }

    fn for_this_runtime(self: &Arc<Self>) -> Result<Arc<Self>, StoreError> {
        Ok(Arc::new(RedisStore {
            source: Source::open(&self.shared.target, self.shared.timeout)?,
            shared: self.shared.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_error(reply: &[u8]) -> StoreError {
        let value = redis::parse_redis_value(reply).expect("a RESP error");
        let Value::ServerError(error) = value else {
            panic!("not an error reply: {value:?}");
        };
        StoreError::Command(error.into())
    }

    #[test]
    fn a_demoted_master_or_a_lost_connection_has_sentinel_asked_again() {
        let demoted = reply_error(b"-READONLY You can't write against a read only replica.\r\n");
        let reset =
            StoreError::Command(std::io::Error::from(std::io::ErrorKind::ConnectionReset).into());
        let refused =
            StoreError::Command(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into());
        let cut_from_replicas = reply_error(b"-NOREPLICAS Not enough good replicas to write.\r\n");
        for error in [
            demoted,
            cut_from_replicas,
            reset,
            refused,
            StoreError::Timeout(Duration::from_millis(40)),
            StoreError::NotConnected("no master yet".into()),
        ] {
            assert!(may_mean_failover(&error), "{error}");
        }
    }

    #[test]
    fn a_script_failure_is_no_reason_to_look_for_another_master() {
        for error in [
            reply_error(b"-NOSCRIPT No matching script.\r\n"),
            reply_error(b"-ERR user_script:1: bad argument\r\n"),
            StoreError::BadReply("3 numbers from the sliding window script".into()),
        ] {
            assert!(!may_mean_failover(&error), "{error}");
        }
    }
}
