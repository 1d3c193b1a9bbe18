//! Plumbing every Tollgate binary shares: logging set up the same way, the same shutdown
//! signals and exit codes, config-file change notifications and the reloads they drive, TLS
//! for the gRPC servers with certificate files re-read when they change, and the health and
//! metrics HTTP endpoints, and fetching the key sets routes.yaml names by URL. What only the gRPC sidecars need (their gRPC server and
//! allocator, OpenTelemetry) is `tollgate-sidecar`.
#![forbid(unsafe_code)]

pub mod exit;
pub mod fetch;
pub mod file_watch;
pub mod http;
pub mod logging;
pub mod reload;
pub mod server_tls;
pub mod shutdown;
