//! `tollgate-control-plane`: wiring only; the work lives in the library.
#![forbid(unsafe_code)]

use clap::Parser;
use tollgate_control_plane::bootstrap::{self, BootstrapOptions};
use tollgate_control_plane::cli::{Cli, Command};
use tollgate_control_plane::serve::{self, ServeError, ServeOptions};
use tollgate_runtime::{exit, logging, shutdown};

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Validate { file } => validate(&file),
        Command::Bootstrap(args) => match bootstrap::render(&BootstrapOptions {
            node_id: args.node_id,
            cluster: args.node_cluster,
            xds_addr: args.xds_addr,
            admin_addr: args.admin_addr,
            variant: args.xds_variant,
        }) {
            Ok(yaml) => {
                print!("{yaml}");
                0
            }
            Err(error) => {
                eprintln!("error: {error}");
                exit::BAD_CONFIG
            }
        },
        Command::Serve(args) => {
            logging::init();
            let options = ServeOptions {
                routes: args.routes,
                xds_addr: args.xds_addr,
                admin_addr: args.admin_addr,
            };
            match tokio::runtime::Runtime::new()
                .map_err(|e| ServeError::Xds(e.to_string()))
                .and_then(|rt| rt.block_on(serve::run(options, shutdown::signal())))
            {
                Ok(()) => 0,
                Err(error @ ServeError::Config(_)) => {
                    eprintln!("{error}");
                    exit::BAD_CONFIG
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    exit::FAILURE
                }
            }
        }
    };
    std::process::exit(code);
}

/// Exit 0 for a valid file, 1 with every error on stderr otherwise (the contract).
fn validate(file: &std::path::Path) -> i32 {
    match tollgate_control_plane::reload::load(file) {
        Ok((config, _)) => {
            println!(
                "{}: ok ({} listeners, {} services, {} routes)",
                file.display(),
                config.listeners.len(),
                config.services.len(),
                config.routes.len()
            );
            0
        }
        Err(errors) => {
            eprintln!("{errors}");
            1
        }
    }
}
