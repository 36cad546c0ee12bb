//! Every metric a node records, with its help text: the one list to read
//! when wiring a dashboard. The modules that own the figures set them;
//! this only describes them to whichever recorder is installed (the
//! Prometheus endpoint prints the text as `# HELP`).

use metrics::{Unit, describe_counter, describe_gauge};
use proto_schema::quic::channel;

/// Gauges: (name, unit, help).
const GAUGES: &[(&str, Unit, &str)] = &[
    (
        "quern_memory_budget_bytes",
        Unit::Bytes,
        "The node's memory budget (--memory).",
    ),
    (
        "quern_memory_share_bytes",
        Unit::Bytes,
        "The budget's share for each use (label share: rocksdb, sort, in_flight).",
    ),
    (
        "quern_allocator_live_bytes",
        Unit::Bytes,
        "Heap bytes live in the tracking allocator, all actors and unattributed.",
    ),
    (
        "quern_allocator_peak_bytes",
        Unit::Bytes,
        "Highest allocator live bytes seen by the current job's monitor.",
    ),
    (
        "quern_allocator_committed_bytes",
        Unit::Bytes,
        "Memory mimalloc holds from the OS: live heap plus free pages not yet returned.",
    ),
    (
        "quern_actor_live_bytes",
        Unit::Bytes,
        "Heap bytes live, allocated while an actor handled its messages (label actor).",
    ),
    (
        "quern_actor_peak_bytes",
        Unit::Bytes,
        "Highest live heap bytes of an actor in the current job (label actor).",
    ),
    (
        "quern_process_anon_rss_bytes",
        Unit::Bytes,
        "Anonymous resident memory of the process (RssAnon in /proc/self/status).",
    ),
    (
        "quern_process_file_rss_bytes",
        Unit::Bytes,
        "File-backed resident memory of the process (RssFile), mostly page cache of mapped files.",
    ),
    (
        "quern_rocksdb_block_cache_bytes",
        Unit::Bytes,
        "RocksDB block cache usage, including the memtables charged to it.",
    ),
    (
        "quern_rocksdb_block_cache_pinned_bytes",
        Unit::Bytes,
        "Block cache entries pinned by readers and memtables.",
    ),
    (
        "quern_rocksdb_memtable_bytes",
        Unit::Bytes,
        "Memtable bytes counted by the write buffer manager.",
    ),
    (
        "quern_rocksdb_table_readers_bytes",
        Unit::Bytes,
        "Memory of open SST readers outside the block cache (estimate).",
    ),
    (
        "quern_edge_capacity_bytes",
        Unit::Bytes,
        "Bytes an edge between two stages may hold in flight (label edge).",
    ),
    (
        "quern_edge_queued_bytes",
        Unit::Bytes,
        "Bytes sent on an edge and not yet released by its receiver (label edge).",
    ),
    (
        "quern_edge_queued_messages",
        Unit::Count,
        "Messages sent on an edge and not yet released by its receiver (label edge).",
    ),
    (
        "quern_edge_wait_seconds",
        Unit::Seconds,
        "Seconds senders have waited for room on an edge in the current job: back-pressure time (label edge).",
    ),
    (
        "quern_batch_pool_bytes",
        Unit::Bytes,
        "Bytes of batch buffers kept for reuse.",
    ),
    (
        "quern_governor_pressure_ratio",
        Unit::Count,
        "Memory pressure from 0 (heap at or below the soft limit) to 1 (at the hard limit).",
    ),
    (
        "quern_governor_scan_credit_bytes",
        Unit::Bytes,
        "Bytes the scanners may have in flight at the current pressure.",
    ),
    (
        "quern_governor_run_bytes",
        Unit::Bytes,
        "Size at which a sort lane spills its run at the current pressure.",
    ),
    (
        "quern_governor_soft_limit_bytes",
        Unit::Bytes,
        "Heap level from which the governor shrinks credits and runs.",
    ),
    (
        "quern_governor_hard_limit_bytes",
        Unit::Bytes,
        "Heap level above which no new shard starts.",
    ),
    (
        crate::config::RECENT_KEYS_BYTES_METRIC,
        Unit::Bytes,
        "Bytes of each scanner's cache of recent keys (exact early dedup), from the in-flight share.",
    ),
    (
        crate::counters::JOB_BYTES_METRIC,
        Unit::Bytes,
        "Bytes of the current job's input (label phase: listed, scanned): its progress.",
    ),
    (
        crate::counters::JOB_RECORDS_METRIC,
        Unit::Count,
        "Records of the current job (label outcome: read, unique, duplicate, rejected, merged; received: from peers' shuffle streams).",
    ),
    (
        crate::counters::JOB_FILES_METRIC,
        Unit::Count,
        "Files listed for the current job.",
    ),
    (
        channel::SEND_BLOCKED_METRIC,
        Unit::Seconds,
        "Seconds this node's shuffle streams waited for a peer to take their frames: the owner's \
         back-pressure (label link: the peer's certificate name).",
    ),
    (
        channel::RECEIVE_BLOCKED_METRIC,
        Unit::Seconds,
        "Seconds this node, as an owner, left a peer's stream unread while its lane had no room \
         (label link).",
    ),
    (
        channel::LINKS_METRIC,
        Unit::Count,
        "Live links of the shuffle's data channel, both ways.",
    ),
    (
        channel::LINK_WINDOW_METRIC,
        Unit::Bytes,
        "The receive window each live link gets: the node's window budget over its links.",
    ),
    (
        crate::data_dir_space::DATA_DIR_SIZE_METRIC,
        Unit::Bytes,
        "Size of the file system holding the data directory (a node's store and spilled runs, \
         a coordinator's Raft log and state).",
    ),
    (
        crate::data_dir_space::DATA_DIR_AVAILABLE_METRIC,
        Unit::Bytes,
        "Bytes of the file system holding the data directory that Quern may still write \
         (statvfs f_bavail: blocks reserved for root do not count).",
    ),
    (
        proto_schema::cert_expiry::CERT_EXPIRY_METRIC,
        Unit::Count,
        proto_schema::cert_expiry::CERT_EXPIRY_HELP,
    ),
    (
        crate::store::publish::JOB_RECORD_FILES_METRIC,
        Unit::Count,
        "SST files holding job records, in the dataset last published (compacted into one \
         past a small fixed limit, so they do not grow with the number of jobs).",
    ),
    (
        crate::store::ledger::LEDGER_SMALL_FILES_METRIC,
        Unit::Count,
        "Small SST files holding file entries (part=\"files\") or per-file counts \
         (part=\"counts\"), in the dataset last written (each job ingests its own; compacted \
         together past a small fixed limit).",
    ),
];

/// Counters: (name, help).
const COUNTERS: &[(&str, &str)] = &[
    (
        crate::actors::scan::REPEATS_DROPPED_METRIC,
        "Records the scanners counted as duplicates at once, their key having been met at an \
         earlier position in their cache of recent keys (exact: whole keys compared).",
    ),
    (
        crate::actors::feed::HELD_METRIC,
        "Times a shard's start was held back because the heap was over the hard limit.",
    ),
    (
        crate::store::publish::SST_FILES_METRIC,
        "SST files written by ingest jobs (label compression: lz4, or none once LZ4 stopped \
         paying for the data).",
    ),
    (
        channel::SENT_BYTES_METRIC,
        "Bytes of frames this node sent on its shuffle streams and read streams (label link: \
         the peer's certificate name).",
    ),
    (
        channel::READ_STREAMS_METRIC,
        "Read streams (cluster export, get, stats) this node answered from its store (label \
         outcome: complete, failed, abandoned).",
    ),
    (
        crate::reads::service::READ_REFUSED_METRIC,
        "Read streams this node refused (label reason: certificate, a role that may not read; \
         busy, at the most it answers at once).",
    ),
    (
        channel::RECEIVED_BYTES_METRIC,
        "Bytes of frames this node received on its peers' shuffle streams (label link).",
    ),
    (
        channel::REFUSED_METRIC,
        "Shuffle streams this node refused (label reason: unknown_job, stale_epoch, not_owner, \
         wrong_sender, damaged, owner_gone, owner_stalled).",
    ),
    (
        channel::STREAMS_METRIC,
        "Shuffle streams this node served as an owner (label outcome: accepted, refused, \
         abandoned).",
    ),
    (
        proto_schema::quic::PEER_REFUSED_METRIC,
        "Peers refused in the TLS handshake for lacking a certificate from the cluster CA \
         (label reason: no_certificate, unknown_ca, bad_certificate, expired, bad_signature, \
         wrong_purpose, no_common_protocol, handshake_failed; label role: ours, server or client).",
    ),
    (
        proto_schema::quic::CONNECTION_REFUSED_METRIC,
        "Connections a server refused before their handshake, at a limit (label reason: \
         connections, handshakes, handshakes_per_address).",
    ),
];

/// The name of every metric a node records.
pub fn names() -> impl Iterator<Item = &'static str> {
    GAUGES
        .iter()
        .map(|&(name, ..)| name)
        .chain(COUNTERS.iter().map(|&(name, _)| name))
}

/// Describes every metric above to the installed recorder. Call once,
/// after installing it.
pub fn describe() {
    for &(name, unit, help) in GAUGES {
        describe_gauge!(name, unit, help);
    }
    for &(name, help) in COUNTERS {
        describe_counter!(name, help);
    }
}
