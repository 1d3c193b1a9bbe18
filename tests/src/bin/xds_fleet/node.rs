//! One simulated Envoy: an ADS stream on a connection of its own that subscribes as Envoy
//! does (CDS and LDS as wildcards, then RDS for the route configurations its listeners
//! name), ACKs every response, and records when it ACKs a new route table.
//!
//! It reads only what an ACK needs: the version, type and nonce of each response, and the
//! listeners (for their route configuration names). Clusters and route tables are skipped
//! unparsed, so the simulator's cost per node stays far below the control plane's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use prost::Message;
use tokio::sync::mpsc;
use tollgate_proto::envoy::config::core::v3::Node;
use tollgate_proto::envoy::config::listener::v3::{filter, Listener};
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use tollgate_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::Status;

pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// Which ADS variant the node speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Sotw,
    Delta,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Sotw => "SotW",
            Variant::Delta => "Delta",
        }
    }
}

/// The instant every recorded time counts from.
pub static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// What the driver reads of a node: how many route tables it has ACKed, and when the last.
#[derive(Debug, Default)]
pub struct Progress {
    route_tables: AtomicU64,
    last_route_ack_nanos: AtomicU64,
    /// Responses ACKed, of every type.
    pub acks: AtomicU64,
}

impl Progress {
    pub fn route_tables(&self) -> u64 {
        self.route_tables.load(Ordering::Acquire)
    }

    /// When the latest route table was ACKed.
    pub fn last_route_ack(&self) -> Instant {
        *EPOCH + Duration::from_nanos(self.last_route_ack_nanos.load(Ordering::Acquire))
    }

    fn route_table_acked(&self) {
        let nanos = u64::try_from(EPOCH.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_route_ack_nanos.store(nanos, Ordering::Release);
        self.route_tables.fetch_add(1, Ordering::AcqRel);
    }
}

/// The fields of a SotW or Delta response an ACK needs; `resources` (2) is skipped unread.
/// SotW's `version_info` and Delta's `system_version_info` are both field 1.
#[derive(Clone, PartialEq, Message)]
struct ResponseHead {
    #[prost(string, tag = "1")]
    version: String,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
}

/// Encodes requests with prost; hands responses over as their undecoded bytes.
struct RawResponses<Req>(std::marker::PhantomData<Req>);

impl<Req> Default for RawResponses<Req> {
    fn default() -> Self {
        RawResponses(std::marker::PhantomData)
    }
}

impl<Req: Message + Send + 'static> Codec for RawResponses<Req> {
    type Encode = Req;
    type Decode = Bytes;
    type Encoder = RequestEncoder<Req>;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RequestEncoder(std::marker::PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesDecoder
    }
}

struct RequestEncoder<Req>(std::marker::PhantomData<Req>);

impl<Req: Message> Encoder for RequestEncoder<Req> {
    type Item = Req;
    type Error = Status;

    fn encode(&mut self, item: Req, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encode: {e}")))
    }
}

struct BytesDecoder;

impl Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Runs one node until its stream ends; the error says why it ended.
pub async fn run(
    variant: Variant,
    channel: Channel,
    id: String,
    progress: &Progress,
) -> anyhow::Result<()> {
    match variant {
        Variant::Sotw => sotw(channel, id, progress).await,
        Variant::Delta => delta(channel, id, progress).await,
    }
}

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.to_string(),
        cluster: "fleet".to_string(),
        ..Default::default()
    })
}

async fn open<Req: Message + Send + 'static>(
    channel: Channel,
    method: &'static str,
) -> anyhow::Result<(mpsc::UnboundedSender<Req>, tonic::Streaming<Bytes>)> {
    let (requests, outgoing) = mpsc::unbounded_channel::<Req>();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let path = http::uri::PathAndQuery::from_static(method);
    let incoming = tokio_stream::wrappers::UnboundedReceiverStream::new(outgoing);
    let responses = grpc
        .streaming(
            tonic::Request::new(incoming),
            path,
            RawResponses::<Req>::default(),
        )
        .await?
        .into_inner();
    Ok((requests, responses))
}

async fn sotw(channel: Channel, id: String, progress: &Progress) -> anyhow::Result<()> {
    let request = |type_url: &str, names: &[String], version: &str, nonce: &str| DiscoveryRequest {
        version_info: version.to_string(),
        resource_names: names.to_vec(),
        type_url: type_url.to_string(),
        response_nonce: nonce.to_string(),
        ..Default::default()
    };
    let (requests, mut responses) = open::<DiscoveryRequest>(
        channel,
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
    )
    .await?;
    requests.send(DiscoveryRequest {
        node: node(&id),
        ..request(CLUSTER, &[], "", "")
    })?;
    requests.send(request(LISTENER, &[], "", ""))?;
    let mut route_names: Vec<String> = Vec::new();
    let mut route_version = String::new();
    while let Some(raw) = responses.message().await? {
        let head = ResponseHead::decode(raw.clone())?;
        let names = match head.type_url.as_str() {
            LISTENER => {
                let listeners = DiscoveryResponse::decode(raw)?
                    .resources
                    .into_iter()
                    .filter_map(|any| Listener::decode(any.value.as_slice()).ok());
                let wanted = route_configurations(listeners);
                if wanted != route_names {
                    route_names = wanted;
                    requests.send(request(ROUTE, &route_names, "", ""))?;
                }
                Vec::new()
            }
            ROUTE => route_names.clone(),
            _ => Vec::new(),
        };
        requests.send(request(&head.type_url, &names, &head.version, &head.nonce))?;
        progress.acks.fetch_add(1, Ordering::Relaxed);
        if head.type_url == ROUTE && head.version != route_version {
            route_version = head.version;
            progress.route_table_acked();
        }
    }
    anyhow::bail!("the control plane ended the stream")
}

async fn delta(channel: Channel, id: String, progress: &Progress) -> anyhow::Result<()> {
    let ack = |type_url: &str, nonce: &str| DeltaDiscoveryRequest {
        type_url: type_url.to_string(),
        response_nonce: nonce.to_string(),
        ..Default::default()
    };
    let (requests, mut responses) = open::<DeltaDiscoveryRequest>(
        channel,
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
    )
    .await?;
    requests.send(DeltaDiscoveryRequest {
        node: node(&id),
        ..ack(CLUSTER, "")
    })?;
    requests.send(ack(LISTENER, ""))?;
    let mut route_names: Vec<String> = Vec::new();
    let mut route_version = String::new();
    while let Some(raw) = responses.message().await? {
        let head = ResponseHead::decode(raw.clone())?;
        if head.type_url == LISTENER {
            let listeners = DeltaDiscoveryResponse::decode(raw)?
                .resources
                .into_iter()
                .filter_map(|r| r.resource)
                .filter_map(|any| Listener::decode(any.value.as_slice()).ok());
            let wanted = route_configurations(listeners);
            let new: Vec<String> = wanted
                .iter()
                .filter(|name| !route_names.contains(name))
                .cloned()
                .collect();
            if !new.is_empty() {
                route_names.extend(new.iter().cloned());
                requests.send(DeltaDiscoveryRequest {
                    resource_names_subscribe: new,
                    ..ack(ROUTE, "")
                })?;
            }
        }
        requests.send(ack(&head.type_url, &head.nonce))?;
        progress.acks.fetch_add(1, Ordering::Relaxed);
        if head.type_url == ROUTE && head.version != route_version {
            route_version = head.version;
            progress.route_table_acked();
        }
    }
    anyhow::bail!("the control plane ended the stream")
}

/// The route configurations the listeners' HTTP connection managers name, sorted.
fn route_configurations(listeners: impl Iterator<Item = Listener>) -> Vec<String> {
    let mut names: Vec<String> = listeners
        .flat_map(|listener| {
            listener
                .filter_chains
                .into_iter()
                .chain(listener.default_filter_chain)
        })
        .flat_map(|chain| chain.filters)
        .filter_map(|filter| match filter.config_type {
            Some(filter::ConfigType::TypedConfig(any)) => {
                HttpConnectionManager::decode(any.value.as_slice()).ok()
            }
            _ => None,
        })
        .filter_map(|manager| match manager.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => Some(rds.route_config_name),
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}
