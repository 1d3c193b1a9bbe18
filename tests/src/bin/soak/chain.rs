//! The whole chain under soak, as `e2e_bench` builds it from the conformance fixtures: an
//! in-process upstream, the control plane, tollgate-ext-authz (keys from a JWKS file),
//! tollgate-ratelimit on a real `redis-server`, and an Envoy the control plane configures.
//!
//! routes.yaml is written anew for each edit: edit `n` sets `x-soak-edit: n` on the public
//! route's requests (which the upstream's echo shows, so an edit is seen to have reached
//! Envoy) and replaces the previous edit's route `churn-<n-1>` by `churn-<n>`: a route
//! renamed, a route removed, a route added and a header changed, every 10 s, while the
//! routes the load uses stay what they were.

use std::net::SocketAddr;
use std::path::PathBuf;

use tollgate_conformance::ratelimit::{RateLimitService, RunningRateLimitService};
use tollgate_conformance::{
    reserve_port, ControlPlane, Envoy, ExtAuthz, RunningControlPlane, RunningEnvoy,
    RunningExtAuthz, Upstream, UpstreamHandle,
};
use tollgate_testkit::redis::RedisServer;

use crate::keys::{AUDIENCE, ISSUER};
use crate::load::CLIENT_BUDGET_PER_SECOND;

/// The upstream's name in its echo.
pub const UPSTREAM: &str = "soak";

/// The header each edit sets on the public route.
pub const EDIT_HEADER: &str = "x-soak-edit";

/// No consumer gets near it: the per-consumer rule is consulted on every metered request
/// (one sliding-window key per consumer) without refusing any.
const CONSUMER_BUDGET_PER_MINUTE: u64 = 1_000_000_000;

/// tollgate-ratelimit's wait for Redis (`--redis-timeout`): under the 1 s the routes give
/// Envoy to wait for it, as its flag's documentation asks. At the default (40 ms, under
/// Envoy's default 50 ms) a development run on this shared 2-core machine saw a few Redis
/// calls a minute time out whenever other work took the cores, each a 500 to the load:
/// scheduling, not the chain, which is not what the soak is after.
const REDIS_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(800);

/// Every process of the chain, stopped on drop (Envoy first, Redis last).
pub struct Chain {
    pub port: u16,
    pub envoy: RunningEnvoy,
    pub rls: RunningRateLimitService,
    pub authz: RunningExtAuthz,
    pub cp: RunningControlPlane,
    pub redis: RedisServer,
    pub routes: RoutesFile,
    /// Serves until the chain is dropped.
    _upstream: UpstreamHandle,
}

/// routes.yaml on disk and what its text is made of, so that a task of its own can edit it.
#[derive(Debug, Clone)]
pub struct RoutesFile {
    path: PathBuf,
    port: u16,
    upstream: String,
    authz: SocketAddr,
    rls: SocketAddr,
}

impl RoutesFile {
    /// The text of edit `edit`.
    pub fn yaml(&self, edit: u64) -> String {
        routes_yaml(self.port, &self.upstream, self.authz, self.rls, edit)
    }

    /// Writes edit `edit` as an editor saves: to a temporary file beside it, renamed over it.
    pub fn write(&self, edit: u64) -> std::io::Result<()> {
        let temporary = self.path.with_file_name(".routes.yaml.soak");
        std::fs::write(&temporary, self.yaml(edit))?;
        std::fs::rename(&temporary, &self.path)
    }
}

/// A process of the chain, by what it is.
pub struct Member {
    pub name: &'static str,
    pub pid: u32,
}

impl Chain {
    /// Starts every process with routes.yaml at edit 0 and `jwks` as the key set.
    pub async fn start(jwks: &str) -> Self {
        let upstream = Upstream::new(UPSTREAM).spawn().await;
        let redis = RedisServer::start();
        let port = reserve_port();
        let authz = ExtAuthz::new();
        let rls = RateLimitService::new();
        let mut routes = RoutesFile {
            path: PathBuf::new(),
            port,
            upstream: upstream.endpoint(),
            authz: authz.grpc_addr(),
            rls: rls.grpc_addr(),
        };
        let cp = ControlPlane::new().routes(routes.yaml(0)).start().await;
        routes.path = cp.routes_path().to_path_buf();
        let authz = authz.routes_file(cp.routes_path()).jwks(jwks).start().await;
        let rls = rls
            .routes_file(cp.routes_path())
            .redis(&redis)
            .redis_timeout(REDIS_TIMEOUT)
            .start()
            .await;
        let envoy = Envoy::new().control_plane(&cp).start().await;
        Chain {
            port,
            envoy,
            rls,
            authz,
            cp,
            redis,
            routes,
            _upstream: upstream,
        }
    }

    /// The processes whose resources the soak follows.
    pub fn members(&self) -> Vec<Member> {
        vec![
            Member {
                name: "Envoy",
                pid: self.envoy.process().pid(),
            },
            Member {
                name: "control plane",
                pid: self.cp.process().pid(),
            },
            Member {
                name: "ext-authz",
                pid: self.authz.process().pid(),
            },
            Member {
                name: "ratelimit",
                pid: self.rls.process().pid(),
            },
            Member {
                name: "redis-server",
                pid: self.redis.pid(),
            },
        ]
    }
}

/// The soak's routes.yaml. Sidecar failures are made visible rather than absorbed: a
/// failed check answers 403 (`failure_mode_allow: false`) and a failed rate-limit call 500
/// (`failure_mode_deny: true`), both errors to the load. Their timeouts are `e2e_bench`'s
/// (1 s), long enough that a busy machine's stall is latency, not an error.
/// The access log is off: 30 minutes of it would be the largest file the soak writes.
fn routes_yaml(port: u16, upstream: &str, authz: SocketAddr, rls: SocketAddr, edit: u64) -> String {
    format!(
        r#"version: 1
listeners:
  - {{name: public, address: "127.0.0.1:{port}"}}
services:
  {UPSTREAM}: {{endpoints: ["{upstream}"]}}
auth_providers:
  main:
    issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    jwks_file: jwks.json
    algorithms: [ES256]
    consumer_claim: sub
routes:
  - name: public
    match: {{prefix: /public/}}
    service: {UPSTREAM}
    request_headers: {{set: {{{EDIT_HEADER}: "{edit}"}}}}
  - {{name: churn-{edit}, match: {{prefix: /churn/{edit}/}}, service: {UPSTREAM}}}
  - {{name: orders, match: {{prefix: /orders/}}, service: {UPSTREAM}, auth: {{provider: main}}}}
  - name: metered
    match: {{prefix: /metered/}}
    service: {UPSTREAM}
    auth: {{provider: main}}
    rate_limit:
      - {{by: consumer, requests: {CONSUMER_BUDGET_PER_MINUTE}, per: minute}}
      - {{by: header, header: x-client-id, requests: {CLIENT_BUDGET_PER_SECOND}, per: second, algorithm: fixed}}
sidecars:
  ext_authz: {{address: "{authz}", timeout: 1s, failure_mode_allow: false}}
  rate_limit: {{address: "{rls}", timeout: 1s, failure_mode_deny: true, domain: tollgate}}
observability:
  access_log: {{enabled: false}}
"#
    )
}
