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

use std::collections::{BTreeMap, HashMap};

use proto_schema::coordinator_api::{MAX_HEARTBEAT_PROGRESS, ShardProgress};
use proto_schema::ids::{Epoch, JobId, NodeId, ShardId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLiveness {
    pub incarnation: u64,
    pub deadline_ms: u64,
    /// When this leader last heard from it (a registration, a heartbeat,
    /// any other request); `None` since a takeover, until it is heard.
    pub heard_ms: Option<u64>,
    /// Where its scanners were at its last heartbeat.
    pub progress: Vec<ShardProgress>,
    /// The part it last started, from its `PartitionMap` request.
    pub started: Option<StartedPart>,
    /// Its process's anonymous resident memory at its last heartbeat.
    pub memory_bytes: Option<u64>,
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
            self.known(node, incarnation, now_ms);
        }
    }

    /// A registration was applied: this incarnation is the live one.
    pub fn registered(&mut self, node: NodeId, incarnation: u64, now_ms: u64) {
        self.known(node, incarnation, now_ms);
        self.touch(node, now_ms);
    }

    /// `node`'s `incarnation` is live by the log: a full deadline from
    /// `now_ms`, though this leader has not heard from it yet.
    pub fn known(&mut self, node: NodeId, incarnation: u64, now_ms: u64) {
        self.nodes.insert(
            node,
            NodeLiveness {
                incarnation,
                deadline_ms: now_ms + self.duration_ms,
                heard_ms: None,
                progress: Vec::new(),
                started: None,
                memory_bytes: None,
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
        memory_bytes: Option<u64>,
        now_ms: u64,
    ) -> Option<u64> {
        let live = self.nodes.get_mut(&node)?;
        if live.incarnation != incarnation || now_ms >= live.deadline_ms {
            return None;
        }
        progress.truncate(MAX_HEARTBEAT_PROGRESS);
        live.deadline_ms = now_ms + self.duration_ms;
        live.heard_ms = Some(now_ms);
        // A heartbeat without progress (a node between jobs, or keeping
        // alive beside its job's feed) leaves the last progress shown.
        if !progress.is_empty() {
            live.progress = progress;
        }
        live.memory_bytes = memory_bytes;
        Some(live.deadline_ms)
    }

    /// The shards of `progress` that `node`'s live `incarnation` has read
    /// further into since its last report with progress (a shard, or an
    /// epoch of it, not reported before: any offset past 0). Call before
    /// `heartbeat` keeps `progress`.
    pub fn advanced(
        &self,
        node: NodeId,
        incarnation: u64,
        progress: &[ShardProgress],
    ) -> Vec<ShardId> {
        let Some(live) = self
            .nodes
            .get(&node)
            .filter(|l| l.incarnation == incarnation)
        else {
            return Vec::new();
        };
        let before: HashMap<(ShardId, Epoch), u64> = live
            .progress
            .iter()
            .map(|p| ((p.shard, p.epoch), p.offset))
            .collect();
        progress
            .iter()
            .take(MAX_HEARTBEAT_PROGRESS)
            .filter(|p| p.offset > before.get(&(p.shard, p.epoch)).copied().unwrap_or(0))
            .map(|p| p.shard)
            .collect()
    }

    /// Any other request from `node` (a lease, a renewal) is a sign of
    /// life too: extends its deadline if it is still within it.
    pub fn touch(&mut self, node: NodeId, now_ms: u64) {
        if let Some(live) = self.nodes.get_mut(&node)
            && now_ms < live.deadline_ms
        {
            live.deadline_ms = now_ms + self.duration_ms;
            live.heard_ms = Some(now_ms);
        }
    }

    /// `node` started `part`.
    pub fn started(&mut self, node: NodeId, part: StartedPart) {
        if let Some(live) = self.nodes.get_mut(&node) {
            live.started = Some(part);
        }
    }

    /// Whether `node`'s last started part is `part` of `job`: a request
    /// of a part already started (asked again, or a late copy) is no new
    /// part.
    pub fn is_started(&self, node: NodeId, job: JobId, part: u64) -> bool {
        self.nodes
            .get(&node)
            .and_then(|live| live.started)
            .is_some_and(|s| s.job == job && s.part == part)
    }

    /// `node`'s lanes, if it has started `job` under map `epoch`.
    pub fn lanes_for(&self, node: NodeId, job: JobId, epoch: Epoch) -> Option<u16> {
        match self.nodes.get(&node)?.started {
            Some(s) if s.job == job && s.epoch == epoch => Some(s.lanes),
            _ => None,
        }
    }

    /// The map epoch `node`'s current part of `job` began under, if this
    /// leader saw it begin.
    pub fn started_under(&self, node: NodeId, job: JobId) -> Option<Epoch> {
        match self.nodes.get(&node)?.started {
            Some(s) if s.job == job => Some(s.epoch),
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

    /// What `status` shows of the `limit` live nodes of lowest id, as of
    /// `now_ms`.
    pub fn view(&self, limit: usize, now_ms: u64) -> BTreeMap<NodeId, NodeView> {
        self.nodes
            .iter()
            .take(limit)
            .map(|(&node, live)| {
                let view = NodeView {
                    incarnation: live.incarnation,
                    overdue: now_ms >= live.deadline_ms,
                    silent_ms: live.heard_ms.map(|heard| now_ms.saturating_sub(heard)),
                    memory_bytes: live.memory_bytes,
                    shards_scanning: live.progress.len() as u64,
                    bytes_scanned: live.progress.iter().map(|p| p.offset).sum(),
                };
                (node, view)
            })
            .collect()
    }
}

/// A live node as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub incarnation: u64,
    /// Past its deadline, not yet declared lost.
    pub overdue: bool,
    /// Since this leader last heard from it, if it has.
    pub silent_ms: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub shards_scanning: u64,
    pub bytes_scanned: u64,
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
            nodes.heartbeat(NodeId(1), 7, progress.clone(), None, 500),
            Some(1_500)
        );
        assert_eq!(nodes.get(NodeId(1)).unwrap().progress, progress);
        assert_eq!(
            nodes.heartbeat(NodeId(1), 6, vec![], None, 600),
            None,
            "an old incarnation"
        );
        assert_eq!(
            nodes.heartbeat(NodeId(2), 1, vec![], None, 600),
            None,
            "never registered"
        );
        assert!(nodes.silent(1_499).is_empty());
        assert_eq!(nodes.silent(1_500), vec![(NodeId(1), 7)]);
        assert!(!nodes.is_live(NodeId(1), 1_500));
        assert_eq!(
            nodes.heartbeat(NodeId(1), 7, vec![], None, 1_500),
            None,
            "a node past its deadline is not revived by a late heartbeat"
        );
        nodes.registered(NodeId(1), 8, 1_600);
        assert!(nodes.is_live(NodeId(1), 2_000));
        nodes.lost(NodeId(1));
        assert!(!nodes.is_live(NodeId(1), 2_000));
    }

    #[test]
    fn a_shard_advanced_when_its_offset_moved_since_the_last_report() {
        let mut nodes = Liveness::new(1_000);
        nodes.registered(NodeId(1), 7, 0);
        let at = |shard, epoch, offset| ShardProgress {
            shard: ShardId(shard),
            epoch: Epoch(epoch),
            offset,
        };
        let first = vec![at(1, 1, 100), at(2, 1, 0)];
        assert_eq!(nodes.advanced(NodeId(1), 7, &first), vec![ShardId(1)]);
        nodes.heartbeat(NodeId(1), 7, first, None, 10);
        // Shard 1 stands still, 2 moves, 3 is new, 4 at a new epoch of 1's.
        let second = vec![at(1, 1, 100), at(2, 1, 5), at(3, 1, 9), at(1, 2, 1)];
        assert_eq!(
            nodes.advanced(NodeId(1), 7, &second),
            vec![ShardId(2), ShardId(3), ShardId(1)]
        );
        nodes.heartbeat(NodeId(1), 7, second.clone(), None, 20);
        assert!(nodes.advanced(NodeId(1), 7, &second).is_empty(), "no move");
        // A heartbeat without progress keeps the last report to compare.
        nodes.heartbeat(NodeId(1), 7, Vec::new(), None, 30);
        assert_eq!(
            nodes.advanced(NodeId(1), 7, &[at(2, 1, 6)]),
            vec![ShardId(2)]
        );
        assert!(
            nodes.advanced(NodeId(1), 6, &[at(2, 1, 60)]).is_empty(),
            "an old incarnation"
        );
        assert!(nodes.advanced(NodeId(9), 1, &[at(2, 1, 60)]).is_empty());
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
        assert!(nodes.heartbeat(NodeId(1), 1, many, None, 1).is_some());
        assert_eq!(
            nodes.get(NodeId(1)).unwrap().progress.len(),
            MAX_HEARTBEAT_PROGRESS
        );
    }

    #[test]
    fn the_view_says_when_each_node_was_heard_and_what_it_reported() {
        let mut nodes = Liveness::new(1_000);
        nodes.take_over([(NodeId(1), 4), (NodeId(2), 5), (NodeId(3), 6)], 10_000);
        let progress = vec![
            ShardProgress {
                shard: ShardId(1),
                epoch: Epoch(1),
                offset: 100,
            },
            ShardProgress {
                shard: ShardId(2),
                epoch: Epoch(1),
                offset: 20,
            },
        ];
        nodes.heartbeat(NodeId(1), 4, progress, Some(64 << 20), 10_200);
        nodes.touch(NodeId(2), 10_300);
        let view = nodes.view(10, 10_500);
        assert_eq!(
            view[&NodeId(1)],
            NodeView {
                incarnation: 4,
                overdue: false,
                silent_ms: Some(300),
                memory_bytes: Some(64 << 20),
                shards_scanning: 2,
                bytes_scanned: 120,
            }
        );
        assert_eq!(view[&NodeId(2)].silent_ms, Some(200), "a lease request");
        assert_eq!(
            view[&NodeId(3)].silent_ms,
            None,
            "not heard since the takeover"
        );
        let later = nodes.view(2, 11_250);
        assert_eq!(later.len(), 2, "the limit");
        assert!(later[&NodeId(1)].overdue && !later[&NodeId(2)].overdue);
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
/// A node's part of a job, as its `PartitionMap` request named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartedPart {
    pub job: JobId,
    /// The map epoch it began under.
    pub epoch: Epoch,
    /// The lanes it splits its partitions into (peers open a stream per
    /// lane).
    pub lanes: u16,
    /// Drawn by the part once: tells its repeated requests from a new
    /// part's.
    pub part: u64,
}
