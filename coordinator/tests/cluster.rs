//! Three coordinator replicas in one process over the in-process router,
//! written to by `coordinator_client` (the client and submission protocol
//! users run): leader loss, catch-up through a streamed snapshot,
//! redirects, and a node's leases, heartbeats and loss.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coordinator::authorize::Caller;
use coordinator::client_api::ClientApi;
use coordinator::contacts::Contacts;
use coordinator::lease::{Lease, LeaseTable};
use coordinator::lease_desk::{DEFAULT_LEASE_MS, STATUS_DESK_WAIT};
use coordinator::propose::{self, ProposeError};
use coordinator::router::Router;
use coordinator::state::records::JobState;
use coordinator::{LogStore, Member, Raft, ReplicaId, StateMachineStore};
use coordinator_client::job_wait::{self, JobEnd, WaitError};
use coordinator_client::submission::{self, AbortOutcome, SubmitError, SubmitOptions};
use coordinator_client::{CoordinatorClient, Transport};
use openraft::storage::RaftLogStorage;
use openraft::{Config, SnapshotPolicy};
use proto_schema::command::{
    Command, CommandError, DiffCounts, FileEntry, MAX_CHUNK_FILES, Response, StagedCounts,
};
use proto_schema::coordinator_api::{
    HeartbeatReply, JobPhase, LeaseReply, MAX_WORK_ITEMS, NodeRegistration, NodeState, Reply,
    Request, ShardProgress, StatusReport, WorkItem,
};
use proto_schema::ids::{Epoch, JobId, NodeId, ShardId};
use proto_schema::partition_map::PartitionMap;

mod common;
use common::{dataset, files, node};

const WAIT: Duration = Duration::from_secs(20);

struct Replica {
    raft: Raft,
    state: StateMachineStore,
    log: LogStore,
}

struct Cluster {
    router: Router,
    config: Arc<Config>,
    lease_ms: u64,
    dir: tempfile::TempDir,
    replicas: BTreeMap<ReplicaId, Replica>,
}

fn member(id: ReplicaId) -> Member {
    Member {
        addr: format!("replica-{id}"),
    }
}

impl Cluster {
    async fn start(ids: &[ReplicaId]) -> Self {
        Self::start_with_lease(ids, DEFAULT_LEASE_MS).await
    }

    async fn start_with_lease(ids: &[ReplicaId], lease_ms: u64) -> Self {
        let config = Config {
            heartbeat_interval: 50,
            election_timeout_min: 300,
            election_timeout_max: 600,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(40),
            max_in_snapshot_log_to_keep: 5,
            purge_batch_size: 1,
            // Small chunks, so a snapshot travels as many RPCs.
            snapshot_max_chunk_size: 16 * 1024,
            ..coordinator::config::raft_config().unwrap()
        };
        let mut cluster = Self {
            router: Router::default(),
            config: Arc::new(config.validate().unwrap()),
            lease_ms,
            dir: tempfile::TempDir::new().unwrap(),
            replicas: BTreeMap::new(),
        };
        for &id in ids {
            cluster.start_replica(id).await;
        }
        let members: BTreeMap<ReplicaId, Member> = ids.iter().map(|&id| (id, member(id))).collect();
        cluster.replicas[&ids[0]]
            .raft
            .initialize(members)
            .await
            .unwrap();
        cluster.leader().await;
        cluster
    }

    fn replica_dir(&self, id: ReplicaId) -> PathBuf {
        self.dir.path().join(format!("replica-{id}"))
    }

    /// Starts a replica from its directories (fresh or left by `stop`).
    async fn start_replica(&mut self, id: ReplicaId) {
        let dir = self.replica_dir(id);
        let log = LogStore::open(&dir.join("log")).unwrap();
        let state = StateMachineStore::open(&dir.join("state")).unwrap();
        let raft = Raft::new(
            id,
            self.config.clone(),
            self.router.for_replica(id),
            log.clone(),
            state.clone(),
        )
        .await
        .unwrap();
        let api = ClientApi::new(
            raft.clone(),
            state.clone(),
            self.lease_ms,
            Contacts::default(),
        );
        self.router.add(id, member(id).addr, api);
        self.replicas.insert(id, Replica { raft, state, log });
    }

    /// Takes a replica off the network and shuts it down.
    async fn stop(&mut self, id: ReplicaId) {
        self.router.remove(id);
        let replica = self.replicas.remove(&id).unwrap();
        replica.raft.shutdown().await.unwrap();
    }

    fn raft(&self, id: ReplicaId) -> &Raft {
        &self.replicas[&id].raft
    }

    /// The leader the live replicas agree on.
    async fn leader(&self) -> ReplicaId {
        let deadline = Instant::now() + WAIT;
        loop {
            let leaders: Vec<Option<ReplicaId>> = self
                .replicas
                .values()
                .map(|r| r.raft.metrics().borrow().current_leader)
                .collect();
            if let Some(Some(leader)) = leaders.first()
                && leaders.iter().all(|l| *l == Some(*leader))
                && self.replicas.contains_key(leader)
            {
                return *leader;
            }
            assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A client knowing every live replica's address.
    fn client(&self) -> CoordinatorClient<Router> {
        let addresses = self.replicas.keys().map(|&id| member(id).addr).collect();
        CoordinatorClient::new(self.router.clone(), addresses).with_retry_window(WAIT)
    }

    /// Writes through the leader, following redirects.
    async fn write(&self, cmd: &Command) -> Response {
        self.client().write(cmd).await.expect("write")
    }

    /// Proposes `cmd` on the leader itself, as its lease desk proposes
    /// grants (clients may not send them).
    async fn propose(&self, cmd: &Command) -> Response {
        let leader = self.leader().await;
        propose::propose(self.raft(leader), cmd)
            .await
            .expect("proposed")
    }

    /// Waits until every live replica applied the leader's last entry.
    async fn converge(&self) -> u64 {
        let leader = self.leader().await;
        let index = self.raft(leader).metrics().borrow().last_log_index.unwrap();
        for replica in self.replicas.values() {
            replica
                .raft
                .wait(Some(WAIT))
                .applied_index_at_least(Some(index), "converge")
                .await
                .unwrap();
        }
        index
    }
}

/// Node `node`'s registration at `incarnation`.
fn node_registration(node: u64, incarnation: u64) -> NodeRegistration {
    NodeRegistration {
        node: NodeId(node),
        incarnation,
        address: format!("10.0.0.{node}:7000"),
        cert_fingerprint: [node as u8; 32],
    }
}

/// Submits a manifest in chunks of at most `chunk` files.
/// A job of `shards` one-file shards into a new dataset "ds", submitted
/// once `nodes` (incarnation 5) have registered, and the map each of them
/// got for it (the first's returned).
async fn job_mapped_over<T: Transport>(
    cluster: &Cluster,
    client: &mut CoordinatorClient<T>,
    nodes: &[u64],
    shards: usize,
) -> (JobId, PartitionMap) {
    for &node in nodes {
        let registered = client.register(node_registration(node, 5)).await.unwrap();
        assert!(matches!(registered, Response::NodeRegistered { .. }));
    }
    cluster.write(&dataset("ds")).await;
    let job = submit(cluster, "ds", files(shards), shards).await;
    let mut maps = Vec::new();
    for &node in nodes {
        let asked = client.partition_map(NodeId(node), "ds", job, 2, node).await;
        maps.push(asked.unwrap().map);
    }
    (job, maps.swap_remove(0))
}

/// Node 1 leases every one of `job`'s `shards` under map `epoch` and
/// completes them.
async fn read_every_shard<T: Transport>(
    client: &mut CoordinatorClient<T>,
    job: JobId,
    epoch: Epoch,
    shards: usize,
) {
    let LeaseReply::Leased(leased) = client
        .lease(NodeId(1), 100, Some((job, epoch)))
        .await
        .unwrap()
    else {
        panic!("no lease")
    };
    assert_eq!(leased.len(), shards);
    let done = leased.iter().map(|l| (l.shard, l.epoch)).collect();
    client.complete_shards(NodeId(1), done).await.unwrap();
}

/// Counts an owner stages, none rejected.
fn counts(read: u64, unique: u64, duplicates: u64) -> StagedCounts {
    StagedCounts {
        read,
        unique,
        duplicates,
        rejected: 0,
    }
}

async fn submit(cluster: &Cluster, name: &str, files: Vec<FileEntry>, chunk: usize) -> JobId {
    let options = SubmitOptions {
        max_chunk_files: chunk,
        ..SubmitOptions::default()
    };
    let entries = files.into_iter().map(Ok);
    let done = submission::submit(&mut cluster.client(), name, entries, &options, |_| {})
        .await
        .expect("submitted");
    done.submission
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_is_elected_and_no_committed_command_is_lost() {
    let mut cluster = Cluster::start(&[1, 2, 3]).await;
    for id in 1..=20 {
        assert_eq!(
            cluster.write(&node(id)).await,
            Response::NodeRegistered {
                id: NodeId(id),
                incarnation: 1,
                released: 0
            }
        );
    }
    cluster.write(&dataset("ds")).await;
    let submission = submit(&cluster, "ds", files(300), 50).await;

    let old = cluster.leader().await;
    cluster.stop(old).await;
    let started = Instant::now();
    let new = cluster.leader().await;
    eprintln!("new leader {new} after {:?}", started.elapsed());
    assert_ne!(new, old);

    // Every acknowledged command is in the new leader's state, and the
    // cluster keeps taking writes.
    assert_eq!(
        cluster.write(&node(21)).await,
        Response::NodeRegistered {
            id: NodeId(21),
            incarnation: 1,
            released: 0
        }
    );
    cluster.converge().await;
    for replica in cluster.replicas.values() {
        for id in 1..=21 {
            let known = replica.state.node(NodeId(id)).unwrap();
            assert!(known.is_some(), "node {id} lost");
        }
        let job = replica.state.job(submission).unwrap().unwrap();
        assert_eq!((job.counts.new, job.shards_total), (300, 300));
    }
    let digests: Vec<_> = cluster
        .replicas
        .values()
        .map(|r| r.state.digest().unwrap())
        .collect();
    assert_eq!(digests[0], digests[1]);
}

/// A leader cut off from its peers and clients, and replaced, still
/// thinks it leads until it hears of the newer term: a client on its side
/// of the partition is redirected, not answered from its stale state, when
/// it asks for a job or for work. Once it rejoins it follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_leader_answers_no_reads_from_its_stale_state() {
    let cluster = Cluster::start(&[1, 2, 3]).await;
    cluster.write(&node(1)).await;
    cluster.write(&dataset("ds")).await;
    let old = cluster.leader().await;
    let cut_off = ClientApi::new(
        cluster.raft(old).clone(),
        cluster.replicas[&old].state.clone(),
        cluster.lease_ms,
        Contacts::default(),
    );
    cluster.router.isolate(old);
    // The others elect a leader, and a job is submitted to it.
    let job = submit(&cluster, "ds", files(3), 10).await;
    let metrics = cluster.raft(old).metrics().borrow().clone();
    assert_eq!(
        metrics.current_leader,
        Some(old),
        "the cut-off replica still thinks it leads"
    );
    let asked = cut_off
        .answer(&Caller::InProcess, &Request::Job { job })
        .await;
    assert!(matches!(asked, Reply::NotLeader { .. }), "{asked:?}");
    let asked = cut_off
        .answer(&Caller::InProcess, &Request::Work { node: NodeId(1) })
        .await;
    assert!(matches!(asked, Reply::NotLeader { .. }), "{asked:?}");

    cluster.router.rejoin(old);
    let new = cluster.leader().await;
    assert_ne!(new, old);
    let status = cluster.client().job(job).await.unwrap().unwrap();
    assert_eq!(status.phase, JobPhase::Scanning);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_missed_purged_entries_catches_up_through_a_snapshot() {
    let mut cluster = Cluster::start(&[1, 2, 3]).await;
    cluster.write(&dataset("ds")).await;
    let leader = cluster.leader().await;
    let follower = *cluster.replicas.keys().find(|&&id| id != leader).unwrap();
    let missed_from = cluster.converge().await;
    cluster.stop(follower).await;

    // Far more entries than the snapshot policy keeps in the log.
    for id in 1..=30 {
        cluster.write(&node(id)).await;
    }
    submit(&cluster, "ds", files(3000), 40).await;
    let last = cluster.converge().await;
    let leader = cluster.leader().await;
    // Snapshots are built, and the log purged, in the background.
    let mut log = cluster.replicas[&leader].log.clone();
    let deadline = Instant::now() + WAIT;
    let purged = loop {
        let purged = log
            .get_log_state()
            .await
            .unwrap()
            .last_purged_log_id
            .map_or(0, |id| id.index);
        if purged > missed_from + 40 {
            break purged;
        }
        assert!(
            Instant::now() < deadline,
            "the leader purged only up to {purged}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let started = Instant::now();
    cluster.start_replica(follower).await;
    cluster
        .raft(follower)
        .wait(Some(WAIT))
        .applied_index_at_least(Some(last), "catch up")
        .await
        .unwrap();
    let caught_up = started.elapsed();

    let snapshot = cluster
        .raft(follower)
        .metrics()
        .borrow()
        .snapshot
        .expect("the follower installed a snapshot");
    assert!(
        snapshot.index > missed_from,
        "snapshot at {} is past what the follower had",
        snapshot.index
    );
    let leader_state = &cluster.replicas[&leader].state;
    let digest = leader_state.digest().unwrap();
    assert_eq!(cluster.replicas[&follower].state.digest().unwrap(), digest);
    eprintln!(
        "follower caught up in {caught_up:?} through the snapshot at index {} (log at {last}, purged to {purged}); \
         state {} records; leader's last snapshot {:?}",
        snapshot.index,
        digest.records,
        leader_state.last_snapshot_stats(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_follower_is_redirected_to_the_leader() {
    let cluster = Cluster::start(&[1, 2, 3]).await;
    let leader = cluster.leader().await;
    let follower = *cluster.replicas.keys().find(|&&id| id != leader).unwrap();
    match propose::propose(cluster.raft(follower), &node(1)).await {
        Err(ProposeError::ForwardToLeader {
            leader: Some(to),
            address,
        }) => {
            assert_eq!(to, leader);
            assert_eq!(address, Some(member(leader).addr));
            assert_eq!(
                propose::propose(cluster.raft(to), &node(1)).await.unwrap(),
                Response::NodeRegistered {
                    id: NodeId(1),
                    incarnation: 1,
                    released: 0
                }
            );
        }
        other => panic!("expected a redirect, got {other:?}"),
    }
}

/// `Work` lists at most `MAX_WORK_ITEMS` jobs, the oldest: a node takes
/// them one at a time and asks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_lists_the_oldest_submitted_jobs_within_its_bound() {
    let cluster = Cluster::start(&[1]).await;
    let mut jobs = Vec::new();
    for d in 0..=MAX_WORK_ITEMS {
        let name = format!("d{d}");
        cluster.write(&dataset(&name)).await;
        jobs.push(submit(&cluster, &name, files(1), 1).await);
    }
    let listed: Vec<JobId> = cluster
        .client()
        .work(NodeId(1))
        .await
        .unwrap()
        .into_iter()
        .map(|item| item.job)
        .collect();
    assert_eq!(listed, jobs[..MAX_WORK_ITEMS]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_chunk_aborts_the_submission_and_frees_the_dataset() {
    let cluster = Cluster::start(&[1, 2, 3]).await;
    cluster.write(&node(1)).await;
    cluster.write(&dataset("ds")).await;
    let mut client = cluster.client();
    let options = SubmitOptions {
        chunks_in_flight: 4,
        ..SubmitOptions::default()
    };

    // Several commands in flight at once; a path repeated (in path order,
    // as `submit` takes an inventory).
    let mut manifest = files(MAX_CHUNK_FILES + 100);
    manifest.insert(11, manifest[10].clone());
    let entries = manifest.into_iter().map(Ok);
    let refused = submission::submit(&mut client, "ds", entries, &options, |_| {}).await;
    match refused {
        Err(SubmitError::Abandoned {
            outcome: AbortOutcome::Aborted,
            error,
            ..
        }) => match *error {
            SubmitError::DuplicatePath { path } => assert_eq!(path, files(11)[10].path),
            other => panic!("expected a duplicate path, got {other:?}"),
        },
        other => panic!("expected an aborted submission, got {other:?}"),
    }

    let n = MAX_CHUNK_FILES as u64 + 100;
    let entries = files(n as usize).into_iter().map(Ok);
    let done = submission::submit(&mut client, "ds", entries, &options, |_| {})
        .await
        .unwrap();
    assert_eq!(
        (done.counts, done.gone, done.pending_shards),
        (
            DiffCounts {
                new: n,
                changed: 0,
                unchanged: 0
            },
            0,
            n
        ),
        "the aborted submission left nothing the diff sees"
    );
    cluster.converge().await;
    for replica in cluster.replicas.values() {
        let before = JobId(done.submission.get() - 1);
        let aborted = replica.state.job(before).unwrap().unwrap();
        assert_eq!(aborted.state, JobState::Aborted);
        let dataset = replica.state.dataset("ds").unwrap().unwrap();
        assert_eq!(
            (
                dataset.open_submission,
                dataset.last_finished,
                dataset.live_files
            ),
            (None, done.submission, n)
        );
    }
}

/// A re-submission sent by digest (the default once a dataset has a
/// finished submission) finds what the same inventory sent by files
/// finds, on every replica, in fewer log entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubmission_by_digest_finds_what_one_by_files_finds() {
    let cluster = Cluster::start(&[1, 2, 3]).await;
    cluster.write(&node(1)).await;
    let first = files(3000);
    // Every 197th file changed, every 211th gone, a few new.
    let mut second: Vec<FileEntry> = first
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 211 != 5)
        .map(|(i, f)| FileEntry {
            size: f.size + u64::from(i % 197 == 3),
            ..f.clone()
        })
        .collect();
    second.extend((0..7).map(|i| FileEntry {
        path: format!("/srv/new/{i}"),
        ..first[0].clone()
    }));
    second.sort_by(|a, b| a.path.cmp(&b.path));

    let mut found = Vec::new();
    for (name, by_digest) in [("by-digest", true), ("by-files", false)] {
        cluster.write(&dataset(name)).await;
        submit(&cluster, name, first.clone(), 50).await;
        let before = cluster.converge().await;
        let options = SubmitOptions {
            max_chunk_files: 50,
            by_digest,
            ..SubmitOptions::default()
        };
        let entries = second.clone().into_iter().map(Ok);
        let done = submission::submit(&mut cluster.client(), name, entries, &options, |_| {})
            .await
            .expect("submitted");
        let entries = cluster.converge().await - before;
        found.push((done.counts, done.gone, done.pending_shards, entries));
    }
    let changed = (0..3000).filter(|i| i % 197 == 3 && i % 211 != 5).count() as u64;
    let gone = (0..3000).filter(|i| i % 211 == 5).count() as u64;
    let expected = (
        DiffCounts {
            new: 7,
            changed,
            unchanged: 3000 - gone - changed,
        },
        gone,
        7 + changed,
    );
    for (counts, gone, pending, _) in &found {
        assert_eq!((*counts, *gone, *pending), expected);
    }
    let (by_digest, by_files) = (found[0].3, found[1].3);
    assert!(
        by_digest * 2 < by_files,
        "{by_digest} log entries by digest, {by_files} by files"
    );
    let digests: Vec<_> = cluster
        .replicas
        .values()
        .map(|r| r.state.digest().unwrap())
        .collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_leader_change_and_stale_epochs_are_fenced() {
    let mut cluster = Cluster::start(&[1, 2, 3]).await;
    for id in [1, 2] {
        cluster.write(&node(id)).await;
    }
    cluster.write(&dataset("ds")).await;
    submit(&cluster, "ds", files(3), 3).await;
    let shard = ShardId(1);

    let old = cluster.leader().await;
    let mut table = LeaseTable::new(10_000);
    let Response::LeasesGranted {
        node,
        granted,
        deadline_ms,
        ..
    } = cluster
        .propose(&table.grant(NodeId(1), &[(shard, Epoch(0))], 1_000))
        .await
    else {
        panic!("grant refused")
    };
    assert_eq!(granted, vec![(shard, Epoch(1))]);
    table.granted(shard, node, Epoch(1), deadline_ms);
    cluster.converge().await;
    cluster.stop(old).await;

    // The new leader rebuilds its table from the replicated state, with a
    // full deadline from its own takeover.
    let new = cluster.leader().await;
    let mut table = LeaseTable::new(10_000);
    assert_eq!(
        table
            .take_over_from(&cluster.replicas[&new].state, 50_000)
            .unwrap(),
        1
    );
    assert_eq!(
        table.get(shard),
        Some(Lease {
            node: NodeId(1),
            epoch: Epoch(1),
            deadline_ms: 60_000
        })
    );

    // Renewals touch no log.
    let log_index = cluster.raft(new).metrics().borrow().last_log_index;
    for now in [55_000, 60_000, 65_000] {
        table.renew(shard, NodeId(1), Epoch(1), now).unwrap();
    }
    assert_eq!(
        cluster.raft(new).metrics().borrow().last_log_index,
        log_index
    );

    // Node 1 goes quiet; the shard goes to node 2 at epoch 2.
    assert_eq!(table.expired(75_000), vec![(shard, Epoch(1))]);
    let regrant = table.grant(NodeId(2), &[(shard, Epoch(1))], 75_000);
    assert!(matches!(
        cluster.propose(&regrant).await,
        Response::LeasesGranted { node: NodeId(2), granted, .. } if granted == vec![(shard, Epoch(2))]
    ));
    let mut client = cluster.client();
    assert_eq!(
        client
            .report_progress(NodeId(1), shard, Epoch(1), 10)
            .await
            .unwrap(),
        Response::Error(CommandError::StaleEpoch {
            shard,
            presented: Epoch(1),
            current: Epoch(2)
        })
    );
    assert_eq!(
        client
            .report_progress(NodeId(2), shard, Epoch(2), 10)
            .await
            .unwrap(),
        Response::ProgressRecorded {
            shard,
            checkpoint: 10
        }
    );
}

/// `status` waits at most `STATUS_DESK_WAIT` for the lease desk: while a
/// registration holds it (the leader lost its followers, so nothing
/// commits), the nodes are listed from their records, untracked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_the_nodes_untracked_while_the_lease_desk_is_busy() {
    let mut cluster = Cluster::start(&[1, 2, 3]).await;
    let mut client = cluster.client();
    let registration = |node: u64| NodeRegistration {
        node: NodeId(node),
        incarnation: 1,
        address: format!("10.0.0.{node}:7000"),
        cert_fingerprint: [node as u8; 32],
    };
    client.register(registration(1)).await.unwrap();
    let status = client.status().await.unwrap();
    assert_eq!(status.nodes[0].state, NodeState::Alive);

    let leader = cluster.leader().await;
    let followers: Vec<ReplicaId> = cluster
        .replicas
        .keys()
        .copied()
        .filter(|&id| id != leader)
        .collect();
    for id in followers {
        cluster.stop(id).await;
    }
    let mut stuck = cluster.client();
    let held = tokio::spawn(async move { stuck.register(registration(2)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    let status = cluster.client().status().await.unwrap();
    assert!(asked.elapsed() >= STATUS_DESK_WAIT, "{:?}", asked.elapsed());
    assert_eq!(status.leader, Some(leader));
    let nodes: Vec<_> = status.nodes.iter().map(|n| (n.id, n.state)).collect();
    assert_eq!(nodes, [(NodeId(1), NodeState::Untracked)]);
    assert_eq!(status.nodes[0].silent_ms, None);
    assert!(!held.is_finished(), "the registration cannot commit");
    held.abort();
}

/// A node's life as the leader sees it: registered with an incarnation,
/// leases granted several per log write and numbered by the manifest,
/// heartbeats and renewals without a log write, completions batched; a
/// node silent past the lease time is declared lost through the log, its
/// shards leased again at the next epoch, its late reports fenced, its
/// lost incarnation refused; the job commits once every shard is done and
/// every live node staged counts that reconcile. `status` follows it: the
/// nodes (alive, lost, overdue, their memory and partitions) and the job's
/// phase with the owners it waits on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_lease_in_batches_heartbeat_without_the_log_and_the_silent_one_is_lost() {
    const LEASE_MS: u64 = 1_000;
    let cluster = Cluster::start_with_lease(&[1], LEASE_MS).await;
    let mut client = cluster.client();
    let registration = node_registration;
    for node in [1, 2] {
        assert_eq!(
            client.register(registration(node, 5)).await.unwrap(),
            Response::NodeRegistered {
                id: NodeId(node),
                incarnation: 5,
                released: 0
            }
        );
    }
    cluster.write(&dataset("ds")).await;
    assert_eq!(client.work(NodeId(1)).await.unwrap(), vec![], "no job yet");
    let status = client.status().await.unwrap();
    assert_eq!(status.nodes_omitted, 0);
    let listed: Vec<_> = status
        .nodes
        .iter()
        .map(|n| (n.id, n.address.as_str(), n.incarnation, n.state))
        .collect();
    assert_eq!(
        listed,
        [
            (NodeId(1), "10.0.0.1:7000", 5, NodeState::Alive),
            (NodeId(2), "10.0.0.2:7000", 5, NodeState::Alive)
        ]
    );
    assert!(
        status.nodes[0].silent_ms.unwrap() < LEASE_MS,
        "registered just now"
    );
    assert!(
        status.nodes.iter().all(|n| n.partitions.is_empty()),
        "no map yet"
    );
    let manifest = files(10);
    let job = submit(&cluster, "ds", manifest.clone(), 4).await;
    let job_status = |status: &StatusReport| {
        status
            .jobs
            .iter()
            .find(|j| j.id == job)
            .cloned()
            .expect("the job is listed")
    };
    // A wait for its commit runs out, naming the shards it waits on.
    let mut reads = 0;
    let end = job_wait::wait_for_end(
        &mut client,
        job,
        Duration::from_millis(300),
        Duration::from_millis(50),
        |_| reads += 1,
    )
    .await
    .unwrap();
    let JobEnd::TimedOut(Some(last)) = end else {
        panic!("{end:?}")
    };
    assert_eq!((last.phase, last.shards_pending), (JobPhase::Scanning, 10));
    assert!(reads >= 2, "read every poll: {reads}");
    assert!(matches!(
        job_wait::wait_for_end(&mut client, JobId(999), WAIT, WAIT, |_| {}).await,
        Err(WaitError::UnknownJob(JobId(999)))
    ));
    let scanning = job_status(&client.status().await.unwrap());
    assert_eq!(scanning.phase, JobPhase::Scanning);
    assert_eq!((scanning.shards_pending, scanning.shards_leased), (10, 0));
    assert_eq!(
        (scanning.map_epoch, scanning.unstaged),
        (None, vec![NodeId(1), NodeId(2)]),
        "without a map, every live node stages"
    );
    // A node finds the job, with its dataset's spec, until it commits.
    let Command::CreateDataset(spec) = dataset("ds") else {
        unreachable!()
    };
    assert_eq!(
        client.work(NodeId(1)).await.unwrap(),
        vec![WorkItem { job, spec }]
    );
    let raft = cluster.raft(cluster.leader().await).clone();
    let log_index = || raft.metrics().borrow().last_log_index.unwrap();

    // Each node starts its part (before leasing: a node asking with a new
    // part id starts a new part, and its leases expire). Contiguous partition
    // ranges over the live nodes, at epoch 1, the same map while they
    // stay live.
    let first_map = client
        .partition_map(NodeId(1), "ds", job, 2, 1)
        .await
        .unwrap();
    assert_eq!(first_map.map.epoch, Epoch(1));
    assert_eq!(first_map.map.nodes(), vec![NodeId(1), NodeId(2)]);
    assert_eq!(
        client
            .partition_map(NodeId(2), "ds", job, 2, 2)
            .await
            .unwrap()
            .map,
        first_map.map
    );
    // Six shards in one log write, then the other four.
    let before = log_index();
    let LeaseReply::Leased(first) = client.lease(NodeId(1), 6, None).await.unwrap() else {
        panic!("no lease")
    };
    assert_eq!((first.len(), log_index()), (6, before + 1));
    assert_eq!(
        client
            .lease(
                NodeId(1),
                1,
                Some((JobId(job.get() + 1), first_map.map.epoch))
            )
            .await
            .unwrap(),
        LeaseReply::NoWork,
        "four pending, none of another job"
    );
    // Node 1's part asks for the map again (as while it waits for its
    // peers, or a late copy of its request): it keeps its six leases.
    client
        .partition_map(NodeId(1), "ds", job, 2, 1)
        .await
        .unwrap();
    let LeaseReply::Leased(second) = client.lease(NodeId(2), 100, None).await.unwrap() else {
        panic!("no lease")
    };
    assert_eq!(second.len(), 4, "node 1's leases kept");
    assert_eq!(
        client.lease(NodeId(1), 1, None).await.unwrap(),
        LeaseReply::NoWork
    );
    for lease in first.iter().chain(&second) {
        let place = manifest.iter().position(|f| f.path == lease.path).unwrap();
        assert_eq!(lease.file, place as u64, "numbered by the manifest");
        assert_eq!((lease.job, lease.epoch), (job, Epoch(1)));
    }

    let owned = |status: &StatusReport, node: u64| -> Vec<(Epoch, u16, u16)> {
        let node = status.nodes.iter().find(|n| n.id == NodeId(node)).unwrap();
        node.partitions
            .iter()
            .map(|p| {
                assert_eq!(p.dataset, "ds");
                (p.map_epoch, p.start.get(), p.end.get())
            })
            .collect()
    };
    let status = client.status().await.unwrap();
    assert_eq!(owned(&status, 1), [(Epoch(1), 0, 32)]);
    assert_eq!(owned(&status, 2), [(Epoch(1), 32, 64)]);
    let leased = job_status(&status);
    assert_eq!((leased.shards_pending, leased.shards_leased), (0, 10));
    assert_eq!(
        (leased.map_epoch, leased.unstaged),
        (Some(Epoch(1)), vec![NodeId(1), NodeId(2)])
    );

    // Heartbeats renew without the log; completions come in one write.
    let before = log_index();
    let progress = vec![ShardProgress {
        shard: first[0].shard,
        epoch: first[0].epoch,
        offset: 700,
    }];
    for _ in 0..3 {
        let beat = client
            .heartbeat(NodeId(1), 5, progress.clone(), Some(96 << 20))
            .await
            .unwrap();
        assert!(
            matches!(beat, HeartbeatReply::Alive { renewed: 6, .. }),
            "{beat:?}"
        );
    }
    assert_eq!(log_index(), before);
    let done: Vec<(ShardId, Epoch)> = first[..3].iter().map(|l| (l.shard, l.epoch)).collect();
    let Response::ShardsCompleted { completed, refused } =
        client.complete_shards(NodeId(1), done).await.unwrap()
    else {
        panic!("completion refused")
    };
    assert_eq!((completed.len(), refused.len()), (3, 0));
    assert_eq!(log_index(), before + 1);
    let status = client.status().await.unwrap();
    let beating = &status.nodes[0];
    assert_eq!(
        (
            beating.memory_bytes,
            beating.shards_scanning,
            beating.bytes_scanned
        ),
        (Some(96 << 20), 1, 700),
        "as its last heartbeat reported"
    );
    assert_eq!(status.nodes[1].memory_bytes, None, "node 2 sent none");
    assert_eq!(job_status(&status).shards_done, 3);

    // Node 2 goes silent; node 1 keeps beating past the lease time.
    let silent_since = Instant::now();
    while silent_since.elapsed() < Duration::from_millis(LEASE_MS + 300) {
        let beat = client.heartbeat(NodeId(1), 5, vec![], None).await.unwrap();
        assert!(matches!(beat, HeartbeatReply::Alive { .. }), "{beat:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Node 2 owned partitions of the running job, and what it was sent
    // is gone with it: the job runs again as attempt 1, every shard read
    // again (the three done ones too), under a map of node 1 alone. Node
    // 1's part of attempt 0 leases nothing more: its records would go to
    // the old owners while the shards counted in attempt 1.
    let old_part = Some((job, first_map.map.epoch));
    let LeaseReply::Refused(over) = client.lease(NodeId(1), 100, old_part).await.unwrap() else {
        panic!("an old part leased shards of the restarted job")
    };
    assert!(over.contains("start the part again"), "{over}");
    let second_map = client
        .partition_map(NodeId(1), "ds", job, 2, 11)
        .await
        .unwrap();
    let new_part = Some((job, second_map.map.epoch));
    let LeaseReply::Leased(taken_over) = client.lease(NodeId(1), 100, new_part).await.unwrap()
    else {
        panic!("the shards are not leased again")
    };
    let mut shards: Vec<ShardId> = taken_over.iter().map(|l| l.shard).collect();
    let mut every: Vec<ShardId> = first.iter().chain(&second).map(|l| l.shard).collect();
    shards.sort_unstable();
    every.sort_unstable();
    assert_eq!(shards, every);
    assert!(taken_over.iter().all(|l| l.epoch == Epoch(2)));
    // The map a part presents is what counts, not what the leader
    // remembers (a new leader remembers no part's start): node 1 started
    // its new part, and a lease for its old one is still refused.
    let LeaseReply::Refused(over) = client.lease(NodeId(1), 100, old_part).await.unwrap() else {
        panic!("a part of the old map leased again")
    };
    assert!(over.contains("began under partition map 1"), "{over}");
    let state = &cluster.replicas[&1].state;
    assert!(state.node(NodeId(2)).unwrap().unwrap().lost);
    let status = client.job(job).await.unwrap().unwrap();
    assert_eq!((status.attempt, status.shards_done), (1, 0));
    let cause = status.restarted.unwrap_or_default();
    assert!(cause.contains("owner node 2 was lost"), "{cause}");
    // A shard of attempt 0 completes no more.
    let stale = vec![(first[3].shard, first[3].epoch)];
    let Response::ShardsCompleted { completed, refused } =
        client.complete_shards(NodeId(1), stale).await.unwrap()
    else {
        panic!("completion refused")
    };
    assert!(completed.is_empty());
    assert!(matches!(refused[0].1, CommandError::StaleEpoch { .. }));
    // Node 2's partitions went to node 1 at the next epoch with the
    // restart.
    assert_eq!(second_map.map.epoch, Epoch(2));
    assert_eq!(second_map.map.nodes(), vec![NodeId(1)]);
    let status = client.status().await.unwrap();
    let states: Vec<_> = status.nodes.iter().map(|n| (n.id, n.state)).collect();
    assert_eq!(
        states,
        [(NodeId(1), NodeState::Alive), (NodeId(2), NodeState::Lost)]
    );
    assert_eq!(status.nodes[1].silent_ms, None, "lost: not tracked");
    assert_eq!(owned(&status, 1), [(Epoch(2), 0, 64)]);
    assert_eq!(owned(&status, 2), []);
    assert_eq!(
        client.heartbeat(NodeId(2), 5, vec![], None).await.unwrap(),
        HeartbeatReply::Unknown
    );
    let late = vec![(second[0].shard, Epoch(1))];
    let Response::ShardsCompleted { completed, refused } =
        client.complete_shards(NodeId(2), late).await.unwrap()
    else {
        panic!("completion refused")
    };
    assert!(completed.is_empty());
    assert!(matches!(refused[0].1, CommandError::StaleEpoch { .. }));
    assert_eq!(
        client.register(registration(2, 5)).await.unwrap(),
        Response::Error(CommandError::NodeLost { node: NodeId(2) })
    );
    assert_eq!(
        client.register(registration(2, 4)).await.unwrap(),
        Response::Error(CommandError::StaleIncarnation {
            node: NodeId(2),
            presented: 4,
            current: 5
        })
    );
    assert!(matches!(
        client.register(node_registration(2, 6)).await.unwrap(),
        Response::NodeRegistered { incarnation: 6, .. }
    ));

    // Node 1 finishes everything and stages; the job commits with counts
    // that reconcile.
    let rest: Vec<(ShardId, Epoch)> = taken_over.iter().map(|l| (l.shard, l.epoch)).collect();
    client.complete_shards(NodeId(1), rest).await.unwrap();
    let all_read = client.job(job).await.unwrap().unwrap();
    assert_eq!(all_read.phase, JobPhase::Staging);
    assert_eq!(
        (all_read.map_epoch, all_read.unstaged),
        (Some(Epoch(2)), vec![NodeId(1)]),
        "node 2, registered again, owns nothing until the next map"
    );
    let counts = StagedCounts {
        read: 10,
        unique: 7,
        duplicates: 3,
        rejected: 0,
    };
    // Node 2 came back while the job runs: the map stays node 1's, so
    // the job's owners do not change under it.
    let map = client
        .partition_map(NodeId(1), "ds", job, 2, 11)
        .await
        .unwrap();
    assert_eq!(map.map, second_map.map);
    assert!(matches!(
        client
            .stage(NodeId(1), job, counts, first_map.map.epoch)
            .await
            .unwrap(),
        Response::Error(CommandError::StaleMapEpoch {
            presented: Epoch(1),
            current: Epoch(2),
            ..
        })
    ));
    let wrong = StagedCounts {
        read: 1,
        ..StagedCounts::default()
    };
    assert!(matches!(
        client
            .stage(NodeId(1), job, wrong, map.map.epoch)
            .await
            .unwrap(),
        Response::Error(CommandError::CountsDoNotReconcile { .. })
    ));
    assert_eq!(
        client.job(job).await.unwrap().unwrap().phase,
        JobPhase::Staging
    );
    assert_eq!(
        client
            .stage(NodeId(1), job, counts, map.map.epoch)
            .await
            .unwrap(),
        Response::JobStaged {
            job,
            committed: true,
            committing: true,
        }
    );
    // No job runs now: node 2 rejoins the map at the next epoch.
    let map = client
        .partition_map(NodeId(2), "ds", job, 3, 2)
        .await
        .unwrap();
    assert_eq!(
        (map.map.epoch, map.map.nodes()),
        (Epoch(3), vec![NodeId(1), NodeId(2)])
    );
    // An owner's lanes are known once it has started the job under this
    // map: node 1 has not yet.
    assert_eq!(
        map.owners.iter().map(|o| o.lanes).collect::<Vec<_>>(),
        vec![None, Some(3)]
    );
    let map = client
        .partition_map(NodeId(1), "ds", job, 2, 11)
        .await
        .unwrap();
    assert_eq!(
        map.owners.iter().map(|o| o.lanes).collect::<Vec<_>>(),
        vec![Some(2), Some(3)],
        "each owner's lanes as it announced them"
    );
    assert!(map.owners.iter().all(|o| !o.address.is_empty()));
    let status = client.job(job).await.unwrap().unwrap();
    assert_eq!(status.phase, JobPhase::Committed);
    assert_eq!((status.shards_done, status.shards_pending), (10, 0));
    assert_eq!(
        (status.map_epoch, status.unstaged.clone(), status.staged),
        (Some(Epoch(2)), vec![], counts),
        "what it committed under (node 2 joined the map after)"
    );
    let end = job_wait::wait_for_end(&mut client, job, WAIT, WAIT, |_| {}).await;
    assert_eq!(end.unwrap(), JobEnd::Committed(status));
    assert_eq!(client.work(NodeId(1)).await.unwrap(), vec![], "committed");

    // Both nodes fall silent: past their deadline and not yet declared
    // lost (no node request has been served since), they are overdue.
    tokio::time::sleep(Duration::from_millis(LEASE_MS + 200)).await;
    let status = client.status().await.unwrap();
    let states: Vec<_> = status.nodes.iter().map(|n| (n.id, n.state)).collect();
    assert_eq!(
        states,
        [
            (NodeId(1), NodeState::Overdue),
            (NodeId(2), NodeState::Overdue)
        ]
    );
    assert!(status.nodes[0].silent_ms.unwrap() >= LEASE_MS);
    assert_eq!(job_status(&status).phase, JobPhase::Committed);
}

/// An owner declared lost after it staged does not send its job back to
/// the start: every shard was done, and its part is durable in its store.
/// The job keeps its map (a node asking for one while the job stages gets
/// the same), the lost owner asking again with the counts it staged (its
/// answer was lost) is told it staged, and the job commits at its first
/// attempt once the other owner stages. The lost node's new incarnation
/// then learns of the commit, and publishes its part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_lost_after_staging_leaves_its_job_to_commit() {
    const LEASE_MS: u64 = 1_000;
    let cluster = Cluster::start_with_lease(&[1], LEASE_MS).await;
    let mut client = cluster.client();
    let (job, map) = job_mapped_over(&cluster, &mut client, &[1, 2], 4).await;
    read_every_shard(&mut client, job, map.epoch, 4).await;
    let staged = |committed, committing| Response::JobStaged {
        job,
        committed,
        committing,
    };
    // Node 2 read nothing and owns what 4 of node 1's records became.
    let node_2 = counts(0, 3, 1);
    assert_eq!(
        client
            .stage(NodeId(2), job, node_2, map.epoch)
            .await
            .unwrap(),
        staged(false, false)
    );

    // Node 2 falls silent past the lease time; node 1 keeps beating.
    let silent_since = Instant::now();
    while silent_since.elapsed() < Duration::from_millis(LEASE_MS + 300) {
        let beat = client.heartbeat(NodeId(1), 5, vec![], None).await.unwrap();
        assert!(matches!(beat, HeartbeatReply::Alive { .. }), "{beat:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let state = &cluster.replicas[&1].state;
    assert!(state.node(NodeId(2)).unwrap().unwrap().lost);
    let status = client.job(job).await.unwrap().unwrap();
    assert_eq!(
        (status.phase, status.attempt, status.restarted.as_deref()),
        (JobPhase::Staging, 0, None),
        "the job goes on"
    );
    assert_eq!(status.unstaged, vec![NodeId(1)]);
    assert_eq!(
        client
            .stage(NodeId(2), job, node_2, map.epoch)
            .await
            .unwrap(),
        staged(false, false),
        "asked again: it staged"
    );
    assert_eq!(
        client
            .stage(NodeId(2), job, counts(0, 4, 0), map.epoch)
            .await
            .unwrap(),
        Response::Error(CommandError::NodeLost { node: NodeId(2) }),
        "a lost node stages nothing new"
    );
    // A node that joins now, and node 1 asking again, get the job's map.
    let joined = client.register(node_registration(3, 5)).await.unwrap();
    assert!(matches!(joined, Response::NodeRegistered { .. }));
    for (node, part) in [(3, 3), (1, 1)] {
        let asked = client
            .partition_map(NodeId(node), "ds", job, 2, part)
            .await
            .unwrap();
        assert_eq!(asked.map, map, "node {node} got another map");
    }

    assert_eq!(
        client
            .stage(NodeId(1), job, counts(10, 4, 2), map.epoch)
            .await
            .unwrap(),
        staged(true, true)
    );
    let committed = client.job(job).await.unwrap().unwrap();
    assert_eq!(
        (committed.phase, committed.attempt, committed.staged),
        (JobPhase::Committed, 0, counts(10, 7, 3))
    );
    let back = client.register(node_registration(2, 6)).await.unwrap();
    assert!(matches!(back, Response::NodeRegistered { .. }));
    assert_eq!(
        client
            .stage(NodeId(2), job, node_2, map.epoch)
            .await
            .unwrap(),
        staged(true, false),
        "back, it learns of the commit and publishes"
    );
}

/// An owner lost once every shard was done, before it staged: its
/// partitions alone are read again (lineage). The other owners' parts
/// stay; its neighbour in partition order takes its range under the next
/// map and reads every shard again for that range, as the next attempt,
/// and stages a recovery part whose reads are the job's. The job commits
/// with the base parts and the recovery part, its counts reconciled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_lost_before_staging_has_its_partitions_read_again() {
    const LEASE_MS: u64 = 1_000;
    let cluster = Cluster::start_with_lease(&[1], LEASE_MS).await;
    let mut client = cluster.client();
    let (job, base) = job_mapped_over(&cluster, &mut client, &[1, 2, 3], 6).await;
    read_every_shard(&mut client, job, base.epoch, 6).await;
    let staged = |committed, committing| Response::JobStaged {
        job,
        committed,
        committing,
    };
    assert_eq!(
        client
            .stage(NodeId(1), job, counts(10, 3, 1), base.epoch)
            .await
            .unwrap(),
        staged(false, false)
    );

    // Node 2 falls silent before staging; nodes 1 and 3 keep beating.
    let silent_since = Instant::now();
    while silent_since.elapsed() < Duration::from_millis(LEASE_MS + 300) {
        for node in [1, 3] {
            let beat = client
                .heartbeat(NodeId(node), 5, vec![], None)
                .await
                .unwrap();
            assert!(matches!(beat, HeartbeatReply::Alive { .. }), "{beat:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = client.job(job).await.unwrap().unwrap();
    let recovery = status
        .recovery
        .expect("the job recovers node 2's partitions");
    let lost_range = base.ranges[1];
    assert_eq!(lost_range.node, NodeId(2));
    assert_eq!(
        (
            recovery.base_attempt,
            recovery.base_epoch,
            recovery.lost,
            recovery.owner,
            recovery.start,
            recovery.end
        ),
        (
            0,
            base.epoch,
            NodeId(2),
            NodeId(1),
            lost_range.start,
            lost_range.end
        ),
        "node 1, before node 2 in partition order, takes its range"
    );
    assert_eq!((status.attempt, status.phase), (1, JobPhase::Scanning));
    assert!(
        status.restarted.unwrap().contains("read again"),
        "the cause says what runs again"
    );
    assert_eq!(
        status.unstaged,
        vec![NodeId(3), NodeId(1)],
        "node 3's part of attempt 0, and node 1's recovery part"
    );
    // Node 3 stages its part of attempt 0 under the base map; under the
    // new map only the recovery owner stages.
    assert_eq!(
        client
            .stage(NodeId(3), job, counts(0, 2, 1), base.epoch)
            .await
            .unwrap(),
        staged(false, false)
    );
    let recovering = client
        .partition_map(NodeId(1), "ds", job, 2, 11)
        .await
        .unwrap()
        .map;
    assert_eq!(recovering.epoch, base.epoch.next());
    assert_eq!(
        recovering.nodes(),
        vec![NodeId(1), NodeId(3)],
        "node 2's range went to node 1"
    );
    assert!(matches!(
        client
            .stage(NodeId(3), job, counts(0, 2, 1), recovering.epoch)
            .await
            .unwrap(),
        Response::Error(CommandError::StaleMapEpoch { .. })
    ));
    // Node 1 reads every shard again for node 2's range: 10 records, of
    // which 3 are in that range.
    read_every_shard(&mut client, job, recovering.epoch, 6).await;
    assert!(matches!(
        client
            .stage(NodeId(1), job, counts(10, 2, 0), recovering.epoch)
            .await
            .unwrap(),
        Response::Error(CommandError::CountsDoNotReconcile { .. })
    ));
    assert_eq!(
        client
            .stage(NodeId(1), job, counts(10, 2, 1), recovering.epoch)
            .await
            .unwrap(),
        staged(true, true)
    );
    let committed = client.job(job).await.unwrap().unwrap();
    assert_eq!(
        (committed.phase, committed.attempt, committed.staged),
        (JobPhase::Committed, 1, counts(10, 7, 3)),
        "node 1's and 3's parts of attempt 0 and the recovery part"
    );
    assert!(committed.unstaged.is_empty());
    for (counted, epoch) in [
        (counts(10, 3, 1), base.epoch),
        (counts(10, 2, 1), recovering.epoch),
    ] {
        assert_eq!(
            client.stage(NodeId(1), job, counted, epoch).await.unwrap(),
            staged(true, false),
            "node 1 learns that both its parts are in the commit"
        );
    }
}
