//! Certificate revocation lists (RFC 5280 §5) for a listener's `crl_file`, checked before
//! Envoy is given them.
//!
//! Envoy refuses a listener update whose CRL it cannot load, and it checks revocation along
//! the whole chain (`CertificateValidationContext.crl` in Envoy's `common.proto`): once a CRL
//! is given, a chain through a CA that no CRL was issued by fails verification, revoked or
//! not. A `client_ca_file` CA without a CRL would therefore shut out every client it issued
//! for, silently; it is refused here instead, at the field to fix. Checking is pure (bytes in,
//! verdict out).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};

use crate::der::{
    any_element, element, tbs_after_serial, BIT_STRING, GENERALIZED_TIME, INTEGER,
    OBJECT_IDENTIFIER, SEQUENCE, SET, UTC_TIME,
};

/// Why a `crl_file` cannot be given to Envoy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CrlError {
    #[error("is not a PEM certificate revocation list (expected -----BEGIN X509 CRL----- blocks)")]
    NotPem,
    #[error("holds a block that is not an X.509 certificate revocation list")]
    NotCrl,
    #[error("has no CRL issued by {ca}, a CA in client_ca_file: with a crl_file, Envoy refuses every certificate that CA issued, revoked or not")]
    NoCrlFrom {
        /// The CA's common name, quoted, or its place in the bundle.
        ca: String,
    },
}

/// Checks that `crl_pem` holds PEM X.509 CRLs, at least one issued by each certificate of
/// `ca_pem` (the client CA bundle, already checked) whose subject can be read.
///
/// Issuers are matched by the bytes of their distinguished names, which is what CAs write
/// (a CRL's issuer is copied from its CA's subject); BoringSSL's own match also forgives
/// differences of case and spacing, so this check is at most stricter than Envoy's.
pub fn check_crls(crl_pem: &[u8], ca_pem: &[u8]) -> Result<(), CrlError> {
    let crls: Vec<CertificateRevocationListDer<'static>> =
        CertificateRevocationListDer::pem_slice_iter(crl_pem)
            .collect::<Result<_, _>>()
            .map_err(|_| CrlError::NotPem)?;
    if crls.is_empty() {
        return Err(CrlError::NotPem);
    }
    let issuers: Vec<&[u8]> = crls
        .iter()
        .map(|crl| crl_issuer(crl).ok_or(CrlError::NotCrl))
        .collect::<Result<_, _>>()?;
    // The bundle parsed as PEM when it was checked; a block that no longer does is no CA.
    let cas = CertificateDer::pem_slice_iter(ca_pem).filter_map(Result::ok);
    for (index, ca) in cas.enumerate() {
        let Some(subject) = certificate_subject(&ca) else {
            continue;
        };
        if !issuers.contains(&subject) {
            let ca = match common_name(subject) {
                Some(name) => format!("\"{name}\""),
                None => format!("certificate {} of the bundle", index + 1),
            };
            return Err(CrlError::NoCrlFrom { ca });
        }
    }
    Ok(())
}

/// The content of a CRL's `issuer` Name, when `crl` has the shape of a CertificateList.
fn crl_issuer(crl: &[u8]) -> Option<&[u8]> {
    // CertificateList ::= SEQUENCE { tbsCertList, signatureAlgorithm, signatureValue }
    let (list, _) = element(crl, SEQUENCE)?;
    let (tbs, rest) = element(list, SEQUENCE)?;
    let (_, rest) = element(rest, SEQUENCE)?;
    element(rest, BIT_STRING)?;
    // TBSCertList ::= SEQUENCE { version INTEGER OPTIONAL, signature, issuer, thisUpdate,
    //                            ... }
    let mut rest = tbs;
    if rest.first() == Some(&INTEGER) {
        rest = element(rest, INTEGER)?.1;
    }
    rest = element(rest, SEQUENCE)?.1;
    let (issuer, rest) = element(rest, SEQUENCE)?;
    // A time where a certificate has its Validity SEQUENCE: this is a CRL, not a
    // certificate in a CRL's armour.
    match rest.first() {
        Some(&UTC_TIME | &GENERALIZED_TIME) => Some(issuer),
        _ => None,
    }
}

/// The content of a certificate's `subject` Name.
fn certificate_subject(certificate: &[u8]) -> Option<&[u8]> {
    let mut rest = tbs_after_serial(certificate)?;
    for _signature_issuer_validity in 0..3 {
        rest = element(rest, SEQUENCE)?.1;
    }
    element(rest, SEQUENCE).map(|(subject, _)| subject)
}

/// The first common name (OID 2.5.4.3) in the content of a Name, when it is text.
fn common_name(name: &[u8]) -> Option<String> {
    const COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];
    // UTF8String, PrintableString, TeletexString (in practice Latin-1 or ASCII), IA5String.
    const TEXT: [u8; 4] = [0x0c, 0x13, 0x14, 0x16];
    // Name ::= SEQUENCE OF SET OF SEQUENCE { type OBJECT IDENTIFIER, value ANY }
    let mut names = name;
    while !names.is_empty() {
        let (set, rest) = element(names, SET)?;
        names = rest;
        let mut attributes = set;
        while !attributes.is_empty() {
            let (attribute, rest) = element(attributes, SEQUENCE)?;
            attributes = rest;
            let (oid, value) = element(attribute, OBJECT_IDENTIFIER)?;
            let (&tag, _) = value.split_first()?;
            if oid == COMMON_NAME && TEXT.contains(&tag) {
                let (text, _) = any_element(value)?;
                return std::str::from_utf8(text).ok().map(str::to_owned);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_without_a_readable_common_name_has_none() {
        assert_eq!(common_name(&[]), None);
        // SET { SEQUENCE { OID 2.5.4.10 (organisation), UTF8String "x" } }
        let organisation = [
            0x31, 0x0a, 0x30, 0x08, 0x06, 0x03, 0x55, 0x04, 0x0a, 0x0c, 0x01, b'x',
        ];
        assert_eq!(common_name(&organisation), None);
        let common = [
            0x31, 0x0a, 0x30, 0x08, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x01, b'x',
        ];
        assert_eq!(common_name(&common).as_deref(), Some("x"));
    }

    #[test]
    fn truncated_der_is_no_crl() {
        assert_eq!(crl_issuer(&[]), None);
        assert_eq!(crl_issuer(&[0x30, 0x82, 0x01]), None);
        assert_eq!(certificate_subject(&[0x30, 0x03, 0x30, 0x01, 0x02]), None);
    }
}
