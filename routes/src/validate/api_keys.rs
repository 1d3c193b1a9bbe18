//! Checks of an API key file (see [`crate::api_keys`]).

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::Errors;
use crate::api_keys::ApiKey;
use crate::error::ConfigErrors;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeysDoc {
    keys: Vec<Spanned<KeyDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyDoc {
    consumer: Spanned<String>,
    tier: Option<Spanned<String>>,
    sha256: Option<Spanned<String>>,
    /// Named only to be refused with a reason: keys are stored as hashes.
    key: Option<Spanned<String>>,
    expires: Option<Spanned<String>>,
    #[serde(default)]
    attributes: BTreeMap<String, Spanned<String>>,
}

pub(crate) fn keys(file: &str, doc: KeysDoc) -> Result<Vec<ApiKey>, ConfigErrors> {
    let mut errors = Errors::new(file);
    let mut keys = Vec::new();
    // Where each hash and each consumer's tier was first seen, to name that line.
    let mut hashes: HashMap<[u8; 32], (u64, String)> = HashMap::new();
    let mut tiers: HashMap<String, (u64, Option<String>)> = HashMap::new();
    for node in &doc.keys {
        let entry = &node.value;
        let line = node.referenced.line();
        if let Some(plaintext) = &entry.key {
            errors.at(
                plaintext,
                "plaintext keys are refused: store the key's sha256 (`tollgate-ext-authz hash-key` prints the entry)".to_string(),
            );
            continue;
        }
        let consumer = &entry.consumer.value;
        if !is_consumer_id(consumer) {
            errors.at(
                &entry.consumer,
                format!("consumer \"{consumer}\": expected printable ASCII without spaces (it is sent as a header)"),
            );
        }
        let Some(digest_node) = &entry.sha256 else {
            errors.at(
                node,
                format!("the key of consumer \"{consumer}\" needs its sha256"),
            );
            continue;
        };
        let Some(sha256) = decode_sha256(&digest_node.value) else {
            errors.at(
                digest_node,
                format!(
                    "sha256 \"{}\" is not 64 hexadecimal digits",
                    digest_node.value
                ),
            );
            continue;
        };
        if let Some((first, owner)) = hashes.get(&sha256) {
            errors.at(
                digest_node,
                format!("the same key as line {first} (consumer \"{owner}\")"),
            );
        } else {
            hashes.insert(sha256, (line, consumer.clone()));
        }
        let tier = entry.tier.as_ref().map(|t| t.value.clone());
        match tiers.get(consumer) {
            Some((first, other)) if *other != tier => errors.at(
                entry.tier.as_ref().map_or(&entry.consumer, |t| t),
                format!(
                    "consumer \"{consumer}\" has tier {} here but {} on line {first}",
                    tier_name(tier.as_deref()),
                    tier_name(other.as_deref())
                ),
            ),
            Some(_) => {}
            None => {
                tiers.insert(consumer.clone(), (line, tier.clone()));
            }
        }
        let expires = entry.expires.as_ref().and_then(|node| {
            let parsed = rfc3339_unix_seconds(&node.value);
            if parsed.is_none() {
                errors.at(
                    node,
                    format!(
                        "expires \"{}\": expected an RFC 3339 time, e.g. 2027-01-01T00:00:00Z",
                        node.value
                    ),
                );
            }
            parsed
        });
        keys.push(ApiKey {
            sha256,
            consumer: consumer.clone(),
            tier,
            expires,
            attributes: entry
                .attributes
                .iter()
                .map(|(name, value)| (name.clone(), value.value.clone()))
                .collect(),
        });
    }
    errors.into_result(keys)
}

/// A consumer id is sent upstream as `x-consumer-id` and counted by rate limits: printable
/// ASCII without spaces.
pub(crate) fn is_consumer_id(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic())
}

fn tier_name(tier: Option<&str>) -> String {
    tier.map_or_else(|| "none".to_string(), |t| format!("\"{t}\""))
}

fn decode_sha256(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(digest)
}

/// `YYYY-MM-DDTHH:MM:SS`, optional fraction, then `Z` or `±HH:MM` (RFC 3339 §5.6), as Unix
/// seconds.
fn rfc3339_unix_seconds(text: &str) -> Option<i64> {
    let (date, time) = text.split_once(['T', 't'])?;
    let mut date_parts = date.splitn(3, '-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: u32 = date_parts.next()?.parse().ok()?;
    let day: u32 = date_parts.next()?.parse().ok()?;
    let (clock, offset_seconds) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else {
        let at = time.rfind(['+', '-'])?;
        let (clock, offset) = time.split_at(at);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let (hours, minutes) = offset[1..].split_once(':')?;
        let hours: i64 = hours.parse().ok()?;
        let minutes: i64 = minutes.parse().ok()?;
        (clock, sign * (hours * 3600 + minutes * 60))
    };
    let clock = clock.split('.').next()?;
    let mut clock_parts = clock.splitn(3, ':');
    let hour: i64 = clock_parts.next()?.parse().ok()?;
    let minute: i64 = clock_parts.next()?.parse().ok()?;
    let second: i64 = clock_parts.next()?.parse().ok()?;
    let valid = (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && hour < 24
        && minute < 60
        && second <= 60
        && date.len() == 10;
    valid.then(|| {
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
            - offset_seconds
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_read_as_unix_seconds() {
        assert_eq!(rfc3339_unix_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_unix_seconds("2027-01-01T00:00:00Z"),
            Some(1_798_761_600)
        );
        assert_eq!(
            rfc3339_unix_seconds("2027-01-01T01:00:00+01:00"),
            Some(1_798_761_600)
        );
        assert_eq!(
            rfc3339_unix_seconds("2026-12-06T18:30:15.25Z"),
            Some(1_796_581_815)
        );
        assert_eq!(
            rfc3339_unix_seconds("2000-02-29T00:00:00Z"),
            Some(951_782_400)
        );
        assert_eq!(rfc3339_unix_seconds("2027-13-01T00:00:00Z"), None);
        assert_eq!(rfc3339_unix_seconds("tomorrow"), None);
        assert_eq!(rfc3339_unix_seconds("2027-01-01"), None);
    }
}
