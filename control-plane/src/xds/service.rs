//! The ADS gRPC service, routed by hand instead of by tonic's generated server: the generated
//! one fixes SotW's response type to `DiscoveryResponse`, and streams here send
//! [`SharedDiscoveryResponse`]s, the same message on the wire with its resources shared.

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest,
};
use tonic::body::Body as TonicBody;
use tonic::codegen::{http, Body, Service, StdError};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use super::shared_response::SharedDiscoveryResponse;
use super::{delta, sotw, AdsServer};

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// `envoy.service.discovery.v3.AggregatedDiscoveryService`, both methods.
#[derive(Debug, Clone)]
pub(crate) struct AdsService(pub AdsServer);

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

struct Sotw(AdsServer);

impl StreamingService<DiscoveryRequest> for Sotw {
    type Response = SharedDiscoveryResponse;
    type ResponseStream = ReceiverStream<Result<SharedDiscoveryResponse, Status>>;
    type Future = BoxFuture<'static, Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<DiscoveryRequest>>) -> Self::Future {
        let stream = self.0.spawn_stream(sotw::SotwStream::default(), request);
        Box::pin(async move { Ok(Response::new(stream)) })
    }
}

struct Delta(AdsServer);

impl StreamingService<DeltaDiscoveryRequest> for Delta {
    type Response = DeltaDiscoveryResponse;
    type ResponseStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;
    type Future = BoxFuture<'static, Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<DeltaDiscoveryRequest>>) -> Self::Future {
        let stream = self.0.spawn_stream(delta::DeltaStream::default(), request);
        Box::pin(async move { Ok(Response::new(stream)) })
    }
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
        let server = self.0.clone();
        match request.uri().path() {
            SOTW_PATH => Box::pin(async move {
                let mut grpc =
                    Grpc::new(ProstCodec::<SharedDiscoveryResponse, DiscoveryRequest>::default());
                Ok(grpc.streaming(Sotw(server), request).await)
            }),
            DELTA_PATH => Box::pin(async move {
                let mut grpc = Grpc::new(
                    ProstCodec::<DeltaDiscoveryResponse, DeltaDiscoveryRequest>::default(),
                );
                Ok(grpc.streaming(Delta(server), request).await)
            }),
            _ => {
                Box::pin(async move { Ok(Status::unimplemented("not an ADS method").into_http()) })
            }
        }
    }
}
