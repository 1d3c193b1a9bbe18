//! The control plane's own share of a reload, without Envoy or any stream: read and validate
//! routes.yaml, then translate it into a snapshot, at R routes, median of N rounds.
//!
//! `cargo run --release -p tollgate-control-plane --example reload_cost -- [ROUTES] [ROUNDS]`
//! (default 10,000 routes, 10 rounds). The routes are those of `reload_latency`'s table, so
//! this is the part of its Tollgate rows that happens before anything is sent; under
//! `/usr/bin/time`, (user + sys of R rounds − of 1 round) / (R − 1) is the CPU per reload.

use std::time::{Duration, Instant};

use tollgate_routes::FilesBeside;

/// As in the control plane itself: the allocator is part of what a reload costs.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let arg = |n: usize, default: usize| {
        std::env::args()
            .nth(n)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
    };
    let (routes, rounds) = (arg(1, 10_000), arg(2, 10).max(1));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, routes_yaml(routes)).expect("write routes.yaml");
    let files = FilesBeside::of(&path);
    let (mut read, mut translate, mut drop) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let started = Instant::now();
        let (config, certificates) =
            tollgate_routes::load_with_files(&path, &files).expect("a valid routes.yaml");
        let read_at = Instant::now();
        let snapshot = tollgate_control_plane::translate::translate(&config, &certificates);
        let translated_at = Instant::now();
        std::mem::drop((snapshot, config, certificates));
        read.push(read_at - started);
        translate.push(translated_at - read_at);
        drop.push(translated_at.elapsed());
    }
    println!(
        "{routes} routes, median of {rounds}: read and validate {:.1} ms, translate {:.1} ms, drop {:.1} ms",
        median_ms(&mut read),
        median_ms(&mut translate),
        median_ms(&mut drop)
    );
}

fn routes_yaml(routes: usize) -> String {
    let mut yaml = String::from(
        "version: 1\nlisteners:\n  - {name: public, address: 127.0.0.1:18080}\nservices:\n  bench: {endpoints: [\"127.0.0.1:1\"]}\nroutes:\n",
    );
    for r in 0..routes {
        yaml.push_str(&format!(
            "  - {{name: r{r}, match: {{prefix: /r/{r}/}}, service: bench}}\n"
        ));
    }
    yaml
}

fn median_ms(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}
