//! `tollgate-ext-authz`: wiring only; the work lives in the library.
#![forbid(unsafe_code)]

use clap::Parser;
use tollgate_ext_authz::cli::Cli;
use tollgate_ext_authz::server::{self, StartError};
use tollgate_runtime::grpc::Allocator;
use tollgate_runtime::telemetry::Telemetry;
use tollgate_runtime::{exit, shutdown};

/// See `Allocator` for why.
#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

fn main() {
    let cli = Cli::parse();
    let telemetry = Telemetry::init("tollgate-ext-authz");
    tollgate_ext_authz::install_crypto();
    // Calls are served by threads of their own (`--serving-threads`); this runtime only
    // accepts connections, serves /metrics, fetches keys and reloads routes.yaml.
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| {
            runtime
                .block_on(server::run(
                    cli.options(telemetry),
                    cli.grpc_addr,
                    cli.metrics_addr,
                    shutdown::signal(),
                ))
                .map_err(anyhow::Error::from)
        });
    let code = match result {
        Ok(()) => 0,
        Err(error) => match error.downcast_ref::<StartError>() {
            Some(StartError::Config(config)) => {
                eprintln!("{config}");
                exit::BAD_CONFIG
            }
            _ => {
                eprintln!("error: {error:#}");
                exit::FAILURE
            }
        },
    };
    std::process::exit(code);
}
