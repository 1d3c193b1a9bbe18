//! `make bench`: requests per second and latency through a real Envoy for the request-path
//! features the issues name, each beside its reference measured in the same run.
//!
//! - Issue 3: a route protected by Tollgate (`ext_authz` → tollgate-ext-authz, one valid
//!   RS256 token reused, so its verified-token cache answers) against the same route guarded
//!   by Envoy's own `jwt_authn` filter for the same provider and key set, with and without
//!   jwt_authn's verified-token cache, on hand-written static bootstraps: one with Envoy's
//!   defaults, one with the listener and route settings Tollgate adds to every route, so
//!   that the auth filter is the only difference (the issue's "the same route").
//! - Issue 4: a route with a Tollgate rate limit (tollgate-ratelimit on a real
//!   `redis-server`, a limit no request reaches) against the same route without one.
//! - Issue 5: the chain, bare → + JWT → + rate limit → + both, each as a ratio to bare;
//!   then both with OpenTelemetry tracing at 1% sampling, on a second gateway (tracing is
//!   per routes.yaml) whose Envoy and sidecars export to an OTLP/gRPC receiver in this
//!   process.
//! - Issue 20: a route taking an API key (tollgate-ext-authz hashes it and looks it up)
//!   beside the JWT route, and a route with an `allow_ips` rule (Envoy's RBAC filter)
//!   beside the bare route.
//! - Issue 23: issue 4's route with its rule in `mode: local` (Envoy's `local_ratelimit`
//!   filter, no call to the rate-limit service) beside the bare route and the global rule.
//! - Issue 24: (b)'s route with its provider checked by Envoy itself (`enforce: envoy`:
//!   jwt_authn and RBAC filters, no call to tollgate-ext-authz), and (d)'s traced chain with
//!   that provider and its limit in `mode: local`, so that no request leaves Envoy but for
//!   the upstream (and the 1% of traces).
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
//! Last, the same gateways start afresh with every Envoy under valgrind's callgrind, and a
//! fixed number of requests per case counts the instructions Envoy executes per request: a
//! measure of Envoy's own work that repeats to a fraction of a percent, where the timings
//! above move by tens of percent with whatever else the machine runs.
//!
//! Usage: `e2e_bench [SECONDS_PER_RUN] [ROUNDS]` (default 5 and 3: about 5 minutes of timed
//! runs, then about 5 of counting). `TOLLGATE_BENCH_CASES=(a),(c),(c-local)` measures only
//! the cases whose label starts with one of those (and (a), every table's reference), and
//! prints only the tables and rows they make; `TOLLGATE_BENCH_CALLGRIND_DIR=DIR` keeps each
//! case's callgrind dump there, for `callgrind_annotate`.

use std::fmt::Write as _;
use std::net::SocketAddr;

use anyhow::Context as _;
use serde_json::json;
use tollgate_conformance::ratelimit::{RateLimitService, RunningRateLimitService};
use tollgate_conformance::{
    eventually, request, reserve_port, ControlPlane, Envoy, ExtAuthz, OtlpReceiver, Response,
    RunningEnvoy, Upstream, UpstreamHandle,
};
use tollgate_testkit::bench::{ProcStat, TICKS_PER_SECOND};
use tollgate_testkit::jwt::{self, TestKey};
use tollgate_testkit::redis::RedisServer;

const ISSUER: &str = "https://id.example.com";
const AUDIENCE: &str = "bench-api";
/// Enough to saturate one Envoy worker without making queueing the whole latency.
const CONNECTIONS: u32 = 16;
/// The unloaded latency: one connection, one request at a time.
const SINGLE_CONNECTION_SECONDS: u64 = 2;
/// No request in a run gets near it: a refused request would be counted as throughput.
const GENEROUS_LIMIT: u64 = 1_000_000_000;

/// One load target: a gateway, a path on it, and the credential header to send, if any.
struct Case {
    label: &'static str,
    port: u16,
    /// The processes serving `port`, whose CPU time the case is charged.
    pids: Pids,
    path: &'static str,
    /// `name: value`, e.g. `authorization: Bearer …`.
    credential: Option<String>,
}

/// The header the references' jwt_authn fills from `sub`, as tollgate-ext-authz does.
const CONSUMER_HEADER: &str = "x-consumer-id";

/// The API key every request of the API-key row presents; the keys file holds its hash.
const BENCH_API_KEY: &str = "tgk_bench_0123456789abcdefghijklmnopqrstuv";

/// The rows of issue 20's table.
const API_KEY_ROW: &str = "(b-key) + API key (tollgate-ext-authz)";
const IP_RULE_ROW: &str = "(a-ip) + IP rule (Envoy RBAC)";

/// Every table's reference.
const BARE_ROW: &str = "(a) bare route";
const JWT_ROW: &str = "(b) + JWT (tollgate-ext-authz)";
/// Issue 5's chain, untraced and traced.
const CHAIN_ROW: &str = "(b+c) + JWT + rate limit, untraced";
const TRACED_CHAIN_ROW: &str = "(d) + JWT + rate limit + tracing at 1%";
/// Issue 4's rule, counted by tollgate-ratelimit, and issue 23's, the same rule counted by
/// Envoy itself.
const GLOBAL_LIMIT_ROW: &str = "(c) + rate limit (tollgate-ratelimit, Redis)";
const LOCAL_LIMIT_ROW: &str = "(c-local) + rate limit, `mode: local` (Envoy local_ratelimit)";
/// The local rule's route, whose name is in Envoy's counters for it.
const LOCAL_LIMIT_ROUTE: &str = "limited-local";
/// Issue 24: (b) and (d) with the provider Envoy checks itself, and (d)'s limit counted by
/// Envoy too.
const NATIVE_JWT_ROW: &str = "(b-native) + JWT, `enforce: envoy` (Envoy jwt_authn + RBAC)";
const TRACED_NATIVE_CHAIN_ROW: &str =
    "(d-native) + JWT `enforce: envoy` + rate limit `mode: local` + tracing at 1%";
/// The native chain's route, on the traced gateway, whose name is in Envoy's counters for
/// its local rule.
const NATIVE_CHAIN_ROUTE: &str = "both-native";

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
    /// Requests answered over every run, loaded and single-connection.
    fn answered(&self) -> u64 {
        self.loaded
            .iter()
            .chain(&self.single)
            .map(|run| run.requests)
            .sum()
    }

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
    let jwks = jwt::jwks(&[&key]);
    let now = jwt::now();
    let token = key.mint(&json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "bench-user",
        "iat": now,
        // Valid for the whole run and then some.
        "exp": now + 3600,
    }));

    let redis = RedisServer::start();
    let collector = OtlpReceiver::start().await;
    let setup = Setup {
        upstream: &upstream,
        jwks: &jwks,
        redis: &redis,
        collector: &collector,
        token: &token,
    };
    let gateways = Gateways::start(&setup, &Envoy::new()).await;
    let selection = CaseSelection::from_env();
    let cases = selection.apply(gateways.cases(&token));
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
    let mut sidecar_errors = sidecar_errors(&gateways.tollgate.envoy).await;
    for error in self::sidecar_errors(&gateways.traced.envoy).await {
        sidecar_errors.push(format!("(traced gateway) {error}"));
    }
    let local_limit = local_limit_counts(&gateways.tollgate.envoy, LOCAL_LIMIT_ROUTE).await;
    let native_local_limit = local_limit_counts(&gateways.traced.envoy, NATIVE_CHAIN_ROUTE).await;
    // Each native row is the only one of its gateway whose tokens jwt_authn checks.
    let native_jwt = jwt_authn_counts(&gateways.tollgate.envoy).await;
    let traced_native_jwt = jwt_authn_counts(&gateways.traced.envoy).await;
    print_tables(&cases, &summaries, seconds, rounds, &load, &sidecar_errors);
    let row_samples = |label: &str| {
        let i = cases.iter().position(|case| case.label == label)?;
        Some(&samples[i])
    };
    if let Some(samples) = row_samples(LOCAL_LIMIT_ROW) {
        print_local_limit_counts(LOCAL_LIMIT_ROW, samples, &local_limit);
    }
    if let Some(samples) = row_samples(NATIVE_JWT_ROW) {
        print_jwt_authn_counts(NATIVE_JWT_ROW, samples, &native_jwt);
    }
    if let Some(samples) = row_samples(TRACED_NATIVE_CHAIN_ROW) {
        print_jwt_authn_counts(TRACED_NATIVE_CHAIN_ROW, samples, &traced_native_jwt);
        print_local_limit_counts(TRACED_NATIVE_CHAIN_ROW, samples, &native_local_limit);
    }
    if cases
        .iter()
        .any(|case| [TRACED_CHAIN_ROW, TRACED_NATIVE_CHAIN_ROW].contains(&case.label))
    {
        print_tracing_summary(&collector);
    }
    drop(gateways);

    println!();
    let counted = Gateways::start(&setup, &Envoy::new().under_callgrind()).await;
    let keep_dumps = std::env::var_os("TOLLGATE_BENCH_CALLGRIND_DIR").map(std::path::PathBuf::from);
    let instructions = count_instructions(
        &counted,
        &selection.apply(counted.cases(&token)),
        keep_dumps.as_deref(),
    )
    .await;
    for (envoy, route, label) in [
        (&counted.tollgate.envoy, LOCAL_LIMIT_ROUTE, LOCAL_LIMIT_ROW),
        (
            &counted.traced.envoy,
            NATIVE_CHAIN_ROUTE,
            TRACED_NATIVE_CHAIN_ROW,
        ),
    ] {
        let refused = local_limit_counts(envoy, route).await.refused;
        assert_eq!(
            refused, 0,
            "the local limit refused {refused} counted requests: {label} would be meaningless"
        );
    }
    print_instructions(&cases, &instructions);
}

/// Which cases a run measures: `TOLLGATE_BENCH_CASES`, comma-separated label prefixes such
/// as `(a),(c),(c-local)`; every case when unset.
struct CaseSelection {
    prefixes: Option<Vec<String>>,
}

impl CaseSelection {
    fn from_env() -> Self {
        let prefixes = std::env::var("TOLLGATE_BENCH_CASES").ok().map(|list| {
            list.split(',')
                .map(|prefix| prefix.trim().to_owned())
                .filter(|prefix| !prefix.is_empty())
                .collect()
        });
        CaseSelection { prefixes }
    }

    /// Keeps the chosen cases, in their usual order, and (a) whatever was chosen: every
    /// table's ratios are to it.
    fn apply(&self, cases: Vec<Case>) -> Vec<Case> {
        let Some(prefixes) = &self.prefixes else {
            return cases;
        };
        let selected: Vec<Case> = cases
            .into_iter()
            .filter(|case| {
                case.label == BARE_ROW || prefixes.iter().any(|p| case.label.starts_with(p))
            })
            .collect();
        for prefix in prefixes {
            assert!(
                selected.iter().any(|case| case.label.starts_with(prefix)),
                "TOLLGATE_BENCH_CASES: no case's label starts with {prefix:?}"
            );
        }
        selected
    }
}

/// What Envoy's `local_ratelimit` filter did on the local rule's route: requests it counted
/// and let through, and requests it refused.
struct LocalLimitCounts {
    admitted: u64,
    refused: u64,
}

/// On `route`, whose local rule Envoy counts under the route's name.
async fn local_limit_counts(envoy: &RunningEnvoy, route: &str) -> LocalLimitCounts {
    let prefix = format!("tollgate_local.{route}.http_local_rate_limit.");
    let stats = envoy
        .stats("http_local_rate_limit")
        .await
        .expect("Envoy's /stats");
    let count = |name: &str| {
        stats
            .iter()
            .find(|(stat, _)| stat.strip_prefix(&prefix) == Some(name))
            .map_or(0, |(_, count)| *count)
    };
    LocalLimitCounts {
        admitted: count("ok"),
        refused: count("rate_limited"),
    }
}

/// A local rule must have counted every request of its row and refused none: a request
/// it did not count would mean the row measured no limit, and a refused one is a cheap 429
/// counted as throughput. Envoy counts a request when its headers arrive, so it has counted
/// at least what wrk saw answered (also those in flight when a run ended, and the check's).
fn print_local_limit_counts(label: &str, samples: &Samples, counts: &LocalLimitCounts) {
    let answered = samples.answered();
    if counts.refused == 0 && counts.admitted >= answered {
        println!(
            "{label}: Envoy's local_ratelimit counted {} requests (wrk saw {answered} answered) \
             and refused none.",
            counts.admitted
        );
    } else {
        println!(
            "**{label} is invalid**: Envoy's local_ratelimit counted {} requests of the \
             {answered} wrk saw answered, and refused {}.",
            counts.admitted, counts.refused
        );
    }
}

/// What Envoy's jwt_authn filter decided on a gateway: tokens it let through, and requests
/// it refused.
struct JwtAuthnCounts {
    allowed: u64,
    denied: u64,
}

async fn jwt_authn_counts(envoy: &RunningEnvoy) -> JwtAuthnCounts {
    let stats = envoy.stats("jwt_authn").await.expect("Envoy's /stats");
    // Summed over listeners: each gateway has the one, `public`.
    let count = |name: &str| {
        stats
            .iter()
            .filter(|(stat, _)| stat.ends_with(&format!(".jwt_authn.{name}")))
            .map(|(_, count)| *count)
            .sum()
    };
    JwtAuthnCounts {
        allowed: count("allowed"),
        denied: count("denied"),
    }
}

/// A row with `enforce: envoy` measures Envoy's check only if jwt_authn let every request
/// of it through: as many as wrk saw answered, or more (those in flight when a run ended,
/// and the route check's). It denied only the route check's requests without a token.
fn print_jwt_authn_counts(label: &str, samples: &Samples, counts: &JwtAuthnCounts) {
    let answered = samples.answered();
    if counts.allowed >= answered {
        println!(
            "{label}: Envoy's jwt_authn let {} requests through (wrk saw {answered} answered) \
             and denied {} (the route check's requests without a token).",
            counts.allowed, counts.denied
        );
    } else {
        println!(
            "**{label} is invalid**: Envoy's jwt_authn let {} requests through of the \
             {answered} wrk saw answered.",
            counts.allowed
        );
    }
}

/// What every gateway of the run shares.
struct Setup<'a> {
    upstream: &'a UpstreamHandle,
    jwks: &'a str,
    redis: &'a RedisServer,
    collector: &'a OtlpReceiver,
    token: &'a str,
}

/// The four Envoys of a run: Tollgate's, Tollgate's with tracing, and the two references.
struct Gateways {
    tollgate: TollgateGateway,
    traced: TollgateGateway,
    reference: Reference,
    matched: Reference,
}

impl Gateways {
    /// `envoy`: how every Envoy runs (under callgrind, say), before its bootstrap is given.
    async fn start(setup: &Setup<'_>, envoy: &Envoy) -> Self {
        let (upstream, jwks) = (setup.upstream, setup.jwks);
        let tollgate = TollgateGateway::start(envoy, upstream, jwks, setup.redis, None).await;
        let otlp = setup.collector.endpoint();
        let traced = TollgateGateway::start(envoy, upstream, jwks, setup.redis, Some(&otlp)).await;
        let reference =
            start_reference(envoy, upstream, jwks, ListenerSettings::EnvoyDefaults).await;
        let matched = start_reference(envoy, upstream, jwks, ListenerSettings::Tollgate).await;
        let references = [&reference, &matched];
        check_routes(&tollgate, &references, setup.token).await;
        check_routes(&traced, &references, setup.token).await;
        Gateways {
            tollgate,
            traced,
            reference,
            matched,
        }
    }

    fn cases(&self, token: &str) -> Vec<Case> {
        let bearer = || Some(format!("authorization: Bearer {token}"));
        let reference = self.reference.gateway();
        let matched = self.matched.gateway();
        let tollgate = (self.tollgate.port, self.tollgate.pids());
        let traced = (self.traced.port, self.traced.pids());
        vec![
            case("reference: bare route", reference, "/bare/x", None),
            case("reference: jwt_authn", reference, "/auth/x", bearer()),
            case(
                "reference: jwt_authn + jwt_cache_config",
                reference,
                "/auth-cached/x",
                bearer(),
            ),
            case(MATCHED_BARE, matched, "/bare/x", None),
            case(MATCHED_JWT_AUTHN, matched, "/auth/x", bearer()),
            case(
                MATCHED_JWT_AUTHN_CACHED,
                matched,
                "/auth-cached/x",
                bearer(),
            ),
            case(BARE_ROW, tollgate, "/bare/x", None),
            case(JWT_ROW, tollgate, "/auth/x", bearer()),
            case(NATIVE_JWT_ROW, tollgate, "/auth-native/x", bearer()),
            case(
                API_KEY_ROW,
                tollgate,
                "/key/x",
                Some(format!("x-api-key: {BENCH_API_KEY}")),
            ),
            case(IP_RULE_ROW, tollgate, "/ip/x", None),
            case(GLOBAL_LIMIT_ROW, tollgate, "/limited/x", None),
            case(LOCAL_LIMIT_ROW, tollgate, "/limited-local/x", None),
            case(CHAIN_ROW, tollgate, "/both/x", bearer()),
            case(TRACED_CHAIN_ROW, traced, "/both/x", bearer()),
            case(TRACED_NATIVE_CHAIN_ROW, traced, "/both-native/x", bearer()),
        ]
    }

    fn envoy(&self, pid: u32) -> &RunningEnvoy {
        [
            &self.tollgate.envoy,
            &self.traced.envoy,
            &self.reference.envoy,
            &self.matched.envoy,
        ]
        .into_iter()
        .find(|envoy| envoy.process().pid() == pid)
        .expect("every case is served by one of the gateways")
    }
}

/// Requests per case whose Envoy instructions are counted, after [`WARM_UP_REQUESTS`]
/// uncounted ones (connections opened, caches filled).
const COUNTED_REQUESTS: u32 = 2000;
const WARM_UP_REQUESTS: u32 = 200;

/// Envoy's instructions per request for each case, counted under callgrind.
/// With `keep_dumps`, each case's callgrind dump is kept there, named after the case.
async fn count_instructions(
    gateways: &Gateways,
    cases: &[Case],
    keep_dumps: Option<&std::path::Path>,
) -> Vec<f64> {
    let mut per_request = Vec::new();
    for case in cases {
        let envoy = gateways.envoy(case.pids.envoy);
        h2load(case, WARM_UP_REQUESTS).await;
        let keep = keep_dumps.map(|dir| dir.join(format!("{}.callgrind", file_name(case.label))));
        let ((), instructions) = envoy
            .count_instructions_keeping(h2load(case, COUNTED_REQUESTS), keep.as_deref())
            .await
            .unwrap_or_else(|e| panic!("counting {}: {e:#}", case.label));
        per_request.push(instructions as f64 / f64::from(COUNTED_REQUESTS));
    }
    per_request
}

/// `label` as a file name a shell needs no quotes for: letters, digits and `-`, every run of
/// anything else one `_`.
fn file_name(label: &str) -> String {
    let mut name = String::new();
    for c in label.chars() {
        if c.is_ascii_alphanumeric() || c == '-' {
            name.push(c);
        } else if !name.is_empty() && !name.ends_with('_') {
            name.push('_');
        }
    }
    name.trim_end_matches('_').to_owned()
}

/// Sends exactly `requests` requests over 4 keep-alive HTTP/1.1 connections and checks that
/// every one answered 2xx.
async fn h2load(case: &Case, requests: u32) {
    let mut command = tokio::process::Command::new("h2load");
    command.args(["--h1", "-c", "4", "-n", &requests.to_string()]);
    if let Some(credential) = &case.credential {
        command.args(["-H", credential]);
    }
    command.arg(format!("http://127.0.0.1:{}{}", case.port, case.path));
    let output = command.output().await.expect("run h2load");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let all_2xx = format!("status codes: {requests} 2xx");
    assert!(
        output.status.success() && stdout.contains(&all_2xx),
        "h2load for {}: expected {all_2xx:?}, got {}: {stdout}",
        case.label,
        output.status
    );
}

fn print_instructions(cases: &[Case], per_request: &[f64]) {
    let bare = per_request[case_index(cases, BARE_ROW)];
    println!("### Envoy's own work per request, counted (issues 3, 4, 5, 23 and 24)");
    println!();
    println!(
        "Instructions Envoy executed (all its threads) per request, under valgrind's callgrind: \
         {COUNTED_REQUESTS} requests per case by `h2load --h1 -c 4` after {WARM_UP_REQUESTS} \
         uncounted, on fresh gateways set up as above. Unlike the timings, these repeat to a \
         fraction of a percent whatever else the machine does. While Envoy's one worker is the \
         bottleneck, as in every row above, a case's throughput relative to (a) can be at most \
         about (a)'s instructions over its own (less where its instructions are slower ones, \
         such as jwt_authn's RSA verification)."
    );
    println!();
    println!("| case | instructions per request | × (a) | (a) ÷ case |");
    println!("|---|---:|---:|---:|");
    for (case, instructions) in cases.iter().zip(per_request) {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} |",
            case.label,
            instructions,
            instructions / bare,
            bare / instructions
        );
    }
}

/// What the traced gateway exported during the run: evidence that (d) and (d-native) really
/// traced, at about the rate it was asked to.
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
        "Tracing ((d) and (d-native), on the traced gateway): {} traces with {} spans reached \
         the OTLP receiver by the end of the run ({}; batches still queued then are not \
         counted).",
        traces.len(),
        spans.len(),
        counts.join(", ")
    );
}

fn case(
    label: &'static str,
    (port, pids): (u16, Pids),
    path: &'static str,
    credential: Option<String>,
) -> Case {
    Case {
        label,
        port,
        pids,
        path,
        credential,
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
        envoy: &Envoy,
        upstream: &UpstreamHandle,
        jwks: &str,
        redis: &RedisServer,
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
        // The control plane reads the key set it hands Envoy for `enforce: envoy` before it
        // serves anything.
        let cp = ControlPlane::new()
            .routes(routes)
            .file(tollgate_conformance::ext_authz::JWKS_FILE, jwks)
            .file("keys.yaml", keys_file())
            .start()
            .await;
        let authz = authz.routes_file(cp.routes_path()).jwks(jwks).start().await;
        let rls = rls.routes_file(cp.routes_path()).redis(redis).start().await;
        let envoy = envoy.clone().control_plane(&cp).start().await;
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
            ext_authz: Some(self._authz.process().pid()),
            ratelimit: Some(self._rls.process().pid()),
        }
    }
}

/// Routes to the same upstream, one per step of the chain, and the JWT route and the chain
/// again with the provider Envoy checks itself (`enforce: envoy`) and a local limit. The
/// access log is off, as in the hand-written reference, so that the tables compare the auth
/// and rate-limit paths only. The text ends inside `observability`, so that a `tracing:`
/// line can follow. Sidecar timeouts are generous: a check timing out under full load would
/// fail open and be counted as a fast request (the errors are reported after the tables).
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
  # `main` again, but checked by Envoy itself (issue 24); a provider has one mode.
  native:
    issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    jwks_file: jwks.json
    algorithms: [RS256]
    consumer_claim: sub
    enforce: envoy
  keys: {{type: api_key, header: x-api-key, keys_file: keys.yaml}}
routes:
  - {{name: bare, match: {{prefix: /bare/}}, service: bench}}
  - {{name: key, match: {{prefix: /key/}}, service: bench, auth: {{provider: keys}}}}
  - {{name: ip, match: {{prefix: /ip/}}, service: bench, allow_ips: [127.0.0.0/8]}}
  - name: auth
    match: {{prefix: /auth/}}
    service: bench
    auth: {{provider: main}}
  - name: limited
    match: {{prefix: /limited/}}
    service: bench
    rate_limit:
      - {{by: client_ip, requests: {GENEROUS_LIMIT}, per: minute}}
  - name: {LOCAL_LIMIT_ROUTE}
    match: {{prefix: /limited-local/}}
    service: bench
    rate_limit:
      - {{by: client_ip, requests: {GENEROUS_LIMIT}, per: minute, mode: local}}
  - name: both
    match: {{prefix: /both/}}
    service: bench
    auth: {{provider: main}}
    rate_limit:
      - {{by: consumer, requests: {GENEROUS_LIMIT}, per: minute}}
  - name: auth-native
    match: {{prefix: /auth-native/}}
    service: bench
    auth: {{provider: native}}
  - name: {NATIVE_CHAIN_ROUTE}
    match: {{prefix: /both-native/}}
    service: bench
    auth: {{provider: native}}
    rate_limit:
      - {{by: consumer, requests: {GENEROUS_LIMIT}, per: minute, mode: local}}
sidecars:
  ext_authz: {{address: "{authz}", timeout: 1s, failure_mode_allow: false}}
  rate_limit: {{address: "{rls}", timeout: 1s, failure_mode_deny: false, domain: tollgate}}
observability:
  access_log: {{enabled: false}}
"#,
        upstream = upstream.endpoint(),
    )
}

/// The keys file of the API-key route: [`BENCH_API_KEY`]'s hash among 999 others, so the
/// lookup is one in a realistic table, not in a table of one.
fn keys_file() -> String {
    use sha2::Digest as _;
    let mut file = String::from("keys:\n");
    for n in 0..1000 {
        let key = match n {
            500 => BENCH_API_KEY.to_owned(),
            n => format!("tgk_other_{n}"),
        };
        let digest = hex::encode(sha2::Sha256::digest(key.as_bytes()));
        let _ = writeln!(file, "  - {{consumer: consumer-{n}, sha256: \"{digest}\"}}");
    }
    file
}

/// The hand-written Envoy: one listener whose routes are guarded by `jwt_authn` rules.
struct Reference {
    port: u16,
    envoy: RunningEnvoy,
}

/// How a reference Envoy's listener is set up besides its routes and filters.
#[derive(Clone, Copy)]
enum ListenerSettings {
    /// Envoy's defaults: what the least an Envoy in front of an API does costs.
    EnvoyDefaults,
    /// What tollgate-control-plane sets on every listener and route whatever the route
    /// asks for (correlation ids echoed back, path normalisation with `%2F` refused, the
    /// client's address as the peer's, identity headers stripped before routing, per-route
    /// stats), so that auth is the only difference between the reference's routes and
    /// Tollgate's: the issue's "the same route with Envoy's native jwt_authn filter". The
    /// JSON bodies of the gateway's own replies are left out: no reply here is the
    /// gateway's own.
    Tollgate,
}

impl Reference {
    fn gateway(&self) -> (u16, Pids) {
        (
            self.port,
            Pids {
                envoy: self.envoy.process().pid(),
                ext_authz: None,
                ratelimit: None,
            },
        )
    }
}

/// The rows of the reference with [`ListenerSettings::Tollgate`].
const MATCHED_BARE: &str = "reference, Tollgate's listener settings: bare route";
const MATCHED_JWT_AUTHN: &str = "reference, Tollgate's listener settings: jwt_authn";
const MATCHED_JWT_AUTHN_CACHED: &str =
    "reference, Tollgate's listener settings: jwt_authn + jwt_cache_config";

async fn start_reference(
    envoy: &Envoy,
    upstream: &UpstreamHandle,
    jwks: &str,
    settings: ListenerSettings,
) -> Reference {
    let port = reserve_port();
    let envoy = envoy
        .clone()
        .static_bootstrap(&reference_bootstrap(port, upstream.addr(), jwks, settings))
        .start()
        .await;
    Reference { port, envoy }
}

/// The same provider as Tollgate's (issuer, audience, RS256 key set given inline, the
/// subject forwarded as `x-consumer-id`), twice: `main` verifies every request as Envoy does
/// by default, `cached` keeps verified tokens (`jwt_cache_config`), as tollgate-ext-authz does.
fn reference_bootstrap(
    port: u16,
    upstream: SocketAddr,
    jwks: &str,
    settings: ListenerSettings,
) -> String {
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
            format!("claim_to_headers: [{{header_name: {CONSUMER_HEADER}, claim_name: sub}}]"),
            extra.to_owned(),
        ] {
            if !line.is_empty() {
                yaml.push_str(&format!("{indent}{line}\n"));
            }
        }
        yaml
    };
    let (listener, route_stats): (String, fn(&str) -> String) = match settings {
        ListenerSettings::EnvoyDefaults => (String::new(), |_| String::new()),
        ListenerSettings::Tollgate => (
            format!(
                r#"                use_remote_address: true
                generate_request_id: true
                preserve_external_request_id: true
                always_set_request_id_in_response: true
                normalize_path: true
                merge_slashes: true
                path_with_escaped_slashes_action: REJECT_REQUEST
                early_header_mutation_extensions:
                  - name: strip_identity_headers
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation
                      mutations: [{{remove: {CONSUMER_HEADER}}}]
"#
            ),
            |name| format!(", name: {name}, stat_prefix: {name}"),
        ),
    };
    tollgate_conformance::envoy::reference_bootstrap(
        port,
        upstream,
        &format!(
            r#"{listener}                route_config:
                  name: public
                  virtual_hosts:
                    - name: public
                      domains: ["*"]
                      routes:
                        - {{match: {{prefix: /bare/}}, route: {{cluster: bench}}{bare}}}
                        - {{match: {{prefix: /auth/}}, route: {{cluster: bench}}{auth}}}
                        - {{match: {{prefix: /auth-cached/}}, route: {{cluster: bench}}{auth_cached}}}
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
            bare = route_stats("bare"),
            auth = route_stats("auth"),
            auth_cached = route_stats("auth-cached"),
        ),
    )
}

/// Every case answers 200 from the upstream with the token; every protected route refuses a
/// request without one; every limited route answers with rate-limit headers, so the limit is
/// really consulted. A benchmark of a misconfigured route would measure the wrong thing.
async fn check_routes(tollgate: &TollgateGateway, references: &[&Reference], token: &str) {
    let with_token = |port: u16, path: &'static str| async move {
        request(port)
            .path(path)
            .header("authorization", &format!("Bearer {token}"))
            .send()
            .await
    };
    let reference_paths = |paths: &'static [&'static str]| {
        references
            .iter()
            .flat_map(move |r| paths.iter().map(move |path| (r.port, *path)))
    };
    let tollgate_paths = [
        "/bare/x",
        "/auth/x",
        "/limited/x",
        "/limited-local/x",
        "/both/x",
        "/ip/x",
        "/auth-native/x",
        "/both-native/x",
    ];
    for (port, path) in reference_paths(&["/bare/x", "/auth/x", "/auth-cached/x"])
        .chain(tollgate_paths.map(|path| (tollgate.port, path)))
    {
        let response = eventually(&format!("{path} on port {port} answers"), async || {
            let response = with_token(port, path).await?;
            response.expect_upstream("bench")?;
            Ok(response)
        })
        .await;
        if ["/limited/", "/both/", "/both-native/"]
            .iter()
            .any(|limited| path.starts_with(limited))
        {
            expect_rate_limit_headers(&response).expect("a limited route is rate limited");
        }
    }
    eventually("the API-key route admits the bench key", async || {
        request(tollgate.port)
            .path("/key/x")
            .header("x-api-key", BENCH_API_KEY)
            .send()
            .await?
            .expect_upstream("bench")?;
        Ok(())
    })
    .await;
    for (port, path) in reference_paths(&["/auth/x", "/auth-cached/x"]).chain(
        [
            "/auth/x",
            "/both/x",
            "/key/x",
            "/auth-native/x",
            "/both-native/x",
        ]
        .map(|path| (tollgate.port, path)),
    ) {
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
    if let Some(credential) = &case.credential {
        command.args(["-H", credential]);
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
        let i = cases.iter().position(|c| c.label == label)?;
        Some((&cases[i], &summaries[i]))
    };
    // A table prints the rows this run measured (all, unless TOLLGATE_BENCH_CASES chose),
    // and only when its references were measured too.
    let measured = |labels: &[&str]| -> Vec<(&Case, &Summary)> {
        labels.iter().filter_map(|label| by_label(label)).collect()
    };
    let rate = |label: &str| by_label(label).map(|(_, s)| s.requests_per_second);
    let bare = by_label(BARE_ROW).expect("(a) is always measured").1;
    println!(
        "Each row: `wrk -t1 -c{CONNECTIONS} -d{seconds}s` (keep-alive HTTP/1.1) for req/s and \
         the loaded p50/p99, then `wrk -t1 -c1 -d{SINGLE_CONNECTION_SECONDS}s` for the unloaded \
         p50/p99; median of {rounds} rounds, cases interleaved. Both Envoys run one worker \
         (`--concurrency 1`); wrk, the in-process hyper upstream (its JSON echo costs every row \
         alike), the sidecars and Redis share the same {cores} cores. Envoy access log off on \
         both gateways. Load average at start: {load}.",
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    if let (Some(jwt_authn_matched), Some(jwt_authn_cached_matched), Some(jwt_authn)) = (
        rate(MATCHED_JWT_AUTHN),
        rate(MATCHED_JWT_AUTHN_CACHED),
        rate("reference: jwt_authn"),
    ) {
        println!();
        println!("### JWT auth through Envoy: tollgate-ext-authz vs Envoy's jwt_authn (issue 3)");
        println!();
        println!(
            "One valid RS256 (2048-bit) token reused for every request, so tollgate-ext-authz \
             answers from its verified-token cache; jwt_authn is shown with and without its own \
             cache. The references are hand-written Envoys in front of the same upstream, one \
             with Envoy's defaults and one with the settings tollgate-control-plane gives every \
             listener and route whatever the route asks for (correlation ids echoed back, path \
             normalisation refusing `%2F`, the peer address as the client's, identity headers \
             stripped before routing, per-route stats), so that on the second the auth filter is \
             the only difference from Tollgate's route. Target: tollgate ≥ 0.8 × jwt_authn on \
             the same route, i.e. the first ratio column."
        );
        println!();
        header(&[
            "× jwt_authn, same settings",
            "× jwt_authn + cache, same settings",
            "× jwt_authn, Envoy's defaults",
        ]);
        for (case, s) in measured(&[
            "reference: bare route",
            "reference: jwt_authn",
            "reference: jwt_authn + jwt_cache_config",
            MATCHED_BARE,
            MATCHED_JWT_AUTHN,
            MATCHED_JWT_AUTHN_CACHED,
            BARE_ROW,
            JWT_ROW,
        ]) {
            row(
                case,
                s,
                &[
                    ratio(s.requests_per_second, jwt_authn_matched),
                    ratio(s.requests_per_second, jwt_authn_cached_matched),
                    ratio(s.requests_per_second, jwt_authn),
                ],
            );
        }
    }
    if let Some(jwt) = rate(JWT_ROW) {
        println!();
        println!("### API keys and IP rules through Envoy (issue 20)");
        println!();
        println!(
            "The API-key route (one key reused, looked up by its SHA-256 among 1,000 entries of a \
             keys file) beside the JWT route (b), both checked by tollgate-ext-authz on the same \
             gateway; the route with an `allow_ips` rule (Envoy's RBAC filter, no sidecar call) \
             beside the bare route (a). Targets: API key ≥ 0.95 × JWT; IP rule ≥ 0.95 × bare."
        );
        println!();
        header(&["× (b) JWT", "× (a) bare"]);
        for (case, s) in measured(&[BARE_ROW, IP_RULE_ROW, JWT_ROW, API_KEY_ROW]) {
            row(
                case,
                s,
                &[
                    ratio(s.requests_per_second, jwt),
                    ratio(s.requests_per_second, bare.requests_per_second),
                ],
            );
        }
    }
    let limits = measured(&[BARE_ROW, GLOBAL_LIMIT_ROW, LOCAL_LIMIT_ROW]);
    if limits.len() > 1 {
        println!();
        println!("### Rate limits through Envoy: no limit, tollgate-ratelimit on Redis, and `mode: local` (issues 4 and 23)");
        println!();
        println!(
            "A limit by client IP of {GENEROUS_LIMIT}/minute, so every request is checked and \
             none refused: (c) a sliding window counted by tollgate-ratelimit in a local \
             `redis-server`; (c-local) the same rule with `mode: local`, a token bucket in \
             Envoy's own local_ratelimit filter, no call. Targets: (c) ≥ 0.8 × no limit \
             (issue 4); (c-local) ≥ 0.9 × no limit (issue 23)."
        );
        println!();
        header(&["× no limit"]);
        for (case, s) in limits {
            row(
                case,
                s,
                &[ratio(s.requests_per_second, bare.requests_per_second)],
            );
        }
    }
    // The chain's steps alone are in the tables above.
    if by_label(CHAIN_ROW).is_some() || by_label(TRACED_CHAIN_ROW).is_some() {
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
        added_latency_table(
            &measured(&[
                BARE_ROW,
                JWT_ROW,
                GLOBAL_LIMIT_ROW,
                CHAIN_ROW,
                TRACED_CHAIN_ROW,
            ]),
            bare,
        );
    }
    if by_label(NATIVE_JWT_ROW).is_some() || by_label(TRACED_NATIVE_CHAIN_ROW).is_some() {
        println!();
        println!("### JWT checked by Envoy itself: `enforce: envoy` (issue 24)");
        println!();
        println!(
            "(b-native) is (b)'s route with a second provider, identical to (b)'s (issuer, \
             audience, key set from the same `jwks_file`, RS256 only, consumer from `sub`) but \
             with `enforce: envoy`: Envoy's jwt_authn checks the token (its verified-token \
             cache on, as tollgate-control-plane sets it), then an RBAC filter what jwt_authn \
             cannot require (`exp`, the algorithm, the consumer claim, the 8 KiB bound), and no \
             call leaves for tollgate-ext-authz. (d-native) is (d) on the same traced gateway \
             with that provider and its limit by consumer in `mode: local` (Envoy's \
             local_ratelimit, as in (c-local)): no sidecar is called at all. Targets: \
             (b-native) ≥ 0.9 × (a); (d-native) ≥ 0.8 × (a)."
        );
        println!();
        added_latency_table(
            &measured(&[
                BARE_ROW,
                JWT_ROW,
                NATIVE_JWT_ROW,
                LOCAL_LIMIT_ROW,
                TRACED_CHAIN_ROW,
                TRACED_NATIVE_CHAIN_ROW,
            ]),
            bare,
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

/// Where the case labelled `label` stands in `cases`, and so in every per-case list.
fn case_index(cases: &[Case], label: &str) -> usize {
    cases
        .iter()
        .position(|c| c.label == label)
        .unwrap_or_else(|| panic!("no case {label:?}"))
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

/// A table of `rows` with each one's throughput against `bare` and the p50 it adds, loaded
/// and on one connection.
fn added_latency_table(rows: &[(&Case, &Summary)], bare: &Summary) {
    header(&["× (a)", "added p50 ms, loaded", "added p50 ms, unloaded"]);
    for (case, s) in rows {
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
    fn a_case_label_becomes_a_plain_file_name() {
        assert_eq!(
            file_name(LOCAL_LIMIT_ROW),
            "c-local_rate_limit_mode_local_Envoy_local_ratelimit"
        );
        assert_eq!(file_name(BARE_ROW), "a_bare_route");
    }

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
