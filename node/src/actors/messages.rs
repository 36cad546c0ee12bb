//! The messages the job's actors exchange, in pipeline order.
//!
//! They live apart from the actors so that each actor depends only on the
//! messages it receives and sends: no stage imports another stage or the
//! supervisor.
//!
//! A data message carries the [`Credit`] it took on its edge, and gives
//! that room back when the receiver drops it. `Finish` is end-of-stream: it
//! travels behind the data, so a receiver knows its input is complete.
//! A batch message is moved once, into the mailbox: boxing its batch would
//! add an allocation per batch and save nothing, hence the
//! `large_enum_variant` allowances.

use std::path::PathBuf;

use proto_schema::{RecordBatch, ValidBatch};

use crate::edge::Credit;
use crate::input::shard::Shard;

/// To a scanner, from the job.
pub enum ScanMsg {
    /// Shards to read in order (several small files, or one large range).
    Scan(Vec<Shard>),
    /// No more shards: send the partly filled batches, write out tallies
    /// and report.
    Finish,
}

/// To a lane's sort-merge, from the scanners (data) and the job (`Finish`).
/// The same message goes to a remote owner's lane (`shuffle::RemoteLane`),
/// which sends its batches over the data channel.
#[allow(clippy::large_enum_variant)]
pub enum SortMergeMsg {
    Batch(RecordBatch, Credit),
    /// A batch another node sent, checked on receipt and read in place.
    Received(ValidBatch, Credit),
    /// Every scan is done: merge and pass everything on.
    Finish,
}

/// To a lane's dedup, from its sort-merge: the lane's records in merge
/// order.
#[allow(clippy::large_enum_variant)]
pub enum DedupMsg {
    Batch(RecordBatch, Credit),
    Finish,
}

/// To a lane's commit, from its dedup: the lane's unique records in
/// store-key order.
#[allow(clippy::large_enum_variant)]
pub enum CommitMsg {
    Batch(RecordBatch, Credit),
    Finish,
}

/// To the job (the supervisor), from its shard feed and the stages.
pub enum JobMsg {
    /// From the feed: the next bundle of shards, sent only once a scanner
    /// is idle.
    ShardsAvailable(Vec<Shard>),
    /// From the feed: every shard is handed out, or the feed failed (the
    /// reason names what failed).
    FeedEnded(Result<(), String>),
    /// From a scanner: it has read its bundle whole and is idle.
    ShardsScanned {
        scanner: usize,
        shards: Vec<Shard>,
    },
    ScannerFinished {
        scanner: usize,
    },
    /// The job's streams to remote owners have ended and been taken, or
    /// one failed (the reason says which and why).
    ShuffleSent(Result<(), String>),
    /// Every stream this node's lanes expect from its peers has arrived,
    /// or one failed.
    ShuffleReceived(Result<(), String>),
    LaneWritten {
        lane: usize,
        output: LaneOutput,
    },
    /// Stop the job, e.g. on Ctrl-C.
    Abort(String),
    /// A stage failed only because a stage it feeds had stopped; if that
    /// stage's own report has not ended the job by now, end it with this.
    SettleConsequence,
}

/// What a lane wrote.
#[derive(Debug)]
pub struct LaneOutput {
    pub files: Vec<PathBuf>,
    pub keys: u64,
}
