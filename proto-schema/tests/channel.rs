//! The shuffle's data channel over loopback QUIC with certificates from a
//! cluster CA: batches arrive intact and in order per stream; a slow owner
//! holds its senders back with bounded bytes in flight, however many links
//! it has; damaged frames, stale epochs and unknown jobs are refused with
//! their reason and counted; a lost peer is an error at the sender within
//! its timeout, never a hang; and a throughput figure.
//!
//! Its own test binary: it installs the process's global metrics recorder.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use proto_schema::frame::{FrameKind, FrameReader, HEADER_LEN, write_frame};
use proto_schema::quic::Peer;
use proto_schema::quic::channel::{
    BatchSink, ChannelConfig, ChannelEndpoint, ChannelError, Link, RECEIVED_BYTES_METRIC,
    REFUSED_METRIC, SENT_BYTES_METRIC, StreamHandler,
};
use proto_schema::shuffle::{PartitionRange, Refusal, StreamEnd, StreamHeader, StreamReply};
use proto_schema::{BatchView, Epoch, JobId, NodeId, Position, Record, RecordBatch, ValidBatch};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[path = "support/cluster_ca.rs"]
mod cluster_ca;
use cluster_ca::Cluster;

const JOB: JobId = JobId(7);
const EPOCH: Epoch = Epoch(3);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().unwrap())
}

/// A metric's value for the line carrying `label` (`name="value"`).
fn metric(name: &str, label: &str) -> u64 {
    let text = metrics().render();
    text.lines()
        .find(|line| line.starts_with(name) && line.contains(label))
        .map_or(0, |line| line.rsplit(' ').next().unwrap().parse().unwrap())
}

/// Tests that count refusals run one at a time: the counter is shared.
async fn refusal_lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

fn refusals(reason: &str) -> u64 {
    metric(REFUSED_METRIC, &format!("reason=\"{reason}\""))
}

/// An owner that records every stream's batches (unless it only counts
/// them). It knows one job at one epoch; with a gate, each frame waits for
/// a permit before it is read.
/// The batches of one stream, as they arrived.
type Arrived = Arc<Mutex<Vec<RecordBatch>>>;

#[derive(Clone, Default)]
struct Owner {
    streams: Arc<Mutex<Vec<(StreamHeader, Arrived)>>>,
    gate: Option<Arc<Semaphore>>,
    delivered_bytes: Arc<AtomicU64>,
    only_count: bool,
}

impl Owner {
    fn gated(permits: usize) -> Self {
        Self {
            gate: Some(Arc::new(Semaphore::new(permits))),
            ..Self::default()
        }
    }

    fn batches(&self) -> Vec<(StreamHeader, Vec<RecordBatch>)> {
        let streams = self.streams.lock().unwrap();
        streams
            .iter()
            .map(|(h, b)| (*h, b.lock().unwrap().clone()))
            .collect()
    }
}

struct OwnerSink {
    batches: Arrived,
    gate: Option<Arc<Semaphore>>,
    delivered_bytes: Arc<AtomicU64>,
    only_count: bool,
}

impl StreamHandler for Owner {
    type Sink = OwnerSink;

    async fn open(&self, _peer: &Peer, header: &StreamHeader) -> Result<OwnerSink, Refusal> {
        if header.job != JOB {
            return Err(Refusal::UnknownJob { job: header.job });
        }
        if header.epoch != EPOCH {
            return Err(Refusal::StaleEpoch {
                job: header.job,
                stream: header.epoch,
                current: EPOCH,
            });
        }
        let batches = Arc::new(Mutex::new(Vec::new()));
        self.streams
            .lock()
            .unwrap()
            .push((*header, batches.clone()));
        Ok(OwnerSink {
            batches,
            gate: self.gate.clone(),
            delivered_bytes: self.delivered_bytes.clone(),
            only_count: self.only_count,
        })
    }
}

impl BatchSink for OwnerSink {
    type Room = Option<OwnedSemaphorePermit>;

    async fn reserve(&mut self, _bytes: u64) -> Result<Self::Room, Refusal> {
        match &self.gate {
            Some(gate) => Ok(Some(gate.clone().acquire_owned().await.unwrap())),
            None => Ok(None),
        }
    }

    fn deliver(&mut self, batch: ValidBatch, room: Self::Room) -> Result<(), Refusal> {
        // Each permit admits one frame, once.
        if let Some(permit) = room {
            permit.forget();
        }
        if !self.only_count {
            self.batches.lock().unwrap().push(batch.to_owned_batch());
        }
        let frame = HEADER_LEN + batch.into_bytes().len();
        self.delivered_bytes
            .fetch_add(frame as u64, Ordering::SeqCst);
        Ok(())
    }

    fn end(&mut self, _end: &StreamEnd) -> Result<(), Refusal> {
        Ok(())
    }
}

/// A batch of `records` records in `partitions`, with keys naming
/// `tag` and their index, so that order and content can be checked.
fn batch(tag: u32, records: usize, key_bytes: usize, partitions: PartitionRange) -> RecordBatch {
    let width = u32::from(partitions.end.get() - partitions.start.get());
    let mut batch = RecordBatch::new();
    for i in 0..records {
        let mut key = format!("{tag:08}-{i:08}-").into_bytes();
        key.resize(key_bytes.max(key.len()), b'k' + (i % 7) as u8);
        batch.push(Record {
            partition: partitions.start.get() + (i as u32 % width) as u16,
            key: &key,
            value: b"",
            position: Position {
                file: tag,
                offset: i as u64,
            },
        });
    }
    batch
}

fn header(sender: u64, start: u16, end: u16) -> StreamHeader {
    StreamHeader {
        job: JOB,
        epoch: EPOCH,
        sender: NodeId(sender),
        partitions: PartitionRange::new(start, end).unwrap(),
    }
}

/// An owner's endpoint named `name`, and a sender's endpoint named
/// `sender` with a link to it.
async fn pair(
    cluster: &Cluster,
    name: &str,
    owner: Owner,
    config: ChannelConfig,
    sender: &str,
) -> (ChannelEndpoint, ChannelEndpoint, Link) {
    let receiving =
        ChannelEndpoint::bind(any_port(), &cluster.identity(name), config.clone(), owner).unwrap();
    let sending = ChannelEndpoint::bind(
        any_port(),
        &cluster.identity(sender),
        config,
        Owner::default(),
    )
    .unwrap();
    let link = sending.connect(receiving.local_addr(), name).await.unwrap();
    (receiving, sending, link)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_arrive_intact_and_in_order_per_stream() {
    metrics();
    let cluster = Cluster::new();
    let owner = Owner::default();
    let (receiving, sending, link) = pair(
        &cluster,
        "node-1",
        owner.clone(),
        ChannelConfig::default(),
        "node-2",
    )
    .await;
    let ranges = [(0u16, 4u16), (4, 9), (9, 64)];
    let mut senders = Vec::new();
    for (stream, &(start, end)) in ranges.iter().enumerate() {
        let link = link.clone();
        senders.push(tokio::spawn(async move {
            let header = header(2, start, end);
            let mut sent = Vec::new();
            let mut out = link.open(header).await.unwrap();
            for i in 0..40 {
                let b = batch(
                    stream as u32 * 1000 + i,
                    50 + i as usize,
                    20,
                    header.partitions,
                );
                out.send(&b).await.unwrap();
                sent.push(b);
            }
            let receipt = out.finish().await.unwrap();
            assert_eq!(receipt.batches, 40);
            assert_eq!(
                receipt.records,
                sent.iter().map(|b| b.len() as u64).sum::<u64>()
            );
            (header, sent)
        }));
    }
    let mut expected = Vec::new();
    for s in senders {
        expected.push(s.await.unwrap());
    }
    let mut got = owner.batches();
    got.sort_by_key(|(h, _)| h.partitions.start);
    assert_eq!(got, expected, "every stream's batches, intact and in order");
    let frames: u64 = expected
        .iter()
        .map(|(h, bs)| {
            (HEADER_LEN + h.to_bytes().len()) as u64
                + bs.iter()
                    .map(|b| (HEADER_LEN + b.to_archive().len()) as u64)
                    .sum::<u64>()
        })
        .sum();
    assert!(metric(SENT_BYTES_METRIC, "link=\"node-1\"") >= frames);
    assert!(metric(RECEIVED_BYTES_METRIC, "link=\"node-2\"") >= frames);
    sending.shutdown().await.unwrap();
    receiving.shutdown().await.unwrap();
}

/// The sender's progress: bytes of batch frames `send` has returned for.
async fn send_until_blocked(
    link: Link,
    header: StreamHeader,
    frames: u32,
    sent: Arc<AtomicU64>,
) -> Result<(), ChannelError> {
    let mut out = link.open(header).await?;
    for i in 0..frames {
        let b = batch(i, 400, 60, header.partitions);
        out.send(&b).await?;
        sent.fetch_add((HEADER_LEN + b.to_archive().len()) as u64, Ordering::SeqCst);
    }
    out.finish().await.map(|_| ())
}

/// Waits until `value` has not moved for `quiet`, and returns it.
async fn settled(value: &AtomicU64, quiet: Duration) -> u64 {
    let mut last = value.load(Ordering::SeqCst);
    loop {
        tokio::time::sleep(quiet).await;
        let now = value.load(Ordering::SeqCst);
        if now == last {
            return now;
        }
        last = now;
    }
}

fn small_windows() -> ChannelConfig {
    ChannelConfig {
        receive_budget: 512 << 10,
        send_budget: 512 << 10,
        min_link_window: 64 << 10,
        stream_window: 256 << 10,
        ..ChannelConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_owner_holds_its_sender_back_with_bounded_bytes_in_flight() {
    metrics();
    let cluster = Cluster::new();
    let config = small_windows();
    let owner = Owner::gated(4);
    let (receiving, sending, link) =
        pair(&cluster, "node-3", owner.clone(), config.clone(), "node-4").await;
    let sent = Arc::new(AtomicU64::new(0));
    let frames = 200; // ~5 MiB, ten times the windows
    let task = tokio::spawn(send_until_blocked(
        link,
        header(4, 0, 8),
        frames,
        sent.clone(),
    ));

    let first = settled(&sent, Duration::from_millis(300)).await;
    let delivered = owner.delivered_bytes.load(Ordering::SeqCst);
    let frame = (HEADER_LEN
        + batch(0, 400, 60, header(4, 0, 8).partitions)
            .to_archive()
            .len()) as u64;
    let in_flight = first.saturating_sub(delivered);
    // The stream's window, plus the frame whose header the owner read
    // before it waited for room.
    let bound = config.stream_window + frame;
    assert!(
        in_flight <= bound,
        "{in_flight} bytes in flight, over the bound of {bound}"
    );
    assert!(
        first < u64::from(frames) * frame / 4,
        "the sender was not held back"
    );
    assert!(
        !task.is_finished(),
        "the sender waits while the owner has no room"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sent.load(Ordering::SeqCst),
        first,
        "a blocked sender sends nothing more"
    );

    // Room again: everything arrives.
    owner.gate.as_ref().unwrap().add_permits(frames as usize);
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the sender finishes once the owner has room")
        .unwrap()
        .unwrap();
    assert_eq!(owner.batches()[0].1.len(), frames as usize);
    sending.shutdown().await.unwrap();
    receiving.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owners_windows_do_not_grow_with_its_links() {
    metrics();
    let cluster = Cluster::new();
    let config = small_windows();
    let owner = Owner::gated(0);
    let receiving = ChannelEndpoint::bind(
        any_port(),
        &cluster.identity("node-5"),
        config.clone(),
        owner.clone(),
    )
    .unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let links = 6u64;
    // The owner knows its peers: their windows are their share from the
    // start, not the whole budget for the first one to connect.
    receiving.expect_links(links as usize);
    assert_eq!(receiving.link_window(), config.receive_budget / links);
    let mut senders = Vec::new();
    for n in 0..links {
        let sending = ChannelEndpoint::bind(
            any_port(),
            &cluster.identity(&format!("node-{}", 100 + n)),
            config.clone(),
            Owner::default(),
        )
        .unwrap();
        let link = sending
            .connect(receiving.local_addr(), "node-5")
            .await
            .unwrap();
        senders.push((sending, link));
    }
    let tasks: Vec<_> = senders
        .iter()
        .zip(100..)
        .map(|((_, link), n)| {
            tokio::spawn(send_until_blocked(
                link.clone(),
                header(n, 0, 8),
                100,
                sent.clone(),
            ))
        })
        .collect();
    let held = settled(&sent, Duration::from_millis(400)).await;
    assert_eq!(receiving.links(), links as usize);
    assert_eq!(receiving.link_window(), config.receive_budget / links);
    // Nothing is delivered, so everything sent sits in the owner's
    // windows: their sum, not links x the stream window.
    let frame = (HEADER_LEN
        + batch(0, 400, 60, header(0, 0, 8).partitions)
            .to_archive()
            .len()) as u64;
    let bound = config.receive_budget + links * frame;
    assert!(
        held <= bound,
        "{held} bytes held by {links} links, over the bound of {bound}"
    );
    assert!(
        links * config.stream_window > bound,
        "the test must tell the two apart"
    );
    for t in &tasks {
        assert!(!t.is_finished());
    }
    owner
        .gate
        .as_ref()
        .unwrap()
        .add_permits(100 * links as usize);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    for (s, link) in senders {
        drop(link);
        s.shutdown().await.unwrap();
    }
    receiving.shutdown().await.unwrap();
}

/// What the owner said, as the sender sees it.
fn refusal(result: Result<impl Sized, ChannelError>) -> Refusal {
    match result {
        Err(ChannelError::Refused { refusal, .. }) => refusal,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, the stream was accepted"),
    }
}

/// Sends a stream of one batch; its outcome.
async fn one_batch(link: &Link, header: StreamHeader, b: &RecordBatch) -> Result<(), ChannelError> {
    let mut out = link.open(header).await?;
    out.send(b).await?;
    out.finish().await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epochs_unknown_jobs_and_stray_records_are_refused_and_counted() {
    metrics();
    let _serial = refusal_lock().await;
    let cluster = Cluster::new();
    let owner = Owner::default();
    let (receiving, sending, link) = pair(
        &cluster,
        "node-6",
        owner.clone(),
        ChannelConfig::default(),
        "node-7",
    )
    .await;
    let range = PartitionRange::new(0, 4).unwrap();
    let b = batch(1, 10, 8, range);

    let before = refusals("stale_epoch");
    let stale = StreamHeader {
        epoch: Epoch(2),
        ..header(7, 0, 4)
    };
    assert_eq!(
        refusal(one_batch(&link, stale, &b).await),
        Refusal::StaleEpoch {
            job: JOB,
            stream: Epoch(2),
            current: EPOCH
        }
    );
    assert_eq!(refusals("stale_epoch"), before + 1);

    let before = refusals("unknown_job");
    let unknown = StreamHeader {
        job: JobId(99),
        ..header(7, 0, 4)
    };
    assert_eq!(
        refusal(one_batch(&link, unknown, &b).await),
        Refusal::UnknownJob { job: JobId(99) }
    );
    assert_eq!(refusals("unknown_job"), before + 1);

    // A record outside the stream's partitions.
    let before = refusals("damaged");
    let stray = batch(2, 10, 8, PartitionRange::new(4, 5).unwrap());
    match refusal(one_batch(&link, header(7, 0, 4), &stray).await) {
        Refusal::Damaged { reason } => {
            assert!(
                reason.contains("outside the stream's partitions 0..4"),
                "{reason}"
            )
        }
        other => panic!("expected a damaged stream, got {other}"),
    }
    assert_eq!(refusals("damaged"), before + 1);

    // The link survives refusals: a good stream still goes through.
    one_batch(&link, header(7, 0, 4), &b).await.unwrap();
    assert_eq!(owner.batches().last().unwrap().1, vec![b]);
    sending.shutdown().await.unwrap();
    receiving.shutdown().await.unwrap();
}

/// A peer that writes raw bytes, and ends its side if `finish`: a sender
/// with bugs, or worse.
async fn raw_stream(
    cluster: &Cluster,
    to: &ChannelEndpoint,
    name: &str,
    bytes: &[u8],
    finish: bool,
) -> Vec<u8> {
    let tls = cluster.identity("node-9").client_config().unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client(any_port()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connection = endpoint
        .connect(to.local_addr(), name)
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    // The owner may stop reading before all of it has gone.
    let _ = send.write_all(bytes).await;
    if finish {
        let _ = send.finish();
    }
    let reply = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 16))
        .await
        .expect("the owner replies")
        .unwrap();
    connection.close(0u32.into(), b"done");
    reply
}

fn decode_reply(bytes: &[u8]) -> StreamReply {
    let frame = FrameReader::new(bytes, 1 << 16)
        .next_frame()
        .unwrap()
        .unwrap();
    StreamReply::decode(&frame.into_payload(FrameKind::StreamReply).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_frame_is_refused_with_its_reason_and_counted() {
    metrics();
    let _serial = refusal_lock().await;
    let cluster = Cluster::new();
    let owner = Owner::default();
    let receiving = ChannelEndpoint::bind(
        any_port(),
        &cluster.identity("node-8"),
        ChannelConfig::default(),
        owner.clone(),
    )
    .unwrap();
    let range = PartitionRange::new(0, 4).unwrap();
    let mut stream = Vec::new();
    write_frame(
        &mut stream,
        FrameKind::StreamHeader,
        &header(9, 0, 4).to_bytes(),
    )
    .unwrap();
    let first = stream.len();
    write_frame(
        &mut stream,
        FrameKind::RecordBatch,
        &batch(1, 10, 8, range).to_archive(),
    )
    .unwrap();
    let second = stream.len();
    write_frame(
        &mut stream,
        FrameKind::RecordBatch,
        &batch(2, 10, 8, range).to_archive(),
    )
    .unwrap();
    // One flipped bit in the second batch's payload.
    stream[second + HEADER_LEN + 5] ^= 0x10;

    let before = refusals("damaged");
    match decode_reply(&raw_stream(&cluster, &receiving, "node-8", &stream, true).await) {
        StreamReply::Refused(Refusal::Damaged { reason }) => {
            assert!(
                reason.contains(&format!("checksum mismatch in frame at byte {second}")),
                "{reason}"
            );
        }
        other => panic!("expected a damaged-frame refusal, got {other:?}"),
    }
    assert_eq!(refusals("damaged"), before + 1);
    // The batch before the damage was delivered; the damaged one never.
    assert_eq!(owner.batches()[0].1.len(), 1);

    // A stream that opens with a batch, not its header.
    let before = refusals("damaged");
    match decode_reply(
        &raw_stream(&cluster, &receiving, "node-8", &stream[first..second], true).await,
    ) {
        StreamReply::Refused(Refusal::Damaged { reason }) => {
            assert!(reason.contains("must open with its header"), "{reason}");
        }
        other => panic!("expected a damaged-frame refusal, got {other:?}"),
    }
    assert_eq!(refusals("damaged"), before + 1);

    // A stream cut cleanly after a batch: no end frame.
    let before = refusals("damaged");
    match decode_reply(&raw_stream(&cluster, &receiving, "node-8", &stream[..second], true).await) {
        StreamReply::Refused(Refusal::Damaged { reason }) => {
            assert!(reason.contains("without its end frame"), "{reason}");
        }
        other => panic!("expected a damaged-frame refusal, got {other:?}"),
    }
    assert_eq!(refusals("damaged"), before + 1);
    receiving.shutdown().await.unwrap();
}

/// An owner that takes nothing, with the stall timeouts of `owner` and
/// `sender` on each side; what the blocked sender gets, and how long after
/// it blocked.
async fn stall(
    name: &str,
    sender: &str,
    owner_stall: Duration,
    sender_stall: Duration,
) -> (ChannelError, Duration) {
    let cluster = Cluster::new();
    let with = |stall_timeout| ChannelConfig {
        stall_timeout,
        ..small_windows()
    };
    let receiving = ChannelEndpoint::bind(
        any_port(),
        &cluster.identity(name),
        with(owner_stall),
        Owner::gated(0),
    )
    .unwrap();
    let sending = ChannelEndpoint::bind(
        any_port(),
        &cluster.identity(sender),
        with(sender_stall),
        Owner::default(),
    )
    .unwrap();
    let link = sending.connect(receiving.local_addr(), name).await.unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(send_until_blocked(link, header(1, 0, 8), 100, sent.clone()));
    let start = Instant::now();
    let error = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("a stalled stream fails, it does not hang")
        .unwrap()
        .unwrap_err();
    let waited = start.elapsed();
    sending.shutdown().await.unwrap();
    receiving.shutdown().await.unwrap();
    (error, waited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_no_one_takes_fails_its_stream_within_the_stall_timeout() {
    metrics();
    let (error, waited) = stall(
        "node-20",
        "node-21",
        Duration::from_secs(60),
        Duration::from_millis(500),
    )
    .await;
    assert!(matches!(error, ChannelError::Stalled { .. }), "{error}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_whose_pipeline_takes_nothing_refuses_the_stream() {
    metrics();
    let _serial = refusal_lock().await;
    let before = refusals("owner_stalled");
    let (error, waited) = stall(
        "node-22",
        "node-23",
        Duration::from_millis(500),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        refusal(Err::<(), _>(error)),
        Refusal::OwnerStalled {
            job: JOB,
            millis: 500
        }
    );
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(refusals("owner_stalled"), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_names_no_job_is_refused_after_the_header_timeout() {
    metrics();
    let _serial = refusal_lock().await;
    let cluster = Cluster::new();
    let config = ChannelConfig {
        header_timeout: Duration::from_millis(300),
        ..ChannelConfig::default()
    };
    let receiving = ChannelEndpoint::bind(
        any_port(),
        &cluster.identity("node-24"),
        config,
        Owner::default(),
    )
    .unwrap();
    let before = refusals("damaged");
    let start = Instant::now();
    // Opens a stream, writes half a header, and waits.
    let reply = raw_stream(&cluster, &receiving, "node-24", &[b'Q'; 8], false).await;
    match decode_reply(&reply) {
        StreamReply::Refused(Refusal::Damaged { reason }) => {
            assert!(reason.contains("no header within 300ms"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(refusals("damaged"), before + 1);
    receiving.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_frame_limit_is_refused_before_it_is_sent() {
    metrics();
    let cluster = Cluster::new();
    let config = ChannelConfig {
        max_frame: 64 << 10,
        ..ChannelConfig::default()
    };
    let owner = Owner::default();
    let (receiving, sending, link) =
        pair(&cluster, "node-25", owner.clone(), config, "node-26").await;
    let mut out = link.open(header(26, 0, 8)).await.unwrap();
    let big = batch(1, 2000, 60, PartitionRange::new(0, 8).unwrap());
    match out.send(&big).await {
        Err(ChannelError::TooLarge { len, max }) => assert!(len > max as usize && max == 64 << 10),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // The stream goes on with batches that fit.
    let small = batch(2, 10, 8, PartitionRange::new(0, 8).unwrap());
    out.send(&small).await.unwrap();
    assert_eq!(out.finish().await.unwrap().batches, 1);
    assert_eq!(owner.batches()[0].1, vec![small]);
    sending.shutdown().await.unwrap();
    receiving.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_link_fails_a_blocked_sender_at_once() {
    metrics();
    let cluster = Cluster::new();
    let owner = Owner::gated(0);
    let (receiving, sending, link) = pair(
        &cluster,
        "node-10",
        owner.clone(),
        small_windows(),
        "node-11",
    )
    .await;
    let sent = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(send_until_blocked(
        link,
        header(11, 0, 8),
        100,
        sent.clone(),
    ));
    settled(&sent, Duration::from_millis(300)).await;
    assert!(!task.is_finished());
    let start = Instant::now();
    drop(receiving); // closes the endpoint and its links
    let result = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("a closed link is an error at once, not a hang")
        .unwrap();
    match result {
        Err(ChannelError::Transport(e)) => assert!(e.to_string().contains("lost"), "{e}"),
        other => panic!("expected a lost connection, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(2));
    sending.shutdown().await.unwrap();
}

#[test]
fn a_silent_peer_fails_a_blocked_sender_within_the_idle_timeout() {
    let cluster = Cluster::new();
    let config = ChannelConfig {
        idle_timeout: Duration::from_secs(1),
        ..small_windows()
    };
    // The owner runs on a runtime of its own, stopped without a word: a
    // killed or paused process sends no close.
    let owner_runtime = tokio::runtime::Runtime::new().unwrap();
    let receiving = owner_runtime.block_on(async {
        ChannelEndpoint::bind(
            any_port(),
            &cluster.identity("node-12"),
            config.clone(),
            Owner::gated(0),
        )
        .unwrap()
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let sending = ChannelEndpoint::bind(
            any_port(),
            &cluster.identity("node-13"),
            config.clone(),
            Owner::default(),
        )
        .unwrap();
        let link = sending
            .connect(receiving.local_addr(), "node-12")
            .await
            .unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(send_until_blocked(
            link,
            header(13, 0, 8),
            100,
            sent.clone(),
        ));
        settled(&sent, Duration::from_millis(300)).await;
        assert!(!task.is_finished());
        let start = Instant::now();
        owner_runtime.shutdown_background();
        let result = tokio::time::timeout(config.idle_timeout * 5, task)
            .await
            .expect("a silent peer is an error within the idle timeout, not a hang")
            .unwrap();
        match result {
            Err(ChannelError::Transport(e)) => assert!(e.to_string().contains("lost"), "{e}"),
            other => panic!("expected a lost connection, got {other:?}"),
        }
        let waited = start.elapsed();
        assert!(
            waited < config.idle_timeout * 3,
            "lost after {waited:?}, idle timeout {:?}",
            config.idle_timeout
        );
        sending.shutdown().await.unwrap();
    });
    std::mem::forget(receiving); // its runtime is gone
}

/// CPU seconds this process has used (user + system), from
/// `/proc/self/stat` (in clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// A figure, not a bound: batches of ~280 KiB through one stream over
/// loopback, each archived, checksummed, encrypted, then checked and read
/// in place on receipt; CPU is both ends'. `QUERN_CHANNEL_MIB` sets the
/// volume (default 64): `QUERN_CHANNEL_MIB=1024 cargo test --release -p
/// proto-schema --test channel throughput -- --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput() {
    metrics();
    let cluster = Cluster::new();
    let owner = Owner {
        only_count: true,
        ..Owner::default()
    };
    let (receiving, sending, link) = pair(
        &cluster,
        "node-14",
        owner.clone(),
        ChannelConfig::default(),
        "node-15",
    )
    .await;
    let header = header(15, 0, 64);
    let b = batch(1, 3000, 80, header.partitions);
    let frame = b.to_archive().len() as u64;
    let mib: u64 = std::env::var("QUERN_CHANNEL_MIB").map_or(64, |v| v.parse().unwrap());
    let frames = (mib << 20).div_ceil(frame);
    let (start, cpu) = (Instant::now(), cpu_seconds());
    let mut out = link.open(header).await.unwrap();
    for _ in 0..frames {
        out.send(&b).await.unwrap();
    }
    let receipt = out.finish().await.unwrap();
    let (secs, cpu) = (start.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    let gib = (frames * frame) as f64 / f64::from(1 << 30);
    println!(
        "shuffle stream over loopback: {:.0} MiB in {secs:.2} s = {:.0} MiB/s; \
         {:.2} CPU s per GiB (sender and owner together)",
        gib * 1024.0,
        gib * 1024.0 / secs,
        cpu / gib
    );
    assert_eq!(receipt.batches, frames);
    assert_eq!(
        owner.delivered_bytes.load(Ordering::SeqCst),
        frames * (frame + HEADER_LEN as u64)
    );
    sending.shutdown().await.unwrap();
    receiving.shutdown().await.unwrap();
}
