//! A manifest line, TSV or JSON: an entry within the coordinators' bounds,
//! or an error.
#![no_main]

use coordinator_client::manifest::{ManifestFormat, parse_line};
use libfuzzer_sys::fuzz_target;
use proto_schema::command::Command;

fuzz_target!(|bytes: &[u8]| {
    for format in [ManifestFormat::Tsv, ManifestFormat::Jsonl] {
        if let Ok(entry) = parse_line(format, bytes) {
            let chunk = Command::SubmitChunk {
                dataset: "ds".into(),
                submission: proto_schema::ids::JobId(1),
                first_file: 0,
                files: vec![entry],
            };
            assert!(chunk.check_bounds().is_ok(), "{chunk:?}");
        }
    }
});
