//! `tollgate`: tollgate-control-plane, tollgate-ext-authz and tollgate-ratelimit in one
//! executable, which runs the service it is called as (a link named for it), busybox-style.
//!
//! Why: the container image holds all three. As three executables they would each carry
//! their own copy of what they share (tokio, hyper, tonic, prost, rustls and aws-lc, the
//! routes model): 38.9 MB stripped, against 17.7 MB as one, which keeps the image within
//! its 100 MB on a slim Debian base. Each service's whole program is its library's
//! `cli::run`, so the three binaries `make up` builds and this one behave the same.
#![forbid(unsafe_code)]

use std::path::Path;

use tollgate_runtime::exit;
use tollgate_sidecar::grpc::Allocator;

/// See `Allocator` for why; the control plane's own binary uses jemalloc too (see its
/// `main.rs`).
#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

/// A service's whole program: parses the process's arguments, returns its exit status.
type Program = fn() -> i32;

/// The names it answers to: each service's own binary name.
const SERVICES: [(&str, Program); 3] = [
    ("tollgate-control-plane", tollgate_control_plane::cli::run),
    ("tollgate-ext-authz", tollgate_ext_authz::cli::run),
    ("tollgate-ratelimit", tollgate_ratelimit::cli::run),
];

fn main() {
    let called_as = std::env::args_os()
        .next()
        .and_then(|arg0| Path::new(&arg0).file_name().map(|n| n.to_owned()))
        .unwrap_or_default();
    let code = match SERVICES.iter().find(|(name, _)| called_as == *name) {
        Some((_, run)) => run(),
        None => {
            let names: Vec<&str> = SERVICES.iter().map(|(name, _)| *name).collect();
            eprintln!(
                "tollgate runs the service it is called as: link it as {}",
                names.join(", ")
            );
            exit::BAD_CONFIG
        }
    };
    std::process::exit(code);
}
