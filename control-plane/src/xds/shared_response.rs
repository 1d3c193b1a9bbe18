//! A SotW response whose resources may be bytes encoded once and shared by every stream.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType};
use prost::{DecodeError, Message};
use tollgate_proto::envoy::service::discovery::v3::DiscoveryResponse;

/// A `DiscoveryResponse` on the wire: the fields of `head`, then `resources`, a run of
/// already-encoded `resources` fields (field 2) that every stream sending the same set shares.
///
/// The two halves make one valid message: protobuf allows a message's fields in any order and
/// concatenates the elements of a repeated field wherever they appear (protobuf encoding
/// guide, "Last One Wins" and "Repeated Elements"). Sending a cluster set to ten thousand
/// streams so costs one copy of its bytes per stream instead of cloning and re-encoding
/// every cluster for each.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct SharedDiscoveryResponse {
    pub head: DiscoveryResponse,
    pub resources: Bytes,
}

impl SharedDiscoveryResponse {
    /// How many resources the response carries (for logs; counts the shared block's fields).
    pub fn resource_count(&self) -> usize {
        self.head.resources.len() + count_fields(&self.resources)
    }
}

impl From<DiscoveryResponse> for SharedDiscoveryResponse {
    fn from(head: DiscoveryResponse) -> Self {
        SharedDiscoveryResponse {
            head,
            resources: Bytes::new(),
        }
    }
}

impl Message for SharedDiscoveryResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.head.encode_raw(buf);
        buf.put_slice(&self.resources);
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
        self.head.encoded_len() + self.resources.len()
    }

    fn clear(&mut self) {
        self.head.clear();
        self.resources = Bytes::new();
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
    use tollgate_proto::google::protobuf::Any;

    fn any(value: &[u8]) -> Any {
        Any {
            type_url: "type.googleapis.com/x".into(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn a_shared_block_decodes_as_the_same_response_as_resources_in_the_head() {
        let resources = vec![any(b"one"), any(b"two"), any(b"")];
        let whole = DiscoveryResponse {
            version_info: "v1".into(),
            resources: resources.clone(),
            type_url: "type.googleapis.com/x".into(),
            nonce: "7".into(),
            ..Default::default()
        };
        let shared = SharedDiscoveryResponse {
            head: DiscoveryResponse {
                resources: Vec::new(),
                ..whole.clone()
            },
            resources: {
                let mut block = Vec::new();
                for resource in &resources {
                    prost::encoding::message::encode(2, resource, &mut block);
                }
                Bytes::from(block)
            },
        };
        let bytes = shared.encode_to_vec();
        assert_eq!(bytes.len(), shared.encoded_len());
        assert_eq!(DiscoveryResponse::decode(bytes.as_slice()).unwrap(), whole);
        assert_eq!(shared.resource_count(), 3);
    }
}
