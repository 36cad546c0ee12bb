//! A node's part of one of the coordinators' jobs, as `quern dev`
//! (`embedded`) and `quern node` both run it: join with a new incarnation
//! (`register`), then run the ingest pipeline on a `LeaseFeed` of the
//! job's shards into the node's store until the coordinators commit the
//! job (`run`). The node's local dataset is made from the spec the
//! coordinators hold (`for_dataset`), the inverse of `spec_of`.
//!
//! At a job's start the node asks for the dataset's partition map,
//! announcing its lanes, and waits (at most `OWNERS_START_WAIT`) until
//! every owner has started the job too: a peer opens one stream per owner
//! lane, and no shard is leased before every owner takes streams. A map
//! of one owner runs the job locally; otherwise the node dials each other
//! owner on its [`DataChannel`] and shuffles (`ingest::Owned::Shuffled`).
//!
//! A node's part counts only if it started before any of the job's shards
//! was done in the job's current attempt, and is the node's first part of
//! that attempt: the records of a done shard went to the owners that ran
//! then, and an earlier part's received records died with it (its late
//! completions may yet mark shards done), so an owner starting afresh
//! (after a failure or a restart) would stage without them, and the job
//! would commit short. Such a node asks the coordinators to run the job again
//! (`Request::Restart`: every shard read again, as the next attempt,
//! under the next map); the other nodes see the attempt move on and start
//! their parts again. A lost owner restarts its jobs the same way (the
//! leader does it). After `MAX_JOB_ATTEMPTS` the job stays uncommitted,
//! its cause in `quern status`. A job whose every shard was done when an
//! owner was lost, or restarted within its lease, reads only that owner's
//! partitions again, on a neighbour (the leader decides it when it
//! declares the node lost or registers its new incarnation); the node
//! is then no owner of the job's map, and its new part ends
//! (`JobError::NotAnOwner`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coordinator_client::{ClientError, CoordinatorClient, Transport};
use proto_schema::command::{DatasetFormat, DatasetSpec, KeySpec, Response};
use proto_schema::coordinator_api::{JobStatus, MAX_NODE_LANES, NodeRegistration, OwnerMap};
use proto_schema::ids::{Epoch, JobId, NodeId};
use proto_schema::quic::channel::ChannelEndpoint;
use proto_schema::shuffle::PartitionRange;
use tokio::runtime::Handle;

use crate::actors::LaneMap;
use crate::actors::feed::lease::{LeaseFeed, LeaseSettings, LeaseTarget};
use crate::config::{DEFAULT_PARTITIONS, Format, IngestConfig};
use crate::counters::JobCounters;
use crate::ingest::{self, IngestError, IngestOutcome, Owned};
use crate::input::roots::Roots;
use crate::shuffle::inbound::node_certificate_name;
use crate::shuffle::{Inbound, RemoteRange, ShuffleJob};
use crate::store::catalog::JobState;
use crate::store::staged::ClusterPart;
use crate::store::{Store, StoreError};

/// How long a node waits at a job's start for every owner of the
/// partition map to start the job too (to announce its lanes).
pub const OWNERS_START_WAIT: Duration = Duration::from_secs(60);
/// Between asks for the map while waiting.
const OWNERS_POLL: Duration = Duration::from_millis(200);

/// Why a node's part of a job did not run or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The map was made before this node joined: it waits for a job that
    /// starts after it.
    #[error("node {node} owns no partitions of dataset {dataset:?} under map epoch {epoch}")]
    NotAnOwner {
        node: NodeId,
        dataset: String,
        epoch: Epoch,
    },
    #[error(
        "node {node} cannot start its part of job {job}: shards are done already, and the \
         job cannot run again: {reason}"
    )]
    CannotRestart {
        node: NodeId,
        job: JobId,
        reason: String,
    },
    #[error("the partition map of dataset {dataset:?}: {reason}")]
    Map { dataset: String, reason: String },
    #[error("dialling owner node {owner} at {address:?}: {reason}")]
    Dial {
        owner: NodeId,
        address: String,
        reason: String,
    },
    /// The job moved on while the part waited for its peers to start:
    /// the node asks for work again and starts the running attempt.
    #[error(
        "job {job} moved on while node {node} waited for the other owners to start: attempt \
         {running} runs ({cause}), this part was of attempt {attempt}"
    )]
    MovedOn {
        node: NodeId,
        job: JobId,
        attempt: u32,
        running: u32,
        cause: String,
    },
    /// Stopped (`cancel` completed) before the part's stages started.
    #[error("cancelled before the part started: {0}")]
    Cancelled(String),
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

/// A node's data channel: where its peers' streams arrive, and from where
/// it dials theirs. One per node, shared by its jobs.
pub struct DataChannel {
    pub endpoint: ChannelEndpoint,
    pub inbound: Inbound,
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("node {node} could not register: {source}")]
    Client { node: NodeId, source: ClientError },
    #[error("node {node} could not register: {reason}")]
    Refused { node: NodeId, reason: String },
}

/// A new incarnation: the clock in ms, so a restart registers a higher one.
pub fn new_incarnation() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64)
}

/// Registers `node` at a new incarnation, which it returns. `address` is
/// the node's data channel; `cert_fingerprint` its certificate's.
pub async fn register<T: Transport>(
    client: &mut CoordinatorClient<T>,
    node: NodeId,
    address: String,
    cert_fingerprint: [u8; 32],
) -> Result<u64, RegisterError> {
    let incarnation = new_incarnation();
    let registration = NodeRegistration {
        node,
        incarnation,
        address,
        cert_fingerprint,
    };
    match client.register(registration).await {
        Ok(Response::NodeRegistered { .. }) => Ok(incarnation),
        Ok(other) => Err(RegisterError::Refused {
            node,
            reason: format!("{other:?}"),
        }),
        Err(source) => Err(RegisterError::Client { node, source }),
    }
}

/// The spec of a new dataset made with `config`'s name, format and
/// partitions.
pub fn spec_of(config: &IngestConfig) -> DatasetSpec {
    let (format, key) = match config.format {
        Format::Lines => (DatasetFormat::Lines, KeySpec::WholeLine),
        Format::Tsv { key_field } => (
            DatasetFormat::Tsv,
            KeySpec::Field {
                index: key_field as u32,
                delimiter: b'\t',
            },
        ),
    };
    DatasetSpec {
        name: config.dataset.clone(),
        format,
        key,
        partitions: config.partitions.unwrap_or(DEFAULT_PARTITIONS),
    }
}

/// `config` for the dataset `spec` describes; `Err` names a format nodes
/// cannot ingest yet.
pub fn for_dataset(config: IngestConfig, spec: &DatasetSpec) -> Result<IngestConfig, String> {
    let format = match (&spec.format, &spec.key) {
        (DatasetFormat::Lines, KeySpec::WholeLine) => Format::Lines,
        (DatasetFormat::Tsv, KeySpec::Field { index, delimiter }) if *delimiter == b'\t' => {
            Format::Tsv {
                key_field: *index as usize,
            }
        }
        (format, key) => {
            return Err(format!(
                "dataset {:?} is {format:?} keyed by {key:?}, which nodes cannot ingest yet",
                spec.name
            ));
        }
    };
    Ok(IngestConfig {
        dataset: spec.name.clone(),
        format,
        partitions: Some(spec.partitions),
        ..config
    })
}

/// One job for one node.
pub struct LeasedJob<T: Transport> {
    /// The feed's own connection to the coordinators.
    pub client: CoordinatorClient<T>,
    pub target: LeaseTarget,
    /// Its `data_dir` is the node's store.
    pub ingest: IngestConfig,
    /// Where the node may read: a path outside them is a rejected file.
    pub roots: Roots,
    /// Between heartbeats while the job runs.
    pub heartbeat: Duration,
    /// Recorded with the local job as what it ingests.
    pub shown_inputs: Vec<String>,
    /// Needed once the dataset's map has more than one owner.
    pub channel: Option<Arc<DataChannel>>,
}

/// Runs `job` into `store` until the coordinators commit it; the feed
/// calls them on `runtime`, which must outlive the job. If `cancel`
/// completes first, the job is aborted with its output as reason (before
/// the part's stages start, while it waits for its peers: the part ends
/// with `JobError::Cancelled`). Call from a thread outside any async
/// runtime.
pub fn run<T: Transport>(
    mut job: LeasedJob<T>,
    store: Arc<Store>,
    runtime: Handle,
    counters: Arc<JobCounters>,
    cancel: impl Future<Output = String>,
) -> Result<IngestOutcome, JobError> {
    let lanes = u16::try_from(job.ingest.threads)
        .unwrap_or(u16::MAX)
        .clamp(1, MAX_NODE_LANES);
    job.ingest.threads = usize::from(lanes);
    let mut cancel = std::pin::pin!(cancel);
    // Names this part in its partition map requests: asked again, they
    // leave its leases alone.
    let part = {
        use std::hash::{BuildHasher, Hasher};
        // Random per call: std seeds each `RandomState` afresh.
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    };
    let (attempt, began_ms, map_epoch, owned) = runtime.block_on(async {
        let setup = async {
            let (attempt, began_ms, recovering) =
                start_attempt(&mut job, &store, lanes, part).await?;
            if let Some(partitions) = recovering {
                let epoch = recovery_map(&mut job, lanes, part).await?;
                return Ok((attempt, began_ms, epoch, Owned::Only(partitions)));
            }
            let owners = wait_for_owners(&mut job, attempt, lanes, part).await?;
            // An owner that died after it announced its lanes answers no
            // dial: the part learns of the job's restart meanwhile rather
            // than at the dial's timeout.
            let dials = shuffle_job(job.channel.as_ref(), job.target, &job.ingest, &owners);
            let owned = tokio::select! {
                shuffle = dials => match shuffle? {
                    None => Owned::All,
                    Some(shuffle) => Owned::Shuffled(shuffle),
                },
                moved = until_moved_on(&mut job.client, job.target, attempt) => return Err(moved),
            };
            Ok((attempt, began_ms, owners.map.epoch, owned))
        };
        tokio::select! {
            set_up = setup => set_up,
            reason = &mut cancel => Err(JobError::Cancelled(reason)),
        }
    })?;
    let settings = LeaseSettings {
        heartbeat: job.heartbeat,
        roots: Some(job.roots),
        ..LeaseSettings::default()
    };
    let feed = Arc::new(LeaseFeed::new(
        job.client,
        job.target,
        ClusterPart {
            job: job.target.job,
            began_ms,
            attempt,
            map_epoch,
        },
        runtime,
        settings,
    ));
    let (config, shown) = (job.ingest, job.shown_inputs);
    let prepared = ingest::prepare_part(store, config, shown, feed, counters, owned)?;
    Ok(ingest::run(prepared, cancel)?)
}

/// The job's attempt this node's part runs in: the current one if none
/// of its shards is done yet and no earlier part of this node ran in it,
/// else (if the map names this node: a node left out waits for the next
/// job) the next one, asked for. With the time the job's submission
/// began, which names it in a staged part, and, for a job recovering a
/// lost owner's partitions on this node, those partitions: the part is
/// the recovery part.
///
/// An earlier part here of the same attempt (cut short, or in a process
/// that died) took records from its peers that died with it, and may have
/// completions still on their way that would mark shards done whose
/// records this part then never gets: the attempt cannot finish whole.
/// Neither can a recovery another node runs, or one that began before.
async fn start_attempt<T: Transport>(
    job: &mut LeasedJob<T>,
    store: &Store,
    lanes: u16,
    part: u64,
) -> Result<(u32, u64, Option<PartitionRange>), JobError> {
    let (node, id) = (job.target.node, job.target.job);
    let dataset = job.ingest.dataset.clone();
    let map_error = |reason: String| JobError::Map {
        dataset: dataset.clone(),
        reason,
    };
    let status = job_status(&mut job.client, id).await.map_err(map_error)?;
    let parts_here = |attempt| {
        parts_of(store, &dataset, id, status.began_ms, attempt).map_err(IngestError::from)
    };
    let ran_here = !parts_here(status.attempt)?.is_empty();
    if status.shards_done == 0 && !ran_here {
        match status.recovery {
            None => return Ok((status.attempt, status.began_ms, None)),
            // Only beside this node's part of the base attempt, staged:
            // without it the job cannot commit, and runs again whole.
            Some(recovery)
                if recovery.owner == node
                    && parts_here(recovery.base_attempt)?
                        .iter()
                        .any(|state| matches!(state, JobState::Staged | JobState::Committed)) =>
            {
                let partitions = PartitionRange::new(recovery.start.get(), recovery.end.get())
                    .ok_or_else(|| {
                        map_error(format!("node {} lost no partitions", recovery.lost))
                    })?;
                return Ok((status.attempt, status.began_ms, Some(partitions)));
            }
            Some(_) => {}
        }
    }
    let owners = job
        .client
        .partition_map(node, &dataset, id, lanes, part)
        .await
        .map_err(|e| map_error(e.to_string()))?;
    if !owners.map.nodes().contains(&node) {
        return Err(JobError::NotAnOwner {
            node,
            dataset,
            epoch: owners.map.epoch,
        });
    }
    let answer = job
        .client
        .restart(node, id, status.attempt)
        .await
        .map_err(|e| JobError::CannotRestart {
            node,
            job: id,
            reason: e.to_string(),
        })?;
    match answer {
        Response::JobRestarted { attempt, .. } => {
            tracing::warn!(%node, job = %id, attempt, "job restarted: this node starts again");
            Ok((attempt, status.began_ms, None))
        }
        other => Err(JobError::CannotRestart {
            node,
            job: id,
            reason: match other {
                Response::Error(e) => e.to_string(),
                other => format!("{other:?}"),
            },
        }),
    }
}

/// The states of the parts of `job`'s `attempt` (its submission begun at
/// `began_ms`) `store` holds: the ones this node began earlier.
fn parts_of(
    store: &Store,
    dataset: &str,
    job: JobId,
    began_ms: u64,
    attempt: u32,
) -> Result<Vec<JobState>, StoreError> {
    let Some(dataset) = store.dataset(dataset)? else {
        return Ok(Vec::new());
    };
    Ok(store
        .jobs(dataset.id)?
        .into_iter()
        .filter(|local| {
            local.cluster.is_some_and(|part| {
                (part.job, part.began_ms, part.attempt) == (job, began_ms, attempt)
            })
        })
        .map(|local| local.state)
        .collect())
}

/// The job's status as the leader has it.
async fn job_status<T: Transport>(
    client: &mut CoordinatorClient<T>,
    id: JobId,
) -> Result<JobStatus, String> {
    client
        .job(id)
        .await
        .map_err(|e| format!("asking for job {id}: {e}"))?
        .ok_or_else(|| format!("the coordinators know no job {id}"))
}

/// The epoch of the map a recovery part runs under (the one that gave
/// this node the lost owner's partitions), announcing its lanes. It waits
/// for no other owner: the others' parts are staged under the base map.
async fn recovery_map<T: Transport>(
    job: &mut LeasedJob<T>,
    lanes: u16,
    part: u64,
) -> Result<Epoch, JobError> {
    let (node, id) = (job.target.node, job.target.job);
    let dataset = job.ingest.dataset.clone();
    let owners = job
        .client
        .partition_map(node, &dataset, id, lanes, part)
        .await
        .map_err(|e| JobError::Map {
            dataset: dataset.clone(),
            reason: e.to_string(),
        })?;
    if !owners.map.nodes().contains(&node) {
        return Err(JobError::NotAnOwner {
            node,
            dataset,
            epoch: owners.map.epoch,
        });
    }
    Ok(owners.map.epoch)
}

/// The dataset's map once every owner has announced its lanes; an error
/// once the job runs an attempt other than `attempt` (restarted, or
/// recovering a lost owner's partitions): the owners waited for may never
/// start this one.
async fn wait_for_owners<T: Transport>(
    job: &mut LeasedJob<T>,
    attempt: u32,
    lanes: u16,
    part: u64,
) -> Result<OwnerMap, JobError> {
    let dataset = job.ingest.dataset.clone();
    let map_error = |reason: String| JobError::Map {
        dataset: dataset.clone(),
        reason,
    };
    let partitions = job.ingest.partitions.unwrap_or(DEFAULT_PARTITIONS);
    let (node, id) = (job.target.node, job.target.job);
    let deadline = Instant::now() + OWNERS_START_WAIT;
    loop {
        let owners = job
            .client
            .partition_map(node, &dataset, id, lanes, part)
            .await
            .map_err(|e| map_error(e.to_string()))?;
        if owners.map.partitions != partitions {
            return Err(map_error(format!(
                "{} partitions at the coordinators, {partitions} here",
                owners.map.partitions
            )));
        }
        if !owners.map.nodes().contains(&node) {
            return Err(JobError::NotAnOwner {
                node,
                dataset,
                epoch: owners.map.epoch,
            });
        }
        // Asked after the map: a map read while the job still ran
        // `attempt` is that attempt's (a restart changes both at once).
        // Without this, a part of an attempt restarted meanwhile could
        // start under the next attempt's map, its own request having just
        // counted it as started there.
        let status = job_status(&mut job.client, id).await.map_err(map_error)?;
        if let Some(moved) = moved_on(job.target, attempt, status) {
            return Err(moved);
        }
        let waiting: Vec<NodeId> = owners
            .owners
            .iter()
            .filter(|o| o.lanes.is_none())
            .map(|o| o.node)
            .collect();
        if waiting.is_empty() {
            return Ok(owners);
        }
        if Instant::now() >= deadline {
            return Err(map_error(format!(
                "owners {waiting:?} did not start job {id} within {OWNERS_START_WAIT:?}"
            )));
        }
        tokio::time::sleep(OWNERS_POLL).await;
    }
}

/// The error a part of `attempt` ends with, if the job's `status` shows
/// it running another attempt.
fn moved_on(target: LeaseTarget, attempt: u32, status: JobStatus) -> Option<JobError> {
    (status.attempt != attempt).then(|| JobError::MovedOn {
        node: target.node,
        job: target.job,
        attempt,
        running: status.attempt,
        cause: status.restarted.unwrap_or_default(),
    })
}

/// Returns once the job runs an attempt other than `attempt`, asking
/// every [`OWNERS_POLL`]: what a part races a wait against that would
/// not end by itself when the job moves on.
async fn until_moved_on<T: Transport>(
    client: &mut CoordinatorClient<T>,
    target: LeaseTarget,
    attempt: u32,
) -> JobError {
    loop {
        tokio::time::sleep(OWNERS_POLL).await;
        // A coordinator that does not answer now is asked again; the race
        // is only a shortcut, the wait has its own bound.
        if let Ok(status) = job_status(client, target.job).await
            && let Some(moved) = moved_on(target, attempt, status)
        {
            return moved;
        }
    }
}

/// This node's part in the shuffle of `owners`' map: `None` if it owns
/// every partition. Dials every other owner.
async fn shuffle_job(
    channel: Option<&Arc<DataChannel>>,
    target: LeaseTarget,
    ingest: &IngestConfig,
    owners: &OwnerMap,
) -> Result<Option<ShuffleJob>, JobError> {
    let node = target.node;
    let map = &owners.map;
    if map.ranges.len() == 1 {
        return Ok(None);
    }
    let map_error = |reason: String| JobError::Map {
        dataset: ingest.dataset.clone(),
        reason,
    };
    let channel = channel.ok_or_else(|| {
        map_error(format!(
            "{} owners, and node {node} has no data channel to shuffle on",
            map.ranges.len()
        ))
    })?;
    let range_of = |r: &proto_schema::partition_map::PartitionRange| {
        PartitionRange::new(r.start.get(), r.end.get())
            .ok_or_else(|| map_error(format!("an empty range of node {}", r.node)))
    };
    let (mut owned, mut remote, mut peers) = (None, Vec::new(), 0u64);
    for (range, owner) in map.ranges.iter().zip(&owners.owners) {
        let partitions = range_of(range)?;
        if owner.node == node {
            owned = Some(partitions);
            continue;
        }
        let dial_error = |reason: String| JobError::Dial {
            owner: owner.node,
            address: owner.address.clone(),
            reason,
        };
        let addr: SocketAddr = owner
            .address
            .parse()
            .map_err(|e| dial_error(format!("not an address: {e}")))?;
        let link = channel
            .endpoint
            .connect(addr, &node_certificate_name(owner.node))
            .await
            .map_err(|e| dial_error(e.to_string()))?;
        // The owner splits its range as it announced: one stream per lane.
        let lanes = LaneMap::over(partitions, usize::from(owner.lanes.unwrap_or(1)));
        remote.extend((0..lanes.lanes).map(|lane| RemoteRange {
            partitions: lanes.range_of(lane),
            link: link.clone(),
        }));
        peers += 1;
    }
    let owned = owned.ok_or_else(|| map_error(format!("node {node} owns no range")))?;
    let my_lanes = LaneMap::over(owned, ingest.threads).lanes as u64;
    Ok(Some(ShuffleJob {
        job: target.job,
        epoch: map.epoch,
        node,
        owned,
        remote,
        inbound: channel.inbound.clone(),
        expected_streams: peers * my_lanes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_and_the_config_made_from_it_agree() {
        for format in [Format::Lines, Format::Tsv { key_field: 3 }] {
            let config = IngestConfig {
                dataset: "logs".into(),
                format,
                partitions: Some(12),
                ..IngestConfig::default()
            };
            let spec = spec_of(&config);
            let back = for_dataset(IngestConfig::default(), &spec).unwrap();
            assert_eq!(
                (back.dataset.as_str(), back.format, back.partitions),
                ("logs", format, Some(12))
            );
        }
        let jsonl = DatasetSpec {
            name: "j".into(),
            format: DatasetFormat::Jsonl,
            key: KeySpec::JsonPointer("/id".into()),
            partitions: 4,
        };
        let refused = for_dataset(IngestConfig::default(), &jsonl).unwrap_err();
        assert!(refused.contains("cannot ingest"), "{refused}");
    }
}
