//! Lease deadlines, kept in the leader's memory.
//!
//! A grant goes through the Raft log (it changes the shard's epoch and
//! holder, which fencing relies on); renewals do not, or a cluster of busy
//! nodes would fill the log with heartbeats. So the leader alone tracks the
//! current deadline of every lease. A new leader does not know how recently
//! the old one saw each node, so on takeover it gives every lease in the
//! state a full fresh deadline: never shorter than what the old leader
//! promised. A lease past its deadline is re-granted through the log at
//! the next epoch, and reports carrying the old epoch are refused.

use std::collections::BTreeMap;

use proto_schema::command::{Command, LeaseGrant};
use proto_schema::ids::{Epoch, NodeId, ShardId};

use crate::state::{StateError, StateMachineStore};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub node: NodeId,
    pub epoch: Epoch,
    pub deadline_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenewError {
    #[error("shard {shard} has no lease")]
    NoLease { shard: ShardId },
    #[error("shard {shard}: stale epoch {presented} (current {current})")]
    StaleEpoch {
        shard: ShardId,
        presented: Epoch,
        current: Epoch,
    },
    #[error("shard {shard} is not leased to node {node}")]
    NotHolder { shard: ShardId, node: NodeId },
    #[error("shard {shard}: lease expired at {deadline_ms} ms")]
    Expired { shard: ShardId, deadline_ms: u64 },
}

/// The leader's lease deadlines, by shard.
#[derive(Debug)]
pub struct LeaseTable {
    duration_ms: u64,
    leases: BTreeMap<ShardId, Lease>,
}

impl LeaseTable {
    pub fn new(duration_ms: u64) -> Self {
        Self {
            duration_ms,
            leases: BTreeMap::new(),
        }
    }

    /// On becoming leader: `held` are the `(shard, node, epoch)` leases the
    /// state machine holds (`StateMachineStore::leased_shards`); each gets a
    /// full deadline from `now_ms`.
    pub fn take_over(
        &mut self,
        held: impl IntoIterator<Item = (ShardId, NodeId, Epoch)>,
        now_ms: u64,
    ) {
        self.leases.clear();
        self.hold(held, now_ms);
    }

    /// Adds `held` leases, each with a full deadline from `now_ms`.
    fn hold(&mut self, held: impl IntoIterator<Item = (ShardId, NodeId, Epoch)>, now_ms: u64) {
        let deadline_ms = now_ms + self.duration_ms;
        for (shard, node, epoch) in held {
            self.leases.insert(
                shard,
                Lease {
                    node,
                    epoch,
                    deadline_ms,
                },
            );
        }
    }

    /// `take_over` from the state machine, read in bounded pages.
    pub fn take_over_from(
        &mut self,
        state: &StateMachineStore,
        now_ms: u64,
    ) -> Result<usize, StateError> {
        const PAGE: usize = 1024;
        self.leases.clear();
        let mut after = ShardId(0);
        loop {
            let page = state.leased_shards(after, PAGE)?;
            let Some(&(last, _, _)) = page.last() else {
                break;
            };
            self.hold(page, now_ms);
            after = last;
        }
        Ok(self.leases.len())
    }

    /// The command that leases `shards` (each `(shard, current epoch)`)
    /// to `node`, in one log write.
    pub fn grant(&self, node: NodeId, shards: &[(ShardId, Epoch)], now_ms: u64) -> Command {
        Command::GrantLeases {
            node,
            shards: shards
                .iter()
                .map(|&(shard, expected_epoch)| LeaseGrant {
                    shard,
                    expected_epoch,
                })
                .collect(),
            deadline_ms: now_ms + self.duration_ms,
        }
    }

    /// Records a grant once it is committed (`Response::LeaseGranted`).
    pub fn granted(&mut self, shard: ShardId, node: NodeId, epoch: Epoch, deadline_ms: u64) {
        self.leases.insert(
            shard,
            Lease {
                node,
                epoch,
                deadline_ms,
            },
        );
    }

    /// Forgets a shard that completed (or can no longer be leased).
    pub fn completed(&mut self, shard: ShardId) {
        self.leases.remove(&shard);
    }

    /// Forgets every lease `node` held (its leases went back to pending
    /// through the log); returns how many.
    pub fn forget_node(&mut self, node: NodeId) -> usize {
        let before = self.leases.len();
        self.leases.retain(|_, lease| lease.node != node);
        before - self.leases.len()
    }

    pub fn get(&self, shard: ShardId) -> Option<Lease> {
        self.leases.get(&shard).copied()
    }

    /// Extends one lease; no log write. An expired lease is not revived:
    /// its shard is due for a re-grant.
    pub fn renew(
        &mut self,
        shard: ShardId,
        node: NodeId,
        epoch: Epoch,
        now_ms: u64,
    ) -> Result<u64, RenewError> {
        let duration = self.duration_ms;
        let lease = self
            .leases
            .get_mut(&shard)
            .ok_or(RenewError::NoLease { shard })?;
        if epoch != lease.epoch {
            return Err(RenewError::StaleEpoch {
                shard,
                presented: epoch,
                current: lease.epoch,
            });
        }
        if node != lease.node {
            return Err(RenewError::NotHolder { shard, node });
        }
        if now_ms >= lease.deadline_ms {
            return Err(RenewError::Expired {
                shard,
                deadline_ms: lease.deadline_ms,
            });
        }
        lease.deadline_ms = now_ms + duration;
        Ok(lease.deadline_ms)
    }

    /// A node's heartbeat: extends all its unexpired leases; returns how many.
    pub fn heartbeat(&mut self, node: NodeId, now_ms: u64) -> usize {
        let mut renewed = 0;
        for lease in self
            .leases
            .values_mut()
            .filter(|l| l.node == node && now_ms < l.deadline_ms)
        {
            lease.deadline_ms = now_ms + self.duration_ms;
            renewed += 1;
        }
        renewed
    }

    /// `node` starts its part of a job afresh: whatever it still holds is
    /// from a part that is over (it failed, or its job was restarted), and
    /// its heartbeats must not keep those leases alive. They expire now,
    /// to be re-granted (the grant moves the epoch on, fencing the old
    /// part); returns how many.
    pub fn expire_node(&mut self, node: NodeId, now_ms: u64) -> usize {
        let mut expired = 0;
        for lease in self
            .leases
            .values_mut()
            .filter(|l| l.node == node && now_ms < l.deadline_ms)
        {
            lease.deadline_ms = now_ms;
            expired += 1;
        }
        expired
    }

    /// Leases past their deadline, as `(shard, epoch)`: each is re-granted
    /// with `grant(other_node, &[(shard, epoch)], now_ms)`.
    pub fn expired(&self, now_ms: u64) -> Vec<(ShardId, Epoch)> {
        self.leases
            .iter()
            .filter(|(_, l)| now_ms >= l.deadline_ms)
            .map(|(&shard, l)| (shard, l.epoch))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use proto_schema::command::{CommandError, FileEntry, Response, ShardDone};
    use proto_schema::ids::JobId;

    use super::*;
    use crate::state::test_support::{Applier, setup_dataset};

    #[test]
    fn renewals_extend_in_memory_and_check_the_epoch() {
        let mut table = LeaseTable::new(1_000);
        table.granted(ShardId(7), NodeId(1), Epoch(3), 1_000);
        assert_eq!(table.renew(ShardId(7), NodeId(1), Epoch(3), 500), Ok(1_500));
        assert_eq!(
            table.renew(ShardId(7), NodeId(1), Epoch(2), 600),
            Err(RenewError::StaleEpoch {
                shard: ShardId(7),
                presented: Epoch(2),
                current: Epoch(3)
            })
        );
        assert_eq!(
            table.renew(ShardId(7), NodeId(2), Epoch(3), 600),
            Err(RenewError::NotHolder {
                shard: ShardId(7),
                node: NodeId(2)
            })
        );
        assert_eq!(
            table.renew(ShardId(8), NodeId(1), Epoch(1), 600),
            Err(RenewError::NoLease { shard: ShardId(8) })
        );
        assert_eq!(table.heartbeat(NodeId(1), 1_400), 1);
        assert_eq!(table.get(ShardId(7)).unwrap().deadline_ms, 2_400);
        assert!(table.expired(2_399).is_empty());
        assert_eq!(table.expired(2_400), vec![(ShardId(7), Epoch(3))]);
        assert_eq!(
            table.renew(ShardId(7), NodeId(1), Epoch(3), 2_400),
            Err(RenewError::Expired {
                shard: ShardId(7),
                deadline_ms: 2_400
            })
        );
        assert_eq!(
            table.heartbeat(NodeId(1), 2_500),
            0,
            "an expired lease is not revived by a heartbeat"
        );
    }

    /// A node starting a part afresh: its leases (and no other node's)
    /// expire at once, and its heartbeats do not revive them.
    #[test]
    fn a_node_starting_again_lets_its_leases_go() {
        let mut table = LeaseTable::new(1_000);
        table.granted(ShardId(1), NodeId(1), Epoch(2), 1_000);
        table.granted(ShardId(2), NodeId(1), Epoch(1), 1_000);
        table.granted(ShardId(3), NodeId(2), Epoch(1), 1_000);
        assert_eq!(table.expire_node(NodeId(1), 500), 2);
        let mut expired = table.expired(500);
        expired.sort();
        assert_eq!(
            expired,
            vec![(ShardId(1), Epoch(2)), (ShardId(2), Epoch(1))]
        );
        assert_eq!(table.heartbeat(NodeId(1), 600), 0);
        assert_eq!(table.heartbeat(NodeId(2), 600), 1);
    }

    #[test]
    fn a_new_leader_gives_every_held_lease_a_full_deadline() {
        let mut table = LeaseTable::new(1_000);
        table.granted(ShardId(1), NodeId(9), Epoch(1), 10);
        table.take_over(
            [
                (ShardId(4), NodeId(1), Epoch(2)),
                (ShardId(5), NodeId(2), Epoch(1)),
            ],
            50_000,
        );
        assert_eq!(
            table.get(ShardId(1)),
            None,
            "the old leader's table is not kept"
        );
        assert_eq!(
            table.get(ShardId(4)),
            Some(Lease {
                node: NodeId(1),
                epoch: Epoch(2),
                deadline_ms: 51_000
            })
        );
        assert_eq!(
            table.get(ShardId(5)),
            Some(Lease {
                node: NodeId(2),
                epoch: Epoch(1),
                deadline_ms: 51_000
            })
        );
    }

    /// The whole cycle against the state machine: grant, renew without any
    /// log entry, expire, re-grant at a higher epoch, fence the old holder.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expired_lease_is_regranted_at_a_higher_epoch_and_the_old_holder_is_fenced() {
        let mut sm = Applier::new();
        setup_dataset(&mut sm, "ds", &[1, 2]).await;
        let file = FileEntry {
            path: "a".into(),
            size: 100,
            mtime_ns: 1,
            checksum: None,
        };
        let submission = sm.submit("ds", vec![file]).await;
        assert_eq!(submission, JobId(1));
        let shard = ShardId(1);

        let mut table = LeaseTable::new(1_000);
        let grant = table.grant(NodeId(1), &[(shard, Epoch(0))], 10_000);
        let Response::LeasesGranted {
            granted,
            deadline_ms,
            node,
            ..
        } = sm.apply(grant).await
        else {
            panic!()
        };
        assert_eq!(
            (node, granted.clone(), deadline_ms),
            (NodeId(1), vec![(shard, Epoch(1))], 11_000)
        );
        let epoch = granted[0].1;
        table.granted(shard, node, epoch, deadline_ms);

        let log_before = sm.applied_count();
        assert_eq!(table.renew(shard, NodeId(1), Epoch(1), 10_900), Ok(11_900));
        assert_eq!(
            sm.applied_count(),
            log_before,
            "renewal wrote nothing to the log"
        );
        let progress = Command::ReportProgress {
            shard,
            node: NodeId(1),
            epoch: Epoch(1),
            offset: 40,
        };
        assert_eq!(
            sm.apply(progress).await,
            Response::ProgressRecorded {
                shard,
                checkpoint: 40
            }
        );

        // Node 1 goes quiet; its lease expires and node 2 gets the shard.
        let expired = table.expired(12_000);
        assert_eq!(expired, vec![(shard, Epoch(1))]);
        let regrant = table.grant(NodeId(2), &[(shard, expired[0].1)], 12_000);
        let Response::LeasesGranted {
            granted,
            deadline_ms,
            ..
        } = sm.apply(regrant.clone()).await
        else {
            panic!()
        };
        assert_eq!(granted, vec![(shard, Epoch(2))]);
        let epoch = 2;
        table.granted(shard, NodeId(2), Epoch(epoch), deadline_ms);
        assert_eq!(
            sm.state().leased_shards(ShardId(0), 10).unwrap(),
            vec![(shard, NodeId(2), Epoch(2))]
        );
        assert_eq!(
            sm.state().shard(shard).unwrap().unwrap().checkpoint,
            40,
            "the checkpoint survives the re-grant"
        );

        // A second re-grant from the same stale view loses the race: the
        // shard is passed over.
        let Response::LeasesGranted {
            granted, passed, ..
        } = sm.apply(regrant).await
        else {
            panic!()
        };
        assert_eq!((granted, passed), (vec![], vec![shard]));
        // The old holder's reports are refused; the new holder's are taken.
        let stale = Command::ReportProgress {
            shard,
            node: NodeId(1),
            epoch: Epoch(1),
            offset: 90,
        };
        assert_eq!(
            sm.apply(stale).await,
            Response::Error(CommandError::StaleEpoch {
                shard,
                presented: Epoch(1),
                current: Epoch(2)
            })
        );
        assert_eq!(
            sm.apply(Command::ReportProgress {
                shard,
                node: NodeId(1),
                epoch: Epoch(2),
                offset: 90
            })
            .await,
            Response::Error(CommandError::NotLeaseHolder {
                shard,
                node: NodeId(1)
            })
        );
        assert_eq!(
            table.renew(shard, NodeId(1), Epoch(1), 12_100),
            Err(RenewError::StaleEpoch {
                shard,
                presented: Epoch(1),
                current: Epoch(2)
            })
        );
        // One report completes what it may: the stale completion is
        // refused, the holder's taken.
        assert_eq!(
            sm.apply(Command::CompleteShards {
                node: NodeId(1),
                shards: vec![ShardDone {
                    shard,
                    epoch: Epoch(1)
                }],
            })
            .await,
            Response::ShardsCompleted {
                completed: vec![],
                refused: vec![(
                    shard,
                    CommandError::StaleEpoch {
                        shard,
                        presented: Epoch(1),
                        current: Epoch(2)
                    }
                )],
            }
        );
        assert_eq!(
            sm.apply(Command::CompleteShards {
                node: NodeId(2),
                shards: vec![ShardDone {
                    shard,
                    epoch: Epoch(2)
                }],
            })
            .await,
            Response::ShardsCompleted {
                completed: vec![shard],
                refused: vec![],
            }
        );
        assert!(
            sm.state().leased_shards(ShardId(0), 10).unwrap().is_empty(),
            "a completed shard is not leased"
        );
        let Response::LeasesGranted {
            granted, passed, ..
        } = sm
            .apply(table.grant(NodeId(1), &[(shard, Epoch(2))], 13_000))
            .await
        else {
            panic!()
        };
        assert_eq!((granted, passed), (vec![], vec![shard]), "a done shard");
        assert_eq!(
            sm.apply(table.grant(NodeId(99), &[(shard, Epoch(2))], 13_000))
                .await,
            Response::Error(CommandError::UnknownNode { id: NodeId(99) })
        );
    }
}
