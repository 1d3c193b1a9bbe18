//! The rate-limit sidecar under test (`tollgate-ratelimit`), as a guarded process.
//!
//! Its gRPC address has to be written into routes.yaml (`sidecars.rate_limit.address`)
//! before the control plane starts, and it reads that same routes.yaml, so the builder
//! reserves its ports first:
//!
//! ```ignore
//! let rls = RateLimitService::new();
//! let cp = ControlPlane::new().routes(yaml_naming(rls.grpc_addr())).start().await;
//! let rls = rls.routes_file(cp.routes_path()).start().await;
//! ```
//!
//! `start` returns once the process has bound its sockets and `/readyz` answers 200, i.e.
//! once the limits are loaded and the store (memory, or the Redis given with
//! [`RateLimitService::redis`], [`RateLimitService::redis_sentinels`] or
//! [`RateLimitService::redis_cluster`]) answers.
//!
//! A burst of requests against a fresh budget is sent with [`send_burst`] and judged with
//! [`assert_budget`]: exactly the budget passes, with the headers a client needs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use tollgate_testkit::process::{scratch_dir, Process, SPAWN_MARK};
use tollgate_testkit::redis::{RedisCluster, RedisSentinels, RedisServer};

use crate::http::{self, RequestBuilder, Response};
use crate::sidecar::Sidecar;

/// The window of every rule a [`Burst`] is judged against (`per: minute`).
pub const WINDOW: Duration = Duration::from_secs(60);

/// The longest `x-ratelimit-reset` or `retry-after` a per-minute sliding window announces:
/// its oldest hit is forgotten between one window and one window plus one bucket (a
/// twentieth, 3 s) after it was admitted.
pub const LONGEST_RESET_SECS: u64 = 63;

/// The service starts in well under a second; this allows for a busy 2-core machine.
const READY_PATIENCE: Duration = Duration::from_secs(30);

/// Builder for a `tollgate-ratelimit`.
pub type RateLimitService = Sidecar<RateLimitSettings>;

/// What only the rate-limit service is started with.
#[derive(Debug, Clone, Default)]
pub struct RateLimitSettings {
    redis_url: Option<String>,
    redis_sentinel_url: Option<String>,
    redis_cluster_url: Option<String>,
    redis_timeout: Option<Duration>,
}

impl Sidecar<RateLimitSettings> {
    /// Keep the counters in `redis` (`--redis-url`) instead of in memory. A service in a
    /// namespace reaches it through its link, so `redis` must have been started
    /// [`RedisServer::start_reachable_from`] that namespace.
    pub fn redis(mut self, redis: &RedisServer) -> Self {
        let url = match self.host() {
            Some(host) => redis.url_from(host),
            None => redis.url(),
        };
        self.settings.redis_url = Some(url);
        self
    }

    /// Keep the counters in the primary `redis`'s sentinels name (`--redis-sentinel-url`,
    /// in envoyproxy/ratelimit's `MASTER_NAME,HOST:PORT,…` form).
    pub fn redis_sentinels(mut self, redis: &RedisSentinels) -> Self {
        self.settings.redis_sentinel_url = Some(redis.sentinel_list());
        self
    }

    /// Keep the counters in the Redis Cluster `cluster` (`--redis-cluster-url`, every node a
    /// seed).
    pub fn redis_cluster(mut self, cluster: &RedisCluster) -> Self {
        self.settings.redis_cluster_url = Some(cluster.urls().join(","));
        self
    }

    /// The longest wait for Redis per request (`--redis-timeout`).
    pub fn redis_timeout(mut self, timeout: Duration) -> Self {
        self.settings.redis_timeout = Some(timeout);
        self
    }

    /// Starts the service and waits until `/readyz` answers 200.
    pub async fn start(self) -> RunningRateLimitService {
        let dir = scratch_dir("tollgate-ratelimit-");
        let mut command = self.command("tollgate-ratelimit");
        if let Some(url) = &self.settings.redis_url {
            command.args(["--redis-url", url]);
        }
        if let Some(list) = &self.settings.redis_sentinel_url {
            command.args(["--redis-sentinel-url", list]);
        }
        if let Some(list) = &self.settings.redis_cluster_url {
            command.args(["--redis-cluster-url", list]);
        }
        if let Some(timeout) = self.settings.redis_timeout {
            command.args(["--redis-timeout", &format!("{}ms", timeout.as_millis())]);
        }
        let process =
            Process::spawn("ratelimit", command, dir.path()).expect("spawn tollgate-ratelimit");
        let mut service = RunningRateLimitService {
            process,
            grpc_addr: self.grpc_addr(),
            metrics_addr: self.metrics_addr(),
            _dir: dir,
        };
        service.wait_until_ready().await;
        service
    }
}

/// A running `tollgate-ratelimit`; dropping it kills the process.
#[derive(Debug)]
pub struct RunningRateLimitService {
    // Field order matters for Drop: the process dies before its directory is removed.
    process: Process,
    grpc_addr: SocketAddr,
    metrics_addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl RunningRateLimitService {
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Kills the service (SIGKILL), as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Kills the service and starts it again on the same ports, flags and store, as a
    /// supervisor restarts a crashed one; returns once the new process is ready.
    pub async fn restart(&mut self) {
        self.process.restart().expect("spawn tollgate-ratelimit");
        self.wait_until_ready().await;
    }

    /// Freezes the service (SIGSTOP): Envoy's calls reach an open socket and wait out the
    /// sidecar timeout, as with a process stalled or behind a dead network.
    pub fn pause(&self) {
        self.process.pause();
    }

    /// Lets a [paused](Self::pause) service run again (SIGCONT).
    pub fn resume(&self) {
        self.process.resume();
    }

    /// Whether `/readyz` answers 200 (the store answers).
    pub async fn ready(&self) -> anyhow::Result<bool> {
        Ok(http::get_at(self.metrics_addr, "/readyz").await?.status == 200)
    }

    /// `GET /metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let response = http::get_at(self.metrics_addr, "/metrics").await?;
        response.expect_status(200)?;
        Ok(response.text())
    }

    /// The hits this service has checked, over every limit (`tollgate_ratelimit_hits_total`
    /// summed): how many decisions it made.
    pub async fn hits(&self) -> anyhow::Result<f64> {
        Ok(self
            .metrics()
            .await?
            .lines()
            .filter(|line| line.starts_with("tollgate_ratelimit_hits_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Waits for this process's own "serving" log line (both its sockets are bound: a port
    /// another test's service took first makes it exit instead, and that other service's
    /// `/readyz` must not pass for ours), then for `/readyz` to answer 200.
    async fn wait_until_ready(&mut self) {
        // A reserved-then-released port can be taken by another run's service, whose /readyz
        // would answer for ours: /readyz counts only once our own process says it serves
        // that address.
        let metrics_addr = self.metrics_addr;
        let serving = metrics_addr.to_string();
        let process = &mut self.process;
        crate::eventually_within(
            READY_PATIENCE,
            "tollgate-ratelimit serves its own port",
            async || {
                process.ensure_running()?;
                // A restarted process appends to the same log: only the lines since the
                // last spawn are this process's.
                let log = process.stderr();
                let own = log.rsplit(SPAWN_MARK).next().unwrap_or_default();
                anyhow::ensure!(
                    own.lines()
                        .any(|line| line.contains("serving") && line.contains(&serving)),
                    "no \"serving {serving}\" log line"
                );
                Ok(())
            },
        )
        .await;
        http::wait_until_ok(&mut self.process, metrics_addr, "/readyz", READY_PATIENCE).await;
    }
}

/// Requests sent one after another, each with when it was sent relative to the first.
pub struct Burst {
    responses: Vec<(Duration, Response)>,
}

impl Burst {
    /// Whether the whole burst was sent within one window of its first request.
    pub fn within_window(&self) -> bool {
        self.responses.last().is_none_or(|(sent, _)| *sent < WINDOW)
    }
}

/// Sends `count` requests, `build(i)` for the i-th, sequentially (each on a new connection).
pub async fn send_burst(count: usize, build: impl Fn(usize) -> RequestBuilder) -> Burst {
    let started = Instant::now();
    let mut responses = Vec::with_capacity(count);
    for i in 0..count {
        let sent = started.elapsed();
        let response = build(i)
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} of a burst: {e:#}"));
        responses.push((sent, response));
    }
    Burst { responses }
}

/// Checks a burst that starts with a fresh budget of `limit` per minute, and returns how
/// many requests passed:
/// - the first `limit` pass to `upstream`, each saying `x-ratelimit-limit: limit, …;w=60`,
///   `x-ratelimit-remaining` counting down to 0, and an `x-ratelimit-reset` within the window;
/// - every later one sent within one window of the first is refused with 429, a single
///   `retry-after`, `x-ratelimit-remaining: 0` and the gateway's JSON error body. (One sent
///   later may pass: its window no longer holds the first hits. The check says so rather
///   than assuming the machine is fast.)
pub fn assert_budget(what: &str, burst: &Burst, limit: u64, upstream: &str) -> usize {
    let mut passed = 0;
    for (i, (sent, response)) in burst.responses.iter().enumerate() {
        let context = || {
            format!(
                "{what}: request {n} (sent {sent:?} into the burst) got {status}\nheaders: {headers:?}\nbody: {body}",
                n = i + 1,
                status = response.status,
                headers = response.headers,
                body = response.text(),
            )
        };
        if (i as u64) < limit {
            response
                .expect_upstream(upstream)
                .unwrap_or_else(|e| panic!("{e:#}\n{}", context()));
            assert_limit_headers(response, limit, limit - 1 - i as u64, &context);
            passed += 1;
        } else if *sent < WINDOW {
            assert_eq!(response.status, 429, "{}", context());
            assert_too_many_requests(response, limit, &context);
        } else if response.status == 200 {
            eprintln!(
                "{what}: request {} passed, sent after a whole window",
                i + 1
            );
            passed += 1;
        }
    }
    passed
}

fn assert_limit_headers(
    response: &Response,
    limit: u64,
    remaining: u64,
    context: &dyn Fn() -> String,
) {
    let header = |name: &str| {
        response
            .header(name)
            .unwrap_or_else(|| panic!("no {name} header\n{}", context()))
    };
    // draft-ietf-httpapi-ratelimit-headers-03: `5, 5;w=60`.
    let limit_header = header("x-ratelimit-limit");
    let announced: Option<u64> = limit_header
        .split(',')
        .next()
        .and_then(|n| n.trim().parse().ok());
    assert_eq!(
        announced,
        Some(limit),
        "x-ratelimit-limit {limit_header:?}\n{}",
        context()
    );
    assert!(
        limit_header.contains(&format!("{limit};w={}", WINDOW.as_secs())),
        "x-ratelimit-limit {limit_header:?} does not name the quota policy\n{}",
        context()
    );
    assert_eq!(
        header("x-ratelimit-remaining").parse::<u64>().ok(),
        Some(remaining),
        "x-ratelimit-remaining\n{}",
        context()
    );
    let reset = header("x-ratelimit-reset").parse::<u64>().ok();
    assert!(
        reset.is_some_and(|r| (1..=LONGEST_RESET_SECS).contains(&r)),
        "x-ratelimit-reset {reset:?}\n{}",
        context()
    );
}

fn assert_too_many_requests(response: &Response, limit: u64, context: &dyn Fn() -> String) {
    // RFC 9110 §10.2.3: one delay in seconds. Two values would be an invalid field.
    let retry_after: Vec<_> = response.headers.get_all("retry-after").iter().collect();
    assert_eq!(retry_after.len(), 1, "retry-after\n{}", context());
    let seconds = retry_after[0]
        .to_str()
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    assert!(
        seconds.is_some_and(|s| (1..=LONGEST_RESET_SECS).contains(&s)),
        "retry-after {seconds:?}\n{}",
        context()
    );
    assert_eq!(
        response.header("x-ratelimit-remaining"),
        Some("0"),
        "x-ratelimit-remaining\n{}",
        context()
    );
    assert_eq!(
        response
            .header("x-ratelimit-limit")
            .and_then(|h| h.split(',').next())
            .and_then(|n| n.trim().parse::<u64>().ok()),
        Some(limit),
        "x-ratelimit-limit\n{}",
        context()
    );
    assert!(
        response
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "content-type\n{}",
        context()
    );
    let body: Value = response
        .json()
        .unwrap_or_else(|e| panic!("{e:#}\n{}", context()));
    assert_eq!(body["error"], "too many requests", "{}", context());
    let request_id = response
        .header("x-request-id")
        .unwrap_or_else(|| panic!("no x-request-id\n{}", context()));
    assert_eq!(body["request_id"], request_id, "{}", context());
}
