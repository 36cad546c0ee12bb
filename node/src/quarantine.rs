//! Why input was not ingested: reasons for rejected records and problems
//! with whole files. Both are stored with their file and offset and listed by
//! `quern stats`, and every rejected record is counted (invariant 3).

use serde::{Deserialize, Serialize};

/// Why one record was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Rejection {
    TooLong {
        len: u64,
        max: u64,
    },
    MissingKeyField {
        fields: usize,
        key_field: usize,
    },
    /// Bytes cut off by a read failure (corrupt compressed data, a file
    /// that shrank): not known to be a whole record.
    Incomplete {
        len: u64,
        cause: String,
    },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::TooLong { len, max } => {
                write!(f, "record of {len} bytes is longer than --max-record {max}")
            }
            Rejection::MissingKeyField { fields, key_field } => write!(
                f,
                "record has {fields} tab-separated field(s); --key-field {key_field} needs at least {key_field}"
            ),
            Rejection::Incomplete { len, cause } => {
                write!(f, "incomplete record of {len} bytes: {cause}")
            }
        }
    }
}

/// A rejected record, as kept in the quarantine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedRecord {
    pub file: u32,
    pub offset: u64,
    #[serde(flatten)]
    pub rejection: Rejection,
    /// The record's first bytes, escaped, to help find it.
    pub excerpt: String,
}

/// How many bytes of a rejected record are kept as its excerpt.
pub const EXCERPT_BYTES: usize = 64;

pub fn excerpt(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(EXCERPT_BYTES)];
    let mut out = shown.escape_ascii().to_string();
    if bytes.len() > EXCERPT_BYTES {
        out.push_str("...");
    }
    out
}

/// Something wrong with a whole file: it could not be opened, its
/// compressed data is corrupt, it changed while being read. Records read
/// before the problem are kept and counted; the file is flagged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileProblem {
    /// Where in the (decompressed) file the problem was found, if it is
    /// tied to a place.
    pub offset: Option<u64>,
    pub message: String,
}

impl std::fmt::Display for FileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.offset {
            Some(offset) => write!(f, "at byte {offset}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_escaped_and_bounded() {
        assert_eq!(excerpt(b"a\tb\0\xff"), "a\\tb\\x00\\xff");
        let long = vec![b'x'; 100];
        assert_eq!(excerpt(&long), format!("{}...", "x".repeat(64)));
    }
}
