//! `make bench`: the time from a routes.yaml write to the new route answering through
//! Envoy, over many edits, with few and with many routes loaded.
//!
//! Beside it, in the same run, the reference: Envoy reloading the same route table from a
//! watched file on its own (`path_config_source` with `watched_directory`), which is the
//! fastest way Envoy itself offers to change routes without a control plane.
//!
//! Usage: `reload_latency [EDITS] [ROUTES]` (default 60 edits, every route count). Prints a
//! markdown table.

use std::path::Path;
use std::time::{Duration, Instant};

use tollgate_conformance::{get, reserve_port, ControlPlane, Envoy, Upstream, UpstreamHandle};

/// (routes loaded, per-route stats): the default, and at 1,000 and 10,000 routes (issue 21:
/// within 1.2 x the reference) also without the per-route stats that Envoy rebuilds on
/// every route-table update, which makes the same table as the reference's.
const CASES: [(usize, bool); 5] = [
    (10, true),
    (1000, true),
    (1000, false),
    (10_000, true),
    (10_000, false),
];
/// A new route that has not answered after this long counts as a failed edit.
const GIVE_UP: Duration = Duration::from_secs(30);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let edits: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(60);
    let only: Option<usize> = std::env::args().nth(2).and_then(|n| n.parse().ok());
    let upstream = Upstream::new("bench").spawn().await;
    println!("| routes loaded | config path | edits | p50 ms | p99 ms | max ms |");
    println!("|---:|---|---:|---:|---:|---:|");
    for (routes, route_stats) in CASES
        .into_iter()
        .filter(|(routes, _)| only.is_none_or(|only| only == *routes))
    {
        let tollgate = tollgate_latencies(&upstream, routes, route_stats, edits).await;
        let path = if route_stats {
            "tollgate-control-plane → ADS"
        } else {
            "tollgate-control-plane → ADS, `route_stats: false`"
        };
        row(routes, path, &tollgate);
        if route_stats {
            // The reference has no per-route stats either way: once per route count.
            let reference = file_watch_latencies(&upstream, routes, edits).await;
            row(
                routes,
                "reference: Envoy watching its own RDS file",
                &reference,
            );
        }
    }
}

fn row(routes: usize, path: &str, samples: &[Duration]) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let at = |q: f64| {
        let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted[i].as_secs_f64() * 1000.0
    };
    println!(
        "| {routes} | {path} | {} | {:.1} | {:.1} | {:.1} |",
        sorted.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

fn routes_yaml(
    port: u16,
    upstream: &UpstreamHandle,
    routes: usize,
    route_stats: bool,
    extra: Option<usize>,
) -> String {
    let mut yaml = format!(
        "version: 1\nobservability: {{route_stats: {route_stats}}}\nlisteners:\n  - {{name: public, address: 127.0.0.1:{port}}}\nservices:\n  bench: {{endpoints: [\"{}\"]}}\nroutes:\n",
        upstream.endpoint()
    );
    if let Some(i) = extra {
        yaml.push_str(&format!(
            "  - {{name: new-{i}, match: {{prefix: /new/{i}}}, service: bench}}\n"
        ));
    }
    for r in 0..routes {
        yaml.push_str(&format!(
            "  - {{name: r{r}, match: {{prefix: /r/{r}/}}, service: bench}}\n"
        ));
    }
    yaml
}

async fn tollgate_latencies(
    upstream: &UpstreamHandle,
    routes: usize,
    route_stats: bool,
    edits: usize,
) -> Vec<Duration> {
    let port = reserve_port();
    let mut cp = ControlPlane::new()
        .routes(routes_yaml(port, upstream, routes, route_stats, None))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;
    wait_for_route(port, "/r/0/").await;
    let mut samples = Vec::with_capacity(edits);
    for i in 0..edits {
        let yaml = routes_yaml(port, upstream, routes, route_stats, Some(i));
        let started = Instant::now();
        cp.write_by_rename(&yaml);
        samples.push(time_until_route(port, &format!("/new/{i}"), started).await);
    }
    samples
}

async fn file_watch_latencies(
    upstream: &UpstreamHandle,
    routes: usize,
    edits: usize,
) -> Vec<Duration> {
    let dir = tempfile::tempdir().expect("tempdir");
    let rds = dir.path().join("rds.yaml");
    let port = reserve_port();
    write_by_rename(&rds, &rds_file(routes, None));
    let _envoy = Envoy::new()
        .static_bootstrap(&file_bootstrap(port, upstream, dir.path()))
        .start()
        .await;
    wait_for_route(port, "/r/0/").await;
    let mut samples = Vec::with_capacity(edits);
    for i in 0..edits {
        let body = rds_file(routes, Some(i));
        let started = Instant::now();
        write_by_rename(&rds, &body);
        samples.push(time_until_route(port, &format!("/new/{i}"), started).await);
    }
    samples
}

fn write_by_rename(path: &Path, body: &str) {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, body).expect("write");
    std::fs::rename(&temp, path).expect("rename");
}

async fn wait_for_route(port: u16, path: &str) {
    time_until_route(port, path, Instant::now()).await;
}

/// Polls back to back: the resolution is one round trip through Envoy (well under 1 ms).
async fn time_until_route(port: u16, path: &str, started: Instant) -> Duration {
    loop {
        if let Ok(response) = get(port, path).await {
            if response.status == 200 {
                return started.elapsed();
            }
        }
        assert!(started.elapsed() < GIVE_UP, "{path} never answered");
    }
}

fn rds_file(routes: usize, extra: Option<usize>) -> String {
    let route = |prefix: String| {
        format!("        - {{match: {{prefix: \"{prefix}\"}}, route: {{cluster: bench}}}}\n")
    };
    let mut out = String::from(
        "resources:\n  - \"@type\": type.googleapis.com/envoy.config.route.v3.RouteConfiguration\n    name: public\n    virtual_hosts:\n      - name: public\n        domains: [\"*\"]\n        routes:\n",
    );
    let mut body = String::new();
    if let Some(i) = extra {
        body.push_str(&route(format!("/new/{i}")));
    }
    for r in 0..routes {
        body.push_str(&route(format!("/r/{r}/")));
    }
    // The route list sits under `routes:` at the virtual host's depth.
    out.push_str(&body.replace("        - ", "          - "));
    out
}

fn file_bootstrap(port: u16, upstream: &UpstreamHandle, dir: &Path) -> String {
    tollgate_conformance::envoy::reference_bootstrap(
        port,
        upstream.addr(),
        &format!(
            r#"                rds:
                  route_config_name: public
                  config_source:
                    resource_api_version: V3
                    path_config_source:
                      path: {rds}
                      watched_directory: {{path: {dir}}}
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
            rds = dir.join("rds.yaml").display(),
            dir = dir.display(),
        ),
    )
}
