//! What the user reads: the summary after an ingest and `quern stats`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use bytesize::ByteSize;
use node::counters::JobCounters;
use node::ingest::IngestOutcome;
use node::memory::monitor::MemoryPeaks;
use node::memory::tracking::Usage;
use node::memory::{ProcessMemory, TrackingAllocator};
use node::reads::remote::{ClusterJob, ClusterReader, JobEntry};
use node::store::Store;
use node::store::catalog::{DatasetInfo, JobInfo, JobTotals};
use node::store::ledger::FileCounts;
use proto_schema::command::StagedCounts;
use serde::Serialize;

use crate::args::StatsArgs;

/// Problem files and rejected records shown in summaries before pointing
/// at `quern stats`.
const SHOWN_PROBLEMS: usize = 10;

/// `1234567` as `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn size(bytes: u64) -> String {
    ByteSize(bytes).display().iec().to_string()
}

fn timestamp(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// A writer whose failed writes are dropped: for messages to stderr, which
/// are not the result (see `tell!`).
struct BestEffort<W>(W);

impl<W: Write> Write for BestEffort<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// Prints the end-of-job summary; returns whether the input was clean (no
/// rejected record, no problem file).
pub fn ingest_summary(
    store: &Store,
    outcome: &IngestOutcome,
    counters: &JobCounters,
) -> anyhow::Result<bool> {
    let t = &outcome.totals;
    let secs = outcome.elapsed.as_secs_f64().max(0.001);
    let mut err = BestEffort(std::io::stderr().lock());
    writeln!(
        err,
        "quern: committed job {} of dataset {:?}: {} files, {} in {:.2} s ({}/s, {} records/s)",
        outcome.job.id,
        outcome.dataset.name,
        count(t.files),
        size(t.bytes),
        secs,
        size((t.bytes as f64 / secs) as u64),
        count((t.read as f64 / secs) as u64),
    )?;
    let records = StagedCounts {
        read: t.read,
        unique: t.unique,
        duplicates: t.duplicates,
        rejected: t.rejected,
    };
    write_counts(&mut err, &records, Some(t.problem_files))?;
    writeln!(
        err,
        "  sort: {} runs spilled, {} extra merge passes",
        count(JobCounters::get(&counters.runs_spilled)),
        count(JobCounters::get(&counters.merge_passes))
    )?;
    write_memory(&mut err, &outcome.memory)?;
    let links_skipped = JobCounters::get(&counters.links_skipped);
    if links_skipped > 0 {
        writeln!(err, "  {}", skipped_links_note(links_skipped))?;
    }
    if t.files == 0 {
        writeln!(
            err,
            "  warning: no input files were found under the given paths"
        )?;
    }
    if !outcome.hung_stages.is_empty() {
        writeln!(
            err,
            "  warning: stages that did not stop in time: {}",
            outcome.hung_stages.join(", ")
        )?;
    }
    let clean = t.rejected == 0 && t.problem_files == 0;
    if !clean {
        write_problems(&mut err, store, &outcome.dataset, outcome.job.id)?;
        writeln!(
            err,
            "  everything is listed by: quern stats --dataset {} --job {}",
            outcome.dataset.name, outcome.job.id
        )?;
    }
    Ok(clean)
}

/// A job's record counters, one a line, as every summary shows them;
/// files with problems where they are known.
pub fn write_counts(
    out: &mut impl Write,
    records: &StagedCounts,
    problem_files: Option<u64>,
) -> std::io::Result<()> {
    let lines = [
        ("records read", Some(records.read)),
        ("  unique", Some(records.unique)),
        ("  duplicates", Some(records.duplicates)),
        ("  rejected", Some(records.rejected)),
        ("files with problems", problem_files),
    ];
    for (label, value) in lines {
        if let Some(value) = value {
            writeln!(out, "  {label:<20} {:>15}", count(value))?;
        }
    }
    Ok(())
}

/// Links inside directories are not input files (not listed, no
/// records), so they are told apart from the counted figures.
fn skipped_links_note(n: u64) -> String {
    let links = if n == 1 { "link" } else { "links" };
    format!(
        "skipped {} symbolic {links} inside directories (not input files); --follow reads them",
        count(n)
    )
}

/// Peak figures of the job, and what the process holds now it is over.
fn write_memory(out: &mut impl Write, peaks: &MemoryPeaks) -> anyhow::Result<()> {
    if TrackingAllocator::is_installed() {
        let top: Vec<String> = peaks
            .accounts
            .iter()
            .take(4)
            .map(|(name, bytes)| format!("{name} {}", size(*bytes)))
            .collect();
        writeln!(
            out,
            "  memory: heap peak {} ({}); anonymous resident peak {}",
            size(peaks.heap),
            top.join(", "),
            size(peaks.anon)
        )?;
    }
    if let Some(m) = ProcessMemory::read() {
        writeln!(
            out,
            "  memory now: {} anonymous, {} file-backed, {} heap",
            size(m.anon),
            size(m.file),
            size(Usage::read().total())
        )?;
    }
    Ok(())
}

/// The first few problem files and rejected records of a job.
fn write_problems(
    out: &mut impl Write,
    store: &Store,
    dataset: &DatasetInfo,
    job: u32,
) -> anyhow::Result<()> {
    let mut shown = 0;
    for row in store.files(dataset.id, job) {
        let row = row?;
        for problem in &row.problems {
            writeln!(out, "  problem: {}: {problem}", row.path.display())?;
            shown += 1;
        }
        if shown >= SHOWN_PROBLEMS {
            break;
        }
    }
    for rejected in store.rejections(dataset.id, job).take(SHOWN_PROBLEMS) {
        let r = rejected?;
        let path = store
            .file_path(dataset.id, job, r.file)?
            .unwrap_or_default();
        writeln!(
            out,
            "  rejected: {}:{}: {}",
            path.display(),
            r.offset,
            r.rejection
        )?;
    }
    Ok(())
}

/// `quern stats`: every job of a dataset, then the files and rejected
/// records of one job (the latest by default), streamed. The stores of
/// `quern dev`'s nodes under `data` are read as a cluster's nodes are.
pub fn stats(data: &Path, args: StatsArgs) -> anyhow::Result<ExitCode> {
    if !args.client.coordinators.is_empty() {
        let (runtime, reader) = crate::cluster_client::reader(&args.client, &args.dataset.dataset)?;
        return parts_stats(&runtime, &reader, args);
    }
    let mut stores = crate::query::open_readers(data, 8 << 20)?;
    if stores.len() > 1 {
        let runtime = crate::cluster_client::runtime()?;
        let stores = stores.into_iter().map(std::sync::Arc::new).collect();
        let reader = ClusterReader::here(stores, &args.dataset.dataset);
        return parts_stats(&runtime, &reader, args);
    }
    let store = stores.remove(0);
    let dataset = store.existing_dataset(&args.dataset.dataset)?;
    let jobs = store.jobs(dataset.id)?;
    let job = match args.job {
        Some(id) => Some(
            jobs.iter()
                .find(|j| u64::from(j.id) == id)
                .with_context(|| format!("dataset {:?} has no job {id}", dataset.name))?,
        ),
        None => jobs.last(),
    };
    let out = &mut std::io::stdout().lock();
    if args.json {
        write_stats_json(out, &store, &dataset, &jobs, job)?;
    } else {
        write_stats_text(out, &store, &dataset, &jobs, job)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write_stats_text(
    out: &mut impl Write,
    store: &Store,
    dataset: &DatasetInfo,
    jobs: &[JobInfo],
    job: Option<&JobInfo>,
) -> anyhow::Result<()> {
    writeln!(
        out,
        "dataset {:?}: {}, {} partitions, created {}",
        dataset.name,
        dataset.format,
        dataset.partitions,
        timestamp(dataset.created_unix)
    )?;
    write_jobs_header(out)?;
    for j in jobs {
        let totals = j.totals.unwrap_or_default();
        write_job_row(
            out,
            j.id.into(),
            j.started_unix,
            &totals,
            &j.state.to_string(),
        )?;
    }
    let Some(job) = job else {
        return Ok(());
    };
    write_files_header(out, job.id.into())?;
    for row in store.files(dataset.id, job.id) {
        let row = row?;
        let path = row.path.display().to_string();
        write_file_row(out, &row.counts, &path, &row.problems)?;
    }
    for (i, rejected) in store.rejections(dataset.id, job.id).enumerate() {
        let r = rejected?;
        if i == 0 {
            writeln!(out, "\nrejected records of job {}:", job.id)?;
        }
        let path = store
            .file_path(dataset.id, job.id, r.file)?
            .unwrap_or_default();
        writeln!(
            out,
            "{}:{}: {}  [{}]",
            path.display(),
            r.offset,
            r.rejection,
            r.excerpt
        )?;
    }
    Ok(())
}

fn write_jobs_header(out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "\n{:>4}  {:<20}  {:>9}  {:>10}  {:>14}  {:>14}  {:>14}  {:>10}  {:>8}  state",
        "job", "started", "files", "bytes", "read", "unique", "duplicates", "rejected", "problems"
    )
}

fn write_job_row(
    out: &mut impl Write,
    id: u64,
    started_unix: u64,
    t: &JobTotals,
    state: &str,
) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>4}  {:<20}  {:>9}  {:>10}  {:>14}  {:>14}  {:>14}  {:>10}  {:>8}  {state}",
        id,
        timestamp(started_unix),
        count(t.files),
        size(t.bytes),
        count(t.read),
        count(t.unique),
        count(t.duplicates),
        count(t.rejected),
        count(t.problem_files),
    )
}

fn write_files_header(out: &mut impl Write, job: u64) -> std::io::Result<()> {
    writeln!(out, "\nfiles of job {job}:")?;
    writeln!(
        out,
        "{:>14}  {:>14}  {:>14}  {:>10}  path",
        "read", "unique", "duplicates", "rejected"
    )
}

fn write_file_row(
    out: &mut impl Write,
    c: &FileCounts,
    path: &str,
    problems: &[impl std::fmt::Display],
) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>14}  {:>14}  {:>14}  {:>10}  {path}",
        count(c.read),
        count(c.unique),
        count(c.duplicates),
        count(c.rejected),
    )?;
    for problem in problems {
        writeln!(out, "{:>58}  ^ problem: {problem}", "")?;
    }
    Ok(())
}

#[derive(Serialize)]
struct JsonFile<'a> {
    job: u32,
    seq: u32,
    path: String,
    size: u64,
    #[serde(flatten)]
    counts: node::store::ledger::FileCounts,
    problems: &'a [node::quarantine::FileProblem],
}

/// One JSON document, written element by element so that a job with
/// millions of files never sits in memory.
fn write_stats_json(
    out: &mut impl Write,
    store: &Store,
    dataset: &DatasetInfo,
    jobs: &[JobInfo],
    job: Option<&JobInfo>,
) -> anyhow::Result<()> {
    write!(
        out,
        "{{\"dataset\":{},\"jobs\":{},\"files\":[",
        serde_json::to_string(dataset)?,
        serde_json::to_string(jobs)?
    )?;
    for (i, row) in job
        .into_iter()
        .flat_map(|j| store.files(dataset.id, j.id).map(move |row| (j.id, row)))
        .enumerate()
    {
        let (job, row) = (row.0, row.1?);
        let entry = JsonFile {
            job,
            seq: row.seq,
            path: row.path.display().to_string(),
            size: row.size,
            counts: row.counts,
            problems: &row.problems,
        };
        write_json_element(out, i, &entry)?;
    }
    write!(out, "],\"rejected\":[")?;
    for (i, rejected) in job
        .into_iter()
        .flat_map(|j| store.rejections(dataset.id, j.id))
        .enumerate()
    {
        write_json_element(out, i, &rejected?)?;
    }
    writeln!(out, "]}}")?;
    Ok(())
}

fn write_json_element(
    out: &mut impl Write,
    index: usize,
    value: &impl Serialize,
) -> anyhow::Result<()> {
    if index > 0 {
        out.write_all(b",")?;
    }
    serde_json::to_writer(&mut *out, value)?;
    Ok(())
}

/// `quern stats` of a cluster's nodes (or `quern dev`'s): every node's
/// part of each of the coordinators' jobs summed, then one job's files
/// (each node's counters of a file summed) and rejected records, streamed.
fn parts_stats(
    runtime: &tokio::runtime::Runtime,
    reader: &ClusterReader,
    args: StatsArgs,
) -> anyhow::Result<ExitCode> {
    let name = &args.dataset.dataset;
    let (shape, jobs) = reader.jobs(runtime.handle())?;
    let job = match args.job {
        Some(id) => Some(
            jobs.iter()
                .find(|j| j.job.get() == id)
                .with_context(|| format!("dataset {name:?} has no job {id} on any node"))?,
        ),
        None => jobs.last(),
    };
    let format = match shape.key_field {
        None => node::config::Format::Lines,
        Some(key_field) => node::config::Format::Tsv {
            key_field: key_field as usize,
        },
    };
    let totals = |j: &ClusterJob| JobTotals {
        files: j.files,
        problem_files: j.problem_files,
        bytes: j.bytes,
        read: j.counts.read,
        unique: j.counts.unique,
        duplicates: j.counts.duplicates,
        rejected: j.counts.rejected,
    };
    let out = &mut std::io::stdout().lock();
    if args.json {
        let dataset = serde_json::json!({
            "name": name,
            "format": format,
            "partitions": shape.partitions,
            "created_unix": shape.created_unix,
        });
        let jobs: Vec<_> = jobs
            .iter()
            .map(|j| {
                serde_json::json!({
                    "id": j.job,
                    "state": j.state(),
                    "nodes": j.parts.iter().map(|(node, _)| node).collect::<BTreeSet<_>>(),
                    "started_unix": j.started_unix,
                    "totals": totals(j),
                })
            })
            .collect();
        write!(
            out,
            "{{\"dataset\":{dataset},\"jobs\":{},\"files\":[",
            serde_json::Value::from(jobs)
        )?;
        let (mut files, mut rejected) = (0, 0);
        if let Some(job) = job {
            reader.files(runtime.handle(), job, |entry| match entry {
                JobEntry::File(f) => {
                    let entry = serde_json::json!({
                        "job": job.job,
                        "seq": f.seq,
                        "path": f.path.as_ref().map(|p| p.display().to_string()),
                        "size": f.size,
                        "read": f.counts.read,
                        "unique": f.counts.unique,
                        "duplicates": f.counts.duplicates,
                        "rejected": f.counts.rejected,
                        "problems": f.problems,
                    });
                    write_json_element(out, files, &entry).map_err(std::io::Error::other)?;
                    files += 1;
                    Ok(())
                }
                JobEntry::Rejected(r) => {
                    let entry = serde_json::json!({
                        "file": r.file,
                        "offset": r.offset,
                        "path": r.path.as_ref().map(|p| String::from_utf8_lossy(p).into_owned()),
                        "rejection": r.rejection,
                        "excerpt": r.excerpt,
                    });
                    if rejected == 0 {
                        out.write_all(b"],\"rejected\":[")?;
                    }
                    write_json_element(out, rejected, &entry).map_err(std::io::Error::other)?;
                    rejected += 1;
                    Ok(())
                }
            })?;
        }
        if rejected == 0 {
            out.write_all(b"],\"rejected\":[")?;
        }
        writeln!(out, "]}}")?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "dataset {name:?}: {format}, {} partitions, created {}",
        shape.partitions,
        timestamp(shape.created_unix)
    )?;
    write_jobs_header(out)?;
    for j in &jobs {
        write_job_row(out, j.job.get(), j.started_unix, &totals(j), &j.state())?;
    }
    let Some(job) = job else {
        return Ok(ExitCode::SUCCESS);
    };
    write_files_header(out, job.job.get())?;
    let mut rejected = 0;
    reader.files(runtime.handle(), job, |entry| match entry {
        JobEntry::File(f) => {
            let path = f.path.as_ref().map_or_else(
                || format!("(file {}, listed by no node)", f.seq),
                |p| p.display().to_string(),
            );
            let c = FileCounts {
                read: f.counts.read,
                unique: f.counts.unique,
                duplicates: f.counts.duplicates,
                rejected: f.counts.rejected,
            };
            write_file_row(out, &c, &path, &f.problems)
        }
        JobEntry::Rejected(r) => {
            if rejected == 0 {
                writeln!(out, "\nrejected records of job {}:", job.job)?;
            }
            rejected += 1;
            let path = r.path.as_ref().map_or_else(
                || format!("file {}", r.file),
                |p| String::from_utf8_lossy(p).into_owned(),
            );
            writeln!(out, "{path}:{}: {}  [{}]", r.offset, r.rejection, r.excerpt)
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::{count, skipped_links_note};

    #[test]
    fn skipped_links_are_counted_in_words() {
        assert_eq!(
            skipped_links_note(1),
            "skipped 1 symbolic link inside directories (not input files); --follow reads them"
        );
        assert!(skipped_links_note(1200).starts_with("skipped 1,200 symbolic links "));
    }

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1234567), "1,234,567");
    }
}
