//! Where a route sends what it matches: one service, several by weight, or back to the
//! client as a redirect; and the service that may see a copy.

/// Where a route's requests go.
#[derive(Clone, Debug, PartialEq)]
pub enum Destination {
    Service(String),
    /// Each request to one of these, in proportion to the weights (which add up to 100).
    Split(Vec<WeightedService>),
    /// Answered by the gateway, never forwarded.
    Redirect(Redirect),
}

impl Destination {
    /// The services requests may be forwarded to, in the order written.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        let (one, split) = match self {
            Destination::Service(service) => (Some(service.as_str()), &[][..]),
            Destination::Split(split) => (None, split.as_slice()),
            Destination::Redirect(_) => (None, &[][..]),
        };
        one.into_iter()
            .chain(split.iter().map(|w| w.service.as_str()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightedService {
    pub service: String,
    /// Percent of requests, 0 to 100.
    pub weight: u32,
}

/// A copy of some requests sent to another service; its answers and failures are dropped.
#[derive(Clone, Debug, PartialEq)]
pub struct Mirror {
    pub service: String,
    /// Of the route's requests, above 0 and at most 100.
    pub percent: f64,
}

/// The redirect a route answers with: what of the request's URL changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// `https`, on its default port unless `port` says otherwise.
    pub https: bool,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<RedirectPath>,
    /// 301, 302, 303, 307 or 308.
    pub code: u16,
    /// Drop the query string; it is kept otherwise.
    pub strip_query: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedirectPath {
    /// The whole path becomes this.
    Path(String),
    /// The part of the path the route's prefix (or path) matched becomes this.
    Prefix(String),
}

/// REST in, gRPC out: JSON requests mapped to gRPC methods by their `google.api.http`
/// annotations, and the answers back to JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transcode {
    /// As written, relative to routes.yaml's directory.
    pub descriptor_file: std::path::PathBuf,
    /// Full names of the gRPC services whose methods are mapped.
    pub services: Vec<String>,
    /// The compiled descriptor set (`protoc --include_imports --descriptor_set_out`). Read
    /// only by `parse_with_files`, for the control plane; empty otherwise.
    pub descriptor_set: Vec<u8>,
}

/// A plain-HTTP listener that answers every request with a redirect to a TLS listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpsRedirect {
    /// The TLS listener's name.
    pub listener: String,
    /// Its port, which the redirect names.
    pub port: u16,
}
