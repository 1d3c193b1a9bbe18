//! xDS responses whose resources are bytes encoded once and shared by every stream.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType};
use prost::{DecodeError, Message};
use tollgate_proto::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};

/// A response on the wire: the fields of `head`, then `shared`, runs of already-encoded
/// `resources` fields that every stream sending the same resources shares.
///
/// The parts make one valid message: protobuf allows a message's fields in any order and
/// concatenates the elements of a repeated field wherever they appear (protobuf encoding
/// guide, "Last One Wins" and "Repeated Elements"). Sending a cluster set to ten thousand
/// streams so costs one copy of its bytes per stream, made by the kernel, instead of cloning
/// and re-encoding every cluster for each.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct SharedResponse<H> {
    pub head: H,
    pub shared: Vec<Bytes>,
}

/// A State-of-the-World response.
pub(crate) type SotwResponse = SharedResponse<DiscoveryResponse>;
/// An incremental response.
pub(crate) type DeltaResponse = SharedResponse<DeltaDiscoveryResponse>;

impl<H> SharedResponse<H> {
    /// How many resources the shared chunks carry (for logs).
    pub fn shared_count(&self) -> usize {
        self.shared.iter().map(|chunk| count_fields(chunk)).sum()
    }
}

impl<H> From<H> for SharedResponse<H> {
    fn from(head: H) -> Self {
        SharedResponse {
            head,
            shared: Vec::new(),
        }
    }
}

impl<H: Message + Default> Message for SharedResponse<H> {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.head.encode_raw(buf);
        for chunk in &self.shared {
            buf.put_slice(chunk);
        }
    }

    /// Decoding (which only tests do) puts every field in `head`.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        self.head.merge_field(tag, wire_type, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.head.encoded_len() + self.shared.iter().map(Bytes::len).sum::<usize>()
    }

    fn clear(&mut self) {
        self.head.clear();
        self.shared.clear();
    }
}

/// The number of length-delimited fields in `encoded`, a run of them.
fn count_fields(mut encoded: &[u8]) -> usize {
    let mut count = 0;
    while !encoded.is_empty() {
        let key = prost::encoding::decode_varint(&mut encoded);
        let length = prost::encoding::decode_varint(&mut encoded);
        match (key, length) {
            (Ok(_), Ok(length)) if length as usize <= encoded.len() => {
                encoded.advance(length as usize);
                count += 1;
            }
            _ => break,
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{type_url, Resource, Snapshot};
    use tollgate_proto::envoy::config::cluster::v3::Cluster;
    use tollgate_proto::envoy::service::discovery::v3::Resource as DeltaResource;

    fn clusters(names: &[&str]) -> Vec<Resource> {
        names
            .iter()
            .map(|name| {
                let cluster = Cluster {
                    name: name.to_string(),
                    ..Default::default()
                };
                Resource::new(*name, type_url::CLUSTER, &cluster)
            })
            .collect()
    }

    #[test]
    fn shared_chunks_decode_as_the_response_with_every_resource_in_it() {
        let resources = clusters(&["a", "b", "c"]);
        let whole = DiscoveryResponse {
            version_info: "v1".into(),
            resources: resources.iter().map(|r| r.body.clone()).collect(),
            type_url: type_url::CLUSTER.into(),
            nonce: "7".into(),
            ..Default::default()
        };
        let shared = SotwResponse {
            head: DiscoveryResponse {
                resources: whole.resources[..1].to_vec(),
                ..whole.clone()
            },
            shared: resources[1..]
                .iter()
                .map(|r| r.as_sotw_field().clone())
                .collect(),
        };
        let bytes = shared.encode_to_vec();
        assert_eq!(bytes.len(), shared.encoded_len());
        assert_eq!(DiscoveryResponse::decode(bytes.as_slice()).unwrap(), whole);
        assert_eq!(shared.shared_count(), 2);

        let set = Snapshot::new(resources.iter().map(|r| (type_url::CLUSTER, r.clone())));
        let set = set.resources(type_url::CLUSTER);
        let from_set = SotwResponse {
            head: DiscoveryResponse {
                resources: Vec::new(),
                ..whole.clone()
            },
            shared: vec![set.encoded_as_response_field().clone()],
        };
        assert_eq!(
            DiscoveryResponse::decode(from_set.encode_to_vec().as_slice()).unwrap(),
            whole
        );
    }

    #[test]
    fn a_delta_field_is_the_resource_with_its_name_and_version() {
        let resources = clusters(&["a", "b"]);
        let whole = DeltaDiscoveryResponse {
            system_version_info: "v1".into(),
            resources: resources
                .iter()
                .map(|r| DeltaResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.body.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: type_url::CLUSTER.into(),
            removed_resources: vec!["gone".into()],
            nonce: "3".into(),
            ..Default::default()
        };
        let shared = DeltaResponse {
            head: DeltaDiscoveryResponse {
                resources: Vec::new(),
                ..whole.clone()
            },
            shared: resources
                .iter()
                .map(|r| r.as_delta_field().clone())
                .collect(),
        };
        assert_eq!(
            DeltaDiscoveryResponse::decode(shared.encode_to_vec().as_slice()).unwrap(),
            whole
        );
    }
}
