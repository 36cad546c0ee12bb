//! `quern export` and `quern get`.

use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
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

/// The one store to read under `data`; `what` names the reader that
/// cannot read several yet.
pub fn open_reader(data: &Path, cache_bytes: u64, what: &str) -> anyhow::Result<Store> {
    let mut stores = open_readers(data, cache_bytes)?;
    if stores.len() > 1 {
        anyhow::bail!(
            "{} holds the stores of {} nodes, and {what} reads one store so far: give \
             --data {}",
            data.display(),
            stores.len(),
            embedded::node_dir(data, proto_schema::ids::NodeId(1)).display()
        );
    }
    Ok(stores.remove(0))
}

pub fn export(data: &Path, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let stores = open_readers(data, READER_CACHE_BYTES)?;
    let datasets = stores
        .iter()
        .map(|store| store.existing_dataset(&args.dataset.dataset))
        .collect::<Result<Vec<_>, _>>()?;
    let parts: Vec<_> = stores.iter().zip(&datasets).collect();
    match &args.output {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            node::export::export_all(&parts, &mut BufWriter::with_capacity(1 << 20, file))?
        }
        None => {
            let stdout = std::io::stdout().lock();
            node::export::export_all(&parts, &mut BufWriter::with_capacity(1 << 20, stdout))?
        }
    };
    Ok(ExitCode::SUCCESS)
}

pub fn get(data: &Path, args: GetArgs) -> anyhow::Result<ExitCode> {
    let key = args.key.as_bytes();
    let mut found = None;
    // The nodes' stores in order: the first that holds the key owns it.
    for store in open_readers(data, READER_CACHE_BYTES)? {
        let dataset = store.existing_dataset(&args.dataset.dataset)?;
        found = node::lookup::get(&store, &dataset, key)?;
        if found.is_some() {
            break;
        }
    }
    let Some(found) = found else {
        eprintln!(
            "quern: {} is not in dataset {:?}",
            key.escape_ascii(),
            args.dataset.dataset
        );
        return Ok(ExitCode::FAILURE);
    };
    let mut out = std::io::stdout().lock();
    out.write_all(&found.record)?;
    let place = found.path.map_or_else(
        || "an unknown file".to_string(),
        |p| p.display().to_string(),
    );
    writeln!(
        out,
        "\n\tfirst seen at {place}:{} (job {})",
        found.first_seen.position.offset, found.first_seen.job
    )?;
    Ok(ExitCode::SUCCESS)
}
