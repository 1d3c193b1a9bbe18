//! API keys: a presented key is hashed (SHA-256) and the hash looked up among a keys file's
//! entries (`tollgate_routes::api_keys`); keys themselves are never stored, logged or
//! echoed. [`KeyTable`] is one version of a file, indexed for the request path; [`KeyFile`]
//! is the live file, swapped whole when it changes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sha2::{Digest as _, Sha256};
use tollgate_routes::api_keys::ApiKey;
use tollgate_routes::policy::ConsumerProfile;

use crate::identity::Identity;
use crate::metrics::Metrics;

/// Longer values are refused without hashing: far above any generated key (a 256-bit key is
/// 43 characters in base64url), and a bound on the work an anonymous request can cause.
pub const MAX_KEY_BYTES: usize = 1024;

/// One accepted key, ready for the request path.
#[derive(Debug)]
struct KeyEntry {
    sha256: [u8; 32],
    /// Unix seconds after which the key is refused.
    expires: Option<i64>,
    identity: Arc<Identity>,
}

/// What a presented key turned out to be.
#[derive(Debug, PartialEq)]
pub enum KeyMatch<'a> {
    Valid(&'a Arc<Identity>),
    Expired,
    Unknown,
}

/// A keys file's entries, indexed by the first 8 bytes of their hash.
///
/// The bucket is found by an ordinary (not constant-time) map lookup on those 8 bytes, and
/// the full hash then compared in constant time. Timing can reveal at most whether some
/// stored hash shares a presented key's first 8 bytes; SHA-256's preimage resistance makes
/// that worthless for finding a key, as it makes the hashes themselves.
#[derive(Debug, Default)]
pub struct KeyTable {
    by_prefix: HashMap<u64, Vec<KeyEntry>>,
    len: usize,
}

impl KeyTable {
    /// The table of `keys`, each key's identity built once with the provider's
    /// `forward_claims`.
    pub fn new(keys: &[ApiKey], forward_claims: &BTreeMap<String, String>) -> KeyTable {
        let mut by_prefix: HashMap<u64, Vec<KeyEntry>> = HashMap::new();
        for key in keys {
            let profile = ConsumerProfile {
                tier: key.tier.clone(),
                attributes: key.attributes.clone(),
            };
            by_prefix
                .entry(prefix(&key.sha256))
                .or_default()
                .push(KeyEntry {
                    sha256: key.sha256,
                    expires: key.expires,
                    identity: Arc::new(Identity::of_consumer(
                        &key.consumer,
                        &profile,
                        forward_claims,
                    )),
                });
        }
        KeyTable {
            by_prefix,
            len: keys.len(),
        }
    }

    /// Looks `presented` up at time `now` (Unix seconds).
    pub fn lookup(&self, presented: &str, now: u64) -> KeyMatch<'_> {
        if presented.is_empty() || presented.len() > MAX_KEY_BYTES {
            return KeyMatch::Unknown;
        }
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let Some(bucket) = self.by_prefix.get(&prefix(&digest)) else {
            return KeyMatch::Unknown;
        };
        // Every candidate is compared, so the time spent does not say which one matched.
        let mut found = None;
        for entry in bucket {
            if aws_lc_rs::constant_time::verify_slices_are_equal(&entry.sha256, &digest).is_ok() {
                found = Some(entry);
            }
        }
        match found {
            None => KeyMatch::Unknown,
            Some(entry) if entry.expires.is_some_and(|at| now as i64 >= at) => KeyMatch::Expired,
            Some(entry) => KeyMatch::Valid(&entry.identity),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn prefix(digest: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not UTF-8 text")]
    NotText { path: String },
    /// Every problem, each as `file:line:col: message`.
    #[error("{0}")]
    Invalid(tollgate_routes::ConfigErrors),
}

/// A provider's keys file, live: read at start-up and again whenever it changes; a version
/// that does not read or validate leaves the current keys serving.
#[derive(Debug)]
pub struct KeyFile {
    provider: String,
    path: PathBuf,
    forward_claims: BTreeMap<String, String>,
    current: RwLock<Arc<KeyTable>>,
    metrics: Arc<Metrics>,
}

impl KeyFile {
    pub async fn load(
        provider: &str,
        path: &Path,
        forward_claims: &BTreeMap<String, String>,
        metrics: Arc<Metrics>,
    ) -> Result<KeyFile, KeyFileError> {
        let table = read_table(path, forward_claims).await?;
        metrics.set_api_keys(provider, table.len());
        Ok(KeyFile {
            provider: provider.to_string(),
            path: path.to_path_buf(),
            forward_claims: forward_claims.clone(),
            current: RwLock::new(Arc::new(table)),
            metrics,
        })
    }

    /// Re-reads the file; on success the new keys serve from the next check on.
    pub async fn reload(&self) -> Result<usize, KeyFileError> {
        let table = read_table(&self.path, &self.forward_claims).await?;
        let count = table.len();
        self.metrics.set_api_keys(&self.provider, count);
        let table = Arc::new(table);
        match self.current.write() {
            Ok(mut guard) => *guard = table,
            Err(poisoned) => *poisoned.into_inner() = table,
        }
        Ok(count)
    }

    pub fn current(&self) -> Arc<KeyTable> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

async fn read_table(
    path: &Path,
    forward_claims: &BTreeMap<String, String>,
) -> Result<KeyTable, KeyFileError> {
    let shown = path.display().to_string();
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|source| KeyFileError::Read {
            path: shown.clone(),
            source,
        })?;
    let text = String::from_utf8(bytes).map_err(|_| KeyFileError::NotText {
        path: shown.clone(),
    })?;
    let keys = tollgate_routes::parse_keys(&shown, &text).map_err(KeyFileError::Invalid)?;
    Ok(KeyTable::new(&keys, forward_claims))
}

/// A key's SHA-256, as a keys file writes it: 64 lower-case hexadecimal digits.
pub fn sha256_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The keys-file entry for `key`, as `hash-key` prints it: one YAML list item, without the
/// key.
pub fn entry(key: &str, consumer: &str, tier: Option<&str>) -> String {
    // JSON strings are YAML strings: quoting makes any consumer or tier name safe.
    let quoted = |text: &str| serde_json::Value::String(text.to_string()).to_string();
    let tier = tier
        .map(|tier| format!(", tier: {}", quoted(tier)))
        .unwrap_or_default();
    format!(
        "- {{consumer: {}{tier}, sha256: \"{}\"}}",
        quoted(consumer),
        sha256_hex(key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_names_the_hash_and_never_the_key() {
        let line = entry("s3cret-key", "acme", Some("premium"));
        assert_eq!(
            line,
            format!(
                "- {{consumer: \"acme\", tier: \"premium\", sha256: \"{}\"}}",
                sha256_hex("s3cret-key")
            )
        );
        assert!(!line.contains("s3cret-key"));
        // SHA-256("test"), from FIPS 180-4's worked examples' tooling.
        assert_eq!(
            sha256_hex("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn a_printed_entry_is_a_valid_keys_file_entry() {
        let file = format!("keys:\n  {}\n", entry("k", "acme, inc", None));
        let keys = tollgate_routes::parse_keys("keys.yaml", &file);
        // A consumer is sent as a header: a space is refused, at the entry printed.
        assert!(keys.is_err());
        let file = format!("keys:\n  {}\n", entry("k", "acme", Some("free")));
        let keys = tollgate_routes::parse_keys("keys.yaml", &file).expect("valid");
        assert_eq!(keys[0].consumer, "acme");
        assert_eq!(keys[0].tier.as_deref(), Some("free"));
        assert_eq!(hex_of(&keys[0].sha256), sha256_hex("k"));
    }

    fn table(file: &str) -> KeyTable {
        let keys = tollgate_routes::parse_keys("keys.yaml", file).expect("valid");
        let forward = BTreeMap::from([("tier".to_string(), "x-tier".to_string())]);
        KeyTable::new(&keys, &forward)
    }

    #[test]
    fn a_key_is_found_by_its_hash_and_carries_its_consumer() {
        let file = format!(
            "keys:\n  {}\n  {}\n",
            entry("alpha-key", "acme", Some("premium")),
            entry("beta-key", "globex", None)
        );
        let keys = table(&file);
        assert_eq!(keys.len(), 2);
        let KeyMatch::Valid(identity) = keys.lookup("alpha-key", 0) else {
            panic!("alpha-key is valid");
        };
        assert_eq!(identity.consumer.as_deref(), Some("acme"));
        assert_eq!(
            identity.claim_headers,
            vec![("x-tier".to_string(), "premium".to_string())]
        );
        let KeyMatch::Valid(identity) = keys.lookup("beta-key", 0) else {
            panic!("beta-key is valid");
        };
        assert_eq!(identity.absent_headers, vec!["x-tier".to_string()]);
        assert_eq!(keys.lookup("alpha-key ", 0), KeyMatch::Unknown);
        assert_eq!(keys.lookup("", 0), KeyMatch::Unknown);
        assert_eq!(
            keys.lookup(&"a".repeat(MAX_KEY_BYTES + 1), 0),
            KeyMatch::Unknown
        );
    }

    #[test]
    fn a_key_past_its_expiry_is_expired_not_unknown() {
        let file = format!(
            "keys:\n  - {{consumer: acme, sha256: \"{}\", expires: \"2027-01-01T00:00:00Z\"}}\n",
            sha256_hex("k")
        );
        let keys = table(&file);
        let expiry = 1_798_761_600;
        assert!(matches!(keys.lookup("k", expiry - 1), KeyMatch::Valid(_)));
        assert_eq!(keys.lookup("k", expiry), KeyMatch::Expired);
    }

    fn hex_of(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
