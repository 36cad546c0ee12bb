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

/// The store to read under `data`: the directory itself, or the node's
/// store `quern dev` left there.
pub fn open_reader(data: &Path, cache_bytes: u64) -> anyhow::Result<Store> {
    let dir = match embedded::node_dirs(data).as_slice() {
        [] => data.to_path_buf(),
        [one] => one.clone(),
        many => anyhow::bail!(
            "{} holds the stores of {} nodes; reading several as one dataset is not supported yet",
            data.display(),
            many.len()
        ),
    };
    Store::open(&dir, cache_bytes, Access::ReadOnly)
        .with_context(|| format!("opening the store at {}", dir.display()))
}

pub fn export(data: &Path, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let store = open_reader(data, READER_CACHE_BYTES)?;
    let dataset = store.existing_dataset(&args.dataset.dataset)?;
    match &args.output {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            node::export::export(
                &store,
                &dataset,
                &mut BufWriter::with_capacity(1 << 20, file),
            )?
        }
        None => {
            let stdout = std::io::stdout().lock();
            node::export::export(
                &store,
                &dataset,
                &mut BufWriter::with_capacity(1 << 20, stdout),
            )?
        }
    };
    Ok(ExitCode::SUCCESS)
}

pub fn get(data: &Path, args: GetArgs) -> anyhow::Result<ExitCode> {
    let store = open_reader(data, READER_CACHE_BYTES)?;
    let dataset = store.existing_dataset(&args.dataset.dataset)?;
    let key = args.key.as_bytes();
    let Some(found) = node::lookup::get(&store, &dataset, key)? else {
        eprintln!(
            "quern: {} is not in dataset {:?}",
            key.escape_ascii(),
            dataset.name
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
