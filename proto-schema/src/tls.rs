//! Mutual TLS for the cluster: a process's identity (the cluster CA and its
//! own certificate and key, read from PEM files) and the rustls
//! configurations built from it. Both sides trust the cluster CA and nothing
//! else (no system roots), and a server demands a client certificate, so a
//! peer without a certificate from the cluster CA cannot talk to us.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The ALPN protocol both sides offer: a peer speaking something else is
/// refused during the handshake.
pub const ALPN: &[u8] = b"quern/1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} holds no valid PEM {what}: {reason}", path.display())]
    Pem {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("{}: {reason}", path.display())]
    Mismatch { path: PathBuf, reason: String },
    #[error("{0:?} is not a usable certificate name: use letters, digits, '.', '-' and '_'")]
    BadName(String),
    // The causes below are kept as text: their messages are part of ours,
    // and an error chain printed whole would repeat them.
    #[error("generating a certificate: {0}")]
    Generate(String),
    #[error("building the TLS configuration: {0}")]
    Config(String),
}

impl From<rcgen::Error> for TlsError {
    fn from(error: rcgen::Error) -> Self {
        Self::Generate(error.to_string())
    }
}

impl From<rustls::Error> for TlsError {
    fn from(error: rustls::Error) -> Self {
        Self::Config(error.to_string())
    }
}

impl From<rustls::server::VerifierBuilderError> for TlsError {
    fn from(error: rustls::server::VerifierBuilderError) -> Self {
        Self::Config(error.to_string())
    }
}

/// The SHA-256 of a certificate's DER bytes, written as 64 lowercase hex
/// digits. The coordinator records each node's, so a node is known by the
/// exact certificate it presents.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(cert: &CertificateDer<'_>) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
        Self(digest.as_ref().try_into().expect("SHA-256 is 32 bytes"))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a SHA-256 fingerprint (64 hex digits)");
        if text.len() != 64 || !text.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (byte, decoded) in out.iter_mut().zip(crate::hex::decode(text.as_bytes())) {
            *byte = decoded.ok_or_else(bad)?;
        }
        Ok(Self(out))
    }
}

/// Where a process's certificate files are: the cluster CA's certificate,
/// and its own certificate and key. `quern cert` writes them as
/// `DIR/ca.pem`, `DIR/NAME.pem` and `DIR/NAME.key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertPaths {
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        Self {
            ca: dir.join(CA_CERT_FILE),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
    }
}

/// The cluster CA's file names in a certificate directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";

/// A process's TLS identity: whom it trusts (the cluster CA only) and what
/// it presents (its certificate chain and key), as servers and as clients.
#[derive(Debug)]
pub struct TlsIdentity {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        Self {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsIdentity {
    /// Reads the three PEM files; errors name the file at fault.
    pub fn load(paths: &CertPaths) -> Result<Self, TlsError> {
        let ca = read_certificates(&paths.ca)?.swap_remove(0);
        let chain = read_certificates(&paths.cert)?;
        let key = read_private_key(&paths.key)?;
        Ok(Self { ca, chain, key })
    }

    /// From PEM text already in memory (errors call it `<memory>`).
    pub fn from_pem(ca: &str, cert: &str, key: &str) -> Result<Self, TlsError> {
        let source = Path::new("<memory>");
        Ok(Self {
            ca: parse_certificates(source, ca.as_bytes())?.swap_remove(0),
            chain: parse_certificates(source, cert.as_bytes())?,
            key: parse_private_key(source, key.as_bytes())?,
        })
    }

    /// The fingerprint of the certificate this process presents.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.chain[0])
    }

    /// The name of the certificate this process presents
    /// ([`certificate_name`](crate::cert_name::certificate_name)).
    pub fn name(&self) -> Option<String> {
        crate::cert_name::certificate_name(&self.chain[0])
    }

    /// When the certificate this process presents expires.
    pub fn not_after(&self) -> Option<time::OffsetDateTime> {
        crate::cert_expiry::not_after(&self.chain[0])
    }

    /// The fingerprint of the cluster CA this process trusts.
    pub fn ca_fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.ca)
    }

    /// A server that demands a client certificate issued by the cluster CA.
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let provider = provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider.clone())
                .build()?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// A client that presents this identity and trusts only servers whose
    /// certificate the cluster CA issued.
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(roots)
    }
}

/// ring, explicitly: no process-wide default provider has to be installed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.to_owned(),
        error,
    })
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    parse_certificates(path, &read_file(path)?)
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    parse_private_key(path, &read_key_file(path)?)
}

/// Reads a private key's file, warning when others than its owner may
/// read or write it (`quern cert` writes keys with mode 0600).
pub(crate) fn read_key_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    let bytes = read_file(path)?;
    if let Some(mode) = exposed_mode(path) {
        tracing::warn!(
            key = %path.display(),
            mode = format!("{mode:o}"),
            "the private key is readable beyond its owner: chmod 600 it"
        );
    }
    Ok(bytes)
}

/// The permission bits of `path`, if they give its group or others any
/// access.
fn exposed_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

/// Every certificate in a PEM file; at least one.
fn parse_certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::Pem {
        path: path.to_owned(),
        what: "certificate",
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

fn parse_private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        what: "private key",
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_print_and_parse_as_hex() {
        let fp = Fingerprint::of(&CertificateDer::from(b"not really DER".to_vec()));
        let text = fp.to_string();
        assert_eq!(text.len(), 64);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(text.parse::<Fingerprint>(), Ok(fp));
        // A sign is not a digit (`u8::from_str_radix` reads "+a" as 0x0a).
        assert!("+a".repeat(32).parse::<Fingerprint>().is_err());
        // The SHA-256 of the empty string, a known value.
        assert_eq!(
            Fingerprint::of(&CertificateDer::from(Vec::new())).to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!("abc".parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
    }

    #[test]
    fn a_key_file_others_may_read_is_exposed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("n.key");
        std::fs::write(&key, "k").unwrap();
        for (mode, exposed) in [
            (0o600, None),
            (0o400, None),
            (0o640, Some(0o640)),
            (0o604, Some(0o604)),
        ] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(exposed_mode(&key), exposed, "{mode:o}");
        }
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CertPaths::in_dir(dir.path(), "n1");
        let err = TlsIdentity::load(&paths).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        assert!(err.to_string().contains("ca.pem"), "{err}");

        std::fs::write(&paths.ca, "hello\n").unwrap();
        let err = TlsIdentity::load(&paths).unwrap_err().to_string();
        assert!(
            err.contains("ca.pem") && err.contains("no CERTIFICATE"),
            "{err}"
        );

        std::fs::write(
            &paths.ca,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = TlsIdentity::load(&paths).unwrap_err().to_string();
        assert!(
            err.contains("ca.pem") && err.contains("certificate"),
            "{err}"
        );
    }
}
