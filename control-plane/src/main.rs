//! `tollgate-control-plane`: wiring only; the work lives in the library.
#![forbid(unsafe_code)]

/// jemalloc rather than glibc's malloc: at each edit every xDS stream builds and drops a
/// response of thousands of small buffers, and with 1,000 nodes (`xds_fleet` in
/// `make bench`) glibc's allocator took about 40% of the control plane's CPU doing it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    std::process::exit(tollgate_control_plane::cli::run());
}
