//! Client certificate verification on a TLS listener (mutual TLS) through a real Envoy: a
//! `required` listener serves only clients presenting a certificate its `client_ca_file`
//! issued, unexpired and not revoked by its `crl_file`; an `optional` one also serves clients
//! presenting none, but never one presenting a bad certificate; and a rewritten CA bundle or
//! CRL takes effect for new handshakes without a restart and without draining the listener.
//!
//! The gateway's own certificate comes from one throwaway CA ([`TestCa`], which the client
//! trusts); client certificates from others ([`ClientCa`]). A refusal is checked after the
//! same listener has served a good client, so it can only be the certificate's doing, and by
//! the TLS alert Envoy sends, so it can only be the reason the test names.

use rustls::AlertDescription;
use tollgate_conformance::{
    eventually, request, reserve_port, ClientCa, ClientCertificate, ControlPlane, Envoy,
    RunningControlPlane, RunningEnvoy, TestCa, TlsClient, TlsResponse, Upstream, UpstreamHandle,
};

/// A gateway with one TLS listener, `partners`, verifying client certificates against
/// `partners-ca.pem` (next to routes.yaml), and everything routed to one upstream.
struct MtlsGateway {
    port: u16,
    server_ca: TestCa,
    upstream: UpstreamHandle,
    cp: RunningControlPlane,
    envoy: RunningEnvoy,
}

impl MtlsGateway {
    /// Starts the gateway trusting `clients` for client certificates, with `extra`
    /// (`, field: value…`) in the listener's `tls:` and `files` next to routes.yaml.
    async fn start(clients: &ClientCa, extra: &str, files: &[(&str, Vec<u8>)]) -> MtlsGateway {
        let server_ca = TestCa::new();
        let served = server_ca.issue("gateway");
        let upstream = Upstream::new("app").spawn().await;
        let port = reserve_port();
        let mut cp = ControlPlane::new()
            .routes(format!(
                "version: 1
listeners:
  - name: partners
    address: 127.0.0.1:{port}
    tls: {{cert_file: gw.pem, key_file: gw.key, client_ca_file: partners-ca.pem{extra}}}
services:
  app:
    endpoints: [\"{}\"]
routes:
  - name: all
    match: {{prefix: /}}
    service: app
",
                upstream.endpoint()
            ))
            .file("gw.pem", served.cert_pem)
            .file("gw.key", served.key_pem)
            .file("partners-ca.pem", clients.cert_pem());
        for (name, contents) in files {
            cp = cp.file(name, contents.clone());
        }
        let cp = cp.start().await;
        let envoy = Envoy::new().control_plane(&cp).start().await;
        MtlsGateway {
            port,
            server_ca,
            upstream,
            cp,
            envoy,
        }
    }

    /// A client trusting the gateway's certificate and presenting none.
    fn client(&self) -> TlsClient {
        self.server_ca.client()
    }

    /// A client trusting the gateway's certificate and presenting `certificate`.
    fn client_with(&self, certificate: &ClientCertificate) -> TlsClient {
        self.client().client_certificate(certificate)
    }

    /// `GET path` with `client`, retried until the listener is up and answers from upstream.
    async fn served(&self, client: &TlsClient, path: &str) -> TlsResponse {
        eventually(&format!("GET {path} reaches the upstream"), async || {
            let answer = client.send(&request(self.port).path(path)).await?;
            answer.response.expect_upstream("app")?;
            Ok(answer)
        })
        .await
    }

    /// The alert the listener refuses `client`'s handshake with. Call it only once the
    /// listener is known to serve (after [`Self::served`]): it waits for the verdict.
    async fn refusal(&self, client: &TlsClient) -> AlertDescription {
        let before = self.upstream.requests();
        let alert = client
            .refusal_alert(self.port)
            .await
            .expect("the handshake is refused");
        assert_eq!(
            self.upstream.requests(),
            before,
            "nothing reached the upstream"
        );
        alert
    }

    /// Polls until `client` is no longer served, as after a rotation, then returns the alert
    /// it is refused with.
    async fn eventually_refused(&self, client: &TlsClient, what: &str) -> AlertDescription {
        eventually(what, async || {
            match client.send(&request(self.port).path("/refused")).await {
                Ok(answer) => anyhow::bail!("still served: {}", answer.response.status),
                Err(_) => Ok(()),
            }
        })
        .await;
        self.refusal(client).await
    }

    /// `require_client_certificate` of the listener's TLS context in Envoy's `/config_dump`,
    /// `None` when absent (false).
    async fn require_client_certificate(&self) -> Option<bool> {
        let dump = self.envoy.config_dump().await.expect("/config_dump");
        let listeners = dump["configs"]
            .as_array()
            .expect("configs")
            .iter()
            .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.ListenersConfigDump")
            .expect("a listeners dump");
        let listener = listeners["dynamic_listeners"]
            .as_array()
            .expect("dynamic listeners")
            .iter()
            .find(|l| l["name"] == "partners")
            .expect("the partners listener");
        let context = &listener["active_state"]["listener"]["filter_chains"][0]["transport_socket"]
            ["typed_config"];
        assert_eq!(
            context["common_tls_context"]["validation_context_sds_secret_config"]["name"],
            "client_ca/partners",
            "the CAs come over SDS: {context}"
        );
        context["require_client_certificate"].as_bool()
    }
}

/// A certificate such as a partner would hold: a DNS and a URI subject alternative name.
fn partner_certificate(ca: &ClientCa, name: &str) -> ClientCertificate {
    ca.certificate(name)
        .dns_san(&format!("{name}.partners.test"))
        .uri_san(&format!("spiffe://partners.test/{name}"))
        .issue()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_listener_serves_clients_presenting_a_certificate_its_ca_issued() {
    let partners = ClientCa::new("Partners CA");
    let gateway = MtlsGateway::start(&partners, "", &[]).await;

    let alice = partner_certificate(&partners, "alice");
    gateway.served(&gateway.client_with(&alice), "/alice").await;
    // Names are for routes to look at; verification asks only who issued it, and when.
    let plain = partners.certificate("no-sans").issue();
    gateway
        .served(&gateway.client_with(&plain), "/no-sans")
        .await;

    assert_eq!(gateway.upstream.paths(), ["/alice", "/no-sans"]);
    assert_eq!(gateway.require_client_certificate().await, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_listener_refuses_clients_without_a_valid_certificate() {
    let partners = ClientCa::new("Partners CA");
    let revoked = partner_certificate(&partners, "mallory");
    partners.revoke(&revoked);
    let crl = partners.crl_pem();
    let gateway = MtlsGateway::start(
        &partners,
        ", client_certificate: required, crl_file: partners.crl",
        &[("partners.crl", crl)],
    )
    .await;
    let alice = partner_certificate(&partners, "alice");
    gateway.served(&gateway.client_with(&alice), "/alice").await;

    let strangers = ClientCa::new("Strangers CA");
    let stranger = partner_certificate(&strangers, "alice");
    let lapsed = partners.certificate("lapsed").expired().issue();

    assert_eq!(
        gateway.refusal(&gateway.client()).await,
        AlertDescription::CertificateRequired,
        "no certificate"
    );
    assert_eq!(
        gateway.refusal(&gateway.client_with(&stranger)).await,
        AlertDescription::UnknownCA,
        "a certificate from another CA"
    );
    assert_eq!(
        gateway.refusal(&gateway.client_with(&lapsed)).await,
        AlertDescription::CertificateExpired,
        "an expired certificate"
    );
    assert_eq!(
        gateway.refusal(&gateway.client_with(&revoked)).await,
        AlertDescription::CertificateRevoked,
        "a revoked certificate"
    );
    assert_eq!(gateway.upstream.paths(), ["/alice"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_listener_serves_clients_without_a_certificate_but_not_with_a_bad_one() {
    let partners = ClientCa::new("Partners CA");
    let gateway = MtlsGateway::start(&partners, ", client_certificate: optional", &[]).await;

    gateway.served(&gateway.client(), "/anonymous").await;
    let alice = partner_certificate(&partners, "alice");
    gateway.served(&gateway.client_with(&alice), "/alice").await;
    let strangers = ClientCa::new("Strangers CA");
    let stranger = partner_certificate(&strangers, "alice");

    assert_eq!(
        gateway.refusal(&gateway.client_with(&stranger)).await,
        AlertDescription::UnknownCA,
        "a presented certificate must verify"
    );
    assert_eq!(gateway.upstream.paths(), ["/anonymous", "/alice"]);
    assert_eq!(gateway.require_client_certificate().await, Some(false));
}

/// Envoy's count of listener updates that replaced a listener (and drained its connections).
async fn listeners_modified(envoy: &RunningEnvoy) -> u64 {
    let stats = envoy
        .stats("listener_manager.listener_modified")
        .await
        .expect("/stats");
    stats
        .iter()
        .find(|(name, _)| name == "listener_manager.listener_modified")
        .map(|(_, value)| *value)
        .expect("listener_manager.listener_modified")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_client_ca_file_is_trusted_instead_without_a_restart_or_a_drain() {
    let old_ca = ClientCa::new("Partners CA 2025");
    let mut gateway = MtlsGateway::start(&old_ca, "", &[]).await;
    let old = partner_certificate(&old_ca, "alice");
    gateway.served(&gateway.client_with(&old), "/old").await;
    let envoy_pid = gateway.envoy.process().pid();
    let modified = listeners_modified(&gateway.envoy).await;

    let new_ca = ClientCa::new("Partners CA 2026");
    let new = partner_certificate(&new_ca, "alice");
    gateway.cp.write_file("partners-ca.pem", &new_ca.cert_pem());

    // The whole bundle is swapped at once: once the new CA is trusted, the old one is not.
    gateway.served(&gateway.client_with(&new), "/new").await;
    assert_eq!(
        gateway.refusal(&gateway.client_with(&old)).await,
        AlertDescription::UnknownCA
    );
    assert_eq!(gateway.envoy.process().pid(), envoy_pid, "the same Envoy");
    assert_eq!(
        listeners_modified(&gateway.envoy).await,
        modified,
        "the rotation reached Envoy as a secret, the listener untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_revoked_in_a_rewritten_crl_file_is_refused_without_a_restart() {
    let partners = ClientCa::new("Partners CA");
    let nothing_revoked = partners.crl_pem();
    let mut gateway = MtlsGateway::start(
        &partners,
        ", crl_file: partners.crl",
        &[("partners.crl", nothing_revoked)],
    )
    .await;
    let mallory = partner_certificate(&partners, "mallory");
    gateway
        .served(&gateway.client_with(&mallory), "/before")
        .await;
    let envoy_pid = gateway.envoy.process().pid();
    let modified = listeners_modified(&gateway.envoy).await;

    partners.revoke(&mallory);
    gateway.cp.write_file("partners.crl", &partners.crl_pem());

    let refused = gateway
        .eventually_refused(
            &gateway.client_with(&mallory),
            "the revoked certificate is refused",
        )
        .await;
    assert_eq!(refused, AlertDescription::CertificateRevoked);
    let alice = partner_certificate(&partners, "alice");
    gateway.served(&gateway.client_with(&alice), "/alice").await;
    assert_eq!(gateway.envoy.process().pid(), envoy_pid, "the same Envoy");
    assert_eq!(
        listeners_modified(&gateway.envoy).await,
        modified,
        "the new CRL reached Envoy as a secret, the listener untouched"
    );
}
