//! `allow_ips` and `deny_ips`, on a listener or a route.

use serde_saphyr::Spanned;

use super::Errors;
use crate::ip_rules::{IpNet, IpRules};

type Blocks = Option<Spanned<Vec<Spanned<String>>>>;

pub(super) fn ip_rules(allow: &Blocks, deny: &Blocks, errors: &mut Errors) -> IpRules {
    if let Some(allow) = allow.as_ref().filter(|a| a.value.is_empty()) {
        errors.at(
            allow,
            "allow_ips is empty: it would refuse every client; leave it out to allow all"
                .to_string(),
        );
    }
    IpRules {
        allow: blocks(allow, "allow_ips", errors),
        deny: blocks(deny, "deny_ips", errors),
    }
}

fn blocks(list: &Blocks, field: &str, errors: &mut Errors) -> Vec<IpNet> {
    let Some(list) = list else {
        return Vec::new();
    };
    list.value
        .iter()
        .filter_map(|node| match node.value.parse::<IpNet>() {
            Ok(net) => Some(net),
            Err(error) => {
                errors.at(node, format!("{field}: \"{}\" {error}", node.value));
                None
            }
        })
        .collect()
}
