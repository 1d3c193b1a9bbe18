//! Checks for a listener's `tls` section: its fields, and, when the caller lets validation
//! read files, the certificate and key they name.

use std::path::PathBuf;

use serde_saphyr::Spanned;

use super::{certificate_and_key, certificate_files, certificate_pair, non_empty, Errors};
use crate::certificates::ServedCertificate;
use crate::document::ListenerTlsDoc;
use crate::listener_tls::{FileSource, ListenerTls, TlsVersion};

/// The validated settings, and, when `files` was given, the certificates they name (the
/// default first), each read and checked to be a servable pair.
pub(super) fn listener_tls(
    listener: &str,
    node: &Spanned<ListenerTlsDoc>,
    files: Option<&dyn FileSource>,
    errors: &mut Errors,
) -> (Option<ListenerTls>, Vec<ServedCertificate>) {
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
    let pairs: Vec<_> = doc
        .sni_certificates
        .iter()
        .filter_map(|sni| certificate_pair(&sni.value.cert_file, &sni.value.key_file, errors))
        .collect();
    if pairs.len() != doc.sni_certificates.len() {
        return (None, Vec::new());
    }
    let (Some(cert_node), Some(key_node), Some(min_version)) = (cert_file, key_file, min_version)
    else {
        return (None, Vec::new());
    };
    let settings = ListenerTls {
        cert_file: PathBuf::from(&cert_node.value),
        key_file: PathBuf::from(&key_node.value),
        min_version,
        sni_certificates: pairs
            .iter()
            .map(|(cert, key)| certificate_files(cert, key))
            .collect(),
    };
    let Some(files) = files else {
        return (Some(settings), Vec::new());
    };
    let served: Vec<ServedCertificate> = std::iter::once((cert_node, key_node))
        .chain(pairs)
        .filter_map(|(cert, key)| {
            Some(ServedCertificate {
                cert_file: PathBuf::from(&cert.value),
                certificate: certificate_and_key(files, cert, key, errors)?,
            })
        })
        .collect();
    (Some(settings), served)
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
        Some(path) => non_empty(path, field, errors),
    }
}
