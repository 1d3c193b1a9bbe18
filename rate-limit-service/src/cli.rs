//! The program: flags (`settings`) in, the service served until a signal. [`run`] is the
//! whole program, so that the binary and the container image's multi-call executable share
//! it.

use clap::Parser;
use tollgate_runtime::{exit, shutdown};
use tollgate_sidecar::telemetry::Telemetry;

use crate::server::{self, ServeError};
use crate::settings::Settings;

/// Parses the process's arguments, serves until a signal and returns the exit status.
pub fn run() -> i32 {
    let settings = Settings::parse();
    let telemetry = Telemetry::init("tollgate-ratelimit");
    let runtime = match tollgate_sidecar::grpc::acceptor_runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return exit::FAILURE;
        }
    };
    match runtime.block_on(server::run(settings, telemetry, shutdown::signal())) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("error: {error}");
            if ServeError::is_bad_config(&error) {
                exit::BAD_CONFIG
            } else {
                exit::FAILURE
            }
        }
    }
}
