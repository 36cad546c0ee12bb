//! The client's side of a submission alone, without coordinators: reads a
//! manifest (validating it, and sorting it when out of path order), then
//! cuts the entries into ranges and digests them, as `quern submit` does
//! before and while it sends. Prints how long each part took.
//!
//!     cargo run --release -p coordinator-client --example inventory_read -- MANIFEST [SORT_MIB]

use std::time::Instant;

// The allocator `quern` is built on (without its per-actor accounts).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use coordinator_client::by_digest::Ranges;
use coordinator_client::inventory::read_manifest;
use coordinator_client::path_order::SortMemory;
use proto_schema::command::InventoryRange;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let manifest = args
        .next()
        .ok_or("usage: inventory_read MANIFEST [SORT_MIB]")?;
    let sort_mib: usize = args.next().map_or(Ok(64), |m| m.parse())?;
    let memory = SortMemory {
        bytes: sort_mib << 20,
        temp_dir: std::env::temp_dir(),
    };
    let started = Instant::now();
    let inventory = read_manifest(manifest.as_ref(), &memory)?;
    let read = started.elapsed();
    let files = inventory.files();
    let mut entries_error = None;
    let entries = inventory.map_while(|entry| entry.map_err(|e| entries_error = Some(e)).ok());
    let (mut ranges, mut digests) = (0u64, 0u128);
    for range in Ranges::new(entries) {
        ranges += 1;
        // What a digest command carries: folded, so none is optimised away.
        if let InventoryRange::Digest { digest, .. } = range.digest() {
            digests ^= u128::from_le_bytes(digest);
        }
    }
    if let Some(error) = entries_error {
        return Err(error.into());
    }
    let total = started.elapsed();
    println!(
        "{files} files: read and sorted in {:.2} s, {ranges} ranges digested in {:.2} s, {:.2} s in all ({digests:x})",
        read.as_secs_f64(),
        (total - read).as_secs_f64(),
        total.as_secs_f64(),
    );
    Ok(())
}
