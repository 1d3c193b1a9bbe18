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
//! [`RateLimitService::redis`] or [`RateLimitService::redis_sentinels`]) answers.

use std::net::SocketAddr;
use std::time::Duration;

use tollgate_testkit::process::{scratch_dir, Process};
use tollgate_testkit::redis::{RedisSentinels, RedisServer};

use crate::http;
use crate::sidecar::Sidecar;

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
    redis_timeout: Option<Duration>,
}

impl Sidecar<RateLimitSettings> {
    /// Keep the counters in `redis` (`--redis-url`) instead of in memory.
    pub fn redis(mut self, redis: &RedisServer) -> Self {
        self.settings.redis_url = Some(redis.url());
        self
    }

    /// Keep the counters in the primary `redis`'s sentinels name (`--redis-sentinel-url`,
    /// in envoyproxy/ratelimit's `MASTER_NAME,HOST:PORT,…` form).
    pub fn redis_sentinels(mut self, redis: &RedisSentinels) -> Self {
        self.settings.redis_sentinel_url = Some(redis.sentinel_list());
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
                anyhow::ensure!(
                    process
                        .stderr()
                        .lines()
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
