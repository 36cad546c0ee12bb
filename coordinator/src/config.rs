//! Raft settings for a coordinator replica, chosen for bounded memory.
//!
//! openraft's defaults send up to 300 entries per AppendEntries; with
//! manifest chunks of up to 1 MiB that is 300 MiB in flight per follower.
//! Here a replication payload stays within 4 entries, snapshots travel in
//! 1 MiB chunks, and the log is compacted every 5000 entries. openraft
//! gives each AppendEntries one heartbeat interval to complete (send,
//! append, fsync): over QUIC, under load, 16 chunks (~19 MiB) did not fit
//! in 250 ms and the same payload was resent forever.

use openraft::{Config, ConfigError, SnapshotPolicy};

/// Most entries in one AppendEntries (each at most ~1 MiB).
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
