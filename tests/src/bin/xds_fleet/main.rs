//! `make bench`: how fast one control plane brings a fleet of Envoys to a new config.
//!
//! Simulated Envoys ([`tollgate_conformance::simulated_envoy`]) open one ADS stream each, on
//! a connection of their own, and ACK what they receive. Each row loads a routes.yaml of R
//! routes (each to a service of its own, so R clusters too: [`many_routes`]), connects N
//! nodes, then makes 20 edits, each changing one route and one cluster, and times the write
//! until every node has ACKed the new route table.
//! Beside it, the control plane's CPU time per edit (from /proc), its resident memory, and
//! the bytes it wrote per node per edit. The last rows do the same with three real Envoys,
//! timed until each has applied the new route table.
//!
//! A second table is the reference for the rows of 1,000 nodes and more: the CPU time a bare
//! process spends writing those bytes to as many loopback connections ([`bare_writes`]), the
//! kernel's share that no control plane can avoid without sending less.
//!
//! Usage: `xds_fleet [EDITS] [MAX_NODES] [sotw|delta [ROUTES]]` (default 20 and 10,000).
//! Prints a markdown table. With a variant, only that variant's row at exactly `MAX_NODES`
//! nodes and `ROUTES` routes (1,000 unless given), and no real Envoys: one case, to measure
//! or profile on its own.

mod bare_writes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tollgate_conformance::routes_yaml::many_routes;
use tollgate_conformance::simulated_envoy::{xds_endpoint, Progress, SimulatedEnvoy, Variant};
use tollgate_conformance::{
    eventually, reserve_port, ControlPlane, Envoy, RunningControlPlane, XdsVariant,
};
use tollgate_testkit::bench::{percentile, ProcStat, TICKS_PER_SECOND};

/// An edit every node has not ACKed after this long fails the run.
const GIVE_UP: Duration = Duration::from_secs(120);
/// Connections opened at once while the fleet connects (not measured).
const CONNECTING_AT_ONCE: usize = 64;
/// Rows with at least this many nodes get a reference row.
const REFERENCE_FROM_NODES: usize = 1_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1).peekable();
    if args.next_if_eq(bare_writes::WRITER_ARGUMENT).is_some() {
        bare_writes::run_writer(args);
        return;
    }
    let edits: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(20);
    let max_nodes: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    // `sotw` or `delta`: only that variant's row at exactly `max_nodes` nodes (and the next
    // argument's number of routes, 1,000 unless given), no real Envoys: for profiling one
    // case (`perf record -p` on the control plane meanwhile).
    let only: Option<Variant> = args.next().map(|name| match name.as_str() {
        "sotw" => Variant::Sotw,
        "delta" => Variant::Delta,
        other => panic!("unknown variant {other:?}: sotw or delta"),
    });
    println!(
        "| xDS | nodes | routes | edits | every node ACKed, p50 ms | p99 ms | control plane CPU s per edit (median) | control plane RSS MB | KB written per node per edit (median) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let only_routes: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1_000);
    let mut rows: Vec<(Variant, usize, usize)> = Vec::new();
    for variant in [Variant::Sotw, Variant::Delta] {
        if let Some(only) = only {
            if only == variant {
                rows.push((variant, max_nodes, only_routes));
            }
            continue;
        }
        for nodes in [1, 100, 1_000, 10_000] {
            if nodes <= max_nodes {
                rows.push((variant, nodes, 1_000));
            }
        }
        rows.push((variant, 1, 10_000));
    }
    let mut references = Vec::new();
    for (variant, nodes, routes) in rows {
        let row = simulated_fleet(variant, nodes, routes, edits).await;
        let cpu_seconds = median(&row.cpu_seconds);
        let kb_per_node = median(&row.kb_per_node);
        println!(
            "| {} | {nodes} | {routes} | {edits} | {:.1} | {:.1} | {cpu_seconds:.3} | {:.0} | {kb_per_node:.1} |",
            variant.name(),
            ms(quantile(&row.latencies, 0.5)),
            ms(quantile(&row.latencies, 0.99)),
            row.rss_mb
        );
        if nodes >= REFERENCE_FROM_NODES {
            references.push(Reference {
                variant,
                nodes,
                kb_per_node,
                control_plane_seconds: cpu_seconds,
            });
        }
    }
    for variant in [XdsVariant::Sotw, XdsVariant::Delta] {
        if only.is_some() {
            break;
        }
        let row = real_envoys(variant, 3, 1_000, edits).await;
        println!(
            "| {} (real Envoys, until each applied the new route table) | 3 | 1000 | {edits} | {:.1} | {:.1} | {:.3} | {:.0} | {:.1} |",
            match variant {
                XdsVariant::Sotw => "SotW",
                XdsVariant::Delta => "Delta",
            },
            ms(quantile(&row.latencies, 0.5)),
            ms(quantile(&row.latencies, 0.99)),
            median(&row.cpu_seconds),
            row.rss_mb,
            median(&row.kb_per_node)
        );
    }
    print_references(&references, edits).await;
}

/// A fleet row the reference table measures bare writes for.
struct Reference {
    variant: Variant,
    nodes: usize,
    kb_per_node: f64,
    /// The control plane's CPU per edit (median), which the bare writes' is set against.
    control_plane_seconds: f64,
}

/// The reference table: each row's bytes written by a bare process ([`bare_writes`]).
async fn print_references(rows: &[Reference], rounds: usize) {
    if rows.is_empty() {
        return;
    }
    println!();
    println!(
        "| reference: the same bytes, bare writes | nodes | KB per node | writer CPU s per edit (median) | control plane ÷ bare writes |"
    );
    println!("|---|---:|---:|---:|---:|");
    for row in rows {
        let bytes = (row.kb_per_node * 1024.0) as usize;
        let spent = bare_writes::cpu_per_round(row.nodes, bytes, rounds).await;
        let seconds: Vec<f64> = spent.iter().map(Duration::as_secs_f64).collect();
        let bare = median(&seconds);
        println!(
            "| {} | {} | {:.1} | {bare:.3} | {:.2} |",
            row.variant.name(),
            row.nodes,
            row.kb_per_node,
            row.control_plane_seconds / bare
        );
    }
}

struct Row {
    latencies: Vec<Duration>,
    cpu_seconds: Vec<f64>,
    rss_mb: f64,
    /// What the control plane wrote (to its sockets, nearly all of it) per edit, in KB, over
    /// the number of nodes.
    kb_per_node: Vec<f64>,
}

async fn simulated_fleet(variant: Variant, nodes: usize, routes: usize, edits: usize) -> Row {
    let port = reserve_port();
    let mut cp = ControlPlane::new()
        .routes(many_routes(port, routes, 0))
        .start()
        .await;
    let fleet = connect(&cp, variant, nodes).await;
    wait_for_all(&fleet, 1, Instant::now()).await;
    let mut latencies = Vec::with_capacity(edits);
    let mut cpu_seconds = Vec::with_capacity(edits);
    let mut kb_per_node = Vec::with_capacity(edits);
    for edit in 1..=edits {
        let yaml = many_routes(port, routes, edit);
        let before = cpu_ticks(&cp);
        let written_before = bytes_written(&cp);
        let written = Instant::now();
        cp.write_by_rename(&yaml);
        let last = wait_for_all(&fleet, 1 + edit as u64, written).await;
        latencies.push(last.duration_since(written));
        cpu_seconds.push((cpu_ticks(&cp) - before) as f64 / TICKS_PER_SECOND as f64);
        kb_per_node.push(kb_each(bytes_written(&cp) - written_before, nodes));
    }
    let rss_mb = rss_mb(&cp);
    for task in fleet.tasks {
        task.abort();
    }
    Row {
        latencies,
        cpu_seconds,
        rss_mb,
        kb_per_node,
    }
}

struct Fleet {
    progress: Vec<Arc<Progress>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// N nodes, each on its own connection, `CONNECTING_AT_ONCE` connecting at a time.
async fn connect(cp: &RunningControlPlane, variant: Variant, nodes: usize) -> Fleet {
    let gate = Arc::new(Semaphore::new(CONNECTING_AT_ONCE));
    let mut progress = Vec::with_capacity(nodes);
    let mut tasks = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let permit = Arc::clone(&gate).acquire_owned().await.expect("semaphore");
        let endpoint = xds_endpoint(cp.xds_addr());
        let node_progress = Arc::new(Progress::default());
        progress.push(Arc::clone(&node_progress));
        tasks.push(tokio::spawn(async move {
            let channel = endpoint.connect().await;
            drop(permit);
            let outcome = match channel {
                Ok(channel) => {
                    SimulatedEnvoy::new(format!("fleet-{i}"), variant)
                        .run(channel, &node_progress)
                        .await
                }
                Err(e) => Err(e.into()),
            };
            if let Err(e) = outcome {
                eprintln!("node fleet-{i}: {e:#}");
            }
        }));
    }
    Fleet { progress, tasks }
}

/// Waits until every node has ACKed `route_tables` route tables; returns when the last did.
async fn wait_for_all(fleet: &Fleet, route_tables: u64, since: Instant) -> Instant {
    loop {
        let behind = fleet
            .progress
            .iter()
            .filter(|p| p.route_tables() < route_tables)
            .count();
        if behind == 0 {
            break;
        }
        assert!(
            since.elapsed() < GIVE_UP,
            "{behind} of {} nodes never ACKed route table {route_tables}",
            fleet.progress.len()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    fleet
        .progress
        .iter()
        .map(|p| p.last_route_ack())
        .max()
        .expect("at least one node")
}

/// `envoys` real Envoys on one control plane, sharing its listener's port (Envoy binds
/// with SO_REUSEPORT); each edit is timed until every Envoy has ACKed the new route table,
/// which Envoy does once it has applied it, as the control plane's `/status` shows. (Envoy's
/// own `/stats` would say so too, but listing the stats of 1,000 clusters takes Envoy's
/// main thread longer than the update itself.)
async fn real_envoys(variant: XdsVariant, envoys: usize, routes: usize, edits: usize) -> Row {
    let port = reserve_port();
    let mut cp = ControlPlane::new()
        .routes(many_routes(port, routes, 0))
        .start()
        .await;
    let ids: Vec<String> = (0..envoys).map(|i| format!("real-{i}")).collect();
    let mut running = Vec::with_capacity(envoys);
    for id in &ids {
        running.push(
            Envoy::new()
                .node_id(id)
                .xds_variant(variant)
                .control_plane(&cp)
                .start()
                .await,
        );
    }
    let mut latencies = Vec::with_capacity(edits);
    let mut cpu_seconds = Vec::with_capacity(edits);
    let mut kb_per_node = Vec::with_capacity(edits);
    for edit in 0..=edits {
        let before = route_versions(&cp, &ids).await;
        if edit == 0 {
            // Every Envoy holds the first route table before the first edit.
            assert!(before.iter().all(Option::is_some), "{before:?}");
            continue;
        }
        let yaml = many_routes(port, routes, edit);
        let ticks = cpu_ticks(&cp);
        let written_before = bytes_written(&cp);
        let written = Instant::now();
        cp.write_by_rename(&yaml);
        loop {
            let now = acked_route_versions(&cp, &ids).await.unwrap_or_default();
            let all_moved = now.len() == before.len()
                && now
                    .iter()
                    .zip(&before)
                    .all(|(now, then)| now.is_some() && now != then);
            if all_moved {
                break;
            }
            assert!(
                written.elapsed() < GIVE_UP,
                "an Envoy never took edit {edit}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        latencies.push(written.elapsed());
        cpu_seconds.push((cpu_ticks(&cp) - ticks) as f64 / TICKS_PER_SECOND as f64);
        kb_per_node.push(kb_each(bytes_written(&cp) - written_before, envoys));
    }
    drop(running);
    let rss_mb = rss_mb(&cp);
    Row {
        latencies,
        cpu_seconds,
        rss_mb,
        kb_per_node,
    }
}

/// The route-table version each node has ACKed, by the control plane's `/status`, once every
/// node has ACKed one.
async fn route_versions(cp: &RunningControlPlane, ids: &[String]) -> Vec<Option<String>> {
    eventually("every Envoy has ACKed a route table", async || {
        let versions = acked_route_versions(cp, ids).await?;
        anyhow::ensure!(
            versions.iter().all(Option::is_some),
            "not yet: {versions:?}"
        );
        Ok(versions)
    })
    .await
}

async fn acked_route_versions(
    cp: &RunningControlPlane,
    ids: &[String],
) -> anyhow::Result<Vec<Option<String>>> {
    let status = cp.status().await?;
    Ok(ids
        .iter()
        .map(|id| {
            status["nodes"]
                .as_array()
                .and_then(|nodes| nodes.iter().find(|n| n["id"] == id.as_str()))
                .and_then(|n| n["types"]["route"]["acked_version"].as_str())
                .map(str::to_owned)
        })
        .collect())
}

fn cpu_ticks(cp: &RunningControlPlane) -> u64 {
    ProcStat::read(cp.process().pid())
        .map(|stat| stat.ticks)
        .unwrap_or(0)
}

/// Bytes the control plane has handed to `write`-family calls so far (`wchar` of
/// `/proc/PID/io`): its sockets' bytes, and its few log lines.
fn bytes_written(cp: &RunningControlPlane) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/io", cp.process().pid()))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("wchar:"))
        .and_then(|bytes| bytes.trim().parse().ok())
        .unwrap_or(0)
}

fn kb_each(bytes: u64, nodes: usize) -> f64 {
    bytes as f64 / 1024.0 / nodes as f64
}

fn rss_mb(cp: &RunningControlPlane) -> f64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", cp.process().pid())).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn quantile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    percentile(&sorted, q)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
