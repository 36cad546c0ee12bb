//! Proposing a command through this replica's Raft, as the client API and
//! the lease desk do: check the command's bounds (nothing out of bounds
//! reaches the log), encode, propose, wait until applied here, and turn
//! "not the leader" into a redirect the caller passes on.

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use proto_schema::command::{self, Command, CommandError, Response};
use proto_schema::coordinator_api::CommandBytes;

use crate::{Raft, ReplicaId};

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// This replica is not the leader: send the command to `leader`.
    #[error("not the leader; the leader is {leader:?} at {address:?}")]
    ForwardToLeader {
        leader: Option<ReplicaId>,
        address: Option<String>,
    },
    /// Out of bounds: refused before the log.
    #[error("{0}")]
    Invalid(CommandError),
    #[error("raft: {0}")]
    Raft(String),
}

/// `ForwardToLeader` if this replica is not the leader (with the leader's
/// id and address when known), from its Raft metrics; `None` if it leads.
pub fn not_the_leader(raft: &Raft) -> Option<ProposeError> {
    let metrics = raft.metrics().borrow().clone();
    if metrics.current_leader == Some(metrics.id) {
        return None;
    }
    let leader = metrics.current_leader;
    let address = leader.and_then(|id| {
        let membership = metrics.membership_config.membership();
        membership.get_node(&id).map(|node| node.addr.clone())
    });
    Some(ProposeError::ForwardToLeader { leader, address })
}

/// `None` once this replica has confirmed with a quorum that it leads and
/// has applied everything committed before (a read index), so what it
/// reads next is what the leader has. A leader cut off and replaced still
/// thinks it leads until it hears of the newer term: without the quorum's
/// word it would answer from its stale state. Otherwise a redirect (to no
/// one known, when no quorum answered: the client asks again).
pub async fn confirm_leader(raft: &Raft) -> Option<ProposeError> {
    if let Some(forward) = not_the_leader(raft) {
        return Some(forward);
    }
    match raft.ensure_linearizable().await {
        Ok(_) => None,
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
            Some(ProposeError::ForwardToLeader {
                leader: forward.leader_id,
                address: forward.leader_node.map(|n| n.addr),
            })
        }
        Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
            Some(ProposeError::ForwardToLeader {
                leader: None,
                address: None,
            })
        }
        Err(e) => Some(ProposeError::Raft(e.to_string())),
    }
}

/// Proposes `cmd` and waits until it is committed and applied here.
pub async fn propose(raft: &Raft, cmd: &Command) -> Result<Response, ProposeError> {
    cmd.check_bounds().map_err(ProposeError::Invalid)?;
    let bytes = CommandBytes::encode(cmd);
    command::check_encoded_len(bytes.0.len()).map_err(ProposeError::Invalid)?;
    match raft.client_write(bytes).await {
        Ok(written) => Ok(written.data.0),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
            Err(ProposeError::ForwardToLeader {
                leader: forward.leader_id,
                address: forward.leader_node.map(|n| n.addr),
            })
        }
        Err(e) => Err(ProposeError::Raft(e.to_string())),
    }
}
