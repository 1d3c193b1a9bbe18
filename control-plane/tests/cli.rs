//! The binary's contract: `validate` exit codes and messages, `bootstrap` output, and a
//! `serve` that refuses a bad file before it listens.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate-control-plane");

fn repo_file(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

#[test]
fn validate_accepts_the_example_and_the_compose_demo() {
    for file in ["examples/routes.yaml", "compose/routes.yaml"] {
        let out = Command::new(BIN)
            .args(["validate"])
            .arg(repo_file(file))
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn validate_rejects_with_every_error_located() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("routes.yaml");
    std::fs::write(
        &file,
        "version: 1\nlisteners: [{name: a, address: 127.0.0.1:1}]\nservices: {}\nroutes:\n  - {name: r, match: {prefix: /}, service: ghost}\n  - {name: q, match: {regex: '('}, service: ghost}\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .arg("validate")
        .arg(&file)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let prefix = file.display().to_string();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines[0].starts_with(&format!("{prefix}:5:"))
            && lines[0].contains("unknown service \"ghost\""),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with(&format!("{prefix}:6:")) && lines[1].contains("invalid regex"),
        "{stderr}"
    );
    assert!(
        lines[2].starts_with(&format!("{prefix}:6:")) && lines[2].contains("unknown service"),
        "{stderr}"
    );
}

#[test]
fn checked_in_bootstrap_is_the_default_output() {
    let out = Command::new(BIN)
        .args(["bootstrap", "--node-id", "tollgate"])
        .env_remove("TOLLGATE_XDS_ADDR")
        .env_remove("TOLLGATE_ENVOY_ADMIN_ADDR")
        .env_remove("TOLLGATE_XDS_VARIANT")
        .output()
        .expect("runs");
    assert!(out.status.success());
    let checked_in = std::fs::read_to_string(repo_file("envoy/bootstrap.yaml")).expect("read");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        checked_in,
        "envoy/bootstrap.yaml is stale: regenerate it with `tollgate-control-plane bootstrap --node-id tollgate > envoy/bootstrap.yaml`"
    );
}

/// compose/routes.yaml is the `make up` demo with the containers' addresses: once its
/// addresses, key file and tracing are set to the example's, nothing else differs.
#[test]
fn compose_demo_is_the_example_but_for_addresses() {
    let load = |path: &str| {
        tollgate_routes::load(&repo_file(path)).unwrap_or_else(|errors| panic!("{path}: {errors}"))
    };
    let example = load("examples/routes.yaml");
    let mut compose = load("compose/routes.yaml");
    for (name, service) in &mut compose.services {
        assert!(
            service.endpoints.iter().all(|e| !e.is_ip()),
            "service {name}: containers are reached by name"
        );
        service.endpoints = example.services[name].endpoints.clone();
    }
    for (name, provider) in &mut compose.auth_providers {
        // Key files are where the image keeps them.
        use tollgate_routes::policy::Credentials;
        match (
            &mut provider.credentials,
            &example.auth_providers[name].credentials,
        ) {
            (Credentials::Jwt(ours), Credentials::Jwt(theirs)) => ours.keys = theirs.keys.clone(),
            (Credentials::ApiKey(ours), Credentials::ApiKey(theirs)) => {
                ours.keys_file = theirs.keys_file.clone()
            }
            _ => {}
        }
    }
    let (sidecars, example_sidecars) = (&mut compose.sidecars, &example.sidecars);
    if let (Some(ours), Some(theirs)) = (&mut sidecars.ext_authz, &example_sidecars.ext_authz) {
        ours.addresses = theirs.addresses.clone();
    }
    if let (Some(ours), Some(theirs)) = (&mut sidecars.rate_limit, &example_sidecars.rate_limit) {
        ours.addresses = theirs.addresses.clone();
    }
    // No collector runs in the stack; compose/routes.yaml says how to add one.
    compose.observability.tracing = example.observability.tracing.clone();
    assert_eq!(compose, example);
}

#[test]
fn checked_in_compose_bootstrap_is_the_command_output() {
    let out = Command::new(BIN)
        .args([
            "bootstrap",
            "--node-id",
            "tollgate",
            "--xds-addr",
            "control-plane:18000",
        ])
        .env_remove("TOLLGATE_ENVOY_ADMIN_ADDR")
        .env_remove("TOLLGATE_XDS_VARIANT")
        .output()
        .expect("runs");
    assert!(out.status.success());
    let checked_in =
        std::fs::read_to_string(repo_file("compose/envoy/bootstrap.yaml")).expect("read");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        checked_in,
        "compose/envoy/bootstrap.yaml is stale: regenerate it with `tollgate-control-plane bootstrap --node-id tollgate --xds-addr control-plane:18000 > compose/envoy/bootstrap.yaml`"
    );
}

#[test]
fn serve_refuses_a_bad_file_with_ex_usage_before_listening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("routes.yaml");
    std::fs::write(&file, "version: 1\nlisteners: 3\n").expect("write");
    let out = Command::new(BIN)
        .args(["serve", "--routes"])
        .arg(&file)
        .args(["--xds-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("routes.yaml:2:"));
}

#[test]
fn validate_reads_a_tls_listeners_files_next_to_routes_yaml() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("routes.yaml");
    std::fs::write(
        &file,
        "version: 1\nlisteners:\n  - {name: a, address: 127.0.0.1:1, tls: {cert_file: gw.pem, key_file: gw.key}}\n",
    )
    .expect("write");
    std::fs::copy(
        repo_file("routes/tests/fixtures/gateway.pem"),
        dir.path().join("gw.pem"),
    )
    .expect("copy the certificate");
    let validate = || {
        Command::new(BIN)
            .arg("validate")
            .arg(&file)
            .output()
            .expect("runs")
    };

    let out = validate();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("routes.yaml:3:72: cannot read key_file \"gw.key\"")
            && stderr.contains(&dir.path().join("gw.key").display().to_string()),
        "names the field and where the file was looked for: {stderr}"
    );

    std::fs::copy(
        repo_file("routes/tests/fixtures/gateway.key"),
        dir.path().join("gw.key"),
    )
    .expect("copy the key");
    let out = validate();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
