//! The routes.yaml model shared by every Tollgate service.
//!
//! [`parse`] turns the text of a routes.yaml into a validated [`RoutesConfig`], or into every
//! problem found, each as `file:line:col: message`. Parsing is pure (text in, data out) so
//! the control plane, ext-authz and the rate-limit service read one file the same way and
//! reloads can be validated completely before anything is swapped. [`load`] and
//! [`load_with_files`] are the same reading from disk, for the services.
#![forbid(unsafe_code)]

pub mod api_keys;
mod certificate_expiry;
pub mod certificates;
mod config;
mod der;
pub mod destination;
mod document;
pub mod duration;
mod endpoint;
mod error;
pub mod ip_rules;
pub mod listener_limits;
pub mod listener_tls;
pub mod load;
pub mod policy;
pub mod revocation;
pub mod route_policy;
pub mod service_policy;
mod validate;

pub use certificates::{CertificateAndKey, CertificateFiles, Certificates, ServedCertificate};
pub use config::{
    host_covers, AccessLogSink, EscapedSlashes, Listener, Observability, PathMatch, QueryMatch,
    Route, RouteMatch, RoutesConfig, Service, Tracing,
};
pub use destination::{
    Destination, HttpsRedirect, Mirror, Redirect, RedirectPath, Transcode, WeightedService,
};
pub use endpoint::Endpoint;
pub use error::{ConfigError, ConfigErrors};
pub use listener_limits::ListenerLimits;
pub use listener_tls::{ClientCertificates, FileSource, ListenerTls, TlsVersion};
pub use load::{load, load_with_files, read_text, FilesBeside, LoadError, ReadError};
pub use validate::is_valid_name;

use listener_tls::ReadOnce;

/// Parses and validates routes.yaml text; `file` is the name errors are reported against.
///
/// Files named in the text are not read: a listener's certificate and key are checked only
/// by [`parse_with_files`], for the service that serves them.
pub fn parse(file: &str, text: &str) -> Result<RoutesConfig, ConfigErrors> {
    read_and_validate(file, text, None).map(|(config, _)| config)
}

/// Parses and validates an API key file (see [`api_keys`]); `file` is the name errors are
/// reported against, each as `file:line:col: message`.
pub fn parse_keys(file: &str, text: &str) -> Result<Vec<api_keys::ApiKey>, ConfigErrors> {
    validate::api_keys::keys(file, document::read(file, text)?)
}

/// Like [`parse`], and also reads through `files` every certificate and key routes.yaml
/// names (TLS listeners', services' client certificates), every CA bundle (services', and
/// listeners' for client certificates) and every listener's CRLs; a missing file, one that
/// is not PEM, or a key that does not match its certificate is reported at its field like
/// any other error.
pub fn parse_with_files(
    file: &str,
    text: &str,
    files: &dyn FileSource,
) -> Result<(RoutesConfig, Certificates), ConfigErrors> {
    read_and_validate(file, text, Some(files))
}

fn read_and_validate(
    file: &str,
    text: &str,
    files: Option<&dyn FileSource>,
) -> Result<(RoutesConfig, Certificates), ConfigErrors> {
    let read_once = files.map(ReadOnce::new);
    let files = read_once.as_ref().map(|f| f as &dyn FileSource);
    let quick = document::read_quick(text).and_then(|d| validate::validate(file, d, files).ok());
    if let Some(read) = quick {
        // Every test run doubles as a differential test of the two readers: a file the
        // quick reader accepts must mean exactly what the located reader makes of it.
        debug_assert_eq!(
            Ok(&read),
            read_located(file, text, files).as_ref(),
            "the quick and the located YAML readers disagree on {file}"
        );
        return Ok(read);
    }
    read_located(file, text, files)
}

/// The authoritative reading: every error carries its `file:line:col`.
fn read_located(
    file: &str,
    text: &str,
    files: Option<&dyn FileSource>,
) -> Result<(RoutesConfig, Certificates), ConfigErrors> {
    let document = document::read(file, text)?;
    validate::validate(file, document, files)
}
