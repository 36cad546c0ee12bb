//! A Quern node: the ingest pipeline (scan, sort-merge, dedup, commit
//! actors), its memory plan, and the node's RocksDB store.

pub mod config;
pub mod counters;
pub mod dedup;
pub mod edge;
pub mod input;
pub mod quarantine;
pub mod sort;
pub mod store;
