//! Key sets: the verification keys of one auth provider, parsed from a JWKS document
//! (RFC 7517) or made from a shared secret, and kept current by [`KeyStore`] (a local file
//! reloaded on change, or a remote JWKS fetched, refreshed and re-fetched on an unknown `kid`
//! under a cooldown).
//!
//! Parsing is strict about what a key may be used for and lenient about keys it cannot use:
//! an encryption key, an unknown key type or a P-521 key in an issuer's set is skipped (and
//! logged) so that one exotic key does not take the usable ones down with it.

mod public;
mod remote;
mod store;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tollgate_routes::policy::Algorithm;

pub use public::{PublicKey, PublicKeyBytes};
pub use remote::{FetchError, HttpClient, RemoteJwks};
pub use store::{KeyOrigin, KeyStore, KEY_REFRESH_COOLDOWN};

/// The largest JWKS document accepted; real sets are a few KiB.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// RFC 7518 §3.3: RSA keys of 2048 bits or larger MUST be used.
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// RFC 7518 §3.2: an HMAC key must be at least as long as the hash output; HS256 is the
/// smallest at 32 bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// Key material in JWKs is base64url (RFC 7517 §4); some issuers pad it, which is harmless.
const KEY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwksError {
    #[error("JWKS is not valid JSON with a \"keys\" array: {0}")]
    Syntax(String),
    #[error("JWKS is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("JWKS has no usable signing key{}", skipped_suffix(.0))]
    NoUsableKey(Vec<String>),
    #[error("shared secret is shorter than {MIN_SECRET_BYTES} bytes (RFC 7518 §3.2)")]
    ShortSecret,
}

fn skipped_suffix(skipped: &[String]) -> String {
    if skipped.is_empty() {
        String::new()
    } else {
        format!(" (skipped: {})", skipped.join("; "))
    }
}

/// What a key is, which decides the algorithms it may verify (RFC 8725 §3.1: the
/// algorithm must match the key, or a public key could be used as an HMAC secret).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
    Secret,
}

impl KeyKind {
    pub fn accepts(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::EcP256 => alg == ES256,
            KeyKind::EcP384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
            KeyKind::Secret => alg.is_symmetric(),
        }
    }
}

/// One verification key.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's own `alg`, when it names one: then that is the only algorithm it verifies.
    pub alg: Option<Algorithm>,
    pub material: KeyMaterial,
}

/// What checks a key's signatures.
#[derive(Clone)]
pub enum KeyMaterial {
    /// An HMAC secret, still checked by jsonwebtoken: a MAC has no key set-up worth keeping,
    /// and jsonwebtoken compares it in constant time.
    Secret(DecodingKey),
    /// A public key, parsed when the set was loaded.
    Public(PublicKey),
}

impl Key {
    /// Whether this key may verify a token signed with `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        accepts(self.kind, self.alg, alg)
    }
}

/// Whether a key of `kind`, limited to `own` when its JWK names an `alg`, may verify `alg`.
fn accepts(kind: KeyKind, own: Option<Algorithm>, alg: Algorithm) -> bool {
    kind.accepts(alg) && own.is_none_or(|own| own == alg)
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// An immutable set of keys; replaced whole when the source changes.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: Vec<Key>,
    /// SHA-256 of the source bytes, so an unchanged refetch does not count as a change.
    fingerprint: [u8; 32],
}

impl KeySet {
    /// A set holding one HMAC secret; it matches any `kid` (a shared secret has no name).
    pub fn from_secret(secret: &[u8]) -> Result<KeySet, JwksError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(JwksError::ShortSecret);
        }
        Ok(KeySet {
            keys: vec![Key {
                kid: None,
                kind: KeyKind::Secret,
                alg: None,
                material: KeyMaterial::Secret(DecodingKey::from_secret(secret)),
            }],
            fingerprint: Sha256::digest(secret).into(),
        })
    }

    /// Parses a JWKS document. Symmetric (`oct`) keys are skipped: a JWKS is public, and
    /// secrets come only from `shared_secret_file`/`shared_secret_env`.
    pub fn parse_jwks(bytes: &[u8]) -> Result<KeySet, JwksError> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge);
        }
        let doc: JwksDoc =
            serde_json::from_slice(bytes).map_err(|e| JwksError::Syntax(e.to_string()))?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (index, raw) in doc.keys.into_iter().enumerate() {
            let name = raw
                .kid
                .clone()
                .unwrap_or_else(|| format!("key #{}", index + 1));
            match raw.into_key() {
                Ok(key) => keys.push(key),
                Err(reason) => skipped.push(format!("\"{name}\": {reason}")),
            }
        }
        if !skipped.is_empty() {
            tracing::debug!(skipped = ?skipped, "ignored JWKS entries");
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey(skipped));
        }
        Ok(KeySet {
            keys,
            fingerprint: Sha256::digest(bytes).into(),
        })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// The key that verifies a token with this `kid` and `alg`.
    ///
    /// With a `kid`, only keys of that id are candidates (a secret matches any). Without
    /// one, the token is accepted only if exactly one key could verify it: trying every key
    /// in turn would let a token cost as many signature checks as the set has keys.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> KeyLookup<'_> {
        let named = |key: &&Key| match (kid, key.kid.as_deref()) {
            (_, None) if key.kind == KeyKind::Secret => true,
            (Some(want), Some(have)) => want == have,
            (Some(_), None) => false,
            (None, _) => true,
        };
        let mut candidates = self.keys.iter().filter(named).peekable();
        if candidates.peek().is_none() {
            return KeyLookup::Unknown;
        }
        let mut usable = candidates.filter(|key| key.accepts(alg));
        match (usable.next(), usable.next(), kid) {
            (Some(key), None, _) => KeyLookup::Found(key),
            // Duplicate kids for one algorithm (RFC 7517 §4.5 says they should differ):
            // take the first, as the set's order is the issuer's preference.
            (Some(key), Some(_), Some(_)) => KeyLookup::Found(key),
            (Some(_), Some(_), None) => KeyLookup::Ambiguous,
            (None, _, _) => KeyLookup::WrongType,
        }
    }
}

/// The outcome of looking a token's key up.
#[derive(Debug)]
pub enum KeyLookup<'a> {
    Found(&'a Key),
    /// No key has that `kid` (possibly a rotation this set has not seen yet).
    Unknown,
    /// Keys of that `kid` exist, but none may verify the token's `alg`.
    WrongType,
    /// No `kid`, and several keys could verify the token.
    Ambiguous,
}

#[derive(Deserialize)]
struct JwksDoc {
    keys: Vec<RawJwk>,
}

/// The JWK members this service reads (RFC 7517 §4, RFC 7518 §6, RFC 8037 §2).
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

impl RawJwk {
    fn into_key(self) -> Result<Key, String> {
        // RFC 7517 §4.2/§4.3: a key marked for encryption, or whose operations exclude
        // "verify", must not verify signatures.
        if let Some(use_) = &self.use_ {
            if use_ != "sig" {
                return Err(format!("use is \"{use_}\", not \"sig\""));
            }
        }
        if let Some(ops) = &self.key_ops {
            if !ops.iter().any(|op| op == "verify") {
                return Err("key_ops does not include \"verify\"".into());
            }
        }
        let alg = match &self.alg {
            None => None,
            Some(name) => match Algorithm::parse(name) {
                Some(alg) => Some(alg),
                None => return Err(format!("unsupported alg \"{name}\"")),
            },
        };
        let (kind, bytes) = match (self.kty.as_str(), self.crv.as_deref()) {
            ("RSA", _) => {
                // RFC 7518 §6.3.1.1 asks for the fewest octets, but some issuers pad the
                // modulus with a zero octet (a DER habit). The integer is the same, Envoy's
                // jwt_authn (BN_bin2bn) accepts it, and aws-lc refuses it: so it is trimmed
                // here rather than loaded as a key that can never verify.
                let n = without_leading_zeros(decode_member("n", self.n.as_deref())?);
                let e = without_leading_zeros(decode_member("e", self.e.as_deref())?);
                if n.len() < MIN_RSA_MODULUS_BYTES {
                    return Err(format!("RSA key has {} bits, fewer than 2048", n.len() * 8));
                }
                (KeyKind::Rsa, PublicKeyBytes::Rsa { n, e })
            }
            ("EC", Some(crv @ ("P-256" | "P-384"))) => {
                let (kind, size) = if crv == "P-256" {
                    (KeyKind::EcP256, 32)
                } else {
                    (KeyKind::EcP384, 48)
                };
                let x = decode_member("x", self.x.as_deref())?;
                let y = decode_member("y", self.y.as_deref())?;
                if x.len() != size || y.len() != size {
                    return Err(format!("{crv} coordinates must be {size} bytes"));
                }
                // SEC 1 §2.3.3 uncompressed point, which is what the parser takes.
                let mut point = Vec::with_capacity(1 + 2 * size);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (kind, PublicKeyBytes::Encoded(point))
            }
            ("OKP", Some("Ed25519")) => {
                let x = decode_member("x", self.x.as_deref())?;
                if x.len() != 32 {
                    return Err("Ed25519 public key must be 32 bytes".into());
                }
                (KeyKind::Ed25519, PublicKeyBytes::Encoded(x))
            }
            ("EC" | "OKP", crv) => {
                return Err(format!("unsupported curve {}", crv.unwrap_or("(none)")));
            }
            ("oct", _) => return Err("symmetric keys do not belong in a JWKS".into()),
            (kty, _) => return Err(format!("unsupported kty \"{kty}\"")),
        };
        if let Some(alg) = alg {
            if !kind.accepts(alg) {
                return Err(format!(
                    "alg {} does not fit kty {}",
                    alg.as_str(),
                    self.kty
                ));
            }
        }
        let usable = Algorithm::ALL
            .into_iter()
            .filter(|&candidate| accepts(kind, alg, candidate));
        let public = PublicKey::parse(&bytes, usable);
        // Kept in the set all the same, as jsonwebtoken kept such a key and failed each
        // verification: its `kid` then still names a key, so its tokens are refused as
        // badly signed rather than sending the store to refetch for an unknown `kid`.
        if public.is_empty() {
            tracing::debug!(kid = ?self.kid, "JWKS key does not parse; its tokens will be refused");
        }
        Ok(Key {
            kid: self.kid,
            kind,
            alg,
            material: KeyMaterial::Public(public),
        })
    }
}

fn decode_member(name: &str, value: Option<&str>) -> Result<Vec<u8>, String> {
    let value = value.ok_or_else(|| format!("missing \"{name}\""))?;
    KEY_BASE64
        .decode(value)
        .map_err(|_| format!("\"{name}\" is not base64url"))
}

/// A big-endian unsigned integer in its fewest octets.
fn without_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

#[cfg(test)]
mod tests;
