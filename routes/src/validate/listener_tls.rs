//! Checks for a listener's `tls` section: its fields, and, when the caller lets validation
//! read files, the certificate and key they name, and the client CA bundle and revocation
//! lists.

use std::path::PathBuf;

use serde_saphyr::Spanned;

use super::{
    ca_bundle, certificate_and_key, certificate_files, certificate_pair, non_empty, read_file,
    Errors,
};
use crate::certificates::ServedCertificate;
use crate::document::ListenerTlsDoc;
use crate::listener_tls::{ClientCertificates, FileSource, ListenerTls, TlsVersion};
use crate::revocation::check_crls;

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
    let client_certificates = client_certificates(listener, doc, files, errors);
    let pairs: Vec<_> = doc
        .sni_certificates
        .iter()
        .filter_map(|sni| certificate_pair(&sni.value.cert_file, &sni.value.key_file, errors))
        .collect();
    if pairs.len() != doc.sni_certificates.len() {
        return (None, Vec::new());
    }
    let (Some(cert_node), Some(key_node), Some(min_version), Ok(client_certificates)) =
        (cert_file, key_file, min_version, client_certificates)
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
        client_certificates,
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

/// The `client_ca_file`, `client_certificate` and `crl_file` of a listener's `tls`; with
/// `files`, the bundle and the lists read and checked. `Err`: a mistake, already reported.
fn client_certificates(
    listener: &str,
    doc: &ListenerTlsDoc,
    files: Option<&dyn FileSource>,
    errors: &mut Errors,
) -> Result<Option<ClientCertificates>, ()> {
    let Some(ca_node) = &doc.client_ca_file else {
        // Without CAs nothing could be verified: either field alone would be ignored, and a
        // listener believed to check certificates would check none.
        let orphans = [
            ("client_certificate", &doc.client_certificate),
            ("crl_file", &doc.crl_file),
        ];
        let mut orphaned = false;
        for (field, node) in orphans {
            if let Some(node) = node {
                errors.at(
                    node,
                    format!("listener \"{listener}\": {field} needs a client_ca_file (the CAs client certificates are verified against)"),
                );
                orphaned = true;
            }
        }
        return if orphaned { Err(()) } else { Ok(None) };
    };
    let required = match &doc.client_certificate {
        None => Some(true),
        Some(node) => match node.value.as_str() {
            "required" => Some(true),
            "optional" => Some(false),
            other => {
                errors.at(
                    node,
                    format!(
                        "unknown client_certificate \"{other}\": expected required or optional"
                    ),
                );
                None
            }
        },
    };
    let ca_file = non_empty(ca_node, "client_ca_file", errors);
    // None: no crl_file; Some(None): an empty one, reported.
    let crl_file = doc
        .crl_file
        .as_ref()
        .map(|node| non_empty(node, "crl_file", errors));
    let ca_pem = files
        .zip(ca_file)
        .and_then(|(files, node)| ca_bundle(files, node, "client_ca_file", errors));
    let crl_pem = match (files, crl_file) {
        (Some(files), Some(Some(node))) => revocation_lists(files, node, ca_pem.as_deref(), errors),
        _ => None,
    };
    // Every problem is reported by now; any of them leaves nothing to build.
    let (Some(ca_node), Some(required)) = (ca_file, required) else {
        return Err(());
    };
    let crl_node = match crl_file {
        None => None,
        Some(None) => return Err(()),
        Some(Some(node)) => Some(node),
    };
    if files.is_some() && (ca_pem.is_none() || (crl_node.is_some() && crl_pem.is_none())) {
        return Err(());
    }
    Ok(Some(ClientCertificates {
        ca_file: PathBuf::from(&ca_node.value),
        ca_pem,
        crl_file: crl_node.map(|node| PathBuf::from(&node.value)),
        crl_pem,
        required,
    }))
}

/// The lists the `crl_file` at `node` names, when they are PEM CRLs with one from every CA in
/// `ca_pem` (see [`check_crls`]); `ca_pem` is `None` when the bundle was refused already, and
/// then only the lists themselves are checked.
fn revocation_lists(
    files: &dyn FileSource,
    node: &Spanned<String>,
    ca_pem: Option<&[u8]>,
    errors: &mut Errors,
) -> Option<Vec<u8>> {
    let pem = read_file(files, node, "crl_file", errors)?;
    match check_crls(&pem, ca_pem.unwrap_or_default()) {
        Ok(()) => Some(pem),
        Err(problem) => {
            errors.at(node, format!("crl_file \"{}\" {problem}", node.value));
            None
        }
    }
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
