//! Drop-in mode: envoyproxy/ratelimit's configuration files, read unchanged.
//!
//! One file holds one `domain` and a tree of `descriptors`, each a `key`, an optional
//! `value` (a trailing or inner `*` makes it a wildcard), an optional `rate_limit`
//! (`requests_per_unit` per `unit`, or `unlimited`; a `name` other limits can `replaces`),
//! and the flags `shadow_mode`, `quota_mode`, `detailed_metric`, `value_to_metric` and
//! `share_threshold`. The same files are refused as there: an unknown key, a duplicate
//! descriptor or domain, an empty key or domain, a bad unit, a unit beside `unlimited`, an
//! empty `replaces` or one naming its own limit, and `share_threshold` without a wildcard.
//! One difference: keys are checked where they stand (a `unit` directly on a descriptor is
//! refused here, silently ignored there). Drop-in limits count in fixed windows, as theirs.
//! [`config_files`] says which files of a directory are configuration, as there.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::{Location, Options, Spanned};

use super::{DescriptorTree, Limit, Node, Rate, Unit};
use crate::algorithm::{FixedWindow, Policy};

/// One problem in one file, at the node it concerns.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct DropInError {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

/// Every problem found, in file order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct DropInErrors(pub Vec<DropInError>);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    domain: Option<Spanned<String>>,
    #[serde(default)]
    descriptors: Vec<Spanned<DescriptorDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DescriptorDoc {
    key: Option<Spanned<String>>,
    value: Option<Spanned<String>>,
    rate_limit: Option<Spanned<RateLimitDoc>>,
    #[serde(default)]
    descriptors: Vec<Spanned<DescriptorDoc>>,
    #[serde(default)]
    shadow_mode: bool,
    #[serde(default)]
    quota_mode: bool,
    #[serde(default)]
    detailed_metric: bool,
    /// Accepted for compatibility; metrics labels never carry request values unless
    /// `detailed_metric` asks for them.
    #[serde(default)]
    #[allow(dead_code)]
    value_to_metric: bool,
    #[serde(default)]
    share_threshold: bool,
    /// Accepted for compatibility; dynamic metadata is not emitted.
    #[allow(dead_code)]
    metadata: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitDoc {
    requests_per_unit: Option<Spanned<u32>>,
    unit: Option<Spanned<String>>,
    #[serde(default)]
    unlimited: bool,
    name: Option<Spanned<String>>,
    #[serde(default)]
    replaces: Vec<Spanned<ReplacesDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplacesDoc {
    name: Option<String>,
}

/// One file's name (for messages) and text.
pub struct SourceFile {
    pub name: String,
    pub text: String,
}

/// The configuration files in `dir`, as envoyproxy/ratelimit reads a directory: every
/// `*.yaml` and `*.yml` file (one domain each), nothing else, sorted. File order decides
/// nothing (domains must differ) but keeps messages stable.
pub fn config_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    paths.sort();
    Ok(paths)
}

/// Builds one tree from every file, or reports every problem in all of them.
pub fn parse(files: &[SourceFile]) -> Result<DescriptorTree, DropInErrors> {
    let mut tree = DescriptorTree::default();
    let mut errors = Errors::default();
    for file in files {
        errors.file = file.name.clone();
        let doc = match read(&file.text) {
            Ok(doc) => doc,
            Err((location, message)) => {
                errors.at(location, message);
                continue;
            }
        };
        let domain = match &doc.domain {
            Some(d) if !d.value.is_empty() => d,
            Some(d) => {
                errors.at(
                    d.referenced,
                    "config file cannot have empty domain".to_string(),
                );
                continue;
            }
            None => {
                errors.at(
                    Location::UNKNOWN,
                    "config file cannot have empty domain".to_string(),
                );
                continue;
            }
        };
        if tree.domains.contains_key(&domain.value) {
            errors.at(
                domain.referenced,
                format!("duplicate domain \"{}\" in config file", domain.value),
            );
            continue;
        }
        let mut root = Node::default();
        load_level(
            &mut tree,
            &mut root,
            &domain.value,
            &domain.value,
            &doc.descriptors,
            &mut errors,
        );
        tree.domains.insert(domain.value.clone(), root);
    }
    if errors.found.is_empty() {
        Ok(tree)
    } else {
        Err(DropInErrors(errors.found))
    }
}

fn read(text: &str) -> Result<FileDoc, (Location, String)> {
    let mut options = Options::default();
    options.with_snippet = false;
    serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let location = e.location().unwrap_or(Location::UNKNOWN);
        let message = e.to_string();
        let first = message.lines().next().unwrap_or(&message).trim();
        let message = match first.rfind(" at line ") {
            Some(at) => first[..at].to_string(),
            None => first.to_string(),
        };
        (location, message)
    })
}

#[derive(Default)]
struct Errors {
    file: String,
    found: Vec<DropInError>,
}

impl Errors {
    fn at(&mut self, location: Location, message: String) {
        self.found.push(DropInError {
            file: self.file.clone(),
            line: location.line().max(1),
            column: location.column().max(1),
            message,
        });
    }
}

fn load_level(
    tree: &mut DescriptorTree,
    level: &mut Node,
    domain: &str,
    parent_key: &str,
    descriptors: &[Spanned<DescriptorDoc>],
    errors: &mut Errors,
) {
    for node in descriptors {
        let doc = &node.value;
        let key = match &doc.key {
            Some(k) if !k.value.is_empty() => k.value.as_str(),
            Some(k) => {
                errors.at(k.referenced, "descriptor has empty key".to_string());
                continue;
            }
            None => {
                errors.at(node.referenced, "descriptor has empty key".to_string());
                continue;
            }
        };
        let value = doc.value.as_ref().map_or("", |v| v.value.as_str());
        let map_key = if value.is_empty() {
            key.to_string()
        } else {
            format!("{key}_{value}")
        };
        let stats_key = format!("{parent_key}.{map_key}");
        if level.children.contains_key(&map_key) {
            errors.at(
                node.referenced,
                format!("duplicate descriptor composite key \"{stats_key}\""),
            );
            continue;
        }
        if doc.share_threshold && !map_key.contains('*') {
            errors.at(
                node.referenced,
                format!("share_threshold can only be used with wildcard values (containing '*'), but found key \"{map_key}\""),
            );
        }
        let mut child = Node::default();
        if doc.share_threshold && map_key.contains('*') {
            child.counter_value = Some(value.to_string());
        }
        if let Some(rate_limit) = &doc.rate_limit {
            if let Some(limit) = limit(rate_limit, doc, domain, &stats_key, errors) {
                child.limit = Some(tree.add_limit(limit));
            }
        }
        load_level(
            tree,
            &mut child,
            domain,
            &stats_key,
            &doc.descriptors,
            errors,
        );
        level.insert(map_key, child);
    }
}

fn limit(
    node: &Spanned<RateLimitDoc>,
    descriptor: &DescriptorDoc,
    domain: &str,
    stats_key: &str,
    errors: &mut Errors,
) -> Option<Limit> {
    let doc = &node.value;
    let before = errors.found.len();
    let unit = doc.unit.as_ref().map(|u| (u, Unit::parse(&u.value)));
    let rate = match (doc.unlimited, unit) {
        (true, Some((u, Some(_)))) => {
            errors.at(
                u.referenced,
                "should not specify rate limit unit when unlimited".to_string(),
            );
            None
        }
        (true, _) => None,
        (false, Some((_, Some(unit)))) => Some(Rate {
            requests: doc
                .requests_per_unit
                .as_ref()
                .map_or(0, |r| u64::from(r.value)),
            unit,
        }),
        (false, Some((u, None))) => {
            errors.at(
                u.referenced,
                format!("invalid rate limit unit \"{}\"", u.value),
            );
            None
        }
        (false, None) => {
            errors.at(node.referenced, "invalid rate limit unit \"\"".to_string());
            None
        }
    };
    let name = doc
        .name
        .as_ref()
        .map(|n| n.value.clone())
        .filter(|n| !n.is_empty());
    let mut replaces = Vec::new();
    for entry in &doc.replaces {
        match entry.value.name.as_deref() {
            None | Some("") => errors.at(
                entry.referenced,
                "should not have an empty replaces entry".to_string(),
            ),
            Some(replaced) if Some(replaced) == name.as_deref() => errors.at(
                entry.referenced,
                "replaces should not contain name of same descriptor".to_string(),
            ),
            Some(replaced) => replaces.push(replaced.to_string()),
        }
    }
    (errors.found.len() == before).then(|| Limit {
        id: 0,
        domain: domain.to_string(),
        stats_key: stats_key.to_string(),
        name,
        rate: rate.map(|rate| {
            let window = FixedWindow::new(rate.requests, rate.unit.duration());
            (rate, Policy::Fixed(window))
        }),
        shadow_mode: descriptor.shadow_mode,
        quota_mode: descriptor.quota_mode,
        detailed_metric: descriptor.detailed_metric,
        replaces,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<DescriptorTree, DropInErrors> {
        parse(&[SourceFile {
            name: "config.yaml".to_string(),
            text: text.to_string(),
        }])
    }

    fn error_of(text: &str) -> String {
        match one(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(errors) => errors.to_string(),
        }
    }

    fn requests(tree: &DescriptorTree, domain: &str, entries: &[(&str, &str)]) -> Option<u64> {
        tree.find(domain, entries)
            .and_then(|m| m.limit.rate.map(|(rate, _)| rate.requests))
    }

    const EXAMPLE: &str = r#"
domain: mongo_cps
descriptors:
  - key: database
    value: users
    rate_limit:
      unit: second
      requests_per_unit: 500
  - key: database
    rate_limit:
      unit: second
      requests_per_unit: 50
  - key: remote_address
    descriptors:
      - key: path
        value: "/api/*"
        rate_limit:
          unit: minute
          requests_per_unit: 10
  - key: client
    value: "a*b*c"
    rate_limit:
      unit: hour
      requests_per_unit: 7
  - key: shared
    value: "files*"
    share_threshold: true
    rate_limit:
      unit: day
      requests_per_unit: 3
  - key: key1
    value: value1
    descriptors:
      - key: key2
        rate_limit:
          unit: year
          requests_per_unit: 100
"#;

    #[test]
    fn key_and_value_beat_the_bare_key() {
        let tree = one(EXAMPLE).expect("valid");
        assert_eq!(
            requests(&tree, "mongo_cps", &[("database", "users")]),
            Some(500)
        );
        assert_eq!(
            requests(&tree, "mongo_cps", &[("database", "orders")]),
            Some(50)
        );
    }

    #[test]
    fn unknown_domain_or_key_has_no_limit() {
        let tree = one(EXAMPLE).expect("valid");
        assert_eq!(requests(&tree, "other", &[("database", "users")]), None);
        assert_eq!(requests(&tree, "mongo_cps", &[("table", "t")]), None);
    }

    #[test]
    fn descriptor_depth_must_match_the_config() {
        let tree = one(EXAMPLE).expect("valid");
        // Too shallow: the limit sits one level below.
        assert_eq!(requests(&tree, "mongo_cps", &[("key1", "value1")]), None);
        assert_eq!(
            requests(&tree, "mongo_cps", &[("key1", "value1"), ("key2", "x")]),
            Some(100)
        );
        // Too deep: the config ends before the request does.
        assert_eq!(
            requests(&tree, "mongo_cps", &[("database", "users"), ("extra", "x")]),
            None
        );
    }

    #[test]
    fn wildcard_values_match_prefixes_and_inner_stars() {
        let tree = one(EXAMPLE).expect("valid");
        let nested = [("remote_address", "10.0.0.1"), ("path", "/api/users")];
        assert_eq!(requests(&tree, "mongo_cps", &nested), Some(10));
        let other = [("remote_address", "10.0.0.1"), ("path", "/static/x")];
        assert_eq!(requests(&tree, "mongo_cps", &other), None);
        assert_eq!(
            requests(&tree, "mongo_cps", &[("client", "a-b-c")]),
            Some(7)
        );
        assert_eq!(requests(&tree, "mongo_cps", &[("client", "a-c")]), None);
    }

    #[test]
    fn counter_keys_carry_request_values_except_shared_wildcards() {
        let tree = one(EXAMPLE).expect("valid");
        let m = tree
            .find(
                "mongo_cps",
                &[("remote_address", "10.0.0.1"), ("path", "/api/users")],
            )
            .expect("match");
        assert_eq!(
            m.counter_key,
            "mongo_cps_remote_address_10.0.0.1_path_/api/users_"
        );
        assert_eq!(m.limit.stats_key, "mongo_cps.remote_address.path_/api/*");
        let a = tree
            .find("mongo_cps", &[("shared", "files1")])
            .expect("match");
        let b = tree
            .find("mongo_cps", &[("shared", "files2")])
            .expect("match");
        assert_eq!(a.counter_key, "mongo_cps_shared_files*_");
        assert_eq!(a.counter_key, b.counter_key);
    }

    #[test]
    fn a_directory_of_files_is_one_tree_with_one_domain_each() {
        let files = [
            SourceFile {
                name: "a.yaml".into(),
                text: "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n".into(),
            },
            SourceFile {
                name: "b.yaml".into(),
                text: "domain: b\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 2}\n".into(),
            },
        ];
        let tree = parse(&files).expect("valid");
        assert_eq!(requests(&tree, "a", &[("k", "x")]), Some(1));
        assert_eq!(requests(&tree, "b", &[("k", "x")]), Some(2));
    }

    #[test]
    fn unlimited_limits_have_no_rate() {
        let tree =
            one("domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unlimited: true\n")
                .expect("valid");
        let m = tree.find("d", &[("k", "v")]).expect("match");
        assert!(m.limit.rate.is_none());
    }

    #[test]
    fn names_and_replaces_are_kept() {
        let tree = one(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requests_per_unit: 1\n      name: specific\n      replaces:\n        - name: general\n",
        )
        .expect("valid");
        let m = tree.find("d", &[("k", "v")]).expect("match");
        assert_eq!(m.limit.name.as_deref(), Some("specific"));
        assert_eq!(m.limit.replaces, vec!["general".to_string()]);
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let e = error_of("domain: d\ndescriptors:\n  - key: k\n    ratelimit: {unit: second}\n");
        assert!(
            e.contains("unknown field") && e.contains("ratelimit"),
            "{e}"
        );
        assert!(e.starts_with("config.yaml:4:"), "{e}");
    }

    #[test]
    fn a_duplicate_descriptor_is_refused() {
        let e = error_of(
            "domain: d\ndescriptors:\n  - key: k\n    value: v\n  - key: k\n    value: v\n",
        );
        assert!(
            e.contains("duplicate descriptor composite key \"d.k_v\""),
            "{e}"
        );
    }

    #[test]
    fn a_duplicate_yaml_key_is_refused() {
        let e = error_of("domain: d\ndomain: e\n");
        assert!(e.to_lowercase().contains("duplicate"), "{e}");
    }

    #[test]
    fn a_duplicate_domain_is_refused() {
        let files = [
            SourceFile {
                name: "a.yaml".into(),
                text: "domain: a\n".into(),
            },
            SourceFile {
                name: "b.yaml".into(),
                text: "domain: a\n".into(),
            },
        ];
        let e = parse(&files).expect_err("duplicate").to_string();
        assert!(
            e.starts_with("b.yaml:1:") && e.contains("duplicate domain \"a\""),
            "{e}"
        );
    }

    #[test]
    fn an_empty_domain_is_refused() {
        assert!(error_of("domain: \"\"\n").contains("empty domain"));
        assert!(error_of("descriptors: []\n").contains("empty domain"));
    }

    #[test]
    fn an_empty_key_is_refused() {
        assert!(error_of("domain: d\ndescriptors:\n  - value: v\n").contains("empty key"));
    }

    #[test]
    fn a_bad_unit_is_refused() {
        let e = error_of("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n");
        assert!(e.contains("invalid rate limit unit \"fortnight\""), "{e}");
        let e = error_of(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {requests_per_unit: 1}\n",
        );
        assert!(e.contains("invalid rate limit unit"), "{e}");
    }

    #[test]
    fn a_unit_beside_unlimited_is_refused() {
        let e = error_of("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, unit: second}\n");
        assert!(
            e.contains("should not specify rate limit unit when unlimited"),
            "{e}"
        );
    }

    #[test]
    fn replacing_itself_is_refused() {
        let e = error_of("domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requests_per_unit: 1\n      name: me\n      replaces: [{name: me}]\n");
        assert!(
            e.contains("replaces should not contain name of same descriptor"),
            "{e}"
        );
    }

    #[test]
    fn an_empty_replaces_entry_is_refused() {
        let e = error_of("domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requests_per_unit: 1\n      replaces: [{name: \"\"}]\n");
        assert!(e.contains("empty replaces entry"), "{e}");
    }

    #[test]
    fn share_threshold_without_a_wildcard_is_refused() {
        let e = error_of(
            "domain: d\ndescriptors:\n  - key: k\n    value: v\n    share_threshold: true\n",
        );
        assert!(
            e.contains("share_threshold can only be used with wildcard values"),
            "{e}"
        );
    }

    #[test]
    fn a_negative_or_huge_request_count_is_refused() {
        assert!(one("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: -1}\n").is_err());
        assert!(one("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 4294967296}\n").is_err());
    }

    #[test]
    fn a_yaml_syntax_error_is_located() {
        let e = error_of("domain: d\ndescriptors:\n  - key: [\n");
        assert!(e.starts_with("config.yaml:"), "{e}");
    }

    #[test]
    fn every_problem_in_a_file_is_reported() {
        let e = one("domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: bad}\n  - key: b\n    rate_limit: {unit: worse}\n")
            .expect_err("two bad units");
        assert_eq!(e.0.len(), 2);
    }

    #[test]
    fn numeric_values_are_read_as_strings() {
        let tree = one("domain: d\ndescriptors:\n  - key: code\n    value: 429\n    rate_limit: {unit: second, requests_per_unit: 1}\n").expect("valid");
        assert_eq!(requests(&tree, "d", &[("code", "429")]), Some(1));
    }
}
