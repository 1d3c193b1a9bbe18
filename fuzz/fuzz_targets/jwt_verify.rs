//! Token handling: splitting into header, payload and signature, base64url, the JSON of
//! both, and the verifier with a fixed key set (an HMAC secret, or an Ed25519 public key
//! from a JWKS). It never panics, and it never accepts a token that jsonwebtoken's full
//! `decode` (signature, `exp`, `nbf`, `iss`, `aud`) refuses under the same policy.
//!
//! The first byte chooses: bit 0, the key set (secret or Ed25519); bit 1, whether the rest
//! is a token as sent, or a header and a payload (JSON, split at the first newline) that
//! this target encodes and signs with the key set's private half, so that inputs reach the
//! claim checks past the signature.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{DecodingKey, Validation};
use libfuzzer_sys::fuzz_target;
use tollgate_ext_authz::jwks::KeySet;
use tollgate_ext_authz::verify::verify;
use tollgate_routes::policy::{Algorithm, JwtProvider, KeySource, TokenSource};

/// The fixed keys; the seed corpus's tokens were signed with them (fuzz/README.md).
const SECRET: &[u8] = b"tollgate-fuzz-shared-secret-of-32+bytes";
const ED25519_SEED: [u8; 32] = [7; 32];
const ISSUER: &str = "https://id.example.com";
const AUDIENCE: &str = "tollgate";
const SKEW: u64 = 60;
/// jsonwebtoken reads the clock itself, after this target did: two seconds more leeway on
/// its side keeps a second boundary crossed between the two from counting as a difference.
const CLOCK_SLACK: u64 = 2;

struct Fixture {
    secret: KeySet,
    ed25519: KeySet,
    ed25519_pair: Ed25519KeyPair,
    ed25519_x: String,
    secret_provider: JwtProvider,
    ed25519_provider: JwtProvider,
}

fn provider(algorithms: Vec<Algorithm>) -> JwtProvider {
    JwtProvider {
        issuer: ISSUER.into(),
        audiences: vec![AUDIENCE.into()],
        keys: KeySource::SharedSecretEnv("FUZZ".into()),
        algorithms,
        clock_skew: Duration::from_secs(SKEW),
        consumer_claim: "sub".into(),
        token: TokenSource::BearerHeader("authorization".into()),
        enforce: Default::default(),
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        tollgate_ext_authz::install_crypto();
        let pair = Ed25519KeyPair::from_seed_unchecked(&ED25519_SEED).expect("seed");
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let jwks = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": x}
        ]});
        Fixture {
            secret: KeySet::from_secret(SECRET).expect("secret"),
            ed25519: KeySet::parse_jwks(jwks.to_string().as_bytes()).expect("jwks"),
            ed25519_pair: pair,
            ed25519_x: x,
            secret_provider: provider(vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]),
            ed25519_provider: provider(vec![Algorithm::EdDSA]),
        }
    })
}

fn hmac(alg: &str, input: &[u8]) -> Vec<u8> {
    let algorithm = match alg {
        "HS384" => aws_lc_rs::hmac::HMAC_SHA384,
        "HS512" => aws_lc_rs::hmac::HMAC_SHA512,
        _ => aws_lc_rs::hmac::HMAC_SHA256,
    };
    let key = aws_lc_rs::hmac::Key::new(algorithm, SECRET);
    aws_lc_rs::hmac::sign(&key, input).as_ref().to_vec()
}

/// `header.payload.signature`, signed as the header's `alg` asks (when it can be read).
fn signed(fixture: &Fixture, ed25519: bool, header: &[u8], payload: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = if ed25519 {
        fixture
            .ed25519_pair
            .sign(input.as_bytes())
            .as_ref()
            .to_vec()
    } else {
        let alg = serde_json::from_slice::<serde_json::Value>(header)
            .ok()
            .and_then(|h| h.get("alg")?.as_str().map(str::to_string))
            .unwrap_or_default();
        hmac(&alg, input.as_bytes())
    };
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// jsonwebtoken's verdict under the same policy: the reference check.
fn reference_accepts(fixture: &Fixture, ed25519: bool, token: &str) -> Result<(), String> {
    let (key, algorithms) = if ed25519 {
        let key = DecodingKey::from_ed_components(&fixture.ed25519_x).expect("x");
        (key, vec![jsonwebtoken::Algorithm::EdDSA])
    } else {
        let algorithms = vec![
            jsonwebtoken::Algorithm::HS256,
            jsonwebtoken::Algorithm::HS384,
            jsonwebtoken::Algorithm::HS512,
        ];
        (DecodingKey::from_secret(SECRET), algorithms)
    };
    let mut validation = Validation::new(algorithms[0]);
    validation.algorithms = algorithms;
    validation.leeway = SKEW + CLOCK_SLACK;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .map(|_| ())
        .map_err(|error| format!("{error:?}"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let fixture = fixture();
    let ed25519 = mode & 1 == 1;
    let token = if mode & 2 == 0 {
        match std::str::from_utf8(rest) {
            Ok(token) => token.to_string(),
            Err(_) => return,
        }
    } else {
        let at = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let (header, payload) = rest.split_at(at);
        signed(
            fixture,
            ed25519,
            header,
            payload.get(1..).unwrap_or_default(),
        )
    };
    let (keys, provider) = if ed25519 {
        (&fixture.ed25519, &fixture.ed25519_provider)
    } else {
        (&fixture.secret, &fixture.secret_provider)
    };
    let forward = BTreeMap::from([
        ("email".to_string(), "x-email".to_string()),
        ("groups".to_string(), "x-groups".to_string()),
    ]);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let Ok(verified) = verify(&token, keys, provider, &forward, now) else {
        return;
    };
    if dates_beyond_jsonwebtoken(&token) || embedded_key_beyond_jsonwebtoken(&token) {
        return;
    }
    if let Err(refusal) = reference_accepts(fixture, ed25519, &token) {
        panic!("accepted a token jsonwebtoken refuses ({refusal}): {token}");
    }
    // What is forwarded upstream is header-safe text.
    for (_, value) in &verified.identity.claim_headers {
        assert!(!value.chars().any(|c| c == '\r' || c == '\n' || c == '\0'));
    }
});

/// An accepted difference (fuzz/README.md): RFC 7519 §2 makes a NumericDate any JSON number,
/// fractions and values past 2^64 included, and Tollgate reads `exp` and `nbf` so;
/// jsonwebtoken reads them as u64 and treats any other number as absent.
fn dates_beyond_jsonwebtoken(token: &str) -> bool {
    decoded_part(token, 1).is_some_and(|claims| {
        ["exp", "nbf"].iter().any(|name| {
            matches!(claims.get(*name), Some(serde_json::Value::Number(n)) if n.as_u64().is_none())
        })
    })
}

/// An accepted difference (fuzz/README.md): Tollgate never reads a key a token carries in its
/// header (`jwk`), so it checks only that the member is a JWK (a `kty` and RFC 7517's
/// registered members of their types); jsonwebtoken also reads the key material its `kty`
/// names and refuses a key it cannot read.
fn embedded_key_beyond_jsonwebtoken(token: &str) -> bool {
    decoded_part(token, 0).is_some_and(|header| header.contains_key("jwk"))
}

/// The token's `index`th part (0 the header, 1 the payload) as a JSON object.
fn decoded_part(token: &str, index: usize) -> Option<serde_json::Map<String, serde_json::Value>> {
    use base64::Engine as _;
    let part = token.split('.').nth(index)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(serde_json::Value::Object(members)) => Some(members),
        _ => None,
    }
}
