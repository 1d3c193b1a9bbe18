//! Just enough DER (X.690 §10) to step through the X.509 structures the control plane looks
//! into itself: a certificate's validity and subject, a revocation list's issuer. Everything
//! read here has been decoded from PEM already; a structure these steps cannot follow gives
//! `None`, and each caller decides what that means.

pub(crate) const INTEGER: u8 = 0x02;
pub(crate) const BIT_STRING: u8 = 0x03;
pub(crate) const OBJECT_IDENTIFIER: u8 = 0x06;
pub(crate) const SEQUENCE: u8 = 0x30;
pub(crate) const SET: u8 = 0x31;
pub(crate) const UTC_TIME: u8 = 0x17;
pub(crate) const GENERALIZED_TIME: u8 = 0x18;
/// `[0] EXPLICIT`: a certificate's `version`.
pub(crate) const EXPLICIT_0: u8 = 0xa0;

/// The content of the element at the start of `der`, which must carry `tag`, and what follows.
pub(crate) fn element(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match der.first() {
        Some(&found) if found == tag => any_element(der),
        _ => None,
    }
}

/// The content of the element at the start of `der`, whatever its tag, and what follows.
pub(crate) fn any_element(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&first_length, rest) = der.get(1..)?.split_first()?;
    let (length, rest) = if first_length < 0x80 {
        (usize::from(first_length), rest)
    } else {
        // Long form: the low bits count the length octets (DER: at most what fits a usize).
        let count = usize::from(first_length & 0x7f);
        if count == 0 || count > std::mem::size_of::<usize>() || rest.len() < count {
            return None;
        }
        let (octets, rest) = rest.split_at(count);
        let length = octets
            .iter()
            .fold(0usize, |length, &octet| (length << 8) | usize::from(octet));
        (length, rest)
    };
    (rest.len() >= length).then(|| rest.split_at(length))
}

/// The fields of a DER X.509 certificate's `tbsCertificate` after its serial number
/// (`signature`, `issuer`, `validity`, `subject`, …), each still an element to step over.
pub(crate) fn tbs_after_serial(certificate: &[u8]) -> Option<&[u8]> {
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
    let (certificate, _) = element(certificate, SEQUENCE)?;
    // TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer,
    //                               validity, subject, ... }
    let (tbs, _) = element(certificate, SEQUENCE)?;
    let mut rest = tbs;
    if rest.first() == Some(&EXPLICIT_0) {
        rest = element(rest, EXPLICIT_0)?.1;
    }
    Some(element(rest, INTEGER)?.1)
}
