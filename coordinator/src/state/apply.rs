//! Applying one command to the state DB: the coordinator's rules.
//!
//! Each command reads what it needs from the DB and writes into one
//! `WriteBatch`; a command that ends in an error response has its batch
//! discarded, so a refused command changes nothing. Nothing here reads a
//! clock or a random source: the same log gives the same state on every
//! replica. Work per command is bounded by the command's size (a manifest
//! chunk is at most `MAX_CHUNK_FILES` files), never by the catalogue's.
//! The command's bounds are checked again here, whatever the leader
//! checked: a command out of bounds is refused, never written.
//!
//! A file listed again unchanged is not written: each chunk records what
//! it listed as one record (`listed`), and whether a file is still live is
//! read from the last finished submission's listing.
//!
//! Aborting a submission is one write too, plus one range deletion of its
//! listing: a submission that rewrites a catalogue entry keeps what it
//! replaced in the entry (`prior`), and an entry last rewritten by an
//! aborted submission counts as its prior (`Aborted::settle`). The next
//! rewrite drops the stale version.

use std::collections::HashMap;

use proto_schema::command::{
    Command, CommandError, DatasetSpec, DiffCounts, EntriesDigest, FileEntry, InventoryRange,
    LeaseGrant, MAX_JOB_ATTEMPTS, NodeInfo, Response, RestartCause, ShardDone, StagedCounts,
};
use proto_schema::ids::{DatasetId, Epoch, JobId, NodeId, ShardId};
use rocksdb::{DB, WriteBatch};

use super::StateError;
use super::digested;
use super::keys::{
    self, CF_COUNTERS, CF_DATASETS, CF_FILES, CF_JOBS, CF_LEASED, CF_NODES, CF_PARTITIONS,
    CF_SHARDS,
};
use super::listed::{self, Listing};
use super::records::{
    self, CatalogEntry, Dataset, FileStatus, Job, JobState, Node, Recovery, Shard, ShardState,
    Stored,
};
use super::sorted_lookup::SortedLookup;
use proto_schema::PartitionMap;
use proto_schema::partition_map::MAX_PARTITIONS;

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

    /// Reserves `n` consecutive ids from a counter (ids start at 1). A
    /// counter that does not decode, or would overflow, is an error: ids
    /// are never handed out twice.
    fn reserve(&mut self, counter: &[u8], n: u64) -> Result<u64, StateError> {
        let next = match self.db.get_cf(self.cf(CF_COUNTERS), counter)? {
            None => 1,
            Some(bytes) => keys::decode_u64(&bytes).ok_or_else(|| {
                StateError::Inconsistent(format!("counter {counter:?} holds {bytes:02x?}"))
            })?,
        };
        let after = next.checked_add(n).ok_or_else(|| {
            StateError::Inconsistent(format!(
                "counter {counter:?} at {next} cannot give {n} more"
            ))
        })?;
        let cf = self.cf(CF_COUNTERS);
        self.batch.put_cf(cf, counter, keys::id(after));
        Ok(next)
    }
}

/// Which submissions were aborted, read from their jobs once per command
/// (or per read) and remembered: a chunk's entries name few jobs.
pub struct Aborted<'a> {
    db: &'a DB,
    known: HashMap<JobId, bool>,
}

impl<'a> Aborted<'a> {
    pub fn new(db: &'a DB) -> Self {
        Self {
            db,
            known: HashMap::new(),
        }
    }

    fn is_aborted(&mut self, job: JobId) -> Result<bool, StateError> {
        if let Some(&aborted) = self.known.get(&job) {
            return Ok(aborted);
        }
        let cf = self
            .db
            .cf_handle(CF_JOBS)
            .expect("column family created at open");
        let aborted = match self.db.get_pinned_cf(cf, keys::id(job))? {
            Some(bytes) => Job::decode(&bytes)?.state == JobState::Aborted,
            None => false,
        };
        self.known.insert(job, aborted);
        Ok(aborted)
    }

    /// The catalogue entry that counts (see `CatalogEntry::settled`).
    pub fn settle(&mut self, entry: CatalogEntry) -> Result<Option<CatalogEntry>, StateError> {
        let aborted = self.is_aborted(entry.since)?;
        Ok(entry.settled(aborted))
    }
}

/// Applies `cmd`; the batch holds its writes unless the answer is an error.
pub fn apply(tx: &mut Tx<'_>, cmd: Command) -> Result<Response, StateError> {
    if let Err(out_of_bounds) = cmd.check_bounds() {
        return Ok(Response::Error(out_of_bounds));
    }
    let outcome = match cmd {
        Command::RegisterNode(node) => register_node(tx, node),
        Command::CreateDataset(spec) => create_dataset(tx, spec),
        Command::BeginSubmission { dataset, now_ms } => begin_submission(tx, &dataset, now_ms),
        Command::SubmitChunk {
            dataset,
            submission,
            first_file,
            files,
        } => submit_chunk(tx, &dataset, submission, first_file, files),
        Command::SubmitRanges {
            dataset,
            submission,
            ranges,
        } => submit_ranges(tx, &dataset, submission, &ranges),
        Command::FinishSubmission {
            dataset,
            submission,
        } => finish_submission(tx, &dataset, submission),
        Command::AbortSubmission {
            dataset,
            submission,
        } => abort_submission(tx, &dataset, submission),
        Command::GrantLeases {
            node,
            shards,
            deadline_ms,
        } => grant_leases(tx, node, &shards, deadline_ms),
        Command::ReportProgress {
            shard,
            node,
            epoch,
            offset,
        } => report_progress(tx, shard, node, epoch, offset),
        Command::CompleteShards { node, shards } => complete_shards(tx, node, &shards),
        Command::AssignPartitions { dataset, map } => assign_partitions(tx, &dataset, map),
        Command::DeclareNodeLost { node, incarnation } => declare_lost(tx, node, incarnation),
        Command::StageJob {
            job,
            node,
            counts,
            map_epoch,
        } => stage_job(tx, job, node, counts, map_epoch),
        Command::RestartJob {
            job,
            attempt,
            map,
            cause,
        } => restart_job(tx, job, attempt, map, cause),
        Command::RecoverJob {
            job,
            attempt,
            lost,
            owner,
            map,
        } => recover_job(tx, job, attempt, lost, owner, map),
    }?;
    Ok(outcome.unwrap_or_else(|err| {
        tx.batch.clear();
        Response::Error(err)
    }))
}

/// Registers a node, or a newer incarnation of it: the leases the older
/// one held go back to pending. The same incarnation again (a register
/// whose answer was lost) changes nothing; an older one is refused.
fn register_node(tx: &mut Tx<'_>, info: NodeInfo) -> Outcome {
    let (id, incarnation) = (info.id, info.incarnation);
    let known = tx.get::<Node>(CF_NODES, &keys::id(id))?;
    let mut released = 0;
    if let Some(known) = known {
        let current = known.info.incarnation;
        if incarnation < current {
            return Ok(Err(CommandError::StaleIncarnation {
                node: id,
                presented: incarnation,
                current,
            }));
        }
        if incarnation == current {
            // A lost incarnation stays lost: only a restart comes back.
            if known.lost {
                return Ok(Err(CommandError::NodeLost { node: id }));
            }
            return Ok(Ok(Response::NodeRegistered {
                id,
                incarnation,
                released: 0,
            }));
        }
        released = release_leases(tx, id)?;
    }
    tx.put(CF_NODES, &keys::id(id), &Node { info, lost: false });
    Ok(Ok(Response::NodeRegistered {
        id,
        incarnation,
        released,
    }))
}

/// The leader declares a node's incarnation lost: its leases go back to
/// pending. A newer incarnation registered meanwhile is not touched.
fn declare_lost(tx: &mut Tx<'_>, id: NodeId, incarnation: u64) -> Outcome {
    let Some(mut node) = tx.get::<Node>(CF_NODES, &keys::id(id))? else {
        return Ok(Err(CommandError::UnknownNode { id }));
    };
    if node.info.incarnation != incarnation {
        return Ok(Err(CommandError::StaleIncarnation {
            node: id,
            presented: incarnation,
            current: node.info.incarnation,
        }));
    }
    let released = if node.lost {
        0
    } else {
        release_leases(tx, id)?
    };
    node.lost = true;
    tx.put(CF_NODES, &keys::id(id), &node);
    Ok(Ok(Response::NodeDeclaredLost { node: id, released }))
}

/// Sends the shards leased to `node` back to pending at their epoch, so
/// their next grant moves the epoch on and fences the old holder. Reads
/// the lease index: work bounded by the leases in flight.
fn release_leases(tx: &mut Tx<'_>, node: NodeId) -> Result<u64, StateError> {
    let leased_cf = tx.cf(CF_LEASED);
    let mut released = 0;
    for item in tx.db.iterator_cf(leased_cf, rocksdb::IteratorMode::Start) {
        let (key, _) = item?;
        let Some(id) = keys::decode_u64(&key) else {
            return Err(StateError::Inconsistent(format!(
                "lease index key {key:02x?}"
            )));
        };
        let Some(mut shard) = tx.get::<Shard>(CF_SHARDS, &key)? else {
            return Err(StateError::Inconsistent(format!(
                "leased shard {id} is missing"
            )));
        };
        if shard.holder != Some(node) {
            continue;
        }
        shard.holder = None;
        shard.state = ShardState::Pending;
        tx.put(CF_SHARDS, &key, &shard);
        tx.batch.delete_cf(leased_cf, key);
        released += 1;
    }
    Ok(released)
}

/// A registered node not declared lost.
fn live_node(tx: &Tx<'_>, id: NodeId) -> Result<Result<Node, CommandError>, StateError> {
    Ok(match tx.get::<Node>(CF_NODES, &keys::id(id))? {
        None => Err(CommandError::UnknownNode { id }),
        Some(node) if node.lost => Err(CommandError::NodeLost { node: id }),
        Some(node) => Ok(node),
    })
}

fn create_dataset(tx: &mut Tx<'_>, spec: DatasetSpec) -> Outcome {
    if spec.partitions == 0 || spec.partitions > MAX_PARTITIONS {
        return Ok(Err(CommandError::BadPartitionCount {
            partitions: spec.partitions,
        }));
    }
    if tx
        .get::<Dataset>(CF_DATASETS, spec.name.as_bytes())?
        .is_some()
    {
        return Ok(Err(CommandError::DatasetExists { name: spec.name }));
    }
    let id = tx.reserve(keys::NEXT_DATASET, 1)?;
    let id = u32::try_from(id)
        .map_err(|_| StateError::Inconsistent(format!("dataset id {id} over 2^32")))?;
    let id = DatasetId(id);
    let dataset = Dataset {
        id,
        spec,
        open_submission: None,
        last_finished: JobId(0),
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
    let submission = JobId(tx.reserve(keys::NEXT_SUBMISSION, 1)?);
    let job = Job {
        id: submission,
        dataset_id: dataset.id,
        began_ms: now_ms,
        previous_finished: dataset.last_finished,
        state: JobState::Submitting,
        counts: DiffCounts::default(),
        gone: 0,
        shards_total: 0,
        shards_done: 0,
        staged: Vec::new(),
        attempt: 0,
        restarted: None,
        recovery: None,
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
    submission: JobId,
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

/// The catalogue rule: a file is unchanged only if the last finished
/// submission listed it (`live`: its entry then) with the same size, mtime
/// and checksum. A file unknown, or gone and back, is new.
pub fn diff(entry: &FileEntry, live: Option<&CatalogEntry>) -> Diff {
    match live {
        Some(k)
            if k.size == entry.size
                && k.mtime_ns == entry.mtime_ns
                && k.checksum == entry.checksum =>
        {
            Diff::Unchanged
        }
        Some(_) => Diff::Changed,
        None => Diff::New,
    }
}

fn submit_chunk(
    tx: &mut Tx<'_>,
    name: &str,
    submission: JobId,
    first_file: u64,
    files: Vec<FileEntry>,
) -> Outcome {
    let range = InventoryRange::Files { first_file, files };
    Ok(
        submit_ranges(tx, name, submission, std::slice::from_ref(&range))?.map(|response| {
            match response {
                Response::RangesApplied {
                    counts,
                    shards_created,
                    ..
                } => Response::ChunkApplied {
                    counts,
                    shards_created,
                },
                other => other,
            }
        }),
    )
}

/// A range of a `SubmitRanges` once read against the catalogue, before
/// anything is written.
enum Checked<'f> {
    Files(DiffedFiles<'f>),
    Accepted {
        files: u32,
        digest: [u8; 16],
        found: digested::Accepted,
    },
    Mismatched,
}

/// A range put in order: files sorted, and the span it covers.
enum Sorted<'f> {
    Files {
        first_file: u64,
        files: Vec<&'f FileEntry>,
    },
    Digest(digested::Claim<'f>),
}

impl<'f> Sorted<'f> {
    fn span(&self) -> (&'f str, &'f str) {
        match self {
            Sorted::Files { files, .. } => {
                let (first, last): (&'f FileEntry, &'f FileEntry) =
                    (files[0], files[files.len() - 1]);
                (&first.path, &last.path)
            }
            Sorted::Digest(claim) => (claim.first, claim.last),
        }
    }
}

/// Applies the ranges in three passes: each range is put in order and the
/// ranges checked to ascend without overlapping; then every range is read
/// against the DB (refusing the command if one overlaps an earlier chunk),
/// through one cursor per column family for the whole command; then
/// written, with the shard ids of the whole command reserved at once
/// (reads see the DB, not this batch).
fn submit_ranges(
    tx: &mut Tx<'_>,
    name: &str,
    submission: JobId,
    ranges: &[InventoryRange],
) -> Outcome {
    let (dataset, mut job) = match open_submission(tx, name, submission)? {
        Ok(found) => found,
        Err(e) => return Ok(Err(e)),
    };
    let (sorted, out_of_order) = match in_order(ranges) {
        Ok(sorted) => sorted,
        Err(e) => return Ok(Err(e)),
    };
    let db = tx.db;
    let end = |digests: bool| {
        sorted
            .iter()
            .filter(|range| matches!(range, Sorted::Digest(_)) == digests)
            .map(|range| range.span().1)
            .next_back()
    };
    let mut checker =
        end(true).map(|end| digested::Checker::new(db, dataset.id, dataset.last_finished, end));
    let mut catalogue = end(false).map(|end| Catalogue::new(db, &dataset, end));
    let mut own = Listing::new(db, dataset.id, submission);
    let mut checked = Vec::with_capacity(sorted.len());
    for (index, range) in sorted.into_iter().enumerate() {
        let (first, last) = range.span();
        let files: &[&FileEntry] = match &range {
            Sorted::Files { files, .. } => files,
            Sorted::Digest(_) => &[],
        };
        if let Some(refusal) = overlap_refusal(&mut own, first, last, files)? {
            return Ok(Err(refusal));
        }
        // After the earlier chunks' refusal: a path listed in one of them
        // is the better answer.
        if let Some((at, refusal)) = &out_of_order
            && *at == index
        {
            return Ok(Err(refusal.clone()));
        }
        checked.push(match range {
            Sorted::Files { first_file, files } => {
                let catalogue = catalogue.as_mut().expect("made for the files ranges");
                Checked::Files(catalogue.diff(first_file, files)?)
            }
            Sorted::Digest(claim) => {
                let checker = checker.as_mut().expect("made for the digest ranges");
                match checker.check(&claim)? {
                    Some(found) => Checked::Accepted {
                        files: claim.files,
                        digest: claim.digest,
                        found,
                    },
                    None => Checked::Mismatched,
                }
            }
        });
    }

    let work: u64 = checked
        .iter()
        .map(|c| match c {
            Checked::Files(diffed) => diffed.work(),
            _ => 0,
        })
        .sum();
    let mut next_shard = ShardId(if work > 0 {
        tx.reserve(keys::NEXT_SHARD, work)?
    } else {
        0
    });
    let mut counts = DiffCounts::default();
    let mut mismatched = Vec::new();
    for (index, range) in checked.into_iter().enumerate() {
        match range {
            Checked::Files(diffed) => counts.add(write_files(
                tx,
                dataset.id,
                submission,
                diffed,
                &mut next_shard,
            )),
            Checked::Accepted {
                files,
                digest,
                found,
            } => {
                counts.unchanged += u64::from(files);
                match found {
                    digested::Accepted::Read(paths) => {
                        let paths = paths.iter().map(Vec::as_slice);
                        listed::record(&mut tx.batch, db, dataset.id, submission, paths, digest);
                    }
                    digested::Accepted::Again { last, record } => {
                        listed::record_again(
                            &mut tx.batch,
                            db,
                            dataset.id,
                            submission,
                            &last,
                            &record,
                        );
                    }
                }
            }
            Checked::Mismatched => {
                mismatched.push(u32::try_from(index).expect("ranges are bounded"))
            }
        }
    }
    job.counts.add(counts);
    job.shards_total += work;
    tx.put(CF_JOBS, &keys::id(submission), &job);
    Ok(Ok(Response::RangesApplied {
        counts,
        shards_created: work,
        mismatched,
    }))
}

/// The ranges with their files sorted (none listed twice), empty ones
/// dropped, up to the first that does not ascend past the one before, if
/// any: its index and why it is refused.
type InOrder<'f> = (Vec<Sorted<'f>>, Option<(usize, CommandError)>);

fn in_order(ranges: &[InventoryRange]) -> Result<InOrder<'_>, CommandError> {
    let mut sorted = Vec::with_capacity(ranges.len());
    for range in ranges {
        let range = match range {
            InventoryRange::Files { first_file, files } => {
                // In path order: the range's listing is stored sorted, and
                // its catalogue entries are read by stepping through the
                // catalogue.
                let mut files: Vec<&FileEntry> = files.iter().collect();
                files.sort_unstable_by(|a, b| a.path.cmp(&b.path));
                if let Some(pair) = files.windows(2).find(|pair| pair[0].path == pair[1].path) {
                    return Err(CommandError::DuplicatePath {
                        path: pair[0].path.clone(),
                    });
                }
                if files.is_empty() {
                    continue;
                }
                Sorted::Files {
                    first_file: *first_file,
                    files,
                }
            }
            InventoryRange::Digest {
                first,
                last,
                files,
                digest,
            } => {
                if *files == 0 || first > last {
                    return Err(CommandError::Malformed {
                        reason: format!(
                            "digest range {first:?} to {last:?} of {files} files is empty"
                        ),
                    });
                }
                Sorted::Digest(digested::Claim {
                    first,
                    last,
                    files: *files,
                    digest: *digest,
                })
            }
        };
        if let Some(previous) = sorted.last().map(|r: &Sorted<'_>| r.span().1) {
            let (first, last) = range.span();
            if first <= previous {
                let refusal = match listed_before(&sorted, &range) {
                    Some(path) => CommandError::DuplicatePath { path: path.clone() },
                    None => CommandError::ChunkOverlaps {
                        first: first.to_owned(),
                        last: last.to_owned(),
                    },
                };
                let at = sorted.len();
                sorted.push(range);
                return Ok((sorted, Some((at, refusal))));
            }
        }
        sorted.push(range);
    }
    Ok((sorted, None))
}

/// A path of files range `range` that an earlier range of the command
/// lists too, if any: why they overlap, when the inventory repeats a path.
fn listed_before<'f>(earlier: &[Sorted<'f>], range: &Sorted<'f>) -> Option<&'f String> {
    let Sorted::Files { files, .. } = range else {
        return None;
    };
    files.iter().map(|f| &f.path).find(|path| {
        earlier.iter().any(|e| match e {
            Sorted::Files { files, .. } => files.binary_search_by(|f| f.path.cmp(path)).is_ok(),
            Sorted::Digest(_) => false,
        })
    })
}

/// A range of files diffed against the catalogue, in path order.
struct DiffedFiles<'f> {
    first_file: u64,
    files: Vec<&'f FileEntry>,
    keys: Vec<Vec<u8>>,
    /// Each file's entry as it counts, and how the file compares with it.
    known: Vec<(Option<CatalogEntry>, Diff)>,
}

impl DiffedFiles<'_> {
    /// The shards the range makes: one per new or changed file.
    fn work(&self) -> u64 {
        self.known
            .iter()
            .filter(|(_, d)| *d != Diff::Unchanged)
            .count() as u64
    }
}

/// The catalogue and the last finished submission's listing, read in
/// path order for one command's files ranges.
struct Catalogue<'a> {
    dataset: DatasetId,
    entries: SortedLookup<'a>,
    last_listing: Listing<'a>,
    aborted: Aborted<'a>,
}

impl<'a> Catalogue<'a> {
    /// Reads of paths up to `last`.
    fn new(db: &'a DB, dataset: &Dataset, last: &str) -> Self {
        let files_cf = db
            .cf_handle(CF_FILES)
            .expect("column family created at open");
        Self {
            dataset: dataset.id,
            entries: SortedLookup::new(db, files_cf, &keys::file(dataset.id, last)),
            last_listing: Listing::new(db, dataset.id, dataset.last_finished),
            aborted: Aborted::new(db),
        }
    }

    /// Diffs a range of files (sorted, after every range diffed before).
    fn diff<'f>(
        &mut self,
        first_file: u64,
        files: Vec<&'f FileEntry>,
    ) -> Result<DiffedFiles<'f>, StateError> {
        let keys: Vec<Vec<u8>> = files
            .iter()
            .map(|f| keys::file(self.dataset, &f.path))
            .collect();
        let mut known = Vec::with_capacity(files.len());
        for (key, file) in keys.iter().zip(&files) {
            let settled = match self.entries.get(key)? {
                Some(bytes) => self.aborted.settle(CatalogEntry::decode(bytes)?)?,
                None => None,
            };
            let live = match &settled {
                Some(entry) => self.last_listing.lists(entry, file.path.as_bytes())?,
                None => false,
            };
            let diff = diff(file, settled.as_ref().filter(|_| live));
            known.push((settled, diff));
        }
        Ok(DiffedFiles {
            first_file,
            files,
            keys,
            known,
        })
    }
}

/// Writes a diffed range: a shard and a catalogue entry per new or changed
/// file, the range's listing record with its entries' digest. Returns its
/// counts.
fn write_files(
    tx: &mut Tx<'_>,
    dataset: DatasetId,
    submission: JobId,
    diffed: DiffedFiles<'_>,
    next_shard: &mut ShardId,
) -> DiffCounts {
    let mut counts = DiffCounts::default();
    let mut digest = EntriesDigest::new();
    let numbered = diffed.files.iter().zip(diffed.first_file..);
    for (((file, number), key), (known, diff)) in numbered.zip(&diffed.keys).zip(diffed.known) {
        digest.add(
            file.path.as_bytes(),
            file.size,
            file.mtime_ns,
            file.checksum.as_deref(),
        );
        match diff {
            Diff::Unchanged => {
                counts.unchanged += 1;
                continue;
            }
            Diff::New => counts.new += 1,
            Diff::Changed => counts.changed += 1,
        }
        let shard = Shard {
            id: *next_shard,
            job: submission,
            dataset_id: dataset,
            path: file.path.clone(),
            file: number,
            start: 0,
            end: file.size,
            state: ShardState::Pending,
            holder: None,
            epoch: Epoch(0),
            deadline_ms: 0,
            checkpoint: 0,
            attempt: 0,
        };
        tx.put(CF_SHARDS, &keys::id(shard.id), &shard);
        *next_shard = next_shard.next();
        let entry = CatalogEntry {
            size: file.size,
            mtime_ns: file.mtime_ns,
            checksum: file.checksum.clone(),
            status: FileStatus::Pending,
            since: submission,
            shard: shard.id,
            prior: known.map(|k| Box::new(k.into())),
        };
        tx.put(CF_FILES, key, &entry);
    }
    let paths = diffed.files.iter().map(|f| f.path.as_bytes());
    listed::record(
        &mut tx.batch,
        tx.db,
        dataset,
        submission,
        paths,
        digest.finish(),
    );
    counts
}

/// Why a range from `first` to `last` (of `files`, sorted, when it carries
/// them) is refused if it overlaps an earlier chunk's in `own`, the open
/// submission's listing: a path both list, or the order. A submission's
/// chunks must cover disjoint ranges so that its listing finds any path
/// with one seek; `quern submit` sends manifests in path order.
fn overlap_refusal(
    own: &mut Listing<'_>,
    first: &str,
    last: &str,
    files: &[&FileEntry],
) -> Result<Option<CommandError>, StateError> {
    if !own.overlaps(first.as_bytes(), last.as_bytes())? {
        return Ok(None);
    }
    for file in files {
        if own.contains(file.path.as_bytes())? {
            return Ok(Some(CommandError::DuplicatePath {
                path: file.path.clone(),
            }));
        }
    }
    Ok(Some(CommandError::ChunkOverlaps {
        first: first.to_owned(),
        last: last.to_owned(),
    }))
}

fn finish_submission(tx: &mut Tx<'_>, name: &str, submission: JobId) -> Outcome {
    let (mut dataset, mut job) = match open_submission(tx, name, submission)? {
        Ok(found) => found,
        Err(e) => return Ok(Err(e)),
    };
    // Files of the last finished submission seen again were counted as
    // changed or unchanged; the rest of its files are gone.
    let seen_again = job.counts.changed + job.counts.unchanged;
    job.gone = dataset.live_files.saturating_sub(seen_again);
    job.state = JobState::Submitted;
    dataset.open_submission = None;
    dataset.last_finished = submission;
    dataset.live_files = job.counts.new + seen_again;
    // From now on diffs read this submission's listing, and its gone
    // listing the previous one's too: older listings are never read again.
    listed::forget_before(&mut tx.batch, tx.db, dataset.id, job.previous_finished)?;
    tx.put(CF_JOBS, &keys::id(submission), &job);
    tx.put(CF_DATASETS, name.as_bytes(), &dataset);
    Ok(Ok(Response::SubmissionFinished {
        submission,
        counts: job.counts,
        gone: job.gone,
    }))
}

/// Marks the job aborted, frees the dataset and forgets what the
/// submission listed. No catalogue entry is written: entries it rewrote
/// settle to their priors, and its shards are refused leases.
fn abort_submission(tx: &mut Tx<'_>, name: &str, submission: JobId) -> Outcome {
    let (mut dataset, mut job) = match open_submission(tx, name, submission)? {
        Ok(found) => found,
        Err(e) => return Ok(Err(e)),
    };
    job.state = JobState::Aborted;
    dataset.open_submission = None;
    listed::forget_aborted(&mut tx.batch, tx.db, dataset.id, submission);
    tx.put(CF_JOBS, &keys::id(submission), &job);
    tx.put(CF_DATASETS, name.as_bytes(), &dataset);
    Ok(Ok(Response::SubmissionAborted { submission }))
}

fn shard(tx: &Tx<'_>, id: ShardId) -> Result<Result<Shard, CommandError>, StateError> {
    Ok(tx
        .get::<Shard>(CF_SHARDS, &keys::id(id))?
        .ok_or(CommandError::UnknownShard { id }))
}

/// Leases each shard that can still be leased to `node`, at its next
/// epoch; the others are passed over.
fn grant_leases(tx: &mut Tx<'_>, node: NodeId, grants: &[LeaseGrant], deadline_ms: u64) -> Outcome {
    if let Err(e) = live_node(tx, node)? {
        return Ok(Err(e));
    }
    let mut jobs = Jobs::default();
    let (mut granted, mut passed) = (Vec::new(), Vec::new());
    for grant in grants {
        let Some(mut shard) = tx.get::<Shard>(CF_SHARDS, &keys::id(grant.shard))? else {
            passed.push(grant.shard);
            continue;
        };
        let Some(job) = jobs.get(tx, shard.job)? else {
            passed.push(grant.shard);
            continue;
        };
        // Done in an earlier attempt: to be read again.
        let done = shard.state == ShardState::Done && shard.attempt == job.attempt;
        if done
            || shard.epoch != grant.expected_epoch
            || job.state == JobState::Aborted
            || granted.iter().any(|&(id, _)| id == shard.id)
        {
            passed.push(grant.shard);
            continue;
        }
        shard.attempt = job.attempt;
        shard.epoch = shard.epoch.next();
        shard.holder = Some(node);
        shard.state = ShardState::Leased;
        shard.deadline_ms = deadline_ms;
        tx.put(CF_SHARDS, &keys::id(shard.id), &shard);
        let leased = tx.cf(CF_LEASED);
        tx.batch.put_cf(leased, keys::id(shard.id), []);
        granted.push((shard.id, shard.epoch));
    }
    Ok(Ok(Response::LeasesGranted {
        node,
        deadline_ms,
        granted,
        passed,
    }))
}

/// Completes each shard `node` still holds at the epoch it names; a
/// stale one is refused on its own (another holder has it now). A shard
/// `node` already completed at that epoch, in its job's current attempt,
/// is answered completed again and not counted again: the client sends a
/// completion again when its answer was lost. Reads see the DB, not this
/// batch: a shard named twice is refused the second time, and each job's
/// count is written once.
fn complete_shards(tx: &mut Tx<'_>, node: NodeId, done: &[ShardDone]) -> Outcome {
    let (mut completed, mut refused) = (Vec::new(), Vec::new());
    let mut per_job: HashMap<JobId, u64> = HashMap::new();
    let mut jobs = Jobs::default();
    for d in done {
        if completed.contains(&d.shard) {
            refused.push((d.shard, CommandError::ShardDone { shard: d.shard }));
            continue;
        }
        let mut shard = match fenced(tx, d.shard, node, d.epoch)? {
            Ok(shard) => shard,
            Err(CommandError::ShardDone { .. })
                if completed_by(tx, &mut jobs, d.shard, node, d.epoch)? =>
            {
                completed.push(d.shard);
                continue;
            }
            Err(e) => {
                refused.push((d.shard, e));
                continue;
            }
        };
        // Its records went to the owners of an attempt that is over.
        if let Some(job) = jobs.get(tx, shard.job)?
            && job.attempt != shard.attempt
        {
            refused.push((
                d.shard,
                CommandError::EarlierAttempt {
                    job: job.id,
                    presented: shard.attempt,
                    current: job.attempt,
                },
            ));
            continue;
        }
        shard.checkpoint = shard.end;
        shard.state = ShardState::Done;
        let leased = tx.cf(CF_LEASED);
        tx.batch.delete_cf(leased, keys::id(shard.id));
        complete_file(tx, &shard)?;
        tx.put(CF_SHARDS, &keys::id(shard.id), &shard);
        *per_job.entry(shard.job).or_default() += 1;
        completed.push(shard.id);
    }
    for (id, count) in per_job {
        if let Some(mut job) = tx.get::<Job>(CF_JOBS, &keys::id(id))? {
            job.shards_done += count;
            tx.put(CF_JOBS, &keys::id(id), &job);
        }
    }
    Ok(Ok(Response::ShardsCompleted { completed, refused }))
}

/// Whether `node` completed `id` at `epoch` in its job's current attempt.
fn completed_by(
    tx: &Tx<'_>,
    jobs: &mut Jobs,
    id: ShardId,
    node: NodeId,
    epoch: Epoch,
) -> Result<bool, StateError> {
    let Ok(shard) = shard(tx, id)? else {
        return Ok(false);
    };
    let same =
        shard.state == ShardState::Done && shard.epoch == epoch && shard.holder == Some(node);
    Ok(same
        && jobs
            .get(tx, shard.job)?
            .is_some_and(|job| job.attempt == shard.attempt))
}

/// An owner's staged counts, under the dataset's current partition map.
/// The job commits when every shard is done, every owner of the current
/// map (every live node, before any map) has staged under it, and the sum
/// of their counts reconciles. A recovering job (`RecoverJob`) takes its
/// base owners' parts under its base map, and its recovery owner's part
/// under the current one.
///
/// An owner declared lost after staging stays in the job (its staged
/// files survive it; it publishes them when it is back): asking again
/// with the same counts (its answer was lost), it is told it staged.
/// Once committed, an owner whose staging the commit counted learns so
/// whenever it asks again, even if it has been declared lost since: it
/// holds its part's files, and must publish them.
/// Anyone else staging then (under an earlier map) is refused: its part
/// is not in the commit.
fn stage_job(
    tx: &mut Tx<'_>,
    id: JobId,
    node: NodeId,
    counts: StagedCounts,
    map_epoch: Epoch,
) -> Outcome {
    let Some(mut job) = tx.get::<Job>(CF_JOBS, &keys::id(id))? else {
        return Ok(Err(CommandError::JobNotSubmitted { job: id }));
    };
    match job.state {
        JobState::Committed => {
            let committed_under = job.staged.first().map_or(Epoch(0), |&(_, _, epoch)| epoch);
            return Ok(if job.staged_by(node, map_epoch).is_some() {
                Ok(Response::JobStaged {
                    job: id,
                    committed: true,
                    committing: false,
                })
            } else {
                Err(CommandError::StaleMapEpoch {
                    dataset: dataset_name(tx, job.dataset_id)?,
                    presented: map_epoch,
                    current: committed_under,
                })
            });
        }
        JobState::Submitting | JobState::Aborted => {
            return Ok(Err(CommandError::JobNotSubmitted { job: id }));
        }
        JobState::Submitted => {}
    }
    let map = tx.get::<PartitionMap>(CF_PARTITIONS, &keys::dataset_prefix(job.dataset_id))?;
    let current = map.as_ref().map_or(Epoch(0), |m| m.epoch);
    // Whether a part staged under `map_epoch` counts now: under the
    // current map, or a base owner's under a recovering job's base map.
    let counting = match &job.recovery {
        None => map_epoch == current,
        Some(recovery) if map_epoch == recovery.base_epoch => recovery.base_owners.contains(&node),
        Some(recovery) => map_epoch == current && node == recovery.owner,
    };
    if let Err(e) = live_node(tx, node)? {
        // A lost owner whose stage the job holds, asking again (its answer
        // was lost): its part stays in the job, which commits without it.
        let repeated = counting && job.staged_by(node, map_epoch) == Some(counts);
        return Ok(if repeated {
            Ok(Response::JobStaged {
                job: id,
                committed: false,
                committing: false,
            })
        } else {
            Err(e)
        });
    }
    if !counting {
        return Ok(Err(CommandError::StaleMapEpoch {
            dataset: dataset_name(tx, job.dataset_id)?,
            presented: map_epoch,
            current,
        }));
    }
    match &mut job.recovery {
        Some(recovery) if map_epoch == recovery.epoch => recovery.staged = Some(counts),
        _ => match job.staged.iter_mut().find(|(owner, _, _)| *owner == node) {
            Some(entry) => *entry = (node, counts, map_epoch),
            None => job.staged.push((node, counts, map_epoch)),
        },
    }
    let owners = records::stagers(map.as_ref(), || live_nodes(tx))?;
    let (unstaged, total) = job.staging(&owners, current);
    let committed = job.shards_done == job.shards_total && unstaged.is_empty();
    if committed {
        if !total.reconciles() {
            return Ok(Err(CommandError::CountsDoNotReconcile {
                job: id,
                counts: total,
            }));
        }
        job.state = JobState::Committed;
    }
    tx.put(CF_JOBS, &keys::id(id), &job);
    Ok(Ok(Response::JobStaged {
        job: id,
        committed,
        committing: committed,
    }))
}

/// Recovers `id` (see `Command::RecoverJob`), if it is still at
/// `attempt`: every shard is done, `lost` owns a range of the current map
/// and has not staged, and `map`, the next one, gives that range to
/// `owner`, a live owner, and leaves every other range as it was.
fn recover_job(
    tx: &mut Tx<'_>,
    id: JobId,
    attempt: u32,
    lost: NodeId,
    owner: NodeId,
    map: PartitionMap,
) -> Outcome {
    let mut job = match attempt_to_follow(tx, id, attempt)? {
        Ok(job) => job,
        Err(answer) => return Ok(answer),
    };
    let refused = |reason: String| Ok(Err(CommandError::CannotRecover { job: id, reason }));
    if job.recovery.is_some() || job.shards_done != job.shards_total {
        return refused("it recovers already, or shards are not done".into());
    }
    let Some(base) =
        tx.get::<PartitionMap>(CF_PARTITIONS, &keys::dataset_prefix(job.dataset_id))?
    else {
        return refused("its dataset has no partition map".into());
    };
    let Some(range) = base.ranges.iter().find(|r| r.node == lost).copied() else {
        return refused(format!("node {lost} owns no partitions"));
    };
    let expected = base.without(lost, |n| n == owner, map.epoch);
    if job.staged_by(lost, base.epoch).is_some()
        || expected.is_none_or(|(heir, joined)| heir != owner || joined != map)
    {
        return refused(format!(
            "node {lost} staged already, or map {} does not give its range to node {owner}",
            map.epoch
        ));
    }
    if let Err(e) = live_node(tx, owner)? {
        return Ok(Err(e));
    }
    let name = dataset_name(tx, job.dataset_id)?;
    let epoch = map.epoch;
    if let Err(e) = assign_partitions(tx, &name, map)? {
        return Ok(Err(e));
    }
    job.recovery = Some(Recovery {
        base_attempt: job.attempt,
        base_epoch: base.epoch,
        base_owners: base.nodes().into_iter().filter(|&n| n != lost).collect(),
        lost,
        start: range.start,
        end: range.end,
        owner,
        epoch,
        staged: None,
    });
    job.attempt += 1;
    job.shards_done = 0;
    job.restarted = Some(RestartCause::PartitionsLost { node: lost });
    tx.put(CF_JOBS, &keys::id(id), &job);
    Ok(Ok(Response::JobRestarted {
        job: id,
        attempt: job.attempt,
        epoch,
    }))
}

/// Runs `id` again from its first shard under `map`, if it is still at
/// `attempt` (see `Command::RestartJob`).
fn restart_job(
    tx: &mut Tx<'_>,
    id: JobId,
    attempt: u32,
    map: PartitionMap,
    cause: RestartCause,
) -> Outcome {
    let mut job = match attempt_to_follow(tx, id, attempt)? {
        Ok(job) => job,
        Err(answer) => return Ok(answer),
    };
    let name = dataset_name(tx, job.dataset_id)?;
    let epoch = map.epoch;
    if let Err(e) = assign_partitions(tx, &name, map)? {
        return Ok(Err(e));
    }
    job.attempt += 1;
    job.shards_done = 0;
    job.staged.clear();
    job.recovery = None;
    job.restarted = Some(cause);
    tx.put(CF_JOBS, &keys::id(id), &job);
    Ok(Ok(Response::JobRestarted {
        job: id,
        attempt: job.attempt,
        epoch,
    }))
}

/// `id`, if it still runs `attempt` and may run one more; else the answer
/// to a restart or recovery of it: unknown or over, restarted already (by
/// an earlier command: the answer names the running attempt), or out of
/// attempts.
fn attempt_to_follow(
    tx: &Tx<'_>,
    id: JobId,
    attempt: u32,
) -> Result<Result<Job, Result<Response, CommandError>>, StateError> {
    let Some(job) = tx.get::<Job>(CF_JOBS, &keys::id(id))? else {
        return Ok(Err(Err(CommandError::JobNotSubmitted { job: id })));
    };
    if job.state != JobState::Submitted {
        return Ok(Err(Err(CommandError::JobNotSubmitted { job: id })));
    }
    if job.attempt != attempt {
        return Ok(Err(Ok(Response::JobRestarted {
            job: id,
            attempt: job.attempt,
            epoch: map_epoch(tx, job.dataset_id)?,
        })));
    }
    if job.attempt + 1 >= MAX_JOB_ATTEMPTS {
        return Ok(Err(Err(CommandError::TooManyAttempts {
            job: id,
            attempts: job.attempt + 1,
        })));
    }
    Ok(Ok(job))
}

/// The epoch of the dataset's partition map (0 before it has one).
fn map_epoch(tx: &Tx<'_>, dataset: DatasetId) -> Result<Epoch, StateError> {
    Ok(tx
        .get::<PartitionMap>(CF_PARTITIONS, &keys::dataset_prefix(dataset))?
        .map_or(Epoch(0), |m| m.epoch))
}

/// Jobs read once per command: a command touches few.
#[derive(Default)]
struct Jobs(HashMap<JobId, Option<Job>>);

impl Jobs {
    fn get(&mut self, tx: &Tx<'_>, id: JobId) -> Result<Option<&Job>, StateError> {
        let job = match self.0.entry(id) {
            std::collections::hash_map::Entry::Occupied(known) => known.into_mut(),
            std::collections::hash_map::Entry::Vacant(new) => {
                new.insert(tx.get::<Job>(CF_JOBS, &keys::id(id))?)
            }
        };
        Ok(job.as_ref())
    }
}

/// A dataset's name from its id (a short scan: one record per dataset).
fn dataset_name(tx: &Tx<'_>, id: DatasetId) -> Result<String, StateError> {
    for item in tx
        .db
        .iterator_cf(tx.cf(CF_DATASETS), rocksdb::IteratorMode::Start)
    {
        let dataset = Dataset::decode(&item?.1)?;
        if dataset.id == id {
            return Ok(dataset.spec.name);
        }
    }
    Ok(format!("#{id}"))
}

/// Every registered node not declared lost (a short list: one per node).
fn live_nodes(tx: &Tx<'_>) -> Result<Vec<Node>, StateError> {
    let mut nodes = Vec::new();
    for item in tx
        .db
        .iterator_cf(tx.cf(CF_NODES), rocksdb::IteratorMode::Start)
    {
        let node = Node::decode(&item?.1)?;
        if !node.lost {
            nodes.push(node);
        }
    }
    Ok(nodes)
}

/// The shard `node` reports on under `epoch`, if it still holds it there.
fn fenced(
    tx: &Tx<'_>,
    id: ShardId,
    node: NodeId,
    epoch: Epoch,
) -> Result<Result<Shard, CommandError>, StateError> {
    let shard = match shard(tx, id)? {
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
    Ok(Ok(shard))
}

/// A lease holder's checkpoint: the shard is read up to `offset`.
fn report_progress(
    tx: &mut Tx<'_>,
    id: ShardId,
    node: NodeId,
    epoch: Epoch,
    offset: u64,
) -> Outcome {
    let mut shard = match fenced(tx, id, node, epoch)? {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    shard.checkpoint = shard.checkpoint.max(offset.min(shard.end));
    tx.put(CF_SHARDS, &keys::id(id), &shard);
    Ok(Ok(Response::ProgressRecorded {
        shard: id,
        checkpoint: shard.checkpoint,
    }))
}

/// Marks the file's version that the shard ingested as ingested (the
/// entry's, or the prior one a newer submission replaced).
fn complete_file(tx: &mut Tx<'_>, shard: &Shard) -> Result<(), StateError> {
    let key = keys::file(shard.dataset_id, &shard.path);
    if let Some(mut entry) = tx.get::<CatalogEntry>(CF_FILES, &key)? {
        let status = match &mut entry.prior {
            _ if entry.shard == shard.id => Some(&mut entry.status),
            Some(v) if v.shard == shard.id => Some(&mut v.status),
            _ => None,
        };
        if let Some(status) = status {
            *status = FileStatus::Ingested;
            tx.put(CF_FILES, &key, &entry);
        }
    }
    Ok(())
}

/// A dataset's next partition map: one epoch past the current one, its
/// ranges covering the dataset's partitions, every owner live.
fn assign_partitions(tx: &mut Tx<'_>, name: &str, map: PartitionMap) -> Outcome {
    let dataset = match dataset(tx, name)? {
        Ok(d) => d,
        Err(e) => return Ok(Err(e)),
    };
    let current = map_epoch(tx, dataset.id)?;
    if map.epoch != current.next() {
        return Ok(Err(CommandError::StaleMapEpoch {
            dataset: name.into(),
            presented: map.epoch,
            current,
        }));
    }
    if map.partitions != dataset.spec.partitions {
        return Ok(Err(CommandError::BadPartitionMap {
            reason: format!(
                "{} partitions, but dataset {name:?} has {}",
                map.partitions, dataset.spec.partitions
            ),
        }));
    }
    if let Err(reason) = map.check() {
        return Ok(Err(CommandError::BadPartitionMap { reason }));
    }
    for owner in map.nodes() {
        if let Err(e) = live_node(tx, owner)? {
            return Ok(Err(e));
        }
    }
    let epoch = map.epoch;
    tx.put(CF_PARTITIONS, &keys::dataset_prefix(dataset.id), &map);
    Ok(Ok(Response::PartitionsAssigned { epoch }))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;
    use proto_schema::PartitionMap;
    use proto_schema::command::{
        Bounded, Command, CommandError, DiffCounts, EntriesDigest, FileEntry, InventoryRange,
        LeaseGrant, MAX_CHUNK_FILES, MAX_COMMAND_BYTES, MAX_LEASES_PER_COMMAND, Response,
        RestartCause, ShardDone, StagedCounts,
    };

    use proto_schema::ids::{DatasetId, Epoch, JobId, NodeId, ShardId};

    use super::super::StateError;
    use super::super::records::{CatalogEntry, FileStatus, Job, JobState};
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

    /// A range of `files` (in path order) sent as its digest.
    fn digest_of(files: &[FileEntry]) -> InventoryRange {
        claim(&files[0].path, &files[files.len() - 1].path, files)
    }

    /// `files` cut into ranges after each path whose bytes sum to 0 modulo
    /// `every`, and at 6 files: as `by_digest` cuts, by content.
    fn cut_by_content(files: &[FileEntry], every: u32) -> Vec<Vec<FileEntry>> {
        let mut cut = vec![Vec::new()];
        for file in files {
            let range = cut.last_mut().unwrap();
            range.push(file.clone());
            let sum: u32 = file.path.bytes().map(u32::from).sum();
            if sum.is_multiple_of(every) || range.len() == 6 {
                cut.push(Vec::new());
            }
        }
        cut.retain(|range| !range.is_empty());
        cut
    }

    /// A digest of `files` claimed for the range `first` to `last`.
    fn claim(first: &str, last: &str, files: &[FileEntry]) -> InventoryRange {
        let mut digest = EntriesDigest::new();
        for f in files {
            digest.add(f.path.as_bytes(), f.size, f.mtime_ns, f.checksum.as_deref());
        }
        InventoryRange::Digest {
            first: first.into(),
            last: last.into(),
            files: files.len() as u32,
            digest: digest.finish(),
        }
    }

    fn ranges(submission: JobId, ranges: Vec<InventoryRange>) -> Command {
        Command::SubmitRanges {
            dataset: "ds".into(),
            submission,
            ranges,
        }
    }

    async fn begin(sm: &mut Applier) -> JobId {
        let begin = Command::BeginSubmission {
            dataset: "ds".into(),
            now_ms: 1,
        };
        match sm.apply(begin).await {
            Response::SubmissionBegun { submission } => submission,
            other => panic!("begin refused: {other:?}"),
        }
    }

    /// Begins a submission of `files` (in path order) and sends every range
    /// (cut by content) as its digest, then the ranges not accepted with
    /// their files, as `quern submit` does; leaves it open.
    async fn send_by_digest(sm: &mut Applier, files: &[FileEntry], cut_every: u32) -> JobId {
        let submission = begin(sm).await;
        let cut = cut_by_content(files, cut_every);
        if cut.is_empty() {
            return submission;
        }
        let digests = cut.iter().map(|range| digest_of(range)).collect();
        let Response::RangesApplied { mismatched, .. } =
            sm.apply(ranges(submission, digests)).await
        else {
            panic!("digests refused")
        };
        let mut resend = Vec::new();
        let mut first_file = 0;
        for (index, range) in cut.iter().enumerate() {
            if mismatched.contains(&(index as u32)) {
                resend.push(InventoryRange::Files {
                    first_file,
                    files: range.clone(),
                });
            }
            first_file += range.len() as u64;
        }
        if !resend.is_empty() {
            let answer = sm.apply(ranges(submission, resend)).await;
            assert!(
                matches!(&answer, Response::RangesApplied { mismatched, .. } if mismatched.is_empty()),
                "{answer:?}"
            );
        }
        submission
    }

    /// A catalogue entry as two equal histories leave it, whatever shard
    /// ids their commands reserved: its versions, and its shard's job,
    /// path, number and extent.
    fn comparable(sm: &Applier, path: &str) -> Option<String> {
        let dataset = sm.state().dataset("ds").unwrap().unwrap();
        let entry: CatalogEntry = sm.state().catalog_entry(dataset.id, path).unwrap()?;
        let shard = sm.state().shard(entry.shard).unwrap().unwrap();
        let prior = entry
            .prior
            .map(|p| (p.size, p.mtime_ns, p.checksum, p.status, p.since));
        Some(format!(
            "{:?} {:?} {:?} {:?} {:?} {prior:?} shard {:?} {} {} {}",
            entry.size,
            entry.mtime_ns,
            entry.checksum,
            entry.status,
            entry.since,
            shard.job,
            shard.path,
            shard.file,
            shard.end
        ))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_digest_is_accepted_only_when_the_catalogue_agrees_and_its_range_is_sent_again() {
        let mut sm = Applier::new();
        setup_dataset(&mut sm, "ds", &[1]).await;
        let first: Vec<FileEntry> = (1..=6)
            .map(|i| file(&format!("a/{i}"), i, 1, None))
            .collect();
        sm.submit("ds", first.clone()).await;
        let mut second = first.clone();
        second[2].size += 1;
        second[5].mtime_ns += 1;
        let s2 = begin(&mut sm).await;

        // a/1-a/2 agree; a/3 changed; a/5-a/6 claimed as a/5 alone, with
        // a/6 (changed) listed between: neither is accepted.
        let cmd = ranges(
            s2,
            vec![
                digest_of(&second[0..2]),
                digest_of(&second[2..4]),
                claim("a/5", "a/6", &second[4..5]),
            ],
        );
        assert_eq!(
            sm.apply(cmd).await,
            Response::RangesApplied {
                counts: DiffCounts {
                    unchanged: 2,
                    ..DiffCounts::default()
                },
                shards_created: 0,
                mismatched: vec![1, 2],
            }
        );

        // Refused, changing nothing: a digest or files over what a range
        // accepted, ranges out of order, an empty digest.
        let refusals = [
            (
                vec![digest_of(&second[1..2])],
                CommandError::ChunkOverlaps {
                    first: "a/2".into(),
                    last: "a/2".into(),
                },
            ),
            (
                vec![InventoryRange::Files {
                    first_file: 1,
                    files: second[1..3].to_vec(),
                }],
                CommandError::DuplicatePath { path: "a/2".into() },
            ),
            (
                vec![digest_of(&second[4..6]), digest_of(&second[2..4])],
                CommandError::ChunkOverlaps {
                    first: "a/3".into(),
                    last: "a/4".into(),
                },
            ),
        ];
        for (sent, refusal) in refusals {
            assert_eq!(sm.apply(ranges(s2, sent)).await, Response::Error(refusal));
        }
        let empty = claim("a/3", "a/4", &[]);
        assert!(matches!(
            sm.apply(ranges(s2, vec![empty])).await,
            Response::Error(CommandError::Malformed { .. })
        ));
        assert_eq!(sm.state().job(s2).unwrap().unwrap().counts.unchanged, 2);

        // The two ranges again, with their files, in one command: each
        // changed file gets a shard of its own, numbered from its range.
        let resend = ranges(
            s2,
            vec![
                InventoryRange::Files {
                    first_file: 2,
                    files: second[2..4].to_vec(),
                },
                InventoryRange::Files {
                    first_file: 4,
                    files: second[4..6].to_vec(),
                },
            ],
        );
        assert_eq!(
            sm.apply(resend).await,
            Response::RangesApplied {
                counts: DiffCounts {
                    changed: 2,
                    unchanged: 2,
                    new: 0
                },
                shards_created: 2,
                mismatched: vec![],
            }
        );
        sm.finish("ds", s2).await;
        let job = sm.state().job(s2).unwrap().unwrap();
        assert_eq!(
            (job.counts.changed, job.counts.unchanged, job.gone),
            (2, 4, 0)
        );
        let dataset = sm.state().dataset("ds").unwrap().unwrap();
        let shards: Vec<_> = ["a/3", "a/6"]
            .iter()
            .map(|p| {
                sm.state()
                    .catalog_entry(dataset.id, p)
                    .unwrap()
                    .unwrap()
                    .shard
            })
            .collect();
        assert_ne!(shards[0], shards[1]);
        let numbers: Vec<u64> = shards
            .iter()
            .map(|id| sm.state().shard(*id).unwrap().unwrap().file)
            .collect();
        assert_eq!(numbers, [2, 5]);

        // What the digests listed counts as listed: all unchanged next time.
        let s3 = sm.submit("ds", second).await;
        let job = sm.state().job(s3).unwrap().unwrap();
        assert_eq!((job.counts.unchanged, job.gone), (6, 0));
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
        sm.lease_and_complete(NodeId(1), &[ShardId(1), ShardId(2), ShardId(3), ShardId(4)])
            .await;
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
        assert_eq!((dataset.live_files, dataset.last_finished), (4, s2));
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
        // Only the last finished submission's: older listings are gone.
        assert!(matches!(
            sm.state().gone_files(&job2, None, 10),
            Err(StateError::GoneListingExpired { job }) if job == s2
        ));

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
    async fn an_aborted_submission_leaves_the_catalogue_as_the_last_finished_one() {
        let mut sm = Applier::new();
        setup_dataset(&mut sm, "ds", &[1]).await;
        let first = vec![
            file("a", 10, 1, None),
            file("b", 20, 2, Some(1)),
            file("c", 30, 3, None),
            file("d", 40, 4, None),
        ];
        let s1 = sm.submit("ds", first.clone()).await;
        sm.lease_and_complete(NodeId(1), &[ShardId(1), ShardId(2)])
            .await;
        let dataset = sm.state().dataset("ds").unwrap().unwrap();
        let entry = |sm: &Applier, path: &str| {
            sm.state()
                .catalog_entry(dataset.id, path)
                .unwrap()
                .expect("catalogued")
        };
        let before: Vec<_> = ["a", "b", "c", "d"].iter().map(|p| entry(&sm, p)).collect();

        // The submitter dies after sending: a unchanged, b and c changed,
        // x new, d not listed.
        let aborted = sm
            .send_and_abort(
                "ds",
                vec![
                    file("a", 10, 1, None),
                    file("b", 21, 2, Some(1)),
                    file("c", 30, 9, None),
                    file("x", 5, 5, None),
                ],
            )
            .await;
        let job = sm.state().job(aborted).unwrap().unwrap();
        assert_eq!(job.state, JobState::Aborted);
        let after: Vec<_> = ["a", "b", "c", "d"].iter().map(|p| entry(&sm, p)).collect();
        assert_eq!(after, before, "the catalogue counts as s1 left it");
        assert_eq!(entry(&sm, "b").status, FileStatus::Ingested);
        assert!(sm.state().catalog_entry(dataset.id, "x").unwrap().is_none());
        let dataset_now = sm.state().dataset("ds").unwrap().unwrap();
        assert_eq!(
            (dataset_now.open_submission, dataset_now.last_finished),
            (None, s1)
        );
        // Its shards are never leased.
        let aborted_shard = ShardId(5);
        assert_eq!(
            sm.state().shard(aborted_shard).unwrap().unwrap().job,
            aborted
        );
        let grant = Command::GrantLeases {
            node: NodeId(1),
            shards: vec![LeaseGrant {
                shard: aborted_shard,
                expected_epoch: Epoch(0),
            }],
            deadline_ms: 9,
        };
        assert_eq!(
            sm.apply(grant).await,
            Response::LeasesGranted {
                node: NodeId(1),
                deadline_ms: 9,
                granted: vec![],
                passed: vec![aborted_shard],
            }
        );
        // Aborting twice, or a finished submission, is refused.
        let again = Command::AbortSubmission {
            dataset: "ds".into(),
            submission: aborted,
        };
        assert!(matches!(
            sm.apply(again).await,
            Response::Error(CommandError::UnknownSubmission { .. })
        ));

        // The next submission diffs against s1: a and b unchanged (b back
        // to s1's version), c changed, d gone, e new; x was never listed.
        let s3 = sm
            .submit(
                "ds",
                vec![
                    file("a", 10, 1, None),
                    file("b", 20, 2, Some(1)),
                    file("c", 30, 9, None),
                    file("e", 50, 5, None),
                ],
            )
            .await;
        let job3 = sm.state().job(s3).unwrap().unwrap();
        assert_eq!(
            job3.counts,
            DiffCounts {
                new: 1,
                changed: 1,
                unchanged: 2
            }
        );
        assert_eq!((job3.gone, job3.shards_total), (1, 2));
        assert_eq!(
            sm.state().gone_files(&job3, None, 10).unwrap(),
            vec!["d".to_string()]
        );
        assert_eq!(entry(&sm, "b").status, FileStatus::Ingested);
        assert_eq!(entry(&sm, "c").status, FileStatus::Pending);
        assert_eq!(sm.state().dataset("ds").unwrap().unwrap().live_files, 4);
    }

    /// An owner whose staging the commit counted learns of the commit
    /// when it stages again (its answer was lost), even once declared
    /// lost: it must publish its part. A node staging under another map
    /// after the commit is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_committing_owner_asking_again_learns_of_the_commit_even_once_lost() {
        let mut sm = Applier::new();
        setup_dataset(&mut sm, "ds", &[1, 2]).await;
        let job = sm.submit("ds", vec![file("a", 10, 1, None)]).await;
        sm.lease_and_complete(NodeId(1), &[ShardId(1)]).await;
        let map = PartitionMap::split(64, &[NodeId(1), NodeId(2)], Epoch(1));
        let assign = Command::AssignPartitions {
            dataset: "ds".into(),
            map,
        };
        assert_eq!(
            sm.apply(assign).await,
            Response::PartitionsAssigned { epoch: Epoch(1) }
        );
        let stage = |node: u64, epoch: u64| Command::StageJob {
            job,
            node: NodeId(node),
            counts: StagedCounts {
                read: 5,
                unique: 4,
                duplicates: 1,
                rejected: 0,
            },
            map_epoch: Epoch(epoch),
        };
        let staged = |committed, committing| Response::JobStaged {
            job,
            committed,
            committing,
        };
        assert_eq!(sm.apply(stage(1, 1)).await, staged(false, false));
        assert_eq!(sm.apply(stage(2, 1)).await, staged(true, true));
        let lost = Command::DeclareNodeLost {
            node: NodeId(1),
            incarnation: 1,
        };
        assert!(matches!(
            sm.apply(lost).await,
            Response::NodeDeclaredLost { .. }
        ));
        // Repeated after the commit: committed, but not by this report.
        assert_eq!(sm.apply(stage(1, 1)).await, staged(true, false));
        assert_eq!(
            sm.apply(stage(2, 0)).await,
            Response::Error(CommandError::StaleMapEpoch {
                dataset: "ds".into(),
                presented: Epoch(0),
                current: Epoch(1)
            })
        );
        let committed = sm.state().job(job).unwrap().unwrap();
        assert_eq!(committed.state, JobState::Committed);
        assert_eq!(committed.staged.len(), 2, "the commit's counts are kept");
    }

    /// A node whose completion's answer was lost sends it again: the
    /// repeat is answered as completed and counted once; the same shard
    /// named by another node, at another epoch or after the job restarted
    /// is still refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_completion_sent_again_by_its_holder_is_completed_once() {
        let mut sm = Applier::new();
        setup_dataset(&mut sm, "ds", &[1, 2]).await;
        let job = sm
            .submit("ds", vec![file("a", 10, 1, None), file("b", 20, 2, None)])
            .await;
        let shard = ShardId(1);
        sm.lease_and_complete(NodeId(1), &[shard]).await;
        let complete = |node: u64, epoch: u64| Command::CompleteShards {
            node: NodeId(node),
            shards: vec![ShardDone {
                shard,
                epoch: Epoch(epoch),
            }],
        };
        assert_eq!(
            sm.apply(complete(1, 1)).await,
            Response::ShardsCompleted {
                completed: vec![shard],
                refused: vec![]
            }
        );
        assert_eq!(sm.state().job(job).unwrap().unwrap().shards_done, 1);
        let refused = Response::ShardsCompleted {
            completed: vec![],
            refused: vec![(shard, CommandError::ShardDone { shard })],
        };
        assert_eq!(sm.apply(complete(2, 1)).await, refused);
        assert_eq!(sm.apply(complete(1, 2)).await, refused);
        let restart = Command::RestartJob {
            job,
            attempt: 0,
            map: PartitionMap::split(64, &[NodeId(1), NodeId(2)], Epoch(1)),
            cause: RestartCause::OwnerStartedAgain { node: NodeId(2) },
        };
        assert!(matches!(
            sm.apply(restart).await,
            Response::JobRestarted { attempt: 1, .. }
        ));
        assert_eq!(sm.apply(complete(1, 1)).await, refused);
        assert_eq!(sm.state().job(job).unwrap().unwrap().shards_done, 0);
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
        let map = |nodes: &[u64], epoch: Epoch| {
            let nodes: Vec<NodeId> = nodes.iter().copied().map(NodeId).collect();
            PartitionMap::split(64, &nodes, epoch)
        };
        let assign = |map| Command::AssignPartitions {
            dataset: "ds".into(),
            map,
        };
        assert_eq!(
            sm.apply(assign(map(&[1, 7], Epoch(1)))).await,
            Response::Error(CommandError::UnknownNode { id: NodeId(7) })
        );
        assert_eq!(
            sm.apply(assign(map(&[1], Epoch(2)))).await,
            Response::Error(CommandError::StaleMapEpoch {
                dataset: "ds".into(),
                presented: Epoch(2),
                current: Epoch(0)
            })
        );
        let mut gap = map(&[1], Epoch(1));
        gap.ranges[0].start = proto_schema::PartitionId(1);
        assert!(matches!(
            sm.apply(assign(gap)).await,
            Response::Error(CommandError::BadPartitionMap { .. })
        ));
        let mut short = map(&[1], Epoch(1));
        short.partitions = 63;
        short.ranges[0].end = proto_schema::PartitionId(63);
        assert!(matches!(
            sm.apply(assign(short)).await,
            Response::Error(CommandError::BadPartitionMap { .. })
        ));
        assert_eq!(
            sm.state().partition_map(DatasetId(1)).unwrap(),
            None,
            "a refused command wrote nothing"
        );
        let grant = Command::GrantLeases {
            node: NodeId(7),
            shards: vec![LeaseGrant {
                shard: ShardId(5),
                expected_epoch: Epoch(0),
            }],
            deadline_ms: 0,
        };
        assert_eq!(
            sm.apply(grant).await,
            Response::Error(CommandError::UnknownNode { id: NodeId(7) })
        );
        let too_many = Command::GrantLeases {
            node: NodeId(1),
            shards: vec![
                LeaseGrant {
                    shard: ShardId(5),
                    expected_epoch: Epoch(0),
                };
                MAX_LEASES_PER_COMMAND + 1
            ],
            deadline_ms: 0,
        };
        assert_eq!(
            sm.apply(too_many).await,
            Response::Error(CommandError::OutOfBounds {
                what: Bounded::Shards,
                size: MAX_LEASES_PER_COMMAND as u64 + 1,
                max: MAX_LEASES_PER_COMMAND as u64,
            })
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
            first_file: 0,
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
        // Out of bounds, as if the leader had not checked: refused again
        // here, never written.
        let long_path = chunk(vec![file(&"p".repeat(70 << 10), 1, 1, None)]);
        assert!(matches!(
            sm.apply(long_path).await,
            Response::Error(CommandError::OutOfBounds {
                what: Bounded::Path,
                ..
            })
        ));
        let oversized = vec![0; MAX_COMMAND_BYTES + 1];
        assert!(matches!(
            sm.apply_bytes(oversized).await,
            Response::Error(CommandError::OutOfBounds {
                what: Bounded::EncodedCommand,
                ..
            })
        ));
        assert_eq!(digest(&sm), before, "nothing out of bounds is applied");

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
            submission: submission.next(),
        };
        assert_eq!(
            sm.apply(wrong).await,
            Response::Error(CommandError::UnknownSubmission {
                dataset: "ds".into(),
                submission: submission.next()
            })
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_cover_disjoint_path_ranges_in_any_order() {
        let mut sm = Applier::new();
        setup_dataset(&mut sm, "ds", &[1]).await;
        let unsorted = |paths: &[&str]| -> Vec<FileEntry> {
            paths.iter().map(|p| file(p, 1, 1, None)).collect()
        };
        // Each chunk in any order inside, the chunks in any order.
        let s1 = sm
            .send_chunks(
                "ds",
                [
                    unsorted(&["x", "y"]),
                    unsorted(&["c", "a"]),
                    unsorted(&["d", "e"]),
                ],
            )
            .await;
        let before = sm.state().digest().unwrap();
        let overlapping = Command::SubmitChunk {
            dataset: "ds".into(),
            submission: s1,
            first_file: 0,
            files: unsorted(&["f", "b"]),
        };
        assert_eq!(
            sm.apply(overlapping).await,
            Response::Error(CommandError::ChunkOverlaps {
                first: "b".into(),
                last: "f".into()
            }),
            "b..f overlaps a..c and d..e"
        );
        let inside = Command::SubmitChunk {
            dataset: "ds".into(),
            submission: s1,
            first_file: 0,
            files: unsorted(&["b"]),
        };
        assert_eq!(
            sm.apply(inside).await,
            Response::Error(CommandError::ChunkOverlaps {
                first: "b".into(),
                last: "b".into()
            }),
            "b lies between a and c"
        );
        assert_eq!(
            sm.state().digest().unwrap(),
            before,
            "refusals write nothing"
        );
        sm.finish("ds", s1).await;

        // The same files in other chunks, other order: all unchanged.
        let again = unsorted(&["a", "c", "d", "e", "x", "y"]);
        let s2 = sm
            .send_chunks(
                "ds",
                [
                    again[4..].to_vec(),
                    again[..1].to_vec(),
                    again[1..4].to_vec(),
                ],
            )
            .await;
        sm.finish("ds", s2).await;
        let job = sm.state().job(s2).unwrap().unwrap();
        assert_eq!((job.counts.unchanged, job.counts.new, job.gone), (6, 0, 0));
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

    /// A file's size, mtime and checksum byte.
    type Attrs = (u64, i64, Option<u8>);

    /// `attrs` after `change`; `None` when the file is dropped.
    fn changed(&(size, mtime, sum): &Attrs, change: &Change) -> Option<Attrs> {
        Some(match change {
            Change::Keep => (size, mtime, sum),
            Change::Size => (size + 1, mtime, sum),
            Change::Mtime => (size, mtime + 1, sum),
            Change::Checksum => (size, mtime, Some(sum.map_or(0, |c| c.wrapping_add(1)))),
            Change::Drop => return None,
        })
    }

    fn attrs() -> impl Strategy<Value = Attrs> {
        (0u64..4, 0i64..4, proptest::option::of(0u8..4))
    }

    fn inventory(m: &BTreeMap<String, Attrs>) -> Vec<FileEntry> {
        m.iter().map(|(p, &(s, t, c))| file(p, s, t, c)).collect()
    }

    /// One submission in a dataset's history: how each file the last one
    /// listed changes (in path order, cycling), which paths are listed
    /// besides, the submissions that die before it, and how it is sent:
    /// chunks of `chunk_files`, rotated so they arrive out of order.
    #[derive(Debug, Clone)]
    struct Step {
        changes: Vec<Change>,
        added: BTreeMap<String, Attrs>,
        aborted: Vec<BTreeMap<String, Attrs>>,
        chunk_files: usize,
        rotation: prop::sample::Index,
    }

    /// Few paths, so files go, come back and are relisted by aborted
    /// submissions often.
    const PATHS: &str = "[a-c]/[a-d]{1,2}";

    fn step() -> impl Strategy<Value = Step> {
        (
            proptest::collection::vec(change(), 1..30),
            proptest::collection::btree_map(PATHS, attrs(), 0..12),
            proptest::collection::vec(proptest::collection::btree_map(PATHS, attrs(), 0..30), 0..3),
            1usize..6,
            any::<prop::sample::Index>(),
        )
            .prop_map(|(changes, added, aborted, chunk_files, rotation)| Step {
                changes,
                added,
                aborted,
                chunk_files,
                rotation,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Re-submitting a changed inventory marks exactly the new and
        /// changed files pending, skips the rest, and counts the gone ones,
        /// whatever aborted submissions came in between.
        #[test]
        fn resubmission_diff_is_exact(
            first in proptest::collection::btree_map("[a-f]{1,3}/[a-z]{1,6}", (0u64..1000, 0i64..1000, proptest::option::of(any::<u8>())), 1..60),
            changes in proptest::collection::vec(change(), 60),
            added in proptest::collection::btree_set("new/[a-z]{1,6}", 0..10),
            aborted in proptest::collection::vec(proptest::collection::btree_map("[a-f]{1,3}/[a-z]{1,6}|new/[a-z]{1,6}", (0u64..1000, 0i64..1000, proptest::option::of(any::<u8>())), 0..60), 0..3),
        ) {
            let inventory = |m: &BTreeMap<String, (u64, i64, Option<u8>)>| {
                m.iter().map(|(p, &(s, t, c))| file(p, s, t, c)).collect::<Vec<_>>()
            };
            let mut second = BTreeMap::new();
            let mut expect = DiffCounts::default();
            let mut gone = 0;
            let mut gone_paths = Vec::new();
            let mut should_be_pending = Vec::new();
            for ((path, attrs), change) in first.iter().zip(&changes) {
                let Some(attrs) = changed(attrs, change) else {
                    gone += 1;
                    gone_paths.push(path.clone());
                    continue;
                };
                if matches!(change, Change::Keep) { expect.unchanged += 1 } else {
                    expect.changed += 1;
                    should_be_pending.push(path.clone());
                }
                second.insert(path.clone(), attrs);
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
                // Submissions whose submitters died in between change
                // nothing the next diff sees.
                for abandoned in &aborted {
                    sm.send_and_abort("ds", inventory(abandoned)).await;
                }
                let s2 = sm.submit("ds", inventory(&second)).await;
                let job = sm.state().job(s2).unwrap().unwrap();
                prop_assert_eq!(job.counts, expect);
                prop_assert_eq!(job.gone, gone);
                prop_assert_eq!(sm.state().gone_files(&job, None, 1000).unwrap(), gone_paths);
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

        /// A re-submission sent as digests, with the ranges not accepted
        /// sent again as files (several to a command), leaves exactly what
        /// the same inventory sent as files does: counts, gone files,
        /// catalogue, shards, and the next diff. A digest is accepted
        /// exactly when no file in its range changed, is new, or is gone.
        #[test]
        fn a_submission_by_digest_equals_one_by_files(
            first in proptest::collection::btree_map(PATHS, attrs(), 1..40),
            changes in proptest::collection::vec(change(), 1..30),
            added in proptest::collection::btree_map(PATHS, attrs(), 0..6),
            aborted in proptest::collection::vec(proptest::collection::btree_map(PATHS, attrs(), 0..30), 0..3),
            cut_every in 1u32..5,
            per_command in 1usize..4,
        ) {
            let mut second = BTreeMap::new();
            let mut gone = BTreeSet::new();
            let mut touched = BTreeSet::new();
            for ((path, attrs), change) in first.iter().zip(changes.iter().cycle()) {
                let Some(attrs) = changed(attrs, change) else {
                    gone.insert(path.clone());
                    continue;
                };
                if !matches!(change, Change::Keep) {
                    touched.insert(path.clone());
                }
                second.insert(path.clone(), attrs);
            }
            for (path, &attrs) in &added {
                if !first.contains_key(path) {
                    touched.insert(path.clone());
                    second.insert(path.clone(), attrs);
                }
            }
            let files = inventory(&second);
            let cut = cut_by_content(&files, cut_every);

            rt().block_on(async {
                let mut by_files = Applier::new();
                let mut by_digest = Applier::new();
                setup_dataset(&mut by_files, "ds", &[1]).await;
                by_files.submit("ds", inventory(&first)).await;
                // By digest, the first submission goes in ranges cut the
                // same way: the second's digests meet its records.
                setup_dataset(&mut by_digest, "ds", &[1]).await;
                let s1 = begin(&mut by_digest).await;
                let mut first_file = 0;
                let mut sent = Vec::new();
                for range in cut_by_content(&inventory(&first), cut_every) {
                    let n = range.len() as u64;
                    sent.push(InventoryRange::Files { first_file, files: range });
                    first_file += n;
                }
                let answer = by_digest.apply(ranges(s1, sent)).await;
                prop_assert!(matches!(answer, Response::RangesApplied { .. }), "{:?}", answer);
                by_digest.finish("ds", s1).await;
                for sm in [&mut by_files, &mut by_digest] {
                    for abandoned in &aborted {
                        sm.send_and_abort("ds", inventory(abandoned)).await;
                    }
                }
                let s_files = by_files.submit("ds", files.clone()).await;

                let s_digest = begin(&mut by_digest).await;
                prop_assert_eq!(s_digest, s_files);
                let mut resend = Vec::new();
                let mut first_file = 0;
                // Two digest commands: the halves of the ranges.
                let half = cut.len().div_ceil(2);
                for part in [&cut[..half], &cut[half..]] {
                    if part.is_empty() {
                        continue;
                    }
                    let sent = part.iter().map(|r| digest_of(r)).collect();
                    let Response::RangesApplied { counts, shards_created, mismatched } =
                        by_digest.apply(ranges(s_digest, sent)).await
                    else {
                        panic!("digests refused")
                    };
                    prop_assert_eq!(shards_created, 0);
                    let mut unchanged = 0;
                    for (index, range) in part.iter().enumerate() {
                        let (lo, hi) = (&range[0].path, &range[range.len() - 1].path);
                        let agrees = range.iter().all(|f| !touched.contains(&f.path))
                            && !gone.iter().any(|g| lo <= g && g <= hi);
                        prop_assert_eq!(!mismatched.contains(&(index as u32)), agrees, "{:?}", range);
                        if agrees {
                            unchanged += range.len() as u64;
                        } else {
                            resend.push(InventoryRange::Files { first_file, files: range.clone() });
                        }
                        first_file += range.len() as u64;
                    }
                    prop_assert_eq!(counts, DiffCounts { unchanged, ..DiffCounts::default() });
                }
                // Answers come in any order: the ranges to send again are
                // grouped as they come, in order within a command.
                resend.reverse();
                for group in resend.chunks(per_command) {
                    let mut group = group.to_vec();
                    group.reverse();
                    let answer = by_digest.apply(ranges(s_digest, group)).await;
                    prop_assert!(matches!(&answer, Response::RangesApplied { mismatched, .. } if mismatched.is_empty()), "{:?}", answer);
                }
                by_digest.finish("ds", s_digest).await;

                let jobs = [&by_files, &by_digest].map(|sm| sm.state().job(s_files).unwrap().unwrap());
                prop_assert_eq!(jobs[0].counts, jobs[1].counts);
                prop_assert_eq!(jobs[0].gone, jobs[1].gone);
                prop_assert_eq!(jobs[0].shards_total, jobs[1].shards_total);
                prop_assert_eq!(
                    by_files.state().gone_files(&jobs[0], None, 1000).unwrap(),
                    by_digest.state().gone_files(&jobs[1], None, 1000).unwrap()
                );
                let every_path: BTreeSet<&String> = first.keys().chain(second.keys()).chain(aborted.iter().flat_map(|a| a.keys())).collect();
                for path in &every_path {
                    prop_assert_eq!(comparable(&by_files, path), comparable(&by_digest, path), "{}", path);
                }
                // The next submission sees both the same way.
                let next: Vec<FileEntry> = files.iter().skip(1).cloned().collect();
                let [a, b] = [&mut by_files, &mut by_digest];
                let (na, nb) = (a.submit("ds", next.clone()).await, b.submit("ds", next).await);
                let (ja, jb) = (a.state().job(na).unwrap().unwrap(), b.state().job(nb).unwrap().unwrap());
                prop_assert_eq!((ja.counts, ja.gone), (jb.counts, jb.gone));
                Ok(())
            })?;
        }

        /// A history of submissions sent by digest, with submissions sent
        /// by digest and aborted in between, leaves what the same history
        /// sent as files leaves (counts, gone files, catalogue), and the
        /// listing tidy after each: records of the last two finished
        /// submissions only, every record's paths kept, and no paths that
        /// no record points at, however long an unchanged range's paths
        /// are pointed at from one submission to the next.
        #[test]
        fn a_history_by_digest_equals_one_by_files_and_keeps_the_listing_tidy(
            steps in proptest::collection::vec(step(), 1..6),
            cut_every in 1u32..5,
        ) {
            rt().block_on(async {
                let mut by_files = Applier::new();
                let mut by_digest = Applier::new();
                setup_dataset(&mut by_files, "ds", &[1]).await;
                setup_dataset(&mut by_digest, "ds", &[1]).await;
                let mut live: BTreeMap<String, Attrs> = BTreeMap::new();
                for step in &steps {
                    for abandoned in &step.aborted {
                        by_files.send_and_abort("ds", inventory(abandoned)).await;
                        let submission = send_by_digest(&mut by_digest, &inventory(abandoned), cut_every).await;
                        let abort = Command::AbortSubmission { dataset: "ds".into(), submission };
                        prop_assert_eq!(by_digest.apply(abort).await, Response::SubmissionAborted { submission });
                    }
                    let mut next = BTreeMap::new();
                    for ((path, attrs), change) in live.iter().zip(step.changes.iter().cycle()) {
                        if let Some(attrs) = changed(attrs, change) {
                            next.insert(path.clone(), attrs);
                        }
                    }
                    for (path, &attrs) in &step.added {
                        next.entry(path.clone()).or_insert(attrs);
                    }
                    let files = inventory(&next);
                    let a = by_files.submit("ds", files.clone()).await;
                    let b = send_by_digest(&mut by_digest, &files, cut_every).await;
                    by_digest.finish("ds", b).await;
                    prop_assert_eq!(a, b);

                    let jobs = [&by_files, &by_digest].map(|sm| sm.state().job(a).unwrap().unwrap());
                    prop_assert_eq!(jobs[0].counts, jobs[1].counts);
                    prop_assert_eq!(jobs[0].gone, jobs[1].gone);
                    prop_assert_eq!(
                        by_files.state().gone_files(&jobs[0], None, 1000).unwrap(),
                        by_digest.state().gone_files(&jobs[1], None, 1000).unwrap()
                    );
                    for path in live.keys().chain(next.keys()) {
                        prop_assert_eq!(comparable(&by_files, path), comparable(&by_digest, path), "{}", path);
                    }
                    let dataset = by_digest.state().dataset("ds").unwrap().unwrap();
                    let kept = [jobs[1].previous_finished, b];
                    let tidy = crate::state::listed::check_tidy(by_digest.state().db(), dataset.id, &kept);
                    prop_assert_eq!(tidy, Ok(()));
                    live = next;
                }
                Ok(())
            })?;
        }

        /// A file's number is its place in the manifest (path order),
        /// whatever chunks it is cut into, whatever order each chunk lists
        /// its files in and whatever order the chunks are applied in: a
        /// record's first-seen position is a function of the manifest alone.
        #[test]
        fn file_numbers_follow_the_manifest_whatever_the_chunk_order(
            paths in proptest::collection::btree_set("[a-d]{1,3}/[a-z]{1,4}", 1..80),
            cuts in proptest::collection::vec(1usize..20, 1..10),
            seed in any::<u64>(),
        ) {
            let manifest: Vec<FileEntry> = paths.iter().map(|p| file(p, 1, 1, None)).collect();
            let mut chunks = Vec::new();
            let mut rest = &manifest[..];
            for &cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let n = cut.min(rest.len());
                chunks.push(rest[..n].to_vec());
                rest = &rest[n..];
            }
            // A shuffle of the chunks, some reversed inside, from `seed`.
            let mut rng = seed;
            for i in (0..chunks.len()).rev() {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let j = (rng >> 33) as usize % (i + 1);
                chunks.swap(i, j);
                if rng & 1 == 1 {
                    chunks[i].reverse();
                }
            }
            rt().block_on(async {
                let mut sm = Applier::new();
                setup_dataset(&mut sm, "ds", &[1]).await;
                sm.send_chunks("ds", chunks).await;
                let dataset = sm.state().dataset("ds").unwrap().unwrap();
                for (rank, path) in paths.iter().enumerate() {
                    let entry = sm.state().catalog_entry(dataset.id, path).unwrap().unwrap();
                    let shard = sm.state().shard(entry.shard).unwrap().unwrap();
                    prop_assert_eq!(shard.file, rank as u64, "{}", path);
                }
                Ok(())
            })?;
        }

        /// A history of submissions: each is diffed against the last
        /// finished one (unchanged files written nowhere, however long ago
        /// they were catalogued), counts and lists its gone files exactly,
        /// and aborted submissions in between, which may relist gone files
        /// or change live ones, change neither the next diff nor the last
        /// gone listing.
        #[test]
        fn a_history_of_submissions_is_diffed_exactly(steps in proptest::collection::vec(step(), 1..5)) {
            rt().block_on(async {
                let mut sm = Applier::new();
                setup_dataset(&mut sm, "ds", &[1]).await;
                let mut live: BTreeMap<String, Attrs> = BTreeMap::new();
                let mut last: Option<(Job, Vec<String>)> = None;
                for step in &steps {
                    for abandoned in &step.aborted {
                        sm.send_and_abort("ds", inventory(abandoned)).await;
                    }
                    if let Some((job, gone)) = &last {
                        prop_assert_eq!(&sm.state().gone_files(job, None, 1000).unwrap(), gone);
                    }

                    let mut next = BTreeMap::new();
                    let mut expect = DiffCounts::default();
                    let mut gone = Vec::new();
                    let mut pending = BTreeSet::new();
                    for ((path, attrs), change) in live.iter().zip(step.changes.iter().cycle()) {
                        let Some(attrs) = changed(attrs, change) else {
                            gone.push(path.clone());
                            continue;
                        };
                        if matches!(change, Change::Keep) {
                            expect.unchanged += 1;
                        } else {
                            expect.changed += 1;
                            pending.insert(path.clone());
                        }
                        next.insert(path.clone(), attrs);
                    }
                    for (path, &attrs) in &step.added {
                        if !live.contains_key(path) {
                            expect.new += 1;
                            pending.insert(path.clone());
                            next.insert(path.clone(), attrs);
                        }
                    }

                    let files = inventory(&next);
                    let mut chunks: Vec<Vec<FileEntry>> = files.chunks(step.chunk_files).map(<[_]>::to_vec).collect();
                    if !chunks.is_empty() {
                        let by = step.rotation.index(chunks.len());
                        chunks.rotate_left(by);
                    }
                    let submission = sm.send_chunks("ds", chunks).await;
                    if let Some((job, gone)) = &last {
                        // An open submission changes no finished one's gone files.
                        prop_assert_eq!(&sm.state().gone_files(job, None, 1000).unwrap(), gone);
                    }
                    sm.finish("ds", submission).await;
                    let job = sm.state().job(submission).unwrap().unwrap();
                    prop_assert_eq!(job.counts, expect);
                    prop_assert_eq!(job.gone, gone.len() as u64);
                    prop_assert_eq!(job.shards_total, expect.new + expect.changed);
                    prop_assert_eq!(&sm.state().gone_files(&job, None, 1000).unwrap(), &gone);

                    let dataset = sm.state().dataset("ds").unwrap().unwrap();
                    prop_assert_eq!(dataset.live_files, next.len() as u64);
                    for (path, &(size, mtime, sum)) in &next {
                        let entry = sm.state().catalog_entry(dataset.id, path).unwrap().unwrap();
                        prop_assert_eq!((entry.size, entry.mtime_ns, entry.checksum), (size, mtime, sum.map(|c| vec![c; 16])));
                        let shard = sm.state().shard(entry.shard).unwrap().unwrap();
                        prop_assert_eq!(shard.job == submission, pending.contains(path), "{}", path);
                    }
                    if let Some((older, _)) = &last {
                        prop_assert!(sm.state().gone_files(older, None, 1000).is_err());
                    }
                    live = next;
                    last = Some((job, gone));
                }
                Ok(())
            })?;
        }
    }
}
