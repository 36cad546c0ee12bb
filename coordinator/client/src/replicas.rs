//! Each coordinator's own view (`ReplicaReport`), asked of every address
//! directly, and whether the replicas agree on what they applied.

use proto_schema::coordinator_api::{ReplicaReport, Reply, Request};
use std::collections::BTreeMap;

use crate::client::{ClientError, CoordinatorClient};
use crate::transport::{Connection, Transport};

/// Each address with its replica's report, or why it gave none.
pub type ReplicaAnswers = Vec<(String, Result<ReplicaReport, ClientError>)>;

impl<T: Transport> CoordinatorClient<T> {
    /// Each known coordinator's own view, asked directly (no redirect, no
    /// retry), in the order of the addresses; an unreachable one is an
    /// error in its place.
    pub async fn replicas(&self) -> ReplicaAnswers {
        let mut out = Vec::with_capacity(self.addresses().len());
        for address in self.addresses() {
            let report = self.ask_replica(address).await;
            out.push((address.clone(), report));
        }
        out
    }

    async fn ask_replica(&self, address: &str) -> Result<ReplicaReport, ClientError> {
        let connection = self.transport().connect(address).await?;
        match connection.request(&Request::Replica).await? {
            Reply::Replica(report) => Ok(report),
            Reply::Failed(reason) => Err(ClientError::Failed(reason)),
            Reply::Refused(refusal) => Err(ClientError::Refused(refusal)),
            _ => Err(ClientError::Unexpected),
        }
    }
}

/// Whether the replicas agree: `agree` (same applied index, same state),
/// `diverged` (some at the same index with different states),
/// `catching up` (different indexes, no conflict), or `unreachable`.
pub fn verdict(answers: &ReplicaAnswers) -> &'static str {
    let mut seen: BTreeMap<Option<u64>, (u64, u64)> = BTreeMap::new();
    for r in answers
        .iter()
        .filter_map(|(_, answer)| answer.as_ref().ok())
    {
        let state = (r.state_records, r.state_hash);
        if *seen.entry(r.last_applied).or_insert(state) != state {
            return "diverged";
        }
    }
    if answers.iter().any(|(_, answer)| answer.is_err()) {
        "unreachable"
    } else if seen.len() == 1 {
        "agree"
    } else {
        "catching up"
    }
}
