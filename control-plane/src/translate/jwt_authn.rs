//! JWT providers Envoy enforces itself (`enforce: envoy`): Envoy's `jwt_authn` filter checks
//! the token, then two RBAC filters what jwt_authn cannot require, with no call to ext-authz.
//! The client gets ext-authz's answers, byte for byte in the cases the tests compare.
//!
//! - `jwt_authn` holds every such provider used on the listener (issuer, audiences, the key
//!   set from `jwks_file` inline, where the token travels, the clock skew, the claims forwarded
//!   as headers) and one requirement per distinct set of providers a route accepts (`any_of`
//!   becomes `requires_any`); each route names its requirement, or turns the filter off. The
//!   token's header and payload are kept in the request's dynamic metadata, its
//!   space-delimited `scope` claim as a list.
//! - [`CLAIMS_FILTER_NAME`] refuses, with DENY policies, a token ext-authz would refuse and
//!   jwt_authn accepts: one without `exp`, one signed with an algorithm the provider does not
//!   allow (jwt_authn has no allow-list), one without the consumer claim.
//! - [`SCOPES_FILTER_NAME`] refuses a token without the route's scopes, or whose consumer the
//!   route does not admit.
//!
//! Each refusal is told apart by its response code details (jwt_authn's message, or the
//! DENY policy's name), which a CEL filter reads in the connection manager's local reply
//! mappers ([`reply_mappers`]); they set ext-authz's status, challenge, headers and body.
//! `strip_failure_response` leaves jwt_authn's own replies bare for them.

use std::collections::{BTreeMap, BTreeSet};

use tollgate_proto::envoy::config::accesslog::v3::{
    access_log_filter::FilterSpecifier, extension_filter, AccessLogFilter, ExtensionFilter,
};
use tollgate_proto::envoy::config::core::v3::{
    data_source, header_value_option::HeaderAppendAction, substitution_format_string, DataSource,
    HeaderValue, HeaderValueOption, Metadata, SubstitutionFormatString,
};
use tollgate_proto::envoy::config::rbac::v3::{
    permission, principal, rbac::Action, Permission, Policy, Principal, Rbac as RbacRules,
    SourcedMetadata,
};
use tollgate_proto::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter;
use tollgate_proto::envoy::extensions::filters::http::jwt_authn::v3::{
    jwt_provider::{JwksSourceSpecifier, NormalizePayload},
    jwt_requirement::RequiresType,
    per_route_config::RequirementSpecifier,
    JwtAuthentication, JwtCacheConfig, JwtClaimToHeader, JwtHeader, JwtProvider as EnvoyProvider,
    JwtRequirement, JwtRequirementOrList, PerRouteConfig,
};
use tollgate_proto::envoy::extensions::filters::http::rbac::v3::{Rbac, RbacPerRoute};
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3::ResponseMapper;
use tollgate_proto::envoy::r#type::matcher::v3::{
    list_matcher, metadata_matcher::path_segment::Segment, metadata_matcher::PathSegment,
    string_matcher::MatchPattern, value_matcher, ListMatcher, MetadataMatcher, RegexMatcher,
    StringMatcher, ValueMatcher,
};
use tollgate_proto::google::api::expr::v1alpha1::{
    constant::ConstantKind,
    expr::{Call, ExprKind, Ident, Select},
    Constant, Expr,
};
use tollgate_proto::google::protobuf::{value::Kind, Any, Struct, UInt32Value, Value};
use tollgate_routes::policy::{AuthProvider, JwtProvider, RouteAuth, TokenSource, CONSUMER_HEADER};
use tollgate_routes::{Certificates, Route};

use super::{any, proto_map};

pub(super) const FILTER_NAME: &str = "envoy.filters.http.jwt_authn";
/// RBAC: the claims every token must have (the first RBAC filter is `allow_ips`).
pub(super) const CLAIMS_FILTER_NAME: &str = "tollgate.jwt_claims";
/// RBAC: the route's scopes and admitted consumers.
pub(super) const SCOPES_FILTER_NAME: &str = "tollgate.jwt_scopes";
/// Where in the dynamic metadata of `jwt_authn` the verified payload and header are kept.
const PAYLOAD_KEY: &str = "jwt_payload";
const HEADER_KEY: &str = "jwt_header";
/// The realm of every challenge: tollgate-ext-authz's default (its `--realm`).
const REALM: &str = "tollgate";
/// Where route metadata carries a route's scopes, for the challenge of a 403.
const METADATA_NAMESPACE: &str = "tollgate";
const SCOPES_METADATA_KEY: &str = "scopes";
/// Verified tokens Envoy remembers per worker, so a token seen again costs no signature
/// check (Envoy's default is 100).
const TOKEN_CACHE_SIZE: u32 = 1_000;

/// Whether Envoy itself checks `route`'s auth: every provider it accepts says `enforce:
/// envoy` (validation refuses a mix).
pub(super) fn enforced_by_envoy(route: &Route, providers: &BTreeMap<String, AuthProvider>) -> bool {
    route.auth.as_ref().is_some_and(|auth| {
        auth.providers.iter().all(|name| {
            providers
                .get(name)
                .is_some_and(AuthProvider::enforced_by_envoy)
        })
    })
}

/// The listener's `jwt_authn`: the providers its `routes` accept, and a requirement per
/// set of them.
pub(super) fn filter(
    routes: &[&Route],
    providers: &BTreeMap<String, AuthProvider>,
    certificates: &Certificates,
) -> Any {
    let auths: Vec<&RouteAuth> = routes
        .iter()
        .filter(|r| enforced_by_envoy(r, providers))
        .filter_map(|r| r.auth.as_ref())
        .collect();
    let used: BTreeSet<&str> = auths
        .iter()
        .flat_map(|auth| auth.providers.iter().map(String::as_str))
        .collect();
    any(&JwtAuthentication {
        providers: proto_map(used.iter().filter_map(|name| {
            let provider = providers.get(*name)?;
            let jwt = provider.jwt()?;
            Some((
                name.to_string(),
                envoy_provider(provider, jwt, certificates.provider_jwks(name)),
            ))
        })),
        requirement_map: proto_map(
            auths
                .iter()
                .map(|auth| (requirement_name(auth), requirement(&auth.providers))),
        ),
        // The mapper writes the gateway's own reply; Envoy's body and challenge would only
        // have to be taken off again.
        strip_failure_response: true,
        ..Default::default()
    })
}

fn envoy_provider(provider: &AuthProvider, jwt: &JwtProvider, jwks: Option<&str>) -> EnvoyProvider {
    let (from_headers, from_params, from_cookies) = match &jwt.token {
        TokenSource::BearerHeader(name) => (
            vec![JwtHeader {
                name: name.clone(),
                value_prefix: "Bearer ".to_string(),
            }],
            vec![],
            vec![],
        ),
        TokenSource::Query(name) => (vec![], vec![name.clone()], vec![]),
        TokenSource::Cookie(name) => (vec![], vec![], vec![name.clone()]),
    };
    let claim_to_headers = std::iter::once(JwtClaimToHeader {
        header_name: CONSUMER_HEADER.to_string(),
        claim_name: jwt.consumer_claim.clone(),
        ..Default::default()
    })
    .chain(
        provider
            .forward_claims
            .iter()
            .map(|(claim, header)| JwtClaimToHeader {
                header_name: header.clone(),
                claim_name: claim.clone(),
                ..Default::default()
            }),
    )
    .collect();
    EnvoyProvider {
        issuer: jwt.issuer.clone(),
        audiences: jwt.audiences.clone(),
        // The token goes on upstream, as with ext-authz.
        forward: true,
        from_headers,
        from_params,
        from_cookies,
        payload_in_metadata: PAYLOAD_KEY.to_string(),
        header_in_metadata: HEADER_KEY.to_string(),
        normalize_payload_in_metadata: Some(NormalizePayload {
            space_delimited_claims: vec!["scope".to_string()],
        }),
        clock_skew_seconds: u32::try_from(jwt.clock_skew.as_secs()).unwrap_or(u32::MAX),
        jwt_cache_config: Some(JwtCacheConfig {
            jwt_cache_size: TOKEN_CACHE_SIZE,
            ..Default::default()
        }),
        claim_to_headers,
        jwks_source_specifier: Some(JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(data_source::Specifier::InlineString(
                jwks.unwrap_or(r#"{"keys":[]}"#).to_string(),
            )),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The requirement for a set of providers: the one, or any of them.
fn requirement(providers: &[String]) -> JwtRequirement {
    let one = |name: &String| JwtRequirement {
        requires_type: Some(RequiresType::ProviderName(name.clone())),
    };
    match providers {
        [single] => one(single),
        several => JwtRequirement {
            requires_type: Some(RequiresType::RequiresAny(JwtRequirementOrList {
                requirements: several.iter().map(one).collect(),
            })),
        },
    }
}

fn requirement_name(auth: &RouteAuth) -> String {
    auth.providers.join("|")
}

/// A route Envoy checks: its requirement.
pub(super) fn per_route(auth: &RouteAuth) -> Any {
    any(&PerRouteConfig {
        requirement_specifier: Some(RequirementSpecifier::RequirementName(requirement_name(
            auth,
        ))),
    })
}

/// Route metadata naming the route's scopes, which the challenge of a 403 repeats (RFC 6750
/// §3: `scope`), as ext-authz's does.
pub(super) fn scopes_metadata(scopes: &[String]) -> Metadata {
    let scopes = Value {
        kind: Some(Kind::StringValue(scopes.join(" "))),
    };
    Metadata {
        filter_metadata: proto_map([(
            METADATA_NAMESPACE.to_string(),
            Struct {
                fields: proto_map([(SCOPES_METADATA_KEY.to_string(), scopes)]),
            },
        )]),
        ..Default::default()
    }
}

/// The listener's RBAC filters: no rules, so each passes every request but those of routes
/// that set their own.
pub(super) fn rules_filter() -> Any {
    any(&Rbac::default())
}

/// Whether `auth` asks for anything of a verified token beyond its validity.
pub(super) fn has_token_rules(auth: &RouteAuth) -> bool {
    !auth.scopes.is_empty() || !auth.consumers.is_empty()
}

/// What every token on a route must carry beyond what jwt_authn checks: `exp`, a signing
/// algorithm one of the route's providers allows, and the consumer claim.
pub(super) fn claims_per_route(
    auth: &RouteAuth,
    providers: &BTreeMap<String, AuthProvider>,
) -> Any {
    let jwts: Vec<&JwtProvider> = auth
        .providers
        .iter()
        .filter_map(|p| providers.get(p)?.jwt())
        .collect();
    let algorithms: BTreeSet<&str> = jwts
        .iter()
        .flat_map(|jwt| jwt.algorithms.iter().map(|a| a.as_str()))
        .collect();
    let consumer_claims: BTreeSet<&str> =
        jwts.iter().map(|jwt| jwt.consumer_claim.as_str()).collect();
    let allowed = algorithms
        .iter()
        .map(|a| regex::escape(a))
        .collect::<Vec<_>>()
        .join("|");
    let token_headers: BTreeSet<&str> = jwts
        .iter()
        .filter_map(|jwt| match &jwt.token {
            TokenSource::BearerHeader(name) => Some(name.as_str()),
            TokenSource::Query(_) | TokenSource::Cookie(_) => None,
        })
        .collect();
    let mut policies = deny_policies([
        ("missing_expiry", not(claim_present(PAYLOAD_KEY, "exp"))),
        (
            "algorithm_not_allowed",
            not(metadata_is(
                HEADER_KEY,
                "alg",
                ValueMatcher {
                    match_pattern: Some(value_matcher::MatchPattern::StringMatch(StringMatcher {
                        match_pattern: Some(MatchPattern::SafeRegex(RegexMatcher {
                            regex: format!("^(?:{allowed})$"),
                            ..Default::default()
                        })),
                        ..Default::default()
                    })),
                },
            )),
        ),
        (
            "missing_consumer",
            not(or(consumer_claims
                .iter()
                .map(|claim| claim_present(PAYLOAD_KEY, claim))
                .collect())),
        ),
    ]);
    if let Some(condition) = oversized_token(&token_headers) {
        policies.insert(
            "token_too_large".to_string(),
            Policy {
                condition: Some(condition),
                ..any_request(Principal {
                    identifier: Some(principal::Identifier::Any(true)),
                })
            },
        );
    }
    deny_rules(policies)
}

/// ext-authz refuses a token over 8 KiB before any cryptography; jwt_authn checks any size
/// (bounded only by the request's headers). As CEL: a header carrying `Bearer ` and more than
/// 8 KiB, `size(request.headers['NAME']) > 8199 || …`, for each header a token may travel in.
/// A header the request lacks makes its term an error, which leaves the policy unmatched.
fn oversized_token(headers: &BTreeSet<&str>) -> Option<Expr> {
    const LIMIT: i64 = 8 * 1024 + "Bearer ".len() as i64;
    let call = |function: &str, args: Vec<Expr>| Expr {
        expr_kind: Some(ExprKind::CallExpr(Box::new(Call {
            function: function.to_string(),
            args,
            ..Default::default()
        }))),
        ..Default::default()
    };
    let constant = |kind: ConstantKind| Expr {
        expr_kind: Some(ExprKind::ConstExpr(Constant {
            constant_kind: Some(kind),
        })),
        ..Default::default()
    };
    let request_headers = Expr {
        expr_kind: Some(ExprKind::SelectExpr(Box::new(Select {
            operand: Some(Box::new(Expr {
                expr_kind: Some(ExprKind::IdentExpr(Ident {
                    name: "request".to_string(),
                })),
                ..Default::default()
            })),
            field: "headers".to_string(),
            ..Default::default()
        }))),
        ..Default::default()
    };
    headers
        .iter()
        .map(|name| {
            let value = call(
                "_[_]",
                vec![
                    request_headers.clone(),
                    constant(ConstantKind::StringValue(name.to_string())),
                ],
            );
            call(
                "_>_",
                vec![
                    call("size", vec![value]),
                    constant(ConstantKind::Int64Value(LIMIT)),
                ],
            )
        })
        .reduce(|either, or| call("_||_", vec![either, or]))
}

/// A route's scopes and consumers: every scope in the token's `scope` (space-delimited) or
/// `scp` (a list) claim, as ext-authz reads them, and a consumer among those admitted.
pub(super) fn scopes_per_route(
    auth: &RouteAuth,
    providers: &BTreeMap<String, AuthProvider>,
) -> Any {
    let mut policies = Vec::new();
    if !auth.scopes.is_empty() {
        let every_scope = and(auth
            .scopes
            .iter()
            .map(|scope| {
                or(["scope", "scp"]
                    .into_iter()
                    .map(|claim| metadata_is(PAYLOAD_KEY, claim, in_list(scope)))
                    .collect())
            })
            .collect());
        policies.push(("insufficient_scope", not(every_scope)));
    }
    if !auth.consumers.is_empty() {
        let claims: BTreeSet<&str> = auth
            .providers
            .iter()
            .filter_map(|p| providers.get(p)?.jwt())
            .map(|jwt| jwt.consumer_claim.as_str())
            .collect();
        let admitted = or(claims
            .iter()
            .flat_map(|claim| {
                auth.consumers
                    .iter()
                    .map(move |consumer| metadata_is(PAYLOAD_KEY, claim, exact(consumer)))
            })
            .collect());
        policies.push(("consumer_not_allowed", not(admitted)));
    }
    deny(policies)
}

/// Policies by name, each matching any request from its principal.
fn deny_policies<'a>(
    policies: impl IntoIterator<Item = (&'a str, Principal)>,
) -> BTreeMap<String, Policy> {
    policies
        .into_iter()
        .map(|(name, principal)| (name.to_string(), any_request(principal)))
        .collect()
}

fn any_request(principal: Principal) -> Policy {
    Policy {
        permissions: vec![Permission {
            rule: Some(permission::Rule::Any(true)),
        }],
        principals: vec![principal],
        ..Default::default()
    }
}

/// A route setting of DENY policies: a request any of them matches is refused, with the
/// policy's name in its response code details.
fn deny_rules(policies: BTreeMap<String, Policy>) -> Any {
    any(&RbacPerRoute {
        rbac: Some(Rbac {
            rules: Some(RbacRules {
                action: Action::Deny as i32,
                policies: proto_map(policies),
                ..Default::default()
            }),
            ..Default::default()
        }),
    })
}

fn deny<'a>(policies: impl IntoIterator<Item = (&'a str, Principal)>) -> Any {
    deny_rules(deny_policies(policies))
}

fn or(ids: Vec<Principal>) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::OrIds(principal::Set { ids })),
    }
}

fn and(ids: Vec<Principal>) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::AndIds(principal::Set { ids })),
    }
}

fn not(id: Principal) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::NotId(Box::new(id))),
    }
}

fn exact(value: &str) -> ValueMatcher {
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::StringMatch(StringMatcher {
            match_pattern: Some(MatchPattern::Exact(value.to_string())),
            ..Default::default()
        })),
    }
}

/// A list holding `value`.
fn in_list(value: &str) -> ValueMatcher {
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(
            ListMatcher {
                match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(exact(value)))),
            },
        ))),
    }
}

fn claim_present(key: &str, claim: &str) -> Principal {
    metadata_is(
        key,
        claim,
        ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::PresentMatch(true)),
        },
    )
}

/// The verified token's `key` (payload or header) has a `field` that `matcher` accepts.
fn metadata_is(key: &str, field: &str, matcher: ValueMatcher) -> Principal {
    // The metadata source defaults to the request's dynamic metadata, where jwt_authn
    // writes the token.
    Principal {
        identifier: Some(principal::Identifier::SourcedMetadata(SourcedMetadata {
            metadata_matcher: Some(MetadataMatcher {
                filter: FILTER_NAME.to_string(),
                path: [key, field]
                    .into_iter()
                    .map(|key| PathSegment {
                        segment: Some(Segment::Key(key.to_string())),
                    })
                    .collect(),
                value: Some(matcher),
                invert: false,
            }),
            ..Default::default()
        })),
    }
}

/// One refusal as ext-authz answers it.
struct Refusal {
    /// The response code details that name it: jwt_authn's message (spaces as `_`) or a
    /// DENY policy's name.
    details: Details,
    status: u32,
    /// The RFC 6750 error code; none for a request without a token.
    error: Option<&'static str>,
    description: &'static str,
    /// A 401 carries the Bearer challenge; ext-authz's 403 for a consumer does not.
    challenge: bool,
    /// The challenge names the route's scopes.
    scope: bool,
}

enum Details {
    Is(String),
    StartsWith(String),
}

fn denied(message: &str) -> String {
    format!("jwt_authn_access_denied{{{message}}}")
}

/// The start of jwt_authn's details for messages that go on past `message`.
fn denied_starting(message: &str) -> String {
    format!("jwt_authn_access_denied{{{message}")
}

fn policy(name: &str) -> String {
    format!("rbac_access_denied_matched_policy[{name}]")
}

/// Every refusal, most specific first: the first mapper that matches rewrites the reply.
/// The descriptions are ext-authz's (its `Rejection` and `Denial` texts).
fn refusals() -> Vec<Refusal> {
    let invalid = |details, description| Refusal {
        details,
        status: 401,
        error: Some("invalid_token"),
        description,
        challenge: true,
        scope: false,
    };
    vec![
        Refusal {
            details: Details::Is(denied("Jwt_is_missing")),
            status: 401,
            error: None,
            description: "a bearer token is required",
            challenge: true,
            scope: false,
        },
        invalid(
            Details::Is(policy("token_too_large")),
            "the token is larger than 8 KiB",
        ),
        invalid(
            Details::Is(denied("Jwt_is_expired")),
            "the token has expired",
        ),
        invalid(
            Details::Is(denied("Jwt_not_yet_valid")),
            "the token is not valid yet",
        ),
        invalid(
            Details::Is(denied("Jwt_issuer_is_not_configured")),
            "the token's issuer is not accepted",
        ),
        // jwt_authn answers a wrong audience with 403; ext-authz (and RFC 6750 §3.1, an
        // invalid token) with 401.
        invalid(
            Details::Is(denied("Audiences_in_Jwt_are_not_allowed")),
            "the token is not meant for this audience",
        ),
        invalid(
            Details::Is(denied("Jwt_verification_fails")),
            "the token's signature is invalid",
        ),
        invalid(
            Details::Is(denied("Jwks_doesn't_have_key_to_match_kid_or_alg_from_Jwt")),
            "the token's signing key is unknown",
        ),
        invalid(
            Details::StartsWith(denied_starting("Jwt_header_[alg]")),
            "the token's signing algorithm is not supported",
        ),
        invalid(
            Details::StartsWith(denied_starting("Found_multiple_Jwt_tokens")),
            "the request carries more than one token",
        ),
        invalid(
            Details::Is(policy("missing_expiry")),
            "the token has no expiry (exp)",
        ),
        invalid(
            Details::Is(policy("algorithm_not_allowed")),
            "the token's signing algorithm is not allowed",
        ),
        invalid(
            Details::Is(policy("missing_consumer")),
            "the token does not identify its consumer",
        ),
        // Every other jwt_authn refusal is about how the token is written.
        invalid(
            Details::StartsWith(denied_starting("")),
            "the token is not a well-formed JWT",
        ),
        Refusal {
            details: Details::Is(policy("insufficient_scope")),
            status: 403,
            error: Some("insufficient_scope"),
            description: "the token lacks a scope this route requires",
            challenge: true,
            scope: true,
        },
        Refusal {
            details: Details::Is(policy("consumer_not_allowed")),
            status: 403,
            error: Some("forbidden"),
            description: "the consumer is not allowed on this route",
            challenge: false,
            scope: false,
        },
    ]
}

/// The connection manager's mappers for these refusals, to come before the gateway's own.
pub(super) fn reply_mappers() -> Vec<ResponseMapper> {
    refusals().iter().map(mapper).collect()
}

fn mapper(refusal: &Refusal) -> ResponseMapper {
    let quoted = |text: &str| serde_json::to_string(text).unwrap_or_default();
    let condition = match &refusal.details {
        Details::Is(details) => format!("response.code_details == {}", quoted(details)),
        Details::StartsWith(prefix) => {
            format!("response.code_details.startsWith({})", quoted(prefix))
        }
    };
    let mut challenge = format!("Bearer realm=\"{REALM}\"");
    if let Some(error) = refusal.error {
        challenge.push_str(&format!(
            ", error=\"{error}\", error_description=\"{}\"",
            refusal.description
        ));
    }
    if refusal.scope {
        challenge.push_str(&format!(
            ", scope=\"%METADATA(ROUTE:{METADATA_NAMESPACE}:{SCOPES_METADATA_KEY})%\""
        ));
    }
    let header = |key: &str, value: &str| HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: value.to_string(),
            ..Default::default()
        }),
        // jwt_authn's own challenge (its realm is the request's URL) is replaced.
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    };
    let mut headers = Vec::new();
    if refusal.challenge {
        headers.push(header("www-authenticate", &challenge));
    }
    // In ext-authz's order; the body's content type is set again below.
    headers.push(header("content-type", "application/json"));
    // RFC 6750 §5.3 / RFC 9111: an error about credentials is not cacheable.
    headers.push(header("cache-control", "no-store"));
    let body = serde_json::json!({
        "error": refusal.error.unwrap_or("unauthorized"),
        "error_description": refusal.description,
    })
    .to_string();
    ResponseMapper {
        filter: Some(AccessLogFilter {
            filter_specifier: Some(FilterSpecifier::ExtensionFilter(ExtensionFilter {
                name: "envoy.access_loggers.extension_filters.cel".to_string(),
                config_type: Some(extension_filter::ConfigType::TypedConfig(any(
                    &ExpressionFilter {
                        expression: condition,
                        ..Default::default()
                    },
                ))),
            })),
        }),
        status_code: Some(UInt32Value {
            value: refusal.status,
        }),
        headers_to_add: headers,
        body_format_override: Some(SubstitutionFormatString {
            format: Some(substitution_format_string::Format::TextFormatSource(
                DataSource {
                    specifier: Some(data_source::Specifier::InlineString(body)),
                    ..Default::default()
                },
            )),
            content_type: "application/json".to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
#[path = "jwt_authn_tests.rs"]
mod tests;
