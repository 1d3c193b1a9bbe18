//! Decisions per second of the `tollgate-ratelimit` binary as it ships, against a real Redis,
//! driven by h2load.
//!
//! `cargo bench -p tollgate-ratelimit --bench shipped`. The `decisions` bench measures the
//! service in-process, on one thread, beside its gRPC floor; this one measures what an
//! operator runs: the release binary with a serving thread per core, started with
//! `--config` (drop-in mode, so its fixed window) and `--redis-url`. The load comes from
//! h2load (nghttp2's load generator, in C), which spends a fraction of the CPU per call that
//! a tonic client does, so on this 2-core machine more of it is left to the service and
//! Redis. h2load sends one request body over and over: one descriptor, one Redis key. The
//! service's CPU time comes from /proc; its own metrics confirm that every call was a
//! decision (hits counted) and none failed on Redis (no store errors), since h2load only
//! sees the HTTP status, which gRPC sets to 200 even for an error.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use prost::Message as _;
use tollgate_testkit::bench::{percentile, ProcStat};
use tollgate_testkit::ports::reserve_addr;
use tollgate_testkit::process::Process;
use tollgate_testkit::rate_limit::{descriptor, request};
use tollgate_testkit::redis::RedisServer;

/// As in the `decisions` bench: no call is ever over the limit.
const CONFIG: &str = r#"
domain: bench
descriptors:
  - key: a
    rate_limit: {unit: second, requests_per_unit: 4294967295}
"#;

/// (connections, streams per connection): Envoy opens one connection per worker, and a
/// production rate limit service has several Envoys calling. The more calls in flight, the
/// more of them share each read and write, so the rate climbs with the latency.
const LOADS: [(usize, usize); 3] = [(4, 8), (4, 32), (4, 64)];
/// The paced runs' (connections, most streams per connection).
const PACED_LOADS: [(usize, usize); 2] = [(4, 8), (4, 64)];
const SECONDS: u64 = 3;
/// Starting the binary and Redis answering it, on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// The service process; killed when dropped, so it dies with the bench.
struct Service {
    process: Process,
    grpc: SocketAddr,
    metrics: SocketAddr,
}

impl Service {
    fn start(dir: &Path, redis_url: &str) -> Self {
        let config = dir.join("bench.yaml");
        std::fs::write(&config, CONFIG).expect("write the limits");
        let grpc = reserve_addr();
        let metrics = reserve_addr();
        let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate-ratelimit"));
        command
            .arg("--grpc-addr")
            .arg(grpc.to_string())
            .arg("--metrics-addr")
            .arg(metrics.to_string())
            .arg("--config")
            .arg(&config)
            .arg("--redis-url")
            .arg(redis_url);
        let mut process =
            Process::spawn("tollgate-ratelimit", command, dir).expect("start tollgate-ratelimit");
        process.wait_until_ready_blocking(PATIENCE, "ready", || {
            match http_get(metrics, "/readyz") {
                Some((200, _)) => Ok(()),
                Some((status, _)) => Err(format!("/readyz answered {status}")),
                None => Err("/readyz not answering".to_owned()),
            }
        });
        Service {
            process,
            grpc,
            metrics,
        }
    }

    /// User plus system CPU time the process has used so far.
    fn cpu_time(&self) -> Duration {
        ProcStat::read(self.process.pid())
            .expect("the service's /proc stat")
            .cpu_time()
    }

    /// The sum of every series of the counter `name` in the service's /metrics.
    fn counter(&self, name: &str) -> f64 {
        let (_, body) = http_get(self.metrics, "/metrics").expect("the service's metrics");
        body.lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// A plain HTTP/1.0 GET: the status and body, or `None` when nothing answers yet.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// The ShouldRateLimit call h2load sends, as a gRPC message frame: uncompressed, length
/// prefixed (the gRPC over HTTP/2 spec's Length-Prefixed-Message).
fn request_frame() -> Vec<u8> {
    let message = request("bench", vec![descriptor(&[("a", "client-1")])]).encode_to_vec();
    let length = u32::try_from(message.len()).expect("a small message");
    let mut frame = vec![0];
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(&message);
    frame
}

struct Run {
    connections: usize,
    in_flight: usize,
    decisions: f64,
    rate: f64,
    cpu: Duration,
    mean: String,
    failed: f64,
    /// p50 and p99 of the calls' times, when h2load logged each call.
    percentiles: Option<(Duration, Duration)>,
}

/// A paced run: h2load starts `per_client` calls a second on each connection and logs
/// each call's time to `log`.
struct Paced<'a> {
    per_client: u64,
    log: &'a Path,
}

fn run(
    service: &Service,
    body: &Path,
    connections: usize,
    streams: usize,
    paced: Option<Paced<'_>>,
) -> Run {
    let hits_before = service.counter("tollgate_ratelimit_hits_total");
    let errors_before = service.counter("tollgate_ratelimit_redis_errors_total");
    let cpu_before = service.cpu_time();
    let mut h2load = Command::new("h2load");
    if let Some(paced) = &paced {
        h2load
            .arg(format!("--rps={}", paced.per_client))
            .arg("--log-file")
            .arg(paced.log);
    }
    let output = h2load
        .args(["-D", &SECONDS.to_string()])
        .args(["-c", &connections.to_string()])
        .args(["-m", &streams.to_string()])
        .args(["-t", "1"])
        .arg("-d")
        .arg(body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg(format!(
            "http://{}/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
            service.grpc
        ))
        .stdin(Stdio::null())
        .output()
        .expect("h2load runs (scripts/provision.sh installs it for make bench)");
    let cpu = service.cpu_time().saturating_sub(cpu_before);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "h2load failed:\n{text}");
    let field = |line_start: &str, index: usize| -> String {
        text.lines()
            .find(|l| l.trim_start().starts_with(line_start))
            .and_then(|l| l.split_whitespace().nth(index))
            .unwrap_or_else(|| panic!("no {line_start:?} in h2load's output:\n{text}"))
            .trim_end_matches(',')
            .to_string()
    };
    // "requests: N total, N started, N done, N succeeded, …", "finished in 3.00s, R req/s, …",
    // "time for request: min max mean sd ±sd".
    let succeeded: f64 = field("requests:", 7).parse().expect("a count");
    let rate: f64 = field("finished in", 3).parse().expect("a rate");
    let mean = field("time for request:", 5);
    let hits = service.counter("tollgate_ratelimit_hits_total") - hits_before;
    let redis_errors = service.counter("tollgate_ratelimit_redis_errors_total") - errors_before;
    Run {
        connections,
        in_flight: connections * streams,
        decisions: succeeded,
        rate,
        cpu,
        mean,
        // A call h2load saw succeed that the service did not count as a decision: an HTTP
        // 200 whose gRPC status was an error. (The service may count a few more: calls still
        // in flight when h2load stopped.)
        failed: redis_errors + (succeeded - hits).max(0.0),
        percentiles: paced.map(|paced| call_time_percentiles(paced.log)),
    }
}

/// p50 and p99 of the call times in h2load's `--log-file`: one line per call, tab-separated
/// start time (µs since the epoch), HTTP status and µs until the response ended.
fn call_time_percentiles(log: &Path) -> (Duration, Duration) {
    let text = std::fs::read_to_string(log).expect("h2load's log");
    let mut times: Vec<Duration> = text
        .lines()
        .filter_map(|line| line.split('\t').nth(2)?.trim().parse().ok())
        .map(Duration::from_micros)
        .collect();
    assert!(!times.is_empty(), "no calls in h2load's log");
    times.sort_unstable();
    (percentile(&times, 0.50), percentile(&times, 0.99))
}

fn main() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("a scratch directory");
    let body = dir.path().join("request.bin");
    std::fs::write(&body, request_frame()).expect("write the request");
    let service = Service::start(dir.path(), &redis.url());
    let mut runs: Vec<Run> = LOADS
        .iter()
        .map(|&(connections, streams)| run(&service, &body, connections, streams, None))
        .collect();
    // Half the best rate, paced: the issue's "p99 at half that load". h2load releases its
    // paced calls in bursts, so the cap on calls in flight shapes the times: at a fixed
    // 10k calls/s, raising it from 32 to 256 in all moved the p50 from 0.9 to 2.1 ms, which
    // a cap never reached could not do. Both caps are shown; the lower one still lets
    // through more than half the best rate (its unpaced row above says how much).
    let best = runs.iter().map(|r| r.rate).fold(0.0, f64::max);
    for (connections, streams) in PACED_LOADS {
        // h2load appends to its log, so each run writes a file of its own.
        let log = dir.path().join(format!("paced-{streams}.log"));
        let paced = Paced {
            per_client: (best / 2.0 / connections as f64).round().max(1.0) as u64,
            log: &log,
        };
        runs.push(run(&service, &body, connections, streams, Some(paced)));
    }

    println!("The binary as it ships: `tollgate-ratelimit --config FILE --redis-url URL` (release build, a serving thread per core), Redis on loopback, driven by `h2load -D {SECONDS} -c C -m M -t 1` with one request body (1 descriptor, one Redis key, fixed window); the last two rows paced by `--rps` at half the best rate, each call's time read from `--log-file`");
    println!();
    println!("| load | connections | calls in flight (at most) | decisions/s | service CPU | decisions per service-CPU-second | mean latency | p50 | p99 | calls without a decision |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for run in &runs {
        let seconds = run.cpu.as_secs_f64();
        let (load, p50, p99) = match run.percentiles {
            Some((p50, p99)) => ("half of the best rate", ms(p50), ms(p99)),
            None => ("as fast as answered", "".into(), "".into()),
        };
        println!(
            "| {load} | {} | {} | {:.0} | {:.0}% | {:.0} | {} | {p50} | {p99} | {:.0} |",
            run.connections,
            run.in_flight,
            run.rate,
            100.0 * seconds / SECONDS as f64,
            run.decisions / seconds.max(1e-9),
            run.mean,
            run.failed
        );
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}
