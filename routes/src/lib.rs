//! The routes.yaml model shared by every Tollgate service.
//!
//! [`parse`] turns the text of a routes.yaml into a validated [`RoutesConfig`], or into every
//! problem found, each as `file:line:col: message`. Parsing is pure (text in, data out) so
//! the control plane, ext-authz and the rate-limit service read one file the same way and
//! reloads can be validated completely before anything is swapped.
#![forbid(unsafe_code)]

mod config;
mod document;
pub mod duration;
mod error;
pub mod policy;
pub mod route_policy;
pub mod service_policy;
mod validate;

pub use config::{
    AccessLogSink, Endpoint, EscapedSlashes, Listener, Observability, PathMatch, Route, RouteMatch,
    RoutesConfig, Service, Tracing,
};
pub use error::{ConfigError, ConfigErrors};
pub use validate::is_valid_name;

/// Parses and validates routes.yaml text; `file` is the name errors are reported against.
pub fn parse(file: &str, text: &str) -> Result<RoutesConfig, ConfigErrors> {
    let document = document::read(file, text)?;
    validate::validate(file, document)
}
