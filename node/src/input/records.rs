//! Splitting a byte stream into records, exactly as `LC_ALL=C sort` sees
//! lines: records end at `\n` (not included); every other byte, CR and NUL
//! included, belongs to the record; a last record without `\n` still counts;
//! an empty line is a record.
//!
//! A reader covers one shard. A shard of a plain file is a byte range
//! `[start, end)` and owns exactly the records that *start* inside it; the
//! record that crosses `end` is read to its newline by this shard and skipped
//! by the next one. Memory stays at one buffer whatever the input: a record
//! longer than the limit is measured while it is skipped, never buffered.

use std::io::{self, Read};

use memchr::memchr;

use super::read_buffers::ReadBuffer;

/// What the reader found next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Record {
        offset: u64,
        bytes: &'a [u8],
    },
    /// A record longer than the limit, already skipped.
    TooLong {
        offset: u64,
        len: u64,
    },
}

/// Bytes at the end of a stream that cannot form a whole record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadFailure {
    #[error("read failed at byte {offset}: {source}")]
    Io {
        offset: u64,
        source: io::Error,
        fragment: Option<Fragment>,
    },
    #[error(
        "file shrank while being read: it had {expected} bytes when listed, but ended at byte {actual}"
    )]
    Shrank {
        expected: u64,
        actual: u64,
        fragment: Option<Fragment>,
    },
}

impl ReadFailure {
    /// The partial record the failure cut off, if any.
    pub fn fragment(&self) -> Option<Fragment> {
        match self {
            ReadFailure::Io { fragment, .. } | ReadFailure::Shrank { fragment, .. } => *fragment,
        }
    }
}

pub struct RecordReader {
    source: Box<dyn Read + Send>,
    buf: ReadBuffer,
    /// Unconsumed bytes are `buf[head..tail]`.
    head: usize,
    tail: usize,
    /// The newline search resumes here, so no byte is scanned twice.
    scan_from: usize,
    /// Stream offset of `buf[0]`.
    buf_offset: u64,
    /// Records starting at or after this offset belong to the next shard.
    end: Option<u64>,
    /// The stream must reach this length; ending earlier means the file
    /// shrank under us.
    expected_len: Option<u64>,
    max_record: u64,
    eof: bool,
    done: bool,
}

impl RecordReader {
    /// A reader over `source`, which is positioned at stream offset `start`.
    /// If `start` is inside a record (the byte before it is not `\n`), that
    /// record belongs to the previous shard: pass `starts_mid_record` and it
    /// is skipped. `buf` must be [`buffer_len`](Self::buffer_len) long.
    pub fn new(
        source: Box<dyn Read + Send>,
        start: u64,
        starts_mid_record: bool,
        end: Option<u64>,
        expected_len: Option<u64>,
        max_record: u64,
        buf: ReadBuffer,
    ) -> Result<Self, ReadFailure> {
        assert!(
            buf.len() as u64 > max_record,
            "a record buffer holds a whole record and its newline"
        );
        let mut reader = Self {
            source,
            buf,
            head: 0,
            tail: 0,
            scan_from: 0,
            buf_offset: start,
            end,
            expected_len,
            max_record,
            eof: false,
            done: false,
        };
        if starts_mid_record {
            reader.skip_past_newline()?;
        }
        Ok(reader)
    }

    /// The buffer a reader needs: reads of `chunk_bytes`, and room for a
    /// whole record of the maximum length plus its newline (anything longer
    /// is skipped, not buffered).
    pub fn buffer_len(chunk_bytes: usize, max_record: u64) -> usize {
        chunk_bytes.max(max_record as usize + 1)
    }

    /// Stream offset of the next unconsumed byte.
    pub fn position(&self) -> u64 {
        self.buf_offset + self.head as u64
    }

    pub fn next_event(&mut self) -> Result<Option<Event<'_>>, ReadFailure> {
        loop {
            if self.done {
                return Ok(None);
            }
            let offset = self.position();
            if self.end.is_some_and(|end| offset >= end) {
                self.done = true;
                return Ok(None);
            }
            if let Some(i) = memchr(b'\n', &self.buf[self.scan_from..self.tail]) {
                let (start, newline) = (self.head, self.scan_from + i);
                self.head = newline + 1;
                self.scan_from = self.head;
                return Ok(Some(self.event(offset, start, newline)));
            }
            self.scan_from = self.tail;
            let pending = self.tail - self.head;
            if self.eof {
                self.done = true;
                if pending == 0 {
                    return Ok(None);
                }
                let start = self.head;
                self.head = self.tail;
                return Ok(Some(self.event(offset, start, self.tail)));
            }
            if pending as u64 > self.max_record {
                let len = self.skip_past_newline()?;
                return Ok(Some(Event::TooLong { offset, len }));
            }
            self.fill()?;
        }
    }

    fn event(&self, offset: u64, start: usize, end: usize) -> Event<'_> {
        let len = (end - start) as u64;
        if len > self.max_record {
            Event::TooLong { offset, len }
        } else {
            Event::Record {
                offset,
                bytes: &self.buf[start..end],
            }
        }
    }

    /// Reads more bytes after the unconsumed ones, first moving them to the
    /// front if the buffer is full.
    fn fill(&mut self) -> Result<(), ReadFailure> {
        if self.tail == self.buf.len() {
            self.buf.copy_within(self.head..self.tail, 0);
            self.buf_offset += self.head as u64;
            self.tail -= self.head;
            self.scan_from -= self.head;
            self.head = 0;
        }
        let n = loop {
            match self.source.read(&mut self.buf[self.tail..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(ReadFailure::Io {
                        offset: self.buf_offset + self.tail as u64,
                        source,
                        fragment: self.pending_fragment(),
                    });
                }
            }
        };
        self.tail += n;
        if n == 0 {
            self.eof = true;
            let actual = self.buf_offset + self.tail as u64;
            if let Some(expected) = self.expected_len.filter(|&e| actual < e) {
                return Err(ReadFailure::Shrank {
                    expected,
                    actual,
                    fragment: self.pending_fragment(),
                });
            }
        }
        Ok(())
    }

    fn pending_fragment(&self) -> Option<Fragment> {
        (self.tail > self.head).then(|| Fragment {
            offset: self.position(),
            len: (self.tail - self.head) as u64,
        })
    }

    /// Discards bytes up to and including the next newline (or to the end
    /// of the stream) and returns how many were discarded, newline excluded.
    fn skip_past_newline(&mut self) -> Result<u64, ReadFailure> {
        let mut skipped = 0u64;
        loop {
            if let Some(i) = memchr(b'\n', &self.buf[self.head..self.tail]) {
                skipped += i as u64;
                self.head += i + 1;
                self.scan_from = self.head;
                return Ok(skipped);
            }
            skipped += (self.tail - self.head) as u64;
            self.buf_offset += self.tail as u64;
            (self.head, self.tail, self.scan_from) = (0, 0, 0);
            if self.eof {
                return Ok(skipped);
            }
            self.fill()?;
            if self.eof && self.tail == 0 {
                return Ok(skipped);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn buffer(chunk: usize, max_record: u64) -> ReadBuffer {
        ReadBuffer::unpooled(RecordReader::buffer_len(chunk, max_record))
    }

    /// The reference: how `sort` splits a byte string into lines.
    fn reference_lines(data: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, &b) in data.iter().enumerate() {
            if b == b'\n' {
                out.push((start as u64, data[start..i].to_vec()));
                start = i + 1;
            }
        }
        if start < data.len() {
            out.push((start as u64, data[start..].to_vec()));
        }
        out
    }

    /// Reads the shard `[start, end)` of `data` the way a scanner does.
    fn read_shard(
        data: &[u8],
        start: usize,
        end: usize,
        max: u64,
        chunk: usize,
    ) -> Vec<(u64, Result<Vec<u8>, u64>)> {
        let mid = start > 0 && data[start - 1] != b'\n';
        let source = Box::new(io::Cursor::new(data[start..].to_vec()));
        let mut reader = RecordReader::new(
            source,
            start as u64,
            mid,
            Some(end as u64),
            Some(data.len() as u64),
            max,
            buffer(chunk, max),
        )
        .unwrap();
        let mut out = Vec::new();
        while let Some(event) = reader.next_event().unwrap() {
            out.push(match event {
                Event::Record { offset, bytes } => (offset, Ok(bytes.to_vec())),
                Event::TooLong { offset, len } => (offset, Err(len)),
            });
        }
        out
    }

    fn arb_data() -> impl Strategy<Value = Vec<u8>> {
        // Mostly newlines, CR, NUL and high bytes so that edge cases are common.
        proptest::collection::vec(
            prop_oneof![
                Just(b'\n'),
                Just(b'\r'),
                Just(0u8),
                Just(0xffu8),
                b'a'..=b'c'
            ],
            0..400,
        )
    }

    proptest! {
        /// Any split of a stream into shards, with any buffer size, yields
        /// exactly the reference lines, each once, in order.
        #[test]
        fn shards_partition_the_lines(data in arb_data(), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..4), chunk in 1usize..64) {
            let mut bounds: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
            bounds.push(0);
            bounds.push(data.len());
            bounds.sort();
            bounds.dedup();
            let mut got = Vec::new();
            for w in bounds.windows(2) {
                got.extend(read_shard(&data, w[0], w[1], 1 << 16, chunk));
            }
            let want: Vec<_> = reference_lines(&data).into_iter().map(|(o, l)| (o, Ok(l))).collect();
            prop_assert_eq!(got, want);
        }

        /// Records over the limit are reported with their full length and
        /// offset; all others come through unchanged.
        #[test]
        fn long_records_are_measured_and_skipped(data in arb_data(), max in 0u64..12, chunk in 1usize..40) {
            let got = read_shard(&data, 0, data.len(), max, chunk);
            let want: Vec<_> = reference_lines(&data).into_iter().map(|(o, l)| {
                if l.len() as u64 > max { (o, Err(l.len() as u64)) } else { (o, Ok(l)) }
            }).collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn shrinking_is_detected_with_the_cut_fragment() {
        let data = b"one\ntwo\nthr".to_vec();
        let source = Box::new(io::Cursor::new(data.clone()));
        let mut reader =
            RecordReader::new(source, 0, false, Some(20), Some(20), 100, buffer(4, 100)).unwrap();
        let mut records = Vec::new();
        let failure = loop {
            match reader.next_event() {
                Ok(Some(Event::Record { bytes, .. })) => records.push(bytes.to_vec()),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(failure) => break failure,
            }
        };
        assert_eq!(records, vec![b"one".to_vec(), b"two".to_vec()]);
        assert!(matches!(
            failure,
            ReadFailure::Shrank {
                expected: 20,
                actual: 11,
                ..
            }
        ));
        assert_eq!(failure.fragment(), Some(Fragment { offset: 8, len: 3 }));
        assert!(failure.to_string().contains("ended at byte 11"));
    }

    struct FailAfter(Vec<u8>);
    impl Read for FailAfter {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "corrupt deflate stream",
                ));
            }
            let n = buf.len().min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0.drain(..n);
            Ok(n)
        }
    }

    #[test]
    fn a_read_error_keeps_earlier_records_and_names_the_offset() {
        let source = Box::new(FailAfter(b"a\nbb\ncc".to_vec()));
        let mut reader =
            RecordReader::new(source, 0, false, None, None, 100, buffer(64, 100)).unwrap();
        assert_eq!(
            reader.next_event().unwrap(),
            Some(Event::Record {
                offset: 0,
                bytes: b"a"
            })
        );
        assert_eq!(
            reader.next_event().unwrap(),
            Some(Event::Record {
                offset: 2,
                bytes: b"bb"
            })
        );
        let failure = reader.next_event().unwrap_err();
        assert_eq!(failure.fragment(), Some(Fragment { offset: 5, len: 2 }));
        assert!(failure.to_string().contains("byte 7"), "{failure}");
    }
}
