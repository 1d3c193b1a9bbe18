//! The control channel across hosts is authenticated (issue 21): `serve --tls-cert --tls-key
//! --client-ca` serves xDS over TLS and requires a client certificate from that CA, and
//! `bootstrap --xds-ca --xds-cert --xds-key` gives Envoy the matching side. A client without
//! a certificate, with one from another CA, or (with `--bind-node-id-to-certificate`) asking
//! under another node's id is refused; rotated certificate files are used for new connections,
//! and with `--xds-sds-file` Envoy re-reads its certificate and the CA it verifies the control
//! plane with when their files are replaced.

use std::time::Duration;

use rustls::AlertDescription;
use tollgate_conformance::routes_yaml::{added_route_arrives, app_then_added};
use tollgate_conformance::{
    eventually, get, reserve_port, ClientCa, ClientCertificate, ControlPlane, Envoy,
    RunningControlPlane, RunningEnvoy, TestCa, TlsClient, Upstream, XdsClientTls, XdsServerTls,
};
use tollgate_proto::envoy::config::core::v3::Node;
use tollgate_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use tollgate_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};

const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

/// Long enough for a loaded 2-core machine; an answer that never comes fails the test.
const XDS_PATIENCE: Duration = Duration::from_secs(30);

/// The CAs of one deployment: one for the control plane's certificate, one for its clients.
struct Pki {
    server_ca: TestCa,
    client_ca: ClientCa,
}

impl Pki {
    fn new() -> Self {
        Pki {
            server_ca: TestCa::new(),
            client_ca: ClientCa::new("Tollgate xDS clients"),
        }
    }

    fn server_tls(&self) -> XdsServerTls {
        let server = self.server_ca.issue("control plane");
        XdsServerTls {
            cert_pem: server.cert_pem,
            key_pem: server.key_pem,
            client_ca_pem: self.client_ca.cert_pem(),
        }
    }

    /// A client certificate naming node `node` as a DNS SAN.
    fn node_certificate(&self, node: &str) -> ClientCertificate {
        self.client_ca.certificate(node).dns_san(node).issue()
    }

    /// A client trusting the control plane's CA, offering only `h2`, as Envoy does.
    fn client(&self) -> TlsClient {
        self.server_ca.client().alpn(&["h2"])
    }
}

/// Opens an ADS stream to `cp` as node `node_id` through `client` and returns the first
/// answer to a CDS request, or the status the stream ended with.
async fn first_cds_response(
    cp: &RunningControlPlane,
    client: &TlsClient,
    node_id: &str,
) -> Result<DiscoveryResponse, tonic::Status> {
    let exchange = async {
        let channel = xds_channel(cp, client).await?;
        let request = DiscoveryRequest {
            node: node(node_id),
            type_url: CLUSTER_TYPE.to_owned(),
            ..Default::default()
        };
        // The request stream stays open, as Envoy's does, until the answer is read.
        let (requests, outbound) = tokio::sync::mpsc::channel(1);
        requests.send(request).await.expect("queue the request");
        let mut responses = AggregatedDiscoveryServiceClient::new(channel)
            .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(outbound))
            .await?
            .into_inner();
        let first = responses.message().await?;
        drop(requests);
        first.ok_or_else(|| tonic::Status::unknown("the stream ended without an answer"))
    };
    within_patience(exchange).await
}

/// A TLS connection from `client` to `cp`'s xDS port; a failed handshake as UNAVAILABLE.
async fn xds_channel(
    cp: &RunningControlPlane,
    client: &TlsClient,
) -> Result<tonic::transport::Channel, tonic::Status> {
    client
        .grpc_channel(cp.xds_addr().port())
        .await
        .map_err(|error| tonic::Status::unavailable(format!("{error:#}")))
}

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.to_owned(),
        cluster: "tollgate".to_owned(),
        ..Default::default()
    })
}

/// `exchange`, or DEADLINE_EXCEEDED when it takes longer than [`XDS_PATIENCE`].
async fn within_patience<T>(
    exchange: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(XDS_PATIENCE, exchange)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in time")))
}

/// Like [`first_cds_response`] on an incremental (Delta) stream: `Ok` once an answer comes.
async fn first_delta_cds_answer(
    cp: &RunningControlPlane,
    client: &TlsClient,
    node_id: &str,
) -> Result<(), tonic::Status> {
    let exchange = async {
        let channel = xds_channel(cp, client).await?;
        let request = DeltaDiscoveryRequest {
            node: node(node_id),
            type_url: CLUSTER_TYPE.to_owned(),
            ..Default::default()
        };
        let (requests, outbound) = tokio::sync::mpsc::channel(1);
        requests.send(request).await.expect("queue the request");
        let mut responses = AggregatedDiscoveryServiceClient::new(channel)
            .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(outbound))
            .await?
            .into_inner();
        let first = responses.message().await?;
        drop(requests);
        first
            .map(|_| ())
            .ok_or_else(|| tonic::Status::unknown("the stream ended without an answer"))
    };
    within_patience(exchange).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_with_the_right_certificate_gets_its_configuration_over_mtls() {
    let pki = Pki::new();
    let app = Upstream::new("app").spawn().await;
    let port = reserve_port();
    let cp = ControlPlane::new()
        .routes(format!(
            "version: 1
listeners:
  - {{name: public, address: \"127.0.0.1:{port}\"}}
services:
  app: {{endpoints: [\"{app}\"]}}
routes:
  - {{name: all, match: {{prefix: /}}, service: app}}
",
            app = app.endpoint()
        ))
        .xds_tls(pki.server_tls())
        .bind_node_id_to_certificate()
        .start()
        .await;
    let envoy_cert = pki.node_certificate("edge-1");
    let envoy = Envoy::new()
        .node_id("edge-1")
        .xds_tls(XdsClientTls {
            ca_pem: pki.server_ca.cert_pem().to_vec(),
            cert_pem: envoy_cert.cert_pem,
            key_pem: envoy_cert.key_pem,
            server_name: Some(tollgate_conformance::tls::SERVER_NAME.to_owned()),
            rotatable: false,
        })
        .control_plane(&cp)
        .start()
        .await;
    assert!(
        envoy.bootstrap().contains("UpstreamTlsContext"),
        "the bootstrap speaks TLS to the control plane"
    );
    eventually(
        "the gateway serves the route it got over mTLS",
        async || {
            get(port, "/").await?.expect_upstream("app")?;
            Ok(())
        },
    )
    .await;
    eventually("the node is in /status", async || {
        let node = cp.node_status("edge-1").await?;
        anyhow::ensure!(node["connected"] == true, "{node}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_or_with_one_from_another_ca_is_refused() {
    let pki = Pki::new();
    let cp = ControlPlane::new().xds_tls(pki.server_tls()).start().await;
    let port = cp.xds_addr().port();

    // The control: the CA's own client gets an answer.
    let trusted = pki
        .client()
        .client_certificate(&pki.node_certificate("edge-1"));
    first_cds_response(&cp, &trusted, "edge-1")
        .await
        .expect("a client with a certificate from the client CA is served");

    let anonymous = pki.client();
    assert_eq!(
        anonymous.refusal_alert(port).await.expect("refused"),
        AlertDescription::CertificateRequired
    );
    assert!(first_cds_response(&cp, &anonymous, "edge-1").await.is_err());

    let stranger_ca = ClientCa::new("Another CA");
    let stranger = pki
        .client()
        .client_certificate(&stranger_ca.certificate("edge-1").dns_san("edge-1").issue());
    assert_eq!(
        stranger.refusal_alert(port).await.expect("refused"),
        AlertDescription::UnknownCA
    );
    assert!(first_cds_response(&cp, &stranger, "edge-1").await.is_err());
    let status = cp.status().await.expect("/status");
    assert_eq!(
        status["nodes"].as_array().map(Vec::len),
        Some(1),
        "only the trusted client is a node: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_may_only_use_the_id_its_certificate_names() {
    let pki = Pki::new();
    // One cluster, so that a Delta stream has something to answer with.
    let cp = ControlPlane::new()
        .routes(
            "version: 1\nlisteners: []\nservices: {app: {endpoints: [\"127.0.0.1:9\"]}}\nroutes: []\n",
        )
        .xds_tls(pki.server_tls())
        .bind_node_id_to_certificate()
        .start()
        .await;
    let edge_1 = pki
        .client()
        .client_certificate(&pki.node_certificate("edge-1"));

    let refused = first_cds_response(&cp, &edge_1, "edge-2")
        .await
        .expect_err("edge-1's certificate cannot ask as edge-2");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    first_cds_response(&cp, &edge_1, "edge-1")
        .await
        .expect("edge-1's certificate asks as edge-1");
    // The same rule on incremental (Delta) streams.
    let refused = first_delta_cds_answer(&cp, &edge_1, "edge-2")
        .await
        .expect_err("edge-1's certificate cannot ask as edge-2 over Delta");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    first_delta_cds_answer(&cp, &edge_1, "edge-1")
        .await
        .expect("edge-1's certificate asks as edge-1 over Delta");

    // A SPIFFE ID names the node in its last segment.
    let spiffe = pki.client().client_certificate(
        &pki.client_ca
            .certificate("edge-3")
            .uri_san("spiffe://tollgate.test/envoy/edge-3")
            .issue(),
    );
    first_cds_response(&cp, &spiffe, "edge-3")
        .await
        .expect("a SPIFFE ID ending in the node id names it");

    let status = cp.status().await.expect("/status");
    let ids: Vec<&str> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|node| node["id"].as_str())
        .collect();
    assert!(
        !ids.contains(&"edge-2"),
        "a refused node is in /status: {status}"
    );
    assert!(ids.contains(&"edge-1"), "{status}");
    let logs = cp.process().stdout() + &cp.process().stderr();
    assert!(
        logs.contains("node id is not one the client certificate names") && logs.contains("edge-2"),
        "the refusal is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificate_files_are_used_for_new_connections() {
    let pki = Pki::new();
    let mut cp = ControlPlane::new().xds_tls(pki.server_tls()).start().await;
    let port = cp.xds_addr().port();
    let next_ca = ClientCa::new("Next xDS client CA");
    let next_client = pki
        .client()
        .client_certificate(&next_ca.certificate("edge-1").dns_san("edge-1").issue());
    assert_eq!(
        next_client.refusal_alert(port).await.expect("refused"),
        AlertDescription::UnknownCA,
        "the next CA is not trusted yet"
    );

    // The client CA rotates, and the server certificate with it, to one from a new server CA.
    let next_server_ca = TestCa::new();
    let server = next_server_ca.issue("control plane, rotated");
    cp.write_file(XdsServerTls::CLIENT_CA_FILE, &next_ca.cert_pem());
    cp.write_file(XdsServerTls::KEY_FILE, &server.key_pem);
    cp.write_file(XdsServerTls::CERT_FILE, &server.cert_pem);

    let next_client = next_server_ca
        .client()
        .alpn(&["h2"])
        .client_certificate(&next_ca.certificate("edge-1").dns_san("edge-1").issue());
    eventually("a client of the new CAs is served", async || {
        first_cds_response(&cp, &next_client, "edge-1").await?;
        Ok(())
    })
    .await;
    let old_client = pki
        .client()
        .client_certificate(&pki.node_certificate("edge-1"));
    assert!(
        old_client.handshake(port).await.is_err(),
        "the old server CA no longer verifies the control plane"
    );
    let old_cert_new_trust = next_server_ca
        .client()
        .alpn(&["h2"])
        .client_certificate(&pki.node_certificate("edge-1"));
    assert_eq!(
        old_cert_new_trust
            .refusal_alert(port)
            .await
            .expect("refused"),
        AlertDescription::UnknownCA,
        "the old client CA is no longer trusted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_reconnects_with_its_rotated_client_certificate() {
    let pki = Pki::new();
    let mut cp = ControlPlane::new().xds_tls(pki.server_tls()).start().await;
    let first = pki.node_certificate("edge-rotating");
    let envoy = Envoy::new()
        .node_id("edge-rotating")
        .xds_tls(XdsClientTls {
            ca_pem: pki.server_ca.cert_pem().to_vec(),
            cert_pem: first.cert_pem,
            key_pem: first.key_pem,
            server_name: None,
            rotatable: true,
        })
        .control_plane(&cp)
        .start()
        .await;
    assert!(
        envoy.bootstrap().contains("path_config_source"),
        "{}",
        envoy.bootstrap()
    );

    // Both sides rotate to a new client CA: the control plane trusts only it from now on,
    // and Envoy's certificate files are replaced by one it issued.
    let next_ca = ClientCa::new("Next xDS client CA");
    let next = next_ca
        .certificate("edge-rotating")
        .dns_san("edge-rotating")
        .issue();
    cp.write_file(XdsServerTls::CLIENT_CA_FILE, &next_ca.cert_pem());
    envoy.write_file(XdsClientTls::KEY_FILE, &next.key_pem);
    envoy.write_file(XdsClientTls::CERT_FILE, &next.cert_pem);
    let old_client = pki
        .client()
        .client_certificate(&pki.node_certificate("edge-rotating"));
    eventually("the control plane trusts only the new CA", async || {
        let alert = old_client.refusal_alert(cp.xds_addr().port()).await?;
        anyhow::ensure!(alert == AlertDescription::UnknownCA, "{alert:?}");
        Ok(())
    })
    .await;

    // A restart closes Envoy's stream: it reconnects, which only the new certificate can.
    cp.restart().await;
    eventually("Envoy reconnects with its new certificate", async || {
        let node = cp.node_status("edge-rotating").await?;
        anyhow::ensure!(node["connected"] == true, "{node}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_certificate_files_fail_the_start_with_status_64() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = |name: &str| dir.path().join(name);
    std::fs::write(
        path("routes.yaml"),
        "version: 1\nlisteners: []\nservices: {}\nroutes: []\n",
    )
    .expect("write routes.yaml");
    std::fs::write(path("cert.pem"), "not a certificate").expect("write cert.pem");
    std::fs::write(path("key.pem"), "not a key").expect("write key.pem");
    let run = tokio::process::Command::new(tollgate_conformance::binaries::tollgate(
        "tollgate-control-plane",
    ))
    .arg("serve")
    .arg("--routes")
    .arg(path("routes.yaml"))
    .args(["--xds-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
    .arg("--tls-cert")
    .arg(path("cert.pem"))
    .arg("--tls-key")
    .arg(path("key.pem"))
    .kill_on_drop(true)
    .output();
    let output = tokio::time::timeout(XDS_PATIENCE, run)
        .await
        .expect("the control plane exits rather than serve")
        .expect("run tollgate-control-plane");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("no PEM certificate in"), "{stderr}");
}

/// Envoy's counter of one stat, 0 while it does not exist yet.
async fn envoy_counter(envoy: &RunningEnvoy, name: &str) -> anyhow::Result<u64> {
    let stats = envoy
        .stats(&format!("^{}$", name.replace('.', "\\.")))
        .await?;
    Ok(stats
        .into_iter()
        .find(|(stat, _)| stat == name)
        .map_or(0, |(_, value)| value))
}

/// How often the xDS cluster's TLS context was rebuilt from an SDS secret: once per secret at
/// start, then once each time Envoy re-reads a file a secret names.
const XDS_TLS_UPDATES: &str =
    "cluster.tollgate_xds.client_ssl_socket_factory.ssl_context_update_by_sds";

/// Handshakes in which Envoy refused the control plane's certificate (an untrusted issuer).
const XDS_VERIFY_FAILURES: &str = "cluster.tollgate_xds.ssl.fail_verify_error";

/// Replaces Envoy's CA file with `bundle` (by rename, as a certificate manager does) and
/// waits until Envoy has rebuilt its TLS context from it.
async fn envoy_trusts(envoy: &RunningEnvoy, bundle: &[u8], what: &str) {
    let before = envoy_counter(envoy, XDS_TLS_UPDATES)
        .await
        .expect("Envoy's stats");
    envoy.write_file(XdsClientTls::CA_FILE, bundle);
    eventually(what, async || {
        let now = envoy_counter(envoy, XDS_TLS_UPDATES).await?;
        anyhow::ensure!(now > before, "{XDS_TLS_UPDATES} still {now}");
        Ok(())
    })
    .await;
}

/// Moves `cp` to a serving certificate from `ca` and restarts it, which closes Envoy's stream:
/// Envoy's next connection meets the new certificate.
async fn serve_a_certificate_from(cp: &mut RunningControlPlane, ca: &TestCa, name: &str) {
    let server = ca.issue(name);
    cp.write_file(XdsServerTls::KEY_FILE, &server.key_pem);
    cp.write_file(XdsServerTls::CERT_FILE, &server.cert_pem);
    cp.restart().await;
}

/// Waits until Envoy has refused the control plane's certificate (more verify failures than
/// `before`), and checks it holds no stream to it.
async fn envoy_refuses_the_control_plane(
    envoy: &RunningEnvoy,
    cp: &RunningControlPlane,
    before: u64,
    what: &str,
) {
    eventually(what, async || {
        let now = envoy_counter(envoy, XDS_VERIFY_FAILURES).await?;
        anyhow::ensure!(now > before, "{XDS_VERIFY_FAILURES} still {now}");
        Ok(())
    })
    .await;
    assert!(
        !cp.holds_stream_of(envoy.node_id()).await,
        "{what}: yet the node is connected: {:?}",
        cp.status().await
    );
}

/// An Envoy of node `node` on `cp` over mutual TLS, trusting `ca`, with `--xds-sds-file` and
/// the control plane's name required.
async fn rotatable_envoy(pki: &Pki, cp: &RunningControlPlane, node: &str) -> RunningEnvoy {
    let certificate = pki.node_certificate(node);
    let envoy = Envoy::new()
        .node_id(node)
        .xds_tls(XdsClientTls {
            ca_pem: pki.server_ca.cert_pem().to_vec(),
            cert_pem: certificate.cert_pem,
            key_pem: certificate.key_pem,
            server_name: Some(tollgate_conformance::tls::SERVER_NAME.to_owned()),
            rotatable: true,
        })
        .control_plane(cp)
        .start()
        .await;
    let bootstrap = envoy.bootstrap();
    assert!(
        bootstrap.contains("validation_context_sds_secret_config")
            && !bootstrap.contains("trusted_ca"),
        "the CA comes through SDS: {bootstrap}"
    );
    envoy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_follows_a_rotated_control_plane_ca_without_a_restart() {
    let pki = Pki::new();
    let (app, other) = (
        Upstream::new("app").spawn().await,
        Upstream::new("other").spawn().await,
    );
    let port = reserve_port();
    let mut cp = ControlPlane::new()
        .routes(app_then_added(port, &app, &other, false))
        .xds_tls(pki.server_tls())
        .start()
        .await;
    let envoy = rotatable_envoy(&pki, &cp, "edge-ca").await;
    let envoy_pid = envoy.process().pid();

    // The control plane's CA rotates from the first to the next: Envoy trusts both first,
    // then the control plane moves to a certificate from the next.
    let next_ca = TestCa::new();
    envoy_trusts(
        &envoy,
        &[pki.server_ca.cert_pem(), next_ca.cert_pem()].concat(),
        "Envoy re-reads its CA file, now both CAs",
    )
    .await;
    serve_a_certificate_from(&mut cp, &next_ca, "control plane, next CA").await;
    eventually(
        "Envoy reconnects to the next CA's certificate",
        async || {
            anyhow::ensure!(
                cp.holds_stream_of("edge-ca").await,
                "{:?}",
                cp.status().await
            );
            Ok(())
        },
    )
    .await;
    cp.write_by_rename(&app_then_added(port, &app, &other, true));
    added_route_arrives(port, "an edit reaches Envoy on the new stream").await;

    // The old CA is dropped from the bundle: the next CA alone keeps verifying the control plane.
    envoy_trusts(
        &envoy,
        next_ca.cert_pem(),
        "Envoy re-reads its CA file, now the next CA only",
    )
    .await;
    cp.restart().await;
    eventually("Envoy reconnects trusting the next CA alone", async || {
        anyhow::ensure!(
            cp.holds_stream_of("edge-ca").await,
            "{:?}",
            cp.status().await
        );
        Ok(())
    })
    .await;
    cp.write_by_rename(&app_then_added(port, &app, &other, false));
    eventually("the edit removing /added/ reaches Envoy", async || {
        get(port, "/added/x").await?.expect_upstream("app")?;
        Ok(())
    })
    .await;

    // And the old CA is no longer trusted: a control plane back on a certificate from it is
    // refused, which it would not be had Envoy kept the bundle (or the first CA) it started with.
    let failures = envoy_counter(&envoy, XDS_VERIFY_FAILURES)
        .await
        .expect("Envoy's stats");
    serve_a_certificate_from(&mut cp, &pki.server_ca, "control plane, old CA again").await;
    envoy_refuses_the_control_plane(
        &envoy,
        &cp,
        failures,
        "Envoy refuses the old CA's certificate",
    )
    .await;
    assert_eq!(
        envoy.process().pid(),
        envoy_pid,
        "the same Envoy throughout"
    );
    get(port, "/")
        .await
        .expect("Envoy keeps serving its last configuration")
        .expect_upstream("app")
        .expect("the last route table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_refuses_a_control_plane_ca_it_does_not_trust_until_its_ca_file_names_it() {
    let pki = Pki::new();
    let (app, other) = (
        Upstream::new("app").spawn().await,
        Upstream::new("other").spawn().await,
    );
    let port = reserve_port();
    let mut cp = ControlPlane::new()
        .routes(app_then_added(port, &app, &other, false))
        .xds_tls(pki.server_tls())
        .start()
        .await;
    let envoy = rotatable_envoy(&pki, &cp, "edge-unknown-ca").await;

    // The control plane moves to a CA Envoy was not told of: Envoy refuses it.
    let failures = envoy_counter(&envoy, XDS_VERIFY_FAILURES)
        .await
        .expect("Envoy's stats");
    let next_ca = TestCa::new();
    serve_a_certificate_from(&mut cp, &next_ca, "control plane, unannounced CA").await;
    envoy_refuses_the_control_plane(
        &envoy,
        &cp,
        failures,
        "Envoy refuses a certificate from a CA its file does not name",
    )
    .await;
    cp.write_by_rename(&app_then_added(port, &app, &other, true));

    // Its CA file then names the new CA: Envoy's next attempt (every 2 s at most) succeeds,
    // and the edit made meanwhile arrives.
    envoy.write_file(XdsClientTls::CA_FILE, next_ca.cert_pem());
    eventually(
        "Envoy connects once its CA file names the new CA",
        async || {
            anyhow::ensure!(
                cp.holds_stream_of("edge-unknown-ca").await,
                "{:?}",
                cp.status().await
            );
            Ok(())
        },
    )
    .await;
    added_route_arrives(port, "the edit made while Envoy was refused reaches it").await;
}
