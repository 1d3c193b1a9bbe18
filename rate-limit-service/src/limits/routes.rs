//! Integrated mode: the limits of a routes.yaml, as the control plane asks Envoy to describe
//! them.
//!
//! The descriptor contract, for each rule of each route: domain
//! `sidecars.rate_limit.domain`, entries `("route", name)`, `("rule", id)`, then the key
//! entry `("consumer", x-consumer-id)`, `("remote_address", client ip)` or
//! `("header", value)`, and for a tiered rule `("tier", value)`, which Envoy leaves out when
//! the tier header is absent. A missing or unknown tier gets the most restrictive tier's
//! quota, so that a token without a tier claim cannot escape the limit; an unknown tier's
//! hits are counted under the most restrictive tier's name so that inventing tier values
//! does not buy fresh counters either.

use tollgate_routes::policy::{LimitAlgorithm, LimitKey, LimitQuota, Per, Quota, RateLimitRule};
use tollgate_routes::RoutesConfig;

use super::{DescriptorTree, Limit, Node, Rate, Unit};
use crate::algorithm::{FixedWindow, Policy, SlidingWindow, TokenBucket};

/// The descriptor key of a rule's key entry.
pub fn key_entry(key: &LimitKey) -> &'static str {
    match key {
        LimitKey::Consumer => "consumer",
        LimitKey::ClientIp => "remote_address",
        LimitKey::Header(_) => "header",
    }
}

/// Builds the tree for a validated routes.yaml; without `sidecars.rate_limit` nothing is
/// limited.
pub fn build(config: &RoutesConfig) -> DescriptorTree {
    let mut tree = DescriptorTree::default();
    let Some(sidecar) = &config.sidecars.rate_limit else {
        return tree;
    };
    let domain = sidecar.domain.as_str();
    let mut root = Node::default();
    for route in &config.routes {
        // Local rules are Envoy's own buckets: Envoy never asks about them.
        if route.global_rate_limits().next().is_none() {
            continue;
        }
        let route_key = format!("route_{}", route.name);
        let mut route_node = Node::default();
        for rule in route.global_rate_limits() {
            let rule_key = format!("rule_{}", rule.id);
            let key = key_entry(&rule.key);
            let stats_key = format!("{domain}.{route_key}.{rule_key}.{key}");
            let key_node = match &rule.quota {
                LimitQuota::Flat(quota) => Node {
                    limit: Some(tree.add_limit(limit(rule, *quota, domain, stats_key))),
                    ..Node::default()
                },
                LimitQuota::Tiered { tiers, .. } => {
                    tiered(&mut tree, rule, tiers.iter(), domain, &stats_key)
                }
            };
            let mut rule_node = Node::default();
            rule_node.insert(key.to_string(), key_node);
            route_node.insert(rule_key, rule_node);
        }
        root.insert(route_key, route_node);
    }
    tree.domains.insert(domain.to_string(), root);
    tree
}

fn tiered<'a>(
    tree: &mut DescriptorTree,
    rule: &RateLimitRule,
    tiers: impl Iterator<Item = (&'a String, &'a Quota)> + Clone,
    domain: &str,
    stats_key: &str,
) -> Node {
    let strictest = tiers
        .clone()
        .min_by(|a, b| a.1.cmp_strictness(b.1))
        .map(|(name, quota)| (name.clone(), *quota));
    let mut node = Node::default();
    let Some((strictest_name, strictest_quota)) = strictest else {
        return node;
    };
    // No tier entry at all: Envoy skipped it because the header was absent.
    node.limit = Some(tree.add_limit(limit(rule, strictest_quota, domain, stats_key.to_string())));
    for (name, quota) in tiers {
        let key = format!("tier_{name}");
        let child = Node {
            limit: Some(tree.add_limit(limit(rule, *quota, domain, format!("{stats_key}.{key}")))),
            ..Node::default()
        };
        node.insert(key, child);
    }
    let unknown = Node {
        limit: Some(tree.add_limit(limit(
            rule,
            strictest_quota,
            domain,
            format!("{stats_key}.tier"),
        ))),
        counter_value: Some(strictest_name),
        ..Node::default()
    };
    node.insert("tier".to_string(), unknown);
    node
}

fn unit(per: Per) -> Unit {
    match per {
        Per::Second => Unit::Second,
        Per::Minute => Unit::Minute,
        Per::Hour => Unit::Hour,
        Per::Day => Unit::Day,
    }
}

fn limit(rule: &RateLimitRule, quota: Quota, domain: &str, stats_key: String) -> Limit {
    let unit = unit(quota.per);
    let window = unit.duration();
    let policy = match rule.algorithm {
        LimitAlgorithm::Fixed => Policy::Fixed(FixedWindow::new(quota.requests, window)),
        LimitAlgorithm::Sliding => Policy::Sliding(SlidingWindow::new(quota.requests, window)),
        // Without an explicit burst the bucket holds one window's quota.
        LimitAlgorithm::TokenBucket => Policy::TokenBucket(TokenBucket::new(
            quota.requests,
            window,
            rule.burst.unwrap_or(quota.requests),
        )),
    };
    Limit {
        id: 0,
        domain: domain.to_string(),
        stats_key,
        name: None,
        rate: Some((
            Rate {
                requests: quota.requests,
                unit,
            },
            policy,
        )),
        shadow_mode: false,
        quota_mode: false,
        detailed_metric: false,
        replaces: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str = r#"
version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
services:
  api:
    endpoints: ["127.0.0.1:3000"]
auth_providers:
  idp:
    issuer: https://idp.example
    audiences: [api]
    jwks_uri: https://idp.example/jwks
routes:
  - name: orders
    match: {prefix: /orders}
    service: api
    auth: {provider: idp}
    rate_limit:
      - by: consumer
        name: per-consumer
        tier_header: x-tier
        tiers: {gold: 100/minute, free: 10/minute, silver: 50/minute}
      - by: client_ip
        name: per-ip
        requests: 5
        per: second
        burst: 10
  - name: local-only
    match: {prefix: /local}
    service: api
    rate_limit:
      - {by: client_ip, requests: 1, per: second, mode: local}
  - name: public
    match: {prefix: /}
    service: api
    rate_limit:
      - by: header
        header: x-api-key
        name: per-key
        requests: 3
        per: minute
        algorithm: fixed
      - by: client_ip
        name: per-ip-local
        requests: 50
        per: second
        mode: local
sidecars:
  ext_authz:
    address: 127.0.0.1:9000
  rate_limit:
    address: 127.0.0.1:8081
    domain: edge
"#;

    fn tree() -> DescriptorTree {
        match tollgate_routes::parse("routes.yaml", ROUTES) {
            Ok(config) => build(&config),
            Err(e) => panic!("{e}"),
        }
    }

    fn quota(tree: &DescriptorTree, entries: &[(&str, &str)]) -> Option<(u64, Unit)> {
        tree.find("edge", entries)
            .and_then(|m| m.limit.rate.map(|(r, _)| (r.requests, r.unit)))
    }

    #[test]
    fn a_flat_rule_matches_route_rule_and_key() {
        let tree = tree();
        let entries = [("route", "public"), ("rule", "per-key"), ("header", "k1")];
        assert_eq!(quota(&tree, &entries), Some((3, Unit::Minute)));
        let m = tree.find("edge", &entries).expect("match");
        assert_eq!(m.counter_key, "edge_route_public_rule_per-key_header_k1_");
        assert!(matches!(m.limit.rate, Some((_, Policy::Fixed(_)))));
    }

    #[test]
    fn a_known_tier_gets_its_quota() {
        let tree = tree();
        let entries = [
            ("route", "orders"),
            ("rule", "per-consumer"),
            ("consumer", "c1"),
            ("tier", "gold"),
        ];
        assert_eq!(quota(&tree, &entries), Some((100, Unit::Minute)));
    }

    #[test]
    fn a_missing_or_unknown_tier_gets_the_most_restrictive_quota() {
        let tree = tree();
        let absent = [
            ("route", "orders"),
            ("rule", "per-consumer"),
            ("consumer", "c1"),
        ];
        assert_eq!(quota(&tree, &absent), Some((10, Unit::Minute)));
        let unknown = [
            ("route", "orders"),
            ("rule", "per-consumer"),
            ("consumer", "c1"),
            ("tier", "platinum"),
        ];
        assert_eq!(quota(&tree, &unknown), Some((10, Unit::Minute)));
        let other = [
            ("route", "orders"),
            ("rule", "per-consumer"),
            ("consumer", "c1"),
            ("tier", "diamond"),
        ];
        assert_eq!(
            tree.find("edge", &unknown).map(|m| m.counter_key),
            tree.find("edge", &other).map(|m| m.counter_key),
            "invented tiers share one counter"
        );
    }

    #[test]
    fn the_default_algorithm_is_sliding_and_burst_makes_a_token_bucket() {
        let tree = tree();
        let tiered = tree
            .find(
                "edge",
                &[
                    ("route", "orders"),
                    ("rule", "per-consumer"),
                    ("consumer", "c"),
                ],
            )
            .expect("match");
        assert!(matches!(tiered.limit.rate, Some((_, Policy::Sliding(_)))));
        let ip = tree
            .find(
                "edge",
                &[
                    ("route", "orders"),
                    ("rule", "per-ip"),
                    ("remote_address", "10.0.0.1"),
                ],
            )
            .expect("match");
        assert!(
            matches!(ip.limit.rate, Some((_, Policy::TokenBucket(b))) if b.burst == 10 && b.rate == 5)
        );
    }

    #[test]
    fn unknown_routes_rules_and_domains_are_not_limited() {
        let tree = tree();
        assert_eq!(
            quota(
                &tree,
                &[("route", "gone"), ("rule", "per-key"), ("header", "k")]
            ),
            None
        );
        assert_eq!(
            quota(
                &tree,
                &[("route", "public"), ("rule", "gone"), ("header", "k")]
            ),
            None
        );
        assert!(tree
            .find(
                "other",
                &[("route", "public"), ("rule", "per-key"), ("header", "k")]
            )
            .is_none());
    }

    #[test]
    fn the_wrong_key_entry_is_not_limited() {
        let tree = tree();
        assert_eq!(
            quota(
                &tree,
                &[("route", "public"), ("rule", "per-key"), ("consumer", "c")]
            ),
            None
        );
    }

    #[test]
    fn local_rules_are_left_to_envoy() {
        let tree = tree();
        assert_eq!(
            quota(
                &tree,
                &[
                    ("route", "public"),
                    ("rule", "per-ip-local"),
                    ("remote_address", "10.0.0.1")
                ]
            ),
            None,
            "a local rule beside a global one"
        );
        assert_eq!(
            quota(
                &tree,
                &[
                    ("route", "local-only"),
                    ("rule", "client_ip"),
                    ("remote_address", "10.0.0.1")
                ]
            ),
            None,
            "a route with only local rules"
        );
    }
}
