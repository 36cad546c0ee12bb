//! Byte layout of every key and value in the store. All integers are
//! big-endian so that byte order is numeric order.
//!
//! Data column family:
//! ```text
//! dataset u32 | partition u16 | key bytes      -> job u32 | file u32 | offset u64 | value bytes
//! dataset u32 | 0xFFFF        | job u32        -> job record (JSON): present iff the job committed
//! ```
//! A partition is a contiguous key range, so it can move between nodes as a
//! range. The job record sorts after every partition of its dataset.
//!
//! Meta column family: one tag byte, then big-endian fields.
//! ```text
//! 'N'                                     -> next dataset id
//! 'D' | name                              -> dataset (JSON)
//! 'J' | dataset | job                     -> job (JSON)
//! 'F' | dataset | job | file              -> listed input file
//! 'C' | dataset | job | file              -> per-file counters (merge: add)
//! 'P' | dataset | job | file              -> file problem (JSON)
//! 'Q' | dataset | job | file | offset     -> rejected record (JSON)
//! ```

use proto_schema::{DatasetId, Position};

pub const JOB_RECORD_PARTITION: u16 = u16::MAX;
pub const DATA_KEY_PREFIX_LEN: usize = 6;
pub const POSITION_LEN: usize = 16;

pub fn partition_prefix(dataset: DatasetId, partition: u16) -> [u8; DATA_KEY_PREFIX_LEN] {
    let mut out = [0u8; DATA_KEY_PREFIX_LEN];
    out[..4].copy_from_slice(&dataset.get().to_be_bytes());
    out[4..].copy_from_slice(&partition.to_be_bytes());
    out
}

/// Writes the store key of a record into `out`, replacing its contents.
pub fn data_key(dataset: DatasetId, partition: u16, key: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&partition_prefix(dataset, partition));
    out.extend_from_slice(key);
}

pub fn job_record_key(dataset: DatasetId, job: u32) -> Vec<u8> {
    let mut out = partition_prefix(dataset, JOB_RECORD_PARTITION).to_vec();
    out.extend_from_slice(&job.to_be_bytes());
    out
}

/// Where a stored record was first seen, across jobs: jobs in commit
/// order, then position within the job. Comparing the encoded bytes
/// compares positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FirstSeen {
    pub job: u32,
    pub position: Position,
}

/// Writes a stored value into `out`, replacing its contents.
pub fn data_value(first_seen: FirstSeen, value: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&first_seen.job.to_be_bytes());
    out.extend_from_slice(&first_seen.position.file.to_be_bytes());
    out.extend_from_slice(&first_seen.position.offset.to_be_bytes());
    out.extend_from_slice(value);
}

/// Splits a stored value; `None` if it is too short to be one of ours.
pub fn parse_data_value(bytes: &[u8]) -> Option<(FirstSeen, &[u8])> {
    if bytes.len() < POSITION_LEN {
        return None;
    }
    let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    let first_seen = FirstSeen {
        job: u32_at(0),
        position: Position {
            file: u32_at(4),
            offset: u64::from_be_bytes(bytes[8..16].try_into().unwrap()),
        },
    };
    Some((first_seen, &bytes[POSITION_LEN..]))
}

pub mod meta {
    use proto_schema::DatasetId;

    pub const NEXT_DATASET: &[u8] = b"N";
    pub const DATASET: u8 = b'D';
    pub const JOB: u8 = b'J';
    pub const FILE: u8 = b'F';
    pub const COUNTS: u8 = b'C';
    pub const PROBLEM: u8 = b'P';
    pub const REJECTED: u8 = b'Q';

    /// The tags whose keys are scoped to one job.
    pub const JOB_SCOPED: [u8; 4] = [FILE, COUNTS, PROBLEM, REJECTED];

    pub fn dataset(name: &str) -> Vec<u8> {
        let mut out = vec![DATASET];
        out.extend_from_slice(name.as_bytes());
        out
    }

    pub fn job(dataset: DatasetId, job: u32) -> Vec<u8> {
        scoped(JOB, dataset, &[job])
    }

    /// All jobs of a dataset: `[start, end)`.
    pub fn jobs_of(dataset: DatasetId) -> (Vec<u8>, Vec<u8>) {
        prefix_range(scoped(JOB, dataset, &[]))
    }

    pub fn file_scoped(tag: u8, dataset: DatasetId, job: u32, file: u32) -> Vec<u8> {
        scoped(tag, dataset, &[job, file])
    }

    pub fn rejected(dataset: DatasetId, job: u32, file: u32, offset: u64) -> Vec<u8> {
        let mut out = scoped(REJECTED, dataset, &[job, file]);
        out.extend_from_slice(&offset.to_be_bytes());
        out
    }

    /// Every key of `tag` for one dataset: `[start, end)`.
    pub fn dataset_range(tag: u8, dataset: DatasetId) -> (Vec<u8>, Vec<u8>) {
        prefix_range(scoped(tag, dataset, &[]))
    }

    /// Every key of `tag` for one job: `[start, end)`.
    pub fn job_range(tag: u8, dataset: DatasetId, job: u32) -> (Vec<u8>, Vec<u8>) {
        prefix_range(scoped(tag, dataset, &[job]))
    }

    /// Every key starting with `prefix`: `[prefix, successor)`.
    fn prefix_range(prefix: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
        let mut end = prefix.clone();
        while let Some(last) = end.pop() {
            if last < u8::MAX {
                end.push(last + 1);
                break;
            }
        }
        (prefix, end)
    }

    fn scoped(tag: u8, dataset: DatasetId, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + 4 * ids.len());
        out.push(tag);
        out.extend_from_slice(&dataset.get().to_be_bytes());
        for id in ids {
            out.extend_from_slice(&id.to_be_bytes());
        }
        out
    }

    /// The file number of a file-scoped key.
    pub fn file_of(key: &[u8]) -> Option<u32> {
        Some(u32::from_be_bytes(key.get(9..13)?.try_into().ok()?))
    }

    /// The offset of a rejected-record key.
    pub fn offset_of(key: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(key.get(13..21)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_first_seen() -> impl Strategy<Value = FirstSeen> {
        (any::<u32>(), any::<u32>(), any::<u64>()).prop_map(|(job, file, offset)| FirstSeen {
            job,
            position: Position { file, offset },
        })
    }

    proptest! {
        #[test]
        fn values_round_trip_and_sort_by_position(a in arb_first_seen(), b in arb_first_seen(), value in proptest::collection::vec(any::<u8>(), 0..20)) {
            let (mut ea, mut eb) = (Vec::new(), Vec::new());
            data_value(a, &value, &mut ea);
            data_value(b, b"", &mut eb);
            prop_assert_eq!(parse_data_value(&ea), Some((a, &value[..])));
            prop_assert_eq!(ea[..POSITION_LEN].cmp(&eb[..POSITION_LEN]), a.cmp(&b));
        }

        /// Store keys order by dataset, then partition, then key bytes.
        #[test]
        fn data_keys_sort_like_their_parts(
            a in (0u32..3, 0u16..3, proptest::collection::vec(any::<u8>(), 0..6)),
            b in (0u32..3, 0u16..3, proptest::collection::vec(any::<u8>(), 0..6)),
        ) {
            let (mut ka, mut kb) = (Vec::new(), Vec::new());
            data_key(DatasetId(a.0), a.1, &a.2, &mut ka);
            data_key(DatasetId(b.0), b.1, &b.2, &mut kb);
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }
    }

    #[test]
    fn job_records_sort_after_every_partition() {
        let mut last_partition = Vec::new();
        data_key(
            DatasetId(7),
            JOB_RECORD_PARTITION - 1,
            &[0xff; 8],
            &mut last_partition,
        );
        assert!(job_record_key(DatasetId(7), 0) > last_partition);
        assert!(
            job_record_key(DatasetId(7), u32::MAX) < partition_prefix(DatasetId(8), 0).to_vec()
        );
        assert_eq!(parse_data_value(&[0; 15]), None);
    }

    #[test]
    fn meta_keys_expose_their_file_and_offset() {
        let key = meta::rejected(DatasetId(1), 2, 3, 4);
        assert_eq!(meta::file_of(&key), Some(3));
        assert_eq!(meta::offset_of(&key), Some(4));
        let (start, end) = meta::job_range(meta::REJECTED, DatasetId(1), 2);
        assert!(start <= key && key < end);
    }
}
