//! Command-line interface: `serve`, `validate`, `bootstrap`. Every flag can also come from a
//! `TOLLGATE_…` environment variable. [`run`] is the whole program, so that the binary and
//! the container image's multi-call executable share it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use tollgate_routes::FilesBeside;
use tollgate_runtime::server_tls::ServerTlsFiles;
use tollgate_runtime::{exit, logging, shutdown};

use crate::bootstrap::{self, BootstrapOptions, OverloadLimits, XdsClientTls, XdsVariant};
use crate::serve::{self, ServeError, ServeOptions};

/// Parses the process's arguments, runs the command and returns the exit status.
pub fn run() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { file } => validate(&file),
        Command::Bootstrap(args) => print_bootstrap(args),
        Command::Serve(args) => {
            logging::init();
            let options = ServeOptions {
                routes: args.routes,
                xds_addr: args.xds_addr,
                admin_addr: args.admin_addr,
                peers: args.peers,
                jwks_refresh_interval: args.jwks_refresh_interval,
                xds_tls: args.tls_cert.map(|cert| ServerTlsFiles {
                    cert,
                    // clap makes --tls-cert and --tls-key go together.
                    key: args.tls_key.unwrap_or_default(),
                    client_ca: args.client_ca,
                }),
                bind_node_id_to_certificate: args.bind_node_id_to_certificate,
            };
            match tokio::runtime::Runtime::new()
                .map_err(ServeError::Runtime)
                .and_then(|rt| rt.block_on(serve::run(options, shutdown::signal())))
            {
                Ok(()) => 0,
                Err(error @ (ServeError::Config(_) | ServeError::Tls(_))) => {
                    eprintln!("{error}");
                    exit::BAD_CONFIG
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    exit::FAILURE
                }
            }
        }
    }
}

/// `bootstrap`: the YAML on stdout, and the SDS files for Envoy's client certificate and
/// its validation of the control plane when asked for.
fn print_bootstrap(args: BootstrapArgs) -> i32 {
    let options = BootstrapOptions {
        node_id: args.node_id,
        cluster: args.node_cluster,
        xds_addrs: args.xds_addr,
        admin_addr: args.admin_addr,
        variant: args.xds_variant,
        tls: args.xds_ca.map(|ca_file| XdsClientTls {
            ca_file,
            // clap makes --xds-ca, --xds-cert and --xds-key go together.
            cert_file: args.xds_cert.unwrap_or_default(),
            key_file: args.xds_key.unwrap_or_default(),
            server_name: args.xds_server_name,
            sds_file: args.xds_sds_file,
        }),
        overload: OverloadLimits {
            max_heap_mb: args.max_heap_mb,
            max_connections: args.max_connections,
        },
    };
    let rendered = bootstrap::render(&options).and_then(|yaml| {
        let sds = match &options.tls {
            Some(tls) => bootstrap::sds_files(tls)?,
            None => Vec::new(),
        };
        Ok((yaml, sds))
    });
    let (yaml, sds) = match rendered {
        Ok(rendered) => rendered,
        Err(error) => {
            eprintln!("error: {error}");
            return exit::BAD_CONFIG;
        }
    };
    for (path, contents) in &sds {
        if let Err(error) = write_by_rename(path, contents) {
            eprintln!("error: cannot write {}: {error}", path.display());
            return exit::FAILURE;
        }
    }
    print!("{yaml}");
    0
}

/// Writes `contents` beside `path` and renames it over `path`: Envoy, which may be watching
/// the file, never reads half of it.
fn write_by_rename(path: &Path, contents: &str) -> std::io::Result<()> {
    let name = path.file_name().map_or_else(
        || "sds.yaml".into(),
        |name| name.to_string_lossy().into_owned(),
    );
    let temporary = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&temporary, contents)?;
    std::fs::rename(&temporary, path)
}

/// Exit 0 for a valid file, 1 with every error on stderr otherwise (the contract).
fn validate(file: &Path) -> i32 {
    match tollgate_routes::load_with_files(file, &FilesBeside::of(file)) {
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

#[derive(Debug, Parser)]
#[command(
    name = "tollgate-control-plane",
    version,
    about = "Serves routes.yaml to Envoy over ADS"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve routes.yaml over ADS, reloading it whenever it changes.
    Serve(ServeArgs),
    /// Check a routes.yaml; print every error as FILE:LINE:COL: message.
    Validate {
        /// The routes.yaml to check.
        file: PathBuf,
    },
    /// Print an Envoy bootstrap that connects Envoy to this control plane.
    Bootstrap(BootstrapArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The routes.yaml to serve.
    #[arg(long, env = "TOLLGATE_ROUTES")]
    pub routes: PathBuf,
    /// Where Envoys connect for ADS.
    #[arg(long, env = "TOLLGATE_XDS_ADDR", default_value = "127.0.0.1:18000")]
    pub xds_addr: SocketAddr,
    /// The control plane's HTTP endpoints: /healthz, /readyz, /metrics, /status, /members.
    #[arg(long, env = "TOLLGATE_ADMIN_ADDR", default_value = "127.0.0.1:18001")]
    pub admin_addr: SocketAddr,
    /// Another replica's admin address, HOST:PORT; repeat the flag (or give a comma list)
    /// for every other replica. Replicas tell each other which Envoys they hold, so that
    /// local rate limits are shared among all of a group's Envoys, whichever replica each
    /// is connected to.
    #[arg(long = "peer", env = "TOLLGATE_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// How often the key sets of providers Envoy enforces (`enforce: envoy`) are fetched
    /// again from their jwks_uri.
    #[arg(long, env = "TOLLGATE_JWKS_REFRESH_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub jwks_refresh_interval: std::time::Duration,
    /// Serve xDS over TLS with this certificate chain (PEM, leaf first); re-read when it
    /// changes.
    #[arg(long, env = "TOLLGATE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "TOLLGATE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require every xDS client to present a certificate issued by a CA in this PEM file.
    #[arg(long, env = "TOLLGATE_CLIENT_CA", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// Refuse an xDS stream whose node id is not named by its client certificate: a DNS
    /// subject alternative name equal to the id, or a URI one ending in /ID.
    #[arg(
        long,
        env = "TOLLGATE_BIND_NODE_ID_TO_CERTIFICATE",
        requires = "client_ca"
    )]
    pub bind_node_id_to_certificate: bool,
}

#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    /// The Envoy node id; /status reports each node under it.
    #[arg(long, env = "TOLLGATE_NODE_ID")]
    pub node_id: String,
    /// The gateway group this Envoy belongs to (its node `cluster`): the Envoys of one group
    /// share each local rate limit's budget. `--group` and `--node-cluster` are one flag.
    #[arg(
        long,
        visible_alias = "group",
        env = "TOLLGATE_NODE_CLUSTER",
        default_value = "tollgate"
    )]
    pub node_cluster: String,
    /// The control plane's ADS address, HOST:PORT; repeat the flag (or give a comma list) for
    /// every replica: Envoy connects to one and moves to another when it fails.
    #[arg(
        long,
        env = "TOLLGATE_XDS_ADDR",
        value_delimiter = ',',
        default_value = "127.0.0.1:18000"
    )]
    pub xds_addr: Vec<String>,
    /// Envoy's own admin interface, HOST:PORT; keep it on loopback.
    #[arg(
        long,
        env = "TOLLGATE_ENVOY_ADMIN_ADDR",
        default_value = "127.0.0.1:9901"
    )]
    pub admin_addr: String,
    /// The ADS variant Envoy speaks.
    #[arg(long, env = "TOLLGATE_XDS_VARIANT", value_enum, default_value = "sotw")]
    pub xds_variant: XdsVariant,
    /// Connect to the control plane over TLS, trusting the CAs in this PEM file (a path on
    /// Envoy's host, read by Envoy).
    #[arg(long, env = "TOLLGATE_XDS_CA", requires_all = ["xds_cert", "xds_key"])]
    pub xds_ca: Option<PathBuf>,
    /// Envoy's client certificate for the control plane (PEM, a path on Envoy's host).
    #[arg(long, env = "TOLLGATE_XDS_CERT", requires = "xds_ca")]
    pub xds_cert: Option<PathBuf>,
    /// The private key of --xds-cert (PEM, a path on Envoy's host).
    #[arg(long, env = "TOLLGATE_XDS_KEY", requires = "xds_ca")]
    pub xds_key: Option<PathBuf>,
    /// The name the control plane's certificate must carry (a DNS subject alternative name),
    /// also sent as SNI; without it any certificate from --xds-ca is accepted.
    #[arg(long, env = "TOLLGATE_XDS_SERVER_NAME", requires = "xds_ca")]
    pub xds_server_name: Option<String>,
    /// Write an SDS file here naming --xds-cert and --xds-key, and a sibling one (`-ca`
    /// before the extension: `edge-1-sds-ca.yaml`) naming --xds-ca and --xds-server-name, and
    /// have Envoy take its certificate and what it verifies the control plane with through
    /// them: Envoy then re-reads those files when they are replaced (by rename) instead of
    /// only at start. Paths on Envoy's host, written by this command.
    #[arg(long, env = "TOLLGATE_XDS_SDS_FILE", requires = "xds_ca")]
    pub xds_sds_file: Option<PathBuf>,
    /// Envoy's heap limit in MiB: near it, Envoy answers new requests 503 instead of growing
    /// until it is killed. Set it below the memory Envoy's host or container gives it.
    #[arg(long, env = "TOLLGATE_ENVOY_MAX_HEAP_MB", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    pub max_heap_mb: u64,
    /// Client connections Envoy holds open at once, on all listeners together.
    #[arg(long, env = "TOLLGATE_ENVOY_MAX_CONNECTIONS", default_value_t = 50_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    tollgate_routes::duration::parse(text)
}
