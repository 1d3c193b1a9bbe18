//! API keys: a presented key is hashed (SHA-256) and the hash looked up among a keys file's
//! entries (`tollgate_routes::api_keys`); keys themselves are never stored, logged or
//! echoed.

use sha2::{Digest as _, Sha256};

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

    fn hex_of(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
