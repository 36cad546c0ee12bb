//! The cluster's certificate authority: making it, reading it back, and
//! issuing node and client certificates with it (rcgen, ECDSA P-256). Every
//! issued certificate serves both ends of a connection (server and client
//! authentication), because a node both accepts and dials.

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use time::{Duration, OffsetDateTime};

use crate::cert_name::certificate_name;
use crate::tls::{Fingerprint, TlsError, provider, read_file, read_key_file};

/// How long a new cluster CA is valid.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// How long an issued certificate is valid.
pub const DEFAULT_CERT_DAYS: u32 = 365;

/// The CA's subject, followed by a random id: issued certificates name it
/// as their issuer, and two clusters' CAs must not share a name (a
/// certificate from the other cluster is then an unknown issuer, not a bad
/// signature).
const CA_COMMON_NAME: &str = "Quern cluster CA";

/// A cluster CA with its signing key.
pub struct ClusterCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A freshly issued certificate and its key, as PEM.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub fingerprint: Fingerprint,
    pub cert_der: CertificateDer<'static>,
}

impl ClusterCa {
    /// A new CA with a new key, valid from an hour ago (clock skew) for
    /// `days` days.
    pub fn generate(days: u32) -> Result<Self, TlsError> {
        let mut id = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
            .map_err(|_| rcgen::Error::RingUnspecified)?;
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let params = ca_params(format!("{CA_COMMON_NAME} {id}"), days);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Reads `ca.pem` and `ca.key` (as written by `quern cert init`),
    /// checking that the key is the certificate's.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let bad_cert = |reason: String| TlsError::Pem {
            path: cert_path.to_owned(),
            what: "cluster CA certificate",
            reason,
        };
        let cert_pem =
            String::from_utf8(read_file(cert_path)?).map_err(|_| bad_cert("not text".into()))?;
        let key_text = String::from_utf8(read_key_file(key_path)?).map_err(|_| TlsError::Pem {
            path: key_path.to_owned(),
            what: "private key",
            reason: "not text".into(),
        })?;
        let key = KeyPair::from_pem(&key_text).map_err(|e| TlsError::Pem {
            path: key_path.to_owned(),
            what: "private key",
            reason: e.to_string(),
        })?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad_cert(e.to_string()))?;
        let common_name = certificate_name(&cert_der)
            .filter(|cn| cn.starts_with(CA_COMMON_NAME))
            .ok_or_else(|| bad_cert("not a cluster CA made by `quern cert init`".into()))?;
        let ca = Self {
            cert_pem,
            cert_der,
            // An issuer takes the subject, key usages and key id method from
            // its parameters, not their validity.
            issuer: Issuer::new(ca_params(common_name, 0), key),
        };
        // Issue a throwaway certificate and verify it as a peer would: a
        // key that is not the CA's fails the signature check.
        let probe = ca.issue("probe", &[], 1)?;
        ca.verify(&probe.cert_der).map_err(|e| TlsError::Mismatch {
            path: key_path.to_owned(),
            reason: format!(
                "certificates signed with this key do not verify against {} ({e}); \
                     is it that CA's key?",
                cert_path.display()
            ),
        })?;
        Ok(ca)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert_der)
    }

    /// A certificate for `name` (its common name and first subject
    /// alternative name) with a new key. `extra_sans` adds DNS names or IP
    /// addresses (`127.0.0.1`, `localhost`) a peer may use to reach it.
    pub fn issue(
        &self,
        name: &str,
        extra_sans: &[String],
        days: u32,
    ) -> Result<IssuedCert, TlsError> {
        let (not_before, not_after) = validity(days);
        self.issue_valid(name, extra_sans, not_before, not_after)
    }

    /// `issue`, valid from `not_before` to `not_after` (tests make
    /// expired certificates with it).
    pub fn issue_valid(
        &self,
        name: &str,
        extra_sans: &[String],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<IssuedCert, TlsError> {
        check_name(name)?;
        let mut sans = vec![name.to_owned()];
        sans.extend(extra_sans.iter().filter(|s| *s != name).cloned());
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            fingerprint: Fingerprint::of(cert.der()),
            cert_der: cert.der().clone(),
        })
    }

    /// Verifies `cert` as a server verifies a client's certificate.
    fn verify(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert_der.clone())?;
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_client_cert(cert, &[], UnixTime::now())
            .map(|_| ())
    }
}

/// The parameters of the CA's certificate. They also make the issuer: its
/// subject must be the certificate's, byte for byte.
fn ca_params(common_name: String, days: u32) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (params.not_before, params.not_after) = validity(days);
    params
}

/// A name is also a file name (`NAME.pem`) and a DNS name: letters,
/// digits, `.`, `-` and `_`, not starting with a dot.
fn check_name(name: &str) -> Result<(), TlsError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(TlsError::BadName(name.to_owned()))
    }
}

/// From an hour ago (clocks differ a little) to `days` from now.
fn validity(days: u32) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (
        now - Duration::hours(1),
        now + Duration::days(i64::from(days)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loaded_ca_issues_like_the_generated_one() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate(30).unwrap();
        let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        std::fs::write(&cert, ca.cert_pem()).unwrap();
        std::fs::write(&key, ca.key_pem()).unwrap();
        let loaded = ClusterCa::load(&cert, &key).unwrap();
        assert_eq!(loaded.fingerprint(), ca.fingerprint());
        let issued = loaded.issue("n1", &["127.0.0.1".into()], 30).unwrap();
        assert_ne!(issued.fingerprint, ca.fingerprint());
        assert!(issued.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn a_key_from_another_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ours, theirs) = (
            ClusterCa::generate(30).unwrap(),
            ClusterCa::generate(30).unwrap(),
        );
        let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        std::fs::write(&cert, ours.cert_pem()).unwrap();
        std::fs::write(&key, theirs.key_pem()).unwrap();
        let err = ClusterCa::load(&cert, &key).err().unwrap().to_string();
        assert!(
            err.contains("ca.key") && err.contains("do not verify against"),
            "{err}"
        );
    }

    #[test]
    fn a_certificate_that_is_not_a_cluster_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate(30).unwrap();
        let leaf = ca.issue("n1", &[], 30).unwrap();
        let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        std::fs::write(&cert, &leaf.cert_pem).unwrap();
        std::fs::write(&key, &leaf.key_pem).unwrap();
        let err = ClusterCa::load(&cert, &key).err().unwrap().to_string();
        assert!(
            err.contains("ca.pem") && err.contains("not a cluster CA"),
            "{err}"
        );
    }

    /// A peer verifies validity as well as the signature: an expired
    /// certificate, and one not valid yet, are refused.
    #[test]
    fn expired_and_not_yet_valid_certificates_are_refused() {
        let ca = ClusterCa::generate(30).unwrap();
        let now = OffsetDateTime::now_utc();
        let day = Duration::days(1);
        let expired = ca
            .issue_valid("n1", &[], now - 10 * day, now - day)
            .unwrap();
        let early = ca
            .issue_valid("n1", &[], now + day, now + 10 * day)
            .unwrap();
        let valid = ca.issue_valid("n1", &[], now - day, now + day).unwrap();
        let refused = |issued: &IssuedCert| ca.verify(&issued.cert_der).unwrap_err().to_string();
        assert!(
            refused(&expired).contains("expired"),
            "{}",
            refused(&expired)
        );
        assert!(
            refused(&early).contains("not valid yet"),
            "{}",
            refused(&early)
        );
        ca.verify(&valid.cert_der).unwrap();
    }

    #[test]
    fn names_must_be_dns_and_file_safe() {
        let ca = ClusterCa::generate(30).unwrap();
        for bad in ["", "../x", "a/b", ".hidden", "sp ace"] {
            assert!(
                matches!(ca.issue(bad, &[], 30), Err(TlsError::BadName(_))),
                "{bad:?}"
            );
        }
        assert!(ca.issue("node-1.example_x", &[], 30).is_ok());
    }
}
