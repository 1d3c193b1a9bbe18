//! A route's `split`, `mirror` and `redirect`, and a listener's `redirect_to_https`.

mod common;

use common::{assert_error_at, errors};

use tollgate_routes::{parse, Destination, Redirect, RedirectPath, WeightedService};

/// A file with two listeners (one TLS-less on 8080, one named `tls` that the tests never
/// serve) and three services, and `routes`.
fn with_routes(routes: &str) -> String {
    format!(
        "version: 1
listeners: [{{name: public, address: 127.0.0.1:8080}}]
services:
  v1: {{endpoints: [\"127.0.0.1:3001\"]}}
  v2: {{endpoints: [\"127.0.0.1:3002\"]}}
  shadow: {{endpoints: [\"127.0.0.1:3003\"]}}
routes:
{routes}"
    )
}

#[test]
fn split_mirror_and_redirect_parse_into_the_model() {
    let text = with_routes(
        "  - name: canary
    match: {prefix: /api/}
    split: [{service: v1, weight: 90}, {service: v2, weight: 10}]
    mirror: {service: shadow, percent: 5}
  - name: old-docs
    match: {prefix: /docs/}
    redirect: {path_prefix: /help/, code: 308, strip_query: true}
  - name: secure
    match: {prefix: /}
    redirect: {https: true, host: Example.com, port: 8443}
",
    );
    let config = parse("routes.yaml", &text).expect("valid");
    assert_eq!(
        config.routes[0].destination,
        Destination::Split(vec![
            WeightedService {
                service: "v1".into(),
                weight: 90
            },
            WeightedService {
                service: "v2".into(),
                weight: 10
            },
        ])
    );
    let mirror = config.routes[0].mirror.as_ref().expect("mirror");
    assert_eq!((mirror.service.as_str(), mirror.percent), ("shadow", 5.0));
    assert_eq!(
        config.routes[1].destination,
        Destination::Redirect(Redirect {
            https: false,
            host: None,
            port: None,
            path: Some(RedirectPath::Prefix("/help/".into())),
            code: 308,
            strip_query: true,
        })
    );
    let Destination::Redirect(secure) = &config.routes[2].destination else {
        panic!("a redirect");
    };
    assert!(secure.https);
    assert_eq!(secure.host.as_deref(), Some("example.com"));
    assert_eq!((secure.port, secure.code), (Some(8443), 301));
}

#[test]
fn a_route_needs_exactly_one_destination() {
    let none = with_routes("  - name: r\n    match: {prefix: /}\n");
    assert_error_at(
        &none,
        "8:11:",
        "needs exactly one of service, split or redirect",
    );
    let two = with_routes(
        "  - name: r\n    match: {prefix: /}\n    service: v1\n    redirect: {https: true}\n",
    );
    assert_error_at(
        &two,
        "8:11:",
        "needs exactly one of service, split or redirect",
    );
}

#[test]
fn split_weights_must_add_up_to_100_over_known_distinct_services() {
    for (split, at, why) in [
        (
            "[{service: v1, weight: 90}, {service: v2, weight: 20}]",
            "10:12:",
            "add up to 110, not 100",
        ),
        (
            "[{service: v1, weight: 100}]",
            "10:12:",
            "two or more services",
        ),
        (
            "[{service: v1, weight: 50}, {service: nope, weight: 50}]",
            "10:50:",
            "unknown service \"nope\"",
        ),
        (
            "[{service: v1, weight: 50}, {service: v1, weight: 50}]",
            "10:50:",
            "in the split twice",
        ),
        (
            "[{service: v1, weight: 150}, {service: v2, weight: 0}]",
            "10:35:",
            "weight 150 is over 100",
        ),
        (
            "[{service: v1, weight: 50}, {service: v2, weight: 50, canary: true}]",
            "10:",
            "unknown field",
        ),
    ] {
        let text = with_routes(&format!(
            "  - name: r\n    match: {{prefix: /}}\n    split: {split}\n"
        ));
        assert_error_at(&text, at, why);
    }
}

#[test]
fn a_mirror_names_a_known_service_and_a_percent_above_0_up_to_100() {
    for (mirror, at, why) in [
        ("{service: nope}", "11:23:", "unknown service \"nope\""),
        (
            "{service: shadow, percent: 0}",
            "11:40:",
            "expected above 0 and at most 100",
        ),
        (
            "{service: shadow, percent: 100.5}",
            "11:40:",
            "expected above 0 and at most 100",
        ),
    ] {
        let text = with_routes(&format!(
            "  - name: r\n    match: {{prefix: /}}\n    service: v1\n    mirror: {mirror}\n"
        ));
        assert_error_at(&text, at, why);
    }
}

#[test]
fn a_redirect_must_change_something_and_says_only_what_applies() {
    for (redirect, at, why) in [
        ("{code: 301}", "10:15:", "the redirect changes nothing"),
        (
            "{https: true, code: 304}",
            "10:35:",
            "expected 301, 302, 303, 307 or 308",
        ),
        ("{port: 70000}", "10:22:", "expected 1 to 65535"),
        ("{host: \"a.com:80\"}", "10:22:", "without port or path"),
        ("{path: help}", "10:22:", "must start with '/'"),
        (
            "{path: /a, path_prefix: /b}",
            "10:39:",
            "`path` or `path_prefix`, not both",
        ),
    ] {
        let text = with_routes(&format!(
            "  - name: r\n    match: {{prefix: /}}\n    redirect: {redirect}\n"
        ));
        assert_error_at(&text, at, why);
    }
    let regex =
        with_routes("  - name: r\n    match: {regex: /a/.*}\n    redirect: {path_prefix: /b/}\n");
    assert_error_at(&regex, "10:29:", "path_prefix needs a prefix or path match");
    let forwarding = with_routes(
        "  - name: r\n    match: {prefix: /}\n    redirect: {https: true}\n    timeout: 5s\n    mirror: {service: shadow}\n",
    );
    let found = errors(&forwarding);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].starts_with("11:14: route \"r\": `timeout` does not apply to a redirect"),
        "{found:?}"
    );
    assert!(
        found[1].starts_with("12:13: route \"r\": `mirror` does not apply"),
        "{found:?}"
    );
}

const TLS_LISTENER: &str = "  - name: secure\n    address: 127.0.0.1:8443\n    tls: {cert_file: gw.pem, key_file: gw.key}\n";

#[test]
fn redirect_to_https_names_a_tls_listener_and_leaves_no_route_on_its_own() {
    let text = format!(
        "version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
    redirect_to_https: secure
{TLS_LISTENER}services: {{v1: {{endpoints: [\"127.0.0.1:3001\"]}}}}
routes:
  - {{name: r, match: {{prefix: /}}, service: v1}}
"
    );
    let config = parse("routes.yaml", &text).expect("valid");
    let redirect = config.listeners[0]
        .redirect_to_https
        .as_ref()
        .expect("redirects");
    assert_eq!(
        (redirect.listener.as_str(), redirect.port),
        ("secure", 8443)
    );
    assert_eq!(config.routes_on("public").count(), 0);
    assert_eq!(config.routes_on("secure").count(), 1);

    for (target, why) in [
        ("nowhere", "unknown listener \"nowhere\""),
        ("public", "has no tls"),
    ] {
        let text = text.replace(
            "redirect_to_https: secure",
            &format!("redirect_to_https: {target}"),
        );
        assert_error_at(&text, "5:24:", why);
    }
    let own_route = text.replace("{name: r, match", "{name: r, listener: public, match");
    assert_error_at(
        &own_route,
        "11:25:",
        "listener \"public\" redirects every request to https",
    );
}
