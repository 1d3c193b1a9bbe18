//! The ADS gRPC service, routed and framed by hand rather than by tonic's generated server and
//! codec: those encode every message into a buffer of the stream's own, and a SotW response's
//! resources are bytes shared by every stream ([`SharedResponse`]). Here each
//! response goes to HTTP/2 as a small head chunk (length prefix and the fields of its own) and
//! the shared chunk, referenced rather than copied, so ten thousand streams sending the same
//! cluster set hold one copy of it between them.
//!
//! Requests are still decoded by tonic ([`Streaming`]); the response body writes the gRPC
//! framing itself ("Length-Prefixed-Message" and trailers, gRPC over HTTP/2 protocol).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use http_body::Frame;
use prost::Message;
use tonic::body::Body as TonicBody;
use tonic::codec::BufferSettings;
use tonic::codegen::{http, Body, Service, StdError};
use tonic::server::NamedService;
use tonic::{Request, Status, Streaming};
use tonic_prost::ProstCodec;

use super::connection::SendingChunks;
use super::shared_response::SharedResponse;
use super::stream::{StreamLoop, TransportVariant};
use super::{delta, sotw, AdsServer};

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The largest request accepted, as tonic's default for servers.
const MAX_REQUEST_BYTES: usize = 4 << 20;

/// Each stream's request buffer starts at 1 KiB and grows by as much when a request needs it,
/// rather than tonic's 8 KiB: an ACK is under 200 bytes, and ten thousand streams' buffers
/// were 80 MB of the control plane's memory.
const REQUEST_BUFFER_BYTES: usize = 1024;
/// tonic's default: how much of a request body is decoded before the stream yields.
const REQUEST_YIELD_THRESHOLD: usize = 32 * 1024;

/// `envoy.service.discovery.v3.AggregatedDiscoveryService`, both methods.
#[derive(Debug, Clone)]
pub(crate) struct AdsService(pub AdsServer);

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl<B> Service<http::Request<B>> for AdsService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<TonicBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let response = match request.uri().path() {
            SOTW_PATH => self.serve(sotw::SotwStream::default(), request),
            DELTA_PATH => self.serve(delta::DeltaStream::default(), request),
            _ => Status::unimplemented("not an ADS method").into_http(),
        };
        Box::pin(async move { Ok(response) })
    }
}

impl AdsService {
    /// Starts a stream of `variant` on `request`'s body and answers with its responses.
    fn serve<V, B>(&self, variant: V, request: http::Request<B>) -> http::Response<TonicBody>
    where
        V: TransportVariant,
        V::Request: Message + Default,
        V::Response: IntoGrpcMessage,
        B: Body + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        let decoder = ProstCodec::<(), V::Request>::raw_decoder(BufferSettings::new(
            REQUEST_BUFFER_BYTES,
            REQUEST_YIELD_THRESHOLD,
        ));
        let request = request
            .map(|body| Streaming::new_request(decoder, body, None, Some(MAX_REQUEST_BYTES)));
        let sending = request.extensions().get::<SendingChunks>().cloned();
        let stream = self.0.open_stream(variant, Request::from_http(request));
        let mut response = http::Response::new(TonicBody::new(ResponseBody {
            stream,
            chunks: Vec::new().into_iter(),
            sending,
            finished: false,
        }));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        response
    }
}

/// Shared chunks at least this long are sent by reference; shorter ones (a Delta push's
/// resources are often a few hundred bytes each) are copied together, so that a response of a
/// thousand small resources is a few HTTP/2 frames rather than a thousand.
const SEND_BY_REFERENCE_FROM: usize = 4096;

/// A response message as gRPC's length-prefixed message, in chunks.
pub(crate) trait IntoGrpcMessage: Send + 'static {
    fn into_chunks(self) -> Vec<Bytes>;
}

impl<H: Message + Send + 'static> IntoGrpcMessage for SharedResponse<H> {
    fn into_chunks(self) -> Vec<Bytes> {
        let own = self.head.encoded_len();
        let shared: usize = self.shared.iter().map(Bytes::len).sum();
        let length = u32::try_from(own + shared).expect("an xDS response under 4 GiB");
        let mut copied = BytesMut::with_capacity(5 + own);
        copied.put_u8(0);
        copied.put_u32(length);
        self.head.encode_raw(&mut copied);
        let mut chunks = Vec::with_capacity(1 + self.shared.len().min(16));
        for chunk in self.shared {
            if chunk.len() >= SEND_BY_REFERENCE_FROM {
                chunks.push(copied.split().freeze());
                chunks.push(chunk);
            } else {
                copied.extend_from_slice(&chunk);
            }
        }
        chunks.push(copied.freeze());
        chunks.retain(|chunk| !chunk.is_empty());
        chunks
    }
}

/// The body of one stream's response: its messages, then its status as trailers. Polling it
/// runs the stream.
struct ResponseBody<V: TransportVariant> {
    stream: StreamLoop<V>,
    /// The chunks of the message being sent that have not gone out yet.
    chunks: std::vec::IntoIter<Bytes>,
    /// Where large chunks are announced to the connection, which then writes them to the
    /// socket without copying them first.
    sending: Option<SendingChunks>,
    finished: bool,
}

impl<V: TransportVariant> ResponseBody<V> {
    fn send(&self, chunk: Bytes) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(sending) = &self.sending {
            if chunk.len() >= SEND_BY_REFERENCE_FROM {
                sending.add(&chunk);
            }
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
}

impl<V> http_body::Body for ResponseBody<V>
where
    V: TransportVariant,
    V::Response: IntoGrpcMessage,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(chunk) = this.chunks.next() {
            return this.send(chunk);
        }
        if this.finished {
            return Poll::Ready(None);
        }
        let status = match ready!(this.stream.poll_next(cx)) {
            Some(Ok(message)) => {
                this.chunks = message.into_chunks().into_iter();
                let first = this.chunks.next().unwrap_or_default();
                return this.send(first);
            }
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        this.finished = true;
        let mut trailers = http::HeaderMap::new();
        if let Err(unsendable) = status.add_header(&mut trailers) {
            trailers = http::HeaderMap::new();
            let _ = Status::internal(unsendable.message().to_string()).add_header(&mut trailers);
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.chunks.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_proto::envoy::service::discovery::v3::DiscoveryResponse;

    #[test]
    fn a_response_is_its_grpc_message_with_large_chunks_by_reference_and_small_ones_copied() {
        let large = Bytes::from(vec![0x12; SEND_BY_REFERENCE_FROM]);
        let small = [
            Bytes::from_static(b"\x12\x01a"),
            Bytes::from_static(b"\x12\x01b"),
        ];
        let response = SharedResponse {
            head: DiscoveryResponse {
                version_info: "v1".into(),
                nonce: "9".into(),
                ..Default::default()
            },
            shared: vec![
                small[0].clone(),
                large.clone(),
                small[1].clone(),
                small[0].clone(),
            ],
        };
        let mut expected = vec![0];
        expected.extend((response.encoded_len() as u32).to_be_bytes());
        expected.extend(response.encode_to_vec());

        let chunks = response.into_chunks();
        assert_eq!(chunks.concat(), expected);
        assert_eq!(
            chunks.len(),
            3,
            "head and small, large, then small ones together"
        );
        assert_eq!(
            chunks[1].as_ptr(),
            large.as_ptr(),
            "the large chunk is not copied"
        );
    }
}
