//! Reading what a submission sends: a manifest file (TSV or JSONL) or a
//! directory walk, as a stream of `FileEntry`s, one line or file at a
//! time. A bad line is an error naming the file and the line number.
//!
//! - TSV: `path<TAB>size<TAB>mtime[<TAB>checksum]`
//! - JSONL: `{"path": .., "size": .., "mtime": .., "checksum": ..}`
//!
//! `mtime` is seconds since the Unix epoch, with an optional fraction of
//! any length (kept to the nanosecond: GNU find's `%T@` prints ten
//! digits); `checksum` is hex (an MD5 is 32 digits) and may be empty or
//! absent. A line is at most `MAX_LINE_BYTES`. The format is the file's
//! extension (`.tsv`, `.jsonl`, `.ndjson`, `.json`) or else its first
//! byte (`{` is JSONL).

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use proto_schema::command::{Bounded, FileEntry, MAX_CHECKSUM_BYTES};

/// Most bytes of one manifest line: a longest path, escaped as JSON, and
/// its other fields fit. Checked as the line is read, so a file with no
/// newline is refused without being read into memory whole.
pub const MAX_LINE_BYTES: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFormat {
    Tsv,
    Jsonl,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{file}:{line}: {reason}")]
    Line {
        file: PathBuf,
        line: u64,
        reason: String,
    },
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Walk { path: PathBuf, reason: String },
}

impl ManifestFormat {
    /// The format of the manifest at `path`.
    pub fn detect(path: &Path) -> Result<Self, ManifestError> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("tsv") => return Ok(Self::Tsv),
            Some("jsonl" | "ndjson" | "json") => return Ok(Self::Jsonl),
            _ => {}
        }
        let io = |error| ManifestError::Io {
            path: path.to_owned(),
            error,
        };
        let mut first = Vec::new();
        File::open(path)
            .map_err(io)?
            .take(4096)
            .read_to_end(&mut first)
            .map_err(io)?;
        let first = first.iter().find(|b| !b.is_ascii_whitespace());
        Ok(if first == Some(&b'{') {
            Self::Jsonl
        } else {
            Self::Tsv
        })
    }
}

/// The entries of a manifest file, read line by line.
pub struct ManifestReader {
    path: PathBuf,
    format: ManifestFormat,
    reader: BufReader<File>,
    line: u64,
    buf: Vec<u8>,
    checksum: Vec<u8>,
}

impl ManifestReader {
    pub fn open(path: &Path, format: ManifestFormat) -> Result<Self, ManifestError> {
        let file = File::open(path).map_err(|error| ManifestError::Io {
            path: path.to_owned(),
            error,
        })?;
        Ok(Self {
            path: path.to_owned(),
            format,
            reader: BufReader::with_capacity(1 << 20, file),
            line: 0,
            buf: Vec::new(),
            checksum: Vec::new(),
        })
    }

    /// The manifest's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next line's entry and its number, borrowed from the reader's
    /// buffers: no allocation per line (but a JSONL path's).
    pub fn next_entry(&mut self) -> Option<Result<(LineEntry<'_>, u64), ManifestError>> {
        self.buf.clear();
        let limit = MAX_LINE_BYTES as u64 + 1;
        match (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.buf)
        {
            Ok(0) => None,
            Ok(read) if read as u64 == limit && self.buf.last() != Some(&b'\n') => {
                self.line += 1;
                // The rest of the line is skipped: the next is read whole.
                let skipped = self.reader.skip_until(b'\n');
                Some(Err(match skipped {
                    Ok(_) => ManifestError::Line {
                        file: self.path.clone(),
                        line: self.line,
                        reason: format!("longer than {MAX_LINE_BYTES} bytes"),
                    },
                    Err(error) => ManifestError::Io {
                        path: self.path.clone(),
                        error,
                    },
                }))
            }
            Ok(_) => {
                self.line += 1;
                let line = self.line;
                Some(
                    parse_entry(self.format, &self.buf, &mut self.checksum)
                        .map(|entry| (entry, line))
                        .map_err(|reason| ManifestError::Line {
                            file: self.path.clone(),
                            line,
                            reason,
                        }),
                )
            }
            Err(error) => Some(Err(ManifestError::Io {
                path: self.path.clone(),
                error,
            })),
        }
    }
}

/// A manifest line's entry, its path and checksum borrowed from the line
/// (a JSONL path with escapes is decoded into a string of its own).
#[derive(Debug, PartialEq, Eq)]
pub struct LineEntry<'a> {
    pub path: Cow<'a, str>,
    pub size: u64,
    pub mtime_ns: i64,
    pub checksum: Option<&'a [u8]>,
}

impl LineEntry<'_> {
    pub fn to_file_entry(&self) -> FileEntry {
        FileEntry {
            path: self.path.clone().into_owned(),
            size: self.size,
            mtime_ns: self.mtime_ns,
            checksum: self.checksum.map(<[u8]>::to_vec),
        }
    }
}

/// One manifest line (its newline included or not) as an entry, or why
/// not.
pub fn parse_line(format: ManifestFormat, line: &[u8]) -> Result<FileEntry, String> {
    parse_entry(format, line, &mut Vec::new()).map(|entry| entry.to_file_entry())
}

/// As `parse_line`, borrowing from `line`, with the checksum's bytes
/// decoded into `checksum`.
pub fn parse_entry<'a>(
    format: ManifestFormat,
    mut line: &'a [u8],
    checksum: &'a mut Vec<u8>,
) -> Result<LineEntry<'a>, String> {
    if let Some(rest) = line.strip_suffix(b"\n") {
        line = rest.strip_suffix(b"\r").unwrap_or(rest);
    }
    let line = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_owned())?;
    if line.trim().is_empty() {
        return Err("empty line".into());
    }
    match format {
        ManifestFormat::Tsv => parse_tsv(line, checksum),
        ManifestFormat::Jsonl => parse_jsonl(line, checksum),
    }
}

impl Iterator for ManifestReader {
    type Item = Result<FileEntry, ManifestError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_entry()
            .map(|read| read.map(|(entry, _)| entry.to_file_entry()))
    }
}

fn parse_tsv<'a>(line: &'a str, checksum: &'a mut Vec<u8>) -> Result<LineEntry<'a>, String> {
    let fields = || line.split('\t').count();
    let mut split = line.split('\t');
    let (Some(path), Some(size), Some(mtime)) = (split.next(), split.next(), split.next()) else {
        return Err(format!(
            "expected path<TAB>size<TAB>mtime[<TAB>checksum], found {} field(s)",
            fields()
        ));
    };
    let hex = split.next();
    if split.next().is_some() {
        return Err(format!("{} fields, at most 4 expected", fields()));
    }
    check_path(path)?;
    Ok(LineEntry {
        path: Cow::Borrowed(path),
        size: size
            .parse()
            .map_err(|_| format!("size {size:?} is not a whole number of bytes"))?,
        mtime_ns: parse_mtime(mtime)?,
        checksum: match hex {
            Some(hex) => parse_checksum(hex, checksum)?,
            None => None,
        },
    })
}

#[derive(serde::Deserialize)]
struct JsonEntry<'a> {
    #[serde(borrow)]
    path: Cow<'a, str>,
    size: u64,
    mtime: serde_json::Number,
    #[serde(default, borrow)]
    checksum: Option<Cow<'a, str>>,
}

fn parse_jsonl<'a>(line: &'a str, checksum: &'a mut Vec<u8>) -> Result<LineEntry<'a>, String> {
    let entry: JsonEntry<'a> = serde_json::from_str(line).map_err(|e| e.to_string())?;
    check_path(&entry.path)?;
    Ok(LineEntry {
        path: entry.path,
        size: entry.size,
        mtime_ns: parse_mtime(&entry.mtime.to_string())?,
        checksum: match &entry.checksum {
            Some(hex) => parse_checksum(hex, checksum)?,
            None => None,
        },
    })
}

fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if memchr::memchr2(b'\0', b'\n', path.as_bytes()).is_some() {
        return Err(format!("path {path:?} contains NUL or a newline"));
    }
    // The coordinators refuse it too; here the line is named.
    Bounded::Path.check(path.len()).map_err(|e| e.to_string())
}

/// Seconds with an optional fraction, to nanoseconds, exactly.
fn parse_mtime(text: &str) -> Result<i64, String> {
    let bad = || format!("mtime {text:?} is not seconds since the epoch (e.g. 1700000000.25)");
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let seconds: i64 = whole.parse().map_err(|_| bad())?;
    // The fraction's first nine digits, then zeros to nine places.
    let kept = &fraction.as_bytes()[..fraction.len().min(9)];
    let nanos = kept
        .iter()
        .fold(0i64, |n, digit| n * 10 + i64::from(digit - b'0'))
        * 10i64.pow(9 - kept.len() as u32);
    let nanos = if whole.starts_with('-') {
        -nanos
    } else {
        nanos
    };
    seconds
        .checked_mul(1_000_000_000)
        .and_then(|ns| ns.checked_add(nanos))
        .ok_or_else(bad)
}

/// The checksum's bytes, decoded into `out`; `None` when it is empty.
fn parse_checksum<'a>(hex: &str, out: &'a mut Vec<u8>) -> Result<Option<&'a [u8]>, String> {
    if hex.is_empty() {
        return Ok(None);
    }
    let bad = || format!("checksum {hex:?} is not hex digits (at most {MAX_CHECKSUM_BYTES} bytes)");
    if !hex.len().is_multiple_of(2) || hex.len() > 2 * MAX_CHECKSUM_BYTES {
        return Err(bad());
    }
    out.clear();
    for byte in proto_schema::hex::decode(hex.as_bytes()) {
        out.push(byte.ok_or_else(bad)?);
    }
    Ok(Some(out))
}

/// The regular files under `dir`, in name order, each stat'ed as it is
/// reached; paths are absolute. Symbolic links are not followed.
pub fn walk(
    dir: &Path,
) -> Result<impl Iterator<Item = Result<FileEntry, ManifestError>> + use<>, ManifestError> {
    let root = dir.canonicalize().map_err(|error| ManifestError::Io {
        path: dir.to_owned(),
        error,
    })?;
    let walk = walkdir::WalkDir::new(root).sort_by_file_name().into_iter();
    Ok(walk.filter_map(|item| {
        let entry = match item {
            Ok(entry) => entry,
            Err(e) => {
                let path = e.path().map_or_else(|| PathBuf::from("?"), Path::to_owned);
                return Some(Err(ManifestError::Walk {
                    path,
                    reason: e.to_string(),
                }));
            }
        };
        if !entry.file_type().is_file() {
            return None;
        }
        Some(file_entry(entry.path()))
    }))
}

fn file_entry(path: &Path) -> Result<FileEntry, ManifestError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|error| ManifestError::Io {
        path: path.to_owned(),
        error,
    })?;
    let text = path.to_str().ok_or_else(|| ManifestError::Walk {
        path: path.to_owned(),
        reason: "the path is not UTF-8".into(),
    })?;
    Ok(FileEntry {
        path: text.to_owned(),
        size: meta.len(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        checksum: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, name: &str) -> Vec<Result<FileEntry, String>> {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let format = ManifestFormat::detect(&path).unwrap();
        ManifestReader::open(&path, format)
            .unwrap()
            .map(|r| r.map_err(|e| e.to_string().replace(&*path.to_string_lossy(), "F")))
            .collect()
    }

    #[test]
    fn tsv_lines_become_entries() {
        let entries = read(
            "/a/b.log\t10\t1700000000\td41d8cd98f00b204e9800998ecf8427e\n/a/c.log\t0\t1700000000.5\t\r\n/d\t7\t-1.25\n",
            "m.tsv",
        );
        let entries: Vec<FileEntry> = entries.into_iter().map(Result::unwrap).collect();
        assert_eq!(entries[0].path, "/a/b.log");
        assert_eq!(entries[0].size, 10);
        assert_eq!(entries[0].mtime_ns, 1_700_000_000_000_000_000);
        assert_eq!(entries[0].checksum.as_deref().unwrap()[..2], [0xd4, 0x1d]);
        assert_eq!(
            (entries[1].mtime_ns, entries[1].checksum.clone()),
            (1_700_000_000_500_000_000, None)
        );
        assert_eq!(entries[2].mtime_ns, -1_250_000_000);
    }

    #[test]
    fn an_mtime_as_gnu_find_prints_it_is_kept_to_the_nanosecond() {
        // `find -printf '%T@'` prints ten digits after the point.
        let entries = read(
            "/a\t1\t1673704490.0000000000\n/b\t1\t1.1234567891\n",
            "m.tsv",
        );
        let mtimes: Vec<i64> = entries.into_iter().map(|e| e.unwrap().mtime_ns).collect();
        assert_eq!(mtimes, [1_673_704_490_000_000_000, 1_123_456_789]);
    }

    #[test]
    fn a_line_over_the_limit_is_refused_and_the_next_read_whole() {
        let long = format!("/{}\t1\t1\n", "p".repeat(MAX_LINE_BYTES));
        let entries = read(&format!("/a\t1\t1\n{long}/b\t2\t2\n"), "m.tsv");
        assert_eq!(entries.len(), 3, "{entries:?}");
        assert_eq!(entries[0].as_ref().unwrap().path, "/a");
        let error = entries[1].as_ref().unwrap_err();
        assert!(
            error.starts_with(&format!("F:2: longer than {MAX_LINE_BYTES} bytes")),
            "{error}"
        );
        assert_eq!(entries[2].as_ref().unwrap().path, "/b");
        // Exactly at the limit, newline included, a line is read.
        let fields = "\t1\t1\n";
        let at_limit = format!("/{}{fields}", "p".repeat(MAX_LINE_BYTES - 1 - fields.len()));
        assert_eq!(at_limit.len(), MAX_LINE_BYTES);
        let error = read(&at_limit, "m.tsv").remove(0).unwrap_err();
        assert!(
            error.contains("exceeds the limit"),
            "the path's own limit: {error}"
        );
    }

    #[test]
    fn jsonl_is_detected_by_extension_or_first_byte() {
        let line = r#"{"path":"/x","size":3,"mtime":1.000000001,"checksum":"00ff"}"#;
        for name in ["m.jsonl", "manifest"] {
            let entries = read(
                &format!("{line}\n{{\"path\":\"/y\",\"size\":1,\"mtime\":2}}\n"),
                name,
            );
            let first = entries[0].as_ref().unwrap();
            assert_eq!(
                (first.mtime_ns, first.checksum.clone()),
                (1_000_000_001, Some(vec![0, 255]))
            );
            assert_eq!(entries[1].as_ref().unwrap().checksum, None);
        }
    }

    #[test]
    fn bad_lines_name_the_file_and_line() {
        let entries = read(
            "/ok\t1\t1\n/a\tbig\t1\n/b\t1\n\n/c\t1\t1\txyz\n/d\t1\t1e9\n/e\t1\t1\t+a+b\n",
            "m.tsv",
        );
        let errors: Vec<String> = entries.into_iter().filter_map(Result::err).collect();
        assert_eq!(errors.len(), 6, "{errors:?}");
        assert!(errors[0].starts_with("F:2: size \"big\""), "{}", errors[0]);
        assert!(errors[1].starts_with("F:3: expected path"), "{}", errors[1]);
        assert!(errors[2].starts_with("F:4: empty line"), "{}", errors[2]);
        assert!(errors[3].starts_with("F:5: checksum"), "{}", errors[3]);
        assert!(errors[4].starts_with("F:6: mtime"), "{}", errors[4]);
        assert!(errors[5].starts_with("F:7: checksum"), "{}", errors[5]);
        let long = format!(
            "/{}\t1\t1\n",
            "p".repeat(proto_schema::command::MAX_PATH_BYTES)
        );
        let errors = read(&long, "m.tsv");
        assert!(
            errors[0].as_ref().unwrap_err().starts_with(&format!(
                "F:1: path of {} bytes exceeds the limit of",
                proto_schema::command::MAX_PATH_BYTES + 1
            )),
            "{:?}",
            errors[0]
                .as_ref()
                .map_err(|e| e.chars().take(80).collect::<String>())
        );
        let errors = read("{\"path\":\"/a\",\"size\":-1,\"mtime\":1}\n", "m.jsonl");
        assert!(
            errors[0].as_ref().unwrap_err().starts_with("F:1: "),
            "{errors:?}"
        );
    }

    #[test]
    fn a_walk_lists_regular_files_in_name_order() {
        let dir = tempfile::TempDir::new().unwrap();
        for name in ["b/2", "b/1", "a", "c/d/e"] {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, name).unwrap();
        }
        let root = dir.path().canonicalize().unwrap();
        let listed: Vec<(String, u64)> = walk(dir.path())
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| {
                (
                    e.path
                        .strip_prefix(root.to_str().unwrap())
                        .unwrap()
                        .to_owned(),
                    e.size,
                )
            })
            .collect();
        assert_eq!(
            listed,
            [
                ("/a".into(), 1),
                ("/b/1".into(), 3),
                ("/b/2".into(), 3),
                ("/c/d/e".into(), 5)
            ]
        );
    }
}
