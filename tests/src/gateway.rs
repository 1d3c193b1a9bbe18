//! One upstream behind a whole gateway: the control plane serving a routes.yaml, and an
//! Envoy it configures, for tests of what routes do to traffic.

use crate::{
    eventually, get, reserve_port, ControlPlane, Envoy, RunningControlPlane, RunningEnvoy,
    UpstreamHandle,
};

/// The control plane and Envoy serving `routes` (YAML list items, indented by two spaces)
/// on a fresh port in front of `upstream` as service `api`; `extra` is appended at the top
/// level. Returns once `ready_path` reaches the upstream.
pub struct Gateway {
    pub port: u16,
    _envoy: RunningEnvoy,
    _cp: RunningControlPlane,
}

impl Gateway {
    pub async fn start(
        upstream: &UpstreamHandle,
        routes: &str,
        extra: &str,
        ready_path: &str,
    ) -> Self {
        let port = reserve_port();
        let cp = ControlPlane::new()
            .routes(format!(
                "version: 1
listeners:
  - {{name: public, address: \"127.0.0.1:{port}\"}}
services:
  api: {{endpoints: [\"{upstream}\"]}}
routes:
{routes}{extra}",
                upstream = upstream.endpoint(),
            ))
            .start()
            .await;
        let envoy = Envoy::new().control_plane(&cp).start().await;
        eventually("the gateway routes to the upstream", async || {
            get(port, ready_path)
                .await?
                .expect_upstream(upstream.name())?;
            Ok(())
        })
        .await;
        Gateway {
            port,
            _envoy: envoy,
            _cp: cp,
        }
    }
}
