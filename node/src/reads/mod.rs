//! Cluster reads: `quern export`, `get` and `stats` given coordinators
//! read every node's store over the nodes' data channels
//! (`proto_schema::read`, a stream kind beside the shuffle's).
//!
//! - `service`: [`ReadService`], a node's side: a read stream answered
//!   from its store.
//! - `remote`: [`ClusterReader`], a client's side: every node read and
//!   the answers put together as one store's.
//!
//! [`NodeStreams`] is what a node's data channel serves: its peers'
//! shuffle streams into its [`Inbound`], and read streams from its store.

pub mod remote;
pub mod service;

pub use remote::{ClusterReader, ReadError};
pub use service::ReadService;

use proto_schema::quic::Peer;
use proto_schema::quic::channel::{ReadOutput, StreamHandler};
use proto_schema::read::ReadRequest;
use proto_schema::shuffle::{Refusal, StreamHeader};

use crate::shuffle::Inbound;
use crate::shuffle::inbound::LaneSink;

/// A node's data channel: shuffle streams to `inbound`, reads to `reads`.
#[derive(Clone)]
pub struct NodeStreams {
    pub inbound: Inbound,
    pub reads: ReadService,
}

impl StreamHandler for NodeStreams {
    type Sink = LaneSink;

    async fn open(&self, peer: &Peer, header: &StreamHeader) -> Result<LaneSink, Refusal> {
        self.inbound.open(peer, header).await
    }

    async fn read(&self, peer: &Peer, request: ReadRequest, out: ReadOutput) {
        self.reads.serve(peer, request, out).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proto_schema::quic::channel::{ChannelConfig, ChannelEndpoint, ChannelError};
    use proto_schema::read::{ReadEvent, ReadItem};
    use proto_schema::shuffle::PartitionRange;
    use proto_schema::{Epoch, JobId, NodeId, Position, partition_of};

    use super::remote::{ReadError, ReadNode};
    use super::*;
    use crate::config::Format;
    use crate::shuffle::inbound::node_certificate_name;
    use crate::shuffle::test_support::{Cluster, batch, held_lane};
    use crate::store::keys::{self, FirstSeen};
    use crate::store::{Access, Store};

    /// A store holding `lines` of dataset "d" (4 partitions), each first
    /// seen at file `file`, offset its index.
    fn store_with(lines: &[Vec<u8>], file: u32) -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8 << 20, Access::ReadWrite).unwrap();
        let dataset = store.open_dataset("d", Format::Lines, Some(4)).unwrap();
        let (mut key, mut value) = (Vec::new(), Vec::new());
        for (i, line) in lines.iter().enumerate() {
            keys::data_key(dataset.id, partition_of(line, 4), line, &mut key);
            let seen = FirstSeen {
                job: 1,
                position: Position {
                    file,
                    offset: i as u64,
                },
            };
            keys::data_value(seen, line, &mut value);
            store.db().put_cf(store.data_cf(), &key, &value).unwrap();
        }
        (dir, Arc::new(store))
    }

    /// Node `id`'s data channel serving `store`.
    fn serve(cluster: &Cluster, id: u64, store: Arc<Store>) -> ChannelEndpoint {
        let streams = NodeStreams {
            inbound: Inbound::new(),
            reads: ReadService::new(store),
        };
        let name = node_certificate_name(NodeId(id));
        ChannelEndpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            &cluster.identity(&name),
            ChannelConfig::default(),
            streams,
        )
        .unwrap()
    }

    fn read_node(id: u64, endpoint: &ChannelEndpoint) -> ReadNode {
        ReadNode {
            id: NodeId(id),
            address: endpoint.local_addr().to_string(),
            owns: None,
        }
    }

    /// Two nodes' stores, overlapping, read with a client's certificate:
    /// the export is every key once, in byte order, as a local export of
    /// both stores writes it; `get` finds keys either holds; a node that
    /// is gone fails the read naming it.
    #[test]
    fn a_client_reads_the_nodes_as_one_store() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let cluster = Cluster::new();
        let lines = |range: std::ops::Range<u32>| -> Vec<Vec<u8>> {
            range
                .map(|i| format!("key {:05}", i * 7 % 3000).into_bytes())
                .collect()
        };
        let (_a, a) = store_with(&lines(0..2000), 0);
        let (_b, b) = store_with(&lines(1500..3000), 1);
        let (one, two) = {
            let _entered = runtime.enter();
            (serve(&cluster, 1, a.clone()), serve(&cluster, 2, b.clone()))
        };
        let nodes = vec![read_node(1, &one), read_node(2, &two)];
        let reader = {
            let _entered = runtime.enter();
            ClusterReader::new(&cluster.identity("client"), nodes.clone(), "d").unwrap()
        };
        let mut remote = Vec::new();
        let written = reader.export(runtime.handle(), &mut remote).unwrap();
        let mut local = Vec::new();
        let (da, db) = (
            a.dataset("d").unwrap().unwrap(),
            b.dataset("d").unwrap().unwrap(),
        );
        crate::export::export_all(&[(&a, &da), (&b, &db)], &mut local).unwrap();
        assert_eq!(written, 3000);
        assert!(
            remote == local,
            "the remote export differs from the local one"
        );

        let found = reader.get(runtime.handle(), b"key 00014").unwrap().unwrap();
        assert_eq!((found.file, found.offset), (0, 2), "{found:?}");
        // Both hold it (i = 1600: offset 1600 of file 0, offset 100 of
        // file 1): the earlier sighting wins.
        let found = reader.get(runtime.handle(), b"key 02200").unwrap().unwrap();
        assert_eq!((found.file, found.offset), (0, 1600), "{found:?}");
        // Only the second holds it (i = 2001: offset 501 there).
        let found = reader.get(runtime.handle(), b"key 02007").unwrap().unwrap();
        assert_eq!(
            (found.node, found.file, found.offset),
            (NodeId(2), 1, 501),
            "{found:?}"
        );
        assert_eq!(reader.get(runtime.handle(), b"nope").unwrap(), None);

        drop(two);
        let err = reader
            .export(runtime.handle(), &mut Vec::new())
            .unwrap_err();
        let address = &nodes[1].address;
        assert!(
            err.to_string().contains(&format!("node 2 at {address}")),
            "{err}"
        );
    }

    /// Nodes 1 and 2 serving 100 keys each ("key 00000".. and "key
    /// 00100"..), cluster job 1 published on node 1 and only staged on
    /// node 2.
    struct HalfPublished {
        runtime: tokio::runtime::Runtime,
        cluster: Cluster,
        node_2: Arc<Store>,
        staged_on_2: crate::store::catalog::JobInfo,
        nodes: Vec<ReadNode>,
        _served: (ChannelEndpoint, ChannelEndpoint),
        _dirs: (tempfile::TempDir, tempfile::TempDir),
    }

    impl HalfPublished {
        fn new() -> Self {
            use crate::store::catalog::JobTotals;
            use crate::store::staged::ClusterPart;

            let runtime = tokio::runtime::Runtime::new().unwrap();
            let cluster = Cluster::new();
            let lines = |range: std::ops::Range<u32>| -> Vec<Vec<u8>> {
                range.map(|i| format!("key {i:05}").into_bytes()).collect()
            };
            let part = ClusterPart {
                job: JobId(1),
                began_ms: 1,
                attempt: 0,
                map_epoch: Epoch(1),
            };
            let staged = |store: &Store| {
                let dataset = store.dataset("d").unwrap().unwrap();
                let job = store.begin_part(&dataset, Vec::new(), Some(part)).unwrap();
                store
                    .stage_job(&job, Vec::new(), &JobTotals::default())
                    .unwrap()
            };
            let (dir_a, a) = store_with(&lines(0..100), 0);
            let (dir_b, b) = store_with(&lines(100..200), 1);
            a.publish_staged(&staged(&a)).unwrap();
            let staged_on_2 = staged(&b);
            let (one, two) = {
                let _entered = runtime.enter();
                (serve(&cluster, 1, a), serve(&cluster, 2, b.clone()))
            };
            let nodes = vec![read_node(1, &one), read_node(2, &two)];
            Self {
                runtime,
                cluster,
                node_2: b,
                staged_on_2,
                nodes,
                _served: (one, two),
                _dirs: (dir_a, dir_b),
            }
        }

        fn reader(&self, wait: std::time::Duration) -> ClusterReader {
            let _entered = self.runtime.enter();
            ClusterReader::new(&self.cluster.identity("client"), self.nodes.clone(), "d")
                .unwrap()
                .with_publish_wait(wait)
        }
    }

    /// Node 1 has published cluster job 1, node 2 has only staged it: a
    /// read waits for node 2 to publish, and fails naming both if it does
    /// not within the wait.
    #[test]
    fn reads_wait_until_every_node_has_published_a_committed_job() {
        use std::time::Duration;

        let half = HalfPublished::new();
        let (runtime, reader) = (&half.runtime, |wait| half.reader(wait));

        let short = Duration::from_millis(300);
        match reader(short).export(runtime.handle(), &mut Vec::new()) {
            Err(ReadError::Unpublished {
                job,
                published,
                staged,
                waited,
            }) => assert_eq!(
                (job, published, staged, waited),
                (JobId(1), vec![NodeId(1)], vec![NodeId(2)], short)
            ),
            other => panic!("expected the read refused, got {other:?}"),
        }
        let err = reader(short)
            .get(runtime.handle(), b"key 00001")
            .unwrap_err();
        assert!(matches!(err, ReadError::Unpublished { .. }), "{err}");

        // Node 2 publishes while a read waits: the read shows the job whole.
        let (node_2, staged_on_2) = (half.node_2.clone(), half.staged_on_2.clone());
        let publisher = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            node_2.publish_staged(&staged_on_2).unwrap();
        });
        let mut out = Vec::new();
        let written = reader(Duration::from_secs(20))
            .export(runtime.handle(), &mut out)
            .unwrap();
        publisher.join().unwrap();
        assert_eq!(written, 200);
    }

    /// Node 1 publishes job 1 and its export opens on a snapshot holding
    /// it; node 2's opens on one without it, then node 2 publishes. No job
    /// is half published any more, yet those snapshots would show half of
    /// job 1: the check after opening names node 2, and the export opens
    /// again and shows the job whole.
    #[test]
    fn an_export_opened_while_a_node_publishes_opens_again() {
        use proto_schema::read::PublishedJobs;

        let half = HalfPublished::new();
        let runtime = &half.runtime;
        let reader = half.reader(remote::DEFAULT_PUBLISH_WAIT);
        let request = ReadRequest::Export {
            dataset: "d".into(),
        };

        let (_, answers) = runtime.block_on(reader.ask_all(&request)).unwrap();
        let read: Vec<_> = answers.iter().map(|a| a.read_with()).collect();
        assert_eq!(
            read,
            [
                (NodeId(1), Some(PublishedJobs::of([JobId(1)]))),
                (NodeId(2), Some(PublishedJobs::of([])))
            ]
        );
        match reader.unsettled(runtime.handle(), &read).unwrap() {
            Some(ReadError::Unpublished { job, .. }) => assert_eq!(job, JobId(1)),
            other => panic!("expected job 1 half published, got {other:?}"),
        }
        half.node_2.publish_staged(&half.staged_on_2).unwrap();
        match reader.unsettled(runtime.handle(), &read).unwrap() {
            Some(ReadError::Republished { node, .. }) => assert_eq!(node, NodeId(2)),
            other => panic!("expected node 2 named, got {other:?}"),
        }
        drop(answers);

        let mut out = Vec::new();
        assert_eq!(reader.export(runtime.handle(), &mut out).unwrap(), 200);
        let (_, answers) = runtime.block_on(reader.ask_all(&request)).unwrap();
        let read: Vec<_> = answers.iter().map(|a| a.read_with()).collect();
        assert!(reader.unsettled(runtime.handle(), &read).unwrap().is_none());
        // A get answers from a snapshot too, named in its answer.
        let found = reader.get(runtime.handle(), b"key 00150").unwrap().unwrap();
        assert_eq!((found.node, found.offset), (NodeId(2), 50), "{found:?}");
    }

    /// A client's certificate may read but never send a shuffle stream;
    /// a coordinator's may not even read. A client's frame limit refuses a
    /// batch over it from its header.
    #[test]
    fn a_client_certificate_reads_but_never_shuffles() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let cluster = Cluster::new();
        let big: Vec<Vec<u8>> = (0..50)
            .map(|i| format!("{i:03}{}", "x".repeat(200)).into_bytes())
            .collect();
        let (_dir, store) = store_with(&big, 0);
        runtime.block_on(async {
            let inbound = Inbound::new();
            let (lane, _held) = held_lane(PartitionRange::new(0, 4).unwrap(), 1 << 20);
            inbound.register(JobId(7), Epoch(1), vec![lane]);
            let streams = NodeStreams {
                inbound,
                reads: ReadService::new(store),
            };
            let node = ChannelEndpoint::bind(
                "127.0.0.1:0".parse().unwrap(),
                &cluster.identity(&node_certificate_name(NodeId(1))),
                ChannelConfig::default(),
                streams,
            )
            .unwrap();
            let dial = |name: &str, max_frame: u32| {
                let config = ChannelConfig {
                    max_frame,
                    ..ChannelConfig::default()
                };
                ChannelEndpoint::dial_only(&cluster.identity(name), config).unwrap()
            };
            let client = dial("client", 1 << 20);
            let link = client
                .connect(node.local_addr(), &node_certificate_name(NodeId(1)))
                .await
                .unwrap();
            // A shuffle stream, whatever node it claims to come from.
            for sender in [1, 2] {
                let header = proto_schema::shuffle::StreamHeader {
                    job: JobId(7),
                    epoch: Epoch(1),
                    sender: NodeId(sender),
                    partitions: PartitionRange::new(0, 4).unwrap(),
                };
                let sent = async {
                    let mut stream = link.open(header).await?;
                    stream.send(&batch(1, 5, header.partitions)).await?;
                    stream.finish().await
                };
                match sent.await {
                    Err(ChannelError::Refused { refusal, .. }) => assert_eq!(
                        refusal,
                        Refusal::WrongSender {
                            claimed: NodeId(sender)
                        }
                    ),
                    other => panic!("a client's shuffle stream was not refused: {other:?}"),
                }
            }
            // Reads: the client's certificate may; the whole export arrives.
            let export = ReadRequest::Export {
                dataset: "d".into(),
            };
            let mut stream = link.read(&export).await.unwrap();
            let mut records = 0;
            loop {
                match stream.next().await.unwrap() {
                    ReadEvent::Batch(b) => records += proto_schema::BatchView::len(&b),
                    ReadEvent::Item(ReadItem::Dataset(_)) => {}
                    ReadEvent::End => break,
                    ReadEvent::Item(other) => panic!("{other:?}"),
                }
            }
            assert_eq!(records, 50);
            // A frame limit below the node's batch: refused on receipt.
            let small = dial("client", 4096);
            let link = small
                .connect(node.local_addr(), &node_certificate_name(NodeId(1)))
                .await
                .unwrap();
            let mut stream = link.read(&export).await.unwrap();
            stream.next().await.unwrap();
            let err = stream.next().await.err().expect("an oversize batch");
            assert!(err.to_string().contains("over the limit of 4096"), "{err}");
            // A coordinator's certificate may not read.
            let coordinator = dial("coord-1", 1 << 20);
            let link = coordinator
                .connect(node.local_addr(), &node_certificate_name(NodeId(1)))
                .await
                .unwrap();
            let mut stream = link.read(&export).await.unwrap();
            let err = stream.next().await.err().expect("refused");
            assert!(
                err.to_string()
                    .contains("a coordinator certificate may not read"),
                "{err}"
            );
        });
    }

    /// Past its limit a node refuses reads as busy, until a running one
    /// ends.
    #[test]
    fn reads_past_the_limit_are_refused_as_busy() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let cluster = Cluster::new();
        // More than the stream's window and the reader's queue hold: the
        // first export stays open while its client does not read.
        let lines: Vec<Vec<u8>> = (0..40_000)
            .map(|i| format!("{i:08}{}", "y".repeat(100)).into_bytes())
            .collect();
        let (_dir, store) = store_with(&lines, 0);
        runtime.block_on(async {
            let streams = NodeStreams {
                inbound: Inbound::new(),
                reads: ReadService::with_limit(store, 1),
            };
            let node = ChannelEndpoint::bind(
                "127.0.0.1:0".parse().unwrap(),
                &cluster.identity(&node_certificate_name(NodeId(1))),
                ChannelConfig::default(),
                streams,
            )
            .unwrap();
            let client =
                ChannelEndpoint::dial_only(&cluster.identity("client"), ChannelConfig::default())
                    .unwrap();
            let link = client
                .connect(node.local_addr(), &node_certificate_name(NodeId(1)))
                .await
                .unwrap();
            let export = ReadRequest::Export {
                dataset: "d".into(),
            };
            let mut held = link.read(&export).await.unwrap();
            held.next().await.unwrap();
            let mut refused = link.read(&export).await.unwrap();
            let err = refused.next().await.err().expect("busy");
            assert!(err.to_string().contains("busy: answering 1 reads"), "{err}");
            let mut records = 0;
            loop {
                match held.next().await.unwrap() {
                    ReadEvent::Batch(b) => records += proto_schema::BatchView::len(&b),
                    ReadEvent::End => break,
                    ReadEvent::Item(other) => panic!("{other:?}"),
                }
            }
            assert_eq!(records, 40_000);
            // The permit goes back as the stream ends.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let mut again = link.read(&export).await.unwrap();
                match again.next().await {
                    Ok(_) => break,
                    Err(e) if std::time::Instant::now() < deadline => {
                        assert!(e.to_string().contains("busy"), "{e}");
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("still refused: {e}"),
                }
            }
        });
    }
}
