//! `tollgate-ext-authz`: wiring only; the work lives in the library.
#![forbid(unsafe_code)]

use tollgate_sidecar::grpc::Allocator;

/// See `Allocator` for why.
#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

fn main() {
    std::process::exit(tollgate_ext_authz::cli::run());
}
