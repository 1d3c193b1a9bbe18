//! Conformance harness for Tollgate: drives the real control plane and a real Envoy over
//! loopback sockets against in-process upstreams, so each test reads like the scenario it
//! checks (`ControlPlane::new().routes(yaml).start()`, `Envoy::new().control_plane(&cp).start()`,
//! `Upstream::new("a").spawn()`, then plain HTTP through the gateway).
//!
//! Every spawned process is owned by a [`Process`](tollgate_testkit::process::Process) guard
//! that kills it on drop, so a failing or panicking test never leaves Envoy or the control
//! plane behind; on failure the guard prints the tail of the process's logs. Readiness is
//! always polled ([`eventually`]), never slept for, and nothing here asserts on timing.
//!
//! A service can also run on a host of its own ([`NetworkNamespace`]: a network namespace
//! joined by a veth pair), which a test can cut off the network; that needs root.
//!
//! Environment:
//! - `ENVOY_BIN`: the Envoy binary (default `.venv/bin/envoy`);
//! - `TOLLGATE_BIN_DIR`: where `tollgate-control-plane` is (default: the cargo target directory
//!   of the test executable; `cargo build --bins` first, as `make test` does);
//! - `TOLLGATE_LOG`: the control plane's log filter (default `info`);
//! - `TOLLGATE_ENVOY_LOG_LEVEL`: Envoy's `-l` (default `warning`);
//! - `TOLLGATE_TEST_SHOW_LOGS`: print process logs even when tests pass;
//! - `TOLLGATE_TEST_KEEP_DIRS`: keep each process's directory, with its full logs.
#![forbid(unsafe_code)]

pub mod binaries;
pub mod civil_date;
pub mod compose;
pub mod control_plane;
pub mod envoy;
pub mod eventually;

pub mod ext_authz;
pub mod gateway;
pub mod grpc_tap;
pub mod http;
pub mod netns;
pub mod otlp;
pub mod phased_load;
pub mod ratelimit;
pub mod replica_cut;
pub mod replicas;
pub mod routes_yaml;
pub mod sidecar;
pub mod simulated_envoy;
pub mod tls;
pub mod traffic;
pub mod upstream;

pub use control_plane::{
    validate, ControlPlane, RunningControlPlane, Validation, WriteStyle, XdsServerTls,
};
pub use envoy::{Envoy, RunningEnvoy, XdsClientTls, XdsVariant};
pub use eventually::{eventually, eventually_within, DEFAULT_PATIENCE};
pub use ext_authz::{ExtAuthz, RunningExtAuthz};
pub use gateway::Gateway;
pub use http::{get, request, Response};
pub use netns::NetworkNamespace;
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use routes_yaml::RoutesYaml;
pub use tls::{
    ClientCa, ClientCertificate, ClientCertificateRequest, IssuedCertificate, TestCa, TlsClient,
    TlsResponse,
};
pub use tollgate_testkit::ports::reserve_port;
pub use traffic::{traffic, Sent, Traffic, TrafficReport};
pub use upstream::{Upstream, UpstreamHandle};
