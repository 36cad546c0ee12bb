//! A cluster for tests: a CA of its own, and identities it issues for
//! loopback (`127.0.0.1`, `localhost`).

use proto_schema::ca::ClusterCa;
use proto_schema::tls::TlsIdentity;

pub struct Cluster {
    pub ca: ClusterCa,
}

impl Cluster {
    pub fn new() -> Self {
        Self {
            ca: ClusterCa::generate(1).unwrap(),
        }
    }

    pub fn identity(&self, name: &str) -> TlsIdentity {
        let issued = self
            .ca
            .issue(name, &["127.0.0.1".into(), "localhost".into()], 1)
            .unwrap();
        TlsIdentity::from_pem(self.ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap()
    }
}
