//! The signing keys of the soak's JWT provider and the tokens the load carries.
//!
//! A rotation is done the way an identity provider must do it for verifiers that read a
//! JWKS file: publish the new key beside the old one, wait until the gateway accepts tokens
//! of the new key, switch minting to it, wait until no request carrying an old token is in
//! flight, and only then drop the old key. Every JWKS write is a rename, so the verifier
//! never reads half a document.

use serde_json::json;
use tollgate_testkit::jwt::{self, TestKey};

pub const ISSUER: &str = "https://id.soak.example";
pub const AUDIENCE: &str = "soak-api";

/// Consumers (`sub`) the load's tokens name, one token each per key.
pub const CONSUMERS: u64 = 16;

/// Longer than any soak: a token never expires under way, so only the key decides.
const TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

/// A signing key of the rotation.
pub struct SigningKey {
    key: TestKey,
}

impl SigningKey {
    /// A fresh P-256 key (ES256), `kid` `soak-<generation>`.
    pub fn generate(generation: u32) -> Self {
        SigningKey {
            key: TestKey::p256(&format!("soak-{generation}")),
        }
    }

    /// A token for `subject`, valid for the whole soak.
    pub fn mint(&self, subject: &str) -> String {
        let now = jwt::now();
        self.key.mint(&json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": now,
            "exp": now + TOKEN_LIFETIME_SECS,
        }))
    }

    /// The tokens of every consumer.
    pub fn tokens(&self) -> Tokens {
        Tokens {
            bearer: (0..CONSUMERS)
                .map(|n| format!("Bearer {}", self.mint(&format!("consumer-{n}"))))
                .collect(),
        }
    }
}

/// The JWKS holding `keys`' public halves.
pub fn jwks(keys: &[&SigningKey]) -> String {
    let keys: Vec<&TestKey> = keys.iter().map(|k| &k.key).collect();
    jwt::jwks(&keys)
}

/// The `authorization` values of one key generation, one per consumer.
#[derive(Debug)]
pub struct Tokens {
    bearer: Vec<String>,
}

impl Tokens {
    /// The `authorization` value request `seq` carries (consumers in turn).
    pub fn bearer(&self, seq: u64) -> String {
        self.bearer[(seq % self.bearer.len() as u64) as usize].clone()
    }
}
