//! Fuzz target of a node's input: damaged gzip and zstd files (and
//! arbitrary bytes) opened as a scanner opens them and split into records,
//! which must end in records and an error, never a panic, within a bound
//! on the records read.
//!
//! `cargo test` runs proptest's default cases; on demand:
//! `PROPTEST_CASES=100000 cargo test --release -p node --test fuzz`.

use std::io::Write;

use node::input::read_buffers::ReadBuffer;
use node::input::records::RecordReader;
use node::input::source::Source;
use proptest::prelude::*;

#[path = "../../proto-schema/tests/support/damaged.rs"]
mod damaged;
use damaged::damaged;

const MAX_RECORD: u64 = 256;
/// Far more records than the largest damaged input decompresses to.
const MAX_RECORDS: usize = 1 << 22;

fn lines() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..20).prop_map(|lines| {
        let mut out = Vec::new();
        for line in lines {
            out.extend_from_slice(&line);
            out.push(b'\n');
        }
        out
    })
}

fn gzip(data: Vec<u8>) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&data).unwrap();
    encoder.finish().unwrap()
}

fn zstd(data: Vec<u8>) -> Vec<u8> {
    zstd::encode_all(&data[..], 1).unwrap()
}

fn compressed() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![lines().prop_map(gzip), lines().prop_map(zstd)]
}

proptest! {
    #[test]
    fn fuzz_record_reader_over_gzip_and_zstd(bytes in damaged(compressed())) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("input");
        std::fs::write(&path, &bytes).unwrap();
        let Ok(source) = Source::open_whole(&path, ReadBuffer::unpooled(4096)) else {
            return Ok(());
        };
        let buffer = ReadBuffer::unpooled(RecordReader::buffer_len(4096, MAX_RECORD));
        let mut reader =
            RecordReader::new(source.reader, 0, false, None, None, MAX_RECORD, buffer).unwrap();
        let mut records = 0;
        while let Ok(Some(_)) = reader.next_event() {
            records += 1;
            prop_assert!(records < MAX_RECORDS);
        }
    }
}
