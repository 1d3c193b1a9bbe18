//! Checks for the auth providers (JWT issuers, API keys, client certificates) and for the
//! auth each route requires.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::api_keys::is_consumer_id;
use super::{is_header_name, is_valid_name, Errors};
use crate::certificates::Certificates;
use crate::config::{Listener, Route};
use crate::document::{AuthProviderDoc, ConsumerDoc, Document, RouteAuthDoc, TokenDoc};
use crate::duration;
use crate::listener_tls::FileSource;
use crate::policy::{
    Algorithm, ApiKeyProvider, AuthProvider, CertificateField, CertificateProvider,
    ConsumerProfile, Credentials, Enforcement, JwtProvider, KeyLocation, KeySource, RouteAuth,
    TokenSource, CONSUMER_HEADER, REQUEST_ID_HEADER,
};

/// Envoy jwt_authn's default allowance for clocks that disagree.
const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Headers a forwarded claim may never overwrite: they carry routing, framing or the
/// credentials themselves, or the identity ext-authz sets from `consumer_claim`.
const RESERVED_HEADERS: [&str; 9] = [
    "authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "cookie",
    CONSUMER_HEADER,
];

/// A provider's `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Jwt,
    ApiKey,
    ClientCertificate,
}

impl Kind {
    fn of(doc: &AuthProviderDoc) -> Option<Kind> {
        match doc.kind.as_ref().map(|k| k.value.as_str()) {
            None | Some("jwt") => Some(Kind::Jwt),
            Some("api_key") => Some(Kind::ApiKey),
            Some("client_certificate") => Some(Kind::ClientCertificate),
            Some(_) => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Jwt => "jwt",
            Kind::ApiKey => "api_key",
            Kind::ClientCertificate => "client_certificate",
        }
    }
}

pub(super) fn auth_providers(
    doc: &Document,
    errors: &mut Errors,
) -> BTreeMap<String, AuthProvider> {
    let providers: BTreeMap<String, AuthProvider> = doc
        .auth_providers
        .iter()
        .filter_map(|(name, provider)| {
            auth_provider(name, provider, errors).map(|p| (name.clone(), p))
        })
        .collect();
    key_headers_apart(doc, &providers, errors);
    providers
}

fn auth_provider(
    name: &str,
    node: &Spanned<AuthProviderDoc>,
    errors: &mut Errors,
) -> Option<AuthProvider> {
    let before = errors.found.len();
    let doc = &node.value;
    if !is_valid_name(name) {
        errors.at(
            node,
            format!("invalid auth provider name \"{name}\": use letters, digits, '.', '_' and '-'"),
        );
    }
    let Some(kind) = Kind::of(doc) else {
        if let Some(kind) = &doc.kind {
            errors.at(
                kind,
                format!(
                    "auth provider \"{name}\": unknown type \"{}\": expected jwt, api_key or client_certificate",
                    kind.value
                ),
            );
        }
        return None;
    };
    foreign_fields(name, doc, kind, errors);
    let forward_claims = forward_claims(doc, errors);
    let credentials = match kind {
        Kind::Jwt => jwt(name, node, errors).map(Credentials::Jwt),
        Kind::ApiKey => api_key(name, node, errors).map(Credentials::ApiKey),
        Kind::ClientCertificate => {
            client_certificate(name, node, errors).map(Credentials::ClientCertificate)
        }
    }?;
    (errors.found.len() == before).then(|| AuthProvider {
        name: name.to_string(),
        forward_claims,
        credentials,
    })
}

/// Refuses fields that belong to another type of provider: a misplaced field (or a
/// forgotten `type`) would otherwise be silently ignored.
fn foreign_fields(name: &str, doc: &AuthProviderDoc, kind: Kind, errors: &mut Errors) {
    fn at<T>(node: &Option<Spanned<T>>) -> Option<Location> {
        node.as_ref().map(|n| n.referenced)
    }
    let first_algorithm = doc
        .algorithms
        .as_ref()
        .and_then(|list| list.first())
        .map(|n| n.referenced);
    let fields = [
        ("issuer", at(&doc.issuer), Kind::Jwt),
        ("audiences", at(&doc.audiences), Kind::Jwt),
        ("jwks_uri", at(&doc.jwks_uri), Kind::Jwt),
        ("jwks_file", at(&doc.jwks_file), Kind::Jwt),
        ("shared_secret_file", at(&doc.shared_secret_file), Kind::Jwt),
        ("shared_secret_env", at(&doc.shared_secret_env), Kind::Jwt),
        ("algorithms", first_algorithm, Kind::Jwt),
        ("clock_skew", at(&doc.clock_skew), Kind::Jwt),
        ("consumer_claim", at(&doc.consumer_claim), Kind::Jwt),
        ("enforce", at(&doc.enforce), Kind::Jwt),
        ("token", at(&doc.token), Kind::Jwt),
        ("header", at(&doc.header), Kind::ApiKey),
        ("query", at(&doc.query), Kind::ApiKey),
        ("keys_file", at(&doc.keys_file), Kind::ApiKey),
        (
            "consumer_from",
            at(&doc.consumer_from),
            Kind::ClientCertificate,
        ),
        ("consumers", at(&doc.consumers), Kind::ClientCertificate),
    ];
    for (field, location, owner) in fields {
        if let Some(location) = location.filter(|_| owner != kind) {
            errors.at_location(
                location,
                format!(
                    "auth provider \"{name}\": {field} belongs to type {}, and this provider has type {}",
                    owner.name(),
                    kind.name()
                ),
            );
        }
    }
}

fn jwt(name: &str, node: &Spanned<AuthProviderDoc>, errors: &mut Errors) -> Option<JwtProvider> {
    let doc = &node.value;
    let issuer = match &doc.issuer {
        Some(issuer) if issuer.value.is_empty() => {
            errors.at(issuer, format!("auth provider \"{name}\": issuer is empty"));
            None
        }
        Some(issuer) => Some(issuer.value.clone()),
        None => {
            errors.at(
                node,
                format!("auth provider \"{name}\" needs an issuer (or a type other than jwt)"),
            );
            None
        }
    };
    let audiences = audiences(name, node, errors);
    let keys = key_source(name, node, errors);
    let shared_secret = matches!(
        keys,
        Some(KeySource::SharedSecretFile(_) | KeySource::SharedSecretEnv(_))
    );
    let algorithms = algorithms(name, node, shared_secret, errors);
    let clock_skew = clock_skew(doc, errors);
    let consumer_claim = consumer_claim(doc, errors);
    let enforce = enforcement(name, doc, keys.as_ref(), errors);
    let token = doc
        .token
        .as_ref()
        .map(|t| token_source(name, t, errors))
        .unwrap_or_else(|| Some(TokenSource::BearerHeader("authorization".into())));
    Some(JwtProvider {
        issuer: issuer?,
        audiences,
        keys: keys?,
        algorithms,
        clock_skew,
        consumer_claim,
        token: token?,
        enforce,
    })
}

/// `enforce`: `ext_authz` (the default) or `envoy`, which needs keys Envoy can be given.
fn enforcement(
    name: &str,
    doc: &AuthProviderDoc,
    keys: Option<&KeySource>,
    errors: &mut Errors,
) -> Enforcement {
    let Some(enforce) = &doc.enforce else {
        return Enforcement::ExtAuthz;
    };
    let enforcement = match enforce.value.as_str() {
        "ext_authz" => Enforcement::ExtAuthz,
        "envoy" => Enforcement::Envoy,
        other => {
            errors.at(
                enforce,
                format!("auth provider \"{name}\": unknown enforce \"{other}\": expected ext_authz or envoy"),
            );
            return Enforcement::ExtAuthz;
        }
    };
    if enforcement == Enforcement::Envoy
        && matches!(
            keys,
            Some(KeySource::SharedSecretFile(_) | KeySource::SharedSecretEnv(_))
        )
    {
        // jwt_authn takes an HMAC secret only inline in its configuration, which every
        // Envoy's admin /config_dump would then show.
        errors.at(
            enforce,
            format!("auth provider \"{name}\": enforce: envoy needs jwks_file or jwks_uri: Envoy would hold a shared secret in its configuration, where its admin interface shows it"),
        );
    }
    enforcement
}

/// An API key provider: where the key travels, and the keys file.
fn api_key(
    name: &str,
    node: &Spanned<AuthProviderDoc>,
    errors: &mut Errors,
) -> Option<ApiKeyProvider> {
    let doc = &node.value;
    let location = match (&doc.header, &doc.query) {
        (Some(header), None) => {
            let lower = header.value.to_ascii_lowercase();
            if !is_header_name(&lower) || lower.starts_with(':') {
                errors.at(
                    header,
                    format!(
                        "auth provider \"{name}\": invalid header name \"{}\"",
                        header.value
                    ),
                );
            } else if lower != "authorization" && RESERVED_HEADERS.contains(&lower.as_str())
                || lower == REQUEST_ID_HEADER
            {
                errors.at(
                    header,
                    format!("auth provider \"{name}\": the key cannot travel in \"{lower}\": that header is reserved"),
                );
            }
            Some(KeyLocation::Header(lower))
        }
        (None, Some(query)) if query.value.is_empty() => {
            errors.at(query, format!("auth provider \"{name}\": query is empty"));
            None
        }
        (None, Some(query)) => Some(KeyLocation::Query(query.value.clone())),
        (None, None) => {
            errors.at(
                node,
                format!("auth provider \"{name}\" needs a header or a query parameter to read the key from"),
            );
            None
        }
        (Some(_), Some(query)) => {
            errors.at(
                query,
                format!("auth provider \"{name}\": give header or query, not both"),
            );
            None
        }
    };
    let keys_file = match &doc.keys_file {
        Some(file) if file.value.is_empty() => {
            errors.at(
                file,
                format!("auth provider \"{name}\": keys_file is empty"),
            );
            None
        }
        Some(file) => Some(PathBuf::from(&file.value)),
        None => {
            errors.at(
                node,
                format!("auth provider \"{name}\" needs a keys_file (`tollgate-ext-authz hash-key` prints its entries)"),
            );
            None
        }
    };
    Some(ApiKeyProvider {
        location: location?,
        keys_file: keys_file?,
    })
}

/// A client certificate provider: the field naming the consumer, and the consumers admitted.
fn client_certificate(
    name: &str,
    node: &Spanned<AuthProviderDoc>,
    errors: &mut Errors,
) -> Option<CertificateProvider> {
    let doc = &node.value;
    let consumer_from = match &doc.consumer_from {
        Some(field) => {
            let parsed = CertificateField::parse(&field.value);
            if parsed.is_none() {
                errors.at(
                    field,
                    format!(
                        "auth provider \"{name}\": unknown consumer_from \"{}\": expected {}",
                        field.value,
                        CertificateField::NAMES
                    ),
                );
            }
            parsed
        }
        None => {
            errors.at(
                node,
                format!(
                    "auth provider \"{name}\" needs consumer_from: the certificate field naming the consumer ({})",
                    CertificateField::NAMES
                ),
            );
            None
        }
    };
    let consumers = doc.consumers.as_ref().map(|map| {
        if map.value.is_empty() {
            errors.at(
                map,
                format!("auth provider \"{name}\": consumers is empty: leave it out to admit every verified certificate"),
            );
        }
        map.value
            .iter()
            .map(|(id, profile)| {
                if !is_consumer_id(id) {
                    errors.at(
                        profile,
                        format!("consumer \"{id}\": expected printable ASCII without spaces (it is sent as a header)"),
                    );
                }
                (id.clone(), consumer_profile(profile, errors))
            })
            .collect()
    });
    Some(CertificateProvider {
        consumer_from: consumer_from?,
        consumers,
    })
}

/// A consumer's tier and attributes, each sent upstream as a header value.
fn consumer_profile(node: &Spanned<ConsumerDoc>, errors: &mut Errors) -> ConsumerProfile {
    let mut header_text = |value: &Spanned<String>| {
        if value.value.is_empty() || value.value.chars().any(char::is_control) {
            errors.at(
                value,
                format!(
                    "\"{}\" cannot be sent as a header value",
                    value.value.escape_debug()
                ),
            );
        }
        value.value.clone()
    };
    ConsumerProfile {
        tier: node.value.tier.as_ref().map(&mut header_text),
        attributes: node
            .value
            .attributes
            .iter()
            .map(|(name, value)| (name.clone(), header_text(value)))
            .collect(),
    }
}

/// An API key's header is removed before the request is checked when it is also a header
/// ext-authz sets (client copies of identity headers are stripped first), so the key
/// would never be seen.
fn key_headers_apart(
    doc: &Document,
    providers: &BTreeMap<String, AuthProvider>,
    errors: &mut Errors,
) {
    let identity = crate::policy::identity_headers(providers);
    for (name, provider) in providers {
        let Credentials::ApiKey(key) = &provider.credentials else {
            continue;
        };
        let Some(header) = key.location.header() else {
            continue;
        };
        if identity.iter().any(|h| h == header) {
            if let Some(node) = doc.auth_providers[name].value.header.as_ref() {
                errors.at(
                    node,
                    format!("auth provider \"{name}\": \"{header}\" is forwarded upstream as an identity header, so it cannot carry a key"),
                );
            }
        }
    }
}

/// The audiences a token must name one of.
fn audiences(name: &str, node: &Spanned<AuthProviderDoc>, errors: &mut Errors) -> Vec<String> {
    // RFC 8725 §3.9: without an audience check a token minted for another service of the
    // same issuer would be accepted here.
    match &node.value.audiences {
        Some(list) if !list.value.is_empty() => {
            for audience in list.value.iter().filter(|a| a.value.is_empty()) {
                errors.at(audience, "empty audience".to_string());
            }
            list.value.iter().map(|a| a.value.clone()).collect()
        }
        Some(list) => {
            errors.at(
                list,
                format!("auth provider \"{name}\": audiences is empty"),
            );
            Vec::new()
        }
        None => {
            errors.at(
                node,
                format!("auth provider \"{name}\" needs audiences: tokens must be meant for this gateway"),
            );
            Vec::new()
        }
    }
}

/// Where the provider's keys come from: exactly one source.
fn key_source(
    name: &str,
    node: &Spanned<AuthProviderDoc>,
    errors: &mut Errors,
) -> Option<KeySource> {
    let doc = &node.value;
    let sources: Vec<(&Spanned<String>, KeySource)> = [
        doc.jwks_uri
            .as_ref()
            .map(|v| (v, KeySource::JwksUri(v.value.clone()))),
        doc.jwks_file
            .as_ref()
            .map(|v| (v, KeySource::JwksFile(PathBuf::from(&v.value)))),
        doc.shared_secret_file
            .as_ref()
            .map(|v| (v, KeySource::SharedSecretFile(PathBuf::from(&v.value)))),
        doc.shared_secret_env
            .as_ref()
            .map(|v| (v, KeySource::SharedSecretEnv(v.value.clone()))),
    ]
    .into_iter()
    .flatten()
    .collect();
    let keys = match sources.as_slice() {
        [(_, keys)] => Some(keys.clone()),
        [] => {
            errors.at(
                node,
                format!("auth provider \"{name}\" needs one of jwks_uri, jwks_file, shared_secret_file or shared_secret_env"),
            );
            None
        }
        [_, (second, _), ..] => {
            errors.at(
                *second,
                format!("auth provider \"{name}\": give only one of jwks_uri, jwks_file, shared_secret_file or shared_secret_env"),
            );
            None
        }
    };
    if let Some(uri) = &doc.jwks_uri {
        if !(uri.value.starts_with("https://") || uri.value.starts_with("http://")) {
            errors.at(
                uri,
                format!("jwks_uri \"{}\" must be an http(s) URL", uri.value),
            );
        }
    }
    keys
}

/// The algorithms accepted: given, or every one that fits the key source.
fn algorithms(
    name: &str,
    node: &Spanned<AuthProviderDoc>,
    shared_secret: bool,
    errors: &mut Errors,
) -> Vec<Algorithm> {
    match &node.value.algorithms {
        None if shared_secret => vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
        None => Algorithm::ALL
            .into_iter()
            .filter(|a| !a.is_symmetric())
            .collect(),
        Some(list) => {
            if list.is_empty() {
                errors.at(
                    node,
                    format!("auth provider \"{name}\": algorithms is empty"),
                );
            }
            let mut algorithms = Vec::new();
            for alg in list {
                match Algorithm::parse(&alg.value) {
                    // RFC 8725 §3.1: an HMAC key must never be a public key, and a
                    // public-key provider must never accept HMAC (the confusion attack).
                    Some(a) if a.is_symmetric() != shared_secret => errors.at(
                        alg,
                        if shared_secret {
                            format!("algorithm {} needs a JWKS, not a shared secret", a.as_str())
                        } else {
                            format!("algorithm {} needs shared_secret_file or shared_secret_env", a.as_str())
                        },
                    ),
                    Some(a) => algorithms.push(a),
                    None => errors.at(
                        alg,
                        format!(
                            "unknown algorithm \"{}\": expected one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512",
                            alg.value
                        ),
                    ),
                }
            }
            algorithms
        }
    }
}

fn clock_skew(doc: &AuthProviderDoc, errors: &mut Errors) -> Duration {
    match &doc.clock_skew {
        None => DEFAULT_CLOCK_SKEW,
        Some(skew) if skew.value == "0s" || skew.value == "0ms" => Duration::ZERO,
        Some(skew) => duration::parse(&skew.value).unwrap_or_else(|message| {
            errors.at(skew, message);
            DEFAULT_CLOCK_SKEW
        }),
    }
}

/// The claim that names the consumer (`sub` unless told otherwise).
fn consumer_claim(doc: &AuthProviderDoc, errors: &mut Errors) -> String {
    match &doc.consumer_claim {
        Some(claim) if claim.value.is_empty() => {
            errors.at(claim, "consumer_claim is empty".to_string());
            String::new()
        }
        Some(claim) => claim.value.clone(),
        None => "sub".to_string(),
    }
}

/// Claims forwarded upstream, each as its own header: valid, unreserved and distinct names.
fn forward_claims(doc: &AuthProviderDoc, errors: &mut Errors) -> BTreeMap<String, String> {
    let mut forward_claims = BTreeMap::new();
    let mut headers_seen = HashSet::new();
    for (claim, header) in &doc.forward_claims {
        let lower = header.value.to_ascii_lowercase();
        if !is_header_name(&lower) || lower.starts_with(':') {
            errors.at(
                header,
                format!(
                    "invalid header name \"{}\" for claim \"{claim}\"",
                    header.value
                ),
            );
        } else if RESERVED_HEADERS.contains(&lower.as_str()) {
            errors.at(header, format!("claim \"{claim}\" may not be forwarded as \"{lower}\": that header is reserved"));
        } else if !headers_seen.insert(lower.clone()) {
            errors.at(header, format!("header \"{lower}\" is used for two claims"));
        }
        forward_claims.insert(claim.clone(), lower);
    }
    forward_claims
}

fn token_source(
    provider: &str,
    node: &Spanned<TokenDoc>,
    errors: &mut Errors,
) -> Option<TokenSource> {
    let doc = &node.value;
    let given: Vec<(&Spanned<String>, TokenSource)> = [
        doc.header
            .as_ref()
            .map(|h| (h, TokenSource::BearerHeader(h.value.to_ascii_lowercase()))),
        doc.query
            .as_ref()
            .map(|q| (q, TokenSource::Query(q.value.clone()))),
        doc.cookie
            .as_ref()
            .map(|c| (c, TokenSource::Cookie(c.value.clone()))),
    ]
    .into_iter()
    .flatten()
    .collect();
    match given.as_slice() {
        [(value, source)] if !value.value.is_empty() => Some(source.clone()),
        _ => {
            errors.at(
                node,
                format!("auth provider \"{provider}\": token needs exactly one non-empty header, query or cookie"),
            );
            None
        }
    }
}

pub(super) fn route_auth(
    doc: &Document,
    route: &str,
    node: &Spanned<RouteAuthDoc>,
    errors: &mut Errors,
) -> Option<RouteAuth> {
    let auth = &node.value;
    let before = errors.found.len();
    let names: Vec<&Spanned<String>> = match (&auth.provider, &auth.any_of) {
        (Some(provider), None) => vec![provider],
        (None, Some(list)) => {
            if list.value.is_empty() {
                errors.at(list, format!("route \"{route}\": any_of is empty"));
            }
            list.value.iter().collect()
        }
        (None, None) => {
            errors.at(
                node,
                format!("route \"{route}\": auth needs a provider, or any_of a list of providers"),
            );
            Vec::new()
        }
        (Some(_), Some(list)) => {
            errors.at(
                list,
                format!("route \"{route}\": give provider or any_of, not both"),
            );
            Vec::new()
        }
    };
    let mut seen = HashSet::new();
    for name in &names {
        if !doc.auth_providers.contains_key(&name.value) {
            errors.at(
                *name,
                format!(
                    "unknown auth provider \"{}\" in route \"{route}\"",
                    name.value
                ),
            );
        } else if !seen.insert(name.value.as_str()) {
            errors.at(
                *name,
                format!("auth provider \"{}\" is listed twice", name.value),
            );
        }
    }
    let by_envoy: Vec<bool> = names
        .iter()
        .filter_map(|name| doc.auth_providers.get(&name.value))
        .map(|provider| enforced_by_envoy(&provider.value))
        .collect();
    if by_envoy.contains(&true) && by_envoy.contains(&false) {
        // One filter decides a request: Envoy's jwt_authn cannot fall back to ext-authz.
        errors.at(
            node,
            format!("route \"{route}\": its providers are enforced by envoy and by ext_authz: a route's providers must all have the same enforce"),
        );
    }
    let all_by_envoy = !by_envoy.is_empty() && by_envoy.iter().all(|b| *b);
    if !all_by_envoy
        && doc
            .sidecars
            .as_ref()
            .and_then(|s| s.ext_authz.as_ref())
            .is_none()
    {
        errors.at(
            node,
            format!("route \"{route}\" requires auth but sidecars.ext_authz is not configured"),
        );
    }
    for scope in &auth.scopes {
        if scope.value.is_empty() || scope.value.contains(char::is_whitespace) {
            errors.at(
                scope,
                format!("invalid scope \"{}\": scopes are single words", scope.value),
            );
        }
    }
    if let Some(first_scope) = auth.scopes.first() {
        // Only tokens carry scopes: a key or a certificate would pass a route's scopes
        // unchecked, or never pass them.
        let other = names.iter().find_map(|name| {
            let kind = Kind::of(&doc.auth_providers.get(&name.value)?.value)?;
            (kind != Kind::Jwt).then_some((name.value.as_str(), kind))
        });
        if let Some((provider, kind)) = other {
            errors.at(
                first_scope,
                format!(
                    "route \"{route}\": scopes apply to JWT providers only, and \"{provider}\" has type {}: name the consumers admitted instead",
                    kind.name()
                ),
            );
        }
    }
    if let Some(consumers) = &auth.consumers {
        if consumers.value.is_empty() {
            errors.at(
                consumers,
                format!(
                    "route \"{route}\": consumers is empty: leave it out to admit every consumer"
                ),
            );
        }
        for consumer in &consumers.value {
            if !is_consumer_id(&consumer.value) {
                errors.at(
                    consumer,
                    format!(
                        "consumer \"{}\": expected printable ASCII without spaces",
                        consumer.value
                    ),
                );
            }
        }
    }
    (errors.found.len() == before).then(|| RouteAuth {
        providers: names.iter().map(|n| n.value.clone()).collect(),
        scopes: auth.scopes.iter().map(|s| s.value.clone()).collect(),
        consumers: auth
            .consumers
            .as_ref()
            .map(|list| list.value.iter().map(|c| c.value.clone()).collect())
            .unwrap_or_default(),
    })
}

/// Reads the key set of every provider Envoy enforces, which the control plane hands Envoy:
/// a `jwks_file` that cannot be read or is not a JSON Web Key Set is an error at its line
/// (ext-authz, which reads its own, reports such a file only in its log).
pub(super) fn provider_key_sets(
    doc: &Document,
    providers: &BTreeMap<String, AuthProvider>,
    files: &dyn FileSource,
    certificates: &mut Certificates,
    errors: &mut Errors,
) {
    for (name, provider) in providers {
        let Some(KeySource::JwksFile(_)) = provider
            .jwt()
            .filter(|_| provider.enforced_by_envoy())
            .map(|jwt| &jwt.keys)
        else {
            continue;
        };
        let Some(node) = doc
            .auth_providers
            .get(name)
            .and_then(|p| p.value.jwks_file.as_ref())
        else {
            continue;
        };
        let Some(bytes) = super::read_file(files, node, "jwks_file", errors) else {
            continue;
        };
        match crate::certificates::key_set_text(&bytes) {
            Ok(text) => certificates.insert_provider_jwks(name.clone(), text),
            Err(why) => errors.at(
                node,
                format!(
                    "jwks_file \"{}\" is not a JSON Web Key Set: {why}",
                    node.value
                ),
            ),
        }
    }
}

/// Whether a provider's document asks for `enforce: envoy` (a JWT provider's field).
fn enforced_by_envoy(doc: &AuthProviderDoc) -> bool {
    Kind::of(doc) == Some(Kind::Jwt) && doc.enforce.as_ref().is_some_and(|e| e.value == "envoy")
}

/// A client certificate exists only on a listener that asks for one (`tls.client_ca_file`):
/// a route that accepts certificates must be served on at least one such listener, and a
/// route that accepts nothing else only on such listeners, or every request elsewhere would
/// be refused.
pub(super) fn certificate_listeners(
    doc: &Document,
    listeners: &[Listener],
    routes: &[Route],
    providers: &BTreeMap<String, AuthProvider>,
    errors: &mut Errors,
) {
    let reads_certificates = |name: &String| {
        providers
            .get(name)
            .is_some_and(|p| matches!(p.credentials, Credentials::ClientCertificate(_)))
    };
    let asks_for_certificates = |listener: &&Listener| {
        listener
            .tls
            .as_ref()
            .is_some_and(|tls| tls.client_certificates.is_some())
    };
    for route in routes {
        let Some(auth) = &route.auth else {
            continue;
        };
        let Some(certificates) = auth.providers.iter().find(|p| reads_certificates(p)) else {
            continue;
        };
        let serving: Vec<&Listener> = listeners
            .iter()
            .filter(|l| l.redirect_to_https.is_none())
            .filter(|l| route.listener.as_deref().is_none_or(|name| name == l.name))
            .collect();
        let Some(node) = doc
            .routes
            .iter()
            .find(|r| r.name.value == route.name)
            .and_then(|r| r.auth.as_ref())
        else {
            continue;
        };
        let without: Vec<&str> = serving
            .iter()
            .filter(|l| !asks_for_certificates(l))
            .map(|l| l.name.as_str())
            .collect();
        if !serving.is_empty() && without.len() == serving.len() {
            errors.at(
                node,
                format!(
                    "route \"{}\": provider \"{certificates}\" reads client certificates, but no listener serving the route has tls.client_ca_file",
                    route.name
                ),
            );
        } else if auth.providers.iter().all(reads_certificates) && !without.is_empty() {
            errors.at(
                node,
                format!(
                    "route \"{}\" accepts only client certificates, but listener \"{}\" serving it has no tls.client_ca_file: give the route a `listener` that has one",
                    route.name, without[0]
                ),
            );
        }
    }
}
