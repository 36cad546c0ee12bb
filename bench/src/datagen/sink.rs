//! Output files: optional compression plus record and byte accounting.

use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use flate2::write::GzEncoder;

use super::GeneratedFile;

/// How a generated file is encoded on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    Plain,
    Gzip,
    Zstd,
}

impl Compression {
    /// Suffix appended to the file name (`""`, `".gz"`, `".zst"`).
    pub fn extension(self) -> &'static str {
        match self {
            Self::Plain => "",
            Self::Gzip => ".gz",
            Self::Zstd => ".zst",
        }
    }
}

/// The compression of file `index` when `cycle` is cycled over files (all
/// plain if it is empty).
pub(crate) fn cycled(cycle: &[Compression], index: usize) -> Compression {
    if cycle.is_empty() {
        Compression::Plain
    } else {
        cycle[index % cycle.len()]
    }
}

/// `dir/part-00000.txt`, `dir/part-00001.txt.gz`, ...: the name of file
/// `index` of a line dataset.
pub(crate) fn part_path(dir: &Path, index: usize, compression: Compression) -> PathBuf {
    dir.join(format!("part-{index:05}.txt{}", compression.extension()))
}

impl FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "plain" | "none" => Ok(Self::Plain),
            "gzip" | "gz" => Ok(Self::Gzip),
            "zstd" | "zst" => Ok(Self::Zstd),
            _ => Err(format!("unknown compression {s:?} (plain, gzip, zstd)")),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Plain => "plain",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        })
    }
}

/// Large enough that per-record writes are memcpys and the file (or the
/// encoder) sees few, big writes.
const BUFFER_BYTES: usize = 1 << 20;
/// zstd's default level: what `zstd FILE` produces, still several hundred
/// MB/s on text.
const ZSTD_LEVEL: i32 = 3;

enum Encoder {
    Plain(BufWriter<File>),
    Gzip(BufWriter<GzEncoder<File>>),
    Zstd(BufWriter<zstd::Encoder<'static, File>>),
}

/// Writes records to one file, counting what a decompressing reader sees.
pub(crate) struct LineWriter {
    path: PathBuf,
    compression: Compression,
    out: Encoder,
    records: u64,
    bytes: u64,
}

impl LineWriter {
    pub(crate) fn create(path: PathBuf, compression: Compression) -> io::Result<Self> {
        Self::with_buffer(path, compression, BUFFER_BYTES)
    }

    /// A writer buffering `buffer` bytes: small files want a small buffer,
    /// not a megabyte allocated and freed per file.
    pub(crate) fn with_buffer(
        path: PathBuf,
        compression: Compression,
        buffer: usize,
    ) -> io::Result<Self> {
        let file = File::create(&path)?;
        let out = match compression {
            Compression::Plain => Encoder::Plain(BufWriter::with_capacity(buffer, file)),
            Compression::Gzip => Encoder::Gzip(BufWriter::with_capacity(
                buffer,
                GzEncoder::new(file, flate2::Compression::fast()),
            )),
            Compression::Zstd => Encoder::Zstd(BufWriter::with_capacity(
                buffer,
                zstd::Encoder::new(file, ZSTD_LEVEL)?,
            )),
        };
        Ok(Self {
            path,
            compression,
            out,
            records: 0,
            bytes: 0,
        })
    }

    /// Uncompressed bytes written so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes `record` followed by '\n'.
    pub(crate) fn write_line(&mut self, record: &[u8]) -> io::Result<()> {
        debug_assert!(!record.contains(&b'\n'));
        let out = self.writer();
        out.write_all(record)?;
        out.write_all(b"\n")?;
        self.records += 1;
        self.bytes += record.len() as u64 + 1;
        Ok(())
    }

    /// Writes a final record without its '\n'. It must be non-empty, or
    /// readers would not see a record at all.
    pub(crate) fn write_unterminated(&mut self, record: &[u8]) -> io::Result<()> {
        debug_assert!(!record.is_empty() && !record.contains(&b'\n'));
        self.writer().write_all(record)?;
        self.records += 1;
        self.bytes += record.len() as u64;
        Ok(())
    }

    fn writer(&mut self) -> &mut dyn Write {
        match &mut self.out {
            Encoder::Plain(w) => w,
            Encoder::Gzip(w) => w,
            Encoder::Zstd(w) => w,
        }
    }

    /// Flushes buffers and writes the compression trailer.
    pub(crate) fn finish(self) -> io::Result<GeneratedFile> {
        match self.out {
            Encoder::Plain(w) => {
                w.into_inner().map_err(io::IntoInnerError::into_error)?;
            }
            Encoder::Gzip(w) => {
                w.into_inner()
                    .map_err(io::IntoInnerError::into_error)?
                    .finish()?;
            }
            Encoder::Zstd(w) => {
                w.into_inner()
                    .map_err(io::IntoInnerError::into_error)?
                    .finish()?;
            }
        }
        Ok(GeneratedFile {
            path: self.path,
            records: self.records,
            uncompressed_bytes: self.bytes,
            compression: self.compression,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datagen::testutil::{decoded, sort_record_count};

    #[test]
    fn parses_and_displays_names() {
        for c in [Compression::Plain, Compression::Gzip, Compression::Zstd] {
            assert_eq!(c.to_string().parse::<Compression>(), Ok(c));
        }
        assert_eq!("GZ".parse::<Compression>(), Ok(Compression::Gzip));
        assert!("lz4".parse::<Compression>().is_err());
    }

    #[test]
    fn round_trips_each_encoding_with_exact_counts() {
        let dir = tempfile::tempdir().unwrap();
        for c in [Compression::Plain, Compression::Gzip, Compression::Zstd] {
            let path = dir.path().join(format!("f{}", c.extension()));
            let mut w = LineWriter::create(path, c).unwrap();
            w.write_line(b"alpha").unwrap();
            w.write_line(b"").unwrap();
            w.write_unterminated(b"omega").unwrap();
            let file = w.finish().unwrap();
            let data = decoded(&file);
            assert_eq!(data, b"alpha\n\nomega");
            assert_eq!(file.uncompressed_bytes, data.len() as u64);
            assert_eq!(file.records, sort_record_count(&data));
            assert_eq!(file.records, 3);
        }
    }
}
