//! What an ingest job is told to do, and how its memory budget is divided.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// How records are read from input files and where their key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "lowercase")]
pub enum Format {
    /// One record per line; the key is the whole line, byte for byte, as
    /// `LC_ALL=C sort -u` sees it. The value is empty.
    Lines,
    /// Tab-separated fields; the key is field `key_field` (1-based) and the
    /// value is the whole record.
    Tsv { key_field: usize },
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Format::Lines => write!(f, "lines"),
            Format::Tsv { key_field } => write!(f, "tsv (key field {key_field})"),
        }
    }
}

/// Every knob of an ingest job. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub data_dir: PathBuf,
    pub dataset: String,
    pub format: Format,
    /// The node's whole memory budget in bytes; see [`MemoryPlan`].
    pub memory_bytes: u64,
    /// Scan workers and sort-merge lanes. Defaults to the number of cores.
    pub threads: usize,
    /// Virtual partitions of a new dataset (fixed once the dataset exists;
    /// `None` takes the dataset's, or the default for a new one).
    pub partitions: Option<u16>,
    /// Longer records are rejected and quarantined.
    pub max_record_bytes: u64,
    /// Target size of a batch sent between actors.
    pub batch_bytes: u64,
    /// Plain files larger than this are split into newline-aligned ranges
    /// scanned in parallel.
    pub split_bytes: u64,
    /// Follow symbolic links met inside walked directories (links named as
    /// inputs are always read).
    pub follow_links: bool,
    /// Sorted runs merged at once; more runs mean a multi-pass merge.
    pub max_open_runs: usize,
    /// Size at which a lane rolls over to a new SST file.
    pub sst_target_bytes: u64,
    /// How long shutdown waits for stages to stop before naming the ones
    /// that did not.
    pub shutdown_timeout: Duration,
}

pub const DEFAULT_MEMORY_BYTES: u64 = 512 * MIB;
pub const MIN_MEMORY_BYTES: u64 = 16 * MIB;
pub const DEFAULT_PARTITIONS: u16 = 64;
/// Runs a lane merges at once unless told otherwise (`--max-open-runs`):
/// a lane's runs are filled in half its sort share (two buffers, one
/// spilling while the other fills), so 128 at a time merges as much input
/// in one pass as 64 runs of the whole share did.
pub const DEFAULT_MAX_OPEN_RUNS: usize = 128;
/// The largest `--max-record`: a scanner buffers one whole record.
pub const MAX_RECORD_LIMIT: u64 = 256 * MIB;
/// Partition number reserved in store keys for job records.
pub const MAX_PARTITIONS: u16 = u16::MAX - 1;

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("quern-data"),
            dataset: "default".to_string(),
            format: Format::Lines,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            partitions: None,
            max_record_bytes: MIB,
            batch_bytes: 256 * KIB,
            split_bytes: 64 * MIB,
            follow_links: false,
            max_open_runs: DEFAULT_MAX_OPEN_RUNS,
            sst_target_bytes: 256 * MIB,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--memory {0} is below the minimum of {MIN_MEMORY_BYTES} bytes (16 MiB)")]
    MemoryTooSmall(u64),
    #[error("--threads must be at least 1")]
    NoThreads,
    #[error("--partitions must be between 1 and {MAX_PARTITIONS}, got {0}")]
    Partitions(u16),
    #[error("--key-field is 1-based and must be at least 1")]
    KeyField,
    #[error("--max-record must be between 1 byte and 256 MiB, got {0}")]
    MaxRecord(u64),
    #[error("--max-open-runs must be at least 2, got {0}")]
    OpenRuns(usize),
    #[error("--batch-bytes must be between 4 KiB and 64 MiB, got {0}")]
    BatchBytes(u64),
    #[error("--split-bytes must be at least 1 MiB, got {0}")]
    SplitBytes(u64),
    #[error("dataset name must be 1-128 characters of [A-Za-z0-9._-], got {0:?}")]
    DatasetName(String),
}

impl IngestConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.memory_bytes < MIN_MEMORY_BYTES {
            return Err(ConfigError::MemoryTooSmall(self.memory_bytes));
        }
        if self.threads == 0 {
            return Err(ConfigError::NoThreads);
        }
        if let Some(p) = self.partitions.filter(|&p| p == 0 || p > MAX_PARTITIONS) {
            return Err(ConfigError::Partitions(p));
        }
        if let Format::Tsv { key_field: 0 } = self.format {
            return Err(ConfigError::KeyField);
        }
        if !(1..=MAX_RECORD_LIMIT).contains(&self.max_record_bytes) {
            return Err(ConfigError::MaxRecord(self.max_record_bytes));
        }
        if self.max_open_runs < 2 {
            return Err(ConfigError::OpenRuns(self.max_open_runs));
        }
        if !(4 * KIB..=64 * MIB).contains(&self.batch_bytes) {
            return Err(ConfigError::BatchBytes(self.batch_bytes));
        }
        if self.split_bytes < MIB {
            return Err(ConfigError::SplitBytes(self.split_bytes));
        }
        validate_dataset_name(&self.dataset)
    }
}

pub fn validate_dataset_name(name: &str) -> Result<(), ConfigError> {
    let ok = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::DatasetName(name.to_string()))
    }
}

/// Gauge of the bytes of each scanner's cache of recent keys.
pub const RECENT_KEYS_BYTES_METRIC: &str = "quern_scan_recent_keys_bytes";

/// The memory budget divided into named shares, each printed at start-up.
///
/// - `rocksdb`: half for the block cache, with the memtables charged to it
///   through one WriteBufferManager; half for the lanes' SST writers, which
///   hold per-key filter and index state until a file is finished, so files
///   are cut at [`sst_file_keys`](Self::sst_file_keys).
/// - `in_flight`: bytes queued on the edges between actors, plus the batches
///   scanners are filling.
/// - `sort`: run buffers and merge buffers, split evenly across lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    pub budget: u64,
    pub rocksdb: u64,
    pub in_flight: u64,
    pub sort: u64,
    pub lanes: usize,
    /// Bytes each edge may hold before senders wait.
    pub edge_capacity: u64,
    /// Batch size actually used: the configured size, shrunk if edges are
    /// too small to hold a few batches each.
    pub batch_bytes: u64,
    /// Per lane: bytes of records gathered before a run is sorted and
    /// spilled. A lane holds two such buffers: one filling while the
    /// other is sorted and spilled.
    pub run_bytes: u64,
    /// Per lane: target size of one frame of a spilled run; a merge holds
    /// one frame per open run.
    pub spill_frame_bytes: u64,
    /// Per lane: keys in one SST file, so its writer stays within the
    /// lane's part of the RocksDB share.
    pub sst_file_keys: u64,
    /// Per scanner: its cache of recent keys (`recent_keys`), taken from
    /// the in-flight share.
    pub recent_keys_bytes: u64,
    /// Each way, what the shuffle's QUIC windows may hold, all links
    /// together, taken from the in-flight share; 0 on a node alone.
    pub shuffle_window: u64,
}

/// A node in a cluster's shuffle gives its data channel's windows this
/// fraction of the in-flight share each way (1/64 of the budget each way:
/// 2 MiB of a 128 MiB node's).
pub const SHUFFLE_WINDOW_FRACTION: u64 = 8;

/// Memory an SST writer holds per key until the file is finished (filter
/// hashes, index entries, allocator slack), measured with RSS sampling on
/// generated lines: ~17 bytes; rounded up.
const SST_WRITER_BYTES_PER_KEY: u64 = 24;
/// Files smaller than this many keys would only multiply files.
const MIN_SST_FILE_KEYS: u64 = 16 * 1024;
/// Bounds of a scanner's cache of recent keys (`recent_keys`).
const MIN_RECENT_KEYS_BYTES: u64 = 64 * KIB;
const MAX_RECENT_KEYS_BYTES: u64 = MIB;

impl MemoryPlan {
    /// RocksDB's share of a budget: known before the store is opened, so it
    /// depends on nothing else.
    pub fn rocksdb_share(budget: u64) -> u64 {
        (budget / 8).max(8 * MIB)
    }

    /// The block cache (and memtables) part of RocksDB's share.
    pub fn rocksdb_cache_bytes(budget: u64) -> u64 {
        Self::rocksdb_share(budget) / 2
    }

    pub fn new(budget: u64, lanes: usize, batch_bytes: u64) -> Self {
        Self::split(budget, lanes, lanes, false, batch_bytes)
    }

    /// The plan of a node in a cluster's shuffle: its scanners also fill a
    /// batch and an edge per remote lane (`destinations` counts its own
    /// lanes and the remote ones), and the data channel's windows take
    /// their share of the in-flight bytes, so the node's memory stays
    /// within its budget however many peers it has.
    pub fn shuffling(budget: u64, lanes: usize, destinations: usize, batch_bytes: u64) -> Self {
        Self::split(budget, lanes, destinations.max(lanes), true, batch_bytes)
    }

    fn split(
        budget: u64,
        lanes: usize,
        destinations: usize,
        shuffling: bool,
        batch_bytes: u64,
    ) -> Self {
        let lanes = lanes.max(1);
        let rocksdb = Self::rocksdb_share(budget);
        let in_flight = budget / 8;
        let sort = budget - rocksdb - in_flight;
        let shuffle_window = if shuffling {
            in_flight / SHUFFLE_WINDOW_FRACTION
        } else {
            0
        };
        let edges_and_batches = in_flight - 2 * shuffle_window;
        // Each lane has three inbound edges (sort-merge, dedup, commit),
        // each remote lane one, and each scanner fills one batch per
        // destination: give the edges half of the in-flight share and the
        // scanners' open batches the other half.
        let edges = (3 * lanes + (destinations - lanes)) as u64;
        let edge_capacity = edges_and_batches / 2 / edges;
        let open_batches = (lanes * destinations) as u64;
        let batch_bytes = batch_bytes
            .min(edge_capacity / 2)
            .min(edges_and_batches / 2 / open_batches)
            .max(4 * KIB);
        let sort_per_lane = sort / lanes as u64;
        // A lane's merge holds one frame per open run. Frames of a
        // sixteenth of the share over the default number of open runs keep
        // the merge small beside the scan phase's run buffers, so the final
        // merge, whose fan-in grows with the input up to that number, never
        // sets the peak (with a quarter, the peak rose 9% from 2 GB to 8 GB
        // of input). Runs are gathered in three quarters of the share, in
        // two buffers (one filling while the other spills): the rest is
        // headroom for the merge and the governor's measurements.
        let spill_frame_bytes =
            (sort_per_lane / 16 / DEFAULT_MAX_OPEN_RUNS as u64).clamp(16 * KIB, MIB);
        let run_bytes = (sort_per_lane - sort_per_lane / 4) / 2;
        let writers = rocksdb - Self::rocksdb_cache_bytes(budget);
        let sst_file_keys =
            (writers / lanes as u64 / SST_WRITER_BYTES_PER_KEY).max(MIN_SST_FILE_KEYS);
        let recent_keys_bytes =
            (in_flight / 8 / lanes as u64).clamp(MIN_RECENT_KEYS_BYTES, MAX_RECENT_KEYS_BYTES);
        Self {
            budget,
            rocksdb,
            in_flight,
            sort,
            lanes,
            edge_capacity,
            batch_bytes,
            run_bytes,
            spill_frame_bytes,
            sst_file_keys,
            recent_keys_bytes,
            shuffle_window,
        }
    }
}

impl MemoryPlan {
    /// The heap the pipeline may hold: everything but RocksDB's share,
    /// which RocksDB allocates outside the tracked heap.
    pub fn heap_bytes(&self) -> u64 {
        self.budget - self.rocksdb
    }

    /// The budget and its shares as gauges.
    pub fn publish_metrics(&self) {
        metrics::gauge!("quern_memory_budget_bytes").set(self.budget as f64);
        for (share, bytes) in [
            ("rocksdb", self.rocksdb),
            ("sort", self.sort),
            ("in_flight", self.in_flight),
        ] {
            metrics::gauge!("quern_memory_share_bytes", "share" => share).set(bytes as f64);
        }
        metrics::gauge!(RECENT_KEYS_BYTES_METRIC).set(self.recent_keys_bytes as f64);
    }
}

impl std::fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / MIB as f64;
        write!(
            f,
            "memory budget {:.0} MiB: sort {:.1} MiB ({} lanes x 2 x {:.1} MiB runs), \
             in-flight {:.1} MiB (edges of {:.2} MiB, batches of {} KiB, \
             recent keys {} KiB per scanner), \
             rocksdb {:.1} MiB (half cache, half SST writers: files of {} keys)",
            mib(self.budget),
            mib(self.sort),
            self.lanes,
            mib(self.run_bytes),
            mib(self.in_flight),
            mib(self.edge_capacity),
            self.batch_bytes / KIB,
            self.recent_keys_bytes / KIB,
            mib(self.rocksdb),
            self.sst_file_keys,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_budget() {
        for budget in [
            MIN_MEMORY_BYTES,
            64 * MIB,
            128 * MIB,
            DEFAULT_MEMORY_BYTES,
            8 << 30,
        ] {
            for lanes in [1, 2, 8] {
                let plan = MemoryPlan::new(budget, lanes, 256 * KIB);
                assert_eq!(plan.rocksdb + plan.in_flight + plan.sort, budget);
                assert!(plan.edge_capacity >= 2 * plan.batch_bytes || plan.batch_bytes == 4 * KIB);
                // Two run buffers per lane: one filling, one spilling.
                assert!(2 * plan.run_bytes * lanes as u64 <= plan.sort);
            }
        }
    }

    /// A shuffling node's edges, open batches and windows stay within the
    /// in-flight share, however many remote lanes it sends to.
    #[test]
    fn a_shuffling_node_stays_within_its_share() {
        for budget in [MIN_MEMORY_BYTES, 128 * MIB, 8 << 30] {
            for destinations in [2, 8, 64, 512] {
                let lanes = 2;
                let plan = MemoryPlan::shuffling(budget, lanes, destinations, 256 * KIB);
                let edges = (3 * lanes + destinations - lanes) as u64 * plan.edge_capacity;
                let batches = (lanes * destinations) as u64 * plan.batch_bytes;
                let held = edges + batches + 2 * plan.shuffle_window;
                assert!(
                    held <= plan.in_flight || plan.batch_bytes == 4 * KIB,
                    "{destinations} destinations hold {held} of {}",
                    plan.in_flight
                );
                assert_eq!(plan.rocksdb + plan.in_flight + plan.sort, budget);
            }
        }
        assert_eq!(MemoryPlan::new(128 * MIB, 2, 256 * KIB).shuffle_window, 0);
    }

    #[test]
    fn small_budgets_shrink_batches() {
        let plan = MemoryPlan::new(MIN_MEMORY_BYTES, 2, 256 * KIB);
        assert!(plan.batch_bytes < 256 * KIB, "{plan}");
        let roomy = MemoryPlan::new(DEFAULT_MEMORY_BYTES, 2, 256 * KIB);
        assert_eq!(roomy.batch_bytes, 256 * KIB);
    }

    #[test]
    fn validation_names_the_bad_setting() {
        let bad = IngestConfig {
            memory_bytes: MIB,
            ..IngestConfig::default()
        };
        assert_eq!(bad.validate(), Err(ConfigError::MemoryTooSmall(MIB)));
        let bad = IngestConfig {
            format: Format::Tsv { key_field: 0 },
            ..IngestConfig::default()
        };
        assert_eq!(bad.validate(), Err(ConfigError::KeyField));
        assert!(validate_dataset_name("logs-2026.v1").is_ok());
        assert!(validate_dataset_name("a/b").is_err());
        assert!(validate_dataset_name("").is_err());
        assert!(IngestConfig::default().validate().is_ok());
    }
}
