//! `allow_ips` and `deny_ips` on listeners and routes.

mod common;

use common::{assert_error_at, errors};

use tollgate_routes::parse;

const TEXT: &str = "version: 1
listeners:
  - {name: public, address: 127.0.0.1:8080, deny_ips: [192.0.2.0/24]}
services: {app: {endpoints: [\"127.0.0.1:3000\"]}}
routes:
  - {name: admin, match: {prefix: /admin/}, service: app, allow_ips: [10.0.0.0/8, \"2001:db8::/32\", 127.0.0.1]}
";

#[test]
fn blocks_parse_into_the_model() {
    let config = parse("routes.yaml", TEXT).expect("valid");
    let listener = &config.listeners[0].ip_rules;
    assert_eq!(listener.deny[0].to_string(), "192.0.2.0/24");
    assert!(listener.allow.is_empty());
    let route: Vec<String> = config.routes[0]
        .ip_rules
        .allow
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(route, ["10.0.0.0/8", "2001:db8::/32", "127.0.0.1/32"]);
}

#[test]
fn a_bad_block_and_an_empty_allow_list_are_reported_where_they_stand() {
    assert_error_at(
        &TEXT.replace("10.0.0.0/8", "10.1.0.0/8"),
        "6:71:",
        "allow_ips: \"10.1.0.0/8\" has bits set past its prefix; did you mean 10.0.0.0/8?",
    );
    assert_error_at(
        &TEXT.replace("192.0.2.0/24", "192.0.2/24"),
        "3:56:",
        "deny_ips: \"192.0.2/24\" expected an address or ADDRESS/PREFIX",
    );
    let empty = TEXT.replace(
        "allow_ips: [10.0.0.0/8, \"2001:db8::/32\", 127.0.0.1]",
        "allow_ips: []",
    );
    assert_error_at(
        &empty,
        "6:70:",
        "allow_ips is empty: it would refuse every client",
    );
    assert_eq!(errors(&empty).len(), 1);
}

#[test]
fn trusted_proxies_is_a_small_count_of_hops() {
    let behind = TEXT.replace(
        "deny_ips: [192.0.2.0/24]}",
        "deny_ips: [192.0.2.0/24], trusted_proxies: 2}",
    );
    let config = parse("routes.yaml", &behind).expect("valid");
    assert_eq!(config.listeners[0].trusted_proxies, 2);
    assert_eq!(
        parse("routes.yaml", TEXT).expect("valid").listeners[0].trusted_proxies,
        0
    );
    assert_error_at(
        &TEXT.replace(
            "deny_ips: [192.0.2.0/24]}",
            "deny_ips: [192.0.2.0/24], trusted_proxies: 40}",
        ),
        "3:88:",
        "trusted_proxies 40 is out of range: expected 0 to 8",
    );
}
