//! What the leases that passed through the faulty transports show: every
//! grant a node was answered (or would have been, had its reply not been
//! lost) and every completion accepted. A shard granted to two nodes at
//! one epoch, an epoch that does not move on with each grant, or a
//! completion accepted from a node that was not granted the shard at the
//! epoch it presented, is a violation of the leases' fencing.

use std::collections::HashMap;
use std::sync::Mutex;

use proto_schema::command::Response;
use proto_schema::coordinator_api::{Applied, LeaseReply, Reply, Request};
use proto_schema::ids::{Epoch, NodeId, ShardId};

#[derive(Default)]
pub struct Ledger {
    state: Mutex<State>,
}

/// Grants and completions kept for [`Ledger::history`]; later ones are
/// counted, not kept.
const MAX_EVENTS: usize = 4096;

#[derive(Default)]
struct State {
    holders: HashMap<(ShardId, Epoch), NodeId>,
    latest: HashMap<ShardId, Epoch>,
    grants: u64,
    completions: u64,
    violations: Vec<String>,
    /// The first `MAX_EVENTS` grants and completions, in order.
    events: Vec<String>,
}

impl Ledger {
    /// Takes note of `request` served with `reply`.
    pub fn observe(&self, request: &Request, reply: &Reply) {
        let mut state = self.state.lock().expect("not poisoned");
        match (request, reply) {
            (Request::Lease { node, .. }, Reply::Lease(LeaseReply::Leased(shards))) => {
                for leased in shards {
                    state.granted(*node, leased.shard, leased.epoch);
                }
            }
            (
                Request::Complete { node, shards },
                Reply::Written(Applied(Response::ShardsCompleted { completed, .. })),
            ) => {
                for shard in completed {
                    let presented = shards.iter().find(|(s, _)| s == shard).map(|&(_, e)| e);
                    state.completed(*node, *shard, presented);
                }
            }
            _ => {}
        }
    }

    /// Every violation seen, in order.
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().expect("not poisoned").violations.clone()
    }

    /// The grants and completions seen, in order (the first
    /// `MAX_EVENTS`): what a run that went wrong without breaking the
    /// fencing did with its shards.
    pub fn history(&self) -> Vec<String> {
        let state = self.state.lock().expect("not poisoned");
        let mut history = state.events.clone();
        let seen = state.grants + state.completions;
        if seen > history.len() as u64 {
            history.push(format!("and {} more", seen - history.len() as u64));
        }
        history
    }

    /// `(grants, completions)` seen.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.state.lock().expect("not poisoned");
        (state.grants, state.completions)
    }
}

impl State {
    fn note(&mut self, event: impl FnOnce() -> String) {
        if self.events.len() < MAX_EVENTS {
            self.events.push(event());
        }
    }

    fn granted(&mut self, node: NodeId, shard: ShardId, epoch: Epoch) {
        self.grants += 1;
        self.note(|| format!("shard {shard} granted to node {node} at epoch {epoch}"));
        if let Some(holder) = self.holders.insert((shard, epoch), node) {
            self.violations.push(format!(
                "shard {shard} granted at epoch {epoch} to node {holder} and again to node {node}"
            ));
        }
        match self.latest.get(&shard) {
            Some(&latest) if latest >= epoch => self.violations.push(format!(
                "shard {shard} granted to node {node} at epoch {epoch}, after a grant at epoch \
                 {latest}"
            )),
            _ => {
                self.latest.insert(shard, epoch);
            }
        }
    }

    fn completed(&mut self, node: NodeId, shard: ShardId, presented: Option<Epoch>) {
        self.completions += 1;
        self.note(|| format!("shard {shard} completed by node {node} at epoch {presented:?}"));
        let Some(epoch) = presented else {
            self.violations.push(format!(
                "node {node}'s completion of shard {shard} accepted, though it did not name it"
            ));
            return;
        };
        match self.holders.get(&(shard, epoch)) {
            Some(&holder) if holder == node => {}
            Some(&holder) => self.violations.push(format!(
                "node {node}'s completion of shard {shard} at epoch {epoch} accepted, but node \
                 {holder} was granted it there"
            )),
            None => self.violations.push(format!(
                "node {node}'s completion of shard {shard} at epoch {epoch} accepted, but no such \
                 grant was seen"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use proto_schema::coordinator_api::LeasedShard;
    use proto_schema::ids::{DatasetId, JobId};

    use super::*;

    fn lease(node: u64) -> Request {
        Request::Lease {
            node: NodeId(node),
            max: 4,
            job: None,
            map_epoch: None,
        }
    }

    fn leased(grants: &[(u64, u64)]) -> Reply {
        Reply::Lease(LeaseReply::Leased(
            grants
                .iter()
                .map(|&(shard, epoch)| LeasedShard {
                    shard: ShardId(shard),
                    job: JobId(1),
                    file: 0,
                    dataset_id: DatasetId(1),
                    path: "/f".into(),
                    start: 0,
                    end: 1,
                    checkpoint: 0,
                    epoch: Epoch(epoch),
                    deadline_ms: 0,
                })
                .collect(),
        ))
    }

    fn complete(node: u64, shard: u64, epoch: u64) -> (Request, Reply) {
        (
            Request::Complete {
                node: NodeId(node),
                shards: vec![(ShardId(shard), Epoch(epoch))],
            },
            Reply::Written(Applied(Response::ShardsCompleted {
                completed: vec![ShardId(shard)],
                refused: Vec::new(),
            })),
        )
    }

    #[test]
    fn grants_at_moving_epochs_and_their_holders_completions_are_clean() {
        let ledger = Ledger::default();
        ledger.observe(&lease(1), &leased(&[(10, 1), (11, 1)]));
        ledger.observe(&lease(2), &leased(&[(10, 2)]));
        let (request, reply) = complete(2, 10, 2);
        ledger.observe(&request, &reply);
        assert_eq!(ledger.violations(), Vec::<String>::new());
        assert_eq!(ledger.counts(), (3, 1));
    }

    #[test]
    fn two_holders_at_one_epoch_are_a_violation() {
        let ledger = Ledger::default();
        ledger.observe(&lease(1), &leased(&[(10, 1)]));
        ledger.observe(&lease(2), &leased(&[(10, 1)]));
        let violations = ledger.violations();
        assert!(
            violations[0].contains("to node 1 and again to node 2"),
            "{violations:?}"
        );
    }

    #[test]
    fn an_epoch_that_goes_back_is_a_violation() {
        let ledger = Ledger::default();
        ledger.observe(&lease(1), &leased(&[(10, 3)]));
        ledger.observe(&lease(2), &leased(&[(10, 2)]));
        assert!(ledger.violations()[0].contains("after a grant at epoch 3"));
    }

    #[test]
    fn a_completion_from_a_fenced_holder_is_a_violation() {
        let ledger = Ledger::default();
        ledger.observe(&lease(1), &leased(&[(10, 1)]));
        ledger.observe(&lease(2), &leased(&[(10, 2)]));
        let (request, reply) = complete(1, 10, 2);
        ledger.observe(&request, &reply);
        let (request, reply) = complete(1, 11, 1);
        ledger.observe(&request, &reply);
        let violations = ledger.violations();
        assert!(
            violations[0].contains("node 2 was granted it"),
            "{violations:?}"
        );
        assert!(violations[1].contains("no such grant"), "{violations:?}");
    }
}
