//! Raft settings for a coordinator replica, chosen for bounded memory.
//!
//! openraft's defaults send up to 300 entries per AppendEntries; with
//! submission chunks of up to 1 MiB that is 300 MiB in flight per follower.
//! openraft 0.9 bounds a payload by entries only, so the bound in bytes is
//! entries times the largest entry: a chunk's rkyv archive is at most
//! `MAX_CHUNK_BYTES` plus ~40 bytes per file, ~1.2 MiB, and no entry is
//! over `MAX_COMMAND_BYTES` (2 MiB; the leader refuses larger commands
//! before the log), so a payload fits the transport's message limit (a
//! test below checks it). openraft also gives
//! each AppendEntries one heartbeat interval to complete (send, append,
//! fsync): over QUIC, under load, 16 chunks (~19 MiB) did not fit in 250 ms
//! and the same payload was resent forever. So a payload holds at most 4
//! entries (~5 MiB), the heartbeat is 500 ms, snapshots travel in 1 MiB
//! chunks, and the log is compacted every 5000 entries.

use openraft::{Config, ConfigError, SnapshotPolicy};

/// Most entries in one AppendEntries (each at most `MAX_COMMAND_BYTES`,
/// ~1.2 MiB for the largest manifest chunk).
pub const MAX_PAYLOAD_ENTRIES: u64 = 4;
/// Entries between two snapshots, unless configured.
pub const SNAPSHOT_EVERY: u64 = 5000;

pub fn raft_config() -> Result<Config, ConfigError> {
    raft_config_snapshotting_every(SNAPSHOT_EVERY)
}

/// `raft_config` for replicas in one process (`embedded`), which answer
/// each other in microseconds, not over a network: a 50 ms heartbeat and
/// elections within 300-600 ms, so a lost leader is replaced in under a
/// second.
pub fn raft_config_in_process() -> Result<Config, ConfigError> {
    Config {
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        ..raft_config()?
    }
    .validate()
}

/// `raft_config` with a snapshot every `entries` entries.
pub fn raft_config_snapshotting_every(entries: u64) -> Result<Config, ConfigError> {
    Config {
        cluster_name: "quern".into(),
        heartbeat_interval: 500,
        election_timeout_min: 1500,
        election_timeout_max: 3000,
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(entries),
        max_in_snapshot_log_to_keep: 1000,
        snapshot_max_chunk_size: 1 << 20,
        purge_batch_size: 256,
        ..Default::default()
    }
    .validate()
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
    use proto_schema::command::MAX_COMMAND_BYTES;
    use proto_schema::coordinator_api::{self, Request};

    use super::*;
    use crate::CommandBytes;
    use crate::rpc::{self, AppendEntriesRequest, RaftRpc};

    /// The largest AppendEntries a leader sends, in its envelope, stays
    /// within what the endpoints accept: replication never stalls on an
    /// entry it cannot carry.
    #[test]
    fn a_full_replication_payload_fits_the_transport() {
        let log_id = |index| LogId::new(CommittedLeaderId::new(u64::MAX, u64::MAX), index);
        let entries = (0..MAX_PAYLOAD_ENTRIES)
            .map(|i| Entry {
                log_id: log_id(u64::MAX - i),
                payload: EntryPayload::Normal(CommandBytes(vec![0xff; MAX_COMMAND_BYTES])),
            })
            .collect();
        let append = RaftRpc::AppendEntries(AppendEntriesRequest {
            vote: Vote::new_committed(u64::MAX, u64::MAX),
            prev_log_id: Some(log_id(u64::MAX)),
            entries,
            leader_commit: Some(log_id(u64::MAX)),
        });
        let message = rpc::to_message(&append).unwrap();
        let envelope = coordinator_api::encode(&Request::Raft(message)).unwrap();
        let limit = crate::service::rpc_config().max_message as usize;
        assert!(envelope.len() <= limit, "{} > {limit}", envelope.len());
    }
}
