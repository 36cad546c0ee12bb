//! Read buffers reused from one shard to the next.
//!
//! A scanner opens one shard after another, and each needs a record buffer
//! (1 MiB, or a whole record of `--max-record`) and a buffer in front of
//! the decompressor. Allocated per shard, they were the cost of a small
//! file: the pages were faulted in and zero-filled for every file and given
//! back to the OS when it closed (mimalloc returns freed pages at once, see
//! `memory::tracking`). 35,887 files of this machine's own `/usr/share`
//! took 34 s, 34 s of it system time, 60% of the samples under `memset`
//! with page faults beneath. Taken from a pool that lives as long as the
//! scanner, the pages stay resident and initialised.

use std::io::{self, BufRead, Read};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

/// Free buffers of one scanner. Cloning shares the pool.
#[derive(Clone, Default)]
pub struct ReadBuffers {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl ReadBuffers {
    /// A zero-initialised buffer of exactly `len` bytes: a free one if any
    /// has the capacity, else a new one. It comes back to the pool when
    /// dropped.
    pub fn take(&self, len: usize) -> ReadBuffer {
        let reused = {
            let mut free = self.free.lock().expect("read buffers lock");
            // One of the same size class: a scanner takes buffers of two
            // sizes, and a small request must not take the large one (the
            // next large request would then allocate another).
            let fit = (free.iter().enumerate())
                .filter(|(_, b)| (len..=len.saturating_mul(2)).contains(&b.capacity()))
                .min_by_key(|(_, b)| b.capacity());
            fit.map(|(i, _)| i).map(|i| free.swap_remove(i))
        };
        let mut bytes = reused.unwrap_or_default();
        // Only bytes beyond the old length are written: a reused buffer of
        // the same size costs nothing here.
        bytes.resize(len, 0);
        ReadBuffer {
            bytes,
            home: Some(self.free.clone()),
        }
    }

    /// Buffers waiting for reuse.
    pub fn free_count(&self) -> usize {
        self.free.lock().expect("read buffers lock").len()
    }
}

/// A buffer from [`ReadBuffers`], or one of its own ([`ReadBuffer::unpooled`]).
pub struct ReadBuffer {
    bytes: Vec<u8>,
    home: Option<Arc<Mutex<Vec<Vec<u8>>>>>,
}

impl ReadBuffer {
    /// A buffer that is simply freed when dropped.
    pub fn unpooled(len: usize) -> Self {
        Self {
            bytes: vec![0; len],
            home: None,
        }
    }
}

impl Deref for ReadBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl DerefMut for ReadBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl Drop for ReadBuffer {
    fn drop(&mut self) {
        if let Some(home) = self.home.take()
            && let Ok(mut free) = home.lock()
        {
            free.push(std::mem::take(&mut self.bytes));
        }
    }
}

/// `std::io::BufReader` over a [`ReadBuffer`]: the buffer in front of a
/// decompressor, returned to its pool with the reader.
pub struct BufferedReader<R> {
    inner: R,
    buf: ReadBuffer,
    /// Unconsumed bytes are `buf[pos..filled]`.
    pos: usize,
    filled: usize,
}

impl<R: Read> BufferedReader<R> {
    pub fn new(inner: R, buf: ReadBuffer) -> Self {
        Self {
            inner,
            buf,
            pos: 0,
            filled: 0,
        }
    }
}

impl<R: Read> Read for BufferedReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        // A read at least as large as the buffer bypasses it, as BufReader's.
        if self.pos == self.filled && out.len() >= self.buf.len() {
            return self.inner.read(out);
        }
        let n = self.fill_buf()?.read(out)?;
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for BufferedReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.filled {
            self.filled = self.inner.read(&mut self.buf)?;
            self.pos = 0;
        }
        Ok(&self.buf[self.pos..self.filled])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.filled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_and_are_reused_at_their_size() {
        let pool = ReadBuffers::default();
        let first = pool.take(1000);
        let address = first.as_ptr();
        assert_eq!(first.len(), 1000);
        drop(first);
        assert_eq!(pool.free_count(), 1);
        let mut again = pool.take(1000);
        assert_eq!(again.as_ptr(), address, "the same memory is handed out");
        assert_eq!(pool.free_count(), 0);
        again[999] = 7;
        // Two at once: the second is new.
        let other = pool.take(10);
        assert_ne!(other.as_ptr(), address);
        drop((again, other));
        assert_eq!(pool.free_count(), 2);
        // A buffer of the same size class is reused: the 10-byte one for 6
        // bytes, but not the 1000-byte one for 5 bytes; a larger request
        // never gets a smaller buffer.
        let small = pool.take(6);
        assert_eq!((small.len(), pool.free_count()), (6, 1));
        let tiny = pool.take(5);
        assert_eq!((tiny.len(), pool.free_count()), (5, 1));
        assert_eq!(pool.take(5000).len(), 5000);
        ReadBuffer::unpooled(3);
        assert_eq!(pool.free_count(), 2);
    }

    #[test]
    fn buffered_reader_reads_everything_in_order() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for (buffer, read) in [(7, 3), (64, 64), (64, 1000), (4096, 100)] {
            let mut reader =
                BufferedReader::new(io::Cursor::new(data.clone()), ReadBuffer::unpooled(buffer));
            let mut out = Vec::new();
            let mut chunk = vec![0; read];
            loop {
                let n = reader.read(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&chunk[..n]);
            }
            assert_eq!(out, data, "buffer {buffer}, reads of {read}");
        }
        let mut reader = BufferedReader::new(&b"a\nbc\n"[..], ReadBuffer::unpooled(2));
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "a\nbc\n");
    }
}
