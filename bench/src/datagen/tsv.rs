//! Tab-separated datasets for keyed ingest.

use std::fs;
use std::io;
use std::ops::RangeInclusive;
use std::path::Path;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::alphabet::push_printable;
use super::pool::Pool;
use super::sink::{Compression, LineWriter};
use super::{GeneratedDataset, check_ratio, invalid_input, rng_for};

/// Shape of a TSV dataset. The same spec always produces the same bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct TsvSpec {
    pub files: usize,
    pub records_per_file: u64,
    /// Fields per record, at least 2.
    pub fields: usize,
    /// 1-based position of the key field.
    pub key_field: usize,
    /// Fraction of records whose key repeats an earlier record's key.
    pub duplicate_key_ratio: f64,
    pub seed: u64,
}

impl TsvSpec {
    /// Small demo dataset: 4 files of 10,000 records, 4 fields keyed on the
    /// first, 30% repeated keys, seed 42.
    pub fn sample() -> Self {
        Self {
            files: 4,
            records_per_file: 10_000,
            fields: 4,
            key_field: 1,
            duplicate_key_ratio: 0.3,
            seed: 42,
        }
    }

    fn validate(&self) -> io::Result<()> {
        if self.fields < 2 {
            return Err(invalid_input(format!(
                "fields must be at least 2, got {}",
                self.fields
            )));
        }
        if !(1..=self.fields).contains(&self.key_field) {
            return Err(invalid_input(format!(
                "key_field {} is not in 1..={}",
                self.key_field, self.fields
            )));
        }
        check_ratio("duplicate_key_ratio", self.duplicate_key_ratio)
    }
}

/// Fresh keys are long enough never to collide by chance.
const KEY_LEN: RangeInclusive<usize> = 12..=20;
const VALUE_LEN: RangeInclusive<usize> = 1..=24;
/// One in this many repeated-key records repeats the earlier record
/// verbatim; the rest carry new values, so which occurrence a keyed ingest
/// keeps is observable.
const VERBATIM_ONE_IN: u32 = 4;

/// Writes plain `part-00000.tsv`, `part-00001.tsv`, ... into `dir`, creating
/// it if needed. Fields are printable ASCII (never tab or newline) and
/// non-empty; every record ends in '\n'. Repeated keys are drawn from
/// earlier records in the same or earlier files.
pub fn write_tsv_dataset(dir: &Path, spec: &TsvSpec) -> io::Result<GeneratedDataset> {
    spec.validate()?;
    fs::create_dir_all(dir)?;
    let mut generator = TsvGenerator::new(spec);
    let mut files = Vec::with_capacity(spec.files);
    for i in 0..spec.files {
        let path = dir.join(format!("part-{i:05}.tsv"));
        let mut out = LineWriter::create(path, Compression::Plain)?;
        for _ in 0..spec.records_per_file {
            generator.emit(&mut out)?;
        }
        files.push(out.finish()?);
    }
    Ok(GeneratedDataset::from_files(files))
}

struct TsvGenerator<'a> {
    spec: &'a TsvSpec,
    rng: ChaCha8Rng,
    /// Records with fresh keys, for later records to take keys from.
    pool: Pool,
    record: Vec<u8>,
}

impl<'a> TsvGenerator<'a> {
    fn new(spec: &'a TsvSpec) -> Self {
        let max_len = spec.fields * (*KEY_LEN.end().max(VALUE_LEN.end()) + 1);
        Self {
            spec,
            rng: rng_for(spec.seed),
            pool: Pool::new(max_len),
            record: Vec::with_capacity(max_len),
        }
    }

    fn emit(&mut self, out: &mut LineWriter) -> io::Result<()> {
        let key_index = self.spec.key_field - 1;
        if self.rng.random_bool(self.spec.duplicate_key_ratio)
            && let Some(earlier) = self.pool.pick(&mut self.rng)
        {
            if self.rng.random_ratio(1, VERBATIM_ONE_IN) {
                return out.write_line(earlier);
            }
            let key = earlier
                .split(|&b| b == b'\t')
                .nth(key_index)
                .expect("pooled records have every field");
            build_record(&mut self.rng, &mut self.record, self.spec, Some(key));
            return out.write_line(&self.record);
        }
        build_record(&mut self.rng, &mut self.record, self.spec, None);
        out.write_line(&self.record)?;
        self.pool.push(&mut self.rng, &self.record);
        Ok(())
    }
}

/// Fills `record` with random fields, using `key` (or a fresh key) at the
/// key position. A free function so `key` can borrow from the pool.
fn build_record(rng: &mut ChaCha8Rng, record: &mut Vec<u8>, spec: &TsvSpec, key: Option<&[u8]>) {
    record.clear();
    for field in 0..spec.fields {
        if field > 0 {
            record.push(b'\t');
        }
        match key {
            Some(key) if field + 1 == spec.key_field => record.extend_from_slice(key),
            _ => {
                let len = if field + 1 == spec.key_field {
                    rng.random_range(KEY_LEN)
                } else {
                    rng.random_range(VALUE_LEN)
                };
                push_printable(rng, record, len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::datagen::testutil::{decoded, lines, sort_record_count};

    fn spec(key_field: usize) -> TsvSpec {
        TsvSpec {
            files: 3,
            records_per_file: 4_000,
            fields: 5,
            key_field,
            duplicate_key_ratio: 0.3,
            seed: 7,
        }
    }

    /// Every record of the dataset, split into fields.
    fn records(dataset: &GeneratedDataset) -> Vec<Vec<Vec<u8>>> {
        dataset
            .files
            .iter()
            .flat_map(|f| {
                lines(&decoded(f))
                    .into_iter()
                    .map(|l| l.split(|&b| b == b'\t').map(<[u8]>::to_vec).collect())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn duplicate_ratio<'a>(values: impl Iterator<Item = &'a [u8]>) -> f64 {
        let values: Vec<&[u8]> = values.collect();
        let distinct: HashSet<&[u8]> = values.iter().copied().collect();
        1.0 - distinct.len() as f64 / values.len() as f64
    }

    #[test]
    fn same_spec_gives_same_bytes() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = write_tsv_dataset(a.path(), &spec(2)).unwrap();
        let second = write_tsv_dataset(b.path(), &spec(2)).unwrap();
        assert_eq!(first.files.len(), 3);
        for (x, y) in first.files.iter().zip(&second.files) {
            assert_eq!(fs::read(&x.path).unwrap(), fs::read(&y.path).unwrap());
        }
    }

    #[test]
    fn repeats_keys_at_the_key_field_only() {
        for key_field in [1, 3, 5] {
            let dir = tempfile::tempdir().unwrap();
            let dataset = write_tsv_dataset(dir.path(), &spec(key_field)).unwrap();
            let records = records(&dataset);
            assert_eq!(records.len(), 12_000);
            for record in &records {
                assert_eq!(record.len(), 5);
                for field in record {
                    assert!(!field.is_empty());
                    assert!(field.iter().all(|b| (0x20..=0x7E).contains(b)));
                }
            }
            for column in 0..5 {
                let ratio = duplicate_ratio(records.iter().map(|r| &r[column][..]));
                if column + 1 == key_field {
                    assert!((ratio - 0.3).abs() < 0.02, "key column: {ratio}");
                } else {
                    // Verbatim repeats plus chance collisions of short values.
                    assert!(ratio < 0.2, "column {}: {ratio}", column + 1);
                }
            }
        }
    }

    #[test]
    fn first_occurrence_wins_is_observable() {
        let dir = tempfile::tempdir().unwrap();
        let dataset = write_tsv_dataset(dir.path(), &spec(2)).unwrap();
        let mut first: HashMap<Vec<u8>, Vec<Vec<u8>>> = HashMap::new();
        let (mut changed, mut verbatim) = (0, 0);
        for record in records(&dataset) {
            match first.get(&record[1]) {
                None => {
                    first.insert(record[1].clone(), record);
                }
                Some(earlier) if *earlier == record => verbatim += 1,
                Some(_) => changed += 1,
            }
        }
        assert!(changed > 1_000, "{changed}");
        assert!(verbatim > 300, "{verbatim}");
    }

    #[test]
    fn reports_exact_counts() {
        let dir = tempfile::tempdir().unwrap();
        let dataset = write_tsv_dataset(dir.path(), &spec(1)).unwrap();
        for (i, file) in dataset.files.iter().enumerate() {
            let data = decoded(file);
            assert_eq!(
                file.path.file_name().unwrap().to_str(),
                Some(format!("part-{i:05}.tsv").as_str())
            );
            assert_eq!(file.compression, Compression::Plain);
            assert_eq!(file.records, 4_000);
            assert_eq!(file.records, sort_record_count(&data));
            assert_eq!(file.uncompressed_bytes, data.len() as u64);
            assert_eq!(data.last(), Some(&b'\n'));
        }
        assert_eq!(dataset.records, 12_000);
    }

    #[test]
    fn rejects_invalid_specs() {
        let dir = tempfile::tempdir().unwrap();
        let bad = [
            TsvSpec {
                fields: 1,
                ..spec(1)
            },
            spec(0),
            spec(6),
            TsvSpec {
                duplicate_key_ratio: -0.1,
                ..spec(1)
            },
        ];
        for spec in bad {
            let err = write_tsv_dataset(dir.path(), &spec).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
    }
}
