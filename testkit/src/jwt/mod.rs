//! Fresh signing keys, their JWKS, and tokens minted by hand, so that tests can also build
//! the malformed and hostile ones; and a JWKS endpoint ([`JwksServer`]). ext-authz's unit
//! tests, integration tests and bench and the conformance suite all build tokens this way.

mod server;

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
    ECDSA_P384_SHA384_FIXED_SIGNING, RSA_PKCS1_SHA256, RSA_PKCS1_SHA384, RSA_PKCS1_SHA512,
    RSA_PSS_SHA256, RSA_PSS_SHA384, RSA_PSS_SHA512,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

pub use server::JwksServer;

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

enum Signer {
    Rsa(&'static RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Hmac(Vec<u8>),
}

/// A signing key with its `kid`, default `alg` and public JWK.
pub struct TestKey {
    pub kid: String,
    pub alg: &'static str,
    signer: Signer,
    pub jwk: Value,
}

/// RSA key generation is slow in a debug build; a few keys are made once per process.
fn rsa_pair(slot: usize) -> &'static RsaKeyPair {
    static PAIRS: [OnceLock<RsaKeyPair>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    PAIRS[slot % 3].get_or_init(|| RsaKeyPair::generate(KeySize::Rsa2048).expect("rsa keygen"))
}

impl TestKey {
    /// RSA 2048; `slot` picks one of three process-wide keys.
    pub fn rsa(kid: &str, slot: usize) -> TestKey {
        let pair = rsa_pair(slot);
        let public = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        TestKey {
            kid: kid.into(),
            alg: "RS256",
            jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "n": b64(&public.n), "e": b64(&public.e)}),
            signer: Signer::Rsa(pair),
        }
    }

    pub fn p256(kid: &str) -> TestKey {
        TestKey::ec(kid, "ES256")
    }

    pub fn p384(kid: &str) -> TestKey {
        TestKey::ec(kid, "ES384")
    }

    fn ec(kid: &str, alg: &'static str) -> TestKey {
        let (signing, crv, size) = if alg == "ES256" {
            (&ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", 32)
        } else {
            (&ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", 48)
        };
        let pair = EcdsaKeyPair::generate(signing).expect("ec keygen");
        let point = pair.public_key().as_ref().to_vec();
        let (x, y) = point[1..].split_at(size);
        TestKey {
            kid: kid.into(),
            alg,
            jwk: json!({"kty": "EC", "kid": kid, "crv": crv, "x": b64(x), "y": b64(y)}),
            signer: Signer::Ec(pair),
        }
    }

    pub fn ed25519(kid: &str) -> TestKey {
        let pair = Ed25519KeyPair::generate().expect("ed25519 keygen");
        let x = pair.public_key().as_ref().to_vec();
        TestKey {
            kid: kid.into(),
            alg: "EdDSA",
            jwk: json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(&x)}),
            signer: Signer::Ed(pair),
        }
    }

    pub fn hmac(secret: &[u8]) -> TestKey {
        TestKey {
            kid: "secret".into(),
            alg: "HS256",
            jwk: Value::Null,
            signer: Signer::Hmac(secret.to_vec()),
        }
    }

    /// The DER SubjectPublicKeyInfo of an RSA key: what an attacker would use as an HMAC
    /// secret in the algorithm-confusion attack.
    pub fn rsa_public_der(slot: usize) -> Vec<u8> {
        rsa_pair(slot)
            .public_key()
            .as_der()
            .expect("public der")
            .as_ref()
            .to_vec()
    }

    /// Signs `header.payload` with this key using `alg` (the key's own unless overridden).
    pub fn sign(&self, alg: &str, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.signer {
            Signer::Rsa(pair) => {
                let encoding: &'static dyn aws_lc_rs::signature::RsaEncoding = match alg {
                    "RS384" => &RSA_PKCS1_SHA384,
                    "RS512" => &RSA_PKCS1_SHA512,
                    "PS256" => &RSA_PSS_SHA256,
                    "PS384" => &RSA_PSS_SHA384,
                    "PS512" => &RSA_PSS_SHA512,
                    _ => &RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(encoding, &rng, input, &mut sig)
                    .expect("rsa sign");
                sig
            }
            Signer::Ec(pair) => pair.sign(&rng, input).expect("ec sign").as_ref().to_vec(),
            Signer::Ed(pair) => pair.sign(input).as_ref().to_vec(),
            Signer::Hmac(secret) => hmac(alg, secret, input),
        }
    }

    /// A token with this key's alg and kid and the given claims.
    pub fn mint(&self, claims: &Value) -> String {
        self.mint_with(
            &json!({"alg": self.alg, "kid": self.kid, "typ": "JWT"}),
            claims,
        )
    }

    /// A token with an arbitrary header, signed with the header's `alg`.
    pub fn mint_with(&self, header: &Value, claims: &Value) -> String {
        let alg = header["alg"].as_str().unwrap_or(self.alg).to_string();
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self.sign(&alg, input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }
}

/// A 1536-bit RSA key, below the 2048 bits RFC 7518 §3.3 requires, with one signature per
/// RSA algorithm over [`SMALL_RSA_INPUT`]. aws-lc-rs will neither generate nor sign with a key
/// this small, so these were made once with OpenSSL 3.0: `openssl genpkey -algorithm RSA
/// -pkeyopt rsa_keygen_bits:1536`, then `openssl dgst -sha256|-sha384|-sha512 -sign` (PSS with
/// `rsa_pss_saltlen:digest` and the matching `rsa_mgf1_md`, as RFC 7518 §3.5 requires), each
/// checked with `openssl dgst -verify`. 1536 rather than 1024 bits because a PS512 signature
/// does not fit in a 1024-bit modulus.
pub const SMALL_RSA_N: &str = "qBVlyD_ShYj2M3y21Lk-C1igB_t14Ly3fn1HLxds2ljlnVZJ3RyNoZodJlzwdXOPfP-lwpGFOv4VsSTLRxcEb2YbwV9-_PpM25xew-3AzvDNftkFwATrvlOFewgueFA8-4etel3Q0aG1wTIbUGKL3MWdbhVxeGt-GbdxbDHIjGE01rwfZzuWctCSYyluMfC_eWHLlfw1Twoubk9SM1jqlE1CfVcYoa6vwf50fwx0-3H08oISFRc3Tcx2Cp9qArgF";
pub const SMALL_RSA_E: &str = "AQAB";
pub const SMALL_RSA_INPUT: &str = "eyJhbGciOiJ0ZXN0In0.eyJzdWIiOiJ1c2VyLTQyIn0";
pub const SMALL_RSA_SIGNATURES: [(&str, &str); 6] = [
    ("RS256", "EfnvlmhXbUGJVc-5pAsvtDuPJHJUUHztasus7waQib0iQeu6dLdJa9HiBUBIUog1XBMiAMPgg_yd-tbG6VsKHKkTFW7JAagtVwwqIDO3C_fIy0GBzquQM6HdsdUluXdsJBU_85og7oRsww-vbVF2QDtBnLlia1AoJEZVyZoah2AHBD0YgggihRgdDBjSe7RyuHZWmwQty3pAMz9iB-WUTSTK5e0rJJR10AAJDb3mz_0smwYscw6vM3CzhTF2Wsx8"),
    ("RS384", "pTMBFI7HLvNDDDV45LPWvfqnRu-CKI2wC2Fm9j4BBCV_SBp0ZBj4YltMzQe3xAezjXx68rhxREEWzXwCfLfkhxd3m_IcUmKD5PsgFb140kCSBNNDb7YX-KITVpP3dL0V8HCMFE5Bsu0Gy_eqVU6iBFRGv_fNBRwXGlWxdXg6lGaLWjq3nF_3HmEh2Bp9UVGH2TWtF41pQ13N8-4WSPKb897x4g6lMRNDIb7iUkLOI7UsPe_iPjZlZLl_ztpQJgnm"),
    ("RS512", "nJAn1-_7XkFS4pVO4z6xKdMGRZpp9oXNJnb0k6QDb94tg3d92qD7BXXcZRaa9OrZ7NnbS_8i3ogmfsR7dKxW0Py7PC3NwO7ovhDwzguPeSzh4Hlr11e9n2Nu5W6lSibJoPX_CWH-bFOv4xFRt2uylct8Se1JqkX9HKI3h8HNhwrDEOp0h1hiTSiRZeWDw9x2CAn_zdmv7lpJpTQoWQWipfhmuK4wCxH7Sv0JpUgMvOT4Z052TWhTGgk_Z_ahUWAC"),
    ("PS256", "G8-XYt0G1xnUqCNCdKRHYDzEdAkwz737goerVTwC-HWjm5QJT9Sj70Y9k-je2LW_USlLhuoJ7LIegrOjcvIyXXdV9abX_60PZHUYYevRveyQqNJpRIpA8l-pyUXaEVuFyOTnq4y0gQztyT9SRUPih7mL6iwvbbNprc1oAxVsK0SCiPn3cfqXGqwGDwNKuGgbbTSLkr8uMXMb_aCsSs8WCOE9bLlsU0G9jqNg8IKqbU6aKviEY5FlGOqs-P78aJoW"),
    ("PS384", "Lsrhx5DTc65QPFk-IK-Rdz_WpVCDeKySc6tckKaTAwLLXOGGIZwKb1LhXaWpK4dBIRqc6neI7hmmDafpNLN3-XeV_vlJM8zdD8_8JwVpZ2evIJkJC2D3CMTP0cVdGxvRlhp2KiiSwaHuf06oMu15I5sWNxOS4MzClKxEoRDixtCHtHRDGt3tT6JGomluQTZqgkqR6du0VQNuyyX7PjfuKLdxQjR88WgKvN0HWNlaLDWmigz8vTX9-JxVyAM_vSzZ"),
    ("PS512", "UW5NoHTTOMr3jH47tfDQ8QlWIpIQO8sLLfWGJX-sJWDgf7m-8lPKGtjTrePkGYJba2mFw-hCzmUDyISSq90MEJWxM3nPmWxKmOccnPHMk36Dkt59AFV0wRutEyRR6Etqsz9QNE4R2RcPHHwf3xISim6ubRcFQnko8GyDW4pk_tbAA3PZa8ik-jfdnKR1OLYg8xXimwfqOKHTaZik6BVqXkdIuzxqzrbsc_h5iWB-oMC-9TDvEL8PnEhWvz8jL3hW"),
];

pub fn hmac(alg: &str, secret: &[u8], input: &[u8]) -> Vec<u8> {
    let algorithm = match alg {
        "HS384" => aws_lc_rs::hmac::HMAC_SHA384,
        "HS512" => aws_lc_rs::hmac::HMAC_SHA512,
        _ => aws_lc_rs::hmac::HMAC_SHA256,
    };
    let key = aws_lc_rs::hmac::Key::new(algorithm, secret);
    aws_lc_rs::hmac::sign(&key, input).as_ref().to_vec()
}

/// A JWKS document holding these keys' public halves.
pub fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

pub const ISSUER: &str = "https://id.example.com";
pub const AUDIENCE: &str = "tollgate";

/// Claims that pass the default test provider, valid for an hour.
pub fn claims() -> Value {
    let now = now();
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-42",
        "iat": now,
        "exp": now + 3600,
        "scope": "invoices:read profile",
    })
}
