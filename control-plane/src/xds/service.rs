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
use tokio::sync::mpsc;
use tonic::body::Body as TonicBody;
use tonic::codec::Codec;
use tonic::codegen::{http, Body, Service, StdError};
use tonic::server::NamedService;
use tonic::{Request, Status, Streaming};
use tonic_prost::ProstCodec;

use super::shared_response::SharedResponse;
use super::stream::TransportVariant;
use super::{delta, sotw, AdsServer};

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The largest request accepted, as tonic's default for servers.
const MAX_REQUEST_BYTES: usize = 4 << 20;

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
        let decoder = ProstCodec::<(), V::Request>::default().decoder();
        let request = request
            .map(|body| Streaming::new_request(decoder, body, None, Some(MAX_REQUEST_BYTES)));
        let responses = self.0.spawn_stream(variant, Request::from_http(request));
        let mut response = http::Response::new(TonicBody::new(ResponseBody {
            responses,
            next_chunks: Vec::new().into_iter(),
            finished: false,
        }));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        response
    }
}

/// A response message as gRPC's length-prefixed message: a head chunk, then shared ones.
pub(crate) trait IntoGrpcMessage: Send + 'static {
    fn into_chunks(self) -> (Bytes, Vec<Bytes>);
}

impl<H: Message + Send + 'static> IntoGrpcMessage for SharedResponse<H> {
    fn into_chunks(self) -> (Bytes, Vec<Bytes>) {
        let shared_length = self.shared.iter().map(Bytes::len).sum();
        (prefixed(&self.head, shared_length), self.shared)
    }
}

/// `message`'s gRPC length prefix (uncompressed) and fields, for a message of
/// `message.encoded_len() + tail` bytes whose last `tail` bytes follow in a chunk of their own.
fn prefixed(message: &impl Message, tail: usize) -> Bytes {
    let own = message.encoded_len();
    let length = u32::try_from(own + tail).expect("an xDS response under 4 GiB");
    let mut buf = BytesMut::with_capacity(5 + own);
    buf.put_u8(0);
    buf.put_u32(length);
    message.encode_raw(&mut buf);
    buf.freeze()
}

/// The body of one stream's response: its messages, then its status as trailers.
struct ResponseBody<M> {
    responses: mpsc::Receiver<Result<M, Status>>,
    /// The shared chunks of the message whose head went out last.
    next_chunks: std::vec::IntoIter<Bytes>,
    finished: bool,
}

impl<M: IntoGrpcMessage> http_body::Body for ResponseBody<M> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(chunk) = this.next_chunks.next() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if this.finished {
            return Poll::Ready(None);
        }
        let status = match ready!(this.responses.poll_recv(cx)) {
            Some(Ok(message)) => {
                let (head, shared) = message.into_chunks();
                this.next_chunks = shared.into_iter();
                return Poll::Ready(Some(Ok(Frame::data(head))));
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
        self.finished && self.next_chunks.len() == 0
    }
}
