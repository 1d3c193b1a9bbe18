//! `tollgate-ext-authz hash-key`: a key on stdin becomes a keys-file entry on stdout that
//! holds the key's SHA-256 and never the key.

use std::io::Write as _;
use std::process::{Command, Stdio};

fn hash_key(args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate-ext-authz"))
        .arg("hash-key")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tollgate-ext-authz");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write the key");
    child.wait_with_output().expect("exits")
}

#[test]
fn a_key_on_stdin_becomes_an_entry_with_its_hash_only() {
    let out = hash_key(&["--consumer", "acme", "--tier", "premium"], "test\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).expect("UTF-8");
    assert_eq!(
        line,
        "- {consumer: \"acme\", tier: \"premium\", sha256: \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"}\n"
    );
    let file = format!("keys:\n  {line}");
    let keys = tollgate_routes::parse_keys("keys.yaml", &file).expect("a valid entry");
    assert_eq!(keys[0].consumer, "acme");
}

#[test]
fn an_empty_key_is_refused_and_serving_still_needs_routes() {
    let out = hash_key(&["--consumer", "acme"], "\n");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no key on stdin"));
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate-ext-authz"))
        .output()
        .expect("run tollgate-ext-authz");
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--routes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
