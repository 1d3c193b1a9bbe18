//! The Envoy bootstrap that points an Envoy at this control plane over ADS.
//!
//! Only the xDS cluster and the admin interface are static; everything else arrives over one
//! ADS stream, which is what lets the server order updates (xDS protocol, "Aggregated
//! Discovery Service"). The xDS cluster lists every control-plane replica: Envoy keeps one
//! stream to one of them, notices within a few seconds when it dies or is cut off (HTTP/2
//! keepalive), and reopens the stream to another, serving its last config meanwhile.

use std::fmt::Write as _;
use std::path::PathBuf;

/// Which ADS variant Envoy should speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdsVariant {
    /// State of the World: every response carries the whole set of a type.
    Sotw,
    /// Incremental: only changed and removed resources are sent.
    Delta,
}

/// What a bootstrap needs to know.
#[derive(Clone, Debug)]
pub struct BootstrapOptions {
    pub node_id: String,
    pub cluster: String,
    /// Every control-plane replica's ADS address, `host:port`; a DNS name is resolved by
    /// Envoy. At least one.
    pub xds_addrs: Vec<String>,
    /// Envoy's admin interface, `host:port`. Loopback by default: it can stop Envoy.
    pub admin_addr: String,
    pub variant: XdsVariant,
    /// Speak to the control plane over mutual TLS; plaintext when `None`.
    pub tls: Option<XdsClientTls>,
    /// What Envoy may use of its host before the overload manager acts.
    pub overload: OverloadLimits,
}

/// The overload manager's limits for one Envoy (Envoy's edge-proxy guide: a heap limit with
/// actions, and a global cap on client connections).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverloadLimits {
    /// Envoy's heap, in MiB: at 95% of it Envoy returns freed memory to the system, at 98%
    /// it answers new requests 503 instead of taking them on. Set it below the memory the
    /// host or container gives Envoy, so that Envoy sheds load before it is killed.
    pub max_heap_mb: u64,
    /// Client connections on all listeners together; each listener has its own
    /// `limits.max_connections` below this.
    pub max_connections: u64,
}

impl Default for OverloadLimits {
    fn default() -> Self {
        OverloadLimits {
            max_heap_mb: 1024,
            max_connections: 50_000,
        }
    }
}

/// Envoy's side of an mTLS xDS connection. The paths are on Envoy's host, read by Envoy.
#[derive(Clone, Debug)]
pub struct XdsClientTls {
    /// The CAs the control plane's certificate must chain to.
    pub ca_file: PathBuf,
    /// Envoy's client certificate and its key.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, the DNS name the control plane's certificate must carry, also sent as SNI.
    pub server_name: Option<String>,
    /// When set, Envoy takes its certificate and key through this SDS file (see
    /// [`client_certificate_sds`]), and the CA and server name it verifies the control plane
    /// with through a sibling one ([`server_validation_sds_file`],
    /// [`server_validation_sds`]), and re-reads the files they name when they are replaced;
    /// otherwise it reads them once, at start.
    pub sds_file: Option<PathBuf>,
}

/// The name of Envoy's xDS client certificate in the SDS file.
const CLIENT_CERTIFICATE_SECRET: &str = "tollgate_xds_client";

/// The name of the validation context (CA, server name) Envoy checks the control plane with,
/// in the second SDS file.
const SERVER_VALIDATION_SECRET: &str = "tollgate_xds_server_validation";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("invalid address \"{0}\": expected HOST:PORT")]
    Address(String),
    #[error("invalid node id \"{0}\": use letters, digits, '.', '_' and '-'")]
    NodeId(String),
    #[error("no control-plane address: give --xds-addr")]
    NoControlPlane,
    #[error("invalid path \"{0}\": not UTF-8")]
    Path(String),
    #[error("invalid server name \"{0}\": expected a DNS name")]
    ServerName(String),
}

/// A path as a YAML double-quoted scalar (a JSON string is one).
fn quoted(path: &std::path::Path) -> Result<String, BootstrapError> {
    path.to_str()
        .map(|text| serde_json::Value::from(text).to_string())
        .ok_or_else(|| BootstrapError::Path(path.display().to_string()))
}

/// The SDS file that gives Envoy its xDS client certificate: one secret naming the
/// certificate and key files. Envoy watches the files a file-based SDS secret names and
/// re-reads them when they are replaced, which a certificate in a static `tls_certificates`
/// never is (Envoy's "Certificate Management"): a rotated client certificate is then used
/// for the next connection to the control plane, without a restart.
pub fn client_certificate_sds(tls: &XdsClientTls) -> Result<String, BootstrapError> {
    let (cert, key) = (quoted(&tls.cert_file)?, quoted(&tls.key_file)?);
    Ok(format!(
        r#"# Envoy's client certificate for the control plane: made by `tollgate-control-plane bootstrap`.
resources:
  - "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
    name: {CLIENT_CERTIFICATE_SECRET}
    tls_certificate:
      certificate_chain: {{filename: {cert}}}
      private_key: {{filename: {key}}}
"#
    ))
}

/// Where the SDS file of the validation context goes, beside the client certificate's
/// `sds_file`: `edge-1-sds.yaml` gives `edge-1-sds-ca.yaml`. A file of its own because a
/// path-based SDS subscription holds exactly one secret, named as the subscription asks
/// (Envoy's `SdsApi::validateUpdateSize` refuses "Unexpected SDS secrets length" otherwise).
pub fn server_validation_sds_file(sds_file: &std::path::Path) -> PathBuf {
    let stem = sds_file
        .file_stem()
        .map_or_else(|| "sds".into(), |stem| stem.to_string_lossy().into_owned());
    let name = match sds_file.extension() {
        Some(extension) => format!("{stem}-ca.{}", extension.to_string_lossy()),
        None => format!("{stem}-ca"),
    };
    sds_file.with_file_name(name)
}

/// The SDS file of what Envoy verifies the control plane with: the CA bundle (a file Envoy
/// watches and re-reads when it is replaced, as it does a certificate's) and, with a server
/// name, the DNS name the control plane's certificate must carry. A rotated control-plane CA
/// is then trusted from the next connection on, without a restart: put the new CA beside the
/// old in the bundle, move the control planes to certificates from it, then drop the old.
pub fn server_validation_sds(tls: &XdsClientTls) -> Result<String, BootstrapError> {
    let ca = quoted(&tls.ca_file)?;
    let san = match server_name(tls)? {
        Some(name) => format!(
            "\n      match_typed_subject_alt_names:\n        - {{san_type: DNS, matcher: {{exact: {name}}}}}"
        ),
        None => String::new(),
    };
    Ok(format!(
        r#"# What Envoy verifies the control plane with: made by `tollgate-control-plane bootstrap`.
resources:
  - "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
    name: {SERVER_VALIDATION_SECRET}
    validation_context:
      trusted_ca: {{filename: {ca}}}{san}
"#
    ))
}

/// Every SDS file the bootstrap names, with its contents: none without `sds_file`, else the
/// client certificate's and the validation context's.
pub fn sds_files(tls: &XdsClientTls) -> Result<Vec<(PathBuf, String)>, BootstrapError> {
    match &tls.sds_file {
        None => Ok(Vec::new()),
        Some(sds_file) => Ok(vec![
            (sds_file.clone(), client_certificate_sds(tls)?),
            (
                server_validation_sds_file(sds_file),
                server_validation_sds(tls)?,
            ),
        ]),
    }
}

/// `tls.server_name`, checked to be a DNS name.
fn server_name(tls: &XdsClientTls) -> Result<Option<&str>, BootstrapError> {
    match &tls.server_name {
        Some(name) if !is_dns_name(name) => Err(BootstrapError::ServerName(name.clone())),
        name => Ok(name.as_deref()),
    }
}

/// Renders the bootstrap YAML.
pub fn render(options: &BootstrapOptions) -> Result<String, BootstrapError> {
    let control_planes = options
        .xds_addrs
        .iter()
        .map(|addr| split_host_port(addr))
        .collect::<Result<Vec<_>, _>>()?;
    if control_planes.is_empty() {
        return Err(BootstrapError::NoControlPlane);
    }
    let (admin_host, admin_port) = split_host_port(&options.admin_addr)?;
    // Node ids become stat prefixes and /status keys: the routes.yaml name alphabet.
    for id in [&options.node_id, &options.cluster] {
        if !tollgate_routes::is_valid_name(id) {
            return Err(BootstrapError::NodeId(id.clone()));
        }
    }
    let discovery = if control_planes
        .iter()
        .all(|(host, _)| host.parse::<std::net::IpAddr>().is_ok())
    {
        "STATIC"
    } else {
        "STRICT_DNS"
    };
    let mut endpoints = String::new();
    for (host, port) in &control_planes {
        let _ = write!(
            endpoints,
            "\n              - endpoint:\n                  address:\n                    socket_address: {{address: \"{host}\", port_value: {port}}}"
        );
    }
    let transport_socket = match &options.tls {
        Some(tls) => tls_transport_socket(tls)?,
        None => String::new(),
    };
    let api_type = match options.variant {
        XdsVariant::Sotw => "GRPC",
        XdsVariant::Delta => "DELTA_GRPC",
    };
    let mut out = String::new();
    let _ = write!(
        out,
        r#"# Envoy bootstrap for Tollgate: made by `tollgate-control-plane bootstrap`.
node:
  id: {node_id}
  cluster: {cluster}
admin:
  address:
    socket_address: {{address: "{admin_host}", port_value: {admin_port}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
      # A lost stream is reopened after 0.25 s, then at most every 2 s (Envoy's default
      # backoff grows to 30 s), each time to the next replica.
      - envoy_grpc:
          cluster_name: tollgate_xds
          retry_policy: {{retry_back_off: {{base_interval: 0.25s, max_interval: 2s}}}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
bootstrap_extensions:
  # Internal listeners (in-process, no socket): the response cache fills itself through one,
  # so that its requests get the routes' rewrites and header edits (envoyproxy/envoy#39135).
  - name: envoy.bootstrap.internal_listener
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener
# Stats are read from the admin port (/stats/prometheus), which merges them when asked; no
# periodic flush then runs on Envoy's main thread, where with per-route stats on a large
# route table it delayed config updates by tens of milliseconds.
stats_flush_on_admin: true
layered_runtime:
  layers:
    - name: tollgate
      static_layer:
        # RE2's default limit (100) refuses ordinary route regexes such as
        # `/v[0-9]+/items/[a-z0-9-]{{1,64}}`; routes.yaml validation bounds them instead.
        re2.max_program_size.error_level: 10000
        re2.max_program_size.warn_level: 5000
    - name: admin
      admin_layer: {{}}
overload_manager:
  refresh_interval: 0.25s
  resource_monitors:
    # A cap on client connections, so a connection flood exhausts a limit, not the host.
    - name: envoy.resource_monitors.global_downstream_max_connections
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
        max_active_downstream_connections: {max_connections}
    # Envoy's heap, so that a flood of requests or large headers makes Envoy shed load
    # instead of growing until the host or the container's limit kills it.
    - name: envoy.resource_monitors.fixed_heap
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig
        max_heap_size_bytes: {max_heap_bytes}
  # The thresholds of Envoy's edge-proxy guide.
  actions:
    - name: envoy.overload_actions.shrink_heap
      triggers:
        - name: envoy.resource_monitors.fixed_heap
          threshold: {{value: 0.95}}
    - name: envoy.overload_actions.stop_accepting_requests
      triggers:
        - name: envoy.resource_monitors.fixed_heap
          threshold: {{value: 0.98}}
static_resources:
  clusters:
    - name: tollgate_xds
      type: {discovery}
      # A named control plane resolves IPv4 first: `localhost` is `[::1]` before `127.0.0.1`
      # by Envoy's default, refused by a control plane listening on IPv4 alone.
      dns_lookup_family: V4_PREFERRED
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config:
            # Keepalive pings notice a control plane that vanished without closing (a host
            # or a network lost, not a process) within 4 s: a ping every 2 s, 2 s to answer.
            http2_protocol_options:
              connection_keepalive: {{interval: 2s, timeout: 2s}}
{transport_socket}      load_assignment:
        cluster_name: tollgate_xds
        endpoints:
          - lb_endpoints:{endpoints}
"#,
        node_id = options.node_id,
        cluster = options.cluster,
        max_connections = options.overload.max_connections,
        max_heap_bytes = options.overload.max_heap_mb.saturating_mul(1024 * 1024),
    );
    Ok(out)
}

/// The xDS cluster's `transport_socket`: mutual TLS with files Envoy reads itself, ALPN h2
/// (the control plane speaks gRPC, HTTP/2 only). With an SDS file, Envoy's certificate and
/// what it verifies the control plane with (CA, server name) come through SDS files and are
/// re-read on rotation; without, Envoy reads the files once, at start.
fn tls_transport_socket(tls: &XdsClientTls) -> Result<String, BootstrapError> {
    let server_name = server_name(tls)?;
    let (client_certificate, validation) = match &tls.sds_file {
        Some(sds_file) => (
            format!(
                "tls_certificate_sds_secret_configs:\n              - name: {CLIENT_CERTIFICATE_SECRET}\n                sds_config:\n                  path_config_source: {{path: {path}}}\n                  resource_api_version: V3",
                path = quoted(sds_file)?
            ),
            format!(
                "validation_context_sds_secret_config:\n              name: {SERVER_VALIDATION_SECRET}\n              sds_config:\n                path_config_source: {{path: {path}}}\n                resource_api_version: V3",
                path = quoted(&server_validation_sds_file(sds_file))?
            ),
        ),
        None => (
            format!(
                "tls_certificates:\n              - certificate_chain: {{filename: {cert}}}\n                private_key: {{filename: {key}}}",
                cert = quoted(&tls.cert_file)?,
                key = quoted(&tls.key_file)?
            ),
            format!(
                "validation_context:\n              trusted_ca: {{filename: {ca}}}{san}",
                ca = quoted(&tls.ca_file)?,
                san = server_name.map_or_else(String::new, |name| format!(
                    "\n              match_typed_subject_alt_names:\n                - {{san_type: DNS, matcher: {{exact: {name}}}}}"
                )),
            ),
        ),
    };
    let sni = server_name.map_or_else(String::new, |name| format!("\n          sni: {name}"));
    Ok(format!(
        r#"      # Mutual TLS: the control plane checks this Envoy's certificate, and this Envoy the
      # control plane's, before any configuration (TLS keys included) crosses the network.
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext{sni}
          common_tls_context:
            alpn_protocols: [h2]
            {client_certificate}
            {validation}
"#
    ))
}

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn split_host_port(addr: &str) -> Result<(String, u16), BootstrapError> {
    let bad = || BootstrapError::Address(addr.to_string());
    if let Ok(socket) = addr.parse::<std::net::SocketAddr>() {
        return Ok((socket.ip().to_string(), socket.port()));
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse::<u16>().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
    if host_ok {
        Ok((host.to_string(), port))
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> BootstrapOptions {
        BootstrapOptions {
            node_id: "edge-1".into(),
            cluster: "tollgate".into(),
            xds_addrs: vec!["127.0.0.1:18000".into()],
            admin_addr: "127.0.0.1:9901".into(),
            variant: XdsVariant::Sotw,
            tls: None,
            overload: OverloadLimits::default(),
        }
    }

    fn tls(server_name: Option<&str>) -> XdsClientTls {
        XdsClientTls {
            ca_file: "/etc/tollgate/xds/ca.pem".into(),
            cert_file: "/etc/tollgate/xds/envoy.pem".into(),
            key_file: "/etc/tollgate/xds/envoy.key".into(),
            server_name: server_name.map(str::to_owned),
            sds_file: None,
        }
    }

    #[test]
    fn with_an_sds_file_envoys_certificate_comes_through_it() {
        let tls = XdsClientTls {
            sds_file: Some("/etc/tollgate/xds/client-sds.yaml".into()),
            ..tls(None)
        };
        let yaml = render(&BootstrapOptions {
            tls: Some(tls.clone()),
            ..options()
        })
        .expect("renders");
        assert!(yaml.contains("- name: tollgate_xds_client"));
        assert!(yaml.contains(r#"path_config_source: {path: "/etc/tollgate/xds/client-sds.yaml"}"#));
        assert!(
            !yaml.contains("tls_certificates:"),
            "not read once, at start"
        );
        let sds = client_certificate_sds(&tls).expect("renders");
        assert!(sds.contains("name: tollgate_xds_client"));
        assert!(sds.contains(r#"certificate_chain: {filename: "/etc/tollgate/xds/envoy.pem"}"#));
        assert!(sds.contains(r#"private_key: {filename: "/etc/tollgate/xds/envoy.key"}"#));
    }

    #[test]
    fn with_an_sds_file_the_ca_and_server_name_come_through_a_sibling_one() {
        let tls = XdsClientTls {
            sds_file: Some("/etc/tollgate/xds/client-sds.yaml".into()),
            ..tls(Some("xds.tollgate.internal"))
        };
        let yaml = render(&BootstrapOptions {
            tls: Some(tls.clone()),
            ..options()
        })
        .expect("renders");
        assert!(yaml.contains("validation_context_sds_secret_config:"));
        assert!(yaml.contains("name: tollgate_xds_server_validation"));
        assert!(
            yaml.contains(r#"path_config_source: {path: "/etc/tollgate/xds/client-sds-ca.yaml"}"#)
        );
        assert!(!yaml.contains("trusted_ca"), "not read once, at start");
        assert!(
            !yaml.contains("match_typed_subject_alt_names"),
            "the name is in the SDS file"
        );
        assert!(yaml.contains("sni: xds.tollgate.internal"));

        let files = sds_files(&tls).expect("renders");
        let paths: Vec<_> = files.iter().map(|(path, _)| path.clone()).collect();
        assert_eq!(
            paths,
            [
                PathBuf::from("/etc/tollgate/xds/client-sds.yaml"),
                PathBuf::from("/etc/tollgate/xds/client-sds-ca.yaml"),
            ]
        );
        let validation = &files[1].1;
        assert!(validation.contains("name: tollgate_xds_server_validation"));
        assert!(validation.contains(r#"trusted_ca: {filename: "/etc/tollgate/xds/ca.pem"}"#));
        assert!(validation.contains("- {san_type: DNS, matcher: {exact: xds.tollgate.internal}}"));
        assert_eq!(
            validation.matches("\"@type\"").count(),
            1,
            "one secret per file: {validation}"
        );
    }

    #[test]
    fn the_validation_sds_file_is_named_after_the_certificates() {
        assert_eq!(
            server_validation_sds_file("/x/edge-1-sds.yaml".as_ref()),
            PathBuf::from("/x/edge-1-sds-ca.yaml")
        );
        assert_eq!(
            server_validation_sds_file("/x/sds".as_ref()),
            PathBuf::from("/x/sds-ca")
        );
        assert!(sds_files(&tls(None)).expect("renders").is_empty());
    }

    #[test]
    fn a_bad_server_name_is_refused_with_an_sds_file_too() {
        let tls = XdsClientTls {
            sds_file: Some("/etc/tollgate/xds/client-sds.yaml".into()),
            ..tls(Some("x: y"))
        };
        assert!(matches!(
            render(&BootstrapOptions {
                tls: Some(tls.clone()),
                ..options()
            }),
            Err(BootstrapError::ServerName(_))
        ));
        assert!(matches!(
            sds_files(&tls),
            Err(BootstrapError::ServerName(_))
        ));
    }

    #[test]
    fn plaintext_by_default() {
        let yaml = render(&options()).expect("renders");
        assert!(!yaml.contains("transport_socket"));
    }

    #[test]
    fn tls_gives_the_xds_cluster_envoys_certificate_and_the_ca() {
        let yaml = render(&BootstrapOptions {
            tls: Some(tls(None)),
            ..options()
        })
        .expect("renders");
        assert!(yaml.contains("UpstreamTlsContext"));
        assert!(yaml.contains("alpn_protocols: [h2]"));
        assert!(yaml.contains(r#"certificate_chain: {filename: "/etc/tollgate/xds/envoy.pem"}"#));
        assert!(yaml.contains(r#"private_key: {filename: "/etc/tollgate/xds/envoy.key"}"#));
        assert!(yaml.contains(r#"trusted_ca: {filename: "/etc/tollgate/xds/ca.pem"}"#));
        assert!(!yaml.contains("sni:"));
        assert!(!yaml.contains("match_typed_subject_alt_names"));
    }

    #[test]
    fn a_server_name_is_sent_as_sni_and_required_of_the_certificate() {
        let yaml = render(&BootstrapOptions {
            tls: Some(tls(Some("xds.tollgate.internal"))),
            ..options()
        })
        .expect("renders");
        assert!(yaml.contains("sni: xds.tollgate.internal"));
        assert!(yaml.contains("- {san_type: DNS, matcher: {exact: xds.tollgate.internal}}"));
        let bad = BootstrapOptions {
            tls: Some(tls(Some("x: y"))),
            ..options()
        };
        assert!(matches!(render(&bad), Err(BootstrapError::ServerName(_))));
    }

    #[test]
    fn ip_control_plane_is_a_static_cluster() {
        let yaml = render(&options()).expect("renders");
        assert!(yaml.contains("id: edge-1"));
        assert!(yaml.contains("type: STATIC"));
        assert!(yaml.contains("api_type: GRPC"));
        assert!(yaml.contains(r#"socket_address: {address: "127.0.0.1", port_value: 18000}"#));
    }

    #[test]
    fn named_control_plane_is_resolved_by_envoy() {
        let yaml = render(&BootstrapOptions {
            xds_addrs: vec!["control-plane:18000".into()],
            variant: XdsVariant::Delta,
            ..options()
        })
        .expect("renders");
        assert!(yaml.contains("type: STRICT_DNS"));
        assert!(yaml.contains("dns_lookup_family: V4_PREFERRED"));
        assert!(yaml.contains("api_type: DELTA_GRPC"));
    }

    #[test]
    fn every_replica_is_an_endpoint_of_the_xds_cluster() {
        let yaml = render(&BootstrapOptions {
            xds_addrs: vec!["10.0.0.1:18000".into(), "cp-2.internal:18000".into()],
            ..options()
        })
        .expect("renders");
        assert!(yaml.contains(r#"socket_address: {address: "10.0.0.1", port_value: 18000}"#));
        assert!(yaml.contains(r#"socket_address: {address: "cp-2.internal", port_value: 18000}"#));
        assert!(
            yaml.contains("type: STRICT_DNS"),
            "a name among them is resolved"
        );
        assert!(yaml.contains("connection_keepalive: {interval: 2s, timeout: 2s}"));
        assert!(yaml.contains("max_interval: 2s"));
    }

    #[test]
    fn the_overload_manager_caps_heap_and_connections_by_default() {
        let yaml = render(&options()).expect("renders");
        assert!(yaml.contains("max_active_downstream_connections: 50000\n"));
        assert!(yaml.contains("- name: envoy.resource_monitors.fixed_heap\n"));
        assert!(yaml.contains("max_heap_size_bytes: 1073741824\n"), "1 GiB");
        assert!(yaml.contains("- name: envoy.overload_actions.shrink_heap\n"));
        assert!(yaml.contains("- name: envoy.overload_actions.stop_accepting_requests\n"));
        assert!(yaml.contains("threshold: {value: 0.98}"));
    }

    #[test]
    fn overload_limits_follow_the_options() {
        let yaml = render(&BootstrapOptions {
            overload: OverloadLimits {
                max_heap_mb: 256,
                max_connections: 1000,
            },
            ..options()
        })
        .expect("renders");
        assert!(yaml.contains("max_active_downstream_connections: 1000\n"));
        assert!(yaml.contains("max_heap_size_bytes: 268435456\n"));
    }

    #[test]
    fn stats_are_merged_when_read_not_on_a_timer() {
        let yaml = render(&options()).expect("renders");
        assert!(yaml.contains("\nstats_flush_on_admin: true\n"));
        assert!(!yaml.contains("stats_flush_interval"));
    }

    #[test]
    fn bad_addresses_and_ids_are_refused() {
        let bad_addr = BootstrapOptions {
            xds_addrs: vec!["127.0.0.1:18000".into(), "nowhere".into()],
            ..options()
        };
        assert!(matches!(render(&bad_addr), Err(BootstrapError::Address(_))));
        let none = BootstrapOptions {
            xds_addrs: Vec::new(),
            ..options()
        };
        assert!(matches!(render(&none), Err(BootstrapError::NoControlPlane)));
        let bad_id = BootstrapOptions {
            node_id: "a\nb: c".into(),
            ..options()
        };
        assert!(matches!(render(&bad_id), Err(BootstrapError::NodeId(_))));
    }
}
