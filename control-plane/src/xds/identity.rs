//! Who a client is, by its verified certificate, and which node ids it may use.
//!
//! With `--bind-node-id-to-certificate` a node may only speak under an id its certificate
//! names: a DNS subject alternative name equal to the id, or a URI one whose last path segment
//! is the id (a SPIFFE ID such as `spiffe://tollgate.internal/envoy/edge-1` names `edge-1`).
//! Without that rule, whoever holds any certificate from the CA could ask for another node's
//! configuration, TLS private keys included (SDS), by sending its node id.

use x509_parser::extensions::GeneralName;

/// The names in the subject alternative names of a client's leaf certificate, as the TLS
/// handshake verified it. Tonic hands it to each request of the connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
}

impl ClientIdentity {
    /// The names of the DER certificate `leaf`; none if it cannot be parsed (the handshake
    /// has verified it, so that does not happen in practice, and no name permits nothing).
    pub fn of_certificate(leaf: &[u8]) -> Self {
        let mut identity = ClientIdentity::default();
        let Ok((_, certificate)) = x509_parser::parse_x509_certificate(leaf) else {
            return identity;
        };
        if let Ok(Some(san)) = certificate.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => identity.dns_names.push((*dns).to_owned()),
                    GeneralName::URI(uri) => identity.uris.push((*uri).to_owned()),
                    _ => {}
                }
            }
        }
        identity
    }

    /// Whether this client may speak as node `node_id`.
    pub fn permits_node(&self, node_id: &str) -> bool {
        !node_id.is_empty()
            && (self.dns_names.iter().any(|dns| dns == node_id)
                || self.uris.iter().any(|uri| uri_names_node(uri, node_id)))
    }

    /// The names, for a log line.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self
            .dns_names
            .iter()
            .map(|dns| format!("DNS:{dns}"))
            .chain(self.uris.iter().map(|uri| format!("URI:{uri}")))
            .collect();
        if names.is_empty() {
            "no subject alternative name".to_owned()
        } else {
            names.join(", ")
        }
    }
}

/// Whether `uri`'s last path segment is `node_id`: `scheme://authority/…/node_id`, with no
/// query or fragment (which would make the segment ambiguous).
fn uri_names_node(uri: &str, node_id: &str) -> bool {
    let Some((_, after_scheme)) = uri.split_once("://") else {
        return false;
    };
    let Some((_, path)) = after_scheme.split_once('/') else {
        return false;
    };
    !path.contains(['?', '#']) && path.rsplit('/').next() == Some(node_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(dns: &[&str], uris: &[&str]) -> ClientIdentity {
        ClientIdentity {
            dns_names: dns.iter().map(|s| (*s).to_owned()).collect(),
            uris: uris.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn a_dns_name_permits_exactly_that_node() {
        let client = identity(&["edge-1"], &[]);
        assert!(client.permits_node("edge-1"));
        assert!(!client.permits_node("edge-2"));
        assert!(!client.permits_node("edge-1.example"));
    }

    #[test]
    fn a_spiffe_id_permits_the_node_in_its_last_segment() {
        let client = identity(&[], &["spiffe://tollgate.internal/envoy/edge-1"]);
        assert!(client.permits_node("edge-1"));
        assert!(!client.permits_node("envoy"));
        assert!(!client.permits_node("tollgate.internal"));
    }

    #[test]
    fn a_uri_with_a_query_or_no_path_permits_nothing() {
        let client = identity(&[], &["spiffe://edge-1", "https://a/edge-1?x=1"]);
        assert!(!client.permits_node("edge-1"));
    }

    #[test]
    fn no_names_and_an_empty_id_permit_nothing() {
        assert!(!ClientIdentity::default().permits_node("edge-1"));
        assert!(!identity(&[""], &[]).permits_node(""));
    }

    #[test]
    fn an_unparsable_certificate_has_no_names() {
        assert_eq!(
            ClientIdentity::of_certificate(b"not a certificate"),
            ClientIdentity::default()
        );
    }
}
