//! What the upstream is told about a caller whose credential held, whichever way it proved
//! itself: the consumer id (`x-consumer-id`) and the provider's `forward_claims` as headers.
//! One shape for tokens, keys and certificates, so rate limits `by: consumer` and tiers see
//! the same request whatever the credential.

use std::collections::BTreeMap;

use tollgate_routes::policy::ConsumerProfile;

#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    /// For `x-consumer-id`.
    pub consumer: Option<String>,
    /// `forward_claims` headers with their values, in configuration order.
    pub claim_headers: Vec<(String, String)>,
    /// `forward_claims` headers without a value: removed upstream so a client cannot supply
    /// its own.
    pub absent_headers: Vec<String>,
}

impl Identity {
    /// The identity of `consumer`, known by its profile (an API key's entry, a certificate
    /// provider's consumer list): `forward_claims` reads `tier` and the attributes.
    pub fn of_consumer(
        consumer: &str,
        profile: &ConsumerProfile,
        forward_claims: &BTreeMap<String, String>,
    ) -> Identity {
        let mut claim_headers = Vec::new();
        let mut absent_headers = Vec::new();
        for (claim, header) in forward_claims {
            match profile.claim(claim) {
                Some(value) => claim_headers.push((header.clone(), value.to_string())),
                None => absent_headers.push(header.clone()),
            }
        }
        Identity {
            consumer: Some(consumer.to_string()),
            claim_headers,
            absent_headers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_forwards_its_tier_and_attributes_and_removes_what_it_lacks() {
        let profile = ConsumerProfile {
            tier: Some("premium".into()),
            attributes: BTreeMap::from([("plan".to_string(), "gold".to_string())]),
        };
        let forward = BTreeMap::from([
            ("tier".to_string(), "x-consumer-tier".to_string()),
            ("plan".to_string(), "x-plan".to_string()),
            ("region".to_string(), "x-region".to_string()),
        ]);
        let identity = Identity::of_consumer("acme", &profile, &forward);
        assert_eq!(identity.consumer.as_deref(), Some("acme"));
        assert_eq!(
            identity.claim_headers,
            vec![
                ("x-plan".to_string(), "gold".to_string()),
                ("x-consumer-tier".to_string(), "premium".to_string()),
            ]
        );
        assert_eq!(identity.absent_headers, vec!["x-region".to_string()]);
    }
}
