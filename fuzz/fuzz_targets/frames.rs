//! Frames and the record batches in them. The first byte picks what the
//! rest is: a stream of frames (checksums and all), or a batch's payload
//! framed with a valid checksum, so only the batch's own validation stands
//! between the bytes and reading them in place.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use proto_schema::{FrameKind, FrameReader, ValidBatch, write_frame};

fn read_frames(stream: &[u8]) {
    let mut reader = FrameReader::new(Cursor::new(stream), 1 << 20);
    while let Ok(Some(frame)) = reader.next_frame() {
        if let Ok(batch) = frame.into_batch() {
            let owned = batch.to_owned_batch();
            let again = ValidBatch::new(owned.to_archive()).expect("a batch read re-validates");
            assert_eq!(again.to_owned_batch(), owned);
        }
    }
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&mode, rest)) = bytes.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        read_frames(rest);
    } else {
        let mut framed = Vec::new();
        write_frame(&mut framed, FrameKind::RecordBatch, rest).unwrap();
        read_frames(&framed);
    }
});
