//! Applying one command to the state DB: the coordinator's rules.
//!
//! Each command reads what it needs from the DB and writes into one
//! `WriteBatch`; a command that ends in an error response has its batch
//! discarded, so a refused command changes nothing. Nothing here reads a
//! clock or a random source: the same log gives the same state on every
//! replica. Work per command is bounded by the command's size (a manifest
//! chunk is at most `MAX_CHUNK_FILES` files), never by the catalogue's.

use std::collections::HashSet;

use proto_schema::command::{
    Command, CommandError, DatasetSpec, DiffCounts, FileEntry, MAX_CHUNK_BYTES, MAX_CHUNK_FILES,
    NodeInfo, Response,
};
use rocksdb::{DB, WriteBatch};

use super::StateError;
use super::keys::{
    self, CF_COUNTERS, CF_DATASETS, CF_FILES, CF_JOBS, CF_LEASED, CF_NODES, CF_PARTITIONS,
    CF_SHARDS,
};
use super::records::{CatalogEntry, Dataset, FileStatus, Job, JobState, Shard, ShardState, Stored};

/// The command's answer, or a storage failure (fatal for the replica,
/// unlike a `CommandError`).
type Outcome = Result<Result<Response, CommandError>, StateError>;

/// Reads from the DB, writes into a batch the caller commits.
pub struct Tx<'a> {
    db: &'a DB,
    pub batch: WriteBatch,
}

impl<'a> Tx<'a> {
    pub fn new(db: &'a DB) -> Self {
        Self {
            db,
            batch: WriteBatch::default(),
        }
    }

    fn cf(&self, name: &str) -> &'a rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    fn get<T: Stored>(&self, cf: &str, key: &[u8]) -> Result<Option<T>, StateError> {
        match self.db.get_pinned_cf(self.cf(cf), key)? {
            Some(bytes) => Ok(Some(T::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn put<T: Stored>(&mut self, cf: &str, key: &[u8], value: &T) {
        let cf = self.cf(cf);
        self.batch.put_cf(cf, key, value.encode());
    }

    /// Reserves `n` consecutive ids from a counter (ids start at 1).
    fn reserve(&mut self, counter: &[u8], n: u64) -> Result<u64, StateError> {
        let next = self
            .db
            .get_cf(self.cf(CF_COUNTERS), counter)?
            .as_deref()
            .and_then(keys::decode_u64)
            .unwrap_or(1);
        let cf = self.cf(CF_COUNTERS);
        self.batch.put_cf(cf, counter, keys::id(next + n));
        Ok(next)
    }
}

/// Applies `cmd`; the batch holds its writes unless the answer is an error.
pub fn apply(tx: &mut Tx<'_>, cmd: Command) -> Result<Response, StateError> {
    let outcome = match cmd {
        Command::RegisterNode(node) => register_node(tx, node),
        Command::CreateDataset(spec) => create_dataset(tx, spec),
        Command::BeginSubmission { dataset, now_ms } => begin_submission(tx, &dataset, now_ms),
        Command::SubmitChunk {
            dataset,
            submission,
            files,
        } => submit_chunk(tx, &dataset, submission, &files),
        Command::FinishSubmission {
            dataset,
            submission,
        } => finish_submission(tx, &dataset, submission),
        Command::GrantLease {
            shard,
            node,
            expected_epoch,
            deadline_ms,
        } => grant_lease(tx, shard, node, expected_epoch, deadline_ms),
        Command::ReportProgress {
            shard,
            node,
            epoch,
            offset,
        } => report(tx, shard, node, epoch, Some(offset)),
        Command::CompleteShard { shard, node, epoch } => report(tx, shard, node, epoch, None),
        Command::AssignPartitions { assignments } => assign_partitions(tx, &assignments),
    }?;
    Ok(outcome.unwrap_or_else(|err| {
        tx.batch.clear();
        Response::Error(err)
    }))
}

fn register_node(tx: &mut Tx<'_>, node: NodeInfo) -> Outcome {
    tx.put(CF_NODES, &keys::id(node.id), &node);
    Ok(Ok(Response::NodeRegistered { id: node.id }))
}

fn create_dataset(tx: &mut Tx<'_>, spec: DatasetSpec) -> Outcome {
    if tx
        .get::<Dataset>(CF_DATASETS, spec.name.as_bytes())?
        .is_some()
    {
        return Ok(Err(CommandError::DatasetExists { name: spec.name }));
    }
    let id = u32::try_from(tx.reserve(keys::NEXT_DATASET, 1)?).expect("fewer than 2^32 datasets");
    let dataset = Dataset {
        id,
        spec,
        open_submission: None,
        last_generation: 0,
        live_files: 0,
    };
    tx.put(CF_DATASETS, dataset.spec.name.as_bytes(), &dataset);
    Ok(Ok(Response::DatasetCreated { id }))
}

fn dataset(tx: &Tx<'_>, name: &str) -> Result<Result<Dataset, CommandError>, StateError> {
    Ok(tx
        .get::<Dataset>(CF_DATASETS, name.as_bytes())?
        .ok_or_else(|| CommandError::UnknownDataset { name: name.into() }))
}

fn begin_submission(tx: &mut Tx<'_>, name: &str, now_ms: u64) -> Outcome {
    let mut dataset = match dataset(tx, name)? {
        Ok(d) => d,
        Err(e) => return Ok(Err(e)),
    };
    if let Some(submission) = dataset.open_submission {
        return Ok(Err(CommandError::SubmissionOpen {
            dataset: name.into(),
            submission,
        }));
    }
    let submission = tx.reserve(keys::NEXT_SUBMISSION, 1)?;
    let job = Job {
        id: submission,
        dataset_id: dataset.id,
        began_ms: now_ms,
        previous_generation: dataset.last_generation,
        state: JobState::Submitting,
        counts: DiffCounts::default(),
        gone: 0,
        shards_total: 0,
        shards_done: 0,
    };
    tx.put(CF_JOBS, &keys::id(submission), &job);
    dataset.open_submission = Some(submission);
    tx.put(CF_DATASETS, name.as_bytes(), &dataset);
    Ok(Ok(Response::SubmissionBegun { submission }))
}

/// The dataset and job of an open submission.
fn open_submission(
    tx: &Tx<'_>,
    name: &str,
    submission: u64,
) -> Result<Result<(Dataset, Job), CommandError>, StateError> {
    let dataset = match dataset(tx, name)? {
        Ok(d) => d,
        Err(e) => return Ok(Err(e)),
    };
    if dataset.open_submission != Some(submission) {
        return Ok(Err(CommandError::UnknownSubmission {
            dataset: name.into(),
            submission,
        }));
    }
    let job = tx
        .get::<Job>(CF_JOBS, &keys::id(submission))?
        .ok_or_else(|| {
            StateError::Inconsistent(format!("open submission {submission} has no job"))
        })?;
    Ok(Ok((dataset, job)))
}

/// How a manifest entry compares with the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Diff {
    New,
    Changed,
    Unchanged,
}

/// The catalogue rule: a file is unchanged only if it was listed by the
/// last finished submission with the same size, mtime and checksum.
pub fn diff(entry: &FileEntry, known: Option<&CatalogEntry>, last_generation: u64) -> Diff {
    match known {
        Some(k) if last_generation != 0 && k.generation == last_generation => {
            if k.size == entry.size && k.mtime_ns == entry.mtime_ns && k.checksum == entry.checksum
            {
                Diff::Unchanged
            } else {
                Diff::Changed
            }
        }
        // Unknown, or gone in an earlier submission and back now.
        _ => Diff::New,
    }
}

fn submit_chunk(tx: &mut Tx<'_>, name: &str, submission: u64, files: &[FileEntry]) -> Outcome {
    let (dataset, mut job) = match open_submission(tx, name, submission)? {
        Ok(found) => found,
        Err(e) => return Ok(Err(e)),
    };
    let bytes: usize = files.iter().map(FileEntry::weight).sum();
    if files.len() > MAX_CHUNK_FILES || bytes > MAX_CHUNK_BYTES {
        return Ok(Err(CommandError::ChunkTooLarge {
            files: files.len() as u64,
            bytes: bytes as u64,
        }));
    }
    let mut seen = HashSet::with_capacity(files.len());
    if let Some(dup) = files.iter().find(|f| !seen.insert(f.path.as_str())) {
        return Ok(Err(CommandError::DuplicatePath {
            path: dup.path.clone(),
        }));
    }

    let file_keys: Vec<Vec<u8>> = files
        .iter()
        .map(|f| keys::file(dataset.id, &f.path))
        .collect();
    let files_cf = tx.cf(CF_FILES);
    let mut known = Vec::with_capacity(files.len());
    for (found, file) in tx
        .db
        .multi_get_cf(file_keys.iter().map(|k| (files_cf, k)))
        .into_iter()
        .zip(files)
    {
        let entry = found?
            .map(|bytes| CatalogEntry::decode(&bytes))
            .transpose()?;
        if entry.as_ref().is_some_and(|e| e.generation == submission) {
            // Listed by an earlier chunk of this same submission.
            return Ok(Err(CommandError::DuplicatePath {
                path: file.path.clone(),
            }));
        }
        known.push(entry);
    }

    let diffs: Vec<Diff> = files
        .iter()
        .zip(&known)
        .map(|(f, k)| diff(f, k.as_ref(), dataset.last_generation))
        .collect();
    let work = diffs.iter().filter(|d| **d != Diff::Unchanged).count() as u64;
    let mut next_shard = if work > 0 {
        tx.reserve(keys::NEXT_SHARD, work)?
    } else {
        0
    };
    let mut counts = DiffCounts::default();
    for (((file, key), known), diff) in files.iter().zip(&file_keys).zip(known).zip(diffs) {
        let entry = match (diff, known) {
            (Diff::Unchanged, Some(mut k)) => {
                counts.unchanged += 1;
                k.generation = submission;
                k
            }
            _ => {
                if diff == Diff::New {
                    counts.new += 1;
                } else {
                    counts.changed += 1;
                }
                let shard = Shard {
                    id: next_shard,
                    job: submission,
                    dataset_id: dataset.id,
                    path: file.path.clone(),
                    start: 0,
                    end: file.size,
                    state: ShardState::Pending,
                    holder: None,
                    epoch: 0,
                    deadline_ms: 0,
                    checkpoint: 0,
                };
                tx.put(CF_SHARDS, &keys::id(shard.id), &shard);
                next_shard += 1;
                CatalogEntry {
                    size: file.size,
                    mtime_ns: file.mtime_ns,
                    checksum: file.checksum.clone(),
                    status: FileStatus::Pending,
                    generation: submission,
                    shard: shard.id,
                }
            }
        };
        tx.put(CF_FILES, key, &entry);
    }
    job.counts.add(counts);
    job.shards_total += work;
    tx.put(CF_JOBS, &keys::id(submission), &job);
    Ok(Ok(Response::ChunkApplied {
        counts,
        shards_created: work,
    }))
}

fn finish_submission(tx: &mut Tx<'_>, name: &str, submission: u64) -> Outcome {
    let (mut dataset, mut job) = match open_submission(tx, name, submission)? {
        Ok(found) => found,
        Err(e) => return Ok(Err(e)),
    };
    // Files of the last generation seen again were counted as changed or
    // unchanged; the rest of that generation is gone.
    let seen_again = job.counts.changed + job.counts.unchanged;
    job.gone = dataset.live_files.saturating_sub(seen_again);
    job.state = JobState::Submitted;
    dataset.open_submission = None;
    dataset.last_generation = submission;
    dataset.live_files = job.counts.new + seen_again;
    tx.put(CF_JOBS, &keys::id(submission), &job);
    tx.put(CF_DATASETS, name.as_bytes(), &dataset);
    Ok(Ok(Response::SubmissionFinished {
        submission,
        counts: job.counts,
        gone: job.gone,
    }))
}

fn shard(tx: &Tx<'_>, id: u64) -> Result<Result<Shard, CommandError>, StateError> {
    Ok(tx
        .get::<Shard>(CF_SHARDS, &keys::id(id))?
        .ok_or(CommandError::UnknownShard { id }))
}

fn grant_lease(
    tx: &mut Tx<'_>,
    id: u64,
    node: u64,
    expected_epoch: u64,
    deadline_ms: u64,
) -> Outcome {
    if tx.get::<NodeInfo>(CF_NODES, &keys::id(node))?.is_none() {
        return Ok(Err(CommandError::UnknownNode { id: node }));
    }
    let mut shard = match shard(tx, id)? {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    if shard.state == ShardState::Done {
        return Ok(Err(CommandError::ShardDone { shard: id }));
    }
    if shard.epoch != expected_epoch {
        return Ok(Err(CommandError::StaleEpoch {
            shard: id,
            presented: expected_epoch,
            current: shard.epoch,
        }));
    }
    shard.epoch += 1;
    shard.holder = Some(node);
    shard.state = ShardState::Leased;
    shard.deadline_ms = deadline_ms;
    tx.put(CF_SHARDS, &keys::id(id), &shard);
    let leased = tx.cf(CF_LEASED);
    tx.batch.put_cf(leased, keys::id(id), []);
    Ok(Ok(Response::LeaseGranted {
        shard: id,
        node,
        epoch: shard.epoch,
        deadline_ms,
    }))
}

/// A progress report (`offset`) or completion (`None`) from a lease holder.
fn report(tx: &mut Tx<'_>, id: u64, node: u64, epoch: u64, offset: Option<u64>) -> Outcome {
    let mut shard = match shard(tx, id)? {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    if shard.state == ShardState::Done {
        return Ok(Err(CommandError::ShardDone { shard: id }));
    }
    if epoch != shard.epoch {
        return Ok(Err(CommandError::StaleEpoch {
            shard: id,
            presented: epoch,
            current: shard.epoch,
        }));
    }
    if shard.holder != Some(node) {
        return Ok(Err(CommandError::NotLeaseHolder { shard: id, node }));
    }
    let response = match offset {
        Some(offset) => {
            shard.checkpoint = shard.checkpoint.max(offset.min(shard.end));
            Response::ProgressRecorded {
                shard: id,
                checkpoint: shard.checkpoint,
            }
        }
        None => {
            shard.checkpoint = shard.end;
            shard.state = ShardState::Done;
            let leased = tx.cf(CF_LEASED);
            tx.batch.delete_cf(leased, keys::id(id));
            complete_file(tx, &shard)?;
            Response::ShardCompleted { shard: id }
        }
    };
    tx.put(CF_SHARDS, &keys::id(id), &shard);
    Ok(Ok(response))
}

/// Marks the catalogue entry ingested (unless a newer version of the file
/// has been submitted since) and counts the shard on its job.
fn complete_file(tx: &mut Tx<'_>, shard: &Shard) -> Result<(), StateError> {
    let key = keys::file(shard.dataset_id, &shard.path);
    if let Some(mut entry) = tx.get::<CatalogEntry>(CF_FILES, &key)?
        && entry.shard == shard.id
    {
        entry.status = FileStatus::Ingested;
        tx.put(CF_FILES, &key, &entry);
    }
    if let Some(mut job) = tx.get::<Job>(CF_JOBS, &keys::id(shard.job))? {
        job.shards_done += 1;
        tx.put(CF_JOBS, &keys::id(job.id), &job);
    }
    Ok(())
}

fn assign_partitions(tx: &mut Tx<'_>, assignments: &[(u32, u64)]) -> Outcome {
    for &(partition, node) in assignments {
        if tx.get::<NodeInfo>(CF_NODES, &keys::id(node))?.is_none() {
            return Ok(Err(CommandError::UnknownNode { id: node }));
        }
        let cf = tx.cf(CF_PARTITIONS);
        tx.batch
            .put_cf(cf, keys::partition(partition), keys::id(node));
    }
    Ok(Ok(Response::PartitionsAssigned {
        count: assignments.len() as u64,
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use proto_schema::command::{
        Command, CommandError, DiffCounts, FileEntry, MAX_CHUNK_FILES, Response,
    };

    use super::super::records::{FileStatus, JobState};
    use super::super::test_support::{Applier, setup_dataset};

    fn file(path: &str, size: u64, mtime_ns: i64, checksum: Option<u8>) -> FileEntry {
        FileEntry {
            path: path.into(),
            size,
            mtime_ns,
            checksum: checksum.map(|c| vec![c; 16]),
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resubmission_marks_only_new_and_changed_files_and_reports_gone_ones() {
        let mut sm = Applier::new();
        setup_dataset(&mut sm, "ds", &[1]).await;
        let first = vec![
            file("a", 10, 1, None),
            file("b", 20, 2, Some(1)),
            file("c", 30, 3, Some(2)),
            file("d", 40, 4, None),
        ];
        let s1 = sm.submit("ds", first).await;
        let job1 = sm.state().job(s1).unwrap().unwrap();
        assert_eq!(
            job1.counts,
            DiffCounts {
                new: 4,
                changed: 0,
                unchanged: 0
            }
        );
        assert_eq!(
            (job1.state, job1.gone, job1.shards_total),
            (JobState::Submitted, 0, 4)
        );

        // Ingest everything the first job created.
        for shard in 1..=4 {
            let grant = Command::GrantLease {
                shard,
                node: 1,
                expected_epoch: 0,
                deadline_ms: 9,
            };
            assert!(matches!(
                sm.apply(grant).await,
                Response::LeaseGranted { epoch: 1, .. }
            ));
            let done = Command::CompleteShard {
                shard,
                node: 1,
                epoch: 1,
            };
            assert_eq!(sm.apply(done).await, Response::ShardCompleted { shard });
        }
        assert_eq!(sm.state().job(s1).unwrap().unwrap().shards_done, 4);

        // a unchanged, b new mtime, c new checksum, d gone, e new.
        let second = vec![
            file("a", 10, 1, None),
            file("b", 20, 5, Some(1)),
            file("c", 30, 3, Some(9)),
            file("e", 50, 6, None),
        ];
        let s2 = sm.submit("ds", second).await;
        let job2 = sm.state().job(s2).unwrap().unwrap();
        assert_eq!(
            job2.counts,
            DiffCounts {
                new: 1,
                changed: 2,
                unchanged: 1
            }
        );
        assert_eq!((job2.gone, job2.shards_total), (1, 3));
        let dataset = sm.state().dataset("ds").unwrap().unwrap();
        assert_eq!((dataset.live_files, dataset.last_generation), (4, s2));
        let status = |path: &str| {
            sm.state()
                .catalog_entry(dataset.id, path)
                .unwrap()
                .unwrap()
                .status
        };
        assert_eq!(status("a"), FileStatus::Ingested);
        for path in ["b", "c", "e"] {
            assert_eq!(status(path), FileStatus::Pending, "{path}");
        }
        assert_eq!(
            sm.state().gone_files(&job2, None, 10).unwrap(),
            vec!["d".to_string()]
        );

        // Gone files are listed page by page.
        let s3 = sm.submit("ds", vec![file("e", 50, 6, None)]).await;
        let job3 = sm.state().job(s3).unwrap().unwrap();
        assert_eq!(job3.gone, 3);
        let page1 = sm.state().gone_files(&job3, None, 2).unwrap();
        assert_eq!(page1, vec!["a".to_string(), "b".to_string()]);
        let page2 = sm.state().gone_files(&job3, Some("b"), 2).unwrap();
        assert_eq!(page2, vec!["c".to_string()]);

        // A file gone earlier and listed again is new.
        let s4 = sm
            .submit("ds", vec![file("d", 40, 4, None), file("e", 50, 6, None)])
            .await;
        let job4 = sm.state().job(s4).unwrap().unwrap();
        assert_eq!(
            job4.counts,
            DiffCounts {
                new: 1,
                changed: 0,
                unchanged: 1
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_commands_get_clear_errors_and_change_nothing() {
        let mut sm = Applier::new();
        setup_dataset(&mut sm, "ds", &[1]).await;
        let digest = |sm: &Applier| sm.state().digest().unwrap();

        let before = digest(&sm);
        let begin = Command::BeginSubmission {
            dataset: "nope".into(),
            now_ms: 0,
        };
        assert_eq!(
            sm.apply(begin).await,
            Response::Error(CommandError::UnknownDataset {
                name: "nope".into()
            })
        );
        let assign = Command::AssignPartitions {
            assignments: vec![(0, 1), (1, 7)],
        };
        assert_eq!(
            sm.apply(assign).await,
            Response::Error(CommandError::UnknownNode { id: 7 })
        );
        assert_eq!(
            sm.state().partition_owner(0).unwrap(),
            None,
            "a refused command wrote nothing"
        );
        let grant = Command::GrantLease {
            shard: 5,
            node: 1,
            expected_epoch: 0,
            deadline_ms: 0,
        };
        assert_eq!(
            sm.apply(grant).await,
            Response::Error(CommandError::UnknownShard { id: 5 })
        );
        let garbage = sm
            .apply_bytes(b"definitely not an rkyv command".to_vec())
            .await;
        assert!(
            matches!(garbage, Response::Error(CommandError::Malformed { .. })),
            "{garbage:?}"
        );
        assert_eq!(digest(&sm), before);

        let begin = Command::BeginSubmission {
            dataset: "ds".into(),
            now_ms: 0,
        };
        let Response::SubmissionBegun { submission } = sm.apply(begin.clone()).await else {
            panic!()
        };
        assert_eq!(
            sm.apply(begin).await,
            Response::Error(CommandError::SubmissionOpen {
                dataset: "ds".into(),
                submission
            })
        );
        let chunk = |files| Command::SubmitChunk {
            dataset: "ds".into(),
            submission,
            files,
        };
        let before = digest(&sm);
        let dup = chunk(vec![
            file("x", 1, 1, None),
            file("y", 1, 1, None),
            file("x", 2, 2, None),
        ]);
        assert_eq!(
            sm.apply(dup).await,
            Response::Error(CommandError::DuplicatePath { path: "x".into() })
        );
        assert_eq!(
            digest(&sm),
            before,
            "no entry of a refused chunk is applied"
        );
        let too_many = chunk(
            (0..=MAX_CHUNK_FILES)
                .map(|i| file(&i.to_string(), 1, 1, None))
                .collect(),
        );
        assert!(matches!(
            sm.apply(too_many).await,
            Response::Error(CommandError::ChunkTooLarge { .. })
        ));

        let ok = chunk(vec![file("x", 1, 1, None)]);
        assert!(matches!(
            sm.apply(ok).await,
            Response::ChunkApplied {
                shards_created: 1,
                ..
            }
        ));
        let again = chunk(vec![file("z", 1, 1, None), file("x", 1, 1, None)]);
        assert_eq!(
            sm.apply(again).await,
            Response::Error(CommandError::DuplicatePath { path: "x".into() }),
            "a path listed by an earlier chunk of the same submission"
        );
        let wrong = Command::FinishSubmission {
            dataset: "ds".into(),
            submission: submission + 1,
        };
        assert_eq!(
            sm.apply(wrong).await,
            Response::Error(CommandError::UnknownSubmission {
                dataset: "ds".into(),
                submission: submission + 1
            })
        );
    }

    /// What a file in the second inventory is, relative to the first.
    #[derive(Debug, Clone, Copy)]
    enum Change {
        Keep,
        Size,
        Mtime,
        Checksum,
        Drop,
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            4 => Just(Change::Keep),
            1 => Just(Change::Size),
            1 => Just(Change::Mtime),
            1 => Just(Change::Checksum),
            1 => Just(Change::Drop),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Re-submitting a changed inventory marks exactly the new and
        /// changed files pending, skips the rest, and counts the gone ones.
        #[test]
        fn resubmission_diff_is_exact(
            first in proptest::collection::btree_map("[a-f]{1,3}/[a-z]{1,6}", (0u64..1000, 0i64..1000, proptest::option::of(any::<u8>())), 1..60),
            changes in proptest::collection::vec(change(), 60),
            added in proptest::collection::btree_set("new/[a-z]{1,6}", 0..10),
        ) {
            let inventory = |m: &BTreeMap<String, (u64, i64, Option<u8>)>| {
                m.iter().map(|(p, &(s, t, c))| file(p, s, t, c)).collect::<Vec<_>>()
            };
            let mut second = BTreeMap::new();
            let mut expect = DiffCounts::default();
            let mut gone = 0;
            let mut should_be_pending = Vec::new();
            for ((path, &(size, mtime, sum)), change) in first.iter().zip(&changes) {
                let changed = match change {
                    Change::Keep => (size, mtime, sum),
                    Change::Size => (size + 1, mtime, sum),
                    Change::Mtime => (size, mtime + 1, sum),
                    Change::Checksum => (size, mtime, Some(sum.map_or(0, |c| c.wrapping_add(1)))),
                    Change::Drop => { gone += 1; continue; }
                };
                if matches!(change, Change::Keep) { expect.unchanged += 1 } else {
                    expect.changed += 1;
                    should_be_pending.push(path.clone());
                }
                second.insert(path.clone(), changed);
            }
            for path in &added {
                expect.new += 1;
                should_be_pending.push(path.clone());
                second.insert(path.clone(), (7, 7, None));
            }

            rt().block_on(async {
                let mut sm = Applier::new();
                setup_dataset(&mut sm, "ds", &[1]).await;
                sm.submit("ds", inventory(&first)).await;
                let s2 = sm.submit("ds", inventory(&second)).await;
                let job = sm.state().job(s2).unwrap().unwrap();
                prop_assert_eq!(job.counts, expect);
                prop_assert_eq!(job.gone, gone);
                prop_assert_eq!(job.shards_total, expect.new + expect.changed);

                let dataset = sm.state().dataset("ds").unwrap().unwrap();
                let mut marked = Vec::new();
                for path in second.keys() {
                    let entry = sm.state().catalog_entry(dataset.id, path).unwrap().unwrap();
                    let shard = sm.state().shard(entry.shard).unwrap().unwrap();
                    if shard.job == s2 {
                        prop_assert_eq!(entry.status, FileStatus::Pending);
                        marked.push(path.clone());
                    }
                }
                should_be_pending.sort();
                prop_assert_eq!(marked, should_be_pending);
                Ok(())
            })?;
        }
    }
}
