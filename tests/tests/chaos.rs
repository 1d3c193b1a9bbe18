//! Chaos (issue 22): the whole chain (Envoy, the control plane, ext-authz, the rate-limit
//! service, Redis, and a service of two upstream endpoints) under constant load while, one at
//! a time, the control plane, ext-authz, the rate-limit service, Redis and one upstream
//! endpoint are killed (SIGKILL) and restarted on the same ports, then ext-authz and the
//! rate-limit service are each frozen (SIGSTOP) for longer than their timeout and let go.
//!
//! Every request is accounted for: it got the normal answer, or exactly the failure
//! routes.yaml configures for what is down (see [`PhasedLoad`] for how requests in flight at
//! a transition are judged):
//! - control plane down: nothing changes, Envoy serves what it has;
//! - ext-authz down or frozen (`failure_mode_allow: false`): protected requests, with a token
//!   or without, get the gateway's 503 (`status_on_error`), public and limited ones are served;
//! - rate-limit service down or frozen (`failure_mode_deny: false`): limited requests pass
//!   unchecked (a 200 without `x-ratelimit-*` headers), never a 429;
//! - Redis down: the service answers `UNAVAILABLE`, so limited requests pass unchecked as
//!   above; a client its over-limit cache already knew to be over (docs/operations.md) is
//!   still refused until that window ends (at most a second here), so 429 stays allowed;
//! - one upstream endpoint down: every request still succeeds, retried on the other
//!   endpoint (`retries` on `connect-failure` and `reset`) until outlier detection and
//!   health checks take the dead one out of rotation.
//!
//! After each failure the service is restarted, the chain must recover (the latest answers
//! of every kind normal again, polled with a generous deadline), and a quiet phase must see
//! normal answers only. Each failure must also show its effect (503s while ext-authz is
//! down, answers past the sidecar timeout while it is frozen, unchecked passes while the
//! limiter is down), so the test cannot pass by not breaking anything; and every phase must
//! carry traffic of every kind. The table of answers per phase is printed either way.
//!
//! The run takes a few minutes, so `cargo test` skips it (`#[ignore]`); `make chaos` runs it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tollgate_conformance::phased_load::{Answer, Kind, LoadReport, Phase, PhasedLoad};
use tollgate_conformance::ratelimit::{RateLimitService, RunningRateLimitService};
use tollgate_conformance::{
    eventually_within, get, request, reserve_port, ControlPlane, Envoy, ExtAuthz, Response,
    RunningControlPlane, RunningEnvoy, RunningExtAuthz, Upstream, UpstreamHandle,
};
use tollgate_testkit::jwt::{self, jwks, TestKey};
use tollgate_testkit::redis::RedisServer;

/// Each worker sends at most one request per `PACE`; with two workers for each of four kinds,
/// at most 80 requests a second, which a loaded 2-core machine serves beside the chain.
const PACE: Duration = Duration::from_millis(100);
const WORKERS_PER_KIND: usize = 2;

/// Every phase (but the instant transitions) must carry at least this many requests of each
/// kind, so that no phase passes for want of traffic.
const MIN_PER_KIND: usize = 5;

/// Traffic measured under each failure, and in the quiet phase after each recovery: windows
/// of measurement, not waits for something to happen. Under a freeze, four times the sidecar
/// timeout.
const STEADY_WINDOW: Duration = Duration::from_secs(4);
const FAILURE_WINDOW: Duration = Duration::from_secs(4);
const QUIET_WINDOW: Duration = Duration::from_secs(3);

/// The longest any poll waits (a restart, Envoy reconnecting, an endpoint back in rotation),
/// generous for a loaded 2-core machine: a phase fails because something never happened,
/// never because it was slow.
const PATIENCE: Duration = Duration::from_secs(90);

/// Recovered: the latest this many answers of every kind are normal again.
const RECOVERED_IN_A_ROW: usize = 3;

/// Both sidecars' timeout: long enough that a debug build on a busy machine never times out
/// while healthy (a timeout would fail the request the way an outage does), short enough
/// that a frozen sidecar costs each request only this.
const SIDECAR_TIMEOUT: Duration = Duration::from_secs(1);

/// The limited route's budget per client address: the traffic (up to 20 requests a second
/// from one address) exceeds it, so both 200 and 429 are normal answers. Per second, so that
/// the rate-limit service's over-limit cache forgets a denial within a second.
const LIMIT_PER_SECOND: u32 = 5;

// The kinds of request, and the labels their answers get.
const PUBLIC: &str = "public";
const TOKEN: &str = "token";
const NO_TOKEN: &str = "no-token";
const LIMITED: &str = "limited";

/// A 200 from either endpoint of the service.
const OK: &str = "200";
/// A limited request the rate-limit service admitted (with its `x-ratelimit-*` headers).
const CHECKED: &str = "200 checked";
/// A limited request Envoy let through without a decision (no `x-ratelimit-*` headers):
/// failing open.
const UNCHECKED: &str = "200 unchecked";
/// ext-authz's own refusal of a request without a token, with its `WWW-Authenticate`.
const UNAUTHORIZED: &str = "401";
/// The gateway's own 503 (`{"error":"service unavailable"}`).
const UNAVAILABLE: &str = "503";
/// The gateway's 429 with its rate-limit headers and JSON body.
const TOO_MANY: &str = "429";

/// The chain, in the order it is dropped: Envoy first, then what it calls.
struct Chain {
    port: u16,
    envoy: RunningEnvoy,
    authz: RunningExtAuthz,
    rls: RunningRateLimitService,
    cp: RunningControlPlane,
    redis: RedisServer,
    endpoints: [UpstreamHandle; 2],
}

fn routes(
    port: u16,
    endpoints: &[UpstreamHandle; 2],
    authz: SocketAddr,
    rls: SocketAddr,
) -> String {
    let timeout = format!("{}ms", SIDECAR_TIMEOUT.as_millis());
    format!(
        r#"version: 1
listeners:
  - {{name: public, address: "127.0.0.1:{port}"}}
services:
  api:
    endpoints: ["{a}", "{b}"]
    connect_timeout: 1s
    # A dead endpoint fails its checks within two seconds, and one good check brings it back.
    health_check: {{path: /health, interval: 1s, timeout: 1s, unhealthy_threshold: 2, healthy_threshold: 1}}
    # A refused connection or a reset counts as a 5xx: the first ejects the endpoint.
    outlier_detection: {{consecutive_5xx: 1, interval: 1s, base_ejection_time: 2s, max_ejection_percent: 50}}
auth_providers:
  main: {{issuer: "{issuer}", audiences: ["{audience}"], jwks_file: jwks.json}}
routes:
  - name: public
    match: {{prefix: /public/}}
    service: api
    retries: {{attempts: 3, on: [connect-failure, reset]}}
  - name: protected
    match: {{prefix: /protected/}}
    service: api
    auth: {{provider: main}}
    retries: {{attempts: 3, on: [connect-failure, reset]}}
  - name: limited
    match: {{prefix: /limited/}}
    service: api
    rate_limit:
      - {{by: client_ip, requests: {LIMIT_PER_SECOND}, per: second}}
    retries: {{attempts: 3, on: [connect-failure, reset]}}
sidecars:
  ext_authz: {{address: "{authz}", timeout: {timeout}, failure_mode_allow: false}}
  rate_limit: {{address: "{rls}", timeout: {timeout}, failure_mode_deny: false, domain: tollgate}}
"#,
        a = endpoints[0].endpoint(),
        b = endpoints[1].endpoint(),
        issuer = jwt::ISSUER,
        audience = jwt::AUDIENCE,
    )
}

impl Chain {
    async fn start(key: &TestKey) -> Chain {
        let endpoints = [
            Upstream::new("api-1").health("/health").spawn().await,
            Upstream::new("api-2").health("/health").spawn().await,
        ];
        let port = reserve_port();
        let (authz, rls) = (ExtAuthz::new(), RateLimitService::new());
        let cp = ControlPlane::new()
            .routes(routes(port, &endpoints, authz.grpc_addr(), rls.grpc_addr()))
            .start()
            .await;
        let redis = RedisServer::start();
        let authz = authz
            .routes_file(cp.routes_path())
            .jwks(&jwks(&[key]))
            .start()
            .await;
        let rls = rls
            .routes_file(cp.routes_path())
            .redis(&redis)
            // Far above what Redis takes on loopback, so that only an outage fails open.
            .redis_timeout(Duration::from_millis(500))
            .start()
            .await;
        let envoy = Envoy::new().control_plane(&cp).start().await;
        let chain = Chain {
            port,
            envoy,
            authz,
            rls,
            cp,
            redis,
            endpoints,
        };
        eventually_within(PATIENCE, "the gateway serves", async || {
            let answer = classify(&get(chain.port, "/public/ready").await);
            anyhow::ensure!(answer.label == OK, "{}", answer.detail);
            Ok(())
        })
        .await;
        eventually_within(PATIENCE, "both endpoints are healthy", async || {
            for endpoint in &chain.endpoints {
                let flags = chain.envoy.health_flags("api", endpoint.addr()).await;
                anyhow::ensure!(flags == "healthy", "{}: {flags}", endpoint.name());
            }
            Ok(())
        })
        .await;
        chain
    }

    fn kinds(&self, token: &str) -> Vec<Kind> {
        let base = request(self.port);
        vec![
            Kind {
                name: PUBLIC,
                request: base.clone().path("/public/x"),
                classify,
            },
            Kind {
                name: TOKEN,
                request: base
                    .clone()
                    .path("/protected/x")
                    .header("authorization", &format!("Bearer {token}")),
                classify,
            },
            Kind {
                name: NO_TOKEN,
                request: base.clone().path("/protected/x"),
                classify,
            },
            Kind {
                name: LIMITED,
                request: base.path("/limited/x"),
                classify: classify_limited,
            },
        ]
    }
}

/// The answer's label: a 200 from the service, ext-authz's 401 with its challenge, or the
/// gateway's own 503 or 429 with their JSON bodies; anything else is labelled by its status
/// (or `no answer`) and unexpected in every phase.
fn classify(result: &anyhow::Result<Response>) -> Answer {
    let response = match result {
        Ok(response) => response,
        Err(error) => return Answer::new("no answer", format!("{error:#}")),
    };
    let detail = format!(
        "{} {}",
        response.status,
        response.text().chars().take(200).collect::<String>()
    );
    let gateway_error = || {
        response
            .json()
            .ok()
            .and_then(|b| b["error"].as_str().map(str::to_owned))
    };
    let label = match response.status.as_u16() {
        200 if response
            .upstream()
            .is_some_and(|name| name == "api-1" || name == "api-2") =>
        {
            OK
        }
        401 if response
            .header("www-authenticate")
            .is_some_and(|c| c.starts_with("Bearer ")) =>
        {
            UNAUTHORIZED
        }
        503 if gateway_error().as_deref() == Some("service unavailable") => UNAVAILABLE,
        429 if gateway_error().as_deref() == Some("too many requests")
            && response.header("x-ratelimit-limit").is_some() =>
        {
            TOO_MANY
        }
        _ => return Answer::new(&format!("{} other", response.status.as_u16()), detail),
    };
    Answer::new(label, detail)
}

/// As [`classify`], telling a 200 the rate-limit service decided (it carries the
/// `x-ratelimit-*` headers) from one Envoy let through unchecked.
fn classify_limited(result: &anyhow::Result<Response>) -> Answer {
    let mut answer = classify(result);
    if answer.label == OK {
        let decided = result
            .as_ref()
            .is_ok_and(|r| r.header("x-ratelimit-limit").is_some());
        answer.label = if decided { CHECKED } else { UNCHECKED }.to_owned();
    }
    answer
}

/// What routes.yaml answers with everything up.
fn normal() -> Phase {
    Phase::new("steady")
        .only(PUBLIC, &[OK])
        .only(TOKEN, &[OK])
        .only(NO_TOKEN, &[UNAUTHORIZED])
        .only(LIMITED, &[CHECKED, TOO_MANY])
}

/// ext-authz down or frozen, `failure_mode_allow: false`: every protected request is refused
/// with 503, with a token or without.
fn authz_down(name: &str) -> Phase {
    normal()
        .renamed(name)
        .only(TOKEN, &[UNAVAILABLE])
        .only(NO_TOKEN, &[UNAVAILABLE])
}

/// The rate-limit service down or frozen, `failure_mode_deny: false`: limited requests pass
/// unchecked.
fn limiter_down(name: &str) -> Phase {
    normal().renamed(name).only(LIMITED, &[UNCHECKED])
}

/// While a service restarts, a request may meet it down or up.
fn restarting(down: &Phase, name: &str) -> Phase {
    down.clone().or(&normal()).renamed(name)
}

/// Envoy's `control_plane.connected_state`: 1 while it holds an ADS stream.
async fn connected_state(envoy: &RunningEnvoy) -> anyhow::Result<u64> {
    let stats = envoy.stats("^control_plane\\.connected_state$").await?;
    stats
        .first()
        .map(|(_, value)| *value)
        .ok_or_else(|| anyhow::anyhow!("no control_plane.connected_state in {stats:?}"))
}

/// The end of every outage: once the service is started again (at `since`), waits until the
/// chain has recovered (the latest answers of every kind normal, each of `seen` answered
/// since, and `extra` holds), lets the restart phase carry its traffic, then holds a quiet
/// phase `name` in which only normal answers are allowed.
async fn recover(
    load: &mut PhasedLoad,
    since: Instant,
    seen: &[(&str, &str)],
    name: &str,
    mut extra: impl AsyncFnMut() -> anyhow::Result<()>,
) {
    let what = format!("the chain recovers ({})", load.phase().name());
    eventually_within(PATIENCE, &what, async || {
        load.recovered(since, RECOVERED_IN_A_ROW, &normal(), seen)?;
        extra().await
    })
    .await;
    load.hold(Duration::ZERO, MIN_PER_KIND, PATIENCE).await;
    load.enter(normal().renamed(name));
    load.hold(QUIET_WINDOW, MIN_PER_KIND, PATIENCE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a few minutes of kills and restarts under load: make chaos"]
async fn under_load_every_request_survives_or_fails_as_configured_while_each_part_of_the_chain_is_killed_or_frozen(
) {
    let started = Instant::now();
    let key = TestKey::p256("chaos-1");
    let token = key.mint(&jwt::claims());
    let mut chain = Chain::start(&key).await;
    eprintln!("chain up after {:?}", started.elapsed());
    let mut load = PhasedLoad::start(chain.kinds(&token), WORKERS_PER_KIND, PACE, normal());
    load.hold(STEADY_WINDOW, MIN_PER_KIND, PATIENCE).await;

    // The control plane: Envoy keeps serving what it has; nothing may fail, ever.
    load.switch(normal().renamed("control plane killed"), async {
        chain.cp.kill();
    })
    .await;
    eventually_within(
        PATIENCE,
        "Envoy notices its control plane is gone",
        async || {
            anyhow::ensure!(connected_state(&chain.envoy).await? == 0, "still connected");
            Ok(())
        },
    )
    .await;
    load.hold(FAILURE_WINDOW, MIN_PER_KIND, PATIENCE).await;
    load.enter(normal().renamed("control plane restarting"));
    let since = Instant::now();
    chain.cp.restart().await;
    recover(&mut load, since, &[], "control plane back", async || {
        anyhow::ensure!(
            connected_state(&chain.envoy).await? == 1,
            "Envoy not reconnected"
        );
        Ok(())
    })
    .await;

    // ext-authz: protected routes fail closed with 503; the others are untouched.
    let down = authz_down("ext-authz killed");
    load.switch(down.clone(), async { chain.authz.kill() })
        .await;
    load.hold(FAILURE_WINDOW, MIN_PER_KIND, PATIENCE).await;
    load.enter(restarting(&down, "ext-authz restarting"));
    let since = Instant::now();
    chain.authz.restart().await;
    recover(&mut load, since, &[], "ext-authz back", async || Ok(())).await;

    // The rate-limit service: limited requests fail open.
    let down = limiter_down("rate limit killed");
    load.switch(down.clone(), async { chain.rls.kill() }).await;
    load.hold(FAILURE_WINDOW, MIN_PER_KIND, PATIENCE).await;
    load.enter(restarting(&down, "rate limit restarting"));
    let since = Instant::now();
    chain.rls.restart().await;
    recover(
        &mut load,
        since,
        &[(LIMITED, CHECKED)],
        "rate limit back",
        async || Ok(()),
    )
    .await;

    // Redis: the service answers UNAVAILABLE, limited requests fail open; a client its
    // over-limit cache knew to be over is refused until that window ends.
    let down = limiter_down("redis killed").also(LIMITED, &[TOO_MANY]);
    load.switch(down.clone(), async { chain.redis.kill() })
        .await;
    load.hold(FAILURE_WINDOW, MIN_PER_KIND, PATIENCE).await;
    load.enter(restarting(&down, "redis restarting"));
    let since = Instant::now();
    // Blocking for the moments Redis takes to answer: the test body runs on a thread of its
    // own, not on the runtime's workers that carry the load.
    chain.redis.restart();
    recover(
        &mut load,
        since,
        &[(LIMITED, CHECKED)],
        "redis back",
        async || Ok(()),
    )
    .await;

    // One upstream endpoint: retried on the other, then out of rotation; nothing fails.
    let down = normal().renamed("endpoint api-1 killed");
    let dead = chain.endpoints[0].addr();
    load.switch(down.clone(), chain.endpoints[0].kill()).await;
    eventually_within(PATIENCE, "Envoy takes api-1 out of rotation", async || {
        let flags = chain.envoy.health_flags("api", dead).await;
        anyhow::ensure!(flags != "healthy" && flags != "absent", "api-1: {flags}");
        Ok(())
    })
    .await;
    load.hold(FAILURE_WINDOW, MIN_PER_KIND, PATIENCE).await;
    load.enter(restarting(&down, "endpoint api-1 restarting"));
    let since = Instant::now();
    chain.endpoints[0].restart().await;
    let served_before = chain.endpoints[0].requests();
    recover(&mut load, since, &[], "endpoint api-1 back", async || {
        let flags = chain.envoy.health_flags("api", dead).await;
        anyhow::ensure!(flags == "healthy", "api-1: {flags}");
        anyhow::ensure!(
            chain.endpoints[0].requests() > served_before,
            "api-1 gets no requests yet"
        );
        Ok(())
    })
    .await;

    // ext-authz frozen past its timeout: each protected request waits it out, then 503.
    let down = authz_down("ext-authz frozen");
    load.switch(down.clone(), async { chain.authz.pause() })
        .await;
    load.hold(FAILURE_WINDOW, MIN_PER_KIND, PATIENCE).await;
    load.enter(restarting(&down, "ext-authz resumed"));
    let since = Instant::now();
    chain.authz.resume();
    recover(
        &mut load,
        since,
        &[],
        "ext-authz back after freeze",
        async || Ok(()),
    )
    .await;

    // The rate-limit service frozen past its timeout: limited requests wait it out, then
    // pass unchecked.
    let down = limiter_down("rate limit frozen");
    load.switch(down.clone(), async { chain.rls.pause() }).await;
    load.hold(FAILURE_WINDOW, MIN_PER_KIND, PATIENCE).await;
    load.enter(restarting(&down, "rate limit resumed"));
    let since = Instant::now();
    chain.rls.resume();
    recover(
        &mut load,
        since,
        &[(LIMITED, CHECKED)],
        "rate limit back after freeze",
        async || Ok(()),
    )
    .await;

    let report = load.stop().await;
    println!(
        "chaos: {} requests in {:?}\n{}",
        report.records.len(),
        started.elapsed(),
        report.table()
    );
    judge(&report);
}

/// Fails on any unexpected answer, on a phase without traffic of every kind, and on a failure
/// that did not show its effect.
fn judge(report: &LoadReport) {
    let unexpected = report.unexpected();
    assert!(
        unexpected.is_empty(),
        "{} requests were answered otherwise than routes.yaml says; the first:\n{}",
        unexpected.len(),
        report.describe_unexpected(20)
    );
    let thin = report.thin_phases(MIN_PER_KIND);
    assert!(
        thin.is_empty(),
        "phases that carried fewer than {MIN_PER_KIND} requests of a kind: {thin:?}"
    );
    let mut missing = Vec::new();
    let mut must_see = |phase: &str, kind: &str, label: &str| {
        if report.count(phase, kind, label) == 0 {
            missing.push(format!("[{phase}] no {kind} answered {label}"));
        }
    };
    // The limit is reached in normal running, so a 429-free outage means something.
    must_see("steady", LIMITED, CHECKED);
    must_see("steady", LIMITED, TOO_MANY);
    for phase in ["ext-authz killed", "ext-authz frozen"] {
        must_see(phase, TOKEN, UNAVAILABLE);
        must_see(phase, NO_TOKEN, UNAVAILABLE);
    }
    for phase in ["rate limit killed", "redis killed", "rate limit frozen"] {
        must_see(phase, LIMITED, UNCHECKED);
    }
    // Frozen, not gone: requests waited out the sidecar timeout before failing.
    for (phase, kind) in [("ext-authz frozen", TOKEN), ("rate limit frozen", LIMITED)] {
        let slowest = report.slowest(phase, kind);
        if slowest < SIDECAR_TIMEOUT {
            missing.push(format!(
                "[{phase}] the slowest {kind} request took {slowest:?}, under the sidecar timeout"
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "failures that did not show their effect:\n{}",
        missing.join("\n")
    );
}
