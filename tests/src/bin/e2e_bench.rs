//! `make bench`: requests per second and latency through a real Envoy for the request-path
//! features the issues name, each beside its reference measured in the same run.
//!
//! - Issue 3: a route protected by Tollgate (`ext_authz` → tollgate-ext-authz, one valid
//!   RS256 token reused, so its verified-token cache answers) against the same route guarded
//!   by Envoy's own `jwt_authn` filter for the same provider and key set, with and without
//!   jwt_authn's verified-token cache, on a hand-written static bootstrap.
//! - Issue 4: a route with a Tollgate rate limit (tollgate-ratelimit on a real
//!   `redis-server`, a limit no request reaches) against the same route without one.
//! - Issue 5: the chain, bare → + JWT → + rate limit → + both, each as a ratio to bare;
//!   then both with OpenTelemetry tracing at 1% sampling, on a second gateway (tracing is
//!   per routes.yaml) whose Envoy and sidecars export to an OTLP/gRPC receiver in this
//!   process.
//!
//! Load comes from `wrk` (keep-alive HTTP/1.1, a fixed connection count); every case runs
//! once per round, rounds interleave the cases so that drift on this noisy machine hits them
//! all alike, and the tables show the median over rounds. Both Envoys run with
//! `--concurrency 1`: on two cores, wrk, the in-process upstream and the sidecars need the
//! other one. Every run is checked: a run with a non-2xx answer or a socket error is
//! reported, never silently counted as throughput. A last table charges each loaded run's
//! CPU time (from /proc) to the processes that spent it, per request: unlike req/s it
//! hardly moves when other work shares the machine, and it shows which process is the
//! bottleneck.
//!
//! Usage: `e2e_bench [SECONDS_PER_RUN] [ROUNDS]` (default 5 and 3: about 2½ minutes).

#[path = "../../../runtime/bench/proc_stat.rs"]
#[allow(dead_code)] // CPU time as a Duration is for the benches that include it
mod proc_stat;

use std::fmt::Write as _;
use std::net::SocketAddr;

use anyhow::Context as _;
use proc_stat::{ProcStat, TICKS_PER_SECOND};
use serde_json::json;
use tollgate_conformance::ratelimit::{RateLimitService, RunningRateLimitService};
use tollgate_conformance::redis::Redis;
use tollgate_conformance::tokens::{self, TestKey};
use tollgate_conformance::{
    eventually, request, reserve_port, ControlPlane, Envoy, ExtAuthz, OtlpReceiver, Response,
    RunningEnvoy, Upstream, UpstreamHandle,
};

const ISSUER: &str = "https://id.example.com";
const AUDIENCE: &str = "bench-api";
/// Enough to saturate one Envoy worker without making queueing the whole latency.
const CONNECTIONS: u32 = 16;
/// The unloaded latency: one connection, one request at a time.
const SINGLE_CONNECTION_SECONDS: u64 = 2;
/// No request in a run gets near it: a refused request would be counted as throughput.
const GENEROUS_LIMIT: u64 = 1_000_000_000;

/// One load target: a gateway, a path on it, and the token to send, if any.
struct Case {
    label: &'static str,
    port: u16,
    /// The processes serving `port`, whose CPU time the case is charged.
    pids: Pids,
    path: &'static str,
    token: Option<String>,
}

/// The sampling rate of the traced gateway: the issue's 1%.
const TRACED_SAMPLE_RATE: &str = "0.01";

/// What one `wrk` run measured.
#[derive(Debug, Clone, Copy)]
struct Run {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    /// Non-2xx answers plus socket errors: anything but zero makes the run invalid.
    failures: u64,
}

/// A case's runs over every round: the load runs and the single-connection runs.
#[derive(Default)]
struct Samples {
    loaded: Vec<Run>,
    single: Vec<Run>,
    /// Per loaded run: CPU microseconds per request, by [`CPU_COLUMNS`].
    cpu: Vec<[f64; CPU_COLUMNS.len()]>,
}

/// Medians over rounds.
struct Summary {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    single_p50_ms: f64,
    single_p99_ms: f64,
    cpu: [f64; CPU_COLUMNS.len()],
    failures: u64,
}

impl Samples {
    fn summary(&self) -> Summary {
        let median_of =
            |runs: &[Run], pick: fn(&Run) -> f64| median(runs.iter().map(pick).collect());
        Summary {
            requests_per_second: median_of(&self.loaded, |r| r.requests_per_second),
            p50_ms: median_of(&self.loaded, |r| r.p50_ms),
            p99_ms: median_of(&self.loaded, |r| r.p99_ms),
            single_p50_ms: median_of(&self.single, |r| r.p50_ms),
            single_p99_ms: median_of(&self.single, |r| r.p99_ms),
            cpu: std::array::from_fn(|column| {
                median(self.cpu.iter().map(|run| run[column]).collect())
            }),
            failures: self
                .loaded
                .iter()
                .chain(&self.single)
                .map(|r| r.failures)
                .sum(),
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(5);
    let rounds: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(3);
    ensure_wrk().await;
    // Other work on this small machine shows up in every row; the reader should know of it.
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned());

    let upstream = Upstream::new("bench").spawn().await;
    let key = TestKey::rsa("bench-rsa", 0);
    let jwks = tokens::jwks(&[&key]);
    let now = tokens::now();
    let token = key.mint(&json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "bench-user",
        "iat": now,
        // Valid for the whole run and then some.
        "exp": now + 3600,
    }));

    let redis = Redis::start().await;
    let collector = OtlpReceiver::start().await;
    let tollgate = TollgateGateway::start(&upstream, &jwks, &redis, None).await;
    let traced =
        TollgateGateway::start(&upstream, &jwks, &redis, Some(&collector.endpoint())).await;
    let reference = start_reference(&upstream, &jwks).await;
    check_routes(&tollgate, &reference, &token).await;
    check_routes(&traced, &reference, &token).await;

    let bearer = || Some(token.clone());
    let reference_gateway = (
        reference.port,
        Pids {
            envoy: reference.envoy.process().pid(),
            ext_authz: None,
            ratelimit: None,
        },
    );
    let tollgate_gateway = (tollgate.port, tollgate.pids());
    let traced_gateway = (traced.port, traced.pids());
    let cases = [
        case("reference: bare route", reference_gateway, "/bare/x", None),
        case(
            "reference: jwt_authn",
            reference_gateway,
            "/auth/x",
            bearer(),
        ),
        case(
            "reference: jwt_authn + jwt_cache_config",
            reference_gateway,
            "/auth-cached/x",
            bearer(),
        ),
        case("(a) bare route", tollgate_gateway, "/bare/x", None),
        case(
            "(b) + JWT (tollgate-ext-authz)",
            tollgate_gateway,
            "/auth/x",
            bearer(),
        ),
        case(
            "(c) + rate limit (tollgate-ratelimit, Redis)",
            tollgate_gateway,
            "/limited/x",
            None,
        ),
        case(
            "(b+c) + JWT + rate limit, untraced",
            tollgate_gateway,
            "/both/x",
            bearer(),
        ),
        case(
            "(d) + JWT + rate limit + tracing at 1%",
            traced_gateway,
            "/both/x",
            bearer(),
        ),
    ];
    let mut samples: Vec<Samples> = cases.iter().map(|_| Samples::default()).collect();
    for _ in 0..rounds {
        for (case, samples) in cases.iter().zip(&mut samples) {
            let before = cpu_ticks();
            let run = wrk(case, CONNECTIONS, seconds).await;
            let after = cpu_ticks();
            samples
                .cpu
                .push(cpu_per_request(&before, &after, case, run.requests));
            samples.loaded.push(run);
            samples
                .single
                .push(wrk(case, 1, SINGLE_CONNECTION_SECONDS).await);
        }
    }
    let summaries: Vec<Summary> = samples.iter().map(Samples::summary).collect();
    let mut sidecar_errors = sidecar_errors(&tollgate.envoy).await;
    for error in self::sidecar_errors(&traced.envoy).await {
        sidecar_errors.push(format!("(traced gateway) {error}"));
    }
    print_tables(&cases, &summaries, seconds, rounds, &load, &sidecar_errors);
    print_tracing_summary(&collector);
}

/// What the traced gateway exported during the run: evidence that (d) really traced, at
/// about the rate it was asked to.
fn print_tracing_summary(collector: &OtlpReceiver) {
    let spans = collector.spans();
    let mut by_service: std::collections::BTreeMap<&str, usize> = Default::default();
    for span in &spans {
        *by_service.entry(span.service.as_str()).or_default() += 1;
    }
    let traces: std::collections::HashSet<&str> =
        spans.iter().map(|s| s.trace_id.as_str()).collect();
    let counts: Vec<String> = by_service
        .iter()
        .map(|(service, n)| format!("{service} {n}"))
        .collect();
    println!(
        "Tracing (d): {} traces with {} spans reached the OTLP receiver by the end of the run \
         ({}; batches still queued then are not counted).",
        traces.len(),
        spans.len(),
        counts.join(", ")
    );
}

fn case(
    label: &'static str,
    (port, pids): (u16, Pids),
    path: &'static str,
    token: Option<String>,
) -> Case {
    Case {
        label,
        port,
        pids,
        path,
        token,
    }
}

async fn ensure_wrk() {
    let found = tokio::process::Command::new("wrk")
        .arg("--version")
        .output()
        .await
        .is_ok();
    assert!(
        found,
        "wrk not found: `TOLLGATE_PROVISION_BENCH=1 scripts/provision.sh` installs it \
         (`make bench` does)"
    );
}

/// Envoy configured by the control plane, with both sidecars and Redis behind it.
struct TollgateGateway {
    port: u16,
    // Field order matters for Drop: Envoy goes before the services it calls.
    envoy: RunningEnvoy,
    _rls: RunningRateLimitService,
    _authz: tollgate_conformance::RunningExtAuthz,
    _cp: tollgate_conformance::RunningControlPlane,
}

impl TollgateGateway {
    /// With `otlp_endpoint`, tracing at [`TRACED_SAMPLE_RATE`] to that collector.
    async fn start(
        upstream: &UpstreamHandle,
        jwks: &str,
        redis: &Redis,
        otlp_endpoint: Option<&str>,
    ) -> Self {
        let port = reserve_port();
        let authz = ExtAuthz::new();
        let rls = RateLimitService::new();
        let mut routes = tollgate_routes(port, upstream, authz.grpc_addr(), rls.grpc_addr());
        if let Some(endpoint) = otlp_endpoint {
            routes.push_str(&format!(
                "  tracing: {{otlp_endpoint: \"{endpoint}\", sample_rate: {TRACED_SAMPLE_RATE}}}\n"
            ));
        }
        let cp = ControlPlane::new().routes(routes).start().await;
        let authz = authz.routes_file(cp.routes_path()).jwks(jwks).start().await;
        let rls = rls.routes_file(cp.routes_path()).redis(redis).start().await;
        let envoy = Envoy::new().control_plane(&cp).start().await;
        TollgateGateway {
            port,
            envoy,
            _rls: rls,
            _authz: authz,
            _cp: cp,
        }
    }

    fn pids(&self) -> Pids {
        Pids {
            envoy: self.envoy.process().pid(),
            ext_authz: self._authz.process().map(|p| p.pid()),
            ratelimit: Some(self._rls.process().pid()),
        }
    }
}

/// Four routes to the same upstream, one per step of the chain. The access log is off, as
/// in the hand-written reference, so that the tables compare the auth and rate-limit paths
/// only. The text ends inside `observability`, so that a `tracing:` line can follow. Sidecar timeouts are generous: a check timing out under full load would fail open
/// and be counted as a fast request (the errors are reported after the tables).
fn tollgate_routes(
    port: u16,
    upstream: &UpstreamHandle,
    authz: SocketAddr,
    rls: SocketAddr,
) -> String {
    format!(
        r#"version: 1
listeners:
  - {{name: public, address: "127.0.0.1:{port}"}}
services:
  bench: {{endpoints: ["{upstream}"]}}
auth_providers:
  main:
    issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    jwks_file: jwks.json
    algorithms: [RS256]
    consumer_claim: sub
routes:
  - {{name: bare, match: {{prefix: /bare/}}, service: bench}}
  - name: auth
    match: {{prefix: /auth/}}
    service: bench
    auth: {{provider: main}}
  - name: limited
    match: {{prefix: /limited/}}
    service: bench
    rate_limit:
      - {{by: client_ip, requests: {GENEROUS_LIMIT}, per: minute}}
  - name: both
    match: {{prefix: /both/}}
    service: bench
    auth: {{provider: main}}
    rate_limit:
      - {{by: consumer, requests: {GENEROUS_LIMIT}, per: minute}}
sidecars:
  ext_authz: {{address: "{authz}", timeout: 1s, failure_mode_allow: false}}
  rate_limit: {{address: "{rls}", timeout: 1s, failure_mode_deny: false, domain: tollgate}}
observability:
  access_log: {{enabled: false}}
"#,
        upstream = upstream.endpoint(),
    )
}

/// The hand-written Envoy: one listener whose routes are guarded by `jwt_authn` rules.
struct Reference {
    port: u16,
    envoy: RunningEnvoy,
}

async fn start_reference(upstream: &UpstreamHandle, jwks: &str) -> Reference {
    let port = reserve_port();
    let envoy = Envoy::new()
        .static_bootstrap(&reference_bootstrap(port, upstream.addr(), jwks))
        .start()
        .await;
    Reference { port, envoy }
}

/// The same provider as Tollgate's (issuer, audience, RS256 key set given inline, the
/// subject forwarded as `x-consumer-id`), twice: `main` verifies every request as Envoy does
/// by default, `cached` keeps verified tokens (`jwt_cache_config`), as tollgate-ext-authz does.
fn reference_bootstrap(port: u16, upstream: SocketAddr, jwks: &str) -> String {
    // A JSON string literal is a valid YAML double-quoted scalar.
    let inline_jwks = serde_json::to_string(jwks).expect("a string serializes");
    let provider = |name: &str, extra: &str| {
        let indent = " ".repeat(26);
        let mut yaml = format!("{}{name}:\n", " ".repeat(24));
        for line in [
            format!("issuer: \"{ISSUER}\""),
            format!("audiences: [\"{AUDIENCE}\"]"),
            format!("local_jwks: {{inline_string: {inline_jwks}}}"),
            "forward: true".to_owned(),
            "claim_to_headers: [{header_name: x-consumer-id, claim_name: sub}]".to_owned(),
            extra.to_owned(),
        ] {
            if !line.is_empty() {
                yaml.push_str(&format!("{indent}{line}\n"));
            }
        }
        yaml
    };
    tollgate_conformance::envoy::reference_bootstrap(
        port,
        upstream,
        &format!(
            r#"                route_config:
                  name: public
                  virtual_hosts:
                    - name: public
                      domains: ["*"]
                      routes:
                        - {{match: {{prefix: /bare/}}, route: {{cluster: bench}}}}
                        - {{match: {{prefix: /auth/}}, route: {{cluster: bench}}}}
                        - {{match: {{prefix: /auth-cached/}}, route: {{cluster: bench}}}}
                http_filters:
                  - name: envoy.filters.http.jwt_authn
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
                      providers:
{main}{cached}                      rules:
                        - {{match: {{prefix: /auth-cached/}}, requires: {{provider_name: cached}}}}
                        - {{match: {{prefix: /auth/}}, requires: {{provider_name: main}}}}
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
            main = provider("main", ""),
            cached = provider("cached", "jwt_cache_config: {jwt_cache_size: 100}"),
        ),
    )
}

/// Every case answers 200 from the upstream with the token; every protected route refuses a
/// request without one; every limited route answers with rate-limit headers, so the limit is
/// really consulted. A benchmark of a misconfigured route would measure the wrong thing.
async fn check_routes(tollgate: &TollgateGateway, reference: &Reference, token: &str) {
    let with_token = |port: u16, path: &'static str| async move {
        request(port)
            .path(path)
            .header("authorization", &format!("Bearer {token}"))
            .send()
            .await
    };
    for (port, path) in [
        (reference.port, "/bare/x"),
        (reference.port, "/auth/x"),
        (reference.port, "/auth-cached/x"),
        (tollgate.port, "/bare/x"),
        (tollgate.port, "/auth/x"),
        (tollgate.port, "/limited/x"),
        (tollgate.port, "/both/x"),
    ] {
        let response = eventually(&format!("{path} on port {port} answers"), async || {
            let response = with_token(port, path).await?;
            response.expect_upstream("bench")?;
            Ok(response)
        })
        .await;
        if path.starts_with("/limited/") || path.starts_with("/both/") {
            expect_rate_limit_headers(&response).expect("a limited route is rate limited");
        }
    }
    for (port, path) in [
        (reference.port, "/auth/x"),
        (reference.port, "/auth-cached/x"),
        (tollgate.port, "/auth/x"),
        (tollgate.port, "/both/x"),
    ] {
        let response = request(port).path(path).send().await.expect("a request");
        response
            .expect_status(401)
            .unwrap_or_else(|e| panic!("{path} on port {port} without a token: {e:#}"));
    }
}

fn expect_rate_limit_headers(response: &Response) -> anyhow::Result<()> {
    let limit = response
        .header("x-ratelimit-limit")
        .context("no x-ratelimit-limit header")?;
    anyhow::ensure!(
        limit.starts_with(&GENEROUS_LIMIT.to_string()),
        "x-ratelimit-limit is {limit:?}"
    );
    Ok(())
}

/// Runs `wrk` with one thread and `connections` keep-alive connections for `seconds`.
async fn wrk(case: &Case, connections: u32, seconds: u64) -> Run {
    let mut command = tokio::process::Command::new("wrk");
    command
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .arg("--latency");
    if let Some(token) = &case.token {
        command.args(["-H", &format!("authorization: Bearer {token}")]);
    }
    command.arg(format!("http://127.0.0.1:{}{}", case.port, case.path));
    let output = command.output().await.expect("run wrk");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "wrk for {} exited with {}: {stdout}{}",
        case.label,
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    parse_wrk(&stdout).unwrap_or_else(|e| panic!("wrk output for {}: {e:#}\n{stdout}", case.label))
}

/// Reads requests/s, the 50th and 99th percentiles and the failures from `wrk --latency`.
fn parse_wrk(stdout: &str) -> anyhow::Result<Run> {
    let mut requests_per_second = None;
    let mut p50_ms = None;
    let mut p99_ms = None;
    let mut requests = None;
    let mut failures = 0;
    for line in stdout.lines().map(str::trim) {
        if let Some(rate) = line.strip_prefix("Requests/sec:") {
            requests_per_second = Some(rate.trim().parse()?);
        } else if let Some(value) = line.strip_prefix("50%") {
            p50_ms = Some(wrk_duration_ms(value.trim())?);
        } else if let Some(value) = line.strip_prefix("99%") {
            p99_ms = Some(wrk_duration_ms(value.trim())?);
        } else if let Some((count, _)) = line.split_once(" requests in ") {
            requests = Some(count.trim().parse()?);
        } else if let Some(count) = line.strip_prefix("Non-2xx or 3xx responses:") {
            failures += count.trim().parse::<u64>()?;
        } else if let Some(errors) = line.strip_prefix("Socket errors:") {
            // `connect 0, read 0, write 0, timeout 0`
            for part in errors.split(',') {
                let count = part
                    .split_whitespace()
                    .last()
                    .context("socket error count")?;
                failures += count.parse::<u64>()?;
            }
        }
    }
    Ok(Run {
        requests_per_second: requests_per_second.context("no Requests/sec line")?,
        p50_ms: p50_ms.context("no 50% line")?,
        p99_ms: p99_ms.context("no 99% line")?,
        requests: requests.context("no \"requests in\" line")?,
        failures,
    })
}

/// `412.00us`, `1.02ms`, `1.00s`, `1.50m` in milliseconds.
fn wrk_duration_ms(text: &str) -> anyhow::Result<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in {text:?}"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("number in {text:?}"))?;
    let scale = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        other => anyhow::bail!("unknown unit {other:?} in {text:?}"),
    };
    Ok(number * scale)
}

/// Where the CPU time of a loaded run went, per request: the Envoy serving the case, each
/// sidecar, Redis, this process (the hyper upstream, nearly all of it) and wrk.
const CPU_COLUMNS: [&str; 6] = [
    "Envoy",
    "ext-authz",
    "ratelimit",
    "redis",
    "upstream (bench process)",
    "wrk",
];

/// The process ids of one gateway: its Envoy and its sidecars, if it has them.
#[derive(Clone, Copy)]
struct Pids {
    envoy: u32,
    ext_authz: Option<u32>,
    ratelimit: Option<u32>,
}

/// CPU ticks used so far, by pid: this process, each of its live children, and (under pid 0)
/// the children this process has reaped, i.e. every finished wrk.
fn cpu_ticks() -> std::collections::HashMap<u32, (String, u64)> {
    let me = std::process::id();
    let mut ticks = std::collections::HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return ticks;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(stat) = ProcStat::read(pid) else {
            continue;
        };
        if pid == me {
            ticks.insert(
                0,
                ("reaped children".to_owned(), stat.reaped_children_ticks),
            );
            ticks.insert(pid, (stat.comm, stat.ticks));
        } else if stat.ppid == me {
            ticks.insert(pid, (stat.comm, stat.ticks));
        }
    }
    ticks
}

fn cpu_per_request(
    before: &std::collections::HashMap<u32, (String, u64)>,
    after: &std::collections::HashMap<u32, (String, u64)>,
    case: &Case,
    requests: u64,
) -> [f64; CPU_COLUMNS.len()] {
    let pids = &case.pids;
    let mut columns = [0.0; CPU_COLUMNS.len()];
    let me = std::process::id();
    for (pid, (comm, ticks)) in after {
        let used = ticks - before.get(pid).map_or(0, |(_, t)| *t).min(*ticks);
        let column = if *pid == pids.envoy {
            0
        } else if Some(*pid) == pids.ext_authz {
            1
        } else if Some(*pid) == pids.ratelimit {
            2
        } else if comm == "redis-server" {
            3
        } else if *pid == me {
            4
        } else if *pid == 0 {
            5
        } else {
            continue;
        };
        columns[column] += used as f64 / TICKS_PER_SECOND as f64 * 1e6 / requests.max(1) as f64;
    }
    columns
}

/// Sidecar calls that did not end in a verdict (errors, timeouts that failed open or closed),
/// from the Tollgate Envoy's stats, as `name: count` for those above zero.
async fn sidecar_errors(envoy: &RunningEnvoy) -> Vec<String> {
    let stats = envoy
        .stats(r"(ext_authz|ratelimit)\.(error|failure_mode_allowed|timeout)")
        .await
        .unwrap_or_default();
    stats
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(name, count)| format!("{name}: {count}"))
        .collect()
}

fn print_tables(
    cases: &[Case],
    summaries: &[Summary],
    seconds: u64,
    rounds: usize,
    load: &str,
    sidecar_errors: &[String],
) {
    let by_label = |label: &str| {
        let i = cases
            .iter()
            .position(|c| c.label == label)
            .expect("a known case");
        (&cases[i], &summaries[i])
    };
    println!(
        "Each row: `wrk -t1 -c{CONNECTIONS} -d{seconds}s` (keep-alive HTTP/1.1) for req/s and \
         the loaded p50/p99, then `wrk -t1 -c1 -d{SINGLE_CONNECTION_SECONDS}s` for the unloaded \
         p50/p99; median of {rounds} rounds, cases interleaved. Both Envoys run one worker \
         (`--concurrency 1`); wrk, the in-process hyper upstream (its JSON echo costs every row \
         alike), the sidecars and Redis share the same {cores} cores. Envoy access log off on \
         both gateways. Load average at start: {load}.",
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!();
    println!("### JWT auth through Envoy: tollgate-ext-authz vs Envoy's jwt_authn (issue 3)");
    println!();
    println!(
        "One valid RS256 (2048-bit) token reused for every request, so tollgate-ext-authz \
         answers from its verified-token cache; jwt_authn is shown with and without its own \
         cache. Target: tollgate ≥ 0.8 × jwt_authn."
    );
    println!();
    let jwt_authn = by_label("reference: jwt_authn").1.requests_per_second;
    let jwt_authn_cached = by_label("reference: jwt_authn + jwt_cache_config")
        .1
        .requests_per_second;
    header(&["× jwt_authn", "× jwt_authn + cache"]);
    for label in [
        "reference: bare route",
        "reference: jwt_authn",
        "reference: jwt_authn + jwt_cache_config",
        "(a) bare route",
        "(b) + JWT (tollgate-ext-authz)",
    ] {
        let (case, s) = by_label(label);
        row(
            case,
            s,
            &[
                ratio(s.requests_per_second, jwt_authn),
                ratio(s.requests_per_second, jwt_authn_cached),
            ],
        );
    }
    println!();
    println!("### Rate limits through Envoy: tollgate-ratelimit on Redis vs no limit (issue 4)");
    println!();
    println!(
        "A sliding-window limit by client IP of {GENEROUS_LIMIT}/minute, counters in a local \
         `redis-server`, so every request is checked and none refused. Target: ≥ 0.8 × no limit."
    );
    println!();
    let bare = by_label("(a) bare route").1;
    header(&["× no limit"]);
    for label in [
        "(a) bare route",
        "(c) + rate limit (tollgate-ratelimit, Redis)",
    ] {
        let (case, s) = by_label(label);
        row(
            case,
            s,
            &[ratio(s.requests_per_second, bare.requests_per_second)],
        );
    }
    println!();
    println!("### The whole chain (issue 5)");
    println!();
    println!(
        "(b+c) and (d) limit by consumer (the `sub` tollgate-ext-authz forwards). (d), the \
         issue's case, is (b+c) on a second, identical gateway whose routes.yaml turns \
         tracing on at 1% sampling (Envoy's OpenTelemetry tracer and both sidecars exporting \
         over OTLP/gRPC to a receiver in this process, whose CPU time counts in the upstream \
         column). Target: (d) ≥ 0.6 × (a), adding < 1 ms p50 (unloaded)."
    );
    println!();
    header(&["× (a)", "added p50 ms, loaded", "added p50 ms, unloaded"]);
    for label in [
        "(a) bare route",
        "(b) + JWT (tollgate-ext-authz)",
        "(c) + rate limit (tollgate-ratelimit, Redis)",
        "(b+c) + JWT + rate limit, untraced",
        "(d) + JWT + rate limit + tracing at 1%",
    ] {
        let (case, s) = by_label(label);
        row(
            case,
            s,
            &[
                ratio(s.requests_per_second, bare.requests_per_second),
                format!("{:+.2}", s.p50_ms - bare.p50_ms),
                format!("{:+.3}", s.single_p50_ms - bare.single_p50_ms),
            ],
        );
    }
    println!();
    println!("### Where the CPU goes (loaded runs)");
    println!();
    println!(
        "CPU µs per request by process, from /proc (10 ms ticks), median of rounds; the idle \
         Envoy and the control plane are left out."
    );
    println!();
    println!("| case | {} | total |", CPU_COLUMNS.join(" | "));
    println!("|---|{}---:|", "---:|".repeat(CPU_COLUMNS.len()));
    for (case, s) in cases.iter().zip(summaries) {
        let cells: Vec<String> = s.cpu.iter().map(|us| format!("{us:.0}")).collect();
        println!(
            "| {} | {} | {:.0} |",
            case.label,
            cells.join(" | "),
            s.cpu.iter().sum::<f64>()
        );
    }
    println!();
    let failed: Vec<String> = cases
        .iter()
        .zip(summaries)
        .filter(|(_, s)| s.failures > 0)
        .map(|(c, s)| format!("{}: {}", c.label, s.failures))
        .collect();
    if failed.is_empty() {
        println!("Every request of every run answered 2xx, without socket errors.");
    } else {
        println!(
            "**Invalid rows** (non-2xx answers or socket errors): {}.",
            failed.join("; ")
        );
    }
    if sidecar_errors.is_empty() {
        println!("No sidecar call errored or timed out (Envoy stats).");
    } else {
        println!(
            "**Sidecar calls that errored or timed out** (Envoy stats): {}.",
            sidecar_errors.join("; ")
        );
    }
}

fn header(ratios: &[&str]) {
    let mut line = String::from("| case | req/s |");
    let mut rule = String::from("|---|---:|");
    for name in ratios {
        let _ = write!(line, " {name} |");
        rule.push_str("---:|");
    }
    line.push_str(" p50 ms | p99 ms | p50 ms, 1 conn | p99 ms, 1 conn |");
    rule.push_str("---:|---:|---:|---:|");
    println!("{line}\n{rule}");
}

fn row(case: &Case, s: &Summary, ratios: &[String]) {
    let mut line = format!("| {} | {:.0} |", case.label, s.requests_per_second);
    for ratio in ratios {
        let _ = write!(line, " {ratio} |");
    }
    let _ = write!(
        line,
        " {:.2} | {:.2} | {:.3} | {:.3} |",
        s.p50_ms, s.p99_ms, s.single_p50_ms, s.single_p99_ms
    );
    println!("{line}");
}

fn ratio(value: f64, reference: f64) -> String {
    format!("{:.2}", value / reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_parsed_with_its_units_and_failures() {
        let output = "Running 5s test @ http://127.0.0.1:1/x\n  1 threads and 16 connections\n  Latency Distribution\n     50%  412.00us\n     75%    1.00ms\n     90%    1.50ms\n     99%    2.10ms\n  53421 requests in 5.00s, 12.30MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:  10684.12\n";
        let run = parse_wrk(output).expect("parsed");
        assert!((run.requests_per_second - 10684.12).abs() < 1e-6);
        assert!((run.p50_ms - 0.412).abs() < 1e-9);
        assert!((run.p99_ms - 2.1).abs() < 1e-9);
        assert_eq!(run.requests, 53421);
        assert_eq!(run.failures, 7);
    }
}
