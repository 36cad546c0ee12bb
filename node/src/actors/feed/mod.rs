//! Where a job's shards come from: a [`ShardFeed`].
//!
//! The supervisor runs the feed on a blocking thread of its own and knows
//! nothing of how it finds shards: it receives bundles of shards, each for
//! an idle scanner, then the feed's end, and tells the feed which shards
//! were scanned. A feed, for its part, never runs ahead of the scanners or
//! of the memory budget: it hands a bundle over only through
//! [`Scanners::hand_out`], which waits for an idle scanner and for the
//! governor's admission, and tells it when the job has ended. It registers
//! the files it hands out in the job's ledger with a [`FileRegister`].
//!
//! Two feeds: the walk of PATH arguments ([`walk::WalkFeed`]) and shards
//! leased from the coordinators ([`lease::LeaseFeed`]).

pub mod lease;
pub mod walk;

use std::sync::Arc;

use ractor::ActorRef;
use tokio::sync::Semaphore;

use super::JobContext;
use super::messages::JobMsg;
use crate::counters::JobCounters;
use crate::input::shard::{InputFile, Shard};
use crate::memory::Governor;
use crate::memory::monitor::SAMPLE_INTERVAL;
use crate::store::catalog::JobTotals;
use crate::store::ledger::{LedgerPart, LedgerWriter};
use crate::store::staged::ClusterPart;

/// A scanner is handed shards in bundles of up to this many shards or
/// [`BUNDLE_BYTES`] of listed file bytes, whichever comes first: handing
/// over each small file on its own cost a message, a wake-up of the walk
/// and of a scanner, and a partly filled batch per lane, per file.
pub(super) const BUNDLE_SHARDS: usize = 256;
/// See [`BUNDLE_SHARDS`]. Small enough that scanners finish together at
/// the end of a job.
pub(super) const BUNDLE_BYTES: u64 = 4 << 20;

/// A source of a job's shards.
pub trait ShardFeed: Send + Sync + 'static {
    /// The feed's name, for its memory account and for naming it when it
    /// does not stop in time.
    fn name(&self) -> &'static str;

    /// Finds the job's shards, registers their files (a [`FileRegister`]),
    /// and hands the shards out in bundles through `scanners`. Returns once
    /// every shard is handed out, or early once [`Scanners::hand_out`] says
    /// the job has ended. An error, which names what failed, ends the job.
    /// Runs on a blocking thread. Which shard is read first does not
    /// matter: a record's first sighting is decided by its position (the
    /// file's `seq`, then the offset), not by when it was read.
    fn run(&self, ctx: &JobContext, scanners: &Scanners) -> Result<(), String>;

    /// A scanner has read these shards whole: their records are on their
    /// way to sort-merge. Called on the supervisor, so it must not block.
    /// A walk has nothing to do; a feed of leased shards reports them.
    fn scanned(&self, _shards: &[Shard]) {}

    /// The job failed: nothing it read counts. Called on the supervisor,
    /// so it must not block. A feed of leased shards reports no more of
    /// them done (their records went to lanes that are gone).
    fn failed(&self) {}

    /// The part of the coordinators' job this job is, if it is one: its
    /// files are then staged durably (`store::staged`) before
    /// [`ShardFeed::staged`] reports them, so that a node that goes down
    /// before it publishes still publishes once it is back.
    fn cluster_part(&self) -> Option<ClusterPart> {
        None
    }

    /// Every lane has written its files and the counters reconcile:
    /// `totals` are staged, not yet published. Returns once the job may
    /// publish, or why it may not (the job then fails, publishing
    /// nothing). Runs on a blocking thread. A walk publishes at once; a
    /// feed of leased shards reports its counts to the coordinators and
    /// waits for them to commit the job.
    fn staged(&self, _totals: &JobTotals) -> Result<(), NotPublished> {
        Ok(())
    }
}

/// Why a staged job does not publish now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotPublished {
    /// It never will: the job fails and its staged files go.
    Refused(String),
    /// Nothing is decided yet (the wait ran out, or the coordinators could
    /// not be asked): the job's part stays staged for the node to settle
    /// when it asks again (`staged_parts::settle`).
    Undecided(String),
}

impl std::fmt::Display for NotPublished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(reason) | Self::Undecided(reason) => f.write_str(reason),
        }
    }
}

/// Counter: shard starts held back while the heap was over the hard limit.
pub const HELD_METRIC: &str = "quern_governor_shards_held_total";

/// The job's scanners, as a feed sees them.
pub struct Scanners {
    /// A permit per idle scanner not yet promised a bundle; closed by the
    /// supervisor when the job ends.
    demand: Arc<Semaphore>,
    count: usize,
    governor: Arc<Governor>,
    runtime: tokio::runtime::Handle,
    job: ActorRef<JobMsg>,
}

impl Scanners {
    /// `count` scanners, whose idle ones the supervisor counts in `demand`.
    pub(super) fn new(
        demand: Arc<Semaphore>,
        count: usize,
        governor: Arc<Governor>,
        runtime: tokio::runtime::Handle,
        job: ActorRef<JobMsg>,
    ) -> Self {
        // Present at zero from the job's start: a rate over it is then
        // defined for a job that holds its first shard late or never.
        metrics::counter!(HELD_METRIC).increment(0);
        Self {
            demand,
            count,
            governor,
            runtime,
            job,
        }
    }

    /// Hands `bundle` to the next idle scanner, waiting for one, and for
    /// the governor to admit new work. Returns `false` if the job ended
    /// meanwhile: the feed should stop.
    pub fn hand_out(&self, bundle: Vec<Shard>) -> bool {
        // The semaphore is closed when the job ends.
        let Ok(permit) = self.runtime.block_on(self.demand.acquire()) else {
            return false;
        };
        permit.forget();
        self.wait_for_admission() && self.job.cast(JobMsg::ShardsAvailable(bundle)).is_ok()
    }

    /// Whether the job has ended: the feed should stop.
    pub fn job_ended(&self) -> bool {
        self.demand.is_closed()
    }

    /// A way to fail the job from a task of the feed's that outlives
    /// [`ShardFeed::run`] (a reporter that learns the job's part is over
    /// while the lanes still wait for their input).
    pub fn job_ender(&self) -> JobEnder {
        JobEnder(self.job.clone())
    }

    /// Holds the next bundle back while the heap is at the governor's hard
    /// limit, so nothing new starts; the shards already being scanned run
    /// on and bring memory down. If every scanner is idle, nothing running
    /// could free memory, so the bundle goes anyway rather than hang the
    /// job. Returns `false` if the job ended meanwhile.
    fn wait_for_admission(&self) -> bool {
        let mut held = false;
        // The caller holds one scanner's permit, taken for this bundle.
        let busy = || self.demand.available_permits() + 1 < self.count;
        while !self.governor.admits_new_work() && busy() {
            if self.demand.is_closed() {
                return false;
            }
            if !held {
                held = true;
                metrics::counter!(HELD_METRIC).increment(1);
            }
            std::thread::sleep(SAMPLE_INTERVAL);
        }
        true
    }
}

/// Fails the job it was taken from, naming why; nothing once it has ended.
#[derive(Clone)]
pub struct JobEnder(ActorRef<JobMsg>);

impl JobEnder {
    pub fn fail(&self, reason: String) {
        let _ = self.0.cast(JobMsg::Abort(reason));
    }
}

/// Files registered in the ledger per write.
const FILES_PER_WRITE: usize = 1024;

/// The files a feed hands out, counted as listed and registered in the
/// job's ledger in bounded batches. Files listed in ascending order (a
/// walk's; a lease feed's whole-file shards, in manifest order) go into
/// SST files ingested when the listing ends (`LedgerWriter`: no memtable,
/// flush or compaction; over a million small files, the meta column
/// family's flushes and compactions were 8% of the job's CPU). The first
/// batch out of that order (a file cut into ranges, registered once per
/// range; a shard leased again) ingests what was written so far, and that
/// batch and every later one go through the memtable, so a later entry
/// for a file still replaces an earlier one.
pub struct FileRegister<'a> {
    ctx: &'a JobContext,
    /// Files not yet written to the ledger.
    unwritten: Vec<InputFile>,
    /// While the files come in ascending order: the SST files they go to.
    in_order: Option<LedgerWriter<'a>>,
}

impl<'a> FileRegister<'a> {
    pub fn new(ctx: &'a JobContext) -> Self {
        let dir = ctx.scratch.join("ledger-files");
        let writer = LedgerWriter::new(
            &ctx.store,
            LedgerPart::Files,
            ctx.dataset.id,
            ctx.job.id,
            dir,
        );
        Self {
            ctx,
            unwritten: Vec::with_capacity(FILES_PER_WRITE),
            in_order: Some(writer),
        }
    }

    /// Counts `file` as listed and registers it, writing to the ledger once
    /// enough files have gathered.
    pub fn add(&mut self, file: InputFile) -> Result<(), String> {
        let counters = &self.ctx.counters;
        JobCounters::add(&counters.files_listed, 1);
        JobCounters::add(&counters.bytes_listed, file.size);
        self.unwritten.push(file);
        if self.unwritten.len() >= FILES_PER_WRITE {
            self.write()?;
        }
        Ok(())
    }

    /// Writes the files not yet in the ledger.
    pub fn finish(mut self) -> Result<(), String> {
        self.write()?;
        match self.in_order.take() {
            Some(writer) => writer.finish().map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    fn write(&mut self) -> Result<(), String> {
        let ctx = self.ctx;
        match &mut self.in_order {
            Some(writer) if writer.takes(self.unwritten.iter().map(|f| f.seq)) => {
                for file in &self.unwritten {
                    writer.add_file(file).map_err(|e| e.to_string())?;
                }
            }
            _ => {
                if let Some(writer) = self.in_order.take() {
                    writer.finish().map_err(|e| e.to_string())?;
                }
                ctx.store
                    .put_files(ctx.dataset.id, ctx.job.id, &self.unwritten)
                    .map_err(|e| e.to_string())?;
            }
        }
        self.unwritten.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::PathBuf;
    use std::sync::Mutex;

    use crate::config::IngestConfig;
    use crate::input::shard::{ShardRange, plan_shards};
    use crate::store::{Access, Store};

    /// Small, so that the file has many ranges, most cut mid-line.
    const RANGE_BYTES: u64 = 4096;

    /// A feed that is no walk: the byte ranges of one file, last first,
    /// one to a bundle, noting the ranges reported scanned.
    struct Ranges {
        path: PathBuf,
        scanned: Mutex<Vec<ShardRange>>,
    }

    impl Ranges {
        fn shards(&self) -> Vec<Shard> {
            let metadata = std::fs::metadata(&self.path).unwrap();
            let file = InputFile {
                seq: 0,
                path: self.path.clone(),
                size: metadata.len(),
                modified: metadata.modified().ok(),
            };
            plan_shards(Arc::new(file), RANGE_BYTES).collect()
        }
    }

    impl ShardFeed for Ranges {
        fn name(&self) -> &'static str {
            "ranges"
        }

        fn run(&self, ctx: &JobContext, scanners: &Scanners) -> Result<(), String> {
            let shards = self.shards();
            let mut files = FileRegister::new(ctx);
            files.add((*shards[0].file).clone())?;
            files.finish()?;
            for shard in shards.into_iter().rev() {
                if !scanners.hand_out(vec![shard]) {
                    break;
                }
            }
            Ok(())
        }

        fn scanned(&self, shards: &[Shard]) {
            let mut scanned = self.scanned.lock().unwrap();
            scanned.extend(shards.iter().map(|shard| shard.range));
        }
    }

    /// A feed that registers files in a given order and reads none.
    struct Registers(Vec<InputFile>);

    impl ShardFeed for Registers {
        fn name(&self) -> &'static str {
            "registers"
        }

        fn run(&self, ctx: &JobContext, _: &Scanners) -> Result<(), String> {
            let mut files = FileRegister::new(ctx);
            for file in &self.0 {
                files.add(file.clone())?;
            }
            files.finish()
        }

        fn scanned(&self, _: &[Shard]) {}
    }

    fn registered_file(seq: u32, size: u64) -> InputFile {
        InputFile {
            seq,
            path: format!("/in/{seq:05}").into(),
            size,
            modified: None,
        }
    }

    /// The ledger lists every file registered, whether it went in through
    /// SST files (ascending batches) or the memtable (from the first batch
    /// out of order on), and a file registered again keeps its later
    /// entry, as before SST files.
    #[test]
    fn the_ledger_lists_every_file_in_order_or_not_the_later_entry_kept() {
        let ascending = (0..2_500).map(|seq| registered_file(seq, 1));
        let again = [registered_file(5, 2), registered_file(2_500, 1)];
        let cases: [Vec<InputFile>; 2] = [
            ascending.clone().collect(),
            ascending.chain(again).collect(),
        ];
        for (case, files) in cases.into_iter().enumerate() {
            let data = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open(data.path(), 8 << 20, Access::ReadWrite).unwrap());
            let config = IngestConfig {
                data_dir: data.path().to_path_buf(),
                memory_bytes: 16 << 20,
                ..IngestConfig::default()
            };
            let registered = files.len() as u64;
            let prepared = crate::ingest::prepare_with_feed(
                store.clone(),
                config,
                vec!["registers".into()],
                Arc::new(Registers(files)),
                Arc::new(JobCounters::default()),
            )
            .unwrap();
            let outcome = crate::ingest::run(prepared, std::future::pending()).unwrap();
            assert_eq!(outcome.totals.files, registered, "case {case}");
            let rows: Vec<_> = store
                .files(outcome.dataset.id, 1)
                .collect::<Result<_, _>>()
                .unwrap();
            let seqs: Vec<u32> = rows.iter().map(|row| row.seq).collect();
            let listed = if case == 0 { 2_500 } else { 2_501 };
            assert_eq!(seqs, (0..listed).collect::<Vec<_>>(), "case {case}");
            let size_of_5 = if case == 0 { 1 } else { 2 };
            assert_eq!(
                rows[5].size, size_of_5,
                "case {case}: the later entry is kept"
            );
            assert_eq!(rows[2_000].path, PathBuf::from("/in/02000"));
        }
    }

    /// The supervisor runs a job on whatever feed it is given: every shard
    /// handed out is scanned and reported once, and the store holds the
    /// same records as after a walk, first sightings by input position.
    #[test]
    fn a_job_runs_on_any_feed() {
        let (input, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let path = input.path().join("lines");
        let lines: Vec<String> = (0..20_000)
            .map(|i| format!("line {:05}\n", i * 7919 % 6000))
            .collect();
        std::fs::write(&path, lines.concat()).unwrap();
        let feed = Arc::new(Ranges {
            path,
            scanned: Mutex::default(),
        });
        let store = Arc::new(Store::open(data.path(), 8 << 20, Access::ReadWrite).unwrap());
        let config = IngestConfig {
            data_dir: data.path().to_path_buf(),
            memory_bytes: 16 << 20,
            threads: 2,
            ..IngestConfig::default()
        };
        let prepared = crate::ingest::prepare_with_feed(
            store.clone(),
            config,
            vec!["ranges".into()],
            feed.clone(),
            Arc::new(JobCounters::default()),
        )
        .unwrap();
        let outcome = crate::ingest::run(prepared, std::future::pending()).unwrap();

        let t = outcome.totals;
        assert_eq!(
            (t.files, t.read, t.unique, t.duplicates),
            (1, 20_000, 6_000, 14_000)
        );
        let expected: Vec<ShardRange> = feed.shards().iter().map(|s| s.range).collect();
        let scanned = feed.scanned.lock().unwrap().clone();
        assert!(expected.len() > 50, "{} ranges", expected.len());
        assert_eq!(scanned.len(), expected.len(), "{scanned:?}");
        assert!(expected.iter().all(|range| scanned.contains(range)));
        // The last range is scanned first, yet a key's first sighting is
        // still its first place in the file; the file is in the ledger.
        let last = lines[19_999].trim_end().as_bytes();
        let found = crate::lookup::get(&store, &outcome.dataset, last)
            .unwrap()
            .unwrap();
        assert_eq!(
            (found.first_seen.position.offset, found.path),
            (1_999 * 11, Some(feed.path.clone()))
        );
        let mut exported = Vec::new();
        crate::export::export(&store, &outcome.dataset, &mut exported).unwrap();
        let unique: BTreeSet<&String> = lines.iter().collect();
        assert_eq!(
            exported,
            unique
                .into_iter()
                .flat_map(|l| l.bytes())
                .collect::<Vec<_>>()
        );
    }
}
