//! Providers Envoy enforces (`enforce: envoy`) as Envoy resources: jwt_authn with the key set
//! inline, the RBAC filters for claims and scopes, and the replies that make Envoy's refusals
//! ext-authz's.

use std::path::Path;

use prost::Message;
use tollgate_proto::envoy::config::core::v3::data_source::Specifier;
use tollgate_proto::envoy::config::rbac::v3::rbac::Action as RbacAction;
use tollgate_proto::envoy::config::route::v3::RouteConfiguration;
use tollgate_proto::envoy::extensions::filters::http::jwt_authn::v3::{
    jwt_provider::JwksSourceSpecifier, jwt_requirement::RequiresType,
    per_route_config::RequirementSpecifier, JwtAuthentication, PerRouteConfig,
};
use tollgate_proto::envoy::extensions::filters::http::rbac::v3::RbacPerRoute;
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use tollgate_routes::FileSource;

use super::super::tests::{decode, manager, route_named, switched_off};
use crate::snapshot::{type_url, Snapshot};
use crate::translate::translate;

const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

/// `jwks.json` holds [`JWKS`]; nothing else exists.
struct KeySet;

impl FileSource for KeySet {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        match path.to_str() {
            Some("jwks.json") => Ok(JWKS.as_bytes().to_vec()),
            _ => Err(std::io::ErrorKind::NotFound.into()),
        }
    }
}

/// Two native providers (one any_of route takes both), one ext-authz provider, and a public
/// route, on one listener.
const MIXED: &str = "\
version: 1
listeners: [{name: public, address: 0.0.0.0:8080}]
services: {app: {endpoints: [\"127.0.0.1:3000\"]}}
auth_providers:
  native:
    issuer: https://id.example.com
    audiences: [api]
    jwks_file: jwks.json
    algorithms: [ES256]
    consumer_claim: client_id
    forward_claims: {tier: x-tier}
    enforce: envoy
  partner:
    {issuer: https://partner.example.com, audiences: [api], jwks_file: jwks.json, token: {cookie: session}, enforce: envoy}
  sidecar: {issuer: https://id.example.com, audiences: [api], jwks_file: jwks.json}
routes:
  - {name: native, match: {prefix: /n/}, service: app, auth: {provider: native, scopes: [read, write]}}
  - {name: either, match: {prefix: /e/}, service: app, auth: {any_of: [native, partner]}}
  - {name: sidecar, match: {prefix: /s/}, service: app, auth: {provider: sidecar}}
  - {name: open, match: {prefix: /o/}, service: app}
sidecars:
  ext_authz: {address: 127.0.0.1:9191}
";

fn mixed() -> Snapshot {
    let (config, certificates) =
        tollgate_routes::parse_with_files("routes.yaml", MIXED, &KeySet).expect("valid");
    translate(&config, &certificates)
}

fn typed<M: Message + Default>(any: &tollgate_proto::google::protobuf::Any) -> M {
    M::decode(any.value.as_slice()).expect("decodes")
}

#[test]
fn envoy_checks_tokens_before_ext_authz_and_after_cors_on_the_listener() {
    let names: Vec<String> = manager(&mixed(), "public")
        .http_filters
        .iter()
        .map(|f| f.name.clone())
        .collect();
    let position = |name: &str| names.iter().position(|n| n == name);
    let jwt = position("envoy.filters.http.jwt_authn").expect("jwt_authn runs");
    let claims = position("tollgate.jwt_claims").expect("the claims filter runs");
    let scopes = position("tollgate.jwt_scopes").expect("the scopes filter runs");
    let authz = position("envoy.filters.http.ext_authz").expect("ext_authz still runs");
    assert!(
        jwt < claims && claims < scopes && scopes < authz,
        "{names:?}"
    );
}

#[test]
fn the_provider_carries_its_key_set_inline_and_forwards_identity_as_ext_authz_does() {
    let hcm = manager(&mixed(), "public");
    let filter = hcm
        .http_filters
        .iter()
        .find(|f| f.name == "envoy.filters.http.jwt_authn")
        .expect("jwt_authn");
    let Some(ConfigType::TypedConfig(any)) = &filter.config_type else {
        panic!("typed config")
    };
    let config: JwtAuthentication = typed(any);
    let mut providers: Vec<&String> = config.providers.keys().collect();
    providers.sort();
    assert_eq!(
        providers,
        ["native", "partner"],
        "only the providers Envoy enforces"
    );
    let native = &config.providers["native"];
    let Some(JwksSourceSpecifier::LocalJwks(jwks)) = &native.jwks_source_specifier else {
        panic!("the key set inline")
    };
    assert_eq!(
        jwks.specifier,
        Some(Specifier::InlineString(JWKS.to_string()))
    );
    let headers: Vec<(&str, &str)> = native
        .claim_to_headers
        .iter()
        .map(|c| (c.claim_name.as_str(), c.header_name.as_str()))
        .collect();
    assert_eq!(
        headers,
        [("client_id", "x-consumer-id"), ("tier", "x-tier")]
    );
    assert!(native.forward, "the token goes upstream, as with ext-authz");
    assert_eq!(native.from_headers[0].name, "authorization");
    assert_eq!(config.providers["partner"].from_cookies, ["session"]);
    assert!(
        config.strip_failure_response,
        "the mappers write the replies"
    );
    let either = &config.requirement_map["native|partner"];
    assert!(
        matches!(&either.requires_type, Some(RequiresType::RequiresAny(any)) if any.requirements.len() == 2)
    );
}

#[test]
fn each_route_is_checked_by_one_filter_or_none() {
    let routes: RouteConfiguration = decode(&mixed(), type_url::ROUTE, "public");
    let native = route_named(&routes, "native");
    let requirement: PerRouteConfig =
        typed(&native.typed_per_filter_config["envoy.filters.http.jwt_authn"]);
    assert_eq!(
        requirement.requirement_specifier,
        Some(RequirementSpecifier::RequirementName("native".into()))
    );
    assert!(switched_off(
        &native.typed_per_filter_config["envoy.filters.http.ext_authz"]
    ));
    let scopes: RbacPerRoute = typed(&native.typed_per_filter_config["tollgate.jwt_scopes"]);
    let rules = scopes.rbac.and_then(|r| r.rules).expect("rules");
    assert_eq!(rules.action, RbacAction::Deny as i32);
    assert!(rules.policies.contains_key("insufficient_scope"));
    let claims: RbacPerRoute = typed(&native.typed_per_filter_config["tollgate.jwt_claims"]);
    let mut policies: Vec<String> = claims
        .rbac
        .and_then(|r| r.rules)
        .expect("rules")
        .policies
        .into_keys()
        .collect();
    policies.sort();
    assert_eq!(
        policies,
        [
            "algorithm_not_allowed",
            "missing_consumer",
            "missing_expiry",
            "token_too_large"
        ]
    );
    assert!(
        native.metadata.is_some(),
        "the scopes, for the 403's challenge"
    );

    let sidecar = route_named(&routes, "sidecar");
    assert!(switched_off(
        &sidecar.typed_per_filter_config["envoy.filters.http.jwt_authn"]
    ));
    assert!(
        sidecar.typed_per_filter_config["envoy.filters.http.ext_authz"]
            .type_url
            .ends_with("ExtAuthzPerRoute"),
        "checked by ext-authz"
    );
    let open = route_named(&routes, "open");
    for filter in [
        "envoy.filters.http.jwt_authn",
        "tollgate.jwt_claims",
        "tollgate.jwt_scopes",
        "envoy.filters.http.ext_authz",
    ] {
        assert!(
            switched_off(&open.typed_per_filter_config[filter]),
            "{filter}"
        );
    }
}

#[test]
fn a_listener_with_native_providers_maps_their_refusals_first() {
    let mappers = manager(&mixed(), "public")
        .local_reply_config
        .expect("local replies")
        .mappers;
    let statuses: Vec<u32> = mappers
        .iter()
        .filter_map(|m| m.status_code.map(|s| s.value))
        .take(2)
        .collect();
    assert_eq!(
        statuses,
        [401, 401],
        "missing and oversized tokens come first"
    );
    let plain = translate(
        &tollgate_routes::parse(
            "routes.yaml",
            "version: 1\nlisteners: [{name: public, address: 0.0.0.0:8080}]\nservices: {app: {endpoints: [\"127.0.0.1:3000\"]}}\nroutes: [{name: r, match: {prefix: /}, service: app}]\n",
        )
        .expect("valid"),
        &Default::default(),
    );
    let plain_mappers = manager(&plain, "public")
        .local_reply_config
        .expect("replies")
        .mappers;
    assert!(
        plain_mappers.len() < mappers.len(),
        "a listener without native providers keeps only the gateway's mappers"
    );
}

#[test]
fn native_resources_hash_the_same_every_time() {
    let versions: std::collections::HashSet<String> =
        (0..20).map(|_| mixed().version().to_string()).collect();
    assert_eq!(versions.len(), 1, "{versions:?}");
}
