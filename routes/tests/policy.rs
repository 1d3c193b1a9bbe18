//! The policy sections of routes.yaml: auth providers, route auth, rate limits, sidecars.

mod common;

use common::assert_error_at;
use std::time::Duration;

use tollgate_routes::parse;
use tollgate_routes::policy::{
    Algorithm, KeySource, LimitAlgorithm, LimitKey, LimitMode, LimitQuota, Per, Quota, TokenSource,
    DEFAULT_MAX_KEYS,
};

const GOOD: &str = "\
version: 1
listeners: [{name: public, address: 0.0.0.0:8080}]
services: {invoices: {endpoints: [\"127.0.0.1:3000\"]}}
auth_providers:
  main:
    issuer: https://id.example.com
    audiences: [invoices-api]
    jwks_uri: https://id.example.com/.well-known/jwks.json
    algorithms: [RS256, ES256]
    clock_skew: 30s
    consumer_claim: sub
    forward_claims: {tier: x-consumer-tier, email: X-User-Email}
  partners:
    issuer: partners
    audiences: [gateway]
    shared_secret_env: PARTNER_SECRET
    token: {cookie: session}
routes:
  - name: invoices
    match: {prefix: /api/v1/invoices}
    service: invoices
    auth: {provider: main, scopes: [\"invoices:read\"]}
    rate_limit:
      - {by: consumer, requests: 1000, per: minute}
      - {by: client_ip, requests: 20, per: second, burst: 40}
      - {by: header, header: x-api-key, requests: 100, per: minute, algorithm: fixed}
      - by: consumer
        tier_header: x-consumer-tier
        tiers: {free: 100/minute, premium: 1000/minute, internal: 5000/minute}
  - name: public
    match: {prefix: /}
    service: invoices
sidecars:
  ext_authz: {address: 127.0.0.1:9191, timeout: 200ms, failure_mode_allow: false}
  rate_limit: {address: 127.0.0.1:8081, timeout: 50ms, failure_mode_deny: false, domain: tollgate}
";

#[test]
fn the_issue_example_parses_into_policies() {
    let config = parse("routes.yaml", GOOD).expect("valid");
    let main_provider = &config.auth_providers["main"];
    assert_eq!(main_provider.forward_claims["email"], "x-user-email");
    let main = main_provider.jwt().expect("a JWT provider by default");
    assert_eq!(main.algorithms, [Algorithm::RS256, Algorithm::ES256]);
    assert_eq!(main.clock_skew, Duration::from_secs(30));
    assert!(matches!(main.keys, KeySource::JwksUri(_)));
    assert_eq!(
        main.token,
        TokenSource::BearerHeader("authorization".into())
    );
    let partners = config.auth_providers["partners"].jwt().expect("jwt");
    assert_eq!(
        partners.algorithms,
        [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]
    );
    assert_eq!(partners.token, TokenSource::Cookie("session".into()));
    assert_eq!(
        partners.clock_skew,
        Duration::from_secs(60),
        "Envoy's default skew"
    );

    let route = &config.routes[0];
    assert_eq!(
        route.auth.as_ref().map(|a| a.scopes.clone()),
        Some(vec!["invoices:read".into()])
    );
    let ids: Vec<_> = route.rate_limits.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "consumer",
            "client_ip",
            "header.x-api-key",
            "consumer.tiered.x-consumer-tier"
        ]
    );
    assert_eq!(route.rate_limits[0].algorithm, LimitAlgorithm::Sliding);
    assert_eq!(route.rate_limits[1].algorithm, LimitAlgorithm::TokenBucket);
    assert_eq!(route.rate_limits[1].burst, Some(40));
    assert_eq!(route.rate_limits[2].algorithm, LimitAlgorithm::Fixed);
    assert_eq!(
        route.rate_limits[2].key,
        LimitKey::Header("x-api-key".into())
    );
    let LimitQuota::Tiered { header, tiers } = &route.rate_limits[3].quota else {
        panic!("tiered quota expected")
    };
    assert_eq!(header, "x-consumer-tier");
    assert_eq!(
        tiers["premium"],
        Quota {
            requests: 1000,
            per: Per::Minute
        }
    );
    assert!(config.routes[1].auth.is_none());
    let sidecars = &config.sidecars;
    assert_eq!(
        sidecars.ext_authz.as_ref().map(|s| s.timeout),
        Some(Duration::from_millis(200))
    );
    assert_eq!(
        sidecars.rate_limit.as_ref().map(|s| s.domain.as_str()),
        Some("tollgate")
    );
}

#[test]
fn hmac_algorithm_on_a_public_key_provider_is_rejected() {
    assert_error_at(
        &GOOD.replace("[RS256, ES256]", "[RS256, HS256]"),
        "9:25:",
        "HS256 needs shared_secret",
    );
}

#[test]
fn unknown_algorithm_is_rejected() {
    assert_error_at(
        &GOOD.replace("[RS256, ES256]", "[RS256, none]"),
        "9:25:",
        "unknown algorithm \"none\"",
    );
}

#[test]
fn provider_without_audiences_is_rejected() {
    assert_error_at(
        &GOOD.replace("    audiences: [gateway]\n", ""),
        "14:5:",
        "needs audiences",
    );
}

#[test]
fn provider_with_two_key_sources_is_rejected() {
    let text = GOOD.replace(
        "    shared_secret_env: PARTNER_SECRET\n",
        "    shared_secret_env: PARTNER_SECRET\n    jwks_file: keys.json\n",
    );
    assert_error_at(&text, "16:24:", "give only one of");
}

#[test]
fn forwarding_a_claim_into_a_reserved_header_is_rejected() {
    assert_error_at(
        &GOOD.replace("X-User-Email", "Authorization"),
        "12:52:",
        "reserved",
    );
}

#[test]
fn route_naming_an_unknown_provider_is_rejected() {
    assert_error_at(
        &GOOD.replace("provider: main", "provider: mian"),
        "22:22:",
        "unknown auth provider \"mian\"",
    );
}

#[test]
fn auth_without_ext_authz_sidecar_is_rejected() {
    let text = GOOD.replace(
        "  ext_authz: {address: 127.0.0.1:9191, timeout: 200ms, failure_mode_allow: false}\n",
        "",
    );
    assert_error_at(&text, "22:11:", "sidecars.ext_authz is not configured");
}

#[test]
fn rate_limit_without_sidecar_is_rejected() {
    let text = GOOD.replace("  rate_limit: {address: 127.0.0.1:8081, timeout: 50ms, failure_mode_deny: false, domain: tollgate}\n", "");
    assert_error_at(&text, "24:9:", "sidecars.rate_limit is not configured");
}

#[test]
fn consumer_limit_on_a_public_route_is_rejected() {
    let text = GOOD.replace(
        "    match: {prefix: /}\n    service: invoices\n",
        "    match: {prefix: /}\n    service: invoices\n    rate_limit: [{by: consumer, requests: 5, per: second}]\n",
    );
    assert_error_at(&text, "33:23:", "needs auth on the route");
}

#[test]
fn bad_tier_quota_is_rejected() {
    assert_error_at(
        &GOOD.replace("premium: 1000/minute", "premium: 1000/fortnight"),
        "29:44:",
        "invalid quota",
    );
}

#[test]
fn burst_with_fixed_window_is_rejected() {
    assert_error_at(
        &GOOD.replace("burst: 40}", "burst: 40, algorithm: fixed}"),
        "25:59:",
        "burst needs algorithm token_bucket",
    );
}

#[test]
fn two_rules_with_one_id_are_rejected() {
    let text = GOOD.replace(
        "      - {by: client_ip, requests: 20, per: second, burst: 40}\n",
        "      - {by: client_ip, requests: 20, per: second, burst: 40}\n      - {by: client_ip, requests: 900, per: hour}\n",
    );
    assert_error_at(&text, "26:9:", "two rate limits with id \"client_ip\"");
}

#[test]
fn quota_needs_requests_and_per_or_tiers() {
    assert_error_at(
        &GOOD.replace("requests: 1000, per: minute}", "requests: 1000}"),
        "24:9:",
        "needs either",
    );
}

#[test]
fn unknown_limit_key_is_rejected() {
    assert_error_at(
        &GOOD.replace("{by: client_ip,", "{by: ip,"),
        "25:14:",
        "unknown rate limit key \"ip\"",
    );
}

#[test]
fn a_sidecar_address_is_one_replica_or_a_list_of_distinct_ones() {
    let config = parse(
        "routes.yaml",
        &GOOD.replace(
            "ext_authz: {address: 127.0.0.1:9191,",
            "ext_authz: {address: [127.0.0.1:9191, \"authz-2.internal:9191\"],",
        ),
    )
    .expect("valid");
    let addresses: Vec<String> = config
        .sidecars
        .ext_authz
        .expect("ext_authz")
        .addresses
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(addresses, ["127.0.0.1:9191", "authz-2.internal:9191"]);
    let rate_limit = parse("routes.yaml", GOOD)
        .expect("valid")
        .sidecars
        .rate_limit;
    assert_eq!(rate_limit.expect("rate_limit").addresses.len(), 1);
    for (list, message) in [
        ("[]", "sidecar address list is empty"),
        (
            "[127.0.0.1:9191, 127.0.0.1:9191]",
            "sidecar address \"127.0.0.1:9191\" is listed twice",
        ),
        (
            "[127.0.0.1:9191, nowhere]",
            "invalid sidecar address \"nowhere\": expected HOST:PORT",
        ),
    ] {
        let errors = common::errors(&GOOD.replace(
            "ext_authz: {address: 127.0.0.1:9191,",
            &format!("ext_authz: {{address: {list},"),
        ));
        assert!(
            errors.iter().any(|e| e.contains(message)),
            "{list}: {errors:?}"
        );
    }
}

#[test]
fn a_sidecar_tls_block_is_a_services_tls_block() {
    let config = parse(
        "routes.yaml",
        &GOOD.replace(
            "ext_authz: {address: 127.0.0.1:9191,",
            "ext_authz: {address: 127.0.0.1:9191, tls: {sni: authz.internal, ca_file: ca.pem},",
        ),
    )
    .expect("valid");
    let tls = config
        .sidecars
        .ext_authz
        .expect("ext_authz")
        .tls
        .expect("tls");
    assert_eq!(tls.sni, "authz.internal");
    assert_eq!(tls.ca_file, std::path::PathBuf::from("ca.pem"));
    assert!(tls.client_certificate.is_none());
    for (block, message) in [
        (
            "{}",
            "sidecars.ext_authz: tls needs an sni (the name the upstream certificate is issued for)",
        ),
        (
            "{sni: a.internal, cert_file: envoy.pem}",
            "sidecars.ext_authz: a client certificate needs both cert_file and key_file",
        ),
    ] {
        let errors = common::errors(&GOOD.replace(
            "ext_authz: {address: 127.0.0.1:9191,",
            &format!("ext_authz: {{address: 127.0.0.1:9191, tls: {block},"),
        ));
        assert!(
            errors.iter().any(|e| e.contains(message)),
            "{block}: {errors:?}"
        );
    }
}

#[test]
fn a_header_limit_on_the_header_the_routes_api_keys_travel_in_is_refused() {
    // ext-authz removes the key's header before the rate-limit filter runs: such a rule
    // would never limit anything.
    let with_keys = GOOD.replace(
        "  partners:\n",
        "  keys: {type: api_key, header: X-Api-Key, keys_file: keys.yaml}\n  query-keys: {type: api_key, query: api_key, keys_file: keys.yaml}\n  partners:\n",
    );
    for auth in ["{provider: keys}", "{any_of: [main, keys]}"] {
        let text = with_keys.replace(
            "auth: {provider: main, scopes: [\"invoices:read\"]}",
            &format!("auth: {auth}"),
        );
        assert_error_at(
            &text,
            "28:30:",
            "API key provider \"keys\" reads its keys from that header",
        );
    }
    // Keys in the query leave the header alone.
    let text = with_keys.replace(
        "auth: {provider: main, scopes: [\"invoices:read\"]}",
        "auth: {provider: query-keys}",
    );
    let errors = tollgate_routes::parse("routes.yaml", &text).err();
    assert!(
        errors
            .as_ref()
            .is_none_or(|e| !e.to_string().contains("reads its keys")),
        "{errors:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Local rules (`mode: local`): Envoy's own token buckets.
// ---------------------------------------------------------------------------------------

/// GOOD with its client_ip rule made local, the line and column of which the tests below
/// name (line 25, the rule's flow mapping).
fn with_local_ip_rule(extra: &str) -> String {
    GOOD.replace(
        "      - {by: client_ip, requests: 20, per: second, burst: 40}\n",
        &format!(
            "      - {{by: client_ip, requests: 20, per: second, burst: 40, mode: local{extra}}}\n"
        ),
    )
}

#[test]
fn rules_are_global_by_default_and_local_when_asked() {
    let config = parse("routes.yaml", &with_local_ip_rule(", max_keys: 500")).expect("valid");
    let route = &config.routes[0];
    assert_eq!(route.rate_limits[0].mode, LimitMode::Global);
    assert_eq!(
        route.rate_limits[1].mode,
        LimitMode::Local { max_keys: 500 }
    );
    assert_eq!(route.rate_limits[1].algorithm, LimitAlgorithm::TokenBucket);
    let local: Vec<_> = route.local_rate_limits().map(|r| r.id.as_str()).collect();
    assert_eq!(local, ["client_ip"]);
    assert_eq!(route.global_rate_limits().count(), 3);
}

#[test]
fn a_local_rule_without_max_keys_keeps_the_default_number_of_buckets() {
    let config = parse("routes.yaml", &with_local_ip_rule("")).expect("valid");
    assert_eq!(
        config.routes[0].rate_limits[1].mode,
        LimitMode::Local {
            max_keys: DEFAULT_MAX_KEYS
        }
    );
    const { assert!(DEFAULT_MAX_KEYS > 20, "well above Envoy's own default") };
}

#[test]
fn a_local_rule_is_a_token_bucket_even_without_a_burst() {
    let text = GOOD.replace(
        "requests: 1000, per: minute}",
        "requests: 1000, per: minute, mode: local}",
    );
    let config = parse("routes.yaml", &text).expect("valid");
    assert_eq!(
        config.routes[0].rate_limits[0].algorithm,
        LimitAlgorithm::TokenBucket
    );
}

#[test]
fn a_window_algorithm_cannot_be_local() {
    for algorithm in ["fixed", "sliding"] {
        let text = GOOD.replace(
            "requests: 1000, per: minute}",
            &format!("requests: 1000, per: minute, algorithm: {algorithm}, mode: local}}"),
        );
        assert_error_at(
            &text,
            "24:64:",
            &format!(
                "algorithm {algorithm} in route \"invoices\" cannot be done with `mode: local`"
            ),
        );
    }
}

#[test]
fn max_keys_on_a_global_rule_is_rejected() {
    let text = GOOD.replace(
        "requests: 1000, per: minute}",
        "requests: 1000, per: minute, max_keys: 100}",
    );
    assert_error_at(
        &text,
        "24:63:",
        "max_keys in route \"invoices\" only goes with `mode: local`",
    );
    let explicit = GOOD.replace(
        "requests: 1000, per: minute}",
        "requests: 1000, per: minute, mode: global, max_keys: 100}",
    );
    assert_error_at(&explicit, "24:77:", "only goes with `mode: local`");
}

#[test]
fn max_keys_out_of_range_is_rejected() {
    assert_error_at(
        &with_local_ip_rule(", max_keys: 0"),
        "25:86:",
        "max_keys 0 is out of range",
    );
    assert_error_at(
        &with_local_ip_rule(", max_keys: 5000000"),
        "25:86:",
        "max_keys 5000000 is out of range",
    );
}

#[test]
fn an_unknown_mode_is_rejected() {
    let text = GOOD.replace(
        "requests: 1000, per: minute}",
        "requests: 1000, per: minute, mode: nearby}",
    );
    assert_error_at(
        &text,
        "24:59:",
        "unknown rate limit mode \"nearby\": expected global or local",
    );
}

#[test]
fn a_local_quota_must_fit_envoys_32_bit_buckets() {
    let text = GOOD.replace(
        "requests: 1000, per: minute}",
        "requests: 5000000000, per: minute, mode: local}",
    );
    assert_error_at(
        &text,
        "24:34:",
        "requests 5000000000 is too many for `mode: local`",
    );
}

#[test]
fn a_route_with_only_local_rules_needs_no_rate_limit_service() {
    let text = GOOD
        .replace(
            "  rate_limit: {address: 127.0.0.1:8081, timeout: 50ms, failure_mode_deny: false, domain: tollgate}\n",
            "",
        )
        .replace("per: minute}", "per: minute, mode: local}")
        .replace("burst: 40}", "burst: 40, mode: local}")
        .replace("algorithm: fixed}", "mode: local}")
        .replace("internal: 5000/minute}\n", "internal: 5000/minute}\n        mode: local\n");
    let config = parse("routes.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.sidecars.rate_limit.is_none());
    assert_eq!(config.routes[0].local_rate_limits().count(), 4);
    // One global rule among them still needs the service, and the error names that rule.
    let mixed = text.replace(
        "requests: 1000, per: minute, mode: local}",
        "requests: 1000, per: minute}",
    );
    assert_error_at(&mixed, "24:9:", "sidecars.rate_limit is not configured");
}
