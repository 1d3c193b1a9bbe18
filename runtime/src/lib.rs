//! Plumbing every Tollgate binary shares: logging set up the same way, the same shutdown
//! signals and exit codes, config-file change notifications, and the health and metrics
//! HTTP endpoints, the sidecars' gRPC listening socket and allocator, and OpenTelemetry
//! tracing for the sidecars.
#![forbid(unsafe_code)]

pub mod exit;
pub mod file_watch;
pub mod grpc;
pub mod http;
pub mod logging;
pub mod shutdown;
pub mod telemetry;
