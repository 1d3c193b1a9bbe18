//! Command-line flags; each can also come from a `TOLLGATE_…` environment variable. [`run`]
//! is the whole program, so that the binary and the container image's multi-call executable
//! share it.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use tollgate_runtime::{exit, shutdown};
use tollgate_sidecar::telemetry::Telemetry;

use crate::server::{self, Options, StartError};

/// Parses the process's arguments, serves until a signal (or runs the subcommand) and
/// returns the exit status.
pub fn run() -> i32 {
    let cli = Cli::parse();
    if let Some(Command::HashKey { consumer, tier }) = &cli.command {
        return hash_key(consumer, tier.as_deref());
    }
    let telemetry = Telemetry::init("tollgate-ext-authz");
    crate::install_crypto();
    let runtime = match tollgate_sidecar::grpc::acceptor_runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return exit::FAILURE;
        }
    };
    let served = runtime.block_on(server::run(
        cli.options(telemetry),
        cli.grpc_addr,
        cli.metrics_addr,
        shutdown::signal(),
    ));
    match served {
        Ok(()) => 0,
        Err(StartError::Config(config)) => {
            eprintln!("{config}");
            exit::BAD_CONFIG
        }
        Err(error @ StartError::GrpcTls(_)) => {
            eprintln!("error: {error}");
            exit::BAD_CONFIG
        }
        Err(error) => {
            eprintln!("error: {error}");
            exit::FAILURE
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "tollgate-ext-authz",
    version,
    about = "Validates JWTs for Envoy's external authorization API",
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Where Envoy calls envoy.service.auth.v3.Authorization/Check (and grpc.health.v1).
    #[arg(long, env = "TOLLGATE_GRPC_ADDR", default_value = "127.0.0.1:9191")]
    pub grpc_addr: SocketAddr,
    /// The routes.yaml whose auth_providers are served; reloaded when it changes.
    #[arg(long, env = "TOLLGATE_ROUTES", required = true)]
    pub routes: Option<PathBuf>,
    /// /metrics, /healthz and /readyz.
    #[arg(long, env = "TOLLGATE_METRICS_ADDR", default_value = "127.0.0.1:9192")]
    pub metrics_addr: SocketAddr,
    /// The realm in WWW-Authenticate challenges (RFC 6750 §3).
    #[arg(long, env = "TOLLGATE_REALM", default_value = "tollgate", value_parser = parse_realm)]
    pub realm: String,
    /// Verified tokens kept so a reused token skips the signature check; 0 disables.
    #[arg(long, env = "TOLLGATE_TOKEN_CACHE_SIZE", default_value_t = 10_000)]
    pub token_cache_size: usize,
    /// How often a remote JWKS is refetched.
    #[arg(long, env = "TOLLGATE_JWKS_REFRESH_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub jwks_refresh_interval: Duration,
    /// The least time between two fetches triggered by unknown key ids, per provider.
    #[arg(long, env = "TOLLGATE_JWKS_COOLDOWN", default_value = "30s", value_parser = parse_duration)]
    pub jwks_cooldown: Duration,
    /// Threads serving gRPC; default: one per CPU core. Each connection from Envoy is
    /// served by one thread.
    #[arg(long, env = "TOLLGATE_EXT_AUTHZ_SERVING_THREADS")]
    pub serving_threads: Option<NonZeroUsize>,
    #[command(flatten)]
    pub tls: tollgate_sidecar::grpc::TlsFlags,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Reads an API key on stdin and prints its entry for a keys file: the key's SHA-256,
    /// never the key itself.
    HashKey {
        /// Whose key it is (sent upstream as x-consumer-id).
        #[arg(long)]
        consumer: String,
        /// The consumer's rate-limit tier.
        #[arg(long)]
        tier: Option<String>,
    },
}

/// `hash-key`: one line of YAML on stdout, ready to add under `keys:`.
fn hash_key(consumer: &str, tier: Option<&str>) -> i32 {
    let mut key = String::new();
    if let Err(error) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut key) {
        eprintln!("error: cannot read the key from stdin: {error}");
        return exit::FAILURE;
    }
    // A key typed or piped ends with a newline, which is not part of it.
    let key = key.trim_end_matches(['\n', '\r']);
    if key.is_empty() {
        eprintln!("error: no key on stdin");
        return exit::BAD_CONFIG;
    }
    println!("{}", crate::api_keys::entry(key, consumer, tier));
    0
}

impl Cli {
    pub fn options(&self, telemetry: Telemetry) -> Options {
        Options {
            routes: self.routes.clone().unwrap_or_default(),
            realm: self.realm.clone(),
            token_cache_size: self.token_cache_size,
            jwks_refresh_interval: self.jwks_refresh_interval,
            jwks_cooldown: self.jwks_cooldown,
            telemetry: Some(telemetry),
            serving_threads: Some(
                self.serving_threads
                    .unwrap_or_else(tollgate_sidecar::grpc::serving_threads_per_core),
            ),
            grpc_tls: self.tls.files(),
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    tollgate_routes::duration::parse(text)
}

/// The realm is sent inside a quoted string: no quotes, backslashes or controls.
fn parse_realm(text: &str) -> Result<String, String> {
    if text
        .chars()
        .all(|c| c == ' ' || (c.is_ascii_graphic() && c != '"' && c != '\\'))
    {
        Ok(text.to_string())
    } else {
        Err(format!(
            "realm \"{text}\" may hold only printable ASCII without '\"' or '\\'"
        ))
    }
}
