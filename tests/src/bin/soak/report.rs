//! The soak's verdict and its markdown section for BENCHMARKS.md.

use std::fmt::Write as _;
use std::time::Duration;

use crate::keys::CONSUMERS;
use crate::load::{CLIENT_BUDGET_PER_SECOND, CONNECTIONS, GREEDY_SHARE, METERED_SHARE};
use crate::plan::Plan;
use crate::resources::Holding;
use crate::soak::{Outcome, ProcessHoldings};

/// The bound on memory growth from the end of the warm-up to the end, percent.
const MAX_RSS_GROWTH_PERCENT: f64 = 5.0;

/// Descriptors a process may gain from the end of the warm-up to the end. Envoy's upstream
/// connections follow the load's concurrency (at most one per load connection), and a probe
/// of an edit or a key holds one more for a moment; the other processes' connections are
/// fixed (Envoy's gRPC streams, Redis's client). A leak of one per edit (180 in 30 minutes)
/// or per request passes either bound in minutes, one per key rotation (5) the second.
fn fd_slack(process: &str) -> u64 {
    if process == "Envoy" {
        CONNECTIONS as u64 + 4
    } else {
        4
    }
}

/// Keys Redis may hold at once. Each metered request has a client id of its own, so each
/// creates a per-second key (fixed window, `EXPIRE 1`) that lives at most a second after
/// its hit; Redis reclaims expired keys within a fraction of a second (its active expiry
/// runs 10 times a second), so the per-second keys are at most those of the last two
/// seconds' metered requests. Those arrive at the soak's rate, except after a stall, when
/// the requests that queued meanwhile arrive as fast as the chain passes them: at most its
/// capacity, hence `capacity`, not the rate (the first 30-minute soak, judged at the rate,
/// peaked at 846 keys against 848). Add one sliding-window key per consumer (a minute and
/// a bucket), and a few for the greedy client's windows and the start-up check's consumer
/// and client.
pub fn redis_key_bound(capacity: f64) -> u64 {
    2 * (capacity * METERED_SHARE).ceil() as u64 + CONSUMERS + 8
}

/// The section and whether the soak passed.
pub struct Report {
    pub markdown: String,
    pub failures: Vec<String>,
}

pub fn render(plan: &Plan, outcome: &Outcome, envoy_version: &str) -> Report {
    let mut failures = Vec::new();
    let mut md = String::new();
    let minutes = plan.duration.as_secs() / 60;
    let key_bound = redis_key_bound(outcome.capacity.rate);
    let _ = writeln!(
        md,
        "## Soak: half the capacity through the whole chain for {minutes} minutes (issue 22)\n"
    );
    let _ = writeln!(
        md,
        "Made by `make soak` (`SOAK_MINUTES={minutes}`) on {date} on {cores} cores ({arch}), \
         the binaries release builds, Envoy {envoy_version}. Load average {start} at the \
         start and {end} at the end: the machine is shared, and whatever else ran on it \
         ran during the soak too. Not run by CI.\n",
        date = today(),
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
        arch = std::env::consts::ARCH,
        start = outcome.load_average_start,
        end = outcome.load_average_end,
    );
    let _ = writeln!(
        md,
        "The chain: Envoy (one worker) configured by tollgate-control-plane, tollgate-ext-authz \
         (ES256 keys from a JWKS file), tollgate-ratelimit on a `redis-server`, an upstream in \
         the soak's process. The load, over {CONNECTIONS} keep-alive HTTP/1.1 connections: \
         40% a public route, 30% a route requiring a token, 25% a route requiring a token and \
         limited per consumer (sliding minute, never reached) and per `x-client-id` \
         ({CLIENT_BUDGET_PER_SECOND}/second, fixed window; each of these requests has a client \
         id of its own), 5% the same route as one greedy client id sent at \
         {greedy:.0} req/s, past its budget. First the capacity, closed-loop ({cap:?} unmeasured, \
         then {cap:?} measured); then open-loop at half of it, latency counted from when each \
         request was due. Every {edit:?} routes.yaml is replaced by rename (a route renamed, so \
         one added and one removed, and a request header of the public route changed), and \
         each edit is waited for through Envoy; every {rotate:?} the signing key rotates: the \
         new key is added to the JWKS (by rename), tokens of it are waited for through Envoy, \
         the load switches to them, and once no request with an old token is in flight the old \
         key is dropped and an old token is waited for to be refused.\n",
        greedy = outcome.rate * GREEDY_SHARE,
        cap = plan.capacity_run,
        edit = plan.edit_every,
        rotate = plan.rotate_every,
    );
    let _ = writeln!(
        md,
        "An error is any answer but 200, or no answer within {timeout:?} of when the request \
         was due; for the greedy client only, a 429 is a right answer (counted apart, and its \
         admitted requests checked against its budget). Sidecar failures cannot hide: a failed \
         check answers 403 and a failed rate-limit call 500. The sidecars' timeouts are 1 s, \
         tollgate-ratelimit's Redis timeout 800 ms (at the defaults, 50 and 40 ms, this shared \
         machine's stalls while other work holds the cores fail a few requests a minute).\n",
        timeout = crate::load::REQUEST_TIMEOUT,
    );

    let capacity = &outcome.capacity;
    let mut capacity_stats = capacity.stats.clone();
    let (p50, p99) = (
        capacity_stats.percentile_ms(0.5),
        capacity_stats.percentile_ms(0.99),
    );
    let _ = writeln!(
        md,
        "**Capacity: {:.0} req/s** closed-loop ({} requests in {:.1} s, p50 {p50:.2} ms, p99 \
         {p99:.2} ms, {} errors); **the soak ran at {:.0} req/s**.\n",
        capacity.rate,
        capacity_stats.requests,
        capacity.seconds,
        capacity_stats.errors,
        outcome.rate
    );
    if capacity_stats.errors > 0 {
        failures.push(format!(
            "{} errors in the capacity run: {}",
            capacity_stats.errors,
            capacity_stats.error_samples.join("; ")
        ));
    }

    intervals_table(&mut md, plan, outcome, key_bound, &mut failures);
    slow_seconds(&mut md, outcome);
    processes_table(&mut md, plan, &outcome.holdings, &mut failures);
    edits_and_rotations(&mut md, outcome, &mut failures);

    if outcome.sidecar_errors.is_empty() {
        let _ = writeln!(
            md,
            "No sidecar call errored or timed out (Envoy's stats).\n"
        );
    } else {
        failures.push(format!(
            "sidecar calls failed: {}",
            outcome.sidecar_errors.join("; ")
        ));
        let _ = writeln!(
            md,
            "**Sidecar calls that errored or timed out** (Envoy's stats): {}.\n",
            outcome.sidecar_errors.join("; ")
        );
    }
    let churn: Vec<String> = outcome
        .envoy_churn
        .iter()
        .map(|(name, count)| format!("`{name}` {count}"))
        .collect();
    let _ = writeln!(
        md,
        "Envoy's counters of what the edits made it rebuild besides routes: {}.\n",
        churn.join(", ")
    );
    if !outcome.reload_metrics.is_empty() {
        let _ = writeln!(
            md,
            "The services' own counts at the end (reloads, Redis failures): {}.\n",
            outcome.reload_metrics.join(", ")
        );
    }
    for error in &outcome.redis_errors {
        failures.push(format!("Redis keys not counted: {error}"));
    }
    if failures.is_empty() {
        let _ = writeln!(md, "**Verdict: pass.** Every criterion of the issue held.");
    } else {
        let _ = writeln!(md, "**Verdict: fail.**\n");
        for failure in &failures {
            let _ = writeln!(md, "- {failure}");
        }
    }
    Report {
        markdown: md,
        failures,
    }
}

fn intervals_table(
    md: &mut String,
    plan: &Plan,
    outcome: &Outcome,
    key_bound: u64,
    failures: &mut Vec<String>,
) {
    let interval = plan.interval.as_secs();
    let _ = writeln!(
        md,
        "### Per {} interval\n",
        minutes_or_seconds(plan.interval)
    );
    let _ = writeln!(
        md,
        "Redis keys: the most of any sample (every {} s); the bound is two seconds of metered \
         requests at the capacity (the most that can arrive after a stall), one key per consumer \
         and a few more: {key_bound}.\n",
        Plan::SAMPLE_EVERY.as_secs()
    );
    let _ = writeln!(
        md,
        "| interval | requests | req/s | errors | 429s (greedy) | greedy admitted | p50 ms | p99 ms | max ms | Redis keys, max | edits seen | key rotation |"
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    let mut total_errors = 0;
    for (index, stats) in outcome.intervals.iter().enumerate() {
        let mut stats = stats.clone();
        let (from, to) = (index as u64 * interval, (index as u64 + 1) * interval);
        let in_interval = |at: Duration| (from..to).contains(&at.as_secs());
        let edits: Vec<_> = outcome.edits.iter().filter(|e| in_interval(e.at)).collect();
        let seen = edits.iter().filter(|e| e.seen_after.is_ok()).count();
        let rotation =
            outcome
                .rotations
                .iter()
                .find(|r| in_interval(r.at))
                .map_or("".to_owned(), |r| {
                    let verdict = if r.accepted_after.is_ok()
                        && r.drained_after.is_ok()
                        && r.refused_after.is_ok()
                    {
                        "done"
                    } else {
                        "**failed**"
                    };
                    format!("key {} at {} s: {verdict}", r.generation, r.at.as_secs())
                });
        let keys = outcome.redis_keys_max.get(index).copied().unwrap_or(0);
        let (p50, p99) = (stats.percentile_ms(0.5), stats.percentile_ms(0.99));
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {} | {} | {} | {p50:.2} | {p99:.2} | {:.1} | {keys} | {seen} of {} | {rotation} |",
            span(from, to),
            stats.requests,
            stats.requests as f64 / interval as f64,
            stats.errors,
            stats.limited,
            stats.greedy_admitted,
            stats.max_ms(),
            edits.len(),
        );
        total_errors += stats.errors;
        if stats.errors > 0 {
            failures.push(format!(
                "{} errors in {}: {}",
                stats.errors,
                span(from, to),
                stats.error_samples.join("; ")
            ));
        }
        if keys > key_bound {
            failures.push(format!(
                "Redis held {keys} keys in {}, over the bound of {key_bound}",
                span(from, to)
            ));
        }
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "Errors over the whole soak: {total_errors}.\n");
    // Requests are counted by when they were due and the windows by when tollgate-ratelimit
    // decided, which is later by the request's latency; over the whole soak only the
    // requests still in flight at the end can fall outside it.
    let admitted: u64 = outcome.intervals.iter().map(|s| s.greedy_admitted).sum();
    let windows = plan.duration.as_secs() + crate::load::REQUEST_TIMEOUT.as_secs() + 1;
    let budget = CLIENT_BUDGET_PER_SECOND * windows;
    let _ = writeln!(
        md,
        "The greedy client got {admitted} requests through over the soak: at most \
         {CLIENT_BUDGET_PER_SECOND} in each one-second window, {budget} in the {windows} windows \
         its requests can have been decided in.\n"
    );
    if admitted > budget {
        failures.push(format!(
            "the greedy client got {admitted} requests through, over its budget of {budget}"
        ));
    }
}

/// A slow request is put down to a file write when it was due at most this long after it
/// (the write's second, and the next two).
const AFTER_A_WRITE_SECS: f64 = 3.0;

/// When the slow requests were due: next to a routes.yaml or JWKS write, or elsewhere, and
/// the worst seconds.
fn slow_seconds(md: &mut String, outcome: &Outcome) {
    let edits: Vec<f64> = outcome.edits.iter().map(|e| e.at.as_secs_f64()).collect();
    let jwks: Vec<f64> = outcome
        .rotations
        .iter()
        .flat_map(|r| std::iter::once(r.at).chain(r.dropped_at))
        .map(|at| at.as_secs_f64())
        .collect();
    // The write at or before the second, if one is recent enough.
    let after = |writes: &[f64], second: usize| {
        writes
            .iter()
            .copied()
            .filter(|at| *at < second as f64 + 1.0 && *at > second as f64 - AFTER_A_WRITE_SECS)
            .fold(None, |latest: Option<f64>, at| {
                Some(latest.map_or(at, |l| l.max(at)))
            })
    };
    let (mut total, mut slow, mut near_edit, mut near_jwks, mut seconds_near_edit) =
        (0u64, 0u64, 0u64, 0u64, 0usize);
    for (second, stats) in outcome.seconds.iter().enumerate() {
        total += u64::from(stats.requests);
        slow += u64::from(stats.slow);
        if after(&jwks, second).is_some() {
            near_jwks += u64::from(stats.slow);
        } else if after(&edits, second).is_some() {
            near_edit += u64::from(stats.slow);
        }
        seconds_near_edit += usize::from(after(&edits, second).is_some());
    }
    let share = |n: u64| n as f64 * 100.0 / slow.max(1) as f64;
    let _ = writeln!(
        md,
        "Requests slower than {} ms: {slow} of {total} ({:.2}%). Due in the \
         {AFTER_A_WRITE_SECS:.0} s after a JWKS write: {near_jwks} ({:.0}%); after a \
         routes.yaml write: {near_edit} ({:.0}%, where those seconds are {:.0}% of the soak); \
         at other times: {} ({:.0}%).",
        crate::load::SLOW.as_millis(),
        slow as f64 * 100.0 / total.max(1) as f64,
        share(near_jwks),
        share(near_edit),
        seconds_near_edit as f64 * 100.0 / outcome.seconds.len().max(1) as f64,
        slow - near_jwks - near_edit,
        share(slow - near_jwks - near_edit),
    );
    let mut worst: Vec<(usize, &crate::load::SecondStats)> = outcome
        .seconds
        .iter()
        .enumerate()
        .filter(|(_, s)| s.slow > 0)
        .collect();
    worst.sort_by_key(|(_, s)| std::cmp::Reverse(s.slow));
    let cells: Vec<String> = worst
        .iter()
        .take(5)
        .map(|(second, stats)| {
            let cause = match (after(&jwks, *second), after(&edits, *second)) {
                (Some(at), _) => format!(", a JWKS write at {at:.1} s"),
                (None, Some(at)) => format!(", a routes.yaml write at {at:.1} s"),
                (None, None) => String::new(),
            };
            format!(
                "{second} s ({} of {} slow, the slowest {:.0} ms{cause})",
                stats.slow,
                stats.requests,
                f64::from(stats.max_us) / 1000.0
            )
        })
        .collect();
    if !cells.is_empty() {
        let _ = writeln!(md, "The seconds with the most: {}.", cells.join("; "));
    }
    let _ = writeln!(md);
}

fn processes_table(
    md: &mut String,
    plan: &Plan,
    holdings: &[ProcessHoldings],
    failures: &mut Vec<String>,
) {
    let _ = writeln!(md, "### Memory and descriptors\n");
    let _ = writeln!(
        md,
        "Resident memory (MiB, `VmRSS`) at the end of the warm-up ({} s) and of each interval; \
         growth from the end of the warm-up to the end (the issue's bound: under \
         {MAX_RSS_GROWTH_PERCENT}%). Open descriptors (`/proc/PID/fd`) likewise (bound: Envoy \
         {} more, the others {} more).\n",
        plan.warm_up.as_secs(),
        fd_slack("Envoy"),
        fd_slack("")
    );
    let interval = plan.interval.as_secs();
    let mut header = String::from("| process | warm-up |");
    let mut rule = String::from("|---|---:|");
    for n in 1..=plan.intervals() as u64 {
        let _ = write!(header, " {} |", span_end(n * interval));
        rule.push_str("---:|");
    }
    header.push_str(" growth | fds warm-up | fds end |");
    rule.push_str("---:|---:|---:|");
    let _ = writeln!(md, "{header}\n{rule}");
    for process in holdings {
        let mut line = format!("| {} | {} |", process.name, mib(process.warm));
        for holding in &process.at_interval_ends {
            let _ = write!(line, " {} |", mib(*holding));
        }
        let end = process.at_interval_ends.last().copied().flatten();
        match (process.warm, end) {
            (Some(warm), Some(end)) => {
                let growth =
                    (end.rss_kib as f64 - warm.rss_kib as f64) / warm.rss_kib as f64 * 100.0;
                let _ = write!(line, " {growth:+.1}% | {} | {} |", warm.fds, end.fds);
                if growth >= MAX_RSS_GROWTH_PERCENT {
                    failures.push(format!(
                        "{}'s memory grew {growth:.1}% after the warm-up ({} → {} KiB)",
                        process.name, warm.rss_kib, end.rss_kib
                    ));
                }
                if end.fds > warm.fds + fd_slack(process.name) {
                    failures.push(format!(
                        "{}'s open descriptors grew from {} to {}",
                        process.name, warm.fds, end.fds
                    ));
                }
            }
            _ => {
                line.push_str(" – | – | – |");
                failures.push(format!("{} was not running at a sample", process.name));
            }
        }
        let _ = writeln!(md, "{line}");
    }
    let _ = writeln!(md);
}

fn edits_and_rotations(md: &mut String, outcome: &Outcome, failures: &mut Vec<String>) {
    let mut seen: Vec<Duration> = outcome
        .edits
        .iter()
        .filter_map(|e| e.seen_after.as_ref().ok().copied())
        .collect();
    seen.sort();
    let quantile = |p: f64| tollgate_testkit::bench::percentile(&seen, p).as_secs_f64() * 1000.0;
    let _ = writeln!(
        md,
        "routes.yaml edits: {} written, {} seen through Envoy; from the write to the first probe \
         that saw it, median {:.0} ms, p99 {:.0} ms, slowest {:.0} ms.\n",
        outcome.edits.len(),
        seen.len(),
        quantile(0.5),
        quantile(0.99),
        quantile(1.0)
    );
    for edit in &outcome.edits {
        if let Err(error) = &edit.seen_after {
            failures.push(format!(
                "the edit at {} s never reached Envoy: {error}",
                edit.at.as_secs()
            ));
        }
    }
    if outcome.rotations.is_empty() {
        return;
    }
    let _ = writeln!(md, "Key rotations (through Envoy, each waited for):\n");
    let _ = writeln!(
        md,
        "| key | at | new key's token accepted after | old tokens drained after | old token refused after |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    for rotation in &outcome.rotations {
        let cell = |result: &Result<Duration, String>| match result {
            Ok(took) => format!("{:.0} ms", took.as_secs_f64() * 1000.0),
            Err(error) => format!("**{error}**"),
        };
        let _ = writeln!(
            md,
            "| {} | {} s | {} | {} | {} |",
            rotation.generation,
            rotation.at.as_secs(),
            cell(&rotation.accepted_after),
            cell(&rotation.drained_after),
            cell(&rotation.refused_after)
        );
        for (step, result) in [
            ("accepting the new key", &rotation.accepted_after),
            ("draining the old tokens", &rotation.drained_after),
            ("refusing the old key", &rotation.refused_after),
        ] {
            if let Err(error) = result {
                failures.push(format!(
                    "rotation to key {}: {step}: {error}",
                    rotation.generation
                ));
            }
        }
    }
    let _ = writeln!(md);
}

fn mib(holding: Option<Holding>) -> String {
    holding.map_or("–".to_owned(), |h| {
        format!("{:.1}", h.rss_kib as f64 / 1024.0)
    })
}

/// `0–5 min`, or `0–60 s` for short dev intervals.
fn span(from: u64, to: u64) -> String {
    if from.is_multiple_of(60) && to.is_multiple_of(60) {
        format!("{}–{} min", from / 60, to / 60)
    } else {
        format!("{from}–{to} s")
    }
}

fn span_end(at: u64) -> String {
    if at.is_multiple_of(60) {
        format!("{} min", at / 60)
    } else {
        format!("{at} s")
    }
}

fn minutes_or_seconds(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs.is_multiple_of(60) {
        format!("{}-minute", secs / 60)
    } else {
        format!("{secs}-second")
    }
}

/// Today's date (UTC) as `YYYY-MM-DD`, from the system clock.
fn today() -> String {
    let (year, month, day) =
        tollgate_conformance::civil_date::civil_date(tollgate_testkit::jwt::now());
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_bound_is_two_seconds_of_metered_requests_at_capacity_and_a_key_per_consumer() {
        // A capacity of 1,000 req/s: 250 metered a second.
        assert_eq!(redis_key_bound(1000.0), 500 + CONSUMERS + 8);
    }

    #[test]
    fn spans_read_in_minutes_when_whole() {
        assert_eq!(span(0, 300), "0–5 min");
        assert_eq!(span(60, 90), "60–90 s");
    }
}
