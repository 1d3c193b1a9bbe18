//! Auth provider types (`jwt`, `api_key`, `client_certificate`) and a route's `auth`:
//! one provider or `any_of` several, scopes and admitted consumers.

mod common;

use common::{assert_error_at, errors};

use tollgate_routes::parse;
use tollgate_routes::policy::{CertificateField, Credentials, KeyLocation};

const TEXT: &str = "version: 1
auth_providers:
  tokens:
    issuer: https://id.example.com
    audiences: [tollgate]
    jwks_file: jwks.json
    forward_claims: {tier: x-consumer-tier}
  partner-keys:
    type: api_key
    header: X-Api-Key
    keys_file: consumers/keys.yaml
    forward_claims: {tier: x-consumer-tier, plan: x-plan}
  query-keys: {type: api_key, query: api_key, keys_file: keys.yaml}
  partner-certs:
    type: client_certificate
    consumer_from: san_dns
    consumers:
      partner-a.example.com: {tier: premium, attributes: {plan: gold}}
services: {app: {endpoints: [\"127.0.0.1:3000\"]}}
routes:
  - name: partner-api
    match: {prefix: /partner/}
    service: app
    auth: {any_of: [partner-keys, partner-certs], consumers: [acme, partner-a.example.com]}
  - {name: tokens, match: {prefix: /t/}, service: app, auth: {provider: tokens, scopes: [read]}}
sidecars:
  ext_authz: {address: 127.0.0.1:9191}
";

#[test]
fn each_provider_type_parses_into_its_credentials() {
    let config = parse("routes.yaml", TEXT).expect("valid");
    let keys = &config.auth_providers["partner-keys"];
    let Credentials::ApiKey(api_key) = &keys.credentials else {
        panic!("an api_key provider: {keys:?}");
    };
    assert_eq!(api_key.location, KeyLocation::Header("x-api-key".into()));
    assert_eq!(api_key.keys_file.to_str(), Some("consumers/keys.yaml"));
    assert_eq!(keys.forward_claims["plan"], "x-plan");
    assert_eq!(keys.credential_header(), Some("x-api-key"));
    let Credentials::ApiKey(query) = &config.auth_providers["query-keys"].credentials else {
        panic!("an api_key provider");
    };
    assert_eq!(query.location, KeyLocation::Query("api_key".into()));
    let certs = &config.auth_providers["partner-certs"];
    let Credentials::ClientCertificate(certificates) = &certs.credentials else {
        panic!("a client_certificate provider: {certs:?}");
    };
    assert_eq!(certificates.consumer_from, CertificateField::SanDns);
    let partner = &certificates.consumers.as_ref().expect("listed")["partner-a.example.com"];
    assert_eq!(partner.tier.as_deref(), Some("premium"));
    assert_eq!(partner.claim("plan"), Some("gold"));
    assert_eq!(certs.credential_header(), None);
    assert!(config.auth_providers["tokens"].jwt().is_some());

    let auth = config.routes[0].auth.as_ref().expect("auth");
    assert_eq!(auth.providers, ["partner-keys", "partner-certs"]);
    assert_eq!(auth.consumers, ["acme", "partner-a.example.com"]);
    let auth = config.routes[1].auth.as_ref().expect("auth");
    assert_eq!(auth.providers, ["tokens"]);
    assert!(auth.consumers.is_empty());
    // Headers a client may not send: every provider's forwarded ones and the consumer id.
    assert_eq!(
        tollgate_routes::policy::identity_headers(&config.auth_providers),
        ["x-consumer-id", "x-consumer-tier", "x-plan"]
    );
}

#[test]
fn an_unknown_type_and_fields_of_another_type_are_refused_where_written() {
    assert_error_at(
        &TEXT.replace("type: api_key\n", "type: apikey\n"),
        "9:11:",
        "unknown type \"apikey\": expected jwt, api_key or client_certificate",
    );
    assert_error_at(
        &TEXT.replace("    consumer_from: san_dns\n", "    consumer_from: san_dns\n    issuer: x\n"),
        "17:13:",
        "auth provider \"partner-certs\": issuer belongs to type jwt, and this provider has type client_certificate",
    );
    // A JWT provider with `header` means a forgotten `type: api_key`.
    assert_error_at(
        &TEXT.replace(
            "    jwks_file: jwks.json\n",
            "    jwks_file: jwks.json\n    header: x-key\n",
        ),
        "7:13:",
        "header belongs to type api_key, and this provider has type jwt",
    );
}

#[test]
fn an_api_key_provider_needs_one_place_for_the_key_and_a_keys_file() {
    assert_error_at(
        &TEXT.replace(
            "{type: api_key, query: api_key, keys_file: keys.yaml}",
            "{type: api_key, keys_file: keys.yaml}",
        ),
        "13:15:",
        "auth provider \"query-keys\" needs a header or a query parameter to read the key from",
    );
    assert_error_at(
        &TEXT.replace(
            "query: api_key, keys_file",
            "query: api_key, header: x-k, keys_file",
        ),
        "13:38:",
        "give header or query, not both",
    );
    assert_error_at(
        &TEXT.replace(
            "{type: api_key, query: api_key, keys_file: keys.yaml}",
            "{type: api_key, query: api_key}",
        ),
        "13:15:",
        "needs a keys_file",
    );
    assert_error_at(
        &TEXT.replace("header: X-Api-Key", "header: Host"),
        "10:13:",
        "the key cannot travel in \"host\": that header is reserved",
    );
    // A header ext-authz sets (and strips from clients first) would never carry a key.
    assert_error_at(
        &TEXT.replace("header: X-Api-Key", "header: x-plan"),
        "10:13:",
        "\"x-plan\" is forwarded upstream as an identity header, so it cannot carry a key",
    );
}

#[test]
fn a_certificate_provider_needs_a_known_field_and_valid_consumers() {
    assert_error_at(
        &TEXT.replace("consumer_from: san_dns", "consumer_from: email"),
        "16:20:",
        "unknown consumer_from \"email\": expected san_dns, san_uri or subject_cn",
    );
    assert_error_at(
        &TEXT.replace("    consumer_from: san_dns\n", ""),
        "15:5:",
        "needs consumer_from",
    );
    assert_error_at(
        &TEXT.replace("partner-a.example.com: {tier", "\"partner a\": {tier"),
        "18:20:",
        "consumer \"partner a\": expected printable ASCII without spaces",
    );
}

#[test]
fn a_route_names_one_provider_or_any_of_known_ones_and_scopes_only_for_tokens() {
    assert_error_at(
        &TEXT.replace(
            "any_of: [partner-keys, partner-certs]",
            "any_of: [partner-keys, partner-keys]",
        ),
        "24:35:",
        "auth provider \"partner-keys\" is listed twice",
    );
    assert_error_at(
        &TEXT.replace(
            "any_of: [partner-keys, partner-certs]",
            "any_of: [partner-keys, nobody]",
        ),
        "24:35:",
        "unknown auth provider \"nobody\" in route \"partner-api\"",
    );
    assert_error_at(
        &TEXT.replace("any_of: [partner-keys, partner-certs]", "any_of: []"),
        "24:20:",
        "any_of is empty",
    );
    assert_error_at(
        &TEXT.replace(
            "auth: {any_of: [partner-keys, partner-certs],",
            "auth: {provider: tokens, any_of: [partner-keys],",
        ),
        "24:38:",
        "give provider or any_of, not both",
    );
    let scoped = TEXT.replace("consumers: [acme, partner-a.example.com]", "scopes: [read]");
    assert_error_at(
        &scoped,
        "24:60:",
        "scopes apply to JWT providers only, and \"partner-keys\" has type api_key",
    );
    assert_eq!(errors(&scoped).len(), 1);
    assert_error_at(
        &TEXT.replace("consumers: [acme, partner-a.example.com]", "consumers: []"),
        "24:62:",
        "consumers is empty",
    );
}

#[test]
fn certificates_are_accepted_only_on_routes_served_where_listeners_ask_for_them() {
    let listeners = "listeners:
  - {name: public, address: 127.0.0.1:8080}
  - name: partners
    address: 127.0.0.1:8443
    tls: {cert_file: gw.pem, key_file: gw-key.pem, client_ca_file: partners-ca.pem}
";
    let with_listeners =
        |text: &str| text.replacen("version: 1\n", &format!("version: 1\n{listeners}"), 1);
    // any_of with keys: keys work on `public`, certificates on `partners`.
    parse("routes.yaml", &with_listeners(TEXT)).expect("valid");
    // Certificates alone, on every listener: `public` would refuse every request.
    let only_certificates = with_listeners(&TEXT.replace(
        "any_of: [partner-keys, partner-certs]",
        "provider: partner-certs",
    ));
    assert_error_at(
        &only_certificates,
        "29:11:",
        "route \"partner-api\" accepts only client certificates, but listener \"public\" serving it has no tls.client_ca_file",
    );
    let on_partners = only_certificates.replace(
        "  - name: partner-api\n",
        "  - name: partner-api\n    listener: partners\n",
    );
    parse("routes.yaml", &on_partners).expect("served only where certificates are asked for");
    // No listener asks for certificates at all.
    assert_error_at(
        &with_listeners(TEXT).replace(", client_ca_file: partners-ca.pem", ""),
        "29:11:",
        "provider \"partner-certs\" reads client certificates, but no listener serving the route has tls.client_ca_file",
    );
}

#[test]
fn a_jwt_provider_is_enforced_by_ext_authz_unless_it_says_envoy() {
    use tollgate_routes::policy::Enforcement;
    let config = parse("routes.yaml", TEXT).expect("valid");
    let tokens = config.auth_providers["tokens"].jwt().expect("jwt");
    assert_eq!(tokens.enforce, Enforcement::ExtAuthz);
    let native = TEXT.replace(
        "    jwks_file: jwks.json\n",
        "    jwks_file: jwks.json\n    enforce: envoy\n",
    );
    let config = parse("routes.yaml", &native).expect("valid");
    assert!(config.auth_providers["tokens"].enforced_by_envoy());
    assert!(!config.auth_providers["partner-keys"].enforced_by_envoy());
}

#[test]
fn a_route_enforced_by_envoy_alone_needs_no_ext_authz_sidecar() {
    let native_only = "version: 1
auth_providers:
  tokens: {issuer: https://id.example.com, audiences: [gw], jwks_file: jwks.json, enforce: envoy}
services: {app: {endpoints: [\"127.0.0.1:3000\"]}}
routes:
  - {name: tokens, match: {prefix: /t/}, service: app, auth: {provider: tokens, scopes: [read]}}
";
    parse("routes.yaml", native_only).expect("no sidecar needed");
    let by_authz = native_only.replace(", enforce: envoy}", "}");
    assert_error_at(
        &by_authz,
        "6:62:",
        "requires auth but sidecars.ext_authz is not configured",
    );
}

#[test]
fn what_envoy_cannot_enforce_is_refused_at_its_line() {
    assert_error_at(
        &TEXT.replace(
            "    keys_file: consumers/keys.yaml\n",
            "    keys_file: consumers/keys.yaml\n    enforce: envoy\n",
        ),
        "12:14:",
        "enforce belongs to type jwt, and this provider has type api_key",
    );
    assert_error_at(
        &TEXT.replace(
            "    jwks_file: jwks.json\n",
            "    jwks_file: jwks.json\n    enforce: natively\n",
        ),
        "7:14:",
        "unknown enforce \"natively\": expected ext_authz or envoy",
    );
    assert_error_at(
        &TEXT.replace(
            "    jwks_file: jwks.json\n",
            "    shared_secret_env: SECRET\n    algorithms: [HS256]\n    enforce: envoy\n",
        ),
        "8:14:",
        "enforce: envoy needs jwks_file or jwks_uri",
    );
    // A route whose any_of mixes the two: one filter decides each request.
    let mixed = TEXT
        .replace(
            "    jwks_file: jwks.json\n",
            "    jwks_file: jwks.json\n    enforce: envoy\n",
        )
        .replace(
            "auth: {provider: tokens, scopes: [read]}",
            "auth: {any_of: [tokens, partner-keys]}",
        );
    assert_error_at(
        &mixed,
        "26:62:",
        "its providers are enforced by envoy and by ext_authz",
    );
}
