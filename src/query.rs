//! `quern export` and `quern get`.

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
    let stores = open_readers(data, READER_CACHE_BYTES)?;
    let holding = holding(&stores, &args.dataset.dataset)?;
    let parts: Vec<_> = holding.iter().map(|(store, d)| (*store, d)).collect();
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
    let stores = open_readers(data, READER_CACHE_BYTES)?;
    let holding = holding(&stores, &args.dataset.dataset)?;
    let Some(found) = node::lookup::get_in(&holding, key)? else {
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
    let job = match found.cluster_job {
        Some(job) => format!("job {job} of the coordinators"),
        None => format!("job {}", found.first_seen.job),
    };
    writeln!(
        out,
        "\n\tfirst seen at {place}:{} ({job})",
        found.first_seen.position.offset
    )?;
    Ok(ExitCode::SUCCESS)
}
