//! The correctness oracle of every export: `LC_ALL=C sort -u` of the
//! inputs, decompressed as Quern reads them (gzip and zstd by their magic
//! bytes, anything else as stored).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A file's bytes as `sort` would read them after decompression.
pub fn decompressed(path: &Path) -> Vec<u8> {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut out = Vec::new();
    if raw.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .expect("gzip decodes");
    } else if raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        out = zstd::decode_all(&raw[..]).expect("zstd decodes");
    } else {
        out = raw;
    }
    out
}

/// `LC_ALL=C sort -u` of `files`, decompressed. Each file's last line
/// stays a line of its own, newline or not, as `sort FILE...` reads it.
pub fn sort_u(files: &[PathBuf]) -> Vec<u8> {
    let mut child = Command::new("sort")
        .env("LC_ALL", "C")
        .arg("-u")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("GNU sort is installed");
    // sort reads all of its input before it writes: no deadlock.
    let mut input = child.stdin.take().expect("piped");
    for file in files {
        let bytes = decompressed(file);
        input.write_all(&bytes).expect("sort takes its input");
        if bytes.last().is_some_and(|&b| b != b'\n') {
            input.write_all(b"\n").expect("sort takes its input");
        }
    }
    drop(input);
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_end(&mut out)
        .expect("sort's output");
    assert!(child.wait().expect("sort ran").success(), "sort failed");
    out
}

/// The oracle of every file directly in `dir`.
pub fn sort_u_dir(dir: &Path) -> Vec<u8> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    sort_u(&files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A last line without its newline is a line of its own; compressed
    /// files are read decompressed; duplicates across files go.
    #[test]
    fn the_oracle_is_sort_u_of_the_decompressed_files() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("a.txt");
        std::fs::write(&plain, b"b\na\nz").unwrap();
        let gz = dir.path().join("b.gz");
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(b"y\na\n").unwrap();
        std::fs::write(&gz, encoder.finish().unwrap()).unwrap();
        let zst = dir.path().join("c.zst");
        std::fs::write(&zst, zstd::encode_all(&b"z\nx"[..], 1).unwrap()).unwrap();
        assert_eq!(sort_u_dir(dir.path()), b"a\nb\nx\ny\nz\n");
    }
}
