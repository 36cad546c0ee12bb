//! Benchmark and test support for Quern.
//!
//! [`datagen`] writes reproducible input datasets (line files and keyed TSV)
//! whose `LC_ALL=C sort -u` is the oracle for `quern export`.

pub mod datagen;
