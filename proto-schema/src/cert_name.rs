//! The name a certificate carries: the single common name of its subject,
//! as `ClusterCa` writes it (`quern cert issue --name NAME`; NAME is also
//! its first DNS name). Only the holder of the CA's key can put a name in
//! a certificate the cluster trusts, so once the handshake has verified a
//! peer's certificate, its name says who the peer is. Extra subject
//! alternative names (the hosts a peer is dialled at) are not names.

use rustls::pki_types::CertificateDer;

/// The certificate's name, if it is DER webpki can parse and its subject
/// holds exactly one attribute, a UTF-8 common name.
pub fn certificate_name(cert: &CertificateDer<'_>) -> Option<String> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    single_common_name(cert.subject())
}

/// Splits one DER element off the front of `input`: (tag, content, rest).
/// Lengths up to 64 KiB; anything malformed is `None`.
pub(crate) fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    let (&first, mut input) = input.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 2 || input.len() < n {
            return None;
        }
        let (bytes, rest) = input.split_at(n);
        input = rest;
        bytes.iter().fold(0, |acc, &b| acc << 8 | usize::from(b))
    };
    (input.len() >= len).then(|| {
        let (content, rest) = input.split_at(len);
        (tag, content, rest)
    })
}

/// `subject` is the DER content of the Name sequence:
/// SET { SEQUENCE { OID 2.5.4.3, UTF8String } }.
fn single_common_name(subject: &[u8]) -> Option<String> {
    /// Splits one DER element with `tag` off the front: (content, rest).
    fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (found, content, rest) = der_element(input)?;
        (found == tag).then_some((content, rest))
    }
    const COMMON_NAME_OID: &[u8] = &[0x55, 0x04, 0x03];
    let (set, rest) = element(subject, 0x31)?;
    let (attribute, set_rest) = element(set, 0x30)?;
    let (oid, value) = element(attribute, 0x06)?;
    let (text, value_rest) = element(value, 0x0c)?;
    let single = rest.is_empty() && set_rest.is_empty() && value_rest.is_empty();
    (single && oid == COMMON_NAME_OID)
        .then(|| String::from_utf8(text.to_vec()).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::ClusterCa;

    #[test]
    fn an_issued_certificate_is_named_by_its_name_not_its_extra_sans() {
        let ca = ClusterCa::generate(1).unwrap();
        let issued = ca
            .issue("coord-7", &["127.0.0.1".into(), "coord-1".into()], 1)
            .unwrap();
        assert_eq!(
            certificate_name(&issued.cert_der).as_deref(),
            Some("coord-7")
        );
    }

    #[test]
    fn anything_else_has_no_name() {
        assert_eq!(
            certificate_name(&CertificateDer::from(b"not DER".to_vec())),
            None
        );
        // Two attributes (CN and O), and a CN that is not UTF8String.
        let two = [
            0x31, 0x09, 0x30, 0x07, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x00, //
            0x31, 0x09, 0x30, 0x07, 0x06, 0x03, 0x55, 0x04, 0x0a, 0x0c, 0x00,
        ];
        assert_eq!(single_common_name(&two), None);
        let printable = [
            0x31, 0x0a, 0x30, 0x08, 0x06, 0x03, 0x55, 0x04, 0x03, 0x13, 0x01, b'a',
        ];
        assert_eq!(single_common_name(&printable), None);
        let utf8 = [
            0x31, 0x0a, 0x30, 0x08, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x01, b'a',
        ];
        assert_eq!(single_common_name(&utf8).as_deref(), Some("a"));
    }
}
