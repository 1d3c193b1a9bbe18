//! The ADS server driven over real gRPC on 127.0.0.1 by a tonic client that plays Envoy.
//!
//! No test sleeps: each waits for a response or a registry change, with a generous timeout only
//! as a failure guard. "Nothing was sent" is shown by what the *next* response is.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::envoy::config::cluster::v3::Cluster;
use tollgate_proto::envoy::config::core::v3::{data_source, DataSource, Node};
use tollgate_proto::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use tollgate_proto::envoy::config::listener::v3::Listener;
use tollgate_proto::envoy::config::route::v3::RouteConfiguration;
use tollgate_proto::envoy::extensions::transport_sockets::tls::v3::{
    secret, GenericSecret, Secret,
};
use tollgate_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use tollgate_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tollgate_proto::google::protobuf::Any;
use tollgate_proto::google::rpc::Status as RpcStatus;
use tonic::Streaming;

use super::{serve, AdsServer, NodeRegistry, NodeStatus};
use crate::snapshot::{type_url, Resource, Served, Snapshot, SnapshotCache};

const PATIENCE: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Builds a snapshot from `kind:name=tag` words: kinds `c` (cluster), `e` (endpoints), `l`
/// (listener), `r` (route), `s` (secret); a different tag gives the resource different
/// content.
fn snapshot(spec: &str) -> Snapshot {
    Snapshot::new(spec.split_whitespace().map(|word| {
        let (kind, rest) = word.split_once(':').expect("kind:name=tag");
        let (name, tag) = rest.split_once('=').expect("kind:name=tag");
        let tag: u32 = tag.parse().expect("numeric tag");
        match kind {
            "c" => {
                let cluster = Cluster {
                    name: name.into(),
                    alt_stat_name: format!("tag{tag}"),
                    ..Default::default()
                };
                (
                    type_url::CLUSTER,
                    Resource::new(name, type_url::CLUSTER, &cluster),
                )
            }
            "e" => {
                let assignment = ClusterLoadAssignment {
                    cluster_name: name.into(),
                    endpoints: vec![LocalityLbEndpoints {
                        priority: tag,
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                (
                    type_url::ENDPOINT,
                    Resource::new(name, type_url::ENDPOINT, &assignment),
                )
            }
            "l" => {
                let listener = Listener {
                    name: name.into(),
                    stat_prefix: format!("tag{tag}"),
                    ..Default::default()
                };
                (
                    type_url::LISTENER,
                    Resource::new(name, type_url::LISTENER, &listener),
                )
            }
            "r" => {
                let route = RouteConfiguration {
                    name: name.into(),
                    request_headers_to_remove: vec![format!("tag{tag}")],
                    ..Default::default()
                };
                (
                    type_url::ROUTE,
                    Resource::new(name, type_url::ROUTE, &route),
                )
            }
            "s" => {
                let secret = Secret {
                    name: name.into(),
                    r#type: Some(secret::Type::GenericSecret(GenericSecret {
                        secret: Some(DataSource {
                            specifier: Some(data_source::Specifier::InlineString(format!(
                                "tag{tag}"
                            ))),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })),
                };
                (
                    type_url::SECRET,
                    Resource::new(name, type_url::SECRET, &secret),
                )
            }
            other => panic!("unknown kind {other}"),
        }
    }))
}

/// A type Tollgate does not serve.
const UNSERVED: &str = "type.googleapis.com/envoy.service.runtime.v3.Runtime";

const BASE: &str = "c:a=1 c:b=1 e:a=1 e:b=1 l:main=1 r:main=1";

/// The name inside an encoded resource.
fn resource_name(any: &Any) -> String {
    let bytes = any.value.as_slice();
    match any.type_url.as_str() {
        type_url::CLUSTER => Cluster::decode(bytes).expect("cluster").name,
        type_url::ENDPOINT => {
            ClusterLoadAssignment::decode(bytes)
                .expect("assignment")
                .cluster_name
        }
        type_url::LISTENER => Listener::decode(bytes).expect("listener").name,
        type_url::ROUTE => RouteConfiguration::decode(bytes).expect("route").name,
        type_url::SECRET => Secret::decode(bytes).expect("secret").name,
        other => panic!("unexpected type {other}"),
    }
}

fn names(response: &DiscoveryResponse) -> Vec<String> {
    response.resources.iter().map(resource_name).collect()
}

fn short(type_url: &str) -> &'static str {
    match type_url {
        type_url::CLUSTER => "cluster",
        type_url::ENDPOINT => "endpoint",
        type_url::LISTENER => "listener",
        type_url::ROUTE => "route",
        type_url::SECRET => "secret",
        _ => "unserved",
    }
}

fn version(snapshot: &Snapshot, type_url: &str) -> String {
    snapshot.resources(type_url).version.clone()
}

/// A running server on an ephemeral port; stops when dropped.
struct Server {
    cache: Arc<SnapshotCache>,
    nodes: Arc<NodeRegistry>,
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    serving: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start() -> Self {
        let cache = Arc::new(SnapshotCache::new());
        let nodes = Arc::new(NodeRegistry::new());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = AdsServer::new(Arc::clone(&cache), Arc::clone(&nodes));
        let serving = tokio::spawn(serve(listener, server, None, async {
            let _ = stopped.await;
        }));
        Server {
            cache,
            nodes,
            address,
            stop: Some(stop),
            serving,
        }
    }

    fn publish(&self, spec: &str) -> Snapshot {
        let snapshot = snapshot(spec);
        assert!(self.cache.set(snapshot.clone()), "snapshot must be new");
        snapshot
    }

    async fn client(&self) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
        within(
            "connection",
            AggregatedDiscoveryServiceClient::connect(format!("http://{}", self.address)),
        )
        .await
        .expect("connect")
    }

    async fn sotw(&self, node: &str) -> SotwEnvoy {
        self.sotw_in(node, "").await
    }

    /// A SotW stream whose node belongs to `group` (its `cluster`).
    async fn sotw_in(&self, node: &str, group: &str) -> SotwEnvoy {
        let (requests, outgoing) = mpsc::channel(16);
        let responses = within(
            "sotw stream",
            self.client()
                .await
                .stream_aggregated_resources(ReceiverStream::new(outgoing)),
        )
        .await
        .expect("open sotw stream")
        .into_inner();
        SotwEnvoy {
            node: Some(node.to_string()),
            group: group.to_string(),
            requests,
            responses,
        }
    }

    async fn delta(&self, node: &str) -> DeltaEnvoy {
        let (requests, outgoing) = mpsc::channel(16);
        let responses = within(
            "delta stream",
            self.client()
                .await
                .delta_aggregated_resources(ReceiverStream::new(outgoing)),
        )
        .await
        .expect("open delta stream")
        .into_inner();
        DeltaEnvoy {
            node: Some(node.to_string()),
            requests,
            responses,
        }
    }

    /// Waits until the registry satisfies `condition` against the cache's current snapshot.
    async fn status_until(&self, condition: impl Fn(&[NodeStatus]) -> bool) -> Vec<NodeStatus> {
        let mut changes = self.nodes.changes();
        within("node status", async {
            loop {
                let current = self.cache.current_served();
                let statuses = self.nodes.statuses(current.as_deref());
                if condition(&statuses) {
                    return statuses;
                }
                changes.changed().await.expect("registry alive");
            }
        })
        .await
    }
}

/// Plays an Envoy speaking SotW ADS; the node is sent on the first request only, as Envoy does.
struct SotwEnvoy {
    node: Option<String>,
    group: String,
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
}

impl SotwEnvoy {
    async fn send(&mut self, mut request: DiscoveryRequest) {
        request.node = self.node.take().map(|id| Node {
            id,
            cluster: self.group.clone(),
            ..Default::default()
        });
        self.requests.send(request).await.expect("stream open");
    }

    async fn subscribe(&mut self, type_url: &str, names: &[&str]) {
        self.send(DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }

    async fn ack(&mut self, response: &DiscoveryResponse, names: &[&str]) {
        self.send(DiscoveryRequest {
            version_info: response.version_info.clone(),
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }

    async fn nack(&mut self, response: &DiscoveryResponse, held_version: &str, error: &str) {
        self.send(DiscoveryRequest {
            version_info: held_version.into(),
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: error.into(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await;
    }

    /// Returns once the server has processed every request sent so far, and asserts that it
    /// pushed nothing meanwhile: requests are handled in order, and a request for an unserved
    /// type is answered at once.
    async fn barrier(&mut self) {
        self.subscribe(UNSERVED, &[]).await;
        let response = self.recv().await;
        assert_eq!(
            response.type_url, UNSERVED,
            "unexpected push before the barrier"
        );
    }

    async fn recv(&mut self) -> DiscoveryResponse {
        within("sotw response", self.responses.message())
            .await
            .expect("stream healthy")
            .expect("stream open")
    }

    /// Receives a CDS push changing a held cluster, then the endpoints answered again for it
    /// (Envoy re-warms a changed cluster), and ACKs only the endpoints; returns the CDS push.
    async fn recv_clusters_acking_rewarmed_endpoints(&mut self) -> DiscoveryResponse {
        let clusters = self.recv().await;
        assert_eq!(short(&clusters.type_url), "cluster");
        let endpoints = self.recv().await;
        assert_eq!(short(&endpoints.type_url), "endpoint");
        self.ack(&endpoints, &["a", "b"]).await;
        clusters
    }

    /// Subscribes like Envoy to `BASE` (CDS and LDS wildcard, EDS a+b, RDS main), ACKing each
    /// response; returns the responses.
    async fn sync_base(&mut self) -> Vec<DiscoveryResponse> {
        self.subscribe(type_url::CLUSTER, &[]).await;
        self.subscribe(type_url::ENDPOINT, &["a", "b"]).await;
        self.subscribe(type_url::LISTENER, &[]).await;
        self.subscribe(type_url::ROUTE, &["main"]).await;
        let mut responses = Vec::new();
        for _ in 0..4 {
            let response = self.recv().await;
            self.ack(&response, &base_names(&response.type_url)).await;
            responses.push(response);
        }
        responses
    }
}

/// The names Envoy subscribes to for `BASE`.
fn base_names(type_url: &str) -> Vec<&'static str> {
    match type_url {
        type_url::ENDPOINT => vec!["a", "b"],
        type_url::ROUTE => vec!["main"],
        _ => vec![],
    }
}

/// Plays an Envoy speaking incremental ADS.
struct DeltaEnvoy {
    node: Option<String>,
    requests: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: Streaming<DeltaDiscoveryResponse>,
}

impl DeltaEnvoy {
    async fn send(&mut self, mut request: DeltaDiscoveryRequest) {
        request.node = self.node.take().map(|id| Node {
            id,
            ..Default::default()
        });
        self.requests.send(request).await.expect("stream open");
    }

    async fn subscribe(&mut self, type_url: &str, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }

    async fn ack(&mut self, response: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    /// As [`SotwEnvoy::barrier`].
    async fn barrier(&mut self) {
        self.subscribe(UNSERVED, &[]).await;
        let response = self.recv().await;
        assert_eq!(
            response.type_url, UNSERVED,
            "unexpected push before the barrier"
        );
    }

    async fn nack(&mut self, response: &DeltaDiscoveryResponse, error: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: error.into(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await;
    }

    /// Subscribes like Envoy to `BASE`, ACKing each response.
    async fn sync_base(&mut self) {
        self.subscribe(type_url::CLUSTER, &[]).await;
        self.subscribe(type_url::ENDPOINT, &["a", "b"]).await;
        self.subscribe(type_url::LISTENER, &[]).await;
        self.subscribe(type_url::ROUTE, &["main"]).await;
        for _ in 0..4 {
            let response = self.recv().await;
            self.ack(&response).await;
        }
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        within("delta response", self.responses.message())
            .await
            .expect("stream healthy")
            .expect("stream open")
    }
}

fn delta_names(response: &DeltaDiscoveryResponse) -> Vec<&str> {
    response.resources.iter().map(|r| r.name.as_str()).collect()
}

fn node_status<'a>(statuses: &'a [NodeStatus], id: &str) -> Option<&'a NodeStatus> {
    statuses.iter().find(|status| status.id == id)
}

#[tokio::test]
async fn initial_sotw_subscribe_gets_all_four_types_in_order() {
    let server = Server::start().await;
    let base = server.publish(BASE);
    let mut envoy = server.sotw("edge-1").await;

    let responses = envoy.sync_base().await;

    let types: Vec<_> = responses.iter().map(|r| short(&r.type_url)).collect();
    assert_eq!(types, ["cluster", "endpoint", "listener", "route"]);
    assert_eq!(names(&responses[0]), ["a", "b"]);
    assert_eq!(names(&responses[1]), ["a", "b"]);
    assert_eq!(names(&responses[2]), ["main"]);
    assert_eq!(names(&responses[3]), ["main"]);
    for response in &responses {
        assert_eq!(response.version_info, version(&base, &response.type_url));
    }
    let mut nonces: Vec<_> = responses.iter().map(|r| r.nonce.clone()).collect();
    nonces.dedup();
    assert_eq!(nonces.len(), 4, "every response has a fresh nonce");
}

#[tokio::test]
async fn a_secret_is_pushed_after_routes_and_a_changed_secret_alone_is_pushed_alone() {
    let server = Server::start().await;
    server.publish(&format!("{BASE} s:main=1"));
    let mut envoy = server.sotw("edge-1").await;
    envoy.sync_base().await;
    // Envoy asks for a listener's certificate by name once it has the listener.
    envoy.subscribe(type_url::SECRET, &["main"]).await;
    let response = envoy.recv().await;
    assert_eq!(short(&response.type_url), "secret");
    assert_eq!(names(&response), ["main"]);
    envoy.ack(&response, &["main"]).await;

    // A rotated certificate: only SDS changes, so only SDS is pushed (the listener, and the
    // connections it holds, are left alone).
    let next = server.publish(&format!("{BASE} s:main=2"));
    let response = envoy.recv().await;
    assert_eq!(short(&response.type_url), "secret");
    assert_eq!(response.version_info, version(&next, type_url::SECRET));
    envoy.ack(&response, &["main"]).await;
    envoy.barrier().await;

    // A listener and its secret changing together: the listener goes first.
    server.publish("c:a=1 c:b=1 e:a=1 e:b=1 l:main=2 r:main=1 s:main=3");
    let first = envoy.recv().await;
    assert_eq!(short(&first.type_url), "listener");
    envoy.ack(&first, &[]).await;
    assert_eq!(short(&envoy.recv().await.type_url), "secret");
}

#[tokio::test]
async fn a_delta_client_gets_a_rotated_secret_alone() {
    let server = Server::start().await;
    server.publish(&format!("{BASE} s:main=1"));
    let mut envoy = server.delta("edge-1").await;
    envoy.sync_base().await;
    envoy.subscribe(type_url::SECRET, &["main"]).await;
    let response = envoy.recv().await;
    assert_eq!(delta_names(&response), ["main"]);
    envoy.ack(&response).await;

    server.publish(&format!("{BASE} s:main=2"));
    let response = envoy.recv().await;
    assert_eq!(short(&response.type_url), "secret");
    assert_eq!(delta_names(&response), ["main"]);
}

#[tokio::test]
async fn requests_before_the_first_snapshot_are_answered_once_it_arrives() {
    let server = Server::start().await;
    let mut envoy = server.sotw("edge-1").await;
    envoy.subscribe(type_url::CLUSTER, &[]).await;
    // The registry learning the node proves the request was processed before any snapshot.
    server
        .status_until(|statuses| {
            node_status(statuses, "edge-1").is_some_and(|s| s.types.contains_key("cluster"))
        })
        .await;

    let base = server.publish(BASE);

    let response = envoy.recv().await;
    assert_eq!(response.version_info, version(&base, type_url::CLUSTER));
}

#[tokio::test]
async fn new_snapshot_pushes_only_changed_types_in_make_before_break_order() {
    let server = Server::start().await;
    server.publish(BASE);
    let mut envoy = server.sotw("edge-1").await;
    envoy.sync_base().await;

    // Listeners and routes change; clusters and endpoints do not.
    let next = server.publish("c:a=1 c:b=1 e:a=1 e:b=1 l:main=2 r:main=2");
    let mut pushed = Vec::new();
    for _ in 0..2 {
        let response = envoy.recv().await;
        assert_eq!(response.version_info, version(&next, &response.type_url));
        envoy.ack(&response, &base_names(&response.type_url)).await;
        pushed.push(short(&response.type_url));
    }
    assert_eq!(pushed, ["listener", "route"]);

    // Nothing else was pending: the next push is for the next change.
    envoy.barrier().await;
    server.publish("c:a=1 c:b=1 e:a=3 e:b=1 l:main=2 r:main=2");
    assert_eq!(short(&envoy.recv().await.type_url), "endpoint");
}

#[tokio::test]
async fn a_changed_cluster_gets_its_unchanged_endpoints_again_to_finish_warming() {
    let server = Server::start().await;
    let base = server.publish(BASE);
    let mut envoy = server.sotw("edge-1").await;
    envoy.sync_base().await;

    // Cluster a's settings change, its endpoints do not: Envoy re-warms a and waits for EDS.
    let next = server.publish("c:a=2 c:b=1 e:a=1 e:b=1 l:main=1 r:main=1");
    let clusters = envoy.recv().await;
    assert_eq!(short(&clusters.type_url), "cluster");
    let endpoints = envoy.recv().await;
    assert_eq!(short(&endpoints.type_url), "endpoint");
    assert_eq!(names(&endpoints), ["a", "b"]);
    assert_eq!(
        endpoints.version_info,
        version(&base, type_url::ENDPOINT),
        "the same assignments, answered again"
    );
    envoy.ack(&clusters, &[]).await;
    envoy.ack(&endpoints, &["a", "b"]).await;
    let cluster_version = version(&next, type_url::CLUSTER);
    server
        .status_until(|statuses| {
            node_status(statuses, "edge-1").is_some_and(|s| {
                s.in_sync && s.types["cluster"].acked_version.as_deref() == Some(&cluster_version)
            })
        })
        .await;
}

#[tokio::test]
async fn routes_follow_a_changed_cluster_unanswered_but_wait_for_a_new_cluster_to_be_answered() {
    let server = Server::start().await;
    server.publish(BASE);
    let mut envoy = server.sotw("edge-1").await;
    envoy.sync_base().await;

    // Cluster a's settings and the route change: the client holds every cluster named, so
    // the routes need not wait for the CDS answer (only for the re-warming endpoints').
    let next = server.publish("c:a=2 c:b=1 e:a=1 e:b=1 l:main=1 r:main=2");
    let clusters = envoy.recv_clusters_acking_rewarmed_endpoints().await;
    let routes = envoy.recv().await;
    assert_eq!(short(&routes.type_url), "route", "CDS still unanswered");
    assert_eq!(routes.version_info, version(&next, type_url::ROUTE));
    envoy.ack(&clusters, &[]).await;
    envoy.ack(&routes, &["main"]).await;
    envoy.barrier().await;

    // A new cluster c and a route to it: the routes wait until the clusters are answered.
    server.publish("c:a=2 c:b=1 c:c=1 e:a=1 e:b=1 e:c=1 l:main=1 r:main=3");
    let clusters = envoy.recv().await;
    assert_eq!(names(&clusters), ["a", "b", "c"]);
    envoy.barrier().await;
    envoy.ack(&clusters, &[]).await;
    assert_eq!(short(&envoy.recv().await.type_url), "route");
}

#[tokio::test]
async fn after_a_nacked_cluster_push_routes_wait_for_the_next_one_to_be_answered() {
    let server = Server::start().await;
    server.publish(BASE);
    let mut envoy = server.sotw("edge-1").await;
    let initial = envoy.sync_base().await;

    // The client rejects a new cluster c: it holds a and b only.
    server.publish("c:a=1 c:b=1 c:c=1 e:a=1 e:b=1 l:main=1 r:main=1");
    let rejected = envoy.recv().await;
    assert_eq!(names(&rejected), ["a", "b", "c"]);
    envoy
        .nack(&rejected, &initial[0].version_info, "bad cluster c")
        .await;
    envoy.barrier().await;

    // The next push names c again, new to the client whatever was pushed before.
    server.publish("c:a=2 c:b=1 c:c=2 e:a=1 e:b=1 l:main=1 r:main=2");
    let clusters = envoy.recv_clusters_acking_rewarmed_endpoints().await;
    envoy.barrier().await;
    envoy.ack(&clusters, &[]).await;
    assert_eq!(short(&envoy.recv().await.type_url), "route");
}

#[tokio::test]
async fn request_with_stale_nonce_is_ignored() {
    let server = Server::start().await;
    server.publish(BASE);
    let mut envoy = server.sotw("edge-1").await;
    let initial = envoy.sync_base().await;
    let old_endpoint_nonce = initial[1].nonce.clone();

    server.publish("c:a=1 c:b=1 e:a=2 e:b=1 l:main=1 r:main=1");
    let endpoints = envoy.recv().await;
    envoy.ack(&endpoints, &["a", "b"]).await;
    // A request answering an older response would add a name to the subscription and
    // deserve an answer if it were not stale.
    envoy
        .send(DiscoveryRequest {
            version_info: initial[1].version_info.clone(),
            type_url: type_url::ENDPOINT.into(),
            response_nonce: old_endpoint_nonce,
            resource_names: vec!["a".into(), "b".into(), "new".into()],
            ..Default::default()
        })
        .await;
    envoy.barrier().await;

    server.publish("c:a=1 c:b=1 e:a=2 e:b=1 l:main=3 r:main=1");
    assert_eq!(short(&envoy.recv().await.type_url), "listener");
}

#[tokio::test]
async fn nack_is_recorded_and_the_rejected_version_is_not_resent() {
    let server = Server::start().await;
    let base = server.publish(BASE);
    let mut envoy = server.sotw("edge-1").await;
    envoy.sync_base().await;

    let rejected = server.publish("c:a=2 c:b=1 e:a=1 e:b=1 l:main=1 r:main=1");
    let clusters = envoy.recv().await;
    // The changed cluster's endpoints follow at once, for it to warm on.
    let endpoints = envoy.recv().await;
    assert_eq!(short(&endpoints.type_url), "endpoint");
    envoy.ack(&endpoints, &["a", "b"]).await;
    let base_clusters = version(&base, type_url::CLUSTER);
    envoy
        .nack(&clusters, &base_clusters, "cluster a: bad config")
        .await;

    let rejected_clusters = version(&rejected, type_url::CLUSTER);
    let statuses = server
        .status_until(|statuses| {
            node_status(statuses, "edge-1").is_some_and(|s| s.types["cluster"].nack.is_some())
        })
        .await;
    let status = node_status(&statuses, "edge-1").expect("node listed");
    let cluster = &status.types["cluster"];
    assert_eq!(cluster.nack.as_deref(), Some("cluster a: bad config"));
    assert_eq!(
        cluster.nack_version.as_deref(),
        Some(rejected_clusters.as_str())
    );
    assert_eq!(
        cluster.acked_version.as_deref(),
        Some(base_clusters.as_str())
    );
    assert!(!status.in_sync);

    // A snapshot that leaves the rejected clusters as they are does not re-send them.
    envoy.barrier().await;
    server.publish("c:a=2 c:b=1 e:a=1 e:b=1 l:main=2 r:main=1");
    let listeners = envoy.recv().await;
    assert_eq!(short(&listeners.type_url), "listener");
    envoy.ack(&listeners, &[]).await;

    // A newer cluster version is delivered, and its ACK clears the NACK.
    let fixed = server.publish("c:a=3 c:b=1 e:a=1 e:b=1 l:main=2 r:main=1");
    let clusters = envoy.recv().await;
    assert_eq!(clusters.version_info, version(&fixed, type_url::CLUSTER));
    let endpoints = envoy.recv().await;
    assert_eq!(short(&endpoints.type_url), "endpoint");
    envoy.ack(&clusters, &[]).await;
    envoy.ack(&endpoints, &["a", "b"]).await;
    let statuses = server
        .status_until(|statuses| node_status(statuses, "edge-1").is_some_and(|s| s.in_sync))
        .await;
    assert_eq!(
        node_status(&statuses, "edge-1").expect("node").types["cluster"].nack,
        None
    );
}

#[tokio::test]
async fn removed_cluster_leaves_in_a_final_cds_after_endpoints_listeners_and_routes() {
    let server = Server::start().await;
    server.publish(BASE);
    let mut envoy = server.sotw("edge-1").await;
    let initial = envoy.sync_base().await;
    let acked_endpoints = &initial[1];

    // Cluster b is replaced by c; the route moves over to c.
    let next = server.publish("c:a=1 c:c=1 e:a=1 e:c=1 l:main=1 r:main=2");

    let clusters = envoy.recv().await;
    assert_eq!(short(&clusters.type_url), "cluster");
    assert_eq!(
        names(&clusters),
        ["a", "b", "c"],
        "stale b kept while c is added"
    );
    assert_ne!(clusters.version_info, version(&next, type_url::CLUSTER));
    // As Envoy does, ask for the endpoints of the new cluster before ACKing CDS (it pauses
    // EDS while applying CDS and flushes the request when done).
    envoy.ack(acked_endpoints, &["a", "b", "c"]).await;
    envoy.ack(&clusters, &[]).await;

    let endpoints = envoy.recv().await;
    assert_eq!(short(&endpoints.type_url), "endpoint");
    assert_eq!(names(&endpoints), ["a", "b", "c"]);
    envoy.ack(&endpoints, &["a", "b", "c"]).await;

    let routes = envoy.recv().await;
    assert_eq!(short(&routes.type_url), "route");
    assert!(
        !server.nodes.statuses(Some(&Served::from(next.clone())))[0].in_sync,
        "not in sync while the stale cluster remains"
    );
    envoy.ack(&routes, &["main"]).await;

    let final_clusters = envoy.recv().await;
    assert_eq!(short(&final_clusters.type_url), "cluster");
    assert_eq!(names(&final_clusters), ["a", "c"]);
    assert_eq!(
        final_clusters.version_info,
        version(&next, type_url::CLUSTER)
    );
    // Envoy drops cluster b and with it the endpoints of b: a shrinking subscription needs no
    // answer.
    envoy.ack(&endpoints, &["a", "c"]).await;
    envoy.ack(&final_clusters, &[]).await;
    envoy.barrier().await;

    server
        .status_until(|statuses| node_status(statuses, "edge-1").is_some_and(|s| s.in_sync))
        .await;
    server.publish("c:a=1 c:c=1 e:a=1 e:c=1 l:main=2 r:main=2");
    assert_eq!(short(&envoy.recv().await.type_url), "listener");
}

#[tokio::test]
async fn changed_endpoint_subscription_is_answered_even_when_content_is_unchanged() {
    let server = Server::start().await;
    server.publish(BASE);
    let mut envoy = server.sotw("edge-1").await;
    envoy.subscribe(type_url::ENDPOINT, &["a"]).await;
    let first = envoy.recv().await;
    assert_eq!(names(&first), ["a"]);
    // Envoy warms a new cluster b and asks again; it needs an answer to finish warming.
    envoy.ack(&first, &["a", "b"]).await;
    let second = envoy.recv().await;
    assert_eq!(names(&second), ["a", "b"]);
    assert_eq!(second.version_info, first.version_info);
}

#[tokio::test]
async fn reconnect_announcing_the_current_version_gets_no_resend() {
    let server = Server::start().await;
    let base = server.publish(BASE);
    let mut envoy = server.sotw("edge-1").await;
    envoy
        .send(DiscoveryRequest {
            version_info: version(&base, type_url::CLUSTER),
            type_url: type_url::CLUSTER.into(),
            ..Default::default()
        })
        .await;
    envoy
        .send(DiscoveryRequest {
            version_info: "older".into(),
            type_url: type_url::LISTENER.into(),
            ..Default::default()
        })
        .await;
    assert_eq!(short(&envoy.recv().await.type_url), "listener");
}

#[tokio::test]
async fn unserved_type_gets_an_empty_answer() {
    let server = Server::start().await;
    server.publish(BASE);
    let mut envoy = server.sotw("edge-1").await;
    envoy.subscribe(UNSERVED, &["cert"]).await;
    let response = envoy.recv().await;
    assert_eq!(response.type_url, UNSERVED);
    assert!(response.resources.is_empty());
    // The stream keeps serving.
    envoy.subscribe(type_url::CLUSTER, &[]).await;
    assert_eq!(short(&envoy.recv().await.type_url), "cluster");
}

#[tokio::test]
async fn two_streams_both_receive_a_new_snapshot() {
    let server = Server::start().await;
    server.publish(BASE);
    let mut first = server.sotw("edge-1").await;
    let mut second = server.delta("edge-2").await;
    first.subscribe(type_url::CLUSTER, &[]).await;
    second.subscribe(type_url::CLUSTER, &[]).await;
    let response = first.recv().await;
    first.ack(&response, &[]).await;
    let response = second.recv().await;
    second.ack(&response).await;

    let next = server.publish("c:a=2 c:b=1 e:a=1 e:b=1 l:main=1 r:main=1");

    let sotw = first.recv().await;
    assert_eq!(sotw.version_info, version(&next, type_url::CLUSTER));
    let delta = second.recv().await;
    assert_eq!(delta_names(&delta), ["a"]);
    first.ack(&sotw, &[]).await;
    second.ack(&delta).await;
    let statuses = server
        .status_until(|statuses| statuses.len() == 2 && statuses.iter().all(|s| s.in_sync))
        .await;
    assert!(statuses.iter().all(|s| s.connected));
}

#[tokio::test]
async fn each_group_is_pushed_the_snapshot_for_its_size_and_no_other_group_is_woken() {
    let server = Server::start().await;
    let whole = Arc::new(server.publish(BASE));
    let mut edge = server.sotw_in("edge-1", "edge").await;
    let mut alone = server.sotw_in("alone-1", "alone").await;
    for envoy in [&mut edge, &mut alone] {
        envoy.subscribe(type_url::CLUSTER, &[]).await;
        let clusters = envoy.recv().await;
        assert_eq!(clusters.version_info, version(&whole, type_url::CLUSTER));
        envoy.ack(&clusters, &[]).await;
    }

    // The edge group now has two Envoys, whose snapshot differs (as local budgets would).
    let for_two = Arc::new(snapshot("c:a=2 c:b=1 e:a=1 e:b=1 l:main=1 r:main=1"));
    assert!(server.cache.set_served(Served::new(
        whole.clone(),
        BTreeMap::from([(2, for_two.clone())]),
        BTreeMap::from([("edge".to_string(), 2), ("alone".to_string(), 1)]),
    )));
    let pushed = edge.recv().await;
    assert_eq!(pushed.version_info, version(&for_two, type_url::CLUSTER));
    edge.ack(&pushed, &[]).await;
    alone.barrier().await;

    let statuses = server
        .status_until(|statuses| statuses.len() == 2 && statuses.iter().all(|s| s.in_sync))
        .await;
    let edge_status = node_status(&statuses, "edge-1").expect("edge-1 listed");
    assert_eq!(edge_status.group, "edge");
    assert_eq!(
        edge_status.types["cluster"].acked_version.as_deref(),
        Some(version(&for_two, type_url::CLUSTER).as_str()),
        "in sync with its group's snapshot, not the whole one"
    );
}

#[tokio::test]
async fn in_sync_needs_every_subscribed_type_acked_and_survives_unrelated_changes() {
    let server = Server::start().await;
    server.publish(BASE);
    let mut envoy = server.sotw("edge-1").await;
    envoy.subscribe(type_url::CLUSTER, &[]).await;
    envoy.subscribe(type_url::LISTENER, &[]).await;
    let clusters = envoy.recv().await;
    envoy.ack(&clusters, &[]).await;
    let listeners = envoy.recv().await;
    let statuses = server
        .status_until(|statuses| {
            node_status(statuses, "edge-1")
                .is_some_and(|s| s.types["cluster"].acked_version.is_some())
        })
        .await;
    assert!(!statuses[0].in_sync, "listeners are not ACKed yet");

    envoy.ack(&listeners, &[]).await;
    server
        .status_until(|statuses| node_status(statuses, "edge-1").is_some_and(|s| s.in_sync))
        .await;

    // Endpoints that change without touching what the node asked for keep it in sync.
    let mut endpoints = server.sotw("edge-2").await;
    endpoints.subscribe(type_url::ENDPOINT, &["a"]).await;
    let response = endpoints.recv().await;
    endpoints.ack(&response, &["a"]).await;
    server.publish("c:a=1 c:b=1 e:a=1 e:b=2 l:main=1 r:main=1");
    server
        .status_until(|statuses| {
            node_status(statuses, "edge-2").is_some_and(|s| s.in_sync)
                && node_status(statuses, "edge-1").is_some_and(|s| s.in_sync)
        })
        .await;

    drop(envoy);
    let statuses = server
        .status_until(|statuses| node_status(statuses, "edge-1").is_some_and(|s| !s.connected))
        .await;
    assert_eq!(
        node_status(&statuses, "edge-1")
            .expect("node kept")
            .types
            .len(),
        2
    );
}

#[tokio::test]
async fn delta_initial_subscribe_gets_every_resource_with_its_version() {
    let server = Server::start().await;
    let base = server.publish(BASE);
    let mut envoy = server.delta("edge-1").await;
    envoy.subscribe(type_url::CLUSTER, &[]).await;
    envoy.subscribe(type_url::ENDPOINT, &["a", "b"]).await;
    envoy.subscribe(type_url::LISTENER, &[]).await;
    envoy.subscribe(type_url::ROUTE, &["main"]).await;

    let mut types = Vec::new();
    for _ in 0..4 {
        let response = envoy.recv().await;
        let set = base.resources(&response.type_url);
        assert_eq!(response.system_version_info, set.version);
        assert_eq!(response.resources.len(), set.resources.len());
        for resource in &response.resources {
            assert_eq!(resource.version, set.resources[&resource.name].version);
        }
        envoy.ack(&response).await;
        types.push(short(&response.type_url));
    }
    assert_eq!(types, ["cluster", "endpoint", "listener", "route"]);
    server
        .status_until(|statuses| node_status(statuses, "edge-1").is_some_and(|s| s.in_sync))
        .await;
}

#[tokio::test]
async fn delta_update_sends_only_the_changed_resources() {
    let server = Server::start().await;
    server.publish(BASE);
    let mut envoy = server.delta("edge-1").await;
    envoy.subscribe(type_url::CLUSTER, &[]).await;
    envoy.subscribe(type_url::ENDPOINT, &["a", "b"]).await;
    for _ in 0..2 {
        let response = envoy.recv().await;
        envoy.ack(&response).await;
    }

    server.publish("c:a=1 c:b=2 e:a=1 e:b=1 l:main=1 r:main=1");
    let clusters = envoy.recv().await;
    assert_eq!(short(&clusters.type_url), "cluster");
    assert_eq!(delta_names(&clusters), ["b"]);
    assert!(clusters.removed_resources.is_empty());
    // Envoy re-warms the changed cluster b and waits for an EDS answer for it, unchanged or
    // not; a, untouched, is not sent.
    let rewarm = envoy.recv().await;
    assert_eq!(short(&rewarm.type_url), "endpoint");
    assert_eq!(delta_names(&rewarm), ["b"]);
    envoy.ack(&clusters).await;
    envoy.ack(&rewarm).await;

    server.publish("c:a=1 c:b=2 e:a=2 e:b=1 l:main=1 r:main=1");
    let endpoints = envoy.recv().await;
    assert_eq!(delta_names(&endpoints), ["a"]);
}

#[tokio::test]
async fn delta_routes_follow_a_changed_cluster_unanswered_but_wait_for_a_new_one() {
    let server = Server::start().await;
    server.publish(BASE);
    let mut envoy = server.delta("edge-1").await;
    envoy.sync_base().await;

    // Cluster a changes in place: its endpoints and the routes follow without waiting.
    server.publish("c:a=2 c:b=1 e:a=1 e:b=1 l:main=1 r:main=2");
    let mut pushed = Vec::new();
    for _ in 0..3 {
        pushed.push(envoy.recv().await);
    }
    let types: Vec<_> = pushed.iter().map(|r| short(&r.type_url)).collect();
    assert_eq!(
        types,
        ["cluster", "endpoint", "route"],
        "nothing answered yet"
    );
    for response in &pushed {
        envoy.ack(response).await;
    }
    envoy.barrier().await;

    // A new cluster c and a route to it: the routes wait for the clusters' answer.
    server.publish("c:a=2 c:b=1 c:c=1 e:a=1 e:b=1 e:c=1 l:main=1 r:main=3");
    let clusters = envoy.recv().await;
    assert_eq!(delta_names(&clusters), ["c"]);
    envoy.barrier().await;
    envoy.ack(&clusters).await;
    assert_eq!(short(&envoy.recv().await.type_url), "route");
}

#[tokio::test]
async fn delta_reconnect_with_known_versions_gets_only_what_changed() {
    let server = Server::start().await;
    let base = server.publish(BASE);
    let mut envoy = server.delta("edge-1").await;
    let mut held: std::collections::HashMap<String, String> = base
        .resources(type_url::CLUSTER)
        .resources
        .values()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    held.insert("gone".into(), "v0".into());
    envoy
        .send(DeltaDiscoveryRequest {
            type_url: type_url::CLUSTER.into(),
            initial_resource_versions: held,
            ..Default::default()
        })
        .await;
    let clusters = envoy.recv().await;
    assert!(clusters.resources.is_empty());
    assert_eq!(clusters.removed_resources, ["gone"]);
}

#[tokio::test]
async fn delta_removal_of_clusters_and_endpoints_comes_after_routes() {
    let server = Server::start().await;
    server.publish(BASE);
    let mut envoy = server.delta("edge-1").await;
    envoy.subscribe(type_url::CLUSTER, &[]).await;
    envoy.subscribe(type_url::ENDPOINT, &["a", "b"]).await;
    envoy.subscribe(type_url::LISTENER, &[]).await;
    envoy.subscribe(type_url::ROUTE, &["main"]).await;
    for _ in 0..4 {
        let response = envoy.recv().await;
        envoy.ack(&response).await;
    }

    server.publish("c:a=1 c:c=1 e:a=1 e:c=1 l:main=1 r:main=2");
    let clusters = envoy.recv().await;
    assert_eq!(delta_names(&clusters), ["c"]);
    assert!(clusters.removed_resources.is_empty(), "b stays for now");
    // Envoy subscribes to the new cluster's endpoints before it ACKs CDS.
    envoy.subscribe(type_url::ENDPOINT, &["c"]).await;
    envoy.ack(&clusters).await;
    let endpoints = envoy.recv().await;
    assert_eq!(delta_names(&endpoints), ["c"]);
    assert!(
        endpoints.removed_resources.is_empty(),
        "endpoints of b stay for now"
    );
    envoy.ack(&endpoints).await;
    let routes = envoy.recv().await;
    assert_eq!(short(&routes.type_url), "route");
    envoy.ack(&routes).await;

    let final_clusters = envoy.recv().await;
    assert_eq!(short(&final_clusters.type_url), "cluster");
    assert!(final_clusters.resources.is_empty());
    assert_eq!(final_clusters.removed_resources, ["b"]);
    envoy.ack(&final_clusters).await;
    let final_endpoints = envoy.recv().await;
    assert_eq!(final_endpoints.removed_resources, ["b"]);
    envoy.ack(&final_endpoints).await;
    server
        .status_until(|statuses| node_status(statuses, "edge-1").is_some_and(|s| s.in_sync))
        .await;
}

#[tokio::test]
async fn delta_nack_is_recorded_and_not_resent() {
    let server = Server::start().await;
    server.publish(BASE);
    let mut envoy = server.delta("edge-1").await;
    envoy.subscribe(type_url::CLUSTER, &[]).await;
    envoy.subscribe(type_url::LISTENER, &[]).await;
    for _ in 0..2 {
        let response = envoy.recv().await;
        envoy.ack(&response).await;
    }

    server.publish("c:a=2 c:b=1 e:a=1 e:b=1 l:main=1 r:main=1");
    let clusters = envoy.recv().await;
    envoy.nack(&clusters, "bad cluster").await;
    envoy.barrier().await;
    server.publish("c:a=2 c:b=1 e:a=1 e:b=1 l:main=2 r:main=1");
    let next = envoy.recv().await;
    assert_eq!(
        short(&next.type_url),
        "listener",
        "rejected cluster a not resent"
    );
    let statuses = server
        .status_until(|statuses| {
            node_status(statuses, "edge-1").is_some_and(|s| s.types["cluster"].nack.is_some())
        })
        .await;
    let cluster = &node_status(&statuses, "edge-1").expect("node").types["cluster"];
    assert_eq!(cluster.nack.as_deref(), Some("bad cluster"));
    assert!(!statuses[0].in_sync);
}

#[tokio::test]
async fn delta_nacked_routes_keep_the_stale_cluster_until_a_newer_snapshot_is_acked() {
    let server = Server::start().await;
    server.publish(BASE);
    let mut envoy = server.delta("edge-1").await;
    envoy.sync_base().await;

    server.publish("c:a=1 c:c=1 e:a=1 e:c=1 l:main=1 r:main=2");
    let clusters = envoy.recv().await;
    envoy.subscribe(type_url::ENDPOINT, &["c"]).await;
    envoy.ack(&clusters).await;
    let endpoints = envoy.recv().await;
    envoy.ack(&endpoints).await;
    let routes = envoy.recv().await;
    assert_eq!(short(&routes.type_url), "route");
    envoy.nack(&routes, "route main: unknown cluster").await;
    // The old routes may still send traffic to b: it is not removed.
    envoy.barrier().await;

    server.publish("c:a=1 c:c=1 e:a=1 e:c=1 l:main=1 r:main=3");
    let routes = envoy.recv().await;
    assert_eq!(short(&routes.type_url), "route");
    envoy.ack(&routes).await;
    let final_clusters = envoy.recv().await;
    assert_eq!(final_clusters.removed_resources, ["b"]);
}

#[tokio::test]
async fn delta_answer_with_a_stale_nonce_is_not_an_ack_but_keeps_its_subscription_change() {
    let server = Server::start().await;
    server.publish(BASE);
    let mut envoy = server.delta("edge-1").await;
    envoy.sync_base().await;

    server.publish("c:a=1 c:b=1 e:a=2 e:b=1 l:main=1 r:main=1");
    let older = envoy.recv().await;
    envoy.ack(&older).await;
    server.publish("c:a=1 c:b=1 e:a=3 e:b=1 l:main=1 r:main=1");
    let latest = envoy.recv().await;
    assert_eq!(short(&latest.type_url), "endpoint");

    // Answering the older EDS response again is stale, so `latest` stays unanswered and
    // nothing more is pushed; its subscription change still counts.
    envoy
        .send(DeltaDiscoveryRequest {
            type_url: type_url::ENDPOINT.into(),
            response_nonce: older.nonce.clone(),
            resource_names_subscribe: vec!["missing".into()],
            ..Default::default()
        })
        .await;
    envoy.barrier().await;

    envoy.ack(&latest).await;
    let endpoints = envoy.recv().await;
    assert!(endpoints.resources.is_empty());
    assert_eq!(
        endpoints.removed_resources,
        ["missing"],
        "absent resource announced"
    );
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_returns() {
    let mut server = Server::start().await;
    server.publish(BASE);
    let mut envoy = server.sotw("edge-1").await;
    envoy.subscribe(type_url::CLUSTER, &[]).await;
    envoy.recv().await;

    if let Some(stop) = server.stop.take() {
        let _ = stop.send(());
    }

    let served = within("server shutdown", &mut server.serving).await;
    assert!(
        matches!(served, Ok(())),
        "serve returns cleanly: {served:?}"
    );
    let end = within("stream end", envoy.responses.message()).await;
    assert!(matches!(end, Ok(None) | Err(_)), "stream ended: {end:?}");
}
