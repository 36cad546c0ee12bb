//! Who may send Raft RPCs. The TLS handshake admits any certificate from
//! the cluster CA, clients' included, so on its own the endpoint would let
//! a client (`quern cert issue --name alice`) vote, append entries or
//! install a snapshot. A replica therefore serves a Raft RPC only from a
//! connection whose certificate is named `coord-ID`
//! (`proto_schema::cert_name`) for an ID among its configured peers, and
//! only if the RPC speaks for that same ID (a vote's candidate, an
//! append's leader): one replica's certificate cannot vote or lead as
//! another.
//! Names rather than fingerprints: only the CA's key can put a name in a
//! certificate, and a replica's certificate can be reissued without
//! reconfiguring the others. Client requests are not checked here.
//!
//! A refusal is answered (the sender's error says why), counted in
//! `quern_raft_rpc_refused_total{rpc}` and logged at a bounded rate
//! (`log_limit`).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use proto_schema::log_limit::LogLimit;
use proto_schema::quic::Peer;
use proto_schema::tls::Fingerprint;

use crate::ReplicaId;
use crate::rpc::RaftRpc;

/// Counter of Raft RPCs refused because the sender's certificate is not a
/// configured peer's (label `rpc`: `append_entries`, `vote`,
/// `install_snapshot`).
pub const RAFT_RPC_REFUSED_METRIC: &str = "quern_raft_rpc_refused_total";

/// The name of replica `id`'s certificate, the only one its peers take
/// Raft RPCs from.
pub fn certificate_name(id: ReplicaId) -> String {
    proto_schema::cert_role::coordinator_name(id)
}

/// Gives the refusal counter its help text; call once the recorder is
/// installed.
pub fn describe_metrics() {
    metrics::describe_counter!(
        RAFT_RPC_REFUSED_METRIC,
        "Raft RPCs refused because the sender's certificate is not named coord-ID for a \
         configured peer (label rpc: append_entries, vote, install_snapshot)."
    );
}

/// The certificate names a replica takes Raft RPCs from.
#[derive(Clone)]
pub struct RaftPeers {
    names: Arc<[String]>,
    log: Arc<Mutex<LogLimit>>,
}

/// A Raft RPC from a connection that is not a configured peer's.
#[derive(Debug, thiserror::Error)]
#[error(
    "refused a Raft {rpc} from {address} speaking for replica {claimed:?}: its certificate \
     ({name}, fingerprint {fingerprint}) is not that configured peer's; Raft RPCs are accepted \
     only from {allowed}, each speaking for its own id"
)]
pub struct Refused {
    rpc: &'static str,
    claimed: Option<ReplicaId>,
    address: std::net::SocketAddr,
    name: CertName,
    fingerprint: Fingerprint,
    allowed: String,
}

/// A certificate's name as logs and errors print it.
#[derive(Debug)]
struct CertName(Option<Arc<str>>);

impl fmt::Display for CertName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(name) => write!(f, "{name:?}"),
            None => f.write_str("no name"),
        }
    }
}

impl RaftPeers {
    /// Peers `ids` (this replica's own id among them, harmlessly).
    pub fn new(ids: impl IntoIterator<Item = ReplicaId>) -> Self {
        Self {
            names: ids.into_iter().map(certificate_name).collect(),
            log: Arc::default(),
        }
    }

    /// Whether `peer` may send `rpc`; a refusal is counted and logged.
    pub fn admit(&self, peer: &Peer, rpc: &RaftRpc) -> Result<(), Refused> {
        let claimed = rpc.sender();
        if let Some(name) = peer.name.as_deref()
            && self.names.iter().any(|allowed| allowed == name)
            && claimed.is_some_and(|id| certificate_name(id) == name)
        {
            return Ok(());
        }
        let refused = Refused {
            rpc: rpc.kind(),
            claimed,
            address: peer.address,
            name: CertName(peer.name.clone()),
            fingerprint: peer.fingerprint,
            allowed: self.names.join(", "),
        };
        metrics::counter!(RAFT_RPC_REFUSED_METRIC, "rpc" => refused.rpc).increment(1);
        let left_out = self.log.lock().expect("not poisoned").speak(Instant::now());
        if let Some(left_out) = left_out {
            tracing::warn!(
                remote = %peer.address,
                name = %refused.name,
                fingerprint = %peer.fingerprint,
                rpc = refused.rpc,
                claimed = ?refused.claimed,
                left_out,
                "refused a Raft RPC: the certificate is not the configured peer's it speaks for"
            );
        }
        Err(refused)
    }
}

#[cfg(test)]
mod tests {
    use openraft::Vote;

    use super::*;
    use crate::rpc::VoteRequest;

    fn peer(name: Option<&str>) -> Peer {
        Peer {
            address: "127.0.0.1:7000".parse().unwrap(),
            fingerprint: Fingerprint([7; 32]),
            name: name.map(Arc::from),
        }
    }

    fn vote_for(candidate: ReplicaId) -> RaftRpc {
        RaftRpc::Vote(VoteRequest::new(Vote::new(9, candidate), None))
    }

    #[test]
    fn only_the_configured_peers_certificates_may_send_raft_rpcs() {
        let peers = RaftPeers::new([1, 2, 3]);
        let vote = vote_for(1);
        for (name, id) in [("coord-1", 1), ("coord-3", 3)] {
            assert!(
                peers.admit(&peer(Some(name)), &vote_for(id)).is_ok(),
                "{name}"
            );
        }
        for name in [
            Some("alice"),
            Some("coord-4"),
            Some("coord-01"),
            Some(""),
            None,
        ] {
            let refused = peers.admit(&peer(name), &vote).unwrap_err().to_string();
            assert!(
                refused.contains(
                    "refused a Raft vote from 127.0.0.1:7000 speaking for replica Some(1)"
                ) && refused.contains(&Fingerprint([7; 32]).to_string())
                    && refused.contains("only from coord-1, coord-2, coord-3"),
                "{refused}"
            );
        }
        let refused = peers.admit(&peer(Some("alice")), &vote).unwrap_err();
        assert!(refused.to_string().contains("(\"alice\", "), "{refused}");
        let refused = peers.admit(&peer(None), &vote).unwrap_err();
        assert!(refused.to_string().contains("(no name, "), "{refused}");
    }

    /// A peer's certificate is good for its own id only: coord-2 can
    /// neither stand as candidate 1 nor send entries as leader 3.
    #[test]
    fn a_peer_cannot_speak_for_another_replica() {
        let peers = RaftPeers::new([1, 2, 3]);
        let coord_2 = peer(Some("coord-2"));
        assert!(peers.admit(&coord_2, &vote_for(2)).is_ok());
        let refused = peers.admit(&coord_2, &vote_for(1)).unwrap_err();
        assert!(
            refused.to_string().contains("speaking for replica Some(1)"),
            "{refused}"
        );
        let append = RaftRpc::AppendEntries(crate::rpc::AppendEntriesRequest {
            vote: Vote::new_committed(9, 3),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        });
        assert!(peers.admit(&coord_2, &append).is_err());
        assert!(peers.admit(&peer(Some("coord-3")), &append).is_ok());
    }
}
