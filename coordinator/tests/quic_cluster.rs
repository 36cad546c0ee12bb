//! Three coordinator replicas as services on loopback ports, talking Raft
//! and the client API over mutual-TLS QUIC with certificates from a CA
//! made here: leader loss, catch-up through a streamed snapshot, a client
//! sent to a follower, peers from another CA refused, and Raft RPCs from a
//! client's certificate refused, a replica dialled under another's id
//! sent nothing, and shards leased to nodes: renewed
//! without a log write, re-granted at the next epoch once expired, held
//! across a change of leader.
//!
//! Commands out of bounds, and requests a certificate's role does not
//! allow, are refused before the log.
//!
//! The refusal tests read the process's metrics recorder and log, which
//! this binary installs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use coordinator::authorize::REQUEST_REFUSED_METRIC;
use coordinator::contacts::Contacts;
use coordinator::lease_desk::LEASE_GRANTS_METRIC;
use coordinator::raft_peers::RAFT_RPC_REFUSED_METRIC;
use coordinator::rpc::{self, AppendEntriesRequest, RaftRpc, VoteRequest};
use coordinator::service::{self, Service, ServiceConfig, ServiceError};
use coordinator::transport::QuicNetwork;
use coordinator::{Member, Raft, ReplicaId};
use coordinator_client::submission::{self, SubmitOptions};
use coordinator_client::{ClientError, CoordinatorClient};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::{CommittedLeaderId, Config, LogId, SnapshotPolicy, Vote};
use proto_schema::ca::ClusterCa;
use proto_schema::command::{
    Command, CommandError, FileEntry, LeaseGrant, MAX_PATH_BYTES, Response, ShardDone,
};
use proto_schema::coordinator_api::{
    self, HeartbeatReply, LeaseReply, LeasedShard, Refusal, Reply, Request,
};
use proto_schema::ids::{Epoch, JobId, NodeId, ShardId};
use proto_schema::quic::{RpcClient, RpcConfig, RpcError};
use proto_schema::tls::TlsIdentity;

#[path = "../../proto-schema/tests/support/captured_log.rs"]
mod captured_log;
mod common;
use captured_log::warnings;
use common::{dataset, files, node};

const WAIT: Duration = Duration::from_secs(30);
/// Leases in these tests last 2 s without a renewal.
const LEASE_MS: u64 = 2_000;

fn identity(ca: &ClusterCa, name: &str) -> TlsIdentity {
    identity_with_sans(ca, name, &["127.0.0.1"])
}

fn identity_with_sans(ca: &ClusterCa, name: &str, sans: &[&str]) -> TlsIdentity {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let issued = ca.issue(name, &sans, 1).unwrap();
    TlsIdentity::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap()
}

fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new().install_recorder().unwrap();
        coordinator::raft_peers::describe_metrics();
        coordinator::authorize::describe_metrics();
        handle
    })
}

/// The Raft refusal counter's value for one kind of RPC.
fn raft_refusals(rpc: &str) -> u64 {
    counter(&format!("{RAFT_RPC_REFUSED_METRIC}{{rpc=\"{rpc}\"}}"))
}

/// A counter's value in this process's metrics (0 before its first use).
fn counter(series: &str) -> u64 {
    let series = format!("{series} ");
    let text = metrics().render();
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |value| value.parse().unwrap())
}

/// A loopback UDP port free right now.
fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn raft_config() -> Arc<Config> {
    let config = Config {
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(40),
        max_in_snapshot_log_to_keep: 5,
        purge_batch_size: 1,
        // Small chunks, so a snapshot travels as many RPCs.
        snapshot_max_chunk_size: 16 * 1024,
        ..coordinator::config::raft_config().unwrap()
    };
    Arc::new(config.validate().unwrap())
}

struct Cluster {
    ca: ClusterCa,
    dir: tempfile::TempDir,
    peers: BTreeMap<ReplicaId, String>,
    replicas: BTreeMap<ReplicaId, Service>,
}

impl Cluster {
    async fn start(ids: &[ReplicaId]) -> Self {
        let mut cluster = Self {
            ca: ClusterCa::generate(1).unwrap(),
            dir: tempfile::TempDir::new().unwrap(),
            peers: ids
                .iter()
                .map(|&id| (id, format!("127.0.0.1:{}", free_port())))
                .collect(),
            replicas: BTreeMap::new(),
        };
        for &id in ids {
            cluster.start_replica(id).await;
        }
        cluster.leader().await;
        cluster
    }

    fn replica_dir(&self, id: ReplicaId) -> PathBuf {
        self.dir.path().join(format!("replica-{id}"))
    }

    /// Starts a replica from its directories (fresh or left by `stop`).
    async fn start_replica(&mut self, id: ReplicaId) {
        let config = || ServiceConfig {
            id,
            listen: self.peers[&id].parse().unwrap(),
            peers: self.peers.clone(),
            data_dir: self.replica_dir(id),
            identity: identity(&self.ca, &format!("coord-{id}")),
            raft: raft_config(),
            lease_ms: LEASE_MS,
        };
        // The port of a replica stopped in this process can stay bound for
        // tens of seconds after `shutdown` (quinn's endpoint driver task
        // keeps the socket); a coordinator process that exits frees it.
        let started = Instant::now();
        let service = loop {
            match Service::start(config()).await {
                Err(ServiceError::Rpc(RpcError::Bind { .. })) if started.elapsed() < WAIT => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                started => break started.unwrap(),
            }
        };
        eprintln!("replica {id} started after {:?}", started.elapsed());
        self.replicas.insert(id, service);
    }

    async fn stop(&mut self, id: ReplicaId) {
        let service = self.replicas.remove(&id).unwrap();
        service.shutdown().await.unwrap();
    }

    fn raft(&self, id: ReplicaId) -> &Raft {
        self.replicas[&id].raft()
    }

    /// An operator's client of the cluster knowing `ids`' addresses.
    fn client(&self, ids: &[ReplicaId]) -> CoordinatorClient {
        self.client_as("client", ids)
    }

    /// Node `node`'s client, with its `node-N` certificate.
    fn node_client(&self, node: u64, ids: &[ReplicaId]) -> CoordinatorClient {
        self.registering_node(node, ids).0
    }

    /// Node `node`'s client, and the command registering it with the
    /// fingerprint of the certificate it presents.
    fn registering_node(&self, node: u64, ids: &[ReplicaId]) -> (CoordinatorClient, Command) {
        let identity = identity(&self.ca, &format!("node-{node}"));
        let Command::RegisterNode(mut info) = common::node(node) else {
            unreachable!("common::node registers a node")
        };
        info.cert_fingerprint = identity.fingerprint().0;
        let addresses = ids.iter().map(|id| self.peers[id].clone()).collect();
        let client = CoordinatorClient::quic(&identity, addresses).unwrap();
        (client, Command::RegisterNode(info))
    }

    /// A client presenting a certificate named `name`.
    fn client_as(&self, name: &str, ids: &[ReplicaId]) -> CoordinatorClient {
        let addresses = ids.iter().map(|id| self.peers[id].clone()).collect();
        CoordinatorClient::quic(&identity(&self.ca, name), addresses).unwrap()
    }

    /// The leader the live replicas agree on.
    async fn leader(&self) -> ReplicaId {
        let deadline = Instant::now() + WAIT;
        loop {
            let leaders: Vec<Option<ReplicaId>> = self
                .replicas
                .values()
                .map(|r| r.raft().metrics().borrow().current_leader)
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

    /// Waits until every live replica applied the leader's last entry.
    async fn converge(&self) -> u64 {
        let leader = self.leader().await;
        let index = self.raft(leader).metrics().borrow().last_log_index.unwrap();
        for replica in self.replicas.values() {
            replica
                .raft()
                .wait(Some(WAIT))
                .applied_index_at_least(Some(index), "converge")
                .await
                .unwrap();
        }
        index
    }
}

/// Submits a manifest in chunks of at most `chunk` files.
async fn submit(
    client: &mut CoordinatorClient,
    name: &str,
    files: Vec<FileEntry>,
    chunk: usize,
) -> JobId {
    // In chunks of files, a log entry per `chunk` files: the tests count
    // on entries to take snapshots.
    let options = SubmitOptions {
        max_chunk_files: chunk,
        by_digest: false,
        ..SubmitOptions::default()
    };
    let entries = files.into_iter().map(Ok);
    let done = submission::submit(client, name, entries, &options, |_| {})
        .await
        .expect("submitted");
    done.submission
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quic_a_new_leader_is_elected_and_no_committed_command_is_lost() {
    let mut cluster = Cluster::start(&[1, 2, 3]).await;
    let mut client = cluster.client(&[1, 2, 3]);
    for id in 1..=20 {
        let created = client.write(&dataset(&format!("d{id}"))).await.unwrap();
        assert!(
            matches!(created, Response::DatasetCreated { .. }),
            "{created:?}"
        );
    }
    client.write(&dataset("ds")).await.unwrap();
    let submission = submit(&mut client, "ds", files(300), 50).await;

    let old = cluster.leader().await;
    cluster.stop(old).await;
    let started = Instant::now();
    let new = cluster.leader().await;
    eprintln!("new leader {new} after {:?}", started.elapsed());
    assert_ne!(new, old);

    // The client finds the new leader by itself, and every acknowledged
    // command is in every live replica's state.
    let created = client.write(&dataset("d21")).await.unwrap();
    assert!(
        matches!(created, Response::DatasetCreated { .. }),
        "{created:?}"
    );
    assert_eq!(client.address(), cluster.peers[&new]);
    cluster.converge().await;
    for replica in cluster.replicas.values() {
        for id in 1..=21 {
            assert!(
                replica
                    .state()
                    .dataset(&format!("d{id}"))
                    .unwrap()
                    .is_some(),
                "dataset d{id} lost"
            );
        }
        let job = replica.state().job(submission).unwrap().unwrap();
        assert_eq!((job.counts.new, job.shards_total), (300, 300));
    }
    let digests: Vec<_> = cluster
        .replicas
        .values()
        .map(|r| r.state().digest().unwrap())
        .collect();
    assert_eq!(digests[0], digests[1]);

    let status = client.status().await.unwrap();
    assert_eq!((status.replica, status.leader), (new, Some(new)));
    assert_eq!(status.members.len(), 3);
    let down = status.members.iter().find(|m| m.id == old).unwrap();
    let up = status
        .members
        .iter()
        .find(|m| m.id != old && m.id != new)
        .unwrap();
    assert!(up.last_contact_ms.unwrap() < 5_000, "{up:?}");
    assert!(up.matched_index.is_some());
    assert!(
        down.last_contact_ms
            .is_none_or(|ms| ms > up.last_contact_ms.unwrap())
    );
    assert_eq!(status.jobs[0].shards_pending, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quic_a_follower_that_missed_purged_entries_catches_up_through_a_snapshot() {
    let mut cluster = Cluster::start(&[1, 2, 3]).await;
    let mut client = cluster.client(&[1, 2, 3]);
    client.write(&dataset("ds")).await.unwrap();
    let leader = cluster.leader().await;
    let follower = *cluster.replicas.keys().find(|&&id| id != leader).unwrap();
    let missed_from = cluster.converge().await;
    cluster.stop(follower).await;

    // Far more entries than the snapshot policy keeps in the log.
    for id in 1..=30 {
        client.write(&dataset(&format!("d{id}"))).await.unwrap();
    }
    submit(&mut client, "ds", files(3000), 40).await;
    let last = cluster.converge().await;
    let leader = cluster.leader().await;
    let leader_raft = cluster.raft(leader).clone();
    let deadline = Instant::now() + WAIT;
    let purged = loop {
        let purged = leader_raft
            .metrics()
            .borrow()
            .purged
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
    let snapshot = cluster
        .raft(follower)
        .metrics()
        .borrow()
        .snapshot
        .expect("the follower installed a snapshot");
    assert!(snapshot.index > missed_from);
    let digest = cluster.replicas[&leader].state().digest().unwrap();
    assert_eq!(
        cluster.replicas[&follower].state().digest().unwrap(),
        digest
    );
    eprintln!(
        "follower caught up over QUIC in {:?} through the snapshot at index {} (log at {last}, purged to {purged}); {} records",
        started.elapsed(),
        snapshot.index,
        digest.records
    );
}

/// Every live replica's last log index.
fn log_indexes(cluster: &Cluster) -> Vec<Option<u64>> {
    cluster
        .replicas
        .values()
        .map(|r| r.raft().metrics().borrow().last_log_index)
        .collect()
}

/// What once stopped the cluster's Raft at its next snapshot (a path or a
/// dataset name far over any bound), and what replication could not
/// carry, are refused by the leader with their reasons, and no replica's
/// log grows. Then ordinary submissions go on past several snapshots, and
/// a follower that missed them catches up from one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_out_of_bounds_are_refused_before_the_log_and_snapshots_go_on() {
    let mut cluster = Cluster::start(&[1, 2, 3]).await;
    let mut client = cluster.client(&[1, 2, 3]);
    client.write(&dataset("ds")).await.unwrap();
    let begin = Command::BeginSubmission {
        dataset: "ds".into(),
        now_ms: 1,
    };
    let Response::SubmissionBegun { submission } = client.write(&begin).await.unwrap() else {
        panic!("no submission")
    };
    cluster.converge().await;
    let before = log_indexes(&cluster);

    let entry = |path: String| FileEntry {
        path,
        size: 1,
        mtime_ns: 1,
        checksum: None,
    };
    let chunk = |files: Vec<FileEntry>| Command::SubmitChunk {
        dataset: "ds".into(),
        submission,
        first_file: 0,
        files,
    };
    // Paths each within bounds, 2.4 MiB in all: more than an entry holds.
    let over_entry = (0..600)
        .map(|i| entry(format!("/{i:05}/{}", "x".repeat(MAX_PATH_BYTES - 7))))
        .collect();
    let heavy = (0..300)
        .map(|i| entry(format!("/{i:05}/{}", "x".repeat(3500))))
        .collect();
    let long_name = "n".repeat(100 << 10);
    let refused: Vec<(Command, String)> = vec![
        (
            chunk(vec![entry("p".repeat(MAX_PATH_BYTES + 1))]),
            format!(
                "path of {} bytes exceeds the limit of {MAX_PATH_BYTES} bytes",
                MAX_PATH_BYTES + 1
            ),
        ),
        (
            chunk(vec![entry("p".repeat(70 << 10))]),
            "path of 71680 bytes".into(),
        ),
        (dataset(&long_name), "dataset name of 102400 bytes".into()),
        (
            Command::BeginSubmission {
                dataset: long_name.clone(),
                now_ms: 1,
            },
            "dataset name of 102400 bytes".into(),
        ),
        (chunk(over_entry), "encoded command of".into()),
        (chunk(heavy), "chunk of 300 files".into()),
    ];
    for (cmd, reason) in refused {
        let answer = client.write(&cmd).await.unwrap();
        let Response::Error(error) = answer else {
            panic!("accepted: {answer:?}")
        };
        assert!(error.to_string().contains(&reason), "{error}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        log_indexes(&cluster),
        before,
        "a refused command was logged"
    );

    // Ordinary submissions, past several snapshots of 40 entries, while a
    // follower is down.
    let abort = Command::AbortSubmission {
        dataset: "ds".into(),
        submission,
    };
    client.write(&abort).await.unwrap();
    let leader = cluster.leader().await;
    let follower = *cluster.replicas.keys().find(|&&id| id != leader).unwrap();
    let missed_from = cluster.converge().await;
    cluster.stop(follower).await;
    let first_snapshot = cluster.raft(leader).metrics().borrow().snapshot;
    for round in 0..20 {
        submit(&mut client, "ds", files(60 + round), 10).await;
    }
    let last = cluster.converge().await;
    let snapshot = cluster.raft(leader).metrics().borrow().snapshot.unwrap();
    assert!(
        snapshot.index >= first_snapshot.map_or(0, |s| s.index) + 3 * 40,
        "snapshots: {first_snapshot:?} then {snapshot:?}"
    );
    cluster.start_replica(follower).await;
    cluster
        .raft(follower)
        .wait(Some(WAIT))
        .applied_index_at_least(Some(last), "catch up")
        .await
        .unwrap();
    let installed = cluster.raft(follower).metrics().borrow().snapshot.unwrap();
    assert!(installed.index > missed_from, "{installed:?}");
    assert_eq!(
        cluster.replicas[&follower].state().digest().unwrap(),
        cluster.replicas[&leader].state().digest().unwrap()
    );
}

/// A node's certificate may act for its own node only, an operator's for
/// datasets only, a replica's for Raft only, and nobody's for the lease
/// desk: each refusal says why, is counted and logged, and no replica's
/// log grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_a_certificate_does_not_allow_are_refused_before_the_log() {
    warnings();
    let cluster = Cluster::start(&[1, 2, 3]).await;
    let mut operator = cluster.client(&[1, 2, 3]);
    let (mut node_5, register_5) = cluster.registering_node(5, &[1, 2, 3]);
    node_5.write(&register_5).await.unwrap();
    operator.write(&dataset("ds")).await.unwrap();
    let begin = Command::BeginSubmission {
        dataset: "ds".into(),
        now_ms: 1,
    };
    let Response::SubmissionBegun { submission } = operator.write(&begin).await.unwrap() else {
        panic!("no submission")
    };
    cluster.converge().await;
    let before = log_indexes(&cluster);
    let grants_refused =
        format!("{REQUEST_REFUSED_METRIC}{{role=\"node\",request=\"grant_leases\"}}");
    let grants_refused_before = counter(&grants_refused);

    let grant = |node| Command::GrantLeases {
        node,
        shards: vec![LeaseGrant {
            shard: ShardId(1),
            expected_epoch: Epoch(0),
        }],
        deadline_ms: u64::MAX,
    };
    let abort = Command::AbortSubmission {
        dataset: "ds".into(),
        submission,
    };
    let reason = |answer: Result<Response, ClientError>| match answer {
        Err(ClientError::Refused(Refusal::Forbidden(forbidden))) => forbidden.to_string(),
        other => panic!("not refused: {other:?}"),
    };
    let node_refusals = [
        (
            grant(NodeId(5)),
            "refused grant_leases from a node 5 certificate: only the leader",
        ),
        (
            abort.clone(),
            "refused abort_submission from a node 5 certificate: only operator",
        ),
        (
            node(6),
            "register_node from a node 5 certificate: node-5's certificate speaks for node 5 only, not for node 6",
        ),
        (
            Command::CompleteShards {
                node: NodeId(6),
                shards: vec![ShardDone {
                    shard: ShardId(1),
                    epoch: Epoch(1),
                }],
            },
            "speaks for node 5 only, not for node 6",
        ),
        (dataset("mine"), "only operator certificates may"),
        (
            node(5),
            "node-5 registers certificate 0505050505050505050505050505050505050505050505050505050505050505 but presented",
        ),
    ];
    for (cmd, expected) in node_refusals {
        let refused = reason(node_5.write(&cmd).await);
        assert!(refused.contains(expected), "{refused}");
    }
    let renew = node_5.renew(NodeId(6), ShardId(1), Epoch(1)).await;
    assert!(
        matches!(&renew, Err(ClientError::Refused(Refusal::Forbidden(f))) if f.request == "renew"),
        "{renew:?}"
    );
    let lease = node_5.lease(NodeId(6), 1, None).await;
    assert!(matches!(&lease, Err(ClientError::Refused(_))), "{lease:?}");
    // An operator may not lease, nor grant; a replica's certificate is
    // for Raft only.
    let refused = reason(operator.write(&grant(NodeId(5))).await);
    assert!(refused.contains("only the leader proposes it"), "{refused}");
    let refused = reason(operator.write(&node(7)).await);
    assert!(
        refused.contains("only a node-N certificate may"),
        "{refused}"
    );
    let mut replica_1 = cluster.client_as("coord-1", &[1, 2, 3]);
    let status = replica_1.status().await;
    assert!(
        matches!(&status, Err(ClientError::Refused(Refusal::Forbidden(f))) if f.role == "coordinator 1"),
        "{status:?}"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        log_indexes(&cluster),
        before,
        "a refused request was logged"
    );
    assert_eq!(counter(&grants_refused), grants_refused_before + 1);
    let log = warnings();
    assert!(
        log.lines().any(
            |l| l.contains("refused grant_leases from a node 5 certificate")
                && l.contains("name=Some(\"node-5\")")
        ),
        "{log}"
    );
    // What each may do, it still does.
    assert_eq!(
        operator.write(&abort).await.unwrap(),
        Response::SubmissionAborted { submission }
    );
    assert_eq!(
        node_5.lease(NodeId(5), 1, None).await.unwrap(),
        LeaseReply::NoWork
    );
}

/// A client configuration that trusts the cluster CA but presents no
/// certificate.
fn without_certificate(ca: &ClusterCa) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let ca_der =
        rustls::pki_types::CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap();
    roots.add(ca_der).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(proto_schema::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![proto_schema::tls::ALPN.to_vec()];
    tls
}

/// 1,000 connection attempts without a certificate, 32 at a time, spread
/// over the replicas: every one refused, while the replicas go on taking
/// writes and elect a new leader when theirs stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_without_a_certificate_leave_the_replicas_electing_and_answering() {
    let mut cluster = Cluster::start(&[1, 2, 3]).await;
    let mut client = cluster.client(&[1, 2, 3]);
    let stranger = Arc::new(
        RpcClient::new(
            "127.0.0.1:0".parse().unwrap(),
            without_certificate(&cluster.ca),
            RpcConfig::default(),
        )
        .unwrap(),
    );
    let addresses: Vec<std::net::SocketAddr> =
        cluster.peers.values().map(|a| a.parse().unwrap()).collect();
    let started = Instant::now();
    let attempts = tokio::spawn(async move {
        let mut in_flight = tokio::task::JoinSet::new();
        let mut refused = 0;
        for i in 0..1000 {
            let (stranger, address) = (stranger.clone(), addresses[i % addresses.len()]);
            in_flight.spawn(async move {
                match stranger.connect(address, "127.0.0.1").await {
                    Ok(connection) => connection.request(b"hello").await.is_err(),
                    Err(_) => true,
                }
            });
            if in_flight.len() >= 32 {
                refused += usize::from(in_flight.join_next().await.unwrap().unwrap());
            }
        }
        while let Some(done) = in_flight.join_next().await {
            refused += usize::from(done.unwrap());
        }
        refused
    });
    let mut written = 0;
    let mut write = async |client: &mut CoordinatorClient| {
        written += 1;
        let created = client
            .write(&dataset(&format!("d{written}")))
            .await
            .unwrap();
        assert!(
            matches!(created, Response::DatasetCreated { .. }),
            "{created:?}"
        );
    };
    for _ in 0..5 {
        write(&mut client).await;
    }
    let old = cluster.leader().await;
    cluster.stop(old).await;
    let new = cluster.leader().await;
    assert_ne!(new, old);
    while !attempts.is_finished() {
        write(&mut client).await;
    }
    assert_eq!(attempts.await.unwrap(), 1000, "every attempt was refused");
    write(&mut client).await;
    eprintln!(
        "1000 attempts without a certificate in {:?}; {written} writes answered meanwhile",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quic_a_client_of_a_follower_is_redirected_to_the_leader() {
    let cluster = Cluster::start(&[1, 2, 3]).await;
    let leader = cluster.leader().await;
    let follower = *cluster.replicas.keys().find(|&&id| id != leader).unwrap();
    let mut client = cluster.client(&[follower]);
    assert_eq!(client.address(), cluster.peers[&follower]);
    let created = client.write(&dataset("d1")).await.unwrap();
    assert!(
        matches!(created, Response::DatasetCreated { .. }),
        "{created:?}"
    );
    assert_eq!(client.address(), cluster.peers[&leader]);
    // A refusal by the state machine comes back as such, and reads clearly.
    client.write(&dataset("ds")).await.unwrap();
    assert!(matches!(
        client.write(&dataset("ds")).await.unwrap(),
        Response::Error(CommandError::DatasetExists { .. })
    ));
    let begin = Command::BeginSubmission {
        dataset: "nope".into(),
        now_ms: 1,
    };
    let Response::Error(unknown) = client.write(&begin).await.unwrap() else {
        panic!("an unknown dataset was accepted")
    };
    assert_eq!(unknown.to_string(), "unknown dataset \"nope\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_another_cas_certificates_are_refused() {
    let cluster = Cluster::start(&[1, 2, 3]).await;
    let leader = cluster.leader().await;
    let term = cluster.raft(leader).metrics().borrow().current_term;

    // A client with another cluster's certificate gets nothing done, even
    // if it trusts this cluster's CA: the replica refuses it.
    let other = ClusterCa::generate(1).unwrap();
    let foreign = other.issue("client", &[], 1).unwrap();
    let stranger =
        TlsIdentity::from_pem(cluster.ca.cert_pem(), &foreign.cert_pem, &foreign.key_pem).unwrap();
    let mut stranger = CoordinatorClient::quic(&stranger, vec![cluster.peers[&leader].clone()])
        .unwrap()
        .with_retry_window(Duration::from_secs(1));
    match stranger.write(&node(9)).await {
        Err(ClientError::Unreachable { last, .. }) => {
            assert!(last.contains("refused our certificate"), "{last}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // A replica with another CA's certificate, configured as the lowest id
    // of the same cluster, initializes itself and campaigns: every vote
    // request is refused at the handshake, so it never leads the others.
    let mut peers = cluster.peers.clone();
    peers.insert(0, format!("127.0.0.1:{}", free_port()));
    let intruder = Service::start(ServiceConfig {
        id: 0,
        listen: peers[&0].parse().unwrap(),
        peers,
        data_dir: cluster.dir.path().join("intruder"),
        identity: identity(&other, "coord-0"),
        raft: raft_config(),
        lease_ms: LEASE_MS,
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = intruder.raft().metrics().borrow().clone();
    assert_ne!(metrics.current_leader, Some(0));
    assert!(metrics.current_term > 0, "it did campaign");
    assert_eq!(cluster.leader().await, leader);
    assert_eq!(cluster.raft(leader).metrics().borrow().current_term, term);
    assert!(
        cluster.replicas[&leader]
            .state()
            .node(NodeId(9))
            .unwrap()
            .is_none()
    );
    intruder.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_rpcs_from_a_client_certificate_are_refused() {
    warnings();
    let cluster = Cluster::start(&[1, 2, 3]).await;
    let mut client = cluster.client(&[1, 2, 3]);
    client.write(&dataset("d1")).await.unwrap();
    let index = cluster.converge().await;
    let leader = cluster.leader().await;
    let votes = |c: &Cluster| -> Vec<_> {
        c.replicas
            .values()
            .map(|r| r.raft().metrics().borrow().vote)
            .collect()
    };
    let before = votes(&cluster);
    let refused_before = (raft_refusals("vote"), raft_refusals("append_entries"));

    // A client of the same CA, even one whose certificate also lists a
    // replica's name among its hosts, forges what would depose the leader
    // if served: a vote for replica 2 and a heartbeat from it, far ahead
    // in term and log.
    let alice = identity_with_sans(&cluster.ca, "alice", &["127.0.0.1", "coord-2"]);
    let term = cluster.raft(leader).metrics().borrow().current_term + 1000;
    let ahead = LogId::new(CommittedLeaderId::new(term, 2), index + 1000);
    let forged = || {
        [
            RaftRpc::Vote(VoteRequest::new(Vote::new(term, 2), Some(ahead))),
            RaftRpc::AppendEntries(AppendEntriesRequest {
                vote: Vote::new_committed(term, 2),
                prev_log_id: Some(ahead),
                entries: Vec::new(),
                leader_commit: Some(ahead),
            }),
        ]
    };
    let rpc = RpcClient::new(
        "127.0.0.1:0".parse().unwrap(),
        alice.client_config().unwrap(),
        RpcConfig::default(),
    )
    .unwrap();
    for address in cluster.peers.values() {
        let connection = rpc
            .connect(address.parse().unwrap(), "127.0.0.1")
            .await
            .unwrap();
        for request in forged() {
            let kind = request.kind();
            let message = rpc::to_message(&request).unwrap();
            let bytes = coordinator_api::encode(&Request::Raft(message)).unwrap();
            let answer = connection.request(&bytes).await.unwrap();
            let reply = coordinator_api::decode::<Reply>(&answer).unwrap();
            let Reply::Failed(reason) = reply else {
                panic!("a forged {kind} was served: {reply:?}")
            };
            assert!(
                reason.contains(&format!("refused a Raft {kind}"))
                    && reason.contains("\"alice\"")
                    && reason.contains(&alice.fingerprint().to_string())
                    && reason.contains("only from coord-1, coord-2, coord-3"),
                "{reason}"
            );
        }
    }
    rpc.shutdown().await;
    assert_eq!(
        (raft_refusals("vote"), raft_refusals("append_entries")),
        (refused_before.0 + 3, refused_before.1 + 3)
    );
    let log = warnings();
    let warning = log
        .lines()
        .find(|line| line.contains("refused a Raft RPC") && line.contains("name=\"alice\""))
        .unwrap_or_else(|| panic!("no warning in {log}"));
    assert!(
        warning.contains(&alice.fingerprint().to_string()) && warning.contains("remote=127.0.0.1:"),
        "{warning}"
    );
    assert!(
        metrics()
            .render()
            .contains(&format!("# HELP {RAFT_RPC_REFUSED_METRIC}")),
        "no help text"
    );

    // Several election timeouts later nothing moved, and the cluster
    // still serves its clients.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cluster.leader().await, leader);
    assert_eq!(votes(&cluster), before);
    let created = client.write(&dataset("d2")).await.unwrap();
    assert!(
        matches!(created, Response::DatasetCreated { .. }),
        "{created:?}"
    );

    // A replica whose own certificate would be refused does not start.
    let misnamed = Service::start(ServiceConfig {
        id: 1,
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: cluster.peers.clone(),
        data_dir: cluster.dir.path().join("misnamed"),
        identity: identity(&cluster.ca, "coord-1.example"),
        raft: raft_config(),
        lease_ms: LEASE_MS,
    })
    .await;
    match misnamed {
        Err(e @ ServiceError::CertName { .. }) => {
            assert!(e.to_string().contains("named \"coord-1\""), "{e}")
        }
        other => panic!("started with a misnamed certificate: {:?}", other.err()),
    }
}

async fn leased(client: &mut CoordinatorClient, node: u64) -> LeasedShard {
    match client.lease(NodeId(node), 1, None).await.unwrap() {
        LeaseReply::Leased(mut shards) if shards.len() == 1 => shards.remove(0),
        other => panic!("node {node} got no lease: {other:?}"),
    }
}

/// `node` reports `lease`'s shard complete, at the lease's epoch.
async fn complete(client: &mut CoordinatorClient, node: u64, lease: &LeasedShard) -> Response {
    client
        .complete_shards(NodeId(node), vec![(lease.shard, lease.epoch)])
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_are_leased_renewed_without_a_log_write_and_regranted_once_expired() {
    metrics();
    let mut cluster = Cluster::start(&[1, 2, 3]).await;
    let mut client = cluster.client(&[1, 2, 3]);
    // Each node with its own certificate; node 99 never registers.
    let [(mut n7, register_7), (mut n8, register_8)] =
        [7, 8].map(|id| cluster.registering_node(id, &[1, 2, 3]));
    let mut n99 = cluster.node_client(99, &[1, 2, 3]);
    n7.write(&register_7).await.unwrap();
    n8.write(&register_8).await.unwrap();
    client.write(&dataset("ds")).await.unwrap();
    let submission = submit(&mut client, "ds", files(3), 3).await;

    // Three files, three shards; an unknown node gets none.
    let unknown = n99.lease(NodeId(99), 1, None).await.unwrap();
    assert!(
        matches!(&unknown, LeaseReply::Refused(r) if r.contains("not registered")),
        "{unknown:?}"
    );
    let a = leased(&mut n7, 7).await;
    let b = leased(&mut n7, 7).await;
    assert_ne!(a.shard, b.shard);
    assert_eq!(
        (a.job, a.epoch, a.start, a.checkpoint),
        (submission, Epoch(1), 0, 0)
    );
    assert_eq!(
        a.end,
        cluster.replicas[&cluster.leader().await]
            .state()
            .shard(a.shard)
            .unwrap()
            .unwrap()
            .end
    );

    // Renewals move the deadline and write nothing to the log.
    let leader = cluster.leader().await;
    let log_before = cluster.raft(leader).metrics().borrow().last_log_index;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(LEASE_MS / 2)).await;
        // Node 8 has no lease yet, but stays alive by its heartbeats: a
        // node silent past the lease time is declared lost.
        let beat = n8.heartbeat(NodeId(8), 1, vec![], None).await.unwrap();
        assert!(matches!(beat, HeartbeatReply::Alive { .. }), "{beat:?}");
        let renewed = n7.renew(NodeId(7), a.shard, a.epoch).await.unwrap();
        assert!(
            matches!(renewed, LeaseReply::Renewed { deadline_ms } if deadline_ms > a.deadline_ms),
            "{renewed:?}"
        );
    }
    assert_eq!(
        cluster.raft(leader).metrics().borrow().last_log_index,
        log_before
    );

    // b was not renewed: it expired, and goes to the next node asking, at
    // the next epoch, before the third pending shard.
    let expired_grants = format!("{LEASE_GRANTS_METRIC}{{kind=\"expired\"}}");
    let expired_before = counter(&expired_grants);
    let regranted = leased(&mut n8, 8).await;
    assert_eq!(counter(&expired_grants), expired_before + 1);
    assert_eq!(
        (regranted.shard, regranted.epoch),
        (b.shard, b.epoch.next())
    );
    let late = n7.renew(NodeId(7), b.shard, b.epoch).await.unwrap();
    assert!(matches!(&late, LeaseReply::Refused(_)), "{late:?}");
    let fenced = complete(&mut n7, 7, &b).await;
    assert!(
        matches!(&fenced, Response::ShardsCompleted { completed, refused }
            if completed.is_empty()
                && matches!(refused[..], [(_, CommandError::StaleEpoch { .. })])),
        "{fenced:?}"
    );

    // The last pending shard, then nothing.
    let c = leased(&mut n8, 8).await;
    assert!(![a.shard, b.shard].contains(&c.shard));
    assert_eq!(
        n8.lease(NodeId(8), 1, None).await.unwrap(),
        LeaseReply::NoWork
    );
    let done = complete(&mut n7, 7, &a).await;
    assert!(
        matches!(&done, Response::ShardsCompleted { completed, .. } if completed == &[a.shard]),
        "{done:?}"
    );

    // A new leader takes the leases over with full deadlines: the holders
    // renew on, and nothing is granted twice.
    cluster.stop(leader).await;
    let new = cluster.leader().await;
    assert_ne!(new, leader);
    // The nodes reach the live replicas at once, not after timing out on
    // the stopped one, which could outlast a 2 s lease.
    let live: Vec<ReplicaId> = cluster.replicas.keys().copied().collect();
    let [mut n7, mut n8] = [7, 8].map(|id| cluster.node_client(id, &live));
    for lease in [&regranted, &c] {
        let renewed = n8.renew(NodeId(8), lease.shard, lease.epoch).await.unwrap();
        assert!(matches!(renewed, LeaseReply::Renewed { .. }), "{renewed:?}");
    }
    assert_eq!(
        n7.lease(NodeId(7), 1, None).await.unwrap(),
        LeaseReply::NoWork
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_dialled_as_another_is_sent_nothing() {
    let cluster = Cluster::start(&[1, 2, 3]).await;
    let tls = identity(&cluster.ca, "coord-1").client_config().unwrap();
    let bind = "127.0.0.1:0".parse().unwrap();
    let client = Arc::new(RpcClient::new(bind, tls, service::rpc_config()).unwrap());
    let mut network = QuicNetwork::new(1, client, Contacts::default());
    let at_2 = Member {
        addr: cluster.peers[&2].clone(),
    };
    let option = RPCOption::new(Duration::from_secs(5));

    // Replica 1 misconfigured: it believes replica 3 lives at 2's address.
    // A vote far ahead, had it been sent, would have changed 2's term.
    let term_before = cluster.raft(2).metrics().borrow().current_term;
    let mut link = network.new_client(3, &at_2).await;
    let refused = link
        .vote(VoteRequest::new(Vote::new(1000, 1), None), option.clone())
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("presented a certificate named Some(\"coord-2\"), not \"coord-3\""),
        "{refused}"
    );
    assert_eq!(cluster.raft(2).metrics().borrow().current_term, term_before);

    // Dialled as itself, replica 2 answers (a stale vote, not granted).
    let mut link = network.new_client(2, &at_2).await;
    let answer = link
        .vote(VoteRequest::new(Vote::new(0, 1), None), option)
        .await
        .unwrap();
    assert!(!answer.vote_granted);
}
