//! A node's part of a cluster job meeting, on purpose, faults the seeded
//! harness (`fault_seeds`) met by chance. A part that waits on its peers
//! ends when it can no longer finish: once the job has restarted (its
//! lanes waiting for streams a failed peer will never open, or the other
//! owners it waits for to start), or once it is cancelled. A shard that
//! comes back to the part that is reading it is read once. A node that
//! starts its part after a shard of the job was done, or after an earlier
//! part of its own in the same attempt, runs the job again whole. Node 1 is a real part (`leased_job::run`); node 2 is played by
//! the test.

use std::future::pending;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bench::datagen::{Compression, LinesSpec, write_lines_dataset};
use coordinator::embedded::EmbeddedCoordinator;
use coordinator_client::inventory::read_walks;
use coordinator_client::path_order::SortMemory;
use coordinator_client::submission::{SubmitOptions, ensure_dataset, submit};
use node::actors::feed::lease::LeaseTarget;
use node::actors::messages::SortMergeMsg;
use node::config::IngestConfig;
use node::counters::JobCounters;
use node::edge::{Edge, EdgeTarget, ReceiverGone};
use node::ingest::IngestOutcome;
use node::input::roots::Roots;
use node::leased_job::{self, DataChannel, JobError, LeasedJob};
use node::shuffle::Inbound;
use node::shuffle::inbound::InboundLane;
use node::store::{Access, Store};
use proto_schema::command::Response;
use proto_schema::coordinator_api::{JobPhase, JobStatus, LeaseReply};
use proto_schema::ids::{JobId, NodeId};
use proto_schema::shuffle::PartitionRange;

const OWNER: NodeId = NodeId(1);
const PEER: NodeId = NodeId(2);
/// How long a part may take to notice it can no longer finish: a few of
/// its heartbeats (`HEARTBEAT`), far below every wait it would otherwise
/// sit out (a peer's streams: none; the other owners: 60 s).
const NOTICE: Duration = Duration::from_secs(20);
const HEARTBEAT: Duration = Duration::from_millis(500);

/// A coordinator with nodes 1 and 2 registered (each with a data channel)
/// and a job of three small files submitted.
struct Cluster {
    runtime: tokio::runtime::Runtime,
    coordinator: EmbeddedCoordinator,
    channels: Vec<Arc<DataChannel>>,
    incarnations: Vec<u64>,
    ingest: IngestConfig,
    job: JobId,
    input: tempfile::TempDir,
    data: tempfile::TempDir,
}

impl Cluster {
    /// Three small files, nodes 1 and 2.
    fn start() -> Self {
        let spec = LinesSpec {
            files: 3,
            bytes_per_file: 20_000,
            compression: vec![Compression::Plain],
            ..LinesSpec::sample()
        };
        Self::start_with(&spec, &[OWNER, PEER])
    }

    fn start_with(spec: &LinesSpec, nodes: &[NodeId]) -> Self {
        let (input, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write_lines_dataset(input.path(), spec).unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let coordinator = runtime
            .block_on(EmbeddedCoordinator::start(
                &data.path().join("coordinator"),
                5_000,
            ))
            .unwrap();
        let ingest = IngestConfig {
            data_dir: data.path().join("node-1"),
            dataset: "lines".into(),
            memory_bytes: 32 << 20,
            threads: 2,
            ..IngestConfig::default()
        };
        let channels = embedded::data_channels(&ingest, &[OWNER, PEER], runtime.handle()).unwrap();
        let mut client = coordinator.client();
        let (incarnations, job) = runtime.block_on(async {
            let mut incarnations = Vec::new();
            for (&node, channel) in nodes.iter().zip(&channels) {
                let address = channel.endpoint.local_addr().to_string();
                incarnations.push(
                    leased_job::register(&mut client, node, address, [0; 32])
                        .await
                        .unwrap(),
                );
            }
            ensure_dataset(&mut client, leased_job::spec_of(&ingest))
                .await
                .unwrap();
            let memory = SortMemory {
                bytes: 1 << 20,
                temp_dir: data.path().to_path_buf(),
            };
            let inventory = read_walks(&[input.path()], &memory).unwrap();
            let summary = submit(
                &mut client,
                "lines",
                inventory,
                &SubmitOptions::default(),
                |_| {},
            )
            .await
            .unwrap();
            (incarnations, summary.submission)
        });
        Self {
            runtime,
            coordinator,
            channels,
            incarnations,
            ingest,
            job,
            input,
            data,
        }
    }

    /// Node 1 alone in the map (no shuffle), with enough byte ranges (1 MiB
    /// each of 8 files of 3 MiB) that its part still reads when the test
    /// acts on its leases.
    fn reading_long() -> Self {
        let spec = LinesSpec {
            files: 8,
            bytes_per_file: 3 << 20,
            compression: vec![Compression::Plain],
            ..LinesSpec::sample()
        };
        let mut cluster = Self::start_with(&spec, &[OWNER]);
        cluster.ingest.split_bytes = 1 << 20;
        cluster
    }

    /// The job's status as the coordinator has it.
    fn job_status(&self) -> JobStatus {
        self.runtime
            .block_on(self.coordinator.client().job(self.job))
            .unwrap()
            .unwrap()
    }

    /// Returns once some shard of the job is leased.
    fn await_leased(&self) {
        let deadline = Instant::now() + NOTICE;
        loop {
            if self.job_status().shards_leased > 0 {
                return;
            }
            assert!(Instant::now() < deadline, "node 1 leased nothing");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Runs node 1's part on a thread until it ends or `cancel` completes.
    fn run_owner(
        &self,
        cancel: impl Future<Output = String> + Send + 'static,
    ) -> mpsc::Receiver<Result<IngestOutcome, JobError>> {
        let store =
            Arc::new(Store::open(&self.ingest.data_dir, 8 << 20, Access::ReadWrite).unwrap());
        let part = LeasedJob {
            client: self.coordinator.client(),
            target: LeaseTarget {
                node: OWNER,
                incarnation: self.incarnations[0],
                job: self.job,
            },
            roots: Roots::new(&[self.input.path().to_path_buf()]).unwrap(),
            ingest: self.ingest.clone(),
            heartbeat: HEARTBEAT,
            shown_inputs: Vec::new(),
            channel: Some(self.channels[0].clone()),
        };
        let runtime = self.runtime.handle().clone();
        let (ended, end) = mpsc::channel();
        std::thread::spawn(move || {
            let result = leased_job::run(
                part,
                store,
                runtime,
                Arc::new(JobCounters::default()),
                cancel,
            );
            let _ = ended.send(result);
        });
        end
    }

    /// Node 2 heartbeats, so that it is not declared lost.
    fn peer_beats(&self) {
        self.peer_beats_as(self.incarnations[1]);
    }

    /// Node 2 heartbeats as `incarnation`.
    fn peer_beats_as(&self, incarnation: u64) {
        let mut client = self.coordinator.client();
        self.runtime
            .block_on(client.heartbeat(PEER, incarnation, Vec::new(), None))
            .unwrap();
    }

    /// Runs node 1's part to its commit and checks that it ran the job
    /// again whole: as attempt 1, restarted by node 1, every one of the
    /// job's `files` read, the export `sort -u` of the input.
    fn run_owner_again_whole(&self, files: u64) {
        let outcome = self
            .run_owner(pending())
            .recv_timeout(Duration::from_secs(120))
            .expect("node 1's part ends")
            .expect("node 1's part commits");
        let status = self.job_status();
        assert_eq!(status.phase, JobPhase::Committed);
        assert_eq!(
            (status.attempt, status.shards_pending, status.shards_leased),
            (1, 0, 0),
            "node 1's part ran in attempt 1, every shard done"
        );
        let cause = status.restarted.unwrap_or_default();
        assert!(cause.contains("node 1 started its part again"), "{cause}");
        assert_eq!(outcome.totals.files, files, "every file read in attempt 1");
        let store = Store::open(&self.ingest.data_dir, 8 << 20, Access::ReadOnly).unwrap();
        let dataset = store.existing_dataset("lines").unwrap();
        let mut exported = Vec::new();
        node::export::export(&store, &dataset, &mut exported).unwrap();
        assert!(
            exported == bench::oracle::sort_u_dir(self.input.path()),
            "the export is not sort -u"
        );
    }

    /// Node 2 restarts the job: attempt 1 runs.
    fn node_2_restarts_the_job(&self) {
        let mut client = self.coordinator.client();
        let restarted = self
            .runtime
            .block_on(client.restart(PEER, self.job, 0))
            .unwrap();
        assert!(
            matches!(restarted, Response::JobRestarted { attempt: 1, .. }),
            "{restarted:?}"
        );
    }

    fn stop(self) {
        self.runtime.block_on(self.coordinator.shutdown()).unwrap();
        drop(self.data);
    }
}

/// A lane that takes whatever arrives and drops it (its credit with it).
struct Discard;

impl EdgeTarget<SortMergeMsg> for Discard {
    fn deliver(&self, _message: SortMergeMsg) -> Result<(), ReceiverGone> {
        Ok(())
    }
}

/// A lane that takes what arrives and never lets it go: its edge's
/// credit with it, so the stream into it stops once its window is full.
struct Hold(std::sync::Mutex<Vec<SortMergeMsg>>);

impl EdgeTarget<SortMergeMsg> for Hold {
    fn deliver(&self, message: SortMergeMsg) -> Result<(), ReceiverGone> {
        self.0.lock().unwrap().push(message);
        Ok(())
    }
}

/// Node 1's scanners wait on node 2, whose lane takes nothing more; the
/// job restarts meanwhile. Node 1's part asks for no lease while it
/// waits, so only its reporter's watch tells it: it ends within a few
/// heartbeats, not at the data channel's stall timeout (120 s).
#[test]
fn a_part_whose_scanners_wait_on_a_peer_ends_when_the_job_restarts() {
    let spec = LinesSpec {
        files: 4,
        bytes_per_file: 4 << 20,
        compression: vec![Compression::Plain],
        ..LinesSpec::sample()
    };
    let cluster = Cluster::start_with(&spec, &[OWNER, PEER]);
    let held = Hold(std::sync::Mutex::new(Vec::new()));
    let inbound = node_2_starts(&cluster, Edge::new("held-lane".into(), held, 256 << 10, 64));
    let ended = cluster.run_owner(pending());
    cluster.await_leased();
    // Long enough for the held lane's window to fill and node 1 to wait.
    for _ in 0..4 {
        cluster.peer_beats();
        std::thread::sleep(HEARTBEAT);
    }
    assert!(matches!(ended.try_recv(), Err(mpsc::TryRecvError::Empty)));
    assert!(
        cluster.job_status().shards_done < 4,
        "node 1 read every file, its scanners never waited"
    );
    cluster.node_2_restarts_the_job();
    let error = part_end(&ended, || cluster.peer_beats()).expect_err("its attempt is over");
    let message = error.to_string();
    assert!(
        message.contains(&format!("job {} was restarted", cluster.job)),
        "{message}"
    );
    inbound.remove(cluster.job);
    cluster.stop();
}

/// Node 2 starts the job: it announces one lane and takes node 1's stream
/// into `lane`. Returns its inbound.
fn node_2_starts(cluster: &Cluster, lane: Edge<SortMergeMsg>) -> Inbound {
    let mut client = cluster.coordinator.client();
    let owners = cluster
        .runtime
        .block_on(client.partition_map(PEER, "lines", cluster.job, 1, 1))
        .unwrap();
    let range = owners.map.ranges.iter().find(|r| r.node == PEER).unwrap();
    let partitions = PartitionRange::new(range.start.get(), range.end.get()).unwrap();
    let inbound = cluster.channels[1].inbound.clone();
    inbound.register(
        cluster.job,
        owners.map.epoch,
        vec![InboundLane {
            partitions,
            edge: lane,
        }],
    );
    inbound
}

/// Node 2 starts the job (it announces one lane and takes node 1's stream
/// into it) but never sends its own; node 1 reads every shard and ends its
/// stream to node 2, and its lanes wait for node 2's. Returns node 2's
/// inbound and node 1's part's end, once there.
fn node_1_waits_for_node_2s_streams(
    cluster: &Cluster,
) -> (Inbound, mpsc::Receiver<Result<IngestOutcome, JobError>>) {
    let inbound = node_2_starts(cluster, Edge::new("peer-lane".into(), Discard, 1 << 20, 64));
    let ended = cluster.run_owner(pending());
    let deadline = Instant::now() + NOTICE;
    while inbound.received(cluster.job).unwrap().streams < 1 {
        assert!(Instant::now() < deadline, "node 1 never ended its stream");
        cluster.peer_beats();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        cluster.job_status().shards_done,
        3,
        "node 1 read every shard"
    );
    assert!(matches!(ended.try_recv(), Err(mpsc::TryRecvError::Empty)));
    (inbound, ended)
}

/// What node 1's part ended with, within `NOTICE`, while `beat` keeps
/// node 2 alive.
fn part_end(
    ended: &mpsc::Receiver<Result<IngestOutcome, JobError>>,
    beat: impl Fn(),
) -> Result<IngestOutcome, JobError> {
    let deadline = Instant::now() + NOTICE;
    loop {
        beat();
        match ended.recv_timeout(HEARTBEAT) {
            Ok(result) => return result,
            Err(_) => assert!(
                Instant::now() < deadline,
                "node 1's part still waits {NOTICE:?} after its job moved on"
            ),
        }
    }
}

#[test]
fn an_owner_waiting_for_streams_a_failed_peer_never_opens_ends_when_the_job_restarts() {
    let cluster = Cluster::start();
    let (inbound, ended) = node_1_waits_for_node_2s_streams(&cluster);

    // Node 2's part failed before it opened its streams; it starts again,
    // restarting the job.
    inbound.remove(cluster.job);
    let status = cluster.job_status();
    let restarted = cluster
        .runtime
        .block_on(
            cluster
                .coordinator
                .client()
                .restart(PEER, cluster.job, status.attempt),
        )
        .unwrap();
    assert!(
        matches!(restarted, Response::JobRestarted { .. }),
        "{restarted:?}"
    );
    let result = part_end(&ended, || cluster.peer_beats());
    let error = result.expect_err("node 1's part of the old attempt cannot commit");
    let message = error.to_string();
    assert!(
        message.contains(&format!("job {} was restarted", cluster.job))
            && message.contains("node 2 started its part again"),
        "{message}"
    );
    cluster.stop();
}

/// Node 2 restarts within its lease (a new incarnation registers, the old
/// one never declared lost) once every shard is done: its partitions are
/// read again on node 1 (lineage), not the whole job. Node 1's own part,
/// which the recovery keeps, still lacks the streams node 2 never sent:
/// it ends naming them rather than wait, and the job runs again whole.
#[test]
fn an_owner_restarted_within_its_lease_is_recovered_and_a_part_missing_its_streams_ends() {
    let cluster = Cluster::start();
    let (inbound, ended) = node_1_waits_for_node_2s_streams(&cluster);

    inbound.remove(cluster.job);
    let address = cluster.channels[1].endpoint.local_addr().to_string();
    let mut client = cluster.coordinator.client();
    let incarnation = cluster
        .runtime
        .block_on(leased_job::register(&mut client, PEER, address, [0; 32]))
        .unwrap();
    let status = cluster.job_status();
    let recovery = status
        .recovery
        .expect("the job recovers node 2's partitions");
    assert_eq!((recovery.lost, recovery.owner), (PEER, OWNER));
    assert_eq!(status.attempt, 1);

    let error = part_end(&ended, || cluster.peer_beats_as(incarnation))
        .expect_err("node 1's part lacks node 2's streams");
    let message = error.to_string();
    assert!(
        message.contains("owner node 2 was lost before every stream it owed node 1"),
        "{message}"
    );
    cluster.stop();
}

#[test]
fn a_part_waiting_for_an_owner_that_never_starts_ends_when_cancelled() {
    let cluster = Cluster::start();
    let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
    let ended = cluster.run_owner(async move {
        let _ = cancelled.await;
        "node 1 stopped by the test".to_string()
    });
    // Node 2 never announces its lanes: node 1 waits for it to start.
    std::thread::sleep(Duration::from_secs(1));
    assert!(matches!(ended.try_recv(), Err(mpsc::TryRecvError::Empty)));
    cancel.send(()).unwrap();
    let result = ended
        .recv_timeout(NOTICE)
        .unwrap_or_else(|_| panic!("node 1's part still waits {NOTICE:?} after its cancel"));
    match result {
        Err(JobError::Cancelled(reason)) => assert_eq!(reason, "node 1 stopped by the test"),
        other => panic!(
            "expected the part cancelled, got {:?}",
            other.map(|o| o.totals)
        ),
    }
    // Nothing of the job was read.
    let status = cluster.job_status();
    assert_eq!(status.shards_done, 0);
    cluster.stop();
}

#[test]
fn a_part_waiting_for_an_owner_that_never_starts_ends_when_the_job_moves_on() {
    part_waiting_for_owners_ends_when_the_job_moves_on(false);
}

/// The next map's owners have all started (node 2 under it, node 1 by the
/// very request of its waiting part): the part of the old attempt still
/// ends, rather than run under the next attempt's map.
#[test]
fn a_part_waiting_for_owners_ends_when_the_job_moves_on_even_if_the_next_map_is_ready() {
    part_waiting_for_owners_ends_when_the_job_moves_on(true);
}

/// Node 1's part waits for node 2 to start; node 2 restarts the job
/// instead, and with `announce` starts its part of the next attempt.
fn part_waiting_for_owners_ends_when_the_job_moves_on(announce: bool) {
    let cluster = Cluster::start();
    let mut client = cluster.coordinator.client();
    let ended = cluster.run_owner(pending());
    // Node 2 never announces its lanes: node 1 waits for it to start.
    std::thread::sleep(Duration::from_secs(1));
    assert!(matches!(ended.try_recv(), Err(mpsc::TryRecvError::Empty)));
    cluster.node_2_restarts_the_job();
    if announce {
        let announced = client.partition_map(PEER, "lines", cluster.job, 1, 2);
        cluster.runtime.block_on(announced).unwrap();
    }
    ends_as_moved_on(&ended);
    cluster.stop();
}

/// Node 1's part, of attempt 0, ends because attempt 1 runs.
fn ends_as_moved_on(ended: &mpsc::Receiver<Result<IngestOutcome, JobError>>) {
    let result = ended
        .recv_timeout(NOTICE)
        .unwrap_or_else(|_| panic!("node 1's part still waits {NOTICE:?} after its job moved on"));
    match result {
        Err(JobError::MovedOn {
            attempt, running, ..
        }) => assert_eq!((attempt, running), (0, 1)),
        other => panic!(
            "expected the part to end as moved on, got {:?}",
            other.map(|o| o.totals)
        ),
    }
}

/// Node 2 announced its lanes and then went silent: node 1's dial to it
/// is never answered. When the job restarts meanwhile, node 1's part ends
/// as moved on, not at the dial's timeout with a dial error.
#[test]
fn a_part_dialling_an_owner_that_never_answers_ends_when_the_job_moves_on() {
    let cluster = Cluster::start();
    // Node 2 again, at an address that takes datagrams and answers none.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut client = cluster.coordinator.client();
    cluster.runtime.block_on(async {
        let address = silent.local_addr().unwrap().to_string();
        leased_job::register(&mut client, PEER, address, [0; 32])
            .await
            .unwrap();
        client
            .partition_map(PEER, "lines", cluster.job, 1, 2)
            .await
            .unwrap();
    });
    let ended = cluster.run_owner(pending());
    // Every owner has started: node 1 dials node 2.
    std::thread::sleep(Duration::from_secs(1));
    assert!(matches!(ended.try_recv(), Err(mpsc::TryRecvError::Empty)));
    cluster.node_2_restarts_the_job();
    ends_as_moved_on(&ended);
    cluster.stop();
}

#[test]
fn a_shard_leased_again_to_the_part_reading_it_is_read_once() {
    // Enough byte ranges (1 MiB each) that the part still reads when its
    // leases expire, alone in the map (no shuffle).
    let cluster = Cluster::reading_long();
    let records = std::fs::read_dir(cluster.input.path())
        .unwrap()
        .map(|f| {
            let bytes = std::fs::read(f.unwrap().path()).unwrap();
            // A last line without its newline is a record too.
            bytes.split(|&b| b == b'\n').count() as u64
                - u64::from(bytes.last().is_none_or(|&b| b == b'\n'))
        })
        .sum::<u64>();
    let mut client = cluster.coordinator.client();
    let ended = cluster.run_owner(pending());
    cluster.await_leased();
    // A start of node 1 the coordinators take for a new part (a new part
    // id; a replaced leader that never saw the part start takes a late
    // copy of its request so too): they expire the leases of its
    // "earlier part", which its next lease request takes back.
    cluster
        .runtime
        .block_on(client.partition_map(OWNER, "lines", cluster.job, 2, 1))
        .unwrap();
    let outcome = ended
        .recv_timeout(Duration::from_secs(120))
        .expect("node 1's part ends")
        .expect("node 1's part commits");
    let totals = outcome.totals;
    assert_eq!(
        (totals.read, totals.files),
        (records, 8),
        "every record read once: {totals:?}"
    );
    assert!(totals.reconciles(), "{totals:?}");
    let status = cluster.job_status();
    assert_eq!(status.staged.read, records, "the coordinators' count");
    cluster.stop();
}

/// A node that starts its part of a job after one of the job's shards is
/// done (its records went to an earlier run of the owners) does not stage
/// without them: the job runs again from its first shard, as attempt 1,
/// and commits whole.
#[test]
fn a_node_starting_after_a_shard_is_done_runs_the_job_again_whole() {
    let spec = LinesSpec {
        files: 3,
        bytes_per_file: 10_000,
        compression: vec![Compression::Plain],
        ..LinesSpec::sample()
    };
    let cluster = Cluster::start_with(&spec, &[OWNER]);
    let mut client = cluster.coordinator.client();
    // An earlier run of this node read one shard (of the only job).
    cluster.runtime.block_on(async {
        let LeaseReply::Leased(leased) = client.lease(OWNER, 1, None).await.unwrap() else {
            panic!("nothing leased")
        };
        client
            .complete_shards(OWNER, vec![(leased[0].shard, leased[0].epoch)])
            .await
            .unwrap();
    });
    cluster.run_owner_again_whole(3);
    cluster.stop();
}

/// A node whose part was cut short after it took leases does not start
/// again in the same attempt, though no shard is done: that part's
/// received records died with it, and its completions could still land
/// and mark shards done that the new part would never get. Its next part
/// runs the job again, as attempt 1, and commits whole.
#[test]
fn a_node_whose_earlier_part_of_the_attempt_was_cut_short_runs_the_job_again_whole() {
    let cluster = Cluster::reading_long();
    let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
    let first = cluster.run_owner(async move {
        let _ = cancelled.await;
        "node 1's first part stopped by the test".to_string()
    });
    cluster.await_leased();
    cancel.send(()).unwrap();
    let first = first
        .recv_timeout(NOTICE)
        .unwrap_or_else(|_| panic!("node 1's first part still runs {NOTICE:?} after its cancel"));
    assert!(first.is_err(), "the cut-short part committed");
    let status = cluster.job_status();
    assert_eq!(
        (status.attempt, status.shards_done),
        (0, 0),
        "the first part was to end before any of its shards was done"
    );

    cluster.run_owner_again_whole(8);
    cluster.stop();
}

/// Node 1's leases expire while it reads, and node 2 reads the shards
/// and completes them first: node 1's part, having read them too, must
/// not stage counts its completions were refused for (every record would
/// count twice); it fails naming the refusal.
#[test]
fn a_part_whose_shards_were_completed_by_another_node_does_not_stage() {
    let cluster = Cluster::reading_long();
    let mut client = cluster.coordinator.client();
    let ended = cluster.run_owner(pending());
    cluster.await_leased();
    // Node 1's leases expire (the coordinators take a request of its for
    // a new part's), and node 2 takes the shards over and completes them
    // before node 1 has.
    let taken = cluster.runtime.block_on(async {
        client
            .partition_map(OWNER, "lines", cluster.job, 2, 1)
            .await
            .unwrap();
        leased_job::register(&mut client, PEER, "in-process".into(), [0; 32])
            .await
            .unwrap();
        let LeaseReply::Leased(leased) = client.lease(PEER, 100, None).await.unwrap() else {
            panic!("node 1's expired leases are not granted to node 2")
        };
        let done: Vec<_> = leased.iter().map(|l| (l.shard, l.epoch)).collect();
        client.complete_shards(PEER, done).await.unwrap();
        leased.len()
    });
    assert!(taken > 0);
    let result = ended
        .recv_timeout(Duration::from_secs(120))
        .expect("node 1's part ends");
    let error = result.expect_err("node 1's part read shards node 2 completed");
    assert!(
        error.to_string().contains("its completion was refused"),
        "{error}"
    );
    let status = cluster.job_status();
    assert_ne!(
        status.phase,
        JobPhase::Committed,
        "committed with node 1's counts"
    );
    cluster.stop();
}
