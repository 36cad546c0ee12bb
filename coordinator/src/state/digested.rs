//! A range of an inventory sent as a digest (`InventoryRange::Digest`),
//! checked against the catalogue.
//!
//! The range is accepted when the files the last finished submission
//! listed between its first and last path are as many as it claims and
//! their catalogue entries, in path order, have its digest: exactly what
//! a `Files` range of the same entries would have found unchanged, entry
//! by entry. Any difference (a changed, new or gone file) leaves it
//! unaccepted, and the submitter sends its files. The check reads at most
//! the claimed count plus `MAX_RANGE_FILES` catalogue entries, whatever
//! lies in the range: past that, it is not accepted.

use proto_schema::command::{EntriesDigest, MAX_RANGE_FILES};
use proto_schema::ids::DatasetId;
use rocksdb::{DB, ReadOptions};

use super::StateError;
use super::apply::Aborted;
use super::keys::{self, CF_FILES};
use super::listed::Listing;
use super::records::{CatalogEntry, Stored};

/// What a digest range claims.
pub struct Claim<'a> {
    pub first: &'a str,
    pub last: &'a str,
    pub files: u32,
    pub digest: [u8; 16],
}

/// The paths `claim` stands for, if the catalogue agrees with it.
/// `last_listing` is the dataset's last finished submission's.
pub fn check(
    db: &DB,
    dataset: DatasetId,
    last_listing: &mut Listing<'_>,
    aborted: &mut Aborted<'_>,
    claim: &Claim<'_>,
) -> Result<Option<Vec<Vec<u8>>>, StateError> {
    let claimed = claim.files as usize;
    let mut opts = ReadOptions::default();
    // Each block is read once: keep the cache for indexes and filters.
    opts.fill_cache(false);
    let mut bound = keys::file(dataset, claim.last);
    bound.push(0);
    opts.set_iterate_upper_bound(bound);
    let cf = db
        .cf_handle(CF_FILES)
        .expect("column family created at open");
    let mut entries = db.raw_iterator_cf_opt(cf, opts);
    entries.seek(keys::file(dataset, claim.first));
    let mut digest = EntriesDigest::new();
    let mut paths = Vec::with_capacity(claimed);
    let mut read = 0;
    while let (Some(key), Some(value)) = (entries.key(), entries.value()) {
        read += 1;
        if read > claimed + MAX_RANGE_FILES {
            return Ok(None);
        }
        let path = keys::file_path(key);
        if let Some(entry) = aborted.settle(CatalogEntry::decode(value)?)?
            && last_listing.lists(&entry, path)?
        {
            if paths.len() == claimed {
                return Ok(None);
            }
            digest.add(path, entry.size, entry.mtime_ns, entry.checksum.as_deref());
            paths.push(path.to_vec());
        }
        entries.next();
    }
    entries.status()?;
    Ok((paths.len() == claimed && digest.finish() == claim.digest).then_some(paths))
}
