//! Scan: reads bundles of shards, splits them into records, finds each
//! record's key and partition, and sends per-lane batches to sort-merge.
//!
//! The work per file is kept small, since a tree of small files is mostly
//! that: a bundle is read in one blocking section until a batch fills, so
//! threads hand over per batch rather than per file; batches fill across
//! files and are sent when full (or at `Finish`); the read buffers come
//! from the scanner's pool.
//!
//! Problems with the input are not failures of this stage: a file that
//! cannot be opened, corrupt compressed data, a file that shrinks or changes
//! while read, a record too long or without its key field. Each is recorded
//! with its file and offset and counted, and the scan goes on with the next
//! shard. This stage fails only if its own machinery does (the store, a
//! closed edge).

use std::sync::Arc;

use proto_schema::{Position, Record, RecordBatch, key_hash, partition_of_hash};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::messages::{JobMsg, ScanMsg, SortMergeMsg};
use super::{JobContext, blocking};
use crate::counters::{FileTally, JobCounters};
use crate::edge::Edge;
use crate::input::format::extract;
use crate::input::read_buffers::ReadBuffers;
use crate::input::records::{Event, ReadFailure};
use crate::input::shard::{InputFile, Shard, ShardRange};
use crate::input::source::Compression;
use crate::input::{OpenError, OpenShard};
use crate::memory::Account;
use crate::quarantine::{FileProblem, RejectedRecord, Rejection, excerpt};
use crate::recent_keys::{RecentKeys, Seen};

pub struct ScanArgs {
    pub ctx: Arc<JobContext>,
    pub index: usize,
    /// One edge per destination of `ctx.routes`: the node's lanes, then
    /// remote owners' streams.
    pub lanes: Vec<Edge<SortMergeMsg>>,
    pub job: ActorRef<JobMsg>,
    pub account: Account,
}

pub struct ScanState {
    args: ScanArgs,
    tally: FileTally,
    /// One batch being filled per lane.
    batches: Vec<RecordBatch>,
    rejected: Vec<RejectedRecord>,
    /// Read buffers, reused from shard to shard.
    buffers: ReadBuffers,
    /// Keys sent recently: a repeat is counted as a duplicate at once.
    recent: RecentKeys,
}

/// Counter of records the scanners counted as duplicates from their caches.
pub const REPEATS_DROPPED_METRIC: &str = "quern_scan_repeats_dropped_total";

/// The shard being read, between two blocking sections.
struct Reading {
    shard: Shard,
    opened: OpenShard,
    /// File bytes already added to the job's `bytes_scanned`.
    bytes_counted: u64,
}

/// Rejected records are written to the ledger in batches of this many.
const REJECTED_FLUSH: usize = 1024;

pub struct Scan;

impl Actor for Scan {
    type Msg = ScanMsg;
    type State = ScanState;
    type Arguments = ScanArgs;

    async fn pre_start(
        &self,
        _: ActorRef<ScanMsg>,
        args: ScanArgs,
    ) -> Result<ScanState, ActorProcessingErr> {
        Ok(ScanState {
            tally: args.ctx.tally(),
            batches: args.lanes.iter().map(|_| RecordBatch::new()).collect(),
            rejected: Vec::new(),
            buffers: ReadBuffers::default(),
            recent: RecentKeys::new(args.ctx.plan.recent_keys_bytes as usize),
            args,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<ScanMsg>,
        msg: ScanMsg,
        state: &mut ScanState,
    ) -> Result<(), ActorProcessingErr> {
        let account = state.args.account;
        account
            .attribute(async move {
                match msg {
                    ScanMsg::Scan(shards) => {
                        state.scan(&shards).await?;
                        state.args.job.cast(JobMsg::ShardsScanned {
                            scanner: state.args.index,
                            shards,
                        })?;
                    }
                    ScanMsg::Finish => {
                        for lane in 0..state.batches.len() {
                            state.send(lane).await?;
                        }
                        state.flush_rejected()?;
                        blocking(|| state.tally.flush())?;
                        state.args.job.cast(JobMsg::ScannerFinished {
                            scanner: state.args.index,
                        })?;
                    }
                }
                Ok::<(), ActorProcessingErr>(())
            })
            .await
    }
}

/// Why a call to [`ScanState::fill`] returned.
enum Filled {
    /// A lane's batch is full: send it and call again.
    Batch(usize),
    End,
    Failed(ReadFailure),
}

impl ScanState {
    /// Reads `shards` in order. Batches that are not full stay for the
    /// next bundle.
    async fn scan(&mut self, shards: &[Shard]) -> Result<(), ActorProcessingErr> {
        let mut shards = shards.iter().cloned();
        let mut reading = None;
        loop {
            let filled = blocking(|| self.read_bundle(&mut reading, &mut shards))?;
            match filled {
                Some(lane) => self.send(lane).await?,
                None => return Ok(()),
            }
        }
    }

    /// Reads on from `reading`, opening the next of `shards` as each ends,
    /// until a lane's batch is full (its lane is returned) or the shards
    /// are done (`None`).
    fn read_bundle(
        &mut self,
        reading: &mut Option<Reading>,
        shards: &mut impl Iterator<Item = Shard>,
    ) -> Result<Option<usize>, ActorProcessingErr> {
        let ctx = self.args.ctx.clone();
        let outcome = loop {
            let current = match reading {
                Some(current) => current,
                None => match shards.next() {
                    None => break None,
                    Some(shard) => match self.open(shard)? {
                        Some(opened) => reading.insert(opened),
                        None => continue,
                    },
                },
            };
            let filled = self.fill(&mut current.opened, current.shard.file.seq);
            let read_now = current.opened.file_bytes.get();
            JobCounters::add(
                &ctx.counters.bytes_scanned,
                read_now - current.bytes_counted,
            );
            current.bytes_counted = read_now;
            match filled {
                Filled::Batch(lane) => break Some(lane),
                Filled::End => {}
                Filled::Failed(failure) => {
                    let file = current.shard.file.clone();
                    let offset = Some(self.quarantine_fragment(file.seq, &failure));
                    let message = match current.opened.compression {
                        Compression::Plain => failure.to_string(),
                        c => format!(
                            "{c} data is corrupt or truncated near compressed byte {}: {failure}",
                            current.opened.file_bytes.get()
                        ),
                    };
                    self.problem(&file, offset, message)?;
                }
            }
            // The shard has ended, whole or cut short.
            let file = current.shard.file.clone();
            let change = current.opened.changed_since_listed(&file);
            *reading = None;
            if let Some(change) = change {
                self.problem(&file, None, change)?;
            }
        };
        self.publish()?;
        Ok(outcome)
    }

    /// Opens `shard`, or records why it cannot be read and returns `None`.
    fn open(&mut self, shard: Shard) -> Result<Option<Reading>, ActorProcessingErr> {
        let max_record = self.args.ctx.config.max_record_bytes;
        fail::fail_point!("scan-shard");
        match OpenShard::open(&shard, max_record, &self.buffers) {
            Ok(opened) => Ok(Some(Reading {
                // Opening already read the head of the file (its magic
                // bytes, a whole small file): it counts as scanned too.
                bytes_counted: match shard.range {
                    ShardRange::Whole => 0,
                    ShardRange::Bytes { start, .. } => start,
                },
                opened,
                shard,
            })),
            Err(e) => {
                let offset = match &e {
                    OpenError::Read(failure) => {
                        Some(self.quarantine_fragment(shard.file.seq, failure))
                    }
                    OpenError::Open(_) => None,
                };
                self.problem(&shard.file, offset, e.to_string())?;
                Ok(None)
            }
        }
    }

    /// Reads records into the lanes' batches until one is full or the shard
    /// ends.
    fn fill(&mut self, opened: &mut OpenShard, file: u32) -> Filled {
        let ctx = &self.args.ctx;
        let (format, partitions) = (ctx.dataset.format, ctx.dataset.partitions);
        let (max_record, batch_bytes) = (ctx.config.max_record_bytes, ctx.batch_bytes());
        let (mut read, mut repeats) = (0, 0);
        let outcome = loop {
            let event = match opened.records.next_event() {
                Ok(Some(event)) => event,
                Ok(None) => break Filled::End,
                Err(failure) => break Filled::Failed(failure),
            };
            read += 1;
            let (offset, rejection, bytes) = match event {
                Event::Record { offset, bytes } => match extract(format, bytes) {
                    Ok((key, value)) => {
                        let hash = key_hash(key);
                        let position = Position { file, offset };
                        let partition = partition_of_hash(hash, partitions);
                        // Read, and another part's (a recovery part reads
                        // every record for some partitions alone).
                        let Some(lane) = ctx.routes.of(partition) else {
                            continue;
                        };
                        let batch = &mut self.batches[lane];
                        if self.recent.check(hash, key, position) == Seen::Before {
                            // A repeat bound for another owner is counted
                            // there (it travels in the batch as a count), so
                            // that reading a lost owner's partitions again
                            // counts each of its records once.
                            if lane < ctx.lanes.lanes {
                                self.tally.duplicate(file);
                            } else {
                                batch.push_repeat(file);
                            }
                            repeats += 1;
                        } else {
                            batch.push(Record {
                                partition,
                                key,
                                value,
                                position,
                            });
                        }
                        if batch.payload_bytes() >= batch_bytes {
                            break Filled::Batch(lane);
                        }
                        continue;
                    }
                    Err(rejection) => (offset, rejection, bytes),
                },
                Event::TooLong { offset, len } => (
                    offset,
                    Rejection::TooLong {
                        len,
                        max: max_record,
                    },
                    &[][..],
                ),
            };
            self.tally.rejected(file);
            self.rejected.push(RejectedRecord {
                file,
                offset,
                rejection,
                excerpt: excerpt(bytes),
            });
        };
        self.tally.read(file, read);
        metrics::counter!(REPEATS_DROPPED_METRIC).increment(repeats);
        outcome
    }

    async fn send(&mut self, lane: usize) -> Result<(), ActorProcessingErr> {
        if self.batches[lane].payload_bytes() == 0 {
            return Ok(());
        }
        let next = self.args.ctx.pool.take(self.batches[lane].shape());
        let batch = std::mem::replace(&mut self.batches[lane], next);
        let bytes = batch.heap_bytes() as u64;
        let governor = &self.args.ctx.governor;
        self.args.lanes[lane]
            .send_within(
                bytes,
                || governor.scan_credit_bytes(),
                |credit| SortMergeMsg::Batch(batch, credit),
            )
            .await?;
        Ok(())
    }

    /// Counts and quarantines the partial record a read failure cut off;
    /// returns the offset where reading stopped.
    fn quarantine_fragment(&mut self, file: u32, failure: &ReadFailure) -> u64 {
        let (offset, fragment) = match failure {
            ReadFailure::Io {
                offset, fragment, ..
            } => (*offset, *fragment),
            ReadFailure::Shrank {
                actual, fragment, ..
            } => (*actual, *fragment),
        };
        if let Some(fragment) = fragment {
            self.tally.read(file, 1);
            self.tally.rejected(file);
            self.rejected.push(RejectedRecord {
                file,
                offset: fragment.offset,
                rejection: Rejection::Incomplete {
                    len: fragment.len,
                    cause: "the file could not be read past it".into(),
                },
                excerpt: String::new(),
            });
        }
        offset
    }

    fn problem(
        &mut self,
        file: &InputFile,
        offset: Option<u64>,
        message: String,
    ) -> Result<(), ActorProcessingErr> {
        tracing::warn!(path = %file.path.display(), offset, "{message}");
        let ctx = &self.args.ctx;
        let problem = FileProblem { offset, message };
        ctx.store
            .put_problem(ctx.dataset.id, ctx.job.id, file.seq, &problem)?;
        Ok(())
    }

    /// Publishes counts, and writes rejected records out once enough have
    /// gathered, so a shard full of bad records never piles them up.
    fn publish(&mut self) -> Result<(), ActorProcessingErr> {
        self.tally.publish()?;
        if self.rejected.len() >= REJECTED_FLUSH {
            self.flush_rejected()?;
        }
        Ok(())
    }

    fn flush_rejected(&mut self) -> Result<(), ActorProcessingErr> {
        if self.rejected.is_empty() {
            return Ok(());
        }
        let ctx = &self.args.ctx;
        blocking(|| {
            ctx.store
                .put_rejections(ctx.dataset.id, ctx.job.id, &self.rejected)
        })?;
        self.rejected.clear();
        Ok(())
    }
}
