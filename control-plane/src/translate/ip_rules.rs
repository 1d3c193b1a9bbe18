//! `allow_ips` and `deny_ips`: Envoy's own RBAC filter, with no sidecar call.
//!
//! The client is `remote_ip`, the address Envoy trusts as the client's (as rate limits
//! `by: client_ip` see it), not the peer of a trusted proxy. A listener's rules are the
//! filter's own configuration, so they apply to every route there; a route with rules of its
//! own carries both, and the listener's health path carries none.

use tollgate_proto::envoy::config::core::v3::CidrRange;
use tollgate_proto::envoy::config::rbac::v3::{
    permission, principal, rbac::Action, Permission, Policy, Principal, Rbac as RbacRules,
};
use tollgate_proto::envoy::extensions::filters::http::rbac::v3::{Rbac, RbacPerRoute};
use tollgate_proto::google::protobuf::{Any, UInt32Value};
use tollgate_routes::ip_rules::{IpNet, IpRules};

use super::{any, proto_map};

pub(super) const FILTER_NAME: &str = "envoy.filters.http.rbac";

/// The filter on a listener: its own rules, or none (every client passes).
pub(super) fn filter(listener: &IpRules) -> Any {
    any(&rbac((!listener.is_empty()).then(|| rules(&[listener]))))
}

/// A route's rules together with its listener's: a client must pass both.
pub(super) fn per_route(listener: &IpRules, route: &IpRules) -> Any {
    any(&RbacPerRoute {
        rbac: Some(rbac(Some(rules(&[listener, route])))),
    })
}

fn rbac(rules: Option<RbacRules>) -> Rbac {
    Rbac {
        rules,
        ..Default::default()
    }
}

/// No rules on this route: the gateway's own health path.
pub(super) fn off() -> Any {
    any(&RbacPerRoute { rbac: None })
}

/// One ALLOW policy: the client is in every non-empty allow list and in no deny list.
fn rules(sets: &[&IpRules]) -> RbacRules {
    let mut all_of: Vec<Principal> = sets
        .iter()
        .filter(|rules| !rules.allow.is_empty())
        .map(|rules| any_of(&rules.allow))
        .collect();
    let denied: Vec<IpNet> = sets
        .iter()
        .flat_map(|rules| rules.deny.iter().copied())
        .collect();
    if !denied.is_empty() {
        all_of.push(Principal {
            identifier: Some(principal::Identifier::NotId(Box::new(any_of(&denied)))),
        });
    }
    let principal = match all_of.len() {
        0 => Principal {
            identifier: Some(principal::Identifier::Any(true)),
        },
        1 => all_of.remove(0),
        _ => Principal {
            identifier: Some(principal::Identifier::AndIds(principal::Set {
                ids: all_of,
            })),
        },
    };
    RbacRules {
        action: Action::Allow as i32,
        policies: proto_map([(
            "tollgate_ip_rules".to_string(),
            Policy {
                permissions: vec![Permission {
                    rule: Some(permission::Rule::Any(true)),
                }],
                principals: vec![principal],
                ..Default::default()
            },
        )]),
        ..Default::default()
    }
}

fn any_of(blocks: &[IpNet]) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::OrIds(principal::Set {
            ids: blocks
                .iter()
                .map(|block| Principal {
                    identifier: Some(principal::Identifier::RemoteIp(CidrRange {
                        address_prefix: block.address.to_string(),
                        prefix_len: Some(UInt32Value {
                            value: u32::from(block.prefix_len),
                        }),
                    })),
                })
                .collect(),
        })),
    }
}
