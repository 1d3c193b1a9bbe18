//! The multi-call executable runs the service named by the link it is called through.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn call_as(dir: &Path, name: &str, args: &[&str]) -> Output {
    let link = dir.join(name);
    std::os::unix::fs::symlink(BIN, &link).expect("link");
    Command::new(&link).args(args).output().expect("runs")
}

#[test]
fn each_link_runs_its_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in [
        "tollgate-control-plane",
        "tollgate-ext-authz",
        "tollgate-ratelimit",
    ] {
        let out = call_as(dir.path(), name, &["--version"]);
        assert!(out.status.success(), "{name}: {out:?}");
        let version = String::from_utf8_lossy(&out.stdout);
        assert!(
            version.starts_with(&format!("{name} ")),
            "{name}: {version}"
        );
    }
}

#[test]
fn a_service_sees_its_own_arguments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = call_as(
        dir.path(),
        "tollgate-control-plane",
        &["bootstrap", "--node-id", "edge-7"],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("id: edge-7"));
}

#[test]
fn another_name_is_refused_with_the_names_it_answers_to() {
    let out = Command::new(BIN).output().expect("runs");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tollgate-ext-authz"), "{stderr}");
}
