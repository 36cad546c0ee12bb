//! Fuzz target of the manifest parser: manifests of TSV and JSON lines,
//! damaged or arbitrary, read as `quern submit` reads them: each line is
//! an entry within the coordinators' bounds or an error naming its line,
//! never a panic.
//!
//! `cargo test` runs proptest's default cases; on demand:
//! `PROPTEST_CASES=100000 cargo test --release -p coordinator-client --test fuzz`.

use coordinator_client::manifest::{ManifestFormat, ManifestReader};
use proptest::prelude::*;

#[path = "../../../proto-schema/tests/support/damaged.rs"]
mod damaged;
use damaged::damaged;

fn tsv_line() -> impl Strategy<Value = String> {
    (
        "/[a-z/.]{1,30}",
        any::<u64>(),
        any::<i32>(),
        "[0-9a-f]{0,40}",
    )
        .prop_map(|(path, size, mtime, checksum)| {
            format!("{path}\t{size}\t{mtime}.5\t{checksum}\n")
        })
}

fn json_line() -> impl Strategy<Value = String> {
    ("/[a-z/.]{1,30}", any::<u64>(), any::<i32>(), "[0-9a-f]{0,40}").prop_map(
        |(path, size, mtime, checksum)| {
            format!("{{\"path\":\"{path}\",\"size\":{size},\"mtime\":{mtime},\"checksum\":\"{checksum}\"}}\n")
        },
    )
}

fn manifest(line: impl Strategy<Value = String>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(line, 1..6).prop_map(|lines| lines.concat().into_bytes())
}

fn read(bytes: &[u8], format: ManifestFormat) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manifest");
    std::fs::write(&path, bytes).unwrap();
    let lines = bytes.split_inclusive(|&b| b == b'\n').count();
    let mut read = 0;
    for entry in ManifestReader::open(&path, format).unwrap() {
        read += 1;
        match entry {
            Ok(entry) => {
                let cmd = proto_schema::command::Command::SubmitChunk {
                    dataset: "ds".into(),
                    submission: proto_schema::ids::JobId(1),
                    first_file: 0,
                    files: vec![entry],
                };
                prop_assert!(cmd.check_bounds().is_ok(), "{cmd:?}");
            }
            Err(e) => prop_assert!(e.to_string().contains(&format!(":{read}: ")), "{e}"),
        }
    }
    prop_assert_eq!(read, lines);
    Ok(())
}

proptest! {
    #[test]
    fn fuzz_manifest_tsv_lines(bytes in damaged(manifest(tsv_line()))) {
        read(&bytes, ManifestFormat::Tsv)?;
    }

    #[test]
    fn fuzz_manifest_json_lines(bytes in damaged(manifest(json_line()))) {
        read(&bytes, ManifestFormat::Jsonl)?;
    }
}
