//! `tollgate-ratelimit`: wiring only; the work lives in the library.
#![forbid(unsafe_code)]

use clap::Parser;
use tollgate_ratelimit::server::{self, ServeError};
use tollgate_ratelimit::settings::Settings;
use tollgate_runtime::grpc::Allocator;
use tollgate_runtime::telemetry::Telemetry;
use tollgate_runtime::{exit, shutdown};

/// See `Allocator` for why.
#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

fn main() {
    let settings = Settings::parse();
    let telemetry = Telemetry::init("tollgate-ratelimit");
    if let Err(error) = run(settings, telemetry) {
        eprintln!("error: {error}");
        let bad_config = error
            .downcast_ref::<ServeError>()
            .is_some_and(ServeError::is_bad_config);
        std::process::exit(if bad_config {
            exit::BAD_CONFIG
        } else {
            exit::FAILURE
        });
    }
}

fn run(settings: Settings, telemetry: Telemetry) -> anyhow::Result<()> {
    // Calls are served by threads of their own (`--serving-threads`); this runtime only
    // accepts connections, serves /metrics and reloads the limits.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(server::run(settings, telemetry, shutdown::signal()))?;
    Ok(())
}
