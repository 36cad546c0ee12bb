//! Re-submitting an inventory by digest: most of a re-submitted inventory
//! is what the dataset's last finished submission listed, so its entries
//! need not travel through the Raft log to every replica again.
//!
//! The entries (in path order) are cut into small ranges, and each range
//! is sent as its first and last path, its count and the digest of its
//! entries (`InventoryRange::Digest`); every replica accepts it if its
//! catalogue agrees, as listed again unchanged. A range not accepted (a
//! file in it changed, is new, or one between its paths is gone) is sent
//! again with its entries (`InventoryRange::Files`), together with other
//! such ranges. The result is the same as sending every entry.
//!
//! A range ends after a path whose hash is 0 modulo `RANGE_FILES`, so a
//! file added or removed moves the boundaries of its own range only. At
//! most `MAX_CUT_FILES` files per range bound what one changed file costs.
//! When most digests miss (an inventory mostly changed), the rest is sent
//! as entries directly; so is a first submission, in the same ranges, so
//! that each range's listing record is one the next submission's digest
//! finds (the coordinators then check a digest against the record alone).
//!
//! Memory: the entries of the digest commands in flight (the window's
//! `DIGEST_RANGES_PER_COMMAND` ranges each) and of the ranges to resend.

use std::collections::{HashMap, VecDeque};

use proto_schema::command::{
    Command, CommandError, EntriesDigest, FileEntry, InventoryRange, MAX_CHUNK_BYTES,
    MAX_CHUNK_RANGES, MAX_RANGE_FILES, Response,
};
use proto_schema::ids::JobId;

use crate::pipeline::Pipeline;
use crate::submission::{SubmitError, SubmitEvent, Summary};
use crate::transport::Transport;

/// Files per range on average.
pub const RANGE_FILES: u64 = 16;
/// Most files in one range.
pub const MAX_CUT_FILES: usize = 64;
/// Digest ranges per command.
pub const DIGEST_RANGES_PER_COMMAND: usize = 512;

const _: () = assert!(MAX_CUT_FILES <= MAX_RANGE_FILES);
const _: () = assert!(DIGEST_RANGES_PER_COMMAND <= MAX_CHUNK_RANGES);

/// Entries in path order with the place of the first in the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub first_file: u64,
    pub files: Vec<FileEntry>,
}

impl Range {
    fn first(&self) -> &str {
        &self.files[0].path
    }

    /// The range as a digest command carries it.
    pub fn digest(&self) -> InventoryRange {
        let mut digest = EntriesDigest::new();
        for f in &self.files {
            digest.add(f.path.as_bytes(), f.size, f.mtime_ns, f.checksum.as_deref());
        }
        InventoryRange::Digest {
            first: self.first().to_owned(),
            last: self.files[self.files.len() - 1].path.clone(),
            files: self.files.len() as u32,
            digest: digest.finish(),
        }
    }

    fn weight(&self) -> usize {
        self.files.iter().map(FileEntry::weight).sum()
    }
}

/// Cuts entries (in path order) into ranges, see the module's notes.
pub struct Ranges<I> {
    entries: I,
    next_file: u64,
}

impl<I: Iterator<Item = FileEntry>> Ranges<I> {
    pub fn new(entries: I) -> Self {
        Self {
            entries,
            next_file: 0,
        }
    }
}

impl<I: Iterator<Item = FileEntry>> Iterator for Ranges<I> {
    type Item = Range;

    fn next(&mut self) -> Option<Range> {
        let mut files = Vec::new();
        for entry in self.entries.by_ref() {
            let boundary =
                xxhash_rust::xxh3::xxh3_64(entry.path.as_bytes()).is_multiple_of(RANGE_FILES);
            files.push(entry);
            if boundary || files.len() == MAX_CUT_FILES {
                break;
            }
        }
        if files.is_empty() {
            return None;
        }
        let first_file = self.next_file;
        self.next_file += files.len() as u64;
        Some(Range { first_file, files })
    }
}

/// Ranges to send with their entries, and how many files and bytes.
#[derive(Default)]
struct Queue {
    ranges: VecDeque<Range>,
    files: usize,
    bytes: usize,
}

impl Queue {
    fn push_back(&mut self, range: Range) {
        self.files += range.files.len();
        self.bytes += range.weight();
        self.ranges.push_back(range);
    }

    fn take(&mut self, n: usize) -> Vec<Range> {
        let taken: Vec<Range> = self.ranges.drain(..n).collect();
        self.files -= taken.iter().map(|r| r.files.len()).sum::<usize>();
        self.bytes -= taken.iter().map(Range::weight).sum::<usize>();
        taken
    }

    fn len(&self) -> usize {
        self.ranges.len()
    }

    fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// What is sent and what is still to send.
struct Sender {
    dataset: String,
    submission: JobId,
    max_chunk_files: usize,
    next_tag: u64,
    /// The ranges of each digest command in flight, by tag.
    in_flight: HashMap<u64, Vec<Range>>,
    /// Ranges for the next digest command, with their digests.
    digests: Vec<(Range, InventoryRange)>,
    /// The weight of those digests.
    digest_bytes: usize,
    /// Ranges to send with their entries.
    resend: Queue,
    by_digest: bool,
    digests_answered: usize,
    digests_missed: usize,
}

impl Sender {
    fn command(&self, ranges: Vec<InventoryRange>) -> Command {
        Command::SubmitRanges {
            dataset: self.dataset.clone(),
            submission: self.submission,
            ranges,
        }
    }

    fn tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    /// Adds a range; a digest command once one is full.
    fn push(&mut self, range: Range) -> Option<(u64, Command)> {
        if !self.by_digest {
            self.resend.push_back(range);
            return None;
        }
        let digest = range.digest();
        let full = self.digests.len() == DIGEST_RANGES_PER_COMMAND
            || self.digest_bytes + digest.weight() > MAX_CHUNK_BYTES;
        let command = if full { self.digest_command() } else { None };
        self.digest_bytes += digest.weight();
        self.digests.push((range, digest));
        command
    }

    fn digest_command(&mut self) -> Option<(u64, Command)> {
        if self.digests.is_empty() {
            return None;
        }
        self.digest_bytes = 0;
        let (ranges, digests) = std::mem::take(&mut self.digests).into_iter().unzip();
        let command = self.command(digests);
        let tag = self.tag();
        self.in_flight.insert(tag, ranges);
        Some((tag, command))
    }

    /// A command of ranges to send with their entries: a full one, or
    /// with `all` whatever is left.
    fn files_command(&mut self, all: bool) -> Option<(u64, Command)> {
        let full = self.resend.len() > MAX_CHUNK_RANGES
            || self.resend.files > self.max_chunk_files
            || self.resend.bytes > MAX_CHUNK_BYTES;
        if !all && !full {
            return None;
        }
        let (mut files, mut bytes, mut taken) = (0, 0, 0);
        for range in &self.resend.ranges {
            let over = taken == MAX_CHUNK_RANGES
                || files + range.files.len() > self.max_chunk_files
                || bytes + range.weight() > MAX_CHUNK_BYTES;
            if over && taken > 0 {
                break;
            }
            files += range.files.len();
            bytes += range.weight();
            taken += 1;
        }
        if taken == 0 {
            return None;
        }
        let mut ranges = self.resend.take(taken);
        // Answers come in any order; a command's ranges ascend.
        ranges.sort_unstable_by(|a, b| a.first().cmp(b.first()));
        let ranges = ranges
            .into_iter()
            .map(|r| InventoryRange::Files {
                first_file: r.first_file,
                files: r.files,
            })
            .collect();
        Some((self.tag(), self.command(ranges)))
    }

    /// Counts an answer; the ranges of a digest command not accepted are
    /// to be sent again with their entries.
    fn answer(
        &mut self,
        tag: u64,
        answer: Response,
        summary: &mut Summary,
        on_event: &mut impl FnMut(SubmitEvent),
    ) -> Result<(), SubmitError> {
        let Response::RangesApplied {
            counts,
            shards_created,
            mismatched,
        } = answer
        else {
            return summary.add_chunk(answer, on_event);
        };
        summary.add_counts(counts, shards_created, on_event);
        let Some(mut ranges) = self.in_flight.remove(&tag) else {
            return Ok(());
        };
        self.digests_answered += ranges.len();
        self.digests_missed += mismatched.len();
        let sent = ranges.len();
        for index in mismatched {
            let Some(range) = ranges.get_mut(index as usize) else {
                return Err(SubmitError::Refused {
                    doing: "sending digests".into(),
                    response: Response::Error(CommandError::Malformed {
                        reason: format!("range {index} of a command of {sent} was not sent"),
                    }),
                });
            };
            self.resend.push_back(Range {
                first_file: range.first_file,
                files: std::mem::take(&mut range.files),
            });
        }
        // Mostly changed: digests cost more than they save.
        if self.digests_answered >= DIGEST_RANGES_PER_COMMAND
            && self.digests_missed * 2 > self.digests_answered
        {
            self.by_digest = false;
            self.digest_bytes = 0;
            for (range, _) in self.digests.drain(..) {
                self.resend.push_back(range);
            }
        }
        Ok(())
    }
}

/// How `send` sends.
#[derive(Debug, Clone, Copy)]
pub struct Sending {
    /// Digests first: the dataset's last finished submission listed files.
    pub by_digest: bool,
    /// Most files of the ranges sent in one command.
    pub max_chunk_files: usize,
}

/// Sends `entries` (in path order) in ranges through `pipeline`, as
/// digests first when `how.by_digest`, counting the answers into
/// `summary`; every entry is applied once this returns.
pub async fn send<T: Transport>(
    pipeline: &mut Pipeline<'_, T>,
    dataset: &str,
    submission: JobId,
    entries: impl Iterator<Item = FileEntry>,
    how: Sending,
    summary: &mut Summary,
    on_event: &mut impl FnMut(SubmitEvent),
) -> Result<(), SubmitError> {
    let mut sender = Sender {
        dataset: dataset.to_owned(),
        submission,
        max_chunk_files: how.max_chunk_files.max(1),
        next_tag: 0,
        in_flight: HashMap::new(),
        digests: Vec::new(),
        digest_bytes: 0,
        resend: Queue::default(),
        by_digest: how.by_digest,
        digests_answered: 0,
        digests_missed: 0,
    };
    for range in Ranges::new(entries) {
        let mut ready: Vec<(u64, Command)> = sender.push(range).into_iter().collect();
        while let Some(command) = sender.files_command(false) {
            ready.push(command);
        }
        for (tag, command) in ready {
            if let Some((tag, answer)) = pipeline.send(&command, tag).await? {
                sender.answer(tag, answer, summary, on_event)?;
            }
        }
    }
    if let Some((tag, command)) = sender.digest_command()
        && let Some((tag, answer)) = pipeline.send(&command, tag).await?
    {
        sender.answer(tag, answer, summary, on_event)?;
    }
    loop {
        while let Some((tag, command)) = sender.files_command(true) {
            if let Some((tag, answer)) = pipeline.send(&command, tag).await? {
                sender.answer(tag, answer, summary, on_event)?;
            }
        }
        match pipeline.next().await? {
            Some((tag, answer)) => sender.answer(tag, answer, summary, on_event)?,
            None if sender.resend.is_empty() => return Ok(()),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn entry(path: String) -> FileEntry {
        FileEntry {
            path,
            size: 1,
            mtime_ns: 1,
            checksum: None,
        }
    }

    proptest! {
        /// Ranges cover the entries in order, each numbered from its
        /// place, within `MAX_CUT_FILES`; and a file added moves no
        /// boundary but its own range's.
        #[test]
        fn ranges_cover_the_inventory_and_stay_put(
            paths in proptest::collection::btree_set("[a-z]{1,8}", 1..400),
            added in "[a-z]{1,8}",
        ) {
            let entries: Vec<FileEntry> = paths.iter().cloned().map(entry).collect();
            let ranges: Vec<Range> = Ranges::new(entries.clone().into_iter()).collect();
            let mut next = 0;
            for range in &ranges {
                prop_assert_eq!(range.first_file, next);
                prop_assert!(!range.files.is_empty() && range.files.len() <= MAX_CUT_FILES);
                next += range.files.len() as u64;
            }
            let covered: Vec<FileEntry> = ranges.iter().flat_map(|r| r.files.clone()).collect();
            prop_assert_eq!(covered, entries);

            let mut more = paths.clone();
            more.insert(added.clone());
            let lasts = |ranges: &[Range]| -> Vec<String> {
                ranges.iter().map(|r| r.files.last().unwrap().path.clone()).collect()
            };
            let before = lasts(&ranges);
            let after = lasts(&Ranges::new(more.into_iter().map(entry)).collect::<Vec<_>>());
            // Boundaries cut by hash are kept; only a range at its
            // MAX_CUT_FILES limit may move the ones after it.
            let capped = ranges.iter().any(|r| r.files.len() == MAX_CUT_FILES);
            if !capped {
                let kept: Vec<&String> = before.iter().filter(|l| after.contains(l)).collect();
                prop_assert!(kept.len() + 1 >= before.len(), "{:?} -> {:?}", before, after);
            }
        }
    }
}
