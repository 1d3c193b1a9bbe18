use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use tollgate_routes::policy::{Algorithm, JwtProvider, KeySource, TokenSource};

use super::*;
use crate::jwks::{KeyKind, KeySet};
use tollgate_testkit::jwt::{self, b64, claims, now, TestKey, AUDIENCE, ISSUER};

fn provider(algorithms: &[Algorithm]) -> JwtProvider {
    JwtProvider {
        issuer: ISSUER.into(),
        audiences: vec![AUDIENCE.into(), "other".into()],
        keys: KeySource::JwksFile("jwks.json".into()),
        algorithms: algorithms.to_vec(),
        clock_skew: Duration::from_secs(60),
        consumer_claim: "sub".into(),
        token: TokenSource::BearerHeader("authorization".into()),
        enforce: Default::default(),
    }
}

/// The claims every test provider forwards.
fn forward() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("tier".to_string(), "x-tier".to_string()),
        ("groups".to_string(), "x-groups".to_string()),
        ("email".to_string(), "x-email".to_string()),
    ])
}

fn public_provider() -> JwtProvider {
    provider(
        &Algorithm::ALL
            .into_iter()
            .filter(|a| !a.is_symmetric())
            .collect::<Vec<_>>(),
    )
}

fn keyset(keys: &[&TestKey]) -> KeySet {
    KeySet::parse_jwks(jwt::jwks(keys).as_bytes()).expect("jwks")
}

/// A key set of the one JWK `jwk`, loaded as the service loads a JWKS.
fn load_jwk(jwk: &serde_json::Value) -> Result<KeySet, crate::jwks::JwksError> {
    KeySet::parse_jwks(json!({"keys": [jwk]}).to_string().as_bytes())
}

fn check(key: &TestKey, token: &str) -> Result<VerifiedToken, Rejection> {
    verify(
        token,
        &keyset(&[key]),
        &public_provider(),
        &forward(),
        now(),
    )
}

fn with_claims(key: &TestKey, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut c = claims();
    edit(&mut c);
    key.mint(&c)
}

#[test]
fn valid_rs256_token_passes() {
    let key = TestKey::rsa("r1", 0);
    let verified = check(&key, &key.mint(&claims())).expect("valid");
    assert_eq!(verified.identity.consumer.as_deref(), Some("user-42"));
    assert_eq!(verified.scopes, vec!["invoices:read", "profile"]);
}

#[test]
fn valid_ps256_token_passes() {
    let key = TestKey::rsa("r1", 0);
    let token = key.mint_with(&json!({"alg": "PS256", "kid": "r1"}), &claims());
    assert!(check(&key, &token).is_ok());
}

#[test]
fn valid_es256_token_passes() {
    let key = TestKey::p256("e1");
    assert!(check(&key, &key.mint(&claims())).is_ok());
}

#[test]
fn valid_es384_token_passes() {
    let key = TestKey::p384("e3");
    assert!(check(&key, &key.mint(&claims())).is_ok());
}

#[test]
fn valid_eddsa_token_passes() {
    let key = TestKey::ed25519("d1");
    assert!(check(&key, &key.mint(&claims())).is_ok());
}

#[test]
fn valid_hs256_token_passes_with_the_shared_secret() {
    let secret = [7u8; 32];
    let key = TestKey::hmac(&secret);
    let keys = KeySet::from_secret(&secret).expect("secret");
    let token = key.mint(&claims());
    let verified = verify(
        &token,
        &keys,
        &provider(&[Algorithm::HS256]),
        &forward(),
        now(),
    );
    assert!(verified.is_ok(), "{verified:?}");
}

#[test]
fn expired_token_is_rejected() {
    let key = TestKey::p256("e1");
    let token = with_claims(&key, |c| c["exp"] = json!(now() - 120));
    assert_eq!(check(&key, &token), Err(Rejection::Expired));
}

#[test]
fn token_expired_within_the_clock_skew_is_still_accepted() {
    let key = TestKey::p256("e1");
    let token = with_claims(&key, |c| c["exp"] = json!(now() - 30));
    assert!(check(&key, &token).is_ok());
}

#[test]
fn not_yet_valid_token_is_rejected() {
    let key = TestKey::p256("e1");
    let token = with_claims(&key, |c| c["nbf"] = json!(now() + 600));
    assert_eq!(check(&key, &token), Err(Rejection::NotYetValid));
}

#[test]
fn token_issued_in_the_future_beyond_skew_is_rejected() {
    let key = TestKey::p256("e1");
    let token = with_claims(&key, |c| c["iat"] = json!(now() + 600));
    assert_eq!(check(&key, &token), Err(Rejection::IssuedInFuture));
}

#[test]
fn wrong_issuer_is_rejected() {
    let key = TestKey::p256("e1");
    let token = with_claims(&key, |c| c["iss"] = json!("https://evil.example.com"));
    assert_eq!(check(&key, &token), Err(Rejection::WrongIssuer));
}

#[test]
fn wrong_audience_is_rejected() {
    let key = TestKey::p256("e1");
    let token = with_claims(&key, |c| c["aud"] = json!("someone-else"));
    assert_eq!(check(&key, &token), Err(Rejection::WrongAudience));
}

#[test]
fn missing_audience_is_rejected() {
    let key = TestKey::p256("e1");
    let token = with_claims(&key, |c| {
        c.as_object_mut().map(|o| o.remove("aud"));
    });
    assert_eq!(check(&key, &token), Err(Rejection::WrongAudience));
}

#[test]
fn audience_array_with_one_configured_audience_passes() {
    let key = TestKey::p256("e1");
    let token = with_claims(&key, |c| c["aud"] = json!(["a", "other", 7]));
    assert!(check(&key, &token).is_ok());
}

#[test]
fn unknown_kid_is_reported_with_the_kid() {
    let key = TestKey::p256("e1");
    let stranger = TestKey::p256("e2");
    let token = stranger.mint(&claims());
    assert_eq!(
        check(&key, &token),
        Err(Rejection::UnknownKey {
            kid: Some("e2".into())
        })
    );
}

#[test]
fn tampered_payload_is_rejected() {
    let key = TestKey::rsa("r1", 0);
    let token = key.mint(&claims());
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged = claims();
    forged["sub"] = json!("admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(forged.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(check(&key, &tampered), Err(Rejection::BadSignature));
}

#[test]
fn tampered_signature_is_rejected() {
    let key = TestKey::p256("e1");
    let token = key.mint(&claims());
    let (input, sig) = token.rsplit_once('.').expect("three parts");
    let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .expect("sig");
    bytes[10] ^= 0x01;
    let tampered = format!("{input}.{}", b64(&bytes));
    assert_eq!(check(&key, &tampered), Err(Rejection::BadSignature));
}

#[test]
fn alg_none_is_rejected() {
    let key = TestKey::p256("e1");
    let header = b64(json!({"alg": "none", "kid": "e1"}).to_string().as_bytes());
    let payload = b64(claims().to_string().as_bytes());
    let token = format!("{header}.{payload}.");
    assert_eq!(check(&key, &token), Err(Rejection::UnsupportedAlgorithm));
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_rejected() {
    // The algorithm-confusion attack (RFC 8725 §2.1): the attacker knows the public key and
    // uses its bytes as an HMAC secret.
    let key = TestKey::rsa("r1", 0);
    let forger = TestKey::hmac(&TestKey::rsa_public_der(0));
    let token = forger.mint_with(&json!({"alg": "HS256", "kid": "r1"}), &claims());
    assert_eq!(check(&key, &token), Err(Rejection::AlgorithmNotAllowed));
    // Even a provider wrongly allowing HS256 refuses: the key is not a secret.
    let mut lax = public_provider();
    lax.algorithms.push(Algorithm::HS256);
    assert_eq!(
        verify(&token, &keyset(&[&key]), &lax, &forward(), now()),
        Err(Rejection::KeyMismatch)
    );
}

#[test]
fn missing_exp_is_rejected() {
    let key = TestKey::p256("e1");
    let token = with_claims(&key, |c| {
        c.as_object_mut().map(|o| o.remove("exp"));
    });
    assert_eq!(check(&key, &token), Err(Rejection::MissingExpiry));
}

#[test]
fn non_numeric_exp_is_malformed() {
    let key = TestKey::p256("e1");
    let token = with_claims(&key, |c| c["exp"] = json!("tomorrow"));
    assert!(matches!(check(&key, &token), Err(Rejection::Malformed(_))));
}

#[test]
fn missing_scope_is_reported_by_the_scope_check() {
    let key = TestKey::p256("e1");
    let verified = check(&key, &key.mint(&claims())).expect("valid");
    assert_eq!(
        verified.missing_scopes(&["invoices:read", "invoices:write"]),
        vec!["invoices:write"]
    );
    assert!(verified.missing_scopes(&["profile"]).is_empty());
}

#[test]
fn scp_array_counts_as_scopes() {
    let key = TestKey::p256("e1");
    let token = with_claims(&key, |c| {
        c.as_object_mut().map(|o| o.remove("scope"));
        c["scp"] = json!(["a", "b"]);
    });
    let verified = check(&key, &token).expect("valid");
    assert!(verified.missing_scopes(&["a", "b"]).is_empty());
}

#[test]
fn malformed_base64_is_rejected_without_panic() {
    let key = TestKey::p256("e1");
    for token in [
        "!!!.@@@.###",
        "eyJ.eyJ.c2ln",
        "e30.e30.e30",
        "====.====.====",
    ] {
        assert!(
            matches!(check(&key, token), Err(Rejection::Malformed(_))),
            "{token}"
        );
    }
}

#[test]
fn garbage_with_the_wrong_number_of_parts_is_rejected() {
    let key = TestKey::p256("e1");
    for token in ["", "abc", "a.b", "a.b.c.d", "a.b.c.d.e", "..", "...."] {
        assert!(
            matches!(check(&key, token), Err(Rejection::Malformed(_))),
            "{token:?}"
        );
    }
}

#[test]
fn three_part_garbage_in_base64_is_rejected() {
    let key = TestKey::p256("e1");
    let token = format!("{}.{}.{}", b64(b"not json"), b64(b"[1,2]"), b64(b"sig"));
    assert!(matches!(check(&key, &token), Err(Rejection::Malformed(_))));
}

#[test]
fn non_object_payload_is_rejected_after_a_valid_signature() {
    let key = TestKey::p256("e1");
    let token = key.mint(&json!([1, 2, 3]));
    assert!(matches!(check(&key, &token), Err(Rejection::Malformed(_))));
}

#[test]
fn oversized_token_is_rejected_before_decoding() {
    let key = TestKey::p256("e1");
    let token = format!("{}.{}.sig", "a".repeat(MAX_TOKEN_BYTES), "b");
    assert_eq!(check(&key, &token), Err(Rejection::TooLarge));
}

#[test]
fn crit_header_is_rejected() {
    let key = TestKey::p256("e1");
    let header = json!({"alg": "ES256", "kid": "e1", "crit": ["exp"], "exp": 1});
    assert_eq!(
        check(&key, &key.mint_with(&header, &claims())),
        Err(Rejection::CriticalHeader)
    );
    let b64_ext = json!({"alg": "ES256", "kid": "e1", "crit": ["b64"], "b64": false});
    assert_eq!(
        check(&key, &key.mint_with(&b64_ext, &claims())),
        Err(Rejection::CriticalHeader)
    );
}

/// fuzz/'s jwt_verify found it: a header member the verifier does not read held bytes that
/// are not UTF-8, which serde_json skipped unchecked.
#[test]
fn a_header_that_is_not_utf8_is_malformed_even_in_a_member_never_read() {
    let mut header = br#"{"alg":"HS256","k,id":"secre"#.to_vec();
    header.extend_from_slice(&[0xce; 8]);
    header.extend_from_slice(br#"t","typ":"JWT"}"#);
    assert_eq!(
        verdict_for_hs256_header(&header),
        Err(Rejection::Malformed("header is not a JSON object"))
    );
}

/// The verdict on a token with this raw header, validly signed with an HMAC secret.
fn verdict_for_hs256_header(header: &[u8]) -> Result<VerifiedToken, Rejection> {
    let secret = b"0123456789abcdef0123456789abcdef";
    let input = format!("{}.{}", b64(header), b64(claims().to_string().as_bytes()));
    let signature = jwt::hmac("HS256", secret, input.as_bytes());
    let token = format!("{input}.{}", b64(&signature));
    verify(
        &token,
        &KeySet::from_secret(secret).expect("secret"),
        &provider(&[Algorithm::HS256]),
        &forward(),
        now(),
    )
}

#[test]
fn alg_outside_the_allow_list_is_rejected() {
    let key = TestKey::p256("e1");
    let token = key.mint(&claims());
    let rsa_only = provider(&[Algorithm::RS256]);
    assert_eq!(
        verify(&token, &keyset(&[&key]), &rsa_only, &forward(), now()),
        Err(Rejection::AlgorithmNotAllowed)
    );
}

#[test]
fn alg_not_matching_the_key_type_is_rejected() {
    // An ES256 token naming an RSA key's kid: the JWK's kty decides, not the header.
    let rsa = TestKey::rsa("shared", 0);
    let ec = TestKey::p256("shared");
    let token = ec.mint(&claims());
    assert_eq!(check(&rsa, &token), Err(Rejection::KeyMismatch));
    // ES384 against a P-256 key is a mismatch too (crv must fit the alg).
    let token = ec.mint_with(&json!({"alg": "ES384", "kid": "shared"}), &claims());
    assert_eq!(check(&ec, &token), Err(Rejection::KeyMismatch));
}

#[test]
fn jwk_alg_restricts_the_key_to_that_algorithm() {
    let mut key = TestKey::rsa("r1", 0);
    key.jwk["alg"] = json!("PS256");
    let token = key.mint(&claims()); // RS256
    assert_eq!(check(&key, &token), Err(Rejection::KeyMismatch));
}

#[test]
fn jku_and_jwk_headers_are_ignored_not_followed() {
    let key = TestKey::p256("e1");
    let attacker = TestKey::p256("e1");
    let header = json!({
        "alg": "ES256", "kid": "e1",
        "jku": "http://127.0.0.1:1/jwks.json",
        "x5u": "http://127.0.0.1:1/cert.pem",
        "jwk": attacker.jwk,
    });
    assert_eq!(
        check(&key, &attacker.mint_with(&header, &claims())),
        Err(Rejection::BadSignature)
    );
    assert!(check(&key, &key.mint_with(&header, &claims())).is_ok());
}

#[test]
fn token_without_kid_uses_the_only_fitting_key() {
    let ec = TestKey::p256("e1");
    let rsa = TestKey::rsa("r1", 0);
    let token = ec.mint_with(&json!({"alg": "ES256"}), &claims());
    assert!(verify(
        &token,
        &keyset(&[&rsa, &ec]),
        &public_provider(),
        &forward(),
        now()
    )
    .is_ok());
    let other = TestKey::p256("e2");
    assert_eq!(
        verify(
            &token,
            &keyset(&[&ec, &other]),
            &public_provider(),
            &forward(),
            now()
        ),
        Err(Rejection::AmbiguousKey)
    );
}

#[test]
fn forwarded_claims_become_headers_and_absent_ones_are_listed() {
    let key = TestKey::p256("e1");
    let token = with_claims(&key, |c| {
        c["tier"] = json!("gold");
        c["groups"] = json!(["a", "b", 3, true]);
        c["sub"] = json!(42);
    });
    let verified = check(&key, &token).expect("valid");
    assert_eq!(verified.identity.consumer.as_deref(), Some("42"));
    assert_eq!(
        verified.identity.claim_headers,
        vec![
            ("x-groups".to_string(), "a,b,3,true".to_string()),
            ("x-tier".to_string(), "gold".to_string()),
        ]
    );
    assert_eq!(
        verified.identity.absent_headers,
        vec!["x-email".to_string()]
    );
}

#[test]
fn claims_with_control_characters_are_not_forwarded() {
    let key = TestKey::p256("e1");
    let token = with_claims(&key, |c| {
        c["tier"] = json!("gold\r\nx-admin: true");
        c["email"] = json!({"nested": true});
    });
    let verified = check(&key, &token).expect("valid");
    assert!(verified
        .identity
        .claim_headers
        .iter()
        .all(|(h, _)| h == "x-groups"));
    assert!(verified
        .identity
        .absent_headers
        .contains(&"x-tier".to_string()));
    assert!(verified
        .identity
        .absent_headers
        .contains(&"x-email".to_string()));
}

#[test]
fn rejection_text_never_contains_the_kid() {
    let rejection = Rejection::UnknownKey {
        kid: Some("attacker-chosen".into()),
    };
    assert!(!rejection.to_string().contains("attacker"));
}

#[test]
fn a_token_without_its_consumer_claim_is_rejected_so_it_cannot_escape_consumer_limits() {
    let key = TestKey::p256("e1");
    for consumer in [json!(null), json!({"id": "x"}), json!(["a"])] {
        let token = with_claims(&key, |c| {
            if consumer.is_null() {
                c.as_object_mut().map(|o| o.remove("sub"));
            } else {
                c["sub"] = consumer.clone();
            }
        });
        assert_eq!(
            check(&key, &token),
            Err(Rejection::MissingConsumer),
            "sub = {consumer}"
        );
    }
}

// Public keys are parsed once at load instead of by jsonwebtoken on each verification. The
// tests below hold the new check to jsonwebtoken's verdict, algorithm by algorithm.

/// RS256…PS512, ES256, ES384 and EdDSA.
fn asymmetric() -> impl Iterator<Item = Algorithm> + Clone {
    Algorithm::ALL.into_iter().filter(|alg| !alg.is_symmetric())
}

const NOT_BASE64: Rejection = Rejection::Malformed("signature is not base64url");

fn jwk_member(jwk: &serde_json::Value, name: &str) -> Vec<u8> {
    let text = jwk[name].as_str().expect("member");
    URL_SAFE_NO_PAD.decode(text).expect("base64url member")
}

/// The key as `jwks` built it for jsonwebtoken before public keys were parsed at load.
fn jsonwebtoken_key(jwk: &serde_json::Value) -> jsonwebtoken::DecodingKey {
    use jsonwebtoken::DecodingKey;
    match jwk["kty"].as_str() {
        Some("RSA") => {
            DecodingKey::from_rsa_raw_components(&jwk_member(jwk, "n"), &jwk_member(jwk, "e"))
        }
        Some("EC") => {
            let mut point = vec![4];
            point.extend(jwk_member(jwk, "x"));
            point.extend(jwk_member(jwk, "y"));
            DecodingKey::from_ec_der(&point)
        }
        Some("OKP") => DecodingKey::from_ed_der(&jwk_member(jwk, "x")),
        other => panic!("no test key has kty {other:?}"),
    }
}

/// jsonwebtoken's verdict, mapped as `verify` used to map it.
fn jsonwebtoken_verdict(
    jwk: &serde_json::Value,
    alg: Algorithm,
    input: &str,
    signature: &str,
) -> Result<bool, Rejection> {
    // Its backend is chosen explicitly, as the service does, so the comparison is with the
    // aws-lc backend whatever cargo's feature unification picked.
    crate::install_crypto();
    jsonwebtoken::crypto::verify(
        signature,
        input.as_bytes(),
        &jsonwebtoken_key(jwk),
        jwt_algorithm(alg),
    )
    .map_err(|_| NOT_BASE64)
}

/// The verdict with the key loaded as the service loads it.
fn parsed_verdict(
    jwk: &serde_json::Value,
    alg: Algorithm,
    input: &str,
    signature: &str,
) -> Result<bool, Rejection> {
    let keys = load_jwk(jwk).expect("jwks");
    signature_holds(&keys.keys()[0].material, alg, input.as_bytes(), signature)
}

fn assert_same_verdict(
    jwk: &serde_json::Value,
    alg: Algorithm,
    input: &str,
    signature: &str,
    expected: Result<bool, Rejection>,
    case: &str,
) {
    let parsed = parsed_verdict(jwk, alg, input, signature);
    let reference = jsonwebtoken_verdict(jwk, alg, input, signature);
    assert_eq!(
        parsed,
        reference,
        "{} {case}: verdicts differ",
        alg.as_str()
    );
    assert_eq!(parsed, expected, "{} {case}", alg.as_str());
}

/// A signing key for `alg` and another of the same type.
fn key_pair_for(alg: Algorithm) -> (TestKey, TestKey) {
    match alg {
        Algorithm::ES256 => (TestKey::p256("k"), TestKey::p256("k")),
        Algorithm::ES384 => (TestKey::p384("k"), TestKey::p384("k")),
        Algorithm::EdDSA => (TestKey::ed25519("k"), TestKey::ed25519("k")),
        _ => (TestKey::rsa("k", 0), TestKey::rsa("k", 1)),
    }
}

/// The same signature bytes with non-zero unused trailing bits, which a lenient decoder
/// would accept; `None` when the length leaves no unused bits.
fn non_canonical(signature: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    if signature.len().is_multiple_of(4) {
        return None;
    }
    let (head, last) = signature.split_at(signature.len() - 1);
    let index = ALPHABET.iter().position(|c| *c == last.as_bytes()[0])?;
    // Canonical encodings leave the unused low bits zero, so the index is even.
    Some(format!("{head}{}", ALPHABET[index + 1] as char))
}

#[test]
fn parsed_keys_give_jsonwebtokens_verdict_on_every_asymmetric_algorithm() {
    for alg in asymmetric() {
        let (key, other) = key_pair_for(alg);
        let header = json!({"alg": alg.as_str(), "kid": "k"});
        let token = key.mint_with(&header, &claims());
        let (input, signature) = token.rsplit_once('.').expect("three parts");
        let check = |input: &str, signature: &str, expected, case| {
            assert_same_verdict(&key.jwk, alg, input, signature, expected, case)
        };

        check(input, signature, Ok(true), "valid signature");
        let (header_b64, _) = input.split_once('.').expect("two parts");
        let forged = format!("{header_b64}.{}", b64(br#"{"sub":"admin"}"#));
        check(&forged, signature, Ok(false), "tampered payload");
        let mut flipped = URL_SAFE_NO_PAD.decode(signature).expect("signature");
        let middle = flipped.len() / 2;
        flipped[middle] ^= 1;
        check(input, &b64(&flipped), Ok(false), "tampered signature");
        let foreign = b64(&other.sign(alg.as_str(), input.as_bytes()));
        check(input, &foreign, Ok(false), "signature by another key");
        check(input, "", Ok(false), "empty signature");
        check(
            input,
            &format!("{signature}="),
            Err(NOT_BASE64),
            "padded signature",
        );
        if let Some(lenient) = non_canonical(signature) {
            check(input, &lenient, Err(NOT_BASE64), "non-canonical signature");
        }
    }
}

#[test]
fn rsa_keys_under_2048_bits_are_refused_by_both_verifiers() {
    let n = URL_SAFE_NO_PAD.decode(jwt::SMALL_RSA_N).expect("n");
    let e = URL_SAFE_NO_PAD.decode(jwt::SMALL_RSA_E).expect("e");
    let jwk = json!({"kty": "RSA", "n": jwt::SMALL_RSA_N, "e": jwt::SMALL_RSA_E});
    let input = jwt::SMALL_RSA_INPUT;
    // The signatures are genuine: verifiers that allow 1024-bit keys accept them, so the
    // refusals below are for the key's size.
    let components = aws_lc_rs::signature::RsaPublicKeyComponents { n: &n, e: &e };
    for (alg, legacy) in [
        (
            0,
            &aws_lc_rs::signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
        ),
        (
            2,
            &aws_lc_rs::signature::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY,
        ),
    ] {
        let (_, signature) = jwt::SMALL_RSA_SIGNATURES[alg];
        let signature = URL_SAFE_NO_PAD.decode(signature).expect("signature");
        assert!(components
            .verify(legacy, input.as_bytes(), &signature)
            .is_ok());
    }
    // The loader refuses such a key before parsing it, so the parser is fed directly: its
    // refusal must not rest on the loader alone.
    assert!(matches!(
        load_jwk(&jwk),
        Err(crate::jwks::JwksError::NoUsableKey(_))
    ));
    for (name, signature) in jwt::SMALL_RSA_SIGNATURES {
        let alg = Algorithm::parse(name).expect("alg");
        let bytes = crate::jwks::PublicKeyBytes::Rsa {
            n: n.clone(),
            e: e.clone(),
        };
        let public = crate::jwks::PublicKey::parse(&bytes, [alg]);
        // It parses, as jsonwebtoken's key did; the size is enforced at each verification.
        assert!(!public.is_empty(), "{name}");
        let parsed = signature_holds(
            &KeyMaterial::Public(public),
            alg,
            input.as_bytes(),
            signature,
        );
        assert_eq!(parsed, Ok(false), "{name}");
        assert_eq!(
            jsonwebtoken_verdict(&jwk, alg, input, signature),
            Ok(false),
            "{name}"
        );
    }
}

#[test]
fn a_modulus_padded_with_zero_octets_is_the_same_key() {
    // RFC 7518 §6.3.1.1 wants the fewest octets, yet issuers pad the modulus and the
    // exponent with zeros (a DER habit) and Envoy's jwt_authn accepts them; jsonwebtoken's
    // aws-lc backend does not, so here the loader is the one to trim them.
    let rsa = TestKey::rsa("k", 0);
    let mut jwk = rsa.jwk.clone();
    for member in ["n", "e"] {
        let mut padded = vec![0, 0];
        padded.extend(jwk_member(&rsa.jwk, member));
        jwk[member] = json!(b64(&padded));
    }
    let keys = load_jwk(&jwk).expect("the padded key loads");
    let token = rsa.mint(&claims());
    assert!(verify(&token, &keys, &public_provider(), &forward(), now()).is_ok());
    let forged = TestKey::rsa("k", 1).mint(&claims());
    assert_eq!(
        verify(&forged, &keys, &public_provider(), &forward(), now()),
        Err(Rejection::BadSignature)
    );
}

#[test]
fn a_key_that_does_not_parse_refuses_its_tokens_as_jsonwebtoken_did() {
    // A point off the curve: the loader keeps the key (its coordinates have the right
    // sizes) and every signature it is asked about fails, as with jsonwebtoken.
    let ec = TestKey::p256("k");
    let mut y = jwk_member(&ec.jwk, "y");
    y[31] ^= 1;
    let mut jwk = ec.jwk.clone();
    jwk["y"] = json!(b64(&y));

    let token = ec.mint(&claims());
    let (input, signature) = token.rsplit_once('.').expect("three parts");
    let alg = Algorithm::parse(ec.alg).expect("alg");
    assert_same_verdict(&jwk, alg, input, signature, Ok(false), "unparsable key");
    let keys = load_jwk(&jwk).expect("the loader keeps the key");
    assert_eq!(
        verify(&token, &keys, &public_provider(), &forward(), now()),
        Err(Rejection::BadSignature)
    );
}

#[test]
fn one_rsa_key_without_alg_verifies_each_rsa_algorithm_in_turn() {
    let key = TestKey::rsa("r1", 0);
    let keys = keyset(&[&key]);
    // Twice round, so each algorithm's parsed key is used again after the others.
    let rsa_algorithms = asymmetric().filter(|a| KeyKind::Rsa.accepts(*a));
    for alg in rsa_algorithms.clone().chain(rsa_algorithms) {
        let token = key.mint_with(&json!({"alg": alg.as_str(), "kid": "r1"}), &claims());
        let verified = verify(&token, &keys, &public_provider(), &forward(), now());
        assert!(verified.is_ok(), "{}: {verified:?}", alg.as_str());
    }
}

/// fuzz/'s jwt_verify found it: a registered header member of the wrong type (`typ` as an
/// object) is malformed, as jsonwebtoken has it, though this service never reads `typ`.
#[test]
fn a_registered_header_member_of_the_wrong_type_is_malformed() {
    assert_eq!(
        verdict_for_hs256_header(br#"{"alg":"HS256","typ":{"a":1}}"#),
        Err(Rejection::Malformed("header is not a JSON object"))
    );
    assert!(verdict_for_hs256_header(br#"{"alg":"HS256","typ":"JWT"}"#).is_ok());
    // Found next: a JWE member (RFC 7516 §4.1.3) that is a number.
    assert_eq!(
        verdict_for_hs256_header(br#"{"alg":"HS256","zip":1790000000}"#),
        Err(Rejection::Malformed("header is not a JSON object"))
    );
    assert!(verdict_for_hs256_header(br#"{"alg":"HS256","zip":"DEF"}"#).is_ok());
}

/// fuzz/'s jwt_verify found it: an embedded `jwk` that is no JWK (no `kty`, a numeric `use`)
/// is malformed, as jsonwebtoken has it, though this service never reads an embedded key.
#[test]
fn an_embedded_jwk_that_is_no_jwk_is_malformed() {
    for header in [
        &br#"{"alg":"HS256","jwk":{"use":"sig"}}"#[..],
        br#"{"alg":"HS256","jwk":{"kty":"oct","use":1790000000}}"#,
        br#"{"alg":"HS256","jwk":{"kty":"oct","key_ops":"sign"}}"#,
        br#"{"alg":"HS256","jwk":"AAAA"}"#,
    ] {
        assert_eq!(
            verdict_for_hs256_header(header),
            Err(Rejection::Malformed("header is not a JSON object")),
            "{}",
            String::from_utf8_lossy(header)
        );
    }
    // A well-formed one is ignored: the key that checks the signature is the provider's.
    assert!(verdict_for_hs256_header(
        br#"{"alg":"HS256","jwk":{"kty":"oct","use":"sig","k":"AAAA","key_ops":["verify"]}}"#
    )
    .is_ok());
}

/// fuzz/'s jwt_verify found it: a number past f64's range in a member never read
/// (`4e4800`) is not JSON serde_json reads, yet was skipped unchecked.
#[test]
fn a_header_number_out_of_range_is_malformed_even_in_a_member_never_read() {
    assert_eq!(
        verdict_for_hs256_header(br#"{"alg":"HS256","auxp":410244e4800}"#),
        Err(Rejection::Malformed("header is not a JSON object"))
    );
    assert!(verdict_for_hs256_header(br#"{"alg":"HS256","auxp":410244e48}"#).is_ok());
}

/// fuzz/'s jwt_verify found it: a payload naming `sub` twice was accepted with the last one.
#[test]
fn a_claim_named_twice_is_malformed() {
    let secret = b"0123456789abcdef0123456789abcdef";
    let sign = |payload: &str| {
        let input = format!("{}.{}", b64(br#"{"alg":"HS256"}"#), b64(payload.as_bytes()));
        let signature = jwt::hmac("HS256", secret, input.as_bytes());
        format!("{input}.{}", b64(&signature))
    };
    let once = claims().to_string();
    let twice = format!("{},\"sub\":\"someone-else\"}}", once.trim_end_matches('}'));
    let check = |token: &str| {
        verify(
            token,
            &KeySet::from_secret(secret).expect("secret"),
            &provider(&[Algorithm::HS256]),
            &forward(),
            now(),
        )
    };
    assert!(check(&sign(&once)).is_ok(), "the claims once are accepted");
    assert_eq!(
        check(&sign(&twice)),
        Err(Rejection::Malformed(
            "payload is not a JSON object naming each claim once"
        ))
    );
}
