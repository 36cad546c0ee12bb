//! Opening an input file as a byte stream: plain, gzip or zstd, detected by
//! magic bytes rather than by file name.

use std::fs::File;
use std::io::{self, BufRead, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::read_buffers::{BufferedReader, ReadBuffer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Plain,
    Gzip,
    Zstd,
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::Plain => "plain",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The compression a file starts with.
pub fn detect(head: &[u8]) -> Compression {
    if head.starts_with(&GZIP_MAGIC) {
        Compression::Gzip
    } else if head.starts_with(&ZSTD_MAGIC) {
        Compression::Zstd
    } else {
        Compression::Plain
    }
}

/// Reads the magic bytes of a file.
pub fn sniff(path: &Path) -> io::Result<Compression> {
    Ok(detect(&read_magic(&mut File::open(path)?)?))
}

/// The first bytes of a stream, as many as the longest magic (fewer only
/// at its end), however few each read returns.
fn read_magic(stream: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(ZSTD_MAGIC.len());
    stream
        .take(ZSTD_MAGIC.len() as u64)
        .read_to_end(&mut head)?;
    Ok(head)
}

/// A decompressed byte stream over a file, with a count of the file bytes
/// consumed so far (for progress and for error messages about compressed
/// files).
pub struct Source {
    pub reader: Box<dyn Read + Send>,
    pub compression: Compression,
    file_bytes: Arc<AtomicU64>,
    /// The open file under `reader` (none for standard input), to examine
    /// it again after reading without looking its path up.
    pub file: Option<Arc<File>>,
}

impl Source {
    /// Opens the whole file, decompressing if its magic bytes say so;
    /// `buffer` holds file bytes in front of the decompressor.
    pub fn open_whole(path: &Path, buffer: ReadBuffer) -> io::Result<Source> {
        let file = Arc::new(File::open(path)?);
        let mut source = Self::decompressing(file.clone(), buffer)?;
        source.file = Some(file);
        Ok(source)
    }

    /// Standard input, decompressed if its magic bytes say so.
    pub fn stdin(buffer: ReadBuffer) -> io::Result<Source> {
        Self::open_stream(io::stdin(), buffer)
    }

    /// A pipe may deliver fewer bytes than the magic at first, so they are
    /// gathered before the stream goes on behind them.
    fn open_stream(
        mut stream: impl Read + Send + 'static,
        buffer: ReadBuffer,
    ) -> io::Result<Source> {
        let head = read_magic(&mut stream)?;
        Self::decompressing(io::Cursor::new(head).chain(stream), buffer)
    }

    fn decompressing(inner: impl Read + Send + 'static, buffer: ReadBuffer) -> io::Result<Source> {
        let file_bytes = Arc::new(AtomicU64::new(0));
        let counted = CountingReader {
            inner,
            count: file_bytes.clone(),
        };
        let mut buffered = BufferedReader::new(counted, buffer);
        let compression = detect(buffered.fill_buf()?);
        let reader: Box<dyn Read + Send> = match compression {
            Compression::Plain => Box::new(buffered),
            // Multi-member gzip, as `zcat` reads it.
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
        };
        Ok(Source {
            reader,
            compression,
            file_bytes,
            file: None,
        })
    }

    /// Opens a plain file positioned at `offset`.
    pub fn open_plain_at(path: &Path, offset: u64) -> io::Result<Source> {
        let mut file = Arc::new(File::open(path)?);
        file.seek(SeekFrom::Start(offset))?;
        let file_bytes = Arc::new(AtomicU64::new(offset));
        Ok(Source {
            reader: Box::new(CountingReader {
                inner: file.clone(),
                count: file_bytes.clone(),
            }),
            compression: Compression::Plain,
            file_bytes,
            file: Some(file),
        })
    }

    /// A live count of the file bytes read so far (compressed bytes for
    /// compressed files), which stays valid after `reader` is moved away.
    pub fn file_bytes(&self) -> FileBytesRead {
        FileBytesRead(self.file_bytes.clone())
    }
}

#[derive(Clone)]
pub struct FileBytesRead(Arc<AtomicU64>);

impl FileBytesRead {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read_all(path: &Path) -> (Compression, Vec<u8>) {
        let mut source = Source::open_whole(path, ReadBuffer::unpooled(64)).unwrap();
        let mut out = Vec::new();
        source.reader.read_to_end(&mut out).unwrap();
        (source.compression, out)
    }

    #[test]
    fn detects_by_magic_not_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let content = b"b\na\n\xff\x00\r\n".repeat(1000);

        let plain = dir.path().join("data.gz");
        std::fs::write(&plain, &content).unwrap();
        assert_eq!(read_all(&plain), (Compression::Plain, content.clone()));

        let gz = dir.path().join("data.txt");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&content).unwrap();
        let mut two_members = enc.finish().unwrap();
        two_members.extend_from_within(..);
        std::fs::write(&gz, &two_members).unwrap();
        let doubled = [content.clone(), content.clone()].concat();
        assert_eq!(read_all(&gz), (Compression::Gzip, doubled));
        assert_eq!(sniff(&gz).unwrap(), Compression::Gzip);

        let zst = dir.path().join("data");
        std::fs::write(&zst, zstd::encode_all(&content[..], 1).unwrap()).unwrap();
        assert_eq!(read_all(&zst), (Compression::Zstd, content));
        assert_eq!(sniff(&zst).unwrap(), Compression::Zstd);
    }

    /// A pipe that delivers one byte per read.
    struct Trickle(io::Cursor<Vec<u8>>);
    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let end = buf.len().min(1);
            self.0.read(&mut buf[..end])
        }
    }

    #[test]
    fn a_stream_is_detected_by_magic_however_it_trickles_in() {
        let content = b"b\na\n".repeat(1000);
        let zst = zstd::encode_all(&content[..], 1).unwrap();
        let mut source = Source::open_stream(
            Trickle(io::Cursor::new(zst.clone())),
            ReadBuffer::unpooled(64),
        )
        .unwrap();
        let mut out = Vec::new();
        source.reader.read_to_end(&mut out).unwrap();
        assert_eq!((source.compression, out), (Compression::Zstd, content));
        assert_eq!(source.file_bytes().get(), zst.len() as u64);

        let mut source = Source::open_stream(
            Trickle(io::Cursor::new(b"x".to_vec())),
            ReadBuffer::unpooled(64),
        )
        .unwrap();
        let mut out = Vec::new();
        source.reader.read_to_end(&mut out).unwrap();
        assert_eq!(
            (source.compression, out),
            (Compression::Plain, b"x".to_vec())
        );
    }

    #[test]
    fn empty_and_tiny_files_are_plain() {
        assert_eq!(detect(b""), Compression::Plain);
        assert_eq!(detect(b"\x1f"), Compression::Plain);
        assert_eq!(detect(b"\x28\xb5\x2f"), Compression::Plain);
    }
}
