//! `tollgate-control-plane`: wiring only; the work lives in the library.
#![forbid(unsafe_code)]

fn main() {
    std::process::exit(tollgate_control_plane::cli::run());
}
