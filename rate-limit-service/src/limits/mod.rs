//! The limits in force, whichever file they came from, as one [`DescriptorTree`] per
//! configuration, and the matching of a request's descriptors against it.
//!
//! Both formats build the same tree: routes.yaml ([`routes`], integrated mode) and
//! envoyproxy/ratelimit's YAML ([`dropin`], drop-in mode). Matching follows
//! envoyproxy/ratelimit: at each level an entry's `key_value` is looked up first, then the
//! level's wildcard values (`value: "foo*"`), then the bare `key`; a limit applies only when
//! it sits at the level of the descriptor's *last* entry, so the descriptor's depth must
//! match the configuration's. Everything here is built once per reload; matching allocates
//! only the counter key.

pub mod dropin;
pub mod routes;

use std::collections::HashMap;
use std::time::Duration;

use crate::algorithm::Policy;

/// A window length, as the rate limit API names them. WEEK, MONTH (30 days) and YEAR
/// (365 days) are envoyproxy/ratelimit's lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    /// Parses the API's upper-case names, case-insensitively (as envoyproxy/ratelimit does).
    pub fn parse(name: &str) -> Option<Unit> {
        Some(match name.to_ascii_uppercase().as_str() {
            "SECOND" => Unit::Second,
            "MINUTE" => Unit::Minute,
            "HOUR" => Unit::Hour,
            "DAY" => Unit::Day,
            "WEEK" => Unit::Week,
            "MONTH" => Unit::Month,
            "YEAR" => Unit::Year,
            _ => return None,
        })
    }

    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
            Unit::Month => 30 * 86_400,
            Unit::Year => 365 * 86_400,
        }
    }

    pub fn duration(self) -> Duration {
        Duration::from_secs(self.seconds())
    }
}

/// `requests` per `unit`, as reported back to Envoy in `current_limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub requests: u64,
    pub unit: Unit,
}

/// One configured limit.
#[derive(Clone, Debug, PartialEq)]
pub struct Limit {
    /// Index in [`DescriptorTree::limits`], for per-limit state such as metrics.
    pub id: usize,
    pub domain: String,
    /// The metrics label: `domain.key_value.key…`, values only where the config has them.
    pub stats_key: String,
    /// `rate_limit.name`, what other limits' `replaces` refer to.
    pub name: Option<String>,
    /// `None`: unlimited.
    pub rate: Option<(Rate, Policy)>,
    pub shadow_mode: bool,
    pub quota_mode: bool,
    pub detailed_metric: bool,
    pub replaces: Vec<String>,
}

/// A value pattern with `*` wildcards, split once at load time.
#[derive(Clone, Debug, PartialEq)]
struct Wildcard {
    /// The child's key in the level's map, `key_val*ue`.
    key: String,
    parts: Vec<String>,
}

impl Wildcard {
    fn new(key: &str) -> Self {
        Wildcard {
            key: key.to_string(),
            parts: key.split('*').map(str::to_string).collect(),
        }
    }

    /// Each `*` matches any run of characters, possibly empty.
    fn matches(&self, text: &str) -> bool {
        let (first, rest) = match self.parts.split_first() {
            Some(split) => split,
            None => return false,
        };
        let Some(mut remaining) = text.strip_prefix(first.as_str()) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return remaining.is_empty();
        };
        for part in middle {
            match remaining.find(part.as_str()) {
                Some(at) => remaining = &remaining[at + part.len()..],
                None => return false,
            }
        }
        remaining.ends_with(last.as_str())
    }
}

/// One level of the tree.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Node {
    /// By `key_value`, or by `key` for a key-only entry.
    children: HashMap<String, Node>,
    /// This level's children whose value has a `*`, in file order.
    wildcards: Vec<Wildcard>,
    limit: Option<usize>,
    /// What this entry contributes to counter keys instead of the request's value: the
    /// wildcard of a `share_threshold` entry, or the tier a tiered rule falls back to.
    counter_value: Option<String>,
}

impl Node {
    /// Adds a child; false when its composite key is already taken.
    fn insert(&mut self, map_key: String, child: Node) -> bool {
        if self.children.contains_key(&map_key) {
            return false;
        }
        if map_key.contains('*') {
            self.wildcards.push(Wildcard::new(&map_key));
        }
        self.children.insert(map_key, child);
        true
    }
}

/// Every domain's descriptors and the limits they hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DescriptorTree {
    domains: HashMap<String, Node>,
    limits: Vec<Limit>,
}

/// The limit a descriptor matched and the key its counter lives under.
#[derive(Debug)]
pub struct Match<'a> {
    pub limit: &'a Limit,
    /// `domain_key_value_key_value_`: envoyproxy/ratelimit's cache key without the window.
    pub counter_key: String,
}

impl DescriptorTree {
    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }

    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.domains.keys().map(String::as_str)
    }

    fn add_limit(&mut self, mut limit: Limit) -> usize {
        let id = self.limits.len();
        limit.id = id;
        self.limits.push(limit);
        id
    }

    /// The limit for one descriptor's `(key, value)` entries, if any applies.
    pub fn find<'t, 'e>(
        &'t self,
        domain: &str,
        entries: &[(&'e str, &'e str)],
    ) -> Option<Match<'t>> {
        let mut level = self.domains.get(domain)?;
        let mut counter_key = String::with_capacity(
            domain.len()
                + entries
                    .iter()
                    .map(|(k, v)| k.len() + v.len() + 2)
                    .sum::<usize>()
                + 1,
        );
        counter_key.push_str(domain);
        counter_key.push('_');
        let mut found = None;
        let mut composite = String::new();
        for (i, (key, value)) in entries.iter().enumerate() {
            composite.clear();
            composite.push_str(key);
            composite.push('_');
            composite.push_str(value);
            let next = level
                .children
                .get(&composite)
                .or_else(|| {
                    level
                        .wildcards
                        .iter()
                        .find(|w| w.matches(&composite))
                        .and_then(|w| level.children.get(&w.key))
                })
                .or_else(|| level.children.get(*key))?;
            counter_key.push_str(key);
            counter_key.push('_');
            counter_key.push_str(next.counter_value.as_deref().unwrap_or(value));
            counter_key.push('_');
            if i + 1 == entries.len() {
                found = next.limit;
            }
            if next.children.is_empty() {
                if i + 1 < entries.len() {
                    // The request's descriptor is deeper than the configuration.
                    return None;
                }
                break;
            }
            level = next;
        }
        found.map(|id| Match {
            limit: &self.limits[id],
            counter_key,
        })
    }
}

/// The metrics label of a `detailed_metric` limit: every entry with its value.
pub fn detailed_stats_key(domain: &str, entries: &[(&str, &str)]) -> String {
    let mut key = domain.to_string();
    for (k, v) in entries {
        key.push('.');
        key.push_str(k);
        if !v.is_empty() {
            key.push('_');
            key.push_str(v);
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_prefixes_and_middles() {
        let w = Wildcard::new("path_/api/*");
        assert!(w.matches("path_/api/"));
        assert!(w.matches("path_/api/users"));
        assert!(!w.matches("path_/apix"));
        let w = Wildcard::new("path_a*b*c");
        assert!(w.matches("path_abc"));
        assert!(w.matches("path_a-x-b-y-c"));
        assert!(!w.matches("path_a-c-b"));
        assert!(!w.matches("path_acb"));
    }

    #[test]
    fn units_have_envoyproxy_ratelimit_lengths() {
        assert_eq!(Unit::parse("month").map(Unit::seconds), Some(2_592_000));
        assert_eq!(Unit::parse("YEAR").map(Unit::seconds), Some(31_536_000));
        assert_eq!(Unit::parse("fortnight"), None);
    }
}
