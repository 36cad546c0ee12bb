//! What the embedded cluster's tests share: the oracle.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The oracle: `LC_ALL=C sort -u` of the decompressed files in `dir`, each
/// passed whole (a last line without a newline stays a line of its own,
/// as `sort FILE...` reads it).
pub fn sort_u(dir: &Path) -> Vec<u8> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let plain_dir = tempfile::tempdir().unwrap();
    let mut plain = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let path = plain_dir.path().join(i.to_string());
        std::fs::write(&path, decompressed(file)).unwrap();
        plain.push(path);
    }
    let mut child = Command::new("sort")
        .env("LC_ALL", "C")
        .arg("-u")
        .args(&plain)
        .stdout(Stdio::piped())
        .spawn()
        .expect("GNU sort is installed");
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    assert!(child.wait().unwrap().success());
    out
}

fn decompressed(file: &Path) -> Vec<u8> {
    let bytes = std::fs::read(file).unwrap();
    match file.extension().and_then(|e| e.to_str()) {
        Some("gz") => {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(&bytes[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        }
        Some("zst") => zstd::decode_all(&bytes[..]).unwrap(),
        _ => bytes,
    }
}
