//! Bounded edges between actors: lossless back-pressure in bytes and in
//! messages.
//!
//! ractor's mailboxes are unbounded, so every edge that carries data goes
//! through an [`Edge`]: a sender first takes a [`Credit`] for the message's
//! bytes (and one message slot), waiting while the edge is full, then casts.
//! The credit travels inside the message and gives the room back when the
//! receiver drops it, which it does once the bytes are really freed or handed
//! to another budget. Bounding by count alone lets large messages blow
//! memory; bounding by bytes alone lets tiny messages pile up; so both.
//!
//! Where an edge ends is an [`EdgeTarget`]: a local actor's mailbox today,
//! and any receiver that keeps a message's credit until it has taken the
//! message's bytes off the edge's budget (a remote owner's stream, say).

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::Gauge;
use ractor::ActorRef;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// How often a sender held back by a moving limit (see
/// [`Edge::send_within`]) looks at the limit again.
const LIMIT_RECHECK: Duration = Duration::from_millis(10);

/// The largest credit one message can take. A message larger than the whole
/// edge takes the whole edge, so it still passes, alone.
fn clamp_credit(bytes: u64, capacity: u32) -> u32 {
    bytes.min(u64::from(capacity)).max(1) as u32
}

#[derive(Debug, thiserror::Error)]
#[error("edge {edge} is closed: its receiver stopped")]
pub struct EdgeClosed {
    pub edge: String,
}

/// Where an edge delivers its messages.
///
/// A data message holds the [`Credit`] it took; the target keeps it with
/// the message until the bytes are freed or handed to another budget, and
/// only then drops it. Delivering must not wait: the edge has already
/// waited for room.
pub trait EdgeTarget<M>: Send + Sync + 'static {
    /// Hands `message` to the receiver, or fails if the receiver is gone.
    fn deliver(&self, message: M) -> Result<(), ReceiverGone>;
}

/// The receiver at an edge's end has stopped taking messages.
#[derive(Debug)]
pub struct ReceiverGone;

/// An actor on this node: the message goes into its mailbox.
impl<M: ractor::Message> EdgeTarget<M> for ActorRef<M> {
    fn deliver(&self, message: M) -> Result<(), ReceiverGone> {
        self.cast(message).map_err(|_| ReceiverGone)
    }
}

struct EdgeState {
    name: String,
    capacity_bytes: u32,
    bytes: Arc<Semaphore>,
    slots: Arc<Semaphore>,
    queued_bytes: Gauge,
    queued_messages: Gauge,
    /// Woken whenever a credit is given back.
    drained: Notify,
    /// Back-pressure time: how long senders waited for room, in seconds.
    /// A gauge that only grows, because `metrics` counters are integers.
    wait_seconds: Gauge,
}

/// A sender's side of a bounded edge to one receiver. Cheap to clone.
pub struct Edge<M> {
    target: Arc<dyn EdgeTarget<M>>,
    state: Arc<EdgeState>,
}

impl<M> Clone for Edge<M> {
    fn clone(&self) -> Self {
        Self {
            target: self.target.clone(),
            state: self.state.clone(),
        }
    }
}

/// Room on an edge, held by the message that took it.
pub struct Credit {
    _bytes: OwnedSemaphorePermit,
    _slot: OwnedSemaphorePermit,
    amount: u32,
    state: Arc<EdgeState>,
}

impl Drop for Credit {
    fn drop(&mut self) {
        self.state.queued_bytes.decrement(f64::from(self.amount));
        self.state.queued_messages.decrement(1.0);
        self.state.drained.notify_waiters();
    }
}

impl std::fmt::Debug for Credit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credit({} bytes on {})", self.amount, self.state.name)
    }
}

impl<M: 'static> Edge<M> {
    /// An edge named `name` (used in metrics and errors) into `target`.
    pub fn new(
        name: String,
        target: impl EdgeTarget<M>,
        capacity_bytes: u64,
        capacity_messages: usize,
    ) -> Self {
        let capacity_bytes = capacity_bytes.clamp(1, u64::from(u32::MAX)) as u32;
        let label = [("edge", name.clone())];
        metrics::gauge!("quern_edge_capacity_bytes", &label).set(f64::from(capacity_bytes));
        let state = EdgeState {
            capacity_bytes,
            bytes: Arc::new(Semaphore::new(capacity_bytes as usize)),
            slots: Arc::new(Semaphore::new(capacity_messages.max(1))),
            queued_bytes: metrics::gauge!("quern_edge_queued_bytes", &label),
            queued_messages: metrics::gauge!("quern_edge_queued_messages", &label),
            drained: Notify::new(),
            wait_seconds: metrics::gauge!("quern_edge_wait_seconds", &label),
            name,
        };
        Self {
            target: Arc::new(target),
            state: Arc::new(state),
        }
    }

    /// Waits for room for `bytes`, then sends the message `make` builds
    /// around the credit. Fails once the edge is closed or the receiver is
    /// gone, so a sender never waits on a dead stage.
    pub async fn send(&self, bytes: u64, make: impl FnOnce(Credit) -> M) -> Result<(), EdgeClosed> {
        let credit = self.acquire(bytes).await?;
        self.deliver(make(credit))
    }

    /// As [`send`](Self::send), but first waits while the edge already
    /// holds messages and `bytes` more would take it past `limit()`, a limit
    /// that may move while waiting (the governor's scan credit). An empty
    /// edge always takes the message, so a sender is never stopped for good.
    pub async fn send_within(
        &self,
        bytes: u64,
        limit: impl Fn() -> u64,
        make: impl FnOnce(Credit) -> M,
    ) -> Result<(), EdgeClosed> {
        let mut waited = None;
        loop {
            let queued = self.queued_bytes();
            if queued == 0 || queued + bytes <= limit() {
                break;
            }
            if self.state.bytes.is_closed() {
                return Err(self.closed());
            }
            waited.get_or_insert_with(Instant::now);
            let _ = tokio::time::timeout(LIMIT_RECHECK, self.state.drained.notified()).await;
        }
        if let Some(start) = waited {
            self.record_wait(start);
        }
        self.send(bytes, make).await
    }

    fn record_wait(&self, start: Instant) {
        self.state
            .wait_seconds
            .increment(start.elapsed().as_secs_f64());
    }

    /// Sends a control message (such as end-of-stream) without taking
    /// credit: it carries no data, and it queues behind the data already
    /// sent.
    pub fn send_control(&self, message: M) -> Result<(), EdgeClosed> {
        self.deliver(message)
    }

    /// Waits for room for `bytes` and takes it, for a sender that must
    /// hold the room before it has the message: a stream reader takes
    /// room for a frame before reading its bytes. The message then goes
    /// with [`send_reserved`](Self::send_reserved).
    pub async fn reserve(&self, bytes: u64) -> Result<Credit, EdgeClosed> {
        self.acquire(bytes).await
    }

    /// Sends a message that carries the [`Credit`] [`reserve`](Self::reserve)
    /// took.
    pub fn send_reserved(&self, message: M) -> Result<(), EdgeClosed> {
        self.deliver(message)
    }

    fn deliver(&self, message: M) -> Result<(), EdgeClosed> {
        self.target.deliver(message).map_err(|_| self.closed())
    }

    async fn acquire(&self, bytes: u64) -> Result<Credit, EdgeClosed> {
        let state = &self.state;
        let amount = clamp_credit(bytes, state.capacity_bytes);
        let mut waited = None;
        let slot = match state.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(self.closed()),
            Err(TryAcquireError::NoPermits) => {
                waited.get_or_insert_with(Instant::now);
                state
                    .slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| self.closed())?
            }
        };
        let room = match state.bytes.clone().try_acquire_many_owned(amount) {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(self.closed()),
            Err(TryAcquireError::NoPermits) => {
                waited.get_or_insert_with(Instant::now);
                state
                    .bytes
                    .clone()
                    .acquire_many_owned(amount)
                    .await
                    .map_err(|_| self.closed())?
            }
        };
        if let Some(start) = waited {
            self.record_wait(start);
        }
        state.queued_bytes.increment(f64::from(amount));
        state.queued_messages.increment(1.0);
        Ok(Credit {
            _bytes: room,
            _slot: slot,
            amount,
            state: state.clone(),
        })
    }

    fn closed(&self) -> EdgeClosed {
        EdgeClosed {
            edge: self.state.name.clone(),
        }
    }

    /// A handle that can close this edge without knowing its message type.
    pub fn closer(&self) -> EdgeCloser {
        EdgeCloser(self.state.clone())
    }

    /// Bytes currently held by messages on this edge.
    pub fn queued_bytes(&self) -> u64 {
        u64::from(self.state.capacity_bytes) - self.state.bytes.available_permits() as u64
    }
}

/// Closes an edge: every waiting and future sender gets [`EdgeClosed`].
pub struct EdgeCloser(Arc<EdgeState>);

impl EdgeCloser {
    pub fn close(&self) {
        self.0.bytes.close();
        self.0.slots.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use ractor::{Actor, ActorProcessingErr};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// Holds each message (and so its credit) for a moment, recording the
    /// most bytes ever queued on the edge it drains.
    struct SlowReceiver;

    struct Held(u64, #[allow(dead_code)] Credit);

    impl Actor for SlowReceiver {
        type Msg = Held;
        type State = Arc<AtomicU64>;
        type Arguments = Arc<AtomicU64>;

        async fn pre_start(
            &self,
            _: ActorRef<Held>,
            received: Arc<AtomicU64>,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(received)
        }

        async fn handle(
            &self,
            _: ActorRef<Held>,
            msg: Held,
            received: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            tokio::time::sleep(Duration::from_micros(200)).await;
            received.fetch_add(msg.0, Ordering::SeqCst);
            Ok(())
        }
    }

    async fn run_senders(sizes: Vec<u64>, capacity: u64, slots: usize) -> (u64, u64) {
        let received = Arc::new(AtomicU64::new(0));
        let (actor, handle) = Actor::spawn(None, SlowReceiver, received.clone())
            .await
            .unwrap();
        let edge = Edge::new("test".into(), actor.clone(), capacity, slots);
        let peak = Arc::new(AtomicU64::new(0));
        let watcher = {
            let (edge, peak) = (edge.clone(), peak.clone());
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(edge.queued_bytes(), Ordering::SeqCst);
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut senders = Vec::new();
        for chunk in sizes.chunks(8) {
            let (edge, chunk) = (edge.clone(), chunk.to_vec());
            senders.push(tokio::spawn(async move {
                for size in chunk {
                    edge.send(size, |credit| Held(size, credit)).await.unwrap();
                }
            }));
        }
        for s in senders {
            s.await.unwrap();
        }
        let expected: u64 = sizes.iter().sum();
        while received.load(Ordering::SeqCst) < expected {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        watcher.abort();
        actor.stop(None);
        handle.await.unwrap();
        (peak.load(Ordering::SeqCst), received.load(Ordering::SeqCst))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Whatever the message sizes and however many senders race, the
        /// bytes queued on an edge never exceed its capacity, and every
        /// message arrives.
        #[test]
        fn queued_bytes_never_exceed_capacity(
            sizes in proptest::collection::vec(1u64..5_000, 1..80),
            capacity in 1_000u64..20_000,
            slots in 1usize..8,
        ) {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            let (peak, received) = rt.block_on(run_senders(sizes.clone(), capacity, slots));
            prop_assert!(peak <= capacity, "peak {} over capacity {}", peak, capacity);
            prop_assert_eq!(received, sizes.iter().sum::<u64>());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closing_wakes_a_waiting_sender() {
        let received = Arc::new(AtomicU64::new(0));
        let (actor, _handle) = Actor::spawn(None, SlowReceiver, received).await.unwrap();
        let edge = Edge::new("closing".into(), actor.clone(), 10, 1);
        // Hold the only slot, so the next send must wait.
        let held = edge.acquire(10).await.unwrap();
        let waiting = {
            let edge = edge.clone();
            tokio::spawn(async move { edge.send(5, |c| Held(5, c)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "sender should be waiting for room");
        edge.closer().close();
        let err = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("closing must wake the sender")
            .unwrap()
            .unwrap_err();
        assert_eq!(err.edge, "closing");
        drop(held);
        actor.stop(None);
    }

    async fn wait_for(received: &AtomicU64, total: u64) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while received.load(Ordering::SeqCst) < total {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("messages arrive");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sender_waits_for_a_moving_limit() {
        let received = Arc::new(AtomicU64::new(0));
        let (actor, _handle) = Actor::spawn(None, SlowReceiver, received.clone())
            .await
            .unwrap();
        let edge = Edge::new("limited".into(), actor.clone(), 1_000, 8);
        let limit = Arc::new(AtomicU64::new(1_000));
        let held = edge.acquire(300).await.unwrap();
        // 300 queued + 200 fits under 1000: no wait.
        let read_limit = || limit.load(Ordering::SeqCst);
        edge.send_within(200, read_limit, |c| Held(200, c))
            .await
            .unwrap();
        wait_for(&received, 200).await;

        limit.store(400, Ordering::SeqCst);
        let waiting = {
            let (edge, limit) = (edge.clone(), limit.clone());
            tokio::spawn(async move {
                edge.send_within(200, || limit.load(Ordering::SeqCst), |c| Held(200, c))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "300 + 200 is over the limit of 400");
        limit.store(600, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a raised limit lets the sender through")
            .unwrap()
            .unwrap();
        wait_for(&received, 400).await;

        // An empty edge takes a message whatever the limit.
        drop(held);
        limit.store(0, Ordering::SeqCst);
        edge.send_within(500, read_limit, |c| Held(500, c))
            .await
            .unwrap();
        wait_for(&received, 900).await;
        actor.stop(None);
    }

    /// A receiver that is not an actor, as a remote owner's stream will be.
    impl EdgeTarget<Held> for tokio::sync::mpsc::UnboundedSender<Held> {
        fn deliver(&self, message: Held) -> Result<(), ReceiverGone> {
            self.send(message).map_err(|_| ReceiverGone)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_edge_bounds_a_receiver_that_is_not_an_actor() {
        let (channel, mut received) = tokio::sync::mpsc::unbounded_channel();
        let edge = Edge::new("to-channel".into(), channel, 100, 8);
        edge.send(60, |c| Held(60, c)).await.unwrap();
        let waiting = {
            let edge = edge.clone();
            tokio::spawn(async move { edge.send(60, |c| Held(60, c)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiting.is_finished(),
            "60 + 60 bytes is over the edge's 100"
        );
        let first = received.recv().await.unwrap();
        assert_eq!(first.0, 60);
        // The receiver is done with the bytes: their credit goes back.
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the freed room lets the sender through")
            .unwrap()
            .unwrap();
        drop(received.recv().await.unwrap());
        assert_eq!(edge.queued_bytes(), 0);

        drop(received);
        let err = edge.send(10, |c| Held(10, c)).await.unwrap_err();
        assert_eq!(err.edge, "to-channel");
        assert_eq!(
            edge.queued_bytes(),
            0,
            "an undelivered message gives its room back"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_oversized_message_passes_alone() {
        let received = Arc::new(AtomicU64::new(0));
        let (actor, _handle) = Actor::spawn(None, SlowReceiver, received.clone())
            .await
            .unwrap();
        let edge = Edge::new("big".into(), actor.clone(), 100, 4);
        edge.send(1_000, |c| Held(1_000, c)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while received.load(Ordering::SeqCst) < 1_000 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(edge.queued_bytes(), 0);
        actor.stop(None);
    }
}
