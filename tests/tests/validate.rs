//! `tollgate-control-plane validate`: exit status 0 for a good file, 1 with one
//! `FILE:LINE:COL: message` line per problem on stderr for a bad one.

use tollgate_conformance::validate;

const GOOD: &str = r#"version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
services:
  invoice-service:
    endpoints: ["127.0.0.1:3000"]
    connect_timeout: 1s
routes:
  - name: invoices
    match:
      prefix: /api/v1/invoices
    service: invoice-service
"#;

#[test]
fn a_valid_file_passes() {
    let outcome = validate(GOOD);
    assert_eq!(outcome.code, Some(0), "stderr: {}", outcome.stderr);
}

#[test]
fn every_problem_is_reported_with_its_line_and_column() {
    // Two independent problems: an unknown service (line 13) and a route on an unknown
    // listener (line 15).
    let bad = format!(
        "{GOOD}  - name: orders\n    listener: nowhere\n    match:\n      prefix: /orders\n    service: invoice-service\n"
    )
    .replace("service: invoice-service\n  - name: orders", "service: missing\n  - name: orders");
    let service_line = 1 + bad
        .lines()
        .position(|l| l.trim() == "service: missing")
        .unwrap();
    let listener_line = 1 + bad
        .lines()
        .position(|l| l.trim() == "listener: nowhere")
        .unwrap();

    let outcome = validate(&bad);

    assert_eq!(outcome.code, Some(1), "stderr: {}", outcome.stderr);
    for (line, what) in [
        (service_line, "\"missing\""),
        (listener_line, "\"nowhere\""),
    ] {
        let located = regex::Regex::new(&format!(r"routes\.yaml:{line}:[1-9][0-9]*: ")).unwrap();
        assert!(
            outcome
                .stderr
                .lines()
                .any(|l| located.is_match(l) && l.contains(what)),
            "expected routes.yaml:{line}:COL: … {what} in stderr:\n{}",
            outcome.stderr
        );
    }
}

#[test]
fn a_route_an_earlier_prefix_covers_is_refused_naming_both_lines() {
    let bad = format!(
        "{GOOD}  - name: invoice-by-id\n    match:\n      prefix: /api/v1/invoices/\n    service: invoice-service\n"
    );
    let outcome = validate(&bad);
    assert_eq!(outcome.code, Some(1), "stderr: {}", outcome.stderr);
    assert!(
        outcome
            .stderr
            .lines()
            .any(|l| l.contains("routes.yaml:16:7: ")
                && l.contains(
                    "route \"invoice-by-id\" is never matched: route \"invoices\" (line 12)"
                )),
        "stderr: {}",
        outcome.stderr
    );
}
