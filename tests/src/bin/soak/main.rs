//! `make soak` (issue 22, not in CI): half of the measured capacity through the whole chain
//! (Envoy, tollgate-control-plane, tollgate-ext-authz, tollgate-ratelimit on Redis, a real
//! upstream) for `SOAK_MINUTES` (default 30), with a routes.yaml edit every 10 s and a
//! signing-key rotation in the JWKS every 5 minutes. Prints BENCHMARKS.md's "Soak" section:
//! errors, p50/p99 per 5-minute interval, each process's memory and descriptors from the
//! end of the warm-up to the end, and Redis's key count against the bound the live windows
//! set. Exits 1 when any of the criteria fails (the section says which), 64 on a
//! bad `SOAK_*` variable (see [`plan::Plan::from_env`]).
//!
//! The Tollgate binaries come from `TOLLGATE_BIN_DIR` (release builds: `make soak` builds
//! them), Envoy from `ENVOY_BIN`.

mod chain;
mod keys;
mod load;
mod plan;
mod report;
mod resources;
mod soak;

use std::process::ExitCode;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let plan = match plan::Plan::from_env() {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("soak: {error:#}");
            return ExitCode::from(64);
        }
    };
    let outcome = soak::run(&plan).await;
    let report = report::render(&plan, &outcome, &envoy_version());
    print!("{}", report.markdown);
    if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        for failure in &report.failures {
            eprintln!("soak: failed: {failure}");
        }
        ExitCode::FAILURE
    }
}

/// `1.40.0` from `envoy --version`, or what it said.
fn envoy_version() -> String {
    let output = std::process::Command::new(tollgate_conformance::binaries::envoy())
        .arg("--version")
        .output();
    let text = output
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    // `/path/to/envoy  version: <hash>/1.40.0/Clean/RELEASE/BoringSSL`
    text.split_once("version: ")
        .and_then(|(_, version)| version.split('/').nth(1))
        .map_or_else(|| text.trim().to_owned(), str::to_owned)
}
