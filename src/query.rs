//! `quern export` and `quern get`: a local store (`--data`), or with
//! coordinators every node of the cluster (`node::reads`).

use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use node::store::catalog::DatasetInfo;
use node::store::{Access, Store};

use crate::args::{ExportArgs, GetArgs};

/// Readers need little memory: a block cache for lookups.
const READER_CACHE_BYTES: u64 = 32 << 20;

/// The stores to read under `data`: the directory itself, or the nodes'
/// stores `quern dev` left there, in node order.
pub fn open_readers(data: &Path, cache_bytes: u64) -> anyhow::Result<Vec<Store>> {
    let mut dirs = embedded::node_dirs(data);
    if dirs.is_empty() {
        dirs.push(data.to_path_buf());
    }
    dirs.iter()
        .map(|dir| {
            Store::open(dir, cache_bytes, Access::ReadOnly)
                .with_context(|| format!("opening the store at {}", dir.display()))
        })
        .collect()
}

/// The stores that hold dataset `name`, each with its `DatasetInfo` (a
/// node that never ran a job of it has none); an error naming what the
/// first store has if none holds it.
fn holding<'a>(stores: &'a [Store], name: &str) -> anyhow::Result<Vec<(&'a Store, DatasetInfo)>> {
    let mut holding = Vec::new();
    for store in stores {
        if let Some(dataset) = store.dataset(name)? {
            holding.push((store, dataset));
        }
    }
    if holding.is_empty() {
        stores[0].existing_dataset(name)?;
    }
    Ok(holding)
}

pub fn export(data: &Path, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let out = &mut BufWriter::with_capacity(1 << 20, &mut out);
    if !args.client.coordinators.is_empty() {
        let (runtime, reader) = crate::cluster_client::reader(&args.client, &args.dataset.dataset)?;
        reader.export(runtime.handle(), out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let stores = open_readers(data, READER_CACHE_BYTES)?;
    let holding = holding(&stores, &args.dataset.dataset)?;
    let parts: Vec<_> = holding.iter().map(|(store, d)| (*store, d)).collect();
    node::export::export_all(&parts, out)?;
    Ok(ExitCode::SUCCESS)
}

pub fn get(data: &Path, args: GetArgs) -> anyhow::Result<ExitCode> {
    let key = args.key.as_bytes();
    if !args.client.coordinators.is_empty() {
        return cluster_get(&args, key);
    }
    let stores = open_readers(data, READER_CACHE_BYTES)?;
    let holding = holding(&stores, &args.dataset.dataset)?;
    let Some(found) = node::lookup::get_in(&holding, key)? else {
        return not_found(key, &args);
    };
    print_found(
        &found.record,
        found.path.as_deref(),
        found.first_seen.position.offset,
        &match found.cluster_job {
            Some(job) => format!("{job} of the coordinators"),
            None => found.first_seen.job.to_string(),
        },
    )
}

/// `get` on a cluster: the key's owner asked first, then every node; the
/// job named is the coordinators'.
fn cluster_get(args: &GetArgs, key: &[u8]) -> anyhow::Result<ExitCode> {
    let (runtime, reader) = crate::cluster_client::reader(&args.client, &args.dataset.dataset)?;
    let Some(found) = reader.get(runtime.handle(), key)? else {
        return not_found(key, args);
    };
    let job = found.job.map_or_else(
        || "unknown".to_string(),
        |job| format!("{job} of the coordinators"),
    );
    print_found(&found.record, found.path.as_deref(), found.offset, &job)
}

fn not_found(key: &[u8], args: &GetArgs) -> anyhow::Result<ExitCode> {
    tell!(
        "quern: {} is not in dataset {:?}",
        key.escape_ascii(),
        args.dataset.dataset
    );
    Ok(ExitCode::FAILURE)
}

/// A record and where it was first seen, as `get` prints it.
fn print_found(
    record: &[u8],
    path: Option<&Path>,
    offset: u64,
    job: &str,
) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    out.write_all(record)?;
    let place = path.map_or_else(
        || "an unknown file".to_string(),
        |p| p.display().to_string(),
    );
    writeln!(out, "\n\tfirst seen at {place}:{offset} (job {job})")?;
    Ok(ExitCode::SUCCESS)
}
