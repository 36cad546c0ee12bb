//! Cutting a manifest into the bounded `SubmitChunk`s a submission sends:
//! each within `MAX_CHUNK_FILES` files (or fewer, if asked) and
//! `MAX_CHUNK_BYTES` bytes, holding one chunk at a time.

use proto_schema::command::{FileEntry, MAX_CHUNK_BYTES, MAX_CHUNK_FILES};

pub struct InventoryChunks<I: Iterator> {
    entries: std::iter::Peekable<I>,
    max_files: usize,
}

impl<I: Iterator<Item = FileEntry>> InventoryChunks<I> {
    /// Chunks as large as a command may carry.
    pub fn new(entries: I) -> Self {
        Self::with_max_files(entries, MAX_CHUNK_FILES)
    }

    /// Chunks of at most `max_files` files (at least 1, at most
    /// `MAX_CHUNK_FILES`): more log entries for the same manifest.
    pub fn with_max_files(entries: I, max_files: usize) -> Self {
        Self {
            entries: entries.peekable(),
            max_files: max_files.clamp(1, MAX_CHUNK_FILES),
        }
    }
}

impl<I: Iterator<Item = FileEntry>> Iterator for InventoryChunks<I> {
    type Item = Vec<FileEntry>;

    fn next(&mut self) -> Option<Vec<FileEntry>> {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        while let Some(next) = self.entries.peek() {
            let full = chunk.len() == self.max_files || bytes + next.weight() > MAX_CHUNK_BYTES;
            if full && !chunk.is_empty() {
                break;
            }
            bytes += next.weight();
            chunk.push(self.entries.next().expect("peeked"));
        }
        (!chunk.is_empty()).then_some(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path_bytes: usize) -> FileEntry {
        FileEntry {
            path: "p".repeat(path_bytes),
            size: 1,
            mtime_ns: 1,
            checksum: None,
        }
    }

    #[test]
    fn chunks_stay_within_files_and_bytes() {
        let sizes: Vec<usize> = InventoryChunks::new((0..MAX_CHUNK_FILES + 1).map(|_| entry(8)))
            .map(|c| c.len())
            .collect();
        assert_eq!(sizes, [MAX_CHUNK_FILES, 1]);

        let big = MAX_CHUNK_BYTES / 3 + 1;
        let sizes: Vec<usize> = InventoryChunks::new((0..5).map(|_| entry(big)))
            .map(|c| c.len())
            .collect();
        assert_eq!(sizes, [2, 2, 1]);

        let sizes: Vec<usize> = InventoryChunks::with_max_files((0..7).map(|_| entry(8)), 3)
            .map(|c| c.len())
            .collect();
        assert_eq!(sizes, [3, 3, 1]);
    }
}
