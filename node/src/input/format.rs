//! Finding the key and value of a record, per the dataset's format.

use memchr::memchr_iter;

use crate::config::Format;
use crate::quarantine::Rejection;

/// The key and value of `record`, or why it has none.
pub fn extract(format: Format, record: &[u8]) -> Result<(&[u8], &[u8]), Rejection> {
    match format {
        Format::Lines => Ok((record, &[])),
        Format::Tsv { key_field } => {
            let mut start = 0;
            let mut fields = 1;
            for tab in memchr_iter(b'\t', record) {
                if fields == key_field {
                    return Ok((&record[start..tab], record));
                }
                start = tab + 1;
                fields += 1;
            }
            if fields == key_field {
                Ok((&record[start..], record))
            } else {
                Err(Rejection::MissingKeyField { fields, key_field })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_every_byte() {
        let record = b"\0a\r \xff";
        assert_eq!(extract(Format::Lines, record), Ok((&record[..], &b""[..])));
        assert_eq!(extract(Format::Lines, b""), Ok((&b""[..], &b""[..])));
    }

    #[test]
    fn tsv_picks_the_field_and_keeps_the_record() {
        let record = b"a\tbb\t\tdd\r";
        let tsv = |n| extract(Format::Tsv { key_field: n }, record);
        assert_eq!(tsv(1), Ok((&b"a"[..], &record[..])));
        assert_eq!(tsv(2), Ok((&b"bb"[..], &record[..])));
        assert_eq!(tsv(3), Ok((&b""[..], &record[..])));
        assert_eq!(tsv(4), Ok((&b"dd\r"[..], &record[..])));
        let missing = tsv(5).unwrap_err();
        assert_eq!(
            missing,
            Rejection::MissingKeyField {
                fields: 4,
                key_field: 5
            }
        );
        assert_eq!(
            missing.to_string(),
            "record has 4 tab-separated field(s); --key-field 5 needs at least 5"
        );
    }
}
