//! Public keys parsed once, when their key set is loaded, so that checking a signature costs
//! only the signature check. jsonwebtoken 11 rebuilds the key from its bytes on every
//! verification; for RSA that is a fresh `EVP_PKEY` and Montgomery context per token, which
//! profiled at 8–10% of the service's CPU under fresh RS256 tokens.
//!
//! The algorithm parameters are exactly those of jsonwebtoken's aws-lc backend
//! (`src/crypto/aws_lc/{rsa,ecdsa,eddsa}.rs` in jsonwebtoken 11.1), so the same signatures
//! verify and the same keys are refused. In particular an RSA key under 2048 bits parses but
//! fails every check, as before: aws-lc-rs enforces the 2048–8192 bit range at
//! verification, not at parsing.

use aws_lc_rs::signature::{
    self, ParsedPublicKey, RsaParameters, RsaPublicKeyComponents, VerificationAlgorithm,
};
use tollgate_routes::policy::Algorithm;

/// Public key bytes as a JWK carries them, decoded from base64url.
pub enum PublicKeyBytes {
    /// RFC 7518 §6.3.1: the modulus and exponent, big-endian.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// A SEC 1 §2.3.3 uncompressed point (EC), or the 32-byte key itself (Ed25519, RFC 8037
    /// §2).
    Encoded(Vec<u8>),
}

/// A public key, parsed for each algorithm it may verify.
///
/// aws-lc-rs binds a parsed key to one algorithm, and an RSA JWK without `alg` may verify
/// any of RS256…PS512, so such a key holds up to six. They are all built when the set is
/// loaded rather than on first use: loads are rare (a file change, a refresh, an unknown
/// `kid` under a cooldown), the work is bounded (at most six parses for an RSA key, one for
/// any other, each a few microseconds), and the request path then only reads, with no lock
/// and no first-token latency. The Montgomery context, the costly part, is still computed on
/// a key's first verification, once, and kept in the key for later ones.
#[derive(Clone, Default)]
pub struct PublicKey {
    /// Algorithms whose parse failed are absent, so their tokens fail the check, as they
    /// did when jsonwebtoken failed to build the key on each verification.
    parsed: Vec<(Algorithm, ParsedPublicKey)>,
}

impl PublicKey {
    /// Parses `bytes` for each of `algorithms` that fits them.
    pub fn parse(bytes: &PublicKeyBytes, algorithms: impl IntoIterator<Item = Algorithm>) -> Self {
        let parsed = algorithms
            .into_iter()
            .filter_map(|alg| {
                let key = match bytes {
                    PublicKeyBytes::Rsa { n, e } => {
                        let components = RsaPublicKeyComponents { n, e };
                        components.to_parsed_public_key(rsa_parameters(alg)?)
                    }
                    PublicKeyBytes::Encoded(encoded) => {
                        ParsedPublicKey::new(encoded_algorithm(alg)?, encoded)
                    }
                };
                key.ok().map(|key| (alg, key))
            })
            .collect();
        PublicKey { parsed }
    }

    /// Whether no algorithm parsed: the key can verify nothing.
    pub fn is_empty(&self) -> bool {
        self.parsed.is_empty()
    }

    /// Whether `signature` is a valid `alg` signature of `message` under this key.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        self.parsed
            .iter()
            .find(|(parsed_for, _)| *parsed_for == alg)
            .is_some_and(|(_, key)| key.verify_sig(message, signature).is_ok())
    }
}

/// jsonwebtoken's `Rsa*Verifier`s: RFC 7518 §3.3 and §3.5 with its 2048-bit floor.
fn rsa_parameters(alg: Algorithm) -> Option<&'static RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

/// jsonwebtoken's `Es256Verifier`, `Es384Verifier` and `EdDSAVerifier`. JWS carries ECDSA
/// signatures as fixed-width r‖s (RFC 7518 §3.4), not DER.
fn encoded_algorithm(alg: Algorithm) -> Option<&'static dyn VerificationAlgorithm> {
    Some(match alg {
        Algorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
        Algorithm::EdDSA => &signature::ED25519,
        _ => return None,
    })
}
