//! Simulated Envoys: one ADS stream each (SotW or Delta) that subscribes as Envoy does (CDS and
//! LDS as wildcards, then RDS for the route configurations its listeners name), answers every
//! response, and records what it received. The `xds_fleet` bench runs thousands of them; the
//! xDS isolation tests run hundreds, some misbehaving.
//!
//! By default a node reads only what an answer needs: the version, type and nonce of each
//! response, and the listeners (for their route configuration names). Clusters and route
//! tables are skipped unparsed, so a node costs far less than the control plane's side of its
//! stream. [`SimulatedEnvoy::check_config`] makes it keep what it holds (clusters, listeners,
//! route tables and the clusters those name, read through lean views of the messages) and
//! record every response that would leave Envoy with a route to a cluster it does not have:
//! the make-before-break order of the xDS protocol ("Eventual consistency considerations").
//! [`SimulatedEnvoy::nack_everything`] makes it reject every response, and
//! [`Progress::stop_reading`] makes it stop reading its stream, so that HTTP/2 flow control
//! stalls the control plane's side.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tollgate_proto::envoy::config::core::v3::Node;
use tollgate_proto::envoy::config::listener::v3::{filter, Listener};
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use tollgate_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tollgate_proto::google::protobuf::Any;
use tollgate_proto::google::rpc::Status as RpcStatus;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

const SOTW_METHOD: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_METHOD: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Which ADS variant a node speaks.
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

/// An xDS endpoint for `addr` with Envoy's defaults for its gRPC clusters: large windows, so
/// that a big response is not paced by WINDOW_UPDATEs.
pub fn xds_endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("an xds address is a valid URI")
        .initial_stream_window_size(16 << 20)
        .initial_connection_window_size(16 << 20)
        .connect_timeout(Duration::from_secs(30))
}

/// The instant every recorded time counts from.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_nanos() -> u64 {
    u64::try_from(EPOCH.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the driver reads of a node while it runs.
#[derive(Debug)]
pub struct Progress {
    /// Route tables answered at a version the node had not answered before.
    route_tables: AtomicU64,
    last_route_answer_nanos: AtomicU64,
    /// `version_info` (SotW) or `system_version_info` (Delta) of the last route table answered.
    route_version: Mutex<String>,
    /// Responses answered (ACKed or NACKed), of every type.
    pub answers: AtomicU64,
    /// Responses read, of every type.
    responses: AtomicU64,
    /// The largest response read, encoded, in bytes.
    largest_response: AtomicUsize,
    /// When the stream was open (its response headers read); 0 until then.
    opened_nanos: AtomicU64,
    /// What the node holds, when it checks its configuration.
    config: Mutex<HeldConfig>,
    /// Why the node's stream ended, once it has.
    ended: Mutex<Option<String>>,
    /// Whether the node reads its stream.
    reading: watch::Sender<bool>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            route_tables: AtomicU64::new(0),
            last_route_answer_nanos: AtomicU64::new(0),
            route_version: Mutex::new(String::new()),
            answers: AtomicU64::new(0),
            responses: AtomicU64::new(0),
            largest_response: AtomicUsize::new(0),
            opened_nanos: AtomicU64::new(0),
            config: Mutex::new(HeldConfig::default()),
            ended: Mutex::new(None),
            reading: watch::channel(true).0,
        }
    }
}

impl Progress {
    /// How many distinct route-table versions the node has answered.
    pub fn route_tables(&self) -> u64 {
        self.route_tables.load(Ordering::Acquire)
    }

    /// When the latest route table was answered.
    pub fn last_route_ack(&self) -> Instant {
        *EPOCH + Duration::from_nanos(self.last_route_answer_nanos.load(Ordering::Acquire))
    }

    /// The version of the last route table the node answered; empty before the first.
    pub fn route_version(&self) -> String {
        lock(&self.route_version).clone()
    }

    /// Responses read so far, of every type.
    pub fn responses(&self) -> u64 {
        self.responses.load(Ordering::Acquire)
    }

    /// The largest response read so far, in bytes.
    pub fn largest_response(&self) -> usize {
        self.largest_response.load(Ordering::Acquire)
    }

    /// When the node's stream opened, if it has.
    pub fn opened(&self) -> Option<Instant> {
        match self.opened_nanos.load(Ordering::Acquire) {
            0 => None,
            nanos => Some(*EPOCH + Duration::from_nanos(nanos)),
        }
    }

    /// Why the stream ended (an error status, a reset, a broken connection, or the control
    /// plane closing it); `None` while it runs.
    pub fn ended(&self) -> Option<String> {
        lock(&self.ended).clone()
    }

    /// What the node holds (kept only by nodes that check their configuration).
    pub fn config(&self) -> MutexGuard<'_, HeldConfig> {
        lock(&self.config)
    }

    /// Stops reading the stream at once, even in the middle of a response: what the control
    /// plane sends next piles up against HTTP/2 flow control.
    pub fn stop_reading(&self) {
        self.reading.send_replace(false);
    }

    /// Reads the stream again.
    pub fn resume_reading(&self) {
        self.reading.send_replace(true);
    }

    fn read(&self, bytes: usize) {
        self.responses.fetch_add(1, Ordering::AcqRel);
        self.largest_response.fetch_max(bytes, Ordering::AcqRel);
    }

    fn route_table_answered(&self, version: &str) {
        let mut held = lock(&self.route_version);
        if *held == version {
            return;
        }
        version.clone_into(&mut held);
        drop(held);
        self.last_route_answer_nanos
            .store(now_nanos(), Ordering::Release);
        self.route_tables.fetch_add(1, Ordering::AcqRel);
    }
}

/// The configuration a checking node holds, as Envoy would after applying every response it
/// ACKed, and what was wrong with it along the way.
#[derive(Debug, Default, Clone)]
pub struct HeldConfig {
    pub clusters: BTreeSet<String>,
    /// Listener → the route tables its HTTP connection managers name.
    pub listeners: BTreeMap<String, Vec<String>>,
    /// Route table → the clusters its routes send to.
    pub route_tables: BTreeMap<String, BTreeSet<String>>,
    /// Responses that broke make-before-break: a listener before any cluster, a route table
    /// naming a cluster not (or no longer) held.
    pub violations: Vec<String>,
}

impl HeldConfig {
    /// What keeps the configuration from being complete: route tables the listeners name but
    /// the node lacks, and clusters the route tables name but the node lacks.
    pub fn gaps(&self) -> Vec<String> {
        let mut gaps = Vec::new();
        if self.listeners.is_empty() {
            gaps.push("no listener".to_owned());
        }
        for (listener, tables) in &self.listeners {
            for table in tables {
                if !self.route_tables.contains_key(table) {
                    gaps.push(format!(
                        "listener {listener} names route table {table}, never received"
                    ));
                }
            }
        }
        gaps.extend(self.dangling_routes());
        gaps
    }

    fn dangling_routes(&self) -> Vec<String> {
        self.route_tables
            .iter()
            .flat_map(|(table, clusters)| {
                clusters.difference(&self.clusters).map(move |cluster| {
                    format!("route table {table} sends to cluster {cluster}, not held")
                })
            })
            .collect()
    }

    fn apply_clusters(&mut self, clusters: BTreeSet<String>) {
        self.clusters = clusters;
        let dangling = self.dangling_routes();
        self.violations.extend(
            dangling
                .into_iter()
                .map(|d| format!("after a CDS response: {d}")),
        );
    }

    fn apply_listeners(&mut self, listeners: BTreeMap<String, Vec<String>>) {
        if self.clusters.is_empty() {
            self.violations
                .push("listeners arrived before any cluster".to_owned());
        }
        self.listeners = listeners;
    }

    fn apply_route_tables(&mut self, tables: BTreeMap<String, BTreeSet<String>>) {
        for (table, clusters) in &tables {
            for cluster in clusters.difference(&self.clusters) {
                self.violations.push(format!(
                    "route table {table} arrived naming cluster {cluster} before CDS delivered it"
                ));
            }
        }
        self.route_tables.extend(tables);
    }
}

/// One simulated Envoy, before it connects.
#[derive(Debug, Clone)]
pub struct SimulatedEnvoy {
    id: String,
    variant: Variant,
    nack: bool,
    check_config: bool,
    reading: bool,
    other_types: Vec<String>,
}

impl SimulatedEnvoy {
    pub fn new(id: impl Into<String>, variant: Variant) -> Self {
        SimulatedEnvoy {
            id: id.into(),
            variant,
            nack: false,
            check_config: false,
            reading: true,
            other_types: Vec::new(),
        }
    }

    /// Starts without reading its stream, until [`Progress::resume_reading`].
    pub fn not_reading(mut self) -> Self {
        self.reading = false;
        self
    }

    /// Also asks for `type_urls` when it connects, as Envoy asks for every type its bootstrap
    /// names. A type the control plane does not serve is answered at once (empty) without
    /// waiting for an earlier answer, so asking for many of them fills the stream.
    pub fn also_requesting(mut self, type_urls: impl IntoIterator<Item = String>) -> Self {
        self.other_types.extend(type_urls);
        self
    }

    /// Rejects every response (an `error_detail`, and for SotW the last accepted version,
    /// which stays empty), as an Envoy that cannot apply anything the control plane sends.
    pub fn nack_everything(mut self) -> Self {
        self.nack = true;
        self
    }

    /// Keeps and checks what it holds (see [`HeldConfig`]).
    pub fn check_config(mut self) -> Self {
        self.check_config = true;
        self
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs the node on `channel` until its stream ends; the error says why it ended.
    pub async fn run(self, channel: Channel, progress: &Progress) -> anyhow::Result<()> {
        match self.variant {
            Variant::Sotw => self.sotw(channel, progress).await,
            Variant::Delta => self.delta(channel, progress).await,
        }
    }

    /// Runs the node in a task of its own, which ends when the returned handle is dropped.
    pub fn spawn(self, channel: Channel) -> RunningSimulatedEnvoy {
        let progress = Arc::new(Progress::default());
        progress.reading.send_replace(self.reading);
        let id = self.id.clone();
        let variant = self.variant;
        let recorded = Arc::clone(&progress);
        let task = tokio::spawn(async move {
            let outcome = self.run(channel, &recorded).await;
            let why = match outcome {
                Ok(()) => "the stream ended".to_owned(),
                Err(error) => format!("{error:#}"),
            };
            *lock(&recorded.ended) = Some(why);
        });
        RunningSimulatedEnvoy {
            id,
            variant,
            progress,
            task,
        }
    }

    fn node(&self) -> Option<Node> {
        Some(Node {
            id: self.id.clone(),
            cluster: "fleet".to_owned(),
            ..Default::default()
        })
    }

    fn rejection(&self, type_url: &str, version: &str) -> RpcStatus {
        RpcStatus {
            // INVALID_ARGUMENT, as Envoy sends when it rejects a configuration.
            code: 3,
            message: format!("{} rejects {type_url} version {version}", self.id),
            ..Default::default()
        }
    }

    async fn sotw(self, channel: Channel, progress: &Progress) -> anyhow::Result<()> {
        let request =
            |type_url: &str, names: &[String], version: &str, nonce: &str| DiscoveryRequest {
                version_info: version.to_owned(),
                resource_names: names.to_vec(),
                type_url: type_url.to_owned(),
                response_nonce: nonce.to_owned(),
                ..Default::default()
            };
        let (requests, mut responses) = open::<DiscoveryRequest>(channel, SOTW_METHOD).await?;
        progress.opened_nanos.store(now_nanos(), Ordering::Release);
        requests.send(DiscoveryRequest {
            node: self.node(),
            ..request(CLUSTER, &[], "", "")
        })?;
        requests.send(request(LISTENER, &[], "", ""))?;
        for type_url in &self.other_types {
            requests.send(request(type_url, &[], "", ""))?;
        }
        let mut route_names: Vec<String> = Vec::new();
        while let Some(raw) = next_response(&mut responses, progress).await? {
            progress.read(raw.len());
            let head = ResponseHead::decode(raw.clone())?;
            let names = match head.type_url.as_str() {
                LISTENER => {
                    let listeners: Vec<Listener> = DiscoveryResponse::decode(raw.clone())?
                        .resources
                        .into_iter()
                        .filter_map(|any| Listener::decode(any.value.as_slice()).ok())
                        .collect();
                    let wanted = route_configurations(listeners.iter());
                    if wanted != route_names {
                        route_names = wanted;
                        requests.send(request(ROUTE, &route_names, "", ""))?;
                    }
                    Vec::new()
                }
                ROUTE => route_names.clone(),
                _ => Vec::new(),
            };
            if self.nack {
                // Nothing was ever accepted, so the version stays empty (xDS protocol, "ACK and
                // NACK semantics summary": a NACK carries the last good version).
                requests.send(DiscoveryRequest {
                    error_detail: Some(self.rejection(&head.type_url, &head.version)),
                    ..request(&head.type_url, &names, "", &head.nonce)
                })?;
            } else {
                if self.check_config {
                    let response = DiscoveryResponse::decode(raw)?;
                    apply_sotw(&mut progress.config(), &head.type_url, &response.resources)?;
                }
                requests.send(request(&head.type_url, &names, &head.version, &head.nonce))?;
            }
            progress.answers.fetch_add(1, Ordering::AcqRel);
            if head.type_url == ROUTE {
                progress.route_table_answered(&head.version);
            }
        }
        anyhow::bail!("the control plane ended the stream")
    }

    async fn delta(self, channel: Channel, progress: &Progress) -> anyhow::Result<()> {
        let answer = |type_url: &str, nonce: &str| DeltaDiscoveryRequest {
            type_url: type_url.to_owned(),
            response_nonce: nonce.to_owned(),
            ..Default::default()
        };
        let (requests, mut responses) =
            open::<DeltaDiscoveryRequest>(channel, DELTA_METHOD).await?;
        progress.opened_nanos.store(now_nanos(), Ordering::Release);
        requests.send(DeltaDiscoveryRequest {
            node: self.node(),
            ..answer(CLUSTER, "")
        })?;
        requests.send(answer(LISTENER, ""))?;
        for type_url in &self.other_types {
            requests.send(answer(type_url, ""))?;
        }
        let mut route_names: Vec<String> = Vec::new();
        while let Some(raw) = next_response(&mut responses, progress).await? {
            progress.read(raw.len());
            let head = ResponseHead::decode(raw.clone())?;
            let decoded = if head.type_url == LISTENER || (self.check_config && !self.nack) {
                Some(DeltaDiscoveryResponse::decode(raw)?)
            } else {
                None
            };
            if let Some(response) = decoded.as_ref().filter(|_| head.type_url == LISTENER) {
                let listeners: Vec<Listener> = response
                    .resources
                    .iter()
                    .filter_map(|r| r.resource.as_ref())
                    .filter_map(|any| Listener::decode(any.value.as_slice()).ok())
                    .collect();
                let new: Vec<String> = route_configurations(listeners.iter())
                    .into_iter()
                    .filter(|name| !route_names.contains(name))
                    .collect();
                if !new.is_empty() {
                    route_names.extend(new.iter().cloned());
                    requests.send(DeltaDiscoveryRequest {
                        resource_names_subscribe: new,
                        ..answer(ROUTE, "")
                    })?;
                }
            }
            if self.nack {
                requests.send(DeltaDiscoveryRequest {
                    error_detail: Some(self.rejection(&head.type_url, &head.version)),
                    ..answer(&head.type_url, &head.nonce)
                })?;
            } else {
                if let Some(response) = decoded.as_ref().filter(|_| self.check_config) {
                    apply_delta(&mut progress.config(), &head.type_url, response)?;
                }
                requests.send(answer(&head.type_url, &head.nonce))?;
            }
            progress.answers.fetch_add(1, Ordering::AcqRel);
            if head.type_url == ROUTE {
                progress.route_table_answered(&head.version);
            }
        }
        anyhow::bail!("the control plane ended the stream")
    }
}

/// A simulated Envoy running in a task; dropping it ends the task and so the stream.
#[derive(Debug)]
pub struct RunningSimulatedEnvoy {
    pub id: String,
    pub variant: Variant,
    pub progress: Arc<Progress>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RunningSimulatedEnvoy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The next response, waiting while the node does not read; `None` when the stream ends.
/// Reading stops even in the middle of a message: `Streaming::message` keeps what it has
/// read so far in the stream, so dropping its future loses nothing.
async fn next_response(
    responses: &mut tonic::Streaming<Bytes>,
    progress: &Progress,
) -> Result<Option<Bytes>, Status> {
    let mut reading = progress.reading.subscribe();
    loop {
        if !*reading.borrow_and_update() {
            // The sender lives in `progress`, which outlives this future.
            let _ = reading.wait_for(|reading| *reading).await;
        }
        tokio::select! {
            message = responses.message() => return message,
            _ = reading.wait_for(|reading| !*reading) => {}
        }
    }
}

/// Applies a SotW response to what the node holds: CDS and LDS replace the whole set, RDS
/// adds or replaces the tables it carries (xDS protocol, "Deleting Resources").
fn apply_sotw(held: &mut HeldConfig, type_url: &str, resources: &[Any]) -> anyhow::Result<()> {
    match type_url {
        CLUSTER => {
            let clusters = resources
                .iter()
                .map(|any| Ok(NameView::decode(any.value.as_slice())?.name))
                .collect::<anyhow::Result<_>>()?;
            held.apply_clusters(clusters);
        }
        LISTENER => held.apply_listeners(listener_tables(resources.iter())?),
        ROUTE => held.apply_route_tables(route_tables(resources.iter())?),
        _ => {}
    }
    Ok(())
}

/// Applies a Delta response: resources added or replaced, then `removed_resources` removed.
fn apply_delta(
    held: &mut HeldConfig,
    type_url: &str,
    response: &DeltaDiscoveryResponse,
) -> anyhow::Result<()> {
    let bodies = response
        .resources
        .iter()
        .filter_map(|r| r.resource.as_ref());
    let removed = &response.removed_resources;
    match type_url {
        CLUSTER => {
            let mut clusters = held.clusters.clone();
            for any in bodies {
                clusters.insert(NameView::decode(any.value.as_slice())?.name);
            }
            clusters.retain(|name| !removed.contains(name));
            held.apply_clusters(clusters);
        }
        LISTENER => {
            let mut listeners = held.listeners.clone();
            listeners.extend(listener_tables(bodies)?);
            listeners.retain(|name, _| !removed.contains(name));
            held.apply_listeners(listeners);
        }
        ROUTE => {
            held.apply_route_tables(route_tables(bodies)?);
            held.route_tables.retain(|name, _| !removed.contains(name));
        }
        _ => {}
    }
    Ok(())
}

fn listener_tables<'a>(
    resources: impl Iterator<Item = &'a Any>,
) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    resources
        .map(|any| {
            let listener = Listener::decode(any.value.as_slice())?;
            let tables = route_configurations(std::iter::once(&listener));
            Ok((listener.name, tables))
        })
        .collect()
}

fn route_tables<'a>(
    resources: impl Iterator<Item = &'a Any>,
) -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    resources
        .map(|any| {
            let table = RouteTableView::decode(any.value.as_slice())?;
            let clusters = table
                .virtual_hosts
                .into_iter()
                .flat_map(|host| host.routes)
                .filter_map(|route| route.route)
                .flat_map(|action| {
                    let weighted = action.weighted_clusters.map(|w| w.clusters);
                    std::iter::once(action.cluster)
                        .chain(weighted.into_iter().flatten().map(|c| c.name))
                        .filter(|name| !name.is_empty())
                })
                .collect();
            Ok((table.name, clusters))
        })
        .collect()
}

/// The route configurations the listeners' HTTP connection managers name, sorted.
fn route_configurations<'a>(listeners: impl Iterator<Item = &'a Listener>) -> Vec<String> {
    let mut names: Vec<String> = listeners
        .flat_map(|listener| {
            listener
                .filter_chains
                .iter()
                .chain(listener.default_filter_chain.as_ref())
        })
        .flat_map(|chain| &chain.filters)
        .filter_map(|filter| match &filter.config_type {
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

/// The fields of a SotW or Delta response an answer needs; `resources` (2) is skipped unread.
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

/// The name of a Cluster, Listener or RouteConfiguration (field 1 of each), the rest skipped.
#[derive(Clone, PartialEq, Message)]
struct NameView {
    #[prost(string, tag = "1")]
    name: String,
}

/// A RouteConfiguration read only for the clusters its routes send to.
#[derive(Clone, PartialEq, Message)]
struct RouteTableView {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, repeated, tag = "2")]
    virtual_hosts: Vec<VirtualHostView>,
}

#[derive(Clone, PartialEq, Message)]
struct VirtualHostView {
    #[prost(message, repeated, tag = "3")]
    routes: Vec<RouteView>,
}

#[derive(Clone, PartialEq, Message)]
struct RouteView {
    /// `Route.route`, the RouteAction of the `action` oneof.
    #[prost(message, optional, tag = "2")]
    route: Option<RouteActionView>,
}

#[derive(Clone, PartialEq, Message)]
struct RouteActionView {
    #[prost(string, tag = "1")]
    cluster: String,
    #[prost(message, optional, tag = "3")]
    weighted_clusters: Option<WeightedClustersView>,
}

#[derive(Clone, PartialEq, Message)]
struct WeightedClustersView {
    #[prost(message, repeated, tag = "1")]
    clusters: Vec<NameView>,
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
