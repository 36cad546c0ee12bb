//! The snapshot file: the state column families as a stream of records.
//!
//! Layout: an 8-byte magic, then records
//! `cf (u8) | key len (u32 LE) | value len (u32 LE) | key | value | CRC-32`
//! (the CRC covers everything before it in the record), then an end record
//! `0xFF | record count (u64 LE) | CRC-32`. Writing and reading go one
//! record at a time, so neither side ever holds more than one record;
//! a reader checks every length, checksum and the final count, so a
//! truncated or corrupt snapshot is an error naming the byte offset.

use std::io::{self, Read, Write};

/// The version is the state's layout (`LAYOUT` in `state`): a replica
/// refuses a snapshot of another layout.
pub const MAGIC: &[u8; 8] = b"QRNSNAP3";
const END: u8 = 0xFF;
/// Bounds on one record: far above any real key or value, far below what
/// could exhaust memory.
pub const MAX_KEY: usize = 64 << 10;
pub const MAX_VALUE: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O: {0}")]
    Io(#[from] io::Error),
    #[error("snapshot corrupt at byte {offset}: {reason}")]
    Corrupt { offset: u64, reason: String },
    #[error(
        "a state record of column family {cf} with a {key}-byte key and a {value}-byte value \
         exceeds a snapshot's bounds ({MAX_KEY} and {MAX_VALUE} bytes)"
    )]
    OutOfBounds { cf: u8, key: usize, value: usize },
}

pub struct SnapshotWriter<W: Write> {
    out: W,
    records: u64,
    bytes: u64,
}

impl<W: Write> SnapshotWriter<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        Ok(Self {
            out,
            records: 0,
            bytes: MAGIC.len() as u64,
        })
    }

    /// Writes one record; one out of bounds (which no command can write:
    /// `proto_schema::command::bounds`) is an error, and the snapshot
    /// is not finished.
    pub fn record(&mut self, cf: u8, key: &[u8], value: &[u8]) -> Result<(), SnapshotError> {
        if cf == END || key.len() > MAX_KEY || value.len() > MAX_VALUE {
            return Err(SnapshotError::OutOfBounds {
                cf,
                key: key.len(),
                value: value.len(),
            });
        }
        let mut head = [0u8; 9];
        head[0] = cf;
        head[1..5].copy_from_slice(&(key.len() as u32).to_le_bytes());
        head[5..9].copy_from_slice(&(value.len() as u32).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        crc.update(key);
        crc.update(value);
        self.out.write_all(&head)?;
        self.out.write_all(key)?;
        self.out.write_all(value)?;
        self.out.write_all(&crc.finalize().to_le_bytes())?;
        self.records += 1;
        self.bytes += (head.len() + key.len() + value.len() + 4) as u64;
        Ok(())
    }

    /// Writes the end record; returns the output, records and bytes written.
    pub fn finish(mut self) -> io::Result<(W, u64, u64)> {
        let mut end = [0u8; 9];
        end[0] = END;
        end[1..9].copy_from_slice(&self.records.to_le_bytes());
        self.out.write_all(&end)?;
        self.out.write_all(&crc32fast::hash(&end).to_le_bytes())?;
        self.bytes += 13;
        Ok((self.out, self.records, self.bytes))
    }
}

/// Reads records one at a time into reused buffers.
pub struct SnapshotReader<R: Read> {
    input: R,
    offset: u64,
    records: u64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl<R: Read> SnapshotReader<R> {
    pub fn new(mut input: R) -> Result<Self, SnapshotError> {
        let mut magic = [0u8; 8];
        read_exact(&mut input, &mut magic, 0)?;
        if &magic != MAGIC {
            let reason = if magic[..7] == MAGIC[..7] {
                "a snapshot of another state layout (from another quern version)"
            } else {
                "not a Quern snapshot (bad magic)"
            };
            return Err(SnapshotError::Corrupt {
                offset: 0,
                reason: reason.into(),
            });
        }
        Ok(Self {
            input,
            offset: 8,
            records: 0,
            key: Vec::new(),
            value: Vec::new(),
        })
    }

    fn corrupt(&self, reason: impl Into<String>) -> SnapshotError {
        SnapshotError::Corrupt {
            offset: self.offset,
            reason: reason.into(),
        }
    }

    /// The next record's column family index, with its key and value in
    /// `self.key` and `self.value`; `None` after a valid end record.
    pub fn next_record(&mut self) -> Result<Option<u8>, SnapshotError> {
        let mut head = [0u8; 9];
        read_exact(&mut self.input, &mut head, self.offset)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        if head[0] == END {
            let count = u64::from_le_bytes(head[1..9].try_into().expect("8 bytes"));
            self.check_crc(crc, 9)?;
            if count != self.records {
                return Err(self.corrupt(format!(
                    "end record counts {count} records, read {}",
                    self.records
                )));
            }
            return Ok(None);
        }
        let key_len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
        let value_len = u32::from_le_bytes(head[5..9].try_into().expect("4 bytes")) as usize;
        if key_len > MAX_KEY || value_len > MAX_VALUE {
            return Err(self.corrupt(format!(
                "record of {key_len}+{value_len} bytes exceeds the bounds"
            )));
        }
        self.key.resize(key_len, 0);
        self.value.resize(value_len, 0);
        read_exact(&mut self.input, &mut self.key, self.offset + 9)?;
        read_exact(
            &mut self.input,
            &mut self.value,
            self.offset + 9 + key_len as u64,
        )?;
        crc.update(&self.key);
        crc.update(&self.value);
        self.check_crc(crc, 9 + key_len + value_len)?;
        self.records += 1;
        Ok(Some(head[0]))
    }

    fn check_crc(&mut self, crc: crc32fast::Hasher, len: usize) -> Result<(), SnapshotError> {
        let mut stored = [0u8; 4];
        read_exact(&mut self.input, &mut stored, self.offset + len as u64)?;
        if u32::from_le_bytes(stored) != crc.finalize() {
            return Err(self.corrupt("checksum mismatch"));
        }
        self.offset += len as u64 + 4;
        Ok(())
    }
}

fn read_exact(input: &mut impl Read, buf: &mut [u8], offset: u64) -> Result<(), SnapshotError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => SnapshotError::Corrupt {
            offset,
            reason: "truncated".into(),
        },
        _ => SnapshotError::Io(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = SnapshotWriter::new(Vec::new()).unwrap();
        w.record(0, b"k1", b"v1").unwrap();
        w.record(3, b"", b"value").unwrap();
        let (bytes, records, len) = w.finish().unwrap();
        assert_eq!((records, len), (2, bytes.len() as u64));
        bytes
    }

    type Records = Vec<(u8, Vec<u8>, Vec<u8>)>;

    fn read_all(bytes: &[u8]) -> Result<Records, SnapshotError> {
        let mut r = SnapshotReader::new(bytes)?;
        let mut out = Vec::new();
        while let Some(cf) = r.next_record()? {
            out.push((cf, r.key.clone(), r.value.clone()));
        }
        Ok(out)
    }

    #[test]
    fn records_round_trip() {
        let records = read_all(&sample()).unwrap();
        assert_eq!(
            records,
            vec![
                (0, b"k1".to_vec(), b"v1".to_vec()),
                (3, Vec::new(), b"value".to_vec())
            ]
        );
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_an_error() {
        let bytes = sample();
        for len in 0..bytes.len() {
            assert!(
                read_all(&bytes[..len]).is_err(),
                "truncated to {len} bytes was accepted"
            );
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            assert!(read_all(&bad).is_err(), "flipped byte {i} was accepted");
        }
    }

    #[test]
    fn a_record_out_of_bounds_is_an_error_not_a_panic() {
        let mut w = SnapshotWriter::new(Vec::new()).unwrap();
        let long_key = vec![b'k'; MAX_KEY + 1];
        let err = w.record(4, &long_key, b"v").unwrap_err();
        assert!(matches!(err, SnapshotError::OutOfBounds { cf: 4, key, .. } if key == MAX_KEY + 1));
        assert!(w.record(END, b"k", b"v").is_err());
        w.record(4, &long_key[..MAX_KEY], b"v").unwrap();
    }

    #[test]
    fn a_snapshot_of_another_layout_says_so() {
        let mut bytes = sample();
        bytes[..8].copy_from_slice(b"QRNSNAP2");
        let err = read_all(&bytes).unwrap_err().to_string();
        assert!(err.contains("another state layout"), "{err}");
    }
}
