//! Building what `quern status` shows (`StatusReport`: the Raft view, the
//! nodes and the work) and a replica's own view (`ReplicaReport`), from
//! this replica's Raft metrics, its applied state and, on the leader, the
//! lease desk's view of the live nodes.

use std::collections::BTreeMap;

use proto_schema::PartitionMap;
use proto_schema::coordinator_api::{
    DatasetStatus, JobPhase, JobRecovery, JobStatus, MAX_STATUS_NODES, MAX_WORK_ITEMS,
    MemberStatus, NodeState, NodeStatus, OwnedPartitions, ReplicaReport, StatusReport, WorkItem,
};
use proto_schema::ids::{DatasetId, Epoch, JobId, NodeId};

use crate::contacts::Contacts;
use crate::liveness::NodeView;
use crate::state::records::{self, Dataset, Job, JobState, Node};
use crate::state::{StateError, StateMachineStore};
use crate::{Raft, ReplicaId};

/// Jobs listed, newest first, across all datasets.
pub const RECENT_JOBS: usize = 50;

/// This replica's own view. Reads the whole state: blocking, and seconds
/// for millions of catalogue entries.
pub fn replica_report(raft: &Raft, state: &StateMachineStore) -> Result<ReplicaReport, StateError> {
    let metrics = raft.metrics().borrow().clone();
    let (last_applied, digest) = state.applied_digest()?;
    Ok(ReplicaReport {
        replica: metrics.id,
        leader: metrics.current_leader,
        term: metrics.current_term,
        last_log_index: metrics.last_log_index,
        last_applied,
        state_records: digest.records,
        state_hash: digest.hash,
    })
}

/// This replica's report. `seen`: the live nodes as the leader's lease
/// desk sees them (`None` on a follower, or when the desk has no current
/// view: every node not lost is then `Untracked`).
pub fn report(
    raft: &Raft,
    state: &StateMachineStore,
    contacts: &Contacts,
    seen: Option<&BTreeMap<NodeId, NodeView>>,
) -> Result<StatusReport, StateError> {
    let metrics = raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let voters: Vec<ReplicaId> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(&id, node)| {
            let is_self = id == metrics.id;
            let matched_index = match &metrics.replication {
                _ if is_self => metrics.last_log_index,
                Some(replication) => replication.get(&id).copied().flatten().map(|l| l.index),
                None => None,
            };
            MemberStatus {
                id,
                address: node.addr.clone(),
                voter: voters.contains(&id),
                matched_index,
                last_contact_ms: if is_self {
                    Some(0)
                } else {
                    contacts.since(id).map(|d| d.as_millis() as u64)
                },
            }
        })
        .collect();
    let data = StatusData::read(state)?;
    let leased = state.leased_per_job()?;
    let jobs = state
        .recent_jobs(RECENT_JOBS)?
        .into_iter()
        .map(|job| data.job_status(&job, leased.get(&job.id).copied().unwrap_or(0)))
        .collect::<Result<_, _>>()?;
    let (nodes, nodes_omitted) = data.node_list(seen);
    Ok(StatusReport {
        replica: metrics.id,
        leader: metrics.current_leader,
        term: metrics.current_term,
        last_log_index: metrics.last_log_index,
        last_applied: metrics.last_applied.map(|l| l.index),
        members,
        nodes,
        nodes_omitted,
        datasets: data
            .datasets
            .into_iter()
            .map(|d| DatasetStatus {
                format: format!("{:?}", d.spec.format).to_lowercase(),
                name: d.spec.name,
                id: d.id,
                open_submission: d.open_submission,
                files: d.live_files,
            })
            .collect(),
        jobs,
    })
}

/// One job's status, or `None` if there is no such job.
pub fn job(state: &StateMachineStore, id: JobId) -> Result<Option<JobStatus>, StateError> {
    let Some(job) = state.job(id)? else {
        return Ok(None);
    };
    let leased = state.leased_per_job()?.get(&id).copied().unwrap_or(0);
    StatusData::read(state)?.job_status(&job, leased).map(Some)
}

/// The jobs nodes may work on: submitted, neither committed nor aborted,
/// oldest first, among the `RECENT_JOBS` newest; at most `MAX_WORK_ITEMS`.
pub fn work(state: &StateMachineStore) -> Result<Vec<WorkItem>, StateError> {
    let specs: BTreeMap<DatasetId, _> = state
        .datasets()?
        .into_iter()
        .map(|d| (d.id, d.spec))
        .collect();
    let mut jobs = state.recent_jobs(RECENT_JOBS)?;
    jobs.retain(|job| job.state == JobState::Submitted);
    jobs.sort_by_key(|job| job.id);
    Ok(jobs
        .into_iter()
        .filter_map(|job| {
            let spec = specs.get(&job.dataset_id)?.clone();
            Some(WorkItem { job: job.id, spec })
        })
        .take(MAX_WORK_ITEMS)
        .collect())
}

/// What the status of nodes and jobs is read from: every dataset with
/// its partition map, and every registered node (one record each).
struct StatusData {
    datasets: Vec<Dataset>,
    maps: BTreeMap<DatasetId, PartitionMap>,
    nodes: Vec<Node>,
}

impl StatusData {
    fn read(state: &StateMachineStore) -> Result<Self, StateError> {
        let datasets = state.datasets()?;
        let mut maps = BTreeMap::new();
        for dataset in &datasets {
            if let Some(map) = state.partition_map(dataset.id)? {
                maps.insert(dataset.id, map);
            }
        }
        Ok(Self {
            datasets,
            maps,
            nodes: state.nodes()?,
        })
    }

    fn dataset_name(&self, id: DatasetId) -> String {
        self.datasets
            .iter()
            .find(|d| d.id == id)
            .map_or_else(String::new, |d| d.spec.name.clone())
    }

    /// The first `MAX_STATUS_NODES` nodes by id, and how many more there
    /// are.
    fn node_list(&self, seen: Option<&BTreeMap<NodeId, NodeView>>) -> (Vec<NodeStatus>, u64) {
        let listed = self
            .nodes
            .iter()
            .take(MAX_STATUS_NODES)
            .map(|node| self.node_status(node, seen))
            .collect();
        let omitted = self.nodes.len().saturating_sub(MAX_STATUS_NODES);
        (listed, omitted as u64)
    }

    fn node_status(&self, node: &Node, seen: Option<&BTreeMap<NodeId, NodeView>>) -> NodeStatus {
        let id = node.info.id;
        let view = seen
            .and_then(|seen| seen.get(&id))
            .filter(|view| view.incarnation == node.info.incarnation);
        let state = match view {
            _ if node.lost => NodeState::Lost,
            Some(view) if view.overdue => NodeState::Overdue,
            Some(_) => NodeState::Alive,
            None => NodeState::Untracked,
        };
        let partitions = self
            .datasets
            .iter()
            .filter_map(|dataset| {
                let map = self.maps.get(&dataset.id)?;
                let range = map.ranges.iter().find(|r| r.node == id)?;
                Some(OwnedPartitions {
                    dataset: dataset.spec.name.clone(),
                    map_epoch: map.epoch,
                    start: range.start,
                    end: range.end,
                })
            })
            .collect();
        NodeStatus {
            id,
            address: node.info.address.clone(),
            incarnation: node.info.incarnation,
            state,
            silent_ms: view.and_then(|v| v.silent_ms),
            memory_bytes: view.and_then(|v| v.memory_bytes),
            shards_scanning: view.map_or(0, |v| v.shards_scanning),
            bytes_scanned: view.map_or(0, |v| v.bytes_scanned),
            partitions,
        }
    }

    /// `job`'s status, `leased` of its shards leased now. A running job
    /// waits on its owners under the dataset's current map; a committed
    /// one shows the map it committed under (the latest any owner staged
    /// under: staging a committed job changes nothing).
    fn job_status(&self, job: &Job, leased: u64) -> Result<JobStatus, StateError> {
        let phase = match job.state {
            JobState::Submitting => JobPhase::Submitting,
            JobState::Aborted => JobPhase::Aborted,
            JobState::Committed => JobPhase::Committed,
            JobState::Submitted if job.shards_done < job.shards_total => JobPhase::Scanning,
            JobState::Submitted => JobPhase::Staging,
        };
        // Epoch 0: no map (maps start at epoch 1).
        let (epoch, owners) = match phase {
            JobPhase::Scanning | JobPhase::Staging => {
                let map = self.maps.get(&job.dataset_id);
                let epoch = map.map_or(Epoch(0), |m| m.epoch);
                let owners = records::stagers(map, || {
                    Ok(self.nodes.iter().filter(|n| !n.lost).cloned().collect())
                })?;
                (epoch, owners)
            }
            JobPhase::Committed => match &job.recovery {
                Some(recovery) => (recovery.epoch, Vec::new()),
                None => {
                    let epoch = job.staged.iter().map(|(_, _, at)| *at).max();
                    let epoch = epoch.unwrap_or(Epoch(0));
                    let owners = job
                        .staged
                        .iter()
                        .filter(|(_, _, at)| *at == epoch)
                        .map(|(node, _, _)| *node)
                        .collect();
                    (epoch, owners)
                }
            },
            JobPhase::Submitting | JobPhase::Aborted => (Epoch(0), Vec::new()),
        };
        let (mut unstaged, staged) = job.staging(&owners, epoch);
        if phase.is_final() {
            unstaged.clear();
        }
        unstaged.truncate(MAX_STATUS_NODES);
        Ok(JobStatus {
            id: job.id,
            dataset: self.dataset_name(job.dataset_id),
            began_ms: job.began_ms,
            phase,
            new: job.counts.new,
            changed: job.counts.changed,
            unchanged: job.counts.unchanged,
            gone: job.gone,
            shards_pending: job.shards_total.saturating_sub(job.shards_done + leased),
            shards_leased: leased,
            shards_done: job.shards_done,
            staged,
            map_epoch: Some(epoch).filter(|&e| e != Epoch(0)),
            unstaged,
            attempt: job.attempt,
            restarted: job.restarted.map(|cause| cause.to_string()),
            recovery: job.recovery.as_ref().map(|r| JobRecovery {
                base_attempt: r.base_attempt,
                base_epoch: r.base_epoch,
                lost: r.lost,
                owner: r.owner,
                start: r.start,
                end: r.end,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use proto_schema::command::{
        Command, DatasetFormat, DatasetSpec, FileEntry, KeySpec, NodeInfo, Response,
    };

    use super::*;
    use crate::state::test_support::Applier;

    fn view(incarnation: u64, overdue: bool) -> NodeView {
        NodeView {
            incarnation,
            overdue,
            silent_ms: Some(5),
            memory_bytes: Some(1 << 20),
            shards_scanning: 0,
            bytes_scanned: 0,
        }
    }

    /// More nodes than a report lists, all owners of one dataset: the
    /// list and a job's unstaged owners stop at `MAX_STATUS_NODES`, and the
    /// rest of the nodes are counted.
    #[tokio::test]
    async fn nodes_and_owners_past_the_limit_are_counted_not_listed() {
        let mut sm = Applier::new();
        let count = MAX_STATUS_NODES as u64 + 3;
        let ids: Vec<NodeId> = (1..=count).map(NodeId).collect();
        for &id in &ids {
            let node = NodeInfo {
                id,
                incarnation: 7,
                address: format!("n{id}:7000"),
                cert_fingerprint: [1; 32],
            };
            let registered = sm.apply(Command::RegisterNode(node)).await;
            assert!(matches!(registered, Response::NodeRegistered { .. }));
        }
        let spec = DatasetSpec {
            name: "ds".into(),
            format: DatasetFormat::Lines,
            key: KeySpec::WholeLine,
            partitions: 1024,
        };
        sm.apply(Command::CreateDataset(spec)).await;
        let map = PartitionMap::split(1024, &ids, Epoch(1));
        let assign = Command::AssignPartitions {
            dataset: "ds".into(),
            map,
        };
        assert!(matches!(
            sm.apply(assign).await,
            Response::PartitionsAssigned { .. }
        ));
        let files = (0..2)
            .map(|i| FileEntry {
                path: format!("/in/{i}"),
                size: 10,
                mtime_ns: 1,
                checksum: None,
            })
            .collect();
        let job = sm.submit("ds", files).await;

        // Node 1 is seen live, node 2 overdue, node 3 only as an older
        // incarnation: untracked, like every node the desk does not know.
        let seen = BTreeMap::from([
            (NodeId(1), view(7, false)),
            (NodeId(2), view(7, true)),
            (NodeId(3), view(6, false)),
        ]);
        let data = StatusData::read(sm.state()).unwrap();
        let (nodes, omitted) = data.node_list(Some(&seen));
        assert_eq!((nodes.len(), omitted), (MAX_STATUS_NODES, 3));
        assert_eq!(nodes.last().unwrap().id, NodeId(MAX_STATUS_NODES as u64));
        let states: Vec<NodeState> = nodes[..4].iter().map(|n| n.state).collect();
        assert_eq!(
            states,
            [
                NodeState::Alive,
                NodeState::Overdue,
                NodeState::Untracked,
                NodeState::Untracked
            ]
        );
        assert_eq!(
            (nodes[0].memory_bytes, nodes[2].memory_bytes),
            (Some(1 << 20), None)
        );
        assert_eq!(
            nodes[0].partitions,
            [OwnedPartitions {
                dataset: "ds".into(),
                map_epoch: Epoch(1),
                start: 0u16.into(),
                end: 3u16.into(),
            }]
        );

        let status = data
            .job_status(&sm.state().job(job).unwrap().unwrap(), 0)
            .unwrap();
        assert_eq!(status.phase, JobPhase::Scanning);
        assert_eq!(status.map_epoch, Some(Epoch(1)));
        assert_eq!(status.unstaged, ids[..MAX_STATUS_NODES]);
    }
}
