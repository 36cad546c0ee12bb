//! Which nodes are alive, kept in the leader's memory.
//!
//! A node's heartbeats go to the leader and are never written to the Raft
//! log (a cluster of busy nodes would fill it): the leader alone tracks
//! each registered incarnation's deadline and the progress its last
//! heartbeat carried. A node silent past its deadline is declared lost
//! through the log (`DeclareNodeLost`), which sends its leases back to
//! pending. As with leases, a new leader does not know how recently the
//! old one heard from each node, so on takeover every live node gets a
//! full fresh deadline.

use std::collections::BTreeMap;

use proto_schema::coordinator_api::{MAX_HEARTBEAT_PROGRESS, ShardProgress};
use proto_schema::ids::{Epoch, JobId, NodeId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLiveness {
    pub incarnation: u64,
    pub deadline_ms: u64,
    /// Where its scanners were at its last heartbeat.
    pub progress: Vec<ShardProgress>,
    /// The job it last started, under which map epoch, and the lanes it
    /// splits its partitions into for it, from its `PartitionMap` request
    /// (peers open a stream per lane).
    pub started: Option<(JobId, Epoch, u16)>,
}

/// The leader's view of the live nodes, by id.
#[derive(Debug)]
pub struct Liveness {
    duration_ms: u64,
    nodes: BTreeMap<NodeId, NodeLiveness>,
}

impl Liveness {
    /// A node silent for `duration_ms` is due to be declared lost.
    pub fn new(duration_ms: u64) -> Self {
        Self {
            duration_ms,
            nodes: BTreeMap::new(),
        }
    }

    /// On becoming leader: the live `(node, incarnation)`s the state
    /// holds, each with a full deadline from `now_ms`.
    pub fn take_over(&mut self, live: impl IntoIterator<Item = (NodeId, u64)>, now_ms: u64) {
        self.nodes.clear();
        for (node, incarnation) in live {
            self.registered(node, incarnation, now_ms);
        }
    }

    /// A registration was applied: this incarnation is the live one.
    pub fn registered(&mut self, node: NodeId, incarnation: u64, now_ms: u64) {
        self.nodes.insert(
            node,
            NodeLiveness {
                incarnation,
                deadline_ms: now_ms + self.duration_ms,
                progress: Vec::new(),
                started: None,
            },
        );
    }

    /// A heartbeat from `node`'s `incarnation`: its new deadline, or
    /// `None` if that incarnation is not the live one (lost, replaced, or
    /// past its deadline and about to be declared lost). Progress beyond
    /// `MAX_HEARTBEAT_PROGRESS` entries is not kept.
    pub fn heartbeat(
        &mut self,
        node: NodeId,
        incarnation: u64,
        mut progress: Vec<ShardProgress>,
        now_ms: u64,
    ) -> Option<u64> {
        let live = self.nodes.get_mut(&node)?;
        if live.incarnation != incarnation || now_ms >= live.deadline_ms {
            return None;
        }
        progress.truncate(MAX_HEARTBEAT_PROGRESS);
        live.deadline_ms = now_ms + self.duration_ms;
        // A heartbeat without progress (a node between jobs, or keeping
        // alive beside its job's feed) leaves the last progress shown.
        if !progress.is_empty() {
            live.progress = progress;
        }
        Some(live.deadline_ms)
    }

    /// Any other request from `node` (a lease, a renewal) is a sign of
    /// life too: extends its deadline if it is still within it.
    pub fn touch(&mut self, node: NodeId, now_ms: u64) {
        if let Some(live) = self.nodes.get_mut(&node)
            && now_ms < live.deadline_ms
        {
            live.deadline_ms = now_ms + self.duration_ms;
        }
    }

    /// `node` started its part of `job` under map `epoch`, with `lanes`
    /// lanes.
    pub fn started(&mut self, node: NodeId, job: JobId, epoch: Epoch, lanes: u16) {
        if let Some(live) = self.nodes.get_mut(&node) {
            live.started = Some((job, epoch, lanes));
        }
    }

    /// `node`'s lanes, if it has started `job` under map `epoch`.
    pub fn lanes_for(&self, node: NodeId, job: JobId, epoch: Epoch) -> Option<u16> {
        match self.nodes.get(&node)?.started {
            Some((started, at, lanes)) if started == job && at == epoch => Some(lanes),
            _ => None,
        }
    }

    /// Whether `node`'s live incarnation is within its deadline.
    pub fn is_live(&self, node: NodeId, now_ms: u64) -> bool {
        self.nodes
            .get(&node)
            .is_some_and(|live| now_ms < live.deadline_ms)
    }

    /// Nodes past their deadline, as `(node, incarnation)`.
    pub fn silent(&self, now_ms: u64) -> Vec<(NodeId, u64)> {
        self.nodes
            .iter()
            .filter(|(_, live)| now_ms >= live.deadline_ms)
            .map(|(&node, live)| (node, live.incarnation))
            .collect()
    }

    /// The node was declared lost through the log.
    pub fn lost(&mut self, node: NodeId) {
        self.nodes.remove(&node);
    }

    pub fn get(&self, node: NodeId) -> Option<&NodeLiveness> {
        self.nodes.get(&node)
    }
}

#[cfg(test)]
mod tests {
    use proto_schema::ids::{Epoch, ShardId};

    use super::*;

    #[test]
    fn heartbeats_extend_the_live_incarnation_only() {
        let mut nodes = Liveness::new(1_000);
        nodes.registered(NodeId(1), 7, 0);
        let progress = vec![ShardProgress {
            shard: ShardId(3),
            epoch: Epoch(1),
            offset: 10,
        }];
        assert_eq!(
            nodes.heartbeat(NodeId(1), 7, progress.clone(), 500),
            Some(1_500)
        );
        assert_eq!(nodes.get(NodeId(1)).unwrap().progress, progress);
        assert_eq!(
            nodes.heartbeat(NodeId(1), 6, vec![], 600),
            None,
            "an old incarnation"
        );
        assert_eq!(
            nodes.heartbeat(NodeId(2), 1, vec![], 600),
            None,
            "never registered"
        );
        assert!(nodes.silent(1_499).is_empty());
        assert_eq!(nodes.silent(1_500), vec![(NodeId(1), 7)]);
        assert!(!nodes.is_live(NodeId(1), 1_500));
        assert_eq!(
            nodes.heartbeat(NodeId(1), 7, vec![], 1_500),
            None,
            "a node past its deadline is not revived by a late heartbeat"
        );
        nodes.registered(NodeId(1), 8, 1_600);
        assert!(nodes.is_live(NodeId(1), 2_000));
        nodes.lost(NodeId(1));
        assert!(!nodes.is_live(NodeId(1), 2_000));
    }

    #[test]
    fn progress_is_bounded() {
        let mut nodes = Liveness::new(1_000);
        nodes.registered(NodeId(1), 1, 0);
        let many = vec![
            ShardProgress {
                shard: ShardId(1),
                epoch: Epoch(1),
                offset: 0,
            };
            MAX_HEARTBEAT_PROGRESS + 5
        ];
        assert!(nodes.heartbeat(NodeId(1), 1, many, 1).is_some());
        assert_eq!(
            nodes.get(NodeId(1)).unwrap().progress.len(),
            MAX_HEARTBEAT_PROGRESS
        );
    }

    #[test]
    fn a_new_leader_gives_every_live_node_a_full_deadline() {
        let mut nodes = Liveness::new(1_000);
        nodes.registered(NodeId(9), 1, 0);
        nodes.take_over([(NodeId(1), 4), (NodeId(2), 5)], 50_000);
        assert!(nodes.get(NodeId(9)).is_none());
        assert_eq!(nodes.get(NodeId(1)).unwrap().deadline_ms, 51_000);
        assert_eq!(nodes.get(NodeId(2)).unwrap().incarnation, 5);
    }
}
