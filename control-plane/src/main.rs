//! `tollgate-control-plane`: wiring only; the work lives in the library.
#![forbid(unsafe_code)]

/// jemalloc rather than glibc's malloc: at each edit every xDS stream builds and drops a
/// response of thousands of small buffers, and with 1,000 nodes (`xds_fleet` in
/// `make bench`) glibc's allocator took about 40% of the control plane's CPU doing it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    // jemalloc hands freed pages back to the system as its arenas allocate again, so pages
    // freed by an arena that then goes quiet stay resident: a fleet's pushes left 1.6 GB of
    // them at 10,000 Delta nodes in one build, 320 MB live (`make bench`, BENCHMARKS.md).
    // A background thread returns them on the decay schedule whatever the arenas do; one
    // is enough for the few arenas of a 2-core machine.
    let background = tikv_jemalloc_ctl::max_background_threads::write(1)
        .and_then(|()| tikv_jemalloc_ctl::background_thread::write(true));
    if let Err(error) = background {
        eprintln!("tollgate-control-plane: jemalloc's background purging is off ({error}); freed memory may stay resident");
    }
    std::process::exit(tollgate_control_plane::cli::run());
}
