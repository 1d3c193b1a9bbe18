//! Checks for a listener's `tls` section: its fields, and, when the caller lets validation
//! read files, the certificate and key they name.

use std::path::PathBuf;

use serde_saphyr::Spanned;

use super::{certificate_and_key, Errors};
use crate::certificates::CertificateAndKey;
use crate::document::ListenerTlsDoc;
use crate::listener_tls::{FileSource, ListenerTls, TlsVersion};

/// The validated settings, and the certificate they name when `files` was given and both
/// files are a servable pair.
pub(super) fn listener_tls(
    listener: &str,
    node: &Spanned<ListenerTlsDoc>,
    files: Option<&dyn FileSource>,
    errors: &mut Errors,
) -> (Option<ListenerTls>, Option<CertificateAndKey>) {
    let doc = &node.value;
    let min_version = match &doc.min_version {
        None => Some(TlsVersion::default()),
        Some(version) => {
            let parsed = TlsVersion::parse(&version.value);
            if parsed.is_none() {
                errors.at(
                    version,
                    format!(
                        "unknown min_version \"{}\": expected \"1.2\" or \"1.3\"",
                        version.value
                    ),
                );
            }
            parsed
        }
    };
    let cert_file = required_path(listener, node, doc.cert_file.as_ref(), "cert_file", errors);
    let key_file = required_path(listener, node, doc.key_file.as_ref(), "key_file", errors);
    let (Some(cert_node), Some(key_node), Some(min_version)) = (cert_file, key_file, min_version)
    else {
        return (None, None);
    };
    let settings = ListenerTls {
        cert_file: PathBuf::from(&cert_node.value),
        key_file: PathBuf::from(&key_node.value),
        min_version,
    };
    let Some(files) = files else {
        return (Some(settings), None);
    };
    let certificate = certificate_and_key(files, cert_node, key_node, errors);
    (Some(settings), certificate)
}

fn required_path<'d>(
    listener: &str,
    node: &Spanned<ListenerTlsDoc>,
    path: Option<&'d Spanned<String>>,
    field: &str,
    errors: &mut Errors,
) -> Option<&'d Spanned<String>> {
    match path {
        None => {
            errors.at(
                node,
                format!("listener \"{listener}\": tls needs a {field}"),
            );
            None
        }
        Some(path) if path.value.is_empty() => {
            errors.at(path, format!("{field} is empty"));
            None
        }
        Some(path) => Some(path),
    }
}
