//! Token verification, pure: token text, a key set, the provider's policy and the time in;
//! the verified claims this service needs, or a typed [`Rejection`], out. No I/O, no clock.
//!
//! The order follows RFC 8725 (JWT best current practice): bound the size before any
//! work, decode only the header before the signature is checked, choose the algorithm from
//! the provider's allow-list and the key's type (never from the token alone: §3.1), and
//! read the claims only once the signature holds. `jku`, `x5u` and `jwk` header
//! parameters are never followed (§3.10): keys come from routes.yaml only.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

use tollgate_routes::policy::{Algorithm, JwtProvider};

use crate::identity::Identity;
use crate::jwks::{KeyLookup, KeyMaterial, KeySet};

/// Larger tokens are refused before any decoding or cryptography. 8 KiB is Envoy's
/// default limit for a single header name and value pair's neighbourhood and far above
/// any real access token.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a token was refused. The `Display` text is sent to the client as
/// `error_description`, so it never contains anything taken from the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the token is larger than 8 KiB")]
    TooLarge,
    #[error("the token is not a well-formed JWT")]
    Malformed(&'static str),
    #[error("the token's signing algorithm is not supported")]
    UnsupportedAlgorithm,
    #[error("the token's signing algorithm is not allowed")]
    AlgorithmNotAllowed,
    /// RFC 7515 §4.1.11: a `crit` extension this service does not implement makes the
    /// token invalid. None is implemented.
    #[error("the token requires an unsupported critical header extension")]
    CriticalHeader,
    #[error("the token's signing key is unknown")]
    UnknownKey { kid: Option<String> },
    #[error("the token's signing algorithm does not match its key")]
    KeyMismatch,
    #[error("the token names no key and several could verify it")]
    AmbiguousKey,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has no expiry (exp)")]
    MissingExpiry,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued in the future")]
    IssuedInFuture,
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    #[error("the token is not meant for this audience")]
    WrongAudience,
    /// The provider's `consumer_claim` is absent or not a string or number.
    #[error("the token does not identify its consumer")]
    MissingConsumer,
}

impl Rejection {
    /// A short label for metrics and logs.
    pub fn class(&self) -> &'static str {
        match self {
            Rejection::TooLarge => "too_large",
            Rejection::Malformed(_) => "malformed",
            Rejection::UnsupportedAlgorithm | Rejection::AlgorithmNotAllowed => "algorithm",
            Rejection::CriticalHeader => "crit",
            Rejection::UnknownKey { .. } => "unknown_kid",
            Rejection::KeyMismatch | Rejection::AmbiguousKey => "key_mismatch",
            Rejection::BadSignature => "signature",
            Rejection::MissingExpiry | Rejection::Expired => "expired",
            Rejection::NotYetValid | Rejection::IssuedInFuture => "not_yet_valid",
            Rejection::WrongIssuer => "issuer",
            Rejection::WrongAudience => "audience",
            Rejection::MissingConsumer => "consumer",
        }
    }
}

/// What a verified token tells the gateway, computed once and cached.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedToken {
    /// `exp`, in seconds since the epoch: the cache never serves the token past it.
    pub expires_at: f64,
    /// From `scope` (RFC 8693 §4.2, space-separated) and `scp` (string or array).
    pub scopes: Vec<String>,
    /// The consumer (`consumer_claim`) and forwarded claims, as the upstream is told.
    pub identity: Identity,
}

impl VerifiedToken {
    /// The required scopes the token lacks.
    pub fn missing_scopes<'a>(&self, required: &[&'a str]) -> Vec<&'a str> {
        required
            .iter()
            .filter(|want| !self.scopes.iter().any(|have| have == *want))
            .copied()
            .collect()
    }
}

/// The JOSE header members this service reads (RFC 7515 §4.1), and the other registered
/// ones with the types their RFCs give them (RFC 7515 §4.1; `enc` and `zip`, RFC 7516 §4.1;
/// `url` and `nonce`, RFC 8555 §6.4): a header that breaks those is malformed even where
/// this service ignores the member (found by fuzz/'s jwt_verify: a `typ` that was an object,
/// then a `zip` that was a number, were accepted here and refused by jsonwebtoken).
#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
    crit: Option<Value>,
    #[serde(rename = "typ")]
    _typ: Option<String>,
    #[serde(rename = "cty")]
    _cty: Option<String>,
    #[serde(rename = "jku")]
    _jku: Option<String>,
    #[serde(rename = "jwk")]
    _jwk: Option<EmbeddedJwk>,
    #[serde(rename = "x5u")]
    _x5u: Option<String>,
    #[serde(rename = "x5c")]
    _x5c: Option<Vec<String>>,
    #[serde(rename = "x5t")]
    _x5t: Option<String>,
    #[serde(rename = "x5t#S256")]
    _x5t_s256: Option<String>,
    #[serde(rename = "enc")]
    _enc: Option<String>,
    #[serde(rename = "zip")]
    _zip: Option<String>,
    #[serde(rename = "url")]
    _url: Option<String>,
    #[serde(rename = "nonce")]
    _nonce: Option<String>,
}

/// A header's `jwk` (RFC 7515 §4.1.3). This service never reads or trusts a key a token
/// carries (RFC 8725 §3.10: keys come from the provider's key set), but the member must still
/// be a JWK: an object with a `kty` and RFC 7517 §4's other registered members of their types
/// (found by fuzz/'s jwt_verify: a `jwk` without `kty` and with a numeric `use` was
/// accepted here and refused by jsonwebtoken).
#[derive(Deserialize)]
struct EmbeddedJwk {
    #[serde(rename = "kty")]
    _kty: String,
    #[serde(rename = "use")]
    _use: Option<String>,
    #[serde(rename = "key_ops")]
    _key_ops: Option<Vec<String>>,
    #[serde(rename = "alg")]
    _alg: Option<String>,
    #[serde(rename = "kid")]
    _kid: Option<String>,
    #[serde(rename = "x5u")]
    _x5u: Option<String>,
    #[serde(rename = "x5c")]
    _x5c: Option<Vec<String>>,
    #[serde(rename = "x5t")]
    _x5t: Option<String>,
    #[serde(rename = "x5t#S256")]
    _x5t_s256: Option<String>,
}

/// Verifies `token` against `keys` under `provider`'s rules at time `now` (seconds since
/// the epoch); on success the claims named in `forward_claims` are read for the upstream.
pub fn verify(
    token: &str,
    keys: &KeySet,
    provider: &JwtProvider,
    forward_claims: &BTreeMap<String, String>,
    now: u64,
) -> Result<VerifiedToken, Rejection> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Rejection::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        // Five parts would be JWE (RFC 7516), which this service does not accept either.
        return Err(Rejection::Malformed("expected three dot-separated parts"));
    };
    let header_json = decode_part(header_b64, "header is not base64url")?;
    // RFC 7515 §5.2 step 3: the header is UTF-8 and wholly valid JSON. serde_json skips
    // the members `Header` does not declare without checking their strings' UTF-8 or their
    // numbers' range, so the text is checked first, then read whole as JSON, then as the
    // members read here, which refuses one named twice (found by fuzz/'s jwt_verify:
    // jsonwebtoken refused such headers, this verifier accepted them).
    let header: Header = std::str::from_utf8(&header_json)
        .ok()
        .filter(|text| serde_json::from_str::<Value>(text).is_ok())
        .and_then(|text| serde_json::from_str(text).ok())
        .ok_or(Rejection::Malformed("header is not a JSON object"))?;
    let alg_name = header
        .alg
        .ok_or(Rejection::Malformed("header has no alg"))?;
    // `none` (RFC 7518 §3.6) is not in the list, so unsecured tokens stop here.
    let alg = Algorithm::parse(&alg_name).ok_or(Rejection::UnsupportedAlgorithm)?;
    if !provider.algorithms.contains(&alg) {
        return Err(Rejection::AlgorithmNotAllowed);
    }
    if header.crit.is_some() {
        return Err(Rejection::CriticalHeader);
    }
    let key = match keys.find(header.kid.as_deref(), alg) {
        KeyLookup::Found(key) => key,
        KeyLookup::Unknown => return Err(Rejection::UnknownKey { kid: header.kid }),
        KeyLookup::WrongType => return Err(Rejection::KeyMismatch),
        KeyLookup::Ambiguous => return Err(Rejection::AmbiguousKey),
    };
    // The signing input is the first two parts exactly as sent (RFC 7515 §5.2 step 8).
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    if !signature_holds(&key.material, alg, signing_input.as_bytes(), signature_b64)? {
        return Err(Rejection::BadSignature);
    }

    let payload = decode_part(payload_b64, "payload is not base64url")?;
    let claims = claim_set(&payload)?;
    check_claims(&claims, provider, now)?;
    let token = extract(&claims, provider, forward_claims);
    // A token that names no consumer cannot be attributed: accepting it would let it pass
    // every per-consumer rate limit (no `x-consumer-id`, so Envoy sends no descriptor).
    if token.identity.consumer.is_none() {
        return Err(Rejection::MissingConsumer);
    }
    Ok(token)
}

/// The payload as a claim set, refusing one that names a claim twice: RFC 7519 §4 lets a
/// parser either refuse that or keep the last, and an upstream or a log reading the same
/// token with the other choice would see another `sub` than the one checked here (found by
/// fuzz/'s jwt_verify: jsonwebtoken refused such a token, this verifier kept the last).
fn claim_set(payload: &[u8]) -> Result<Map<String, Value>, Rejection> {
    struct UniqueClaims;
    impl<'de> serde::de::Visitor<'de> for UniqueClaims {
        type Value = Map<String, Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object naming each claim once")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut claims = Map::new();
            while let Some((name, value)) = map.next_entry::<String, Value>()? {
                if claims.contains_key(&name) {
                    return Err(serde::de::Error::custom("a claim named twice"));
                }
                claims.insert(name, value);
            }
            Ok(claims)
        }
    }
    let mut reader = serde_json::Deserializer::from_slice(payload);
    serde::Deserializer::deserialize_map(&mut reader, UniqueClaims)
        .and_then(|claims| reader.end().map(|()| claims))
        .map_err(|_| Rejection::Malformed("payload is not a JSON object naming each claim once"))
}

fn decode_part(part: &str, problem: &'static str) -> Result<Vec<u8>, Rejection> {
    // RFC 7515 §2: base64url without padding; the engine also refuses non-canonical
    // trailing bits, so one token has one encoding.
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Rejection::Malformed(problem))
}

/// Whether `signature_b64` is a valid `alg` signature of `signing_input` under `material`.
/// Public keys were parsed when their set was loaded; secrets go through jsonwebtoken.
fn signature_holds(
    material: &KeyMaterial,
    alg: Algorithm,
    signing_input: &[u8],
    signature_b64: &str,
) -> Result<bool, Rejection> {
    match material {
        KeyMaterial::Secret(secret) => {
            jsonwebtoken::crypto::verify(signature_b64, signing_input, secret, jwt_algorithm(alg))
                .map_err(|_| Rejection::Malformed("signature is not base64url"))
        }
        KeyMaterial::Public(public) => {
            // The engine jsonwebtoken decodes signatures with (base64 0.22's URL_SAFE_NO_PAD),
            // so padded or non-canonical signatures are refused here exactly as there.
            let signature = decode_part(signature_b64, "signature is not base64url")?;
            Ok(public.verify(alg, signing_input, &signature))
        }
    }
}

fn jwt_algorithm(alg: Algorithm) -> jsonwebtoken::Algorithm {
    use jsonwebtoken::Algorithm as J;
    match alg {
        Algorithm::RS256 => J::RS256,
        Algorithm::RS384 => J::RS384,
        Algorithm::RS512 => J::RS512,
        Algorithm::PS256 => J::PS256,
        Algorithm::PS384 => J::PS384,
        Algorithm::PS512 => J::PS512,
        Algorithm::ES256 => J::ES256,
        Algorithm::ES384 => J::ES384,
        Algorithm::EdDSA => J::EdDSA,
        Algorithm::HS256 => J::HS256,
        Algorithm::HS384 => J::HS384,
        Algorithm::HS512 => J::HS512,
    }
}

/// RFC 7519 §4.1: the registered claims, with the provider's clock skew as leeway.
fn check_claims(
    claims: &Map<String, Value>,
    provider: &JwtProvider,
    now: u64,
) -> Result<(), Rejection> {
    let now = now as f64;
    let skew = provider.clock_skew.as_secs_f64();
    // §4.1.4: the current time MUST be before exp. A token without one would be valid
    // forever, so it is refused (RFC 8725 §3.10 leaves this to the application).
    let exp = numeric_date(claims, "exp")?.ok_or(Rejection::MissingExpiry)?;
    if now >= exp + skew {
        return Err(Rejection::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if now + skew < nbf {
            return Err(Rejection::NotYetValid);
        }
    }
    if let Some(iat) = numeric_date(claims, "iat")? {
        if iat > now + skew {
            return Err(Rejection::IssuedInFuture);
        }
    }
    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == provider.issuer => {}
        _ => return Err(Rejection::WrongIssuer),
    }
    // §4.1.3: `aud` is a string or an array of strings; one match is enough.
    let accepted = |aud: &str| provider.audiences.iter().any(|a| a == aud);
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => accepted(aud),
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str().is_some_and(accepted)),
        _ => false,
    };
    if !audience_ok {
        return Err(Rejection::WrongAudience);
    }
    Ok(())
}

/// A NumericDate (RFC 7519 §2): a JSON number of seconds, possibly fractional.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, Rejection> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|v| v.is_finite())
            .map(Some)
            .ok_or(Rejection::Malformed("a date claim is not a number")),
        Some(_) => Err(Rejection::Malformed("a date claim is not a number")),
    }
}

fn extract(
    claims: &Map<String, Value>,
    provider: &JwtProvider,
    forward_claims: &BTreeMap<String, String>,
) -> VerifiedToken {
    let mut scopes = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(list)) => {
                scopes.extend(list.split_ascii_whitespace().map(str::to_string))
            }
            Some(Value::Array(list)) => {
                scopes.extend(list.iter().filter_map(Value::as_str).map(str::to_string))
            }
            _ => {}
        }
    }
    let mut claim_headers = Vec::new();
    let mut absent_headers = Vec::new();
    for (claim, header) in forward_claims {
        match claims.get(claim).and_then(header_value) {
            Some(value) => claim_headers.push((header.clone(), value)),
            None => absent_headers.push(header.clone()),
        }
    }
    VerifiedToken {
        expires_at: claims.get("exp").and_then(Value::as_f64).unwrap_or(0.0),
        scopes,
        identity: Identity {
            consumer: claims.get(&provider.consumer_claim).and_then(scalar_value),
            claim_headers,
            absent_headers,
        },
    }
}

/// A header value for a claim: strings, numbers and booleans as text; an array of those
/// joined with "," (the list syntax of RFC 9110 §5.6.1, so upstreams can split it).
/// Objects, nested arrays and values that are not valid header text are not forwarded.
fn header_value(value: &Value) -> Option<String> {
    match value {
        Value::Array(items) => {
            let parts: Option<Vec<String>> = items.iter().map(scalar_value).collect();
            parts
                .map(|p| p.join(","))
                .filter(|joined| is_header_text(joined))
        }
        other => scalar_value(other),
    }
}

fn scalar_value(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    is_header_text(&text).then_some(text)
}

/// RFC 9110 §5.5: field values exclude CR, LF and NUL (the header-injection characters)
/// and other controls; a claim carrying them is not forwarded.
fn is_header_text(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c == '\t' || !c.is_control())
}

#[cfg(test)]
mod tests;
