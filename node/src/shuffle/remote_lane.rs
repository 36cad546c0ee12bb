//! A lane on another node, as the end of a scanner's edge: the edge's
//! messages go to a writer task that sends their batches on one stream of
//! the data channel. A batch's credit is given back only once the stream
//! has taken its bytes, so while the owner holds the stream back the edge
//! fills and its senders wait, exactly as for a slow local lane.

use std::sync::Arc;

use external_sort::batch_pool::BatchPool;
use proto_schema::quic::channel::{BatchStream, ChannelError, Link, Receipt};
use proto_schema::shuffle::StreamHeader;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::actors::messages::SortMergeMsg;
use crate::edge::{EdgeTarget, ReceiverGone};

/// Why a remote lane's stream did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("a batch received from another node was routed on to {0}; batches cross one link only")]
    Forwarded(String),
    #[error("every sender to {0} went away before the stream's end")]
    Unfinished(String),
    #[error("the stream to {0} stopped before its outcome was known")]
    Lost(String),
}

/// The target of an edge whose lane is on another node. Cheap to hand to
/// [`Edge::new`](crate::edge::Edge::new); delivering never waits.
pub struct RemoteLane {
    messages: mpsc::UnboundedSender<SortMergeMsg>,
}

impl EdgeTarget<SortMergeMsg> for RemoteLane {
    fn deliver(&self, message: SortMergeMsg) -> Result<(), ReceiverGone> {
        // Unbounded here because the edge bounds it: every data message
        // holds the edge's credit until the writer has sent it.
        self.messages.send(message).map_err(|_| ReceiverGone)
    }
}

/// What became of a remote lane's stream: the owner's receipt once the
/// lane's `Finish` has gone through, or why the stream failed. Dropping it
/// abandons the stream.
pub struct RemoteOutcome {
    outcome: oneshot::Receiver<Result<Receipt, RemoteError>>,
    writer: JoinHandle<()>,
    peer: String,
}

impl RemoteOutcome {
    pub async fn wait(mut self) -> Result<Receipt, RemoteError> {
        (&mut self.outcome)
            .await
            .unwrap_or_else(|_| Err(RemoteError::Lost(self.peer.clone())))
    }
}

impl Drop for RemoteOutcome {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

impl RemoteLane {
    /// Opens a stream on `link` for `header`'s job and partitions and
    /// starts its writer, which gives sent batches back to `pool`.
    pub async fn open(
        link: &Link,
        header: StreamHeader,
        pool: Arc<BatchPool>,
    ) -> Result<(Self, RemoteOutcome), ChannelError> {
        let stream = link.open(header).await?;
        let (messages, inbox) = mpsc::unbounded_channel();
        let (report, outcome) = oneshot::channel();
        let peer = link.name().to_owned();
        let writer = tokio::spawn(write(stream, inbox, pool, report, peer.clone()));
        Ok((
            Self { messages },
            RemoteOutcome {
                outcome,
                writer,
                peer,
            },
        ))
    }
}

/// Sends each batch as it comes, giving its credit back once sent, and
/// ends the stream at `Finish`. On failure the inbox is dropped with the
/// messages in it: their credits go back, and the edge's senders find it
/// closed.
async fn write(
    mut stream: BatchStream,
    mut inbox: mpsc::UnboundedReceiver<SortMergeMsg>,
    pool: Arc<BatchPool>,
    report: oneshot::Sender<Result<Receipt, RemoteError>>,
    peer: String,
) {
    let outcome = loop {
        match inbox.recv().await {
            Some(SortMergeMsg::Batch(batch, credit)) => {
                if let Err(e) = stream.send(&batch).await {
                    break Err(e.into());
                }
                drop(credit);
                pool.give(batch);
            }
            Some(SortMergeMsg::Finish) => break stream.finish().await.map_err(Into::into),
            Some(SortMergeMsg::Received(..)) => break Err(RemoteError::Forwarded(peer)),
            None => break Err(RemoteError::Unfinished(peer)),
        }
    };
    if let Err(e) = &outcome {
        tracing::warn!("shuffle stream failed: {e}");
    }
    drop(inbox);
    let _ = report.send(outcome);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use proto_schema::shuffle::PartitionRange;
    use proto_schema::{BatchView, Epoch, JobId, NodeId, RecordBatch};

    use super::*;
    use crate::edge::Edge;
    use crate::shuffle::Inbound;
    use crate::shuffle::test_support::{Cluster, batch, held_lane, link, small_windows};

    const JOB: JobId = JobId(7);
    const EPOCH: Epoch = Epoch(3);
    const EDGE_BYTES: u64 = 256 << 10;

    fn header(partitions: PartitionRange) -> StreamHeader {
        StreamHeader {
            job: JOB,
            epoch: EPOCH,
            sender: NodeId(2),
            partitions,
        }
    }

    /// The bytes a scanner's edge has sent, counted as each send returns.
    fn scan(
        edge: Edge<SortMergeMsg>,
        batches: Vec<RecordBatch>,
        sent: Arc<AtomicU64>,
    ) -> JoinHandle<Result<(), crate::edge::EdgeClosed>> {
        tokio::spawn(async move {
            for b in batches {
                let bytes = b.heap_bytes() as u64;
                edge.send(bytes, |credit| SortMergeMsg::Batch(b, credit))
                    .await?;
                sent.fetch_add(bytes, Ordering::SeqCst);
            }
            edge.send_control(SortMergeMsg::Finish)
        })
    }

    async fn settled(value: &AtomicU64) -> u64 {
        let mut last = value.load(Ordering::SeqCst);
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = value.load(Ordering::SeqCst);
            if now == last {
                return now;
            }
            last = now;
        }
    }

    /// An owner whose lane holds every batch makes the sender's edge fill
    /// and its scanner wait; once the lane drains, every batch arrives in
    /// order and the owner's receipt counts them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_owner_fills_the_scanners_edge() {
        let cluster = Cluster::new();
        let range = PartitionRange::new(0, 16).unwrap();
        let inbound = Inbound::new();
        let (lane, mut arrived) = held_lane(range, EDGE_BYTES);
        inbound.register(JOB, EPOCH, vec![lane]);
        let owner = cluster.node(1, small_windows(), inbound.clone());
        let sender = cluster.node(2, small_windows(), Inbound::new());
        let link = link(&sender, &owner, 1).await;

        let pool = Arc::new(BatchPool::new(0));
        let (target, outcome) = RemoteLane::open(&link, header(range), pool).await.unwrap();
        let edge = Edge::new("scan->node-1".into(), target, EDGE_BYTES, 64);
        let batches: Vec<_> = (0..200).map(|i| batch(i, 500, range)).collect();
        let total_records: u64 = batches.iter().map(|b| b.len() as u64).sum();
        let sent = Arc::new(AtomicU64::new(0));
        let scanner = scan(edge.clone(), batches.clone(), sent.clone());

        // Hold everything the owner's lane receives.
        let mut held = Vec::new();
        let until = Instant::now() + Duration::from_millis(600);
        while let Ok(Some(msg)) = tokio::time::timeout_at(until.into(), arrived.recv()).await {
            held.push(msg);
        }
        let sent_then = settled(&sent).await;
        assert!(!scanner.is_finished(), "the scanner waits on its full edge");
        let frame = batches[0].heap_bytes() as u64;
        assert!(
            edge.queued_bytes() + frame > EDGE_BYTES,
            "the scanner's edge is full: {} of {EDGE_BYTES} bytes",
            edge.queued_bytes()
        );
        // Past the owner's lane and the scanner's edge, what is in flight
        // is in the windows: bounded, whatever the input's size.
        let in_lane = held.len() as u64 * frame;
        let windows = small_windows();
        let bound = in_lane + EDGE_BYTES + windows.stream_window + windows.send_budget + 2 * frame;
        assert!(sent_then <= bound, "{sent_then} bytes sent, over {bound}");
        assert!(sent_then < 200 * frame / 2, "the scanner was not held back");

        // Drain the lane: everything arrives, in order.
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            for msg in held {
                if let SortMergeMsg::Received(b, _) = msg {
                    got.push(b.to_owned_batch());
                }
            }
            while let Some(msg) = arrived.recv().await {
                if let SortMergeMsg::Received(b, _) = msg {
                    got.push(b.to_owned_batch());
                }
                if got.len() == 200 {
                    break;
                }
            }
            got
        });
        tokio::time::timeout(Duration::from_secs(30), scanner)
            .await
            .expect("the scanner finishes once the owner drains")
            .unwrap()
            .unwrap();
        let receipt = tokio::time::timeout(Duration::from_secs(30), outcome.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(receipt.records, total_records);
        assert_eq!(reader.await.unwrap(), batches);
        let received = inbound.received(JOB).unwrap();
        assert_eq!(
            (received.records, received.streams, received.failed),
            (total_records, 1, 0)
        );
    }

    /// The owner's endpoint goes away mid-stream: the scanner's edge
    /// closes (no hang), and the stream's outcome says why.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_owner_closes_the_scanners_edge() {
        let cluster = Cluster::new();
        let range = PartitionRange::new(0, 16).unwrap();
        let inbound = Inbound::new();
        let (lane, _arrived) = held_lane(range, EDGE_BYTES);
        inbound.register(JOB, EPOCH, vec![lane]);
        let owner = cluster.node(1, small_windows(), inbound);
        let sender = cluster.node(2, small_windows(), Inbound::new());
        let link = link(&sender, &owner, 1).await;
        let pool = Arc::new(BatchPool::new(0));
        let (target, outcome) = RemoteLane::open(&link, header(range), pool).await.unwrap();
        let edge = Edge::new("scan->node-1".into(), target, EDGE_BYTES, 64);
        let batches: Vec<_> = (0..200).map(|i| batch(i, 500, range)).collect();
        let sent = Arc::new(AtomicU64::new(0));
        let scanner = scan(edge, batches, sent.clone());
        settled(&sent).await;
        assert!(!scanner.is_finished());

        drop(owner);
        let closed = tokio::time::timeout(Duration::from_secs(5), scanner)
            .await
            .expect("a lost owner closes the edge at once")
            .unwrap();
        assert!(closed.is_err(), "the scanner sees its edge closed");
        let err = tokio::time::timeout(Duration::from_secs(5), outcome.wait())
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(err, RemoteError::Channel(ChannelError::Transport(_))),
            "{err}"
        );
    }
}
