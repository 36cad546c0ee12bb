//! Raft settings for a coordinator replica, chosen for bounded memory.
//!
//! openraft's defaults send up to 300 entries per AppendEntries; with
//! submission chunks of up to 1 MiB that is 300 MiB in flight per follower.
//! openraft 0.9 bounds a payload by entries only, so the bound in bytes is
//! entries times the largest entry: a chunk's rkyv archive is at most
//! `MAX_CHUNK_BYTES` plus ~40 bytes per file, ~1.2 MiB. openraft also gives
//! each AppendEntries one heartbeat interval to complete (send, append,
//! fsync): over QUIC, under load, 16 chunks (~19 MiB) did not fit in 250 ms
//! and the same payload was resent forever. So a payload holds at most 4
//! entries (~5 MiB), the heartbeat is 500 ms, snapshots travel in 1 MiB
//! chunks, and the log is compacted every 5000 entries.

use openraft::{Config, ConfigError, SnapshotPolicy};

/// Most entries in one AppendEntries (each at most ~1.2 MiB).
pub const MAX_PAYLOAD_ENTRIES: u64 = 4;

pub fn raft_config() -> Result<Config, ConfigError> {
    Config {
        cluster_name: "quern".into(),
        heartbeat_interval: 500,
        election_timeout_min: 1500,
        election_timeout_max: 3000,
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(5000),
        max_in_snapshot_log_to_keep: 1000,
        snapshot_max_chunk_size: 1 << 20,
        purge_batch_size: 256,
        ..Default::default()
    }
    .validate()
}
