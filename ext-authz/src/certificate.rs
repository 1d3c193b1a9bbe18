//! The consumer a client certificate names. Envoy has verified the certificate against the
//! listener's `client_ca_file` (and CRL) before the request exists; it sends the verified
//! leaf in the check request, PEM and URL-encoded, and this reads the one field a
//! `client_certificate` provider takes the consumer from. Pure: bytes in, id out.

use tollgate_routes::policy::CertificateField;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;

use crate::extract::percent_decode_bytes;

/// Why no consumer could be read from a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateProblem {
    /// Not a PEM X.509 certificate (never from Envoy, which sends what it verified).
    Unreadable,
    /// The certificate has no usable value in the field the provider reads.
    NoConsumer(CertificateField),
}

/// The consumer id in `field` of the certificate Envoy sent (`sent`: URL-encoded PEM).
pub fn consumer_of(sent: &[u8], field: CertificateField) -> Result<String, CertificateProblem> {
    let pem_text = percent_decode_bytes(sent);
    let (_, pem) = parse_x509_pem(&pem_text).map_err(|_| CertificateProblem::Unreadable)?;
    let certificate = pem
        .parse_x509()
        .map_err(|_| CertificateProblem::Unreadable)?;
    let value = match field {
        CertificateField::SanDns | CertificateField::SanUri => certificate
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|name| match name {
                    GeneralName::DNSName(dns) if field == CertificateField::SanDns => Some(*dns),
                    GeneralName::URI(uri) if field == CertificateField::SanUri => Some(*uri),
                    _ => None,
                })
            })
            .map(str::to_string),
        CertificateField::SubjectCn => certificate
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
    };
    // The id becomes `x-consumer-id` and a rate-limit key: printable ASCII without spaces,
    // as routes.yaml requires of every consumer id.
    value
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or(CertificateProblem::NoConsumer(field))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WITH_SANS: &str = include_str!("../tests/fixtures/client-with-sans.pem");
    const CN_ONLY: &str = include_str!("../tests/fixtures/client-cn-only.pem");

    /// As Envoy sends a certificate: URL-encoded, as its `urlEncodedPemEncodedPeerCertificate`.
    fn url_encoded(pem: &str) -> Vec<u8> {
        let mut out = String::new();
        for byte in pem.bytes() {
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    out.push(byte as char)
                }
                other => out.push_str(&format!("%{other:02X}")),
            }
        }
        out.into_bytes()
    }

    #[test]
    fn each_field_names_its_consumer_the_first_of_its_kind() {
        let sent = url_encoded(WITH_SANS);
        assert_eq!(
            consumer_of(&sent, CertificateField::SanDns).as_deref(),
            Ok("partner-a.example.com")
        );
        assert_eq!(
            consumer_of(&sent, CertificateField::SanUri).as_deref(),
            Ok("spiffe://partners/a")
        );
        assert_eq!(
            consumer_of(&sent, CertificateField::SubjectCn).as_deref(),
            Ok("partner-a-cn")
        );
        // Plain PEM (no escapes) reads the same.
        assert_eq!(
            consumer_of(WITH_SANS.as_bytes(), CertificateField::SanDns).as_deref(),
            Ok("partner-a.example.com")
        );
    }

    #[test]
    fn a_certificate_without_the_field_names_no_consumer() {
        let sent = url_encoded(CN_ONLY);
        assert_eq!(
            consumer_of(&sent, CertificateField::SanDns),
            Err(CertificateProblem::NoConsumer(CertificateField::SanDns))
        );
        assert_eq!(
            consumer_of(&sent, CertificateField::SanUri),
            Err(CertificateProblem::NoConsumer(CertificateField::SanUri))
        );
        assert_eq!(
            consumer_of(&sent, CertificateField::SubjectCn).as_deref(),
            Ok("only-a-cn")
        );
    }

    #[test]
    fn what_is_not_a_certificate_is_unreadable() {
        for sent in [
            &b""[..],
            b"%",
            b"%zz",
            b"-----BEGIN CERTIFICATE-----%0Anope%0A",
        ] {
            assert_eq!(
                consumer_of(sent, CertificateField::SubjectCn),
                Err(CertificateProblem::Unreadable),
                "{sent:?}"
            );
        }
    }
}
