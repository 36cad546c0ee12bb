//! The owner's side of the shuffle: the jobs this node takes streams for,
//! each under the partition map (epoch) it last learned and with the lanes
//! its partitions go to. A stream is taken only if it names a job running
//! here, at the current epoch, for partitions one lane of it owns, from the
//! node its certificate names; every batch is checked against the epoch
//! again as it arrives, so a new map fences streams already open.
//! Batches go into the lane's edge with credit reserved before their bytes
//! are read: a full lane stops the stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto_schema::quic::Peer;
use proto_schema::quic::channel::{BatchSink, StreamHandler};
use proto_schema::shuffle::{PartitionRange, Refusal, StreamEnd, StreamHeader};
use proto_schema::{BatchView, Epoch, JobId, NodeId, ValidBatch};
use tokio::sync::Notify;

use crate::actors::messages::SortMergeMsg;
use crate::edge::{Credit, Edge};

/// The name a node's certificate carries.
pub fn node_certificate_name(node: NodeId) -> String {
    format!("node-{node}")
}

/// One lane of a job on this node: the partitions it owns and its input.
#[derive(Clone)]
pub struct InboundLane {
    pub partitions: PartitionRange,
    pub edge: Edge<SortMergeMsg>,
}

/// How long a stream for a job this node does not run waits for the job to
/// start here before it is refused: a peer may start the job first.
pub const DEFAULT_JOB_START_GRACE: Duration = Duration::from_secs(10);

/// The jobs this node takes streams for. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct Inbound {
    jobs: Arc<Mutex<HashMap<JobId, Arc<InboundJob>>>>,
    /// Woken whenever a job is registered.
    registered: Arc<Notify>,
    grace: Duration,
}

impl Default for Inbound {
    fn default() -> Self {
        Self::with_grace(DEFAULT_JOB_START_GRACE)
    }
}

struct InboundJob {
    epoch: Epoch,
    lanes: Vec<InboundLane>,
    /// What arrived, all streams together, for the counts an owner
    /// reports (kept across epochs).
    received: Arc<Received>,
}

/// Records delivered into a job's lanes, streams whose end checked out
/// (in all and per sender), and streams that ended otherwise.
#[derive(Default)]
struct Received {
    records: AtomicU64,
    streams: AtomicU64,
    failed: AtomicU64,
    /// Complete streams per sender: a handful of peers.
    ended_by: Mutex<Vec<(NodeId, u64)>>,
}

/// What a job received on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivedCounts {
    pub records: u64,
    /// Streams complete.
    pub streams: u64,
    /// Streams taken that ended without completing: refused after they
    /// opened, or abandoned by their sender or link.
    pub failed: u64,
}

impl Received {
    fn counts(&self) -> ReceivedCounts {
        ReceivedCounts {
            records: self.records.load(Ordering::Relaxed),
            streams: self.streams.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    fn ended(&self, sender: NodeId) {
        self.streams.fetch_add(1, Ordering::Relaxed);
        let mut ended_by = self.ended_by.lock().expect("never poisoned");
        match ended_by.iter_mut().find(|(node, _)| *node == sender) {
            Some((_, streams)) => *streams += 1,
            None => ended_by.push((sender, 1)),
        }
    }

    fn ended_from(&self, sender: NodeId) -> u64 {
        let ended_by = self.ended_by.lock().expect("never poisoned");
        ended_by
            .iter()
            .find(|(node, _)| *node == sender)
            .map_or(0, |&(_, streams)| streams)
    }
}

impl Inbound {
    pub fn new() -> Self {
        Self::default()
    }

    /// Streams for a job not running here wait `grace` for it to start.
    pub fn with_grace(grace: Duration) -> Self {
        Self {
            jobs: Arc::default(),
            registered: Arc::default(),
            grace,
        }
    }

    /// Takes streams for `job` under partition map `epoch` into `lanes`;
    /// a later call (a new map) replaces them and fences streams opened
    /// under the old one from their next batch.
    pub fn register(&self, job: JobId, epoch: Epoch, lanes: Vec<InboundLane>) {
        let mut jobs = self.jobs.lock().expect("never poisoned");
        let received = jobs
            .get(&job)
            .map_or_else(Default::default, |j| j.received.clone());
        jobs.insert(
            job,
            Arc::new(InboundJob {
                epoch,
                lanes,
                received,
            }),
        );
        self.registered.notify_waiters();
    }

    /// Stops taking streams for `job`; open ones are refused from their
    /// next batch. Returns what it received.
    pub fn remove(&self, job: JobId) -> Option<ReceivedCounts> {
        let removed = self.jobs.lock().expect("never poisoned").remove(&job);
        removed.map(|j| j.received.counts())
    }

    /// What `job` received so far.
    pub fn received(&self, job: JobId) -> Option<ReceivedCounts> {
        self.job(job).map(|j| j.received.counts())
    }

    /// Whether every stream `sender` owes `job`'s lanes here (one per
    /// lane) has ended complete; `None` if the job does not run here.
    pub fn complete_from(&self, job: JobId, sender: NodeId) -> Option<bool> {
        self.job(job)
            .map(|j| j.received.ended_from(sender) >= j.lanes.len() as u64)
    }

    fn job(&self, job: JobId) -> Option<Arc<InboundJob>> {
        self.jobs.lock().expect("never poisoned").get(&job).cloned()
    }

    /// As [`current`](Self::current), waiting (within the grace) for a job
    /// that has not started here yet.
    async fn when_started(&self, job: JobId, epoch: Epoch) -> Result<Arc<InboundJob>, Refusal> {
        let deadline = tokio::time::Instant::now() + self.grace;
        loop {
            // Created before looking, so a registration in between wakes it.
            let registered = self.registered.notified();
            match self.current(job, epoch) {
                Err(Refusal::UnknownJob { .. }) if tokio::time::Instant::now() < deadline => {
                    let _ = tokio::time::timeout_at(deadline, registered).await;
                }
                found => return found,
            }
        }
    }

    /// The job, if it runs here at `epoch`.
    fn current(&self, job: JobId, epoch: Epoch) -> Result<Arc<InboundJob>, Refusal> {
        let entry = self.job(job).ok_or(Refusal::UnknownJob { job })?;
        if entry.epoch != epoch {
            return Err(Refusal::StaleEpoch {
                job,
                stream: epoch,
                current: entry.epoch,
            });
        }
        Ok(entry)
    }
}

impl StreamHandler for Inbound {
    type Sink = LaneSink;

    async fn open(&self, peer: &Peer, header: &StreamHeader) -> Result<LaneSink, Refusal> {
        if peer.name.as_deref() != Some(&node_certificate_name(header.sender)) {
            return Err(Refusal::WrongSender {
                claimed: header.sender,
            });
        }
        let job = self.when_started(header.job, header.epoch).await?;
        let lane = job
            .lanes
            .iter()
            .find(|lane| lane.partitions.covers(&header.partitions))
            .ok_or(Refusal::NotOwner {
                job: header.job,
                partitions: header.partitions,
            })?;
        Ok(LaneSink {
            inbound: self.clone(),
            job: header.job,
            epoch: header.epoch,
            sender: header.sender,
            edge: lane.edge.clone(),
            received: job.received.clone(),
            ended: false,
        })
    }
}

/// One stream's way into its lane.
pub struct LaneSink {
    inbound: Inbound,
    job: JobId,
    epoch: Epoch,
    sender: NodeId,
    edge: Edge<SortMergeMsg>,
    received: Arc<Received>,
    ended: bool,
}

impl Drop for LaneSink {
    fn drop(&mut self) {
        if !self.ended {
            self.received.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl BatchSink for LaneSink {
    type Room = Credit;

    async fn reserve(&mut self, bytes: u64) -> Result<Credit, Refusal> {
        self.edge
            .reserve(bytes)
            .await
            .map_err(|_| Refusal::OwnerGone { job: self.job })
    }

    fn deliver(&mut self, batch: ValidBatch, room: Credit) -> Result<(), Refusal> {
        self.inbound.current(self.job, self.epoch)?;
        let records = batch.len() as u64;
        self.edge
            .send_reserved(SortMergeMsg::Received(batch, room))
            .map_err(|_| Refusal::OwnerGone { job: self.job })?;
        self.received.records.fetch_add(records, Ordering::Relaxed);
        Ok(())
    }

    fn end(&mut self, _end: &StreamEnd) -> Result<(), Refusal> {
        self.inbound.current(self.job, self.epoch)?;
        self.ended = true;
        self.received.ended(self.sender);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proto_schema::RecordBatch;
    use proto_schema::quic::channel::{ChannelConfig, ChannelError};
    use proto_schema::shuffle::StreamHeader;

    use super::*;
    use crate::shuffle::test_support::{Cluster, batch, held_lane, link};

    const JOB: JobId = JobId(7);

    fn header(sender: u64, epoch: u64, start: u16, end: u16) -> StreamHeader {
        StreamHeader {
            job: JOB,
            epoch: Epoch(epoch),
            sender: NodeId(sender),
            partitions: PartitionRange::new(start, end).unwrap(),
        }
    }

    fn refusal(result: Result<impl Sized, ChannelError>) -> Refusal {
        match result {
            Err(ChannelError::Refused { refusal, .. }) => refusal,
            Err(e) => panic!("expected a refusal, got {e}"),
            Ok(_) => panic!("expected a refusal, the stream was accepted"),
        }
    }

    /// Owner node 1 runs job 7 at epoch 3 with lanes 0..8 and 8..16.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_are_taken_only_for_the_owners_jobs_maps_lanes_and_peers() {
        let cluster = Cluster::new();
        let grace = Duration::from_millis(300);
        let inbound = Inbound::with_grace(grace);
        let (low, mut low_in) = held_lane(PartitionRange::new(0, 8).unwrap(), 1 << 20);
        let (high, _high_in) = held_lane(PartitionRange::new(8, 16).unwrap(), 1 << 20);
        let owner = cluster.node(1, ChannelConfig::default(), inbound.clone());
        let sender = cluster.node(2, ChannelConfig::default(), Inbound::new());
        let link = link(&sender, &owner, 1).await;
        let b = batch(1, 10, PartitionRange::new(0, 8).unwrap());
        let send_one = |header: StreamHeader, b: RecordBatch| {
            let link = link.clone();
            async move {
                let mut out = link.open(header).await?;
                out.send(&b).await?;
                out.finish().await
            }
        };

        // A stream may come before the job starts here: it waits for it.
        let early = tokio::spawn(send_one(header(2, 3, 0, 8), b.clone()));
        tokio::time::sleep(grace / 3).await;
        inbound.register(JOB, Epoch(3), vec![low.clone(), high.clone()]);
        let receipt = early.await.unwrap().unwrap();
        assert_eq!(receipt.records, 10);
        match low_in.recv().await.unwrap() {
            SortMergeMsg::Received(got, _) => assert_eq!(got.to_owned_batch(), b),
            _ => panic!("expected a received batch"),
        }
        let counts = |records, streams, failed| {
            Some(ReceivedCounts {
                records,
                streams,
                failed,
            })
        };
        assert_eq!(inbound.received(JOB), counts(10, 1, 0));
        // Node 2 owes each of the two lanes a stream: one has ended.
        assert_eq!(inbound.complete_from(JOB, NodeId(2)), Some(false));
        let high_batch = batch(1, 10, PartitionRange::new(8, 16).unwrap());
        send_one(header(2, 3, 8, 16), high_batch).await.unwrap();
        assert_eq!(inbound.complete_from(JOB, NodeId(2)), Some(true));
        assert_eq!(inbound.complete_from(JOB, NodeId(3)), Some(false));
        assert_eq!(inbound.received(JOB), counts(20, 2, 0));

        // Node 2's certificate cannot speak for node 5.
        assert_eq!(
            refusal(send_one(header(5, 3, 0, 8), b.clone()).await),
            Refusal::WrongSender { claimed: NodeId(5) }
        );
        // An older map, a newer one.
        for epoch in [2, 4] {
            assert_eq!(
                refusal(send_one(header(2, epoch, 0, 8), b.clone()).await),
                Refusal::StaleEpoch {
                    job: JOB,
                    stream: Epoch(epoch),
                    current: Epoch(3)
                }
            );
        }
        // Partitions across two lanes, or beyond this owner's.
        for (start, end) in [(4, 12), (16, 20)] {
            assert_eq!(
                refusal(send_one(header(2, 3, start, end), b.clone()).await),
                Refusal::NotOwner {
                    job: JOB,
                    partitions: PartitionRange::new(start, end).unwrap()
                }
            );
        }

        // A new map fences a stream opened under the old one.
        let mut out = link.open(header(2, 3, 0, 8)).await.unwrap();
        out.send(&b).await.unwrap();
        assert!(matches!(
            low_in.recv().await,
            Some(SortMergeMsg::Received(..))
        ));
        inbound.register(JOB, Epoch(4), vec![low, high]);
        let fenced = async {
            out.send(&b).await?;
            out.finish().await
        };
        assert_eq!(
            refusal(fenced.await),
            Refusal::StaleEpoch {
                job: JOB,
                stream: Epoch(3),
                current: Epoch(4)
            }
        );

        // Once the job ends here, its streams are refused.
        // The fenced stream was taken and did not complete.
        assert_eq!(inbound.remove(JOB), counts(30, 2, 1));
        assert_eq!(inbound.complete_from(JOB, NodeId(2)), None);
        assert_eq!(
            refusal(send_one(header(2, 4, 0, 8), b.clone()).await),
            Refusal::UnknownJob { job: JOB }
        );
    }
}
