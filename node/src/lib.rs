//! A Quern node: the ingest pipeline (scan, sort-merge, dedup, commit
//! actors), its memory plan, the node's RocksDB store, and its side of the
//! shuffle between nodes.

pub mod actors;
pub mod config;
pub mod counters;
pub mod data_dir_space;
pub mod edge;
pub mod export;
pub mod ingest;
pub mod input;
pub mod job_runtime;
pub mod leased_job;
pub mod lookup;
pub mod memory;
pub mod metric_catalog;
pub mod quarantine;
pub mod reads;
pub mod recent_keys;
pub mod shuffle;
pub mod staged_parts;
pub mod store;
pub mod tally_runs;
