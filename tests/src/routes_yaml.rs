//! A builder for simple routes.yaml documents, for tests about *changes* to the routes
//! rather than about the format itself (those spell their YAML out literally).

use std::fmt;

use crate::upstream::UpstreamHandle;

/// routes.yaml v1 with listeners, single-upstream services and prefix routes, in order.
#[derive(Debug, Clone, Default)]
pub struct RoutesYaml {
    listeners: Vec<(String, u16)>,
    services: Vec<(String, String)>,
    routes: Vec<(String, String, String)>,
}

impl RoutesYaml {
    pub fn new() -> Self {
        Self::default()
    }

    /// A listener `name` on `127.0.0.1:port`.
    pub fn listener(mut self, name: &str, port: u16) -> Self {
        self.listeners.push((name.to_owned(), port));
        self
    }

    /// A service `name` whose only endpoint is `upstream`.
    pub fn service(mut self, name: &str, upstream: &UpstreamHandle) -> Self {
        self.services.push((name.to_owned(), upstream.endpoint()));
        self
    }

    /// A route `name` sending paths under `prefix` to `service`.
    pub fn route(mut self, name: &str, prefix: &str, service: &str) -> Self {
        self.routes
            .push((name.to_owned(), prefix.to_owned(), service.to_owned()));
        self
    }
}

impl fmt::Display for RoutesYaml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "version: 1")?;
        writeln!(f, "listeners:")?;
        for (name, port) in &self.listeners {
            writeln!(f, "  - name: {name}\n    address: 127.0.0.1:{port}")?;
        }
        if self.services.is_empty() {
            writeln!(f, "services: {{}}")?;
        } else {
            writeln!(f, "services:")?;
        }
        for (name, endpoint) in &self.services {
            writeln!(f, "  {name}:\n    endpoints: [\"{endpoint}\"]")?;
        }
        if self.routes.is_empty() {
            writeln!(f, "routes: []")?;
        } else {
            writeln!(f, "routes:")?;
        }
        for (name, prefix, service) in &self.routes {
            writeln!(
                f,
                "  - name: {name}\n    match:\n      prefix: {prefix}\n    service: {service}"
            )?;
        }
        Ok(())
    }
}

/// Waits until the gateway on `port` serves [`app_then_added`]'s edit: `/added/` answered by
/// `other`.
pub async fn added_route_arrives(port: u16, what: &str) {
    crate::eventually(what, async || {
        crate::get(port, "/added/x")
            .await?
            .expect_upstream("other")?;
        Ok(())
    })
    .await;
}

/// Everything to `app` on a listener `public` at `port`; with `added`, `/added/` to `other`
/// first. The edit the replica and network-cut tests make: its arrival shows as a request
/// answered by another upstream.
pub fn app_then_added(
    port: u16,
    app: &UpstreamHandle,
    other: &UpstreamHandle,
    added: bool,
) -> String {
    let extra = if added {
        "  - {name: added, match: {prefix: /added/}, service: other}\n"
    } else {
        ""
    };
    format!(
        "version: 1
listeners:
  - {{name: public, address: \"127.0.0.1:{port}\"}}
services:
  app: {{endpoints: [\"{app}\"]}}
  other: {{endpoints: [\"{other}\"]}}
routes:
{extra}  - {{name: all, match: {{prefix: /}}, service: app}}
",
        app = app.endpoint(),
        other = other.endpoint(),
    )
}

/// R routes on a listener `public` at `port`, each to a service of its own (so R clusters too);
/// edit `k` (from 1; 0 is the unedited file) moves route 0's timeout and service 0's connect
/// timeout, so the route table and one cluster change each time. The services are named by
/// host (`localhost`, which Envoy resolves from /etc/hosts), so their clusters are DNS clusters
/// without EDS, and a changed one warms at once. The `xds_fleet` bench's and the xDS isolation
/// tests' configuration.
pub fn many_routes(port: u16, routes: usize, edit: usize) -> String {
    let mut yaml = format!(
        "version: 1\nlisteners:\n  - {{name: public, address: 127.0.0.1:{port}}}\nservices:\n"
    );
    for i in 0..routes {
        let connect = if i == 0 { 100 + edit } else { 250 };
        yaml.push_str(&format!(
            "  s{i}: {{endpoints: [\"localhost:{}\"], connect_timeout: {connect}ms}}\n",
            10_000 + i
        ));
    }
    yaml.push_str("routes:\n");
    for i in 0..routes {
        let timeout = if i == 0 { 1000 + edit } else { 15_000 };
        yaml.push_str(&format!(
            "  - {{name: r{i}, match: {{prefix: /r/{i}/}}, service: s{i}, timeout: {timeout}ms}}\n"
        ));
    }
    yaml
}
