//! Benchmark and test support for Quern.
//!
//! [`datagen`] writes reproducible input datasets (random and real-shaped
//! line files, many small files, keyed TSV) whose `LC_ALL=C sort -u` is the
//! oracle for `quern export` ([`oracle`]).

pub mod datagen;
pub mod oracle;
