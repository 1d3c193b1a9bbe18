//! An API key file (the `keys_file` of an `api_key` provider), as [`crate::parse_keys`]
//! reads it: who each key belongs to, its tier, expiry and attributes, and the SHA-256 of the
//! key. The keys themselves are never stored: a lookup hashes the key a client presents.
//!
//! ```yaml
//! keys:
//!   - {consumer: acme, tier: premium, sha256: "9f86d081884c7d65…"}
//!   - {consumer: globex, tier: free, sha256: "…", expires: 2027-01-01T00:00:00Z, attributes: {plan: gold}}
//! ```

use std::collections::BTreeMap;

/// One key's entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    /// The key's SHA-256.
    pub sha256: [u8; 32],
    /// Sent upstream as `x-consumer-id`; what rate limits `by: consumer` count.
    pub consumer: String,
    pub tier: Option<String>,
    /// Unix seconds after which the key is refused.
    pub expires: Option<i64>,
    pub attributes: BTreeMap<String, String>,
}
