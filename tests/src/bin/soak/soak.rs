//! The soak, phase by phase: start the chain, check that every route answers as it should,
//! measure the capacity closed-loop, then run open-loop at half of it while three tasks
//! edit routes.yaml, rotate the signing key, and (this one) count Redis keys and look at
//! every process's memory and descriptors.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tollgate_conformance::{eventually, request};

use crate::chain::{Chain, RoutesFile, EDIT_HEADER, UPSTREAM};
use crate::keys::{self, SigningKey};
use crate::load::{self, IntervalStats, Recorder, SecondStats, Target, TokenSlot, REQUEST_TIMEOUT};
use crate::plan::Plan;
use crate::resources::Holding;

/// An edit or a key change that has not reached the gateway in this long has failed; on a
/// busy 2-core machine one takes well under a second.
const PATIENCE: Duration = Duration::from_secs(30);

/// Pause between probes while waiting for an edit or a key change to arrive.
const PROBE_PAUSE: Duration = Duration::from_millis(20);

/// Everything the report is made from.
pub struct Outcome {
    pub load_average_start: String,
    pub load_average_end: String,
    pub capacity: Capacity,
    /// Requests per second of the open loop: half the capacity.
    pub rate: f64,
    /// One per interval of the plan.
    pub intervals: Vec<IntervalStats>,
    /// One per second of the soak.
    pub seconds: Vec<SecondStats>,
    /// The most keys Redis held at any sample of each interval.
    pub redis_keys_max: Vec<u64>,
    /// Redis keys that could not be counted, as text.
    pub redis_errors: Vec<String>,
    /// Per process: at the end of the warm-up, and at the end of each interval.
    pub holdings: Vec<ProcessHoldings>,
    pub edits: Vec<Edit>,
    pub rotations: Vec<Rotation>,
    /// Envoy's counters of sidecar calls that failed or timed out, those above zero.
    pub sidecar_errors: Vec<String>,
    /// Envoy's counters of listeners and clusters replaced or removed and of filter chains
    /// drained: what the edits made Envoy rebuild besides the route table.
    pub envoy_churn: Vec<(String, u64)>,
    /// The control plane's and the sidecars' reload counters, and tollgate-ratelimit's
    /// Redis failures, from their metrics.
    pub reload_metrics: Vec<String>,
}

/// The closed-loop run before the soak.
pub struct Capacity {
    pub seconds: f64,
    pub stats: IntervalStats,
    /// Requests answered without error per second.
    pub rate: f64,
}

pub struct ProcessHoldings {
    pub name: &'static str,
    pub warm: Option<Holding>,
    pub at_interval_ends: Vec<Option<Holding>>,
}

/// One routes.yaml edit.
pub struct Edit {
    /// Since the soak started.
    pub at: Duration,
    /// From the write to the first probe through Envoy that saw it.
    pub seen_after: Result<Duration, String>,
}

/// One key rotation.
pub struct Rotation {
    pub generation: u32,
    pub at: Duration,
    /// From publishing the new key to a token of it being accepted through Envoy.
    pub accepted_after: Result<Duration, String>,
    /// From switching the load to the new key to the last request with an old token answered.
    pub drained_after: Result<Duration, String>,
    /// From dropping the old key to a token of it (one the load had used, so one
    /// ext-authz had cached) being refused through Envoy.
    pub refused_after: Result<Duration, String>,
    /// When the old key was dropped, since the soak started.
    pub dropped_at: Option<Duration>,
}

pub async fn run(plan: &Plan) -> Outcome {
    let load_average_start = load_average();
    let first = SigningKey::generate(0);
    let chain = Chain::start(&keys::jwks(&[&first])).await;
    check_routes(&chain, &first).await;
    let tokens: TokenSlot = Arc::new(RwLock::new(Arc::new(first.tokens())));
    let target = Target {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], chain.port)),
        tokens: tokens.clone(),
    };

    eprintln!(
        "soak: measuring the capacity ({:?} closed-loop, after as long unmeasured)",
        plan.capacity_run
    );
    let capacity = measure_capacity(&target, plan.capacity_run).await;
    let rate = capacity.rate / 2.0;
    eprintln!(
        "soak: capacity {:.0} req/s; {:?} open-loop at {rate:.0} req/s",
        capacity.rate, plan.duration
    );

    let start = Instant::now();
    let until = start + plan.duration;
    let recorder = Arc::new(Recorder::new(start, plan.interval));
    let load = tokio::spawn({
        let (target, recorder) = (target.clone(), recorder.clone());
        async move { load::open_loop(&target, rate, start, until, recorder).await }
    });
    let edits = tokio::spawn(edit_routes(
        chain.routes.clone(),
        chain.port,
        start,
        until,
        plan.edit_every,
    ));
    let rotations = tokio::spawn(rotate_keys(
        tokens,
        chain.authz.jwks_path(),
        first,
        chain.port,
        (start, until),
        plan.rotate_every,
    ));
    let samples = sample(&chain, plan, start).await;
    let load_average_end = load_average();

    if let Err(error) = load.await {
        task_failed("load", error);
    }
    let edits = edits.await.unwrap_or_else(|e| task_failed("edit", e));
    let rotations = rotations
        .await
        .unwrap_or_else(|e| task_failed("rotation", e));
    let seconds = recorder.take_seconds();
    let mut intervals = recorder.take();
    intervals.resize_with(plan.intervals(), IntervalStats::default);

    Outcome {
        load_average_start,
        load_average_end,
        capacity,
        rate,
        intervals,
        seconds,
        redis_keys_max: samples.redis_keys_max,
        redis_errors: samples.redis_errors,
        holdings: samples.holdings,
        edits,
        rotations,
        sidecar_errors: sidecar_errors(&chain).await,
        envoy_churn: chain.envoy.churn().await,
        reload_metrics: reload_metrics(&chain).await,
    }
}

fn task_failed(what: &str, error: tokio::task::JoinError) -> ! {
    panic!("the soak's {what} task failed: {error}")
}

/// Every route answers as the load expects before anything is measured: a soak of a
/// misconfigured chain would measure the wrong thing.
async fn check_routes(chain: &Chain, key: &SigningKey) {
    let port = chain.port;
    let bearer = format!("Bearer {}", key.mint("consumer-check"));
    eventually(
        "the public route answers with edit 0's header",
        async || {
            let response = request(port).path("/public/check").send().await?;
            response.expect_upstream(UPSTREAM)?;
            anyhow::ensure!(
                response.upstream_header(EDIT_HEADER).as_deref() == Some("0"),
                "{EDIT_HEADER} is {:?}",
                response.upstream_header(EDIT_HEADER)
            );
            Ok(())
        },
    )
    .await;
    for path in ["/orders/check", "/metered/check"] {
        eventually(&format!("{path} admits a token"), async || {
            request(port)
                .path(path)
                .header("authorization", &bearer)
                .header("x-client-id", "check")
                .send()
                .await?
                .expect_upstream(UPSTREAM)?;
            Ok(())
        })
        .await;
        let response = request(port).path(path).send().await.expect("a request");
        response
            .expect_status(401)
            .unwrap_or_else(|e| panic!("{path} without a token: {e:#}"));
    }
}

async fn measure_capacity(target: &Target, run: Duration) -> Capacity {
    let unmeasured = Arc::new(Recorder::new(Instant::now(), run));
    load::closed_loop(target, run, unmeasured).await;
    let started = Instant::now();
    // One interval, longer than the run.
    let recorder = Arc::new(Recorder::new(started, run * 4));
    load::closed_loop(target, run, recorder.clone()).await;
    let seconds = started.elapsed().as_secs_f64();
    let stats = recorder.take().into_iter().next().unwrap_or_default();
    Capacity {
        seconds,
        rate: (stats.requests - stats.errors) as f64 / seconds,
        stats,
    }
}

/// An edit every `every` from `start` on, each waited for through Envoy before the next.
async fn edit_routes(
    routes: RoutesFile,
    port: u16,
    start: Instant,
    until: Instant,
    every: Duration,
) -> Vec<Edit> {
    let mut ticks = tokio::time::interval_at((start + every).into(), every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut edits = Vec::new();
    for edit in 1.. {
        ticks.tick().await;
        let written = Instant::now();
        if written >= until {
            break;
        }
        let seen_after = match routes.write(edit) {
            Ok(()) => {
                let want = edit.to_string();
                wait_for(written, || {
                    let want = want.clone();
                    async move {
                        let response = request(port).path("/public/edit-probe").send().await?;
                        let seen = response.upstream_header(EDIT_HEADER);
                        anyhow::ensure!(seen == Some(want), "{EDIT_HEADER}: {seen:?}");
                        Ok(())
                    }
                })
                .await
            }
            Err(error) => Err(format!("writing routes.yaml: {error}")),
        };
        edits.push(Edit {
            at: written - start,
            seen_after,
        });
    }
    edits
}

/// A rotation every `every` from `start` on (none at the end): see [`crate::keys`].
async fn rotate_keys(
    tokens: TokenSlot,
    jwks_path: PathBuf,
    first: SigningKey,
    port: u16,
    (start, until): (Instant, Instant),
    every: Duration,
) -> Vec<Rotation> {
    let mut current = first;
    let mut rotations = Vec::new();
    for generation in 1.. {
        let at = start + every * generation;
        if at >= until {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let next = SigningKey::generate(generation);
        let published = Instant::now();
        let mut rotation = Rotation {
            generation,
            at: published - start,
            accepted_after: Err("not tried".into()),
            drained_after: Err("not tried".into()),
            refused_after: Err("not tried".into()),
            dropped_at: None,
        };
        rotation.accepted_after = match write_jwks(&jwks_path, &[&current, &next]) {
            Ok(()) => wait_for_status(port, &next.mint("consumer-probe"), 200, published).await,
            Err(error) => Err(error),
        };
        if rotation.accepted_after.is_err() {
            // Switching to a key the gateway refuses would fail every request: stay.
            rotations.push(rotation);
            continue;
        }
        let old = {
            let mut slot = tokens.write().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *slot, Arc::new(next.tokens()))
        };
        let switched = Instant::now();
        // Every request in flight holds the set it took its token from.
        rotation.drained_after = wait_until(switched, REQUEST_TIMEOUT + PATIENCE, || {
            let in_flight = Arc::strong_count(&old) - 1;
            async move {
                anyhow::ensure!(
                    in_flight == 0,
                    "{in_flight} requests with old tokens in flight"
                );
                Ok(())
            }
        })
        .await;
        let old_token = old.bearer(0);
        drop(old);
        let dropped = Instant::now();
        rotation.dropped_at = Some(dropped - start);
        rotation.refused_after = match write_jwks(&jwks_path, &[&next]) {
            Ok(()) => {
                let token = old_token.trim_start_matches("Bearer ");
                wait_for_status(port, token, 401, dropped).await
            }
            Err(error) => Err(error),
        };
        rotations.push(rotation);
        current = next;
    }
    rotations
}

/// Replaces the JWKS file by rename, as a key-rotation job would.
fn write_jwks(path: &Path, keys: &[&SigningKey]) -> Result<(), String> {
    let temporary = path.with_file_name(".jwks.json.soak");
    std::fs::write(&temporary, keys::jwks(keys))
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Waits until `GET /orders/probe` with `token` answers `status`.
async fn wait_for_status(
    port: u16,
    token: &str,
    status: u16,
    since: Instant,
) -> Result<Duration, String> {
    let probe = request(port)
        .path("/orders/probe")
        .header("authorization", &format!("Bearer {token}"));
    wait_for(since, || {
        let probe = probe.clone();
        async move {
            probe.send().await?.expect_status(status)?;
            Ok(())
        }
    })
    .await
}

async fn wait_for<F, A>(since: Instant, attempt: F) -> Result<Duration, String>
where
    F: FnMut() -> A,
    A: std::future::Future<Output = anyhow::Result<()>>,
{
    wait_until(since, PATIENCE, attempt).await
}

/// Retries `attempt` until it succeeds (the time since `since`) or `patience` has passed
/// since `since` (the last error). Unlike [`eventually`], a failure is a result to report:
/// the soak goes on.
async fn wait_until<F, A>(
    since: Instant,
    patience: Duration,
    mut attempt: F,
) -> Result<Duration, String>
where
    F: FnMut() -> A,
    A: std::future::Future<Output = anyhow::Result<()>>,
{
    loop {
        match attempt().await {
            Ok(()) => return Ok(since.elapsed()),
            Err(error) if since.elapsed() >= patience => {
                return Err(format!("still failing after {patience:?}: {error:#}"))
            }
            Err(_) => tokio::time::sleep(PROBE_PAUSE).await,
        }
    }
}

/// What the sampler saw.
struct Samples {
    redis_keys_max: Vec<u64>,
    redis_errors: Vec<String>,
    holdings: Vec<ProcessHoldings>,
}

/// Counts Redis keys every [`Plan::SAMPLE_EVERY`], and looks at every process at the end
/// of the warm-up and of each interval, until the soak ends.
async fn sample(chain: &Chain, plan: &Plan, start: Instant) -> Samples {
    let members = chain.members();
    let mut samples = Samples {
        redis_keys_max: vec![0; plan.intervals()],
        redis_errors: Vec::new(),
        holdings: members
            .iter()
            .map(|m| ProcessHoldings {
                name: m.name,
                warm: None,
                at_interval_ends: Vec::new(),
            })
            .collect(),
    };
    let interval = plan.interval.as_secs();
    let mut ticks =
        tokio::time::interval_at((start + Plan::SAMPLE_EVERY).into(), Plan::SAMPLE_EVERY);
    loop {
        // The scheduled time, not when the tick was noticed: samples fall on the plan.
        let elapsed = ticks.tick().await.into_std() - start;
        let second = elapsed.as_secs();
        // The interval that runs up to this sample.
        let index = ((second - 1) / interval) as usize;
        match tokio::task::block_in_place(|| chain.redis.dbsize()) {
            Ok(keys) => {
                let max = &mut samples.redis_keys_max[index];
                *max = (*max).max(keys);
            }
            Err(error) => samples
                .redis_errors
                .push(format!("DBSIZE at {second} s: {error}")),
        }
        if elapsed == plan.warm_up {
            for (member, holdings) in members.iter().zip(&mut samples.holdings) {
                holdings.warm = Holding::of(member.pid);
            }
        }
        if second.is_multiple_of(interval) {
            for (member, holdings) in members.iter().zip(&mut samples.holdings) {
                holdings.at_interval_ends.push(Holding::of(member.pid));
            }
            eprintln!(
                "soak: {} of {} intervals done",
                holdings_len(&samples.holdings),
                plan.intervals()
            );
        }
        if elapsed >= plan.duration {
            return samples;
        }
    }
}

fn holdings_len(holdings: &[ProcessHoldings]) -> usize {
    holdings.first().map_or(0, |h| h.at_interval_ends.len())
}

/// Sidecar calls that did not end in a verdict, from Envoy's stats, as `name: count`.
async fn sidecar_errors(chain: &Chain) -> Vec<String> {
    match chain
        .envoy
        .stats(r"(ext_authz|ratelimit)\.(error|failure_mode_allowed|timeout)")
        .await
    {
        Ok(stats) => stats
            .into_iter()
            .filter(|(_, count)| *count > 0)
            .map(|(name, count)| format!("{name}: {count}"))
            .collect(),
        Err(error) => vec![format!("Envoy stats unreadable: {error:#}")],
    }
}

/// The reload counters of the control plane and both sidecars, which each read routes.yaml
/// again on every edit, and tollgate-ratelimit's count of Redis failures.
async fn reload_metrics(chain: &Chain) -> Vec<String> {
    let mut lines = Vec::new();
    for (name, addr) in [
        ("control plane", chain.cp.admin_addr()),
        ("ext-authz", chain.authz.metrics_addr()),
        ("ratelimit", chain.rls.metrics_addr()),
    ] {
        match tollgate_conformance::http::get_at(addr, "/metrics").await {
            Ok(response) => lines.extend(
                response
                    .text()
                    .lines()
                    .filter(|line| {
                        !line.starts_with('#')
                            && ["reloads", "config_loads", "redis_errors"]
                                .iter()
                                .any(|name| line.contains(name))
                    })
                    .map(|line| format!("{name}: `{line}`")),
            ),
            Err(error) => lines.push(format!("{name}: metrics unreadable: {error:#}")),
        }
    }
    lines
}

/// `/proc/loadavg`'s three averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}
