//! Decisions per second and latency of ShouldRateLimit against a real Redis, beside
//! `redis-benchmark -t incr -P 16` on the same Redis as the reference.
//!
//! `cargo bench -p tollgate-ratelimit --bench decisions`. Starts its own redis-server on an
//! ephemeral port and one in-process service; a closed loop of concurrent gRPC calls runs
//! for ~3 s per case, then an open loop at half the measured rate gives the latency
//! of a service that is not saturated. Bounded well under a minute.
//!
//! The service runs on one thread of its own, Redis client included (see tollgate-testkit's
//! `bench::ServerThread`), and that thread's CPU time is measured, so each row also says how
//! many decisions one core of service time makes. The callers share a few HTTP/2
//! connections, as Envoy uses one per worker. Two more services are measured the same way:
//! the service with in-memory counters (no Redis round trip) and the floor, a server on the
//! same gRPC stack that answers OK without reading, so the table shows which part of a
//! decision is gRPC's, which is the service's and which is Redis's.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tollgate_proto::envoy::service::ratelimit::v3::rate_limit_response::Code;
use tollgate_proto::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use tollgate_proto::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tollgate_ratelimit::algorithm::{unix_micros, ManualClock};
use tollgate_ratelimit::limits::dropin;
use tollgate_ratelimit::limits::DescriptorTree;
use tollgate_ratelimit::metrics::Metrics;
use tollgate_ratelimit::server;
use tollgate_ratelimit::service::{CurrentLimits, LimitSet, RateLimiter, SHOULD_RATE_LIMIT_PATH};
use tollgate_ratelimit::store::memory::MemoryStore;
use tollgate_ratelimit::store::redis::{RedisStore, RedisTarget};
use tollgate_ratelimit::store::Store;
use tollgate_sidecar::grpc::{self, GrpcServer};
use tollgate_sidecar::telemetry::Telemetry;
use tollgate_testkit::bench::{percentile, ServerThread, Shutdown};
use tollgate_testkit::rate_limit::{call, descriptor, request};
use tollgate_testkit::redis::RedisServer;
use tonic::service::Routes;
use tonic::transport::Channel;

/// The allocator the service binary runs with, so the bench measures what ships.
#[global_allocator]
static ALLOCATOR: tollgate_sidecar::grpc::Allocator = tollgate_sidecar::grpc::Allocator;

const CONFIG: &str = r#"
domain: bench
descriptors:
  - key: a
    rate_limit: {unit: second, requests_per_unit: 4294967295}
  - key: b
    rate_limit: {unit: minute, requests_per_unit: 4294967295}
  - key: c
    rate_limit: {unit: hour, requests_per_unit: 4294967295}
"#;

const CASE_LENGTH: Duration = Duration::from_secs(3);
const CONCURRENCY: usize = 32;
/// Client connections the calls are spread over (Envoy opens one per worker).
const CONNECTIONS: usize = 4;
/// Distinct descriptor values, as distinct clients would send.
const CLIENTS: usize = 1_000;

struct Run {
    rate: f64,
    /// Decisions per second of the service thread's CPU time.
    per_cpu_second: f64,
    /// The service thread's share of one core.
    cpu_share: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

fn requests(descriptors: usize) -> Vec<RateLimitRequest> {
    (0..CLIENTS)
        .map(|i| {
            let value = format!("client-{i}");
            let all = ["a", "b", "c"]
                .iter()
                .take(descriptors)
                .map(|k| descriptor(&[(k, &value)]))
                .collect();
            request("bench", all)
        })
        .collect()
}

/// The service under test and the connections to it.
struct Bench {
    // Field order matters for Drop: the connections close before the server stops.
    clients: Vec<RateLimitServiceClient<Channel>>,
    server: ServerThread,
}

impl Bench {
    fn client(&self, caller: usize) -> RateLimitServiceClient<Channel> {
        self.clients[caller % self.clients.len()].clone()
    }
}

fn summarize(mut latencies: Vec<Duration>, errors: usize, elapsed: Duration, cpu: Duration) -> Run {
    latencies.sort_unstable();
    Run {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        per_cpu_second: latencies.len() as f64 / cpu.as_secs_f64().max(1e-9),
        cpu_share: cpu.as_secs_f64() / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        errors,
    }
}

/// As many calls as `CONCURRENCY` callers can make.
async fn closed_loop(bench: &Bench, requests: Arc<Vec<RateLimitRequest>>) -> Run {
    let cpu_before = bench.server.cpu_time();
    let started = Instant::now();
    let callers = (0..CONCURRENCY).map(|c| {
        let client = bench.client(c);
        let requests = requests.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            let mut i = c;
            while started.elapsed() < CASE_LENGTH {
                let r = &requests[i % requests.len()];
                i += CONCURRENCY;
                let sent = Instant::now();
                match call(&client, r).await {
                    Ok(response) if response.overall_code == Code::Ok as i32 => {
                        latencies.push(sent.elapsed())
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        })
    });
    let mut latencies = Vec::new();
    let mut errors = 0;
    for caller in futures::future::join_all(callers).await {
        let (l, e) = caller.unwrap_or_default();
        latencies.extend(l);
        errors += e;
    }
    let cpu = bench.server.cpu_time().saturating_sub(cpu_before);
    summarize(latencies, errors, started.elapsed(), cpu)
}

/// Calls sent at a steady `rate`, whatever the answers' pace.
async fn open_loop(bench: &Bench, requests: Arc<Vec<RateLimitRequest>>, rate: f64) -> Run {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let cpu_before = bench.server.cpu_time();
    let started = Instant::now();
    let mut calls = Vec::new();
    let mut i = 0;
    while started.elapsed() < CASE_LENGTH {
        ticks.tick().await;
        let client = bench.client(i);
        let requests = requests.clone();
        calls.push(tokio::spawn(async move {
            let sent = Instant::now();
            let ok = call(&client, &requests[i % requests.len()])
                .await
                .is_ok_and(|r| r.overall_code == Code::Ok as i32);
            ok.then(|| sent.elapsed())
        }));
        i += 1;
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for call in futures::future::join_all(calls).await {
        match call {
            Ok(Some(latency)) => latencies.push(latency),
            _ => errors += 1,
        }
    }
    let cpu = bench.server.cpu_time().saturating_sub(cpu_before);
    summarize(latencies, errors, started.elapsed(), cpu)
}

fn redis_benchmark(port: u16) -> String {
    let output = std::process::Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-t",
            "incr",
            "-P",
            "16",
            "-q",
            "-n",
            "1000000",
        ])
        .output();
    match output {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .split('\r')
            .rfind(|l| l.contains("requests per second"))
            .unwrap_or("no result")
            .trim()
            .to_string(),
        Err(e) => format!("redis-benchmark did not run: {e}"),
    }
}

/// The service on `store`, limits from `tree`, as the binary wires it.
async fn serve<S: Store>(
    listener: tokio::net::TcpListener,
    tree: DescriptorTree,
    store: S,
    shutdown: Shutdown,
) {
    let metrics = Metrics::unregistered();
    let limits = CurrentLimits::new(LimitSet::new(tree, &metrics));
    let limiter = RateLimiter::new(
        limits,
        Arc::new(store),
        ManualClock::at(unix_micros(SystemTime::now())),
        metrics,
    );
    server::serve(listener, limiter, shutdown).await;
}

/// Starts `serve` on a server thread of its own and measures it at full and half load
/// for each request size in `descriptor_counts`.
fn measure<F, Fut>(
    runtime: &tokio::runtime::Runtime,
    counters: &'static str,
    descriptor_counts: &[usize],
    serve: F,
) -> Vec<(&'static str, usize, Run, Run)>
where
    F: FnOnce(tokio::net::TcpListener, Shutdown) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let server = ServerThread::spawn(serve);
    runtime.block_on(async {
        let clients = server
            .connect(CONNECTIONS)
            .await
            .into_iter()
            .map(RateLimitServiceClient::new)
            .collect();
        let bench = Bench { server, clients };
        let mut rows = Vec::new();
        for &descriptors in descriptor_counts {
            let requests = Arc::new(requests(descriptors));
            let full = closed_loop(&bench, requests.clone()).await;
            let half = open_loop(&bench, requests, full.rate / 2.0).await;
            rows.push((counters, descriptors, full, half));
        }
        rows
    })
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1_000.0)
}

fn main() {
    // The subscriber the binary installs (log lines and span export, not pointed at a
    // collector): what every span the stack opens per call costs in production.
    let _telemetry = Telemetry::init("tollgate-ratelimit");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("no runtime: {e}");
            std::process::exit(1);
        }
    };
    let redis = RedisServer::start();
    let tree = match dropin::parse(&[dropin::SourceFile {
        name: "bench.yaml".into(),
        text: CONFIG.into(),
    }]) {
        Ok(tree) => tree,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let url = redis.url();
    let redis_tree = tree.clone();
    let mut rows = Vec::new();
    rows.extend(measure(
        &runtime,
        "Redis",
        &[1, 3],
        move |listener, shutdown| async move {
            let store = RedisStore::connect(&RedisTarget::Single(url), Duration::from_millis(40))
                .expect("valid url");
            store.load_scripts().await.expect("scripts load");
            serve(listener, redis_tree, store, shutdown).await;
        },
    ));
    rows.extend(measure(
        &runtime,
        "in-memory counters",
        &[1],
        move |listener, shutdown| async move {
            serve(listener, tree, MemoryStore::new(), shutdown).await;
        },
    ));
    let floor = measure(
        &runtime,
        "reference: gRPC floor (a server that answers OK without reading)",
        &[1],
        |listener, shutdown| async move {
            // The floor: a ShouldRateLimit server on the same gRPC stack that answers OK
            // without reading the request, so the table shows how much of a decision is
            // the service's.
            let answer_ok = |_: tonic::Request<RateLimitRequest>| async {
                Ok(tonic::Response::new(RateLimitResponse {
                    overall_code: Code::Ok as i32,
                    ..Default::default()
                }))
            };
            let server =
                GrpcServer::new(Routes::default()).unary(SHOULD_RATE_LIMIT_PATH, answer_ok);
            grpc::serve(listener, server, shutdown).await;
        },
    );
    let reference = redis_benchmark(redis.port());

    println!();
    println!("ShouldRateLimit over gRPC, one service instance on one thread of its own (server CPU: that thread's share of one core), Redis on loopback, {CONCURRENCY} concurrent callers on {CONNECTIONS} connections, {}s per run", CASE_LENGTH.as_secs());
    println!();
    println!("| counters | descriptors | decisions/s | server CPU | decisions per server-CPU-second | p50 | p99 | half load: rate | p50 | p99 | errors |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (counters, descriptors, full, half) in rows.iter().chain(&floor) {
        println!(
            "| {counters} | {descriptors} | {:.0} | {:.0}% | {:.0} | {} | {} | {:.0}/s | {} | {} | {} |",
            full.rate,
            100.0 * full.cpu_share,
            full.per_cpu_second,
            ms(full.p50),
            ms(full.p99),
            half.rate,
            ms(half.p50),
            ms(half.p99),
            full.errors + half.errors
        );
    }
    println!();
    let floor_cpu = floor
        .first()
        .map_or(0.0, |(_, _, full, _)| 1e6 / full.per_cpu_second);
    println!(
        "Service CPU per decision: {}; the floor is {floor_cpu:.1} µs of each.",
        rows.iter()
            .map(|(counters, descriptors, full, _)| format!(
                "{counters} ×{descriptors} {:.1} µs",
                1e6 / full.per_cpu_second
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    println!("Reference, same Redis: `redis-benchmark -t incr -P 16 -q`: {reference}");
}
