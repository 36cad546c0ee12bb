//! The shuffle on a node: records whose partitions another node owns go to
//! it over the data channel (`proto_schema::quic::channel`), and records
//! other nodes send arrive in this node's lanes.
//!
//! ```text
//! sender:  scan ─Edge─► RemoteLane ─► BatchStream ══QUIC══►
//! owner:   ══QUIC══► Inbound (checks, then reserves Edge credit) ─Edge─► sort-merge[lane]
//! ```
//! Back-pressure is one chain of byte bounds: an owner's full sort-merge
//! leaves its edge without credit, so the owner stops reading the stream;
//! the stream's QUIC windows (sized here from the memory budget) fill, so
//! the sender's writes wait; the remote lane's edge keeps its credits
//! until a batch is written, so it fills and the scanner waits on it, as
//! it waits on a local lane.
//!
//! - `remote_lane`: [`RemoteLane`], the end of a scanner's edge that is a
//!   stream to a remote owner.
//! - `inbound`: [`Inbound`], the owner's side: which jobs it takes streams
//!   for, under which partition map, into which lanes.
//!
//! A job with a [`ShuffleJob`] routes each partition to its lane here or to
//! a remote owner's lane (`actors::Routes`); once its scanners are done it
//! ends its streams, and its lanes finish once those streams are taken and
//! every stream its peers owe it has arrived.

pub mod inbound;
pub mod remote_lane;
#[cfg(test)]
pub(crate) mod test_support;

pub use inbound::Inbound;
pub use remote_lane::{RemoteLane, RemoteOutcome};

use proto_schema::quic::channel::{ChannelConfig, Link};
use proto_schema::shuffle::PartitionRange;
use proto_schema::{Epoch, JobId, NodeId};

use crate::config::{IngestConfig, MemoryPlan};

/// A job's part in a cluster's shuffle: what the partition map says this
/// node owns and where the rest goes.
pub struct ShuffleJob {
    /// The cluster's id for the job (a node's store numbers its own jobs).
    pub job: JobId,
    /// The partition map's epoch.
    pub epoch: Epoch,
    /// This node.
    pub node: NodeId,
    /// The partitions this node owns; its lanes split them
    /// (`LaneMap::over`).
    pub owned: PartitionRange,
    /// Every other owner's lanes, each with the link to its owner.
    pub remote: Vec<RemoteRange>,
    /// Where this node takes its peers' streams.
    pub inbound: Inbound,
    /// Streams this node's lanes take before their input is complete:
    /// one per peer and lane.
    pub expected_streams: u64,
}

/// One lane of another owner.
pub struct RemoteRange {
    pub partitions: PartitionRange,
    pub link: Link,
}

/// A frame carries one batch: a batch fills to the batch size and may then
/// take one more record of at most the longest record; this covers the
/// archive's own bytes around them.
const FRAME_SLACK: u64 = 4 << 10;

/// The data channel's limits for a node with this memory plan
/// ([`MemoryPlan::shuffling`]): windows from its budget (which the windows
/// then split among live links), frames as large as its batches can be.
pub fn channel_config(plan: &MemoryPlan, config: &IngestConfig) -> ChannelConfig {
    let window_budget = plan.shuffle_window;
    let defaults = ChannelConfig::default();
    let min_link_window = defaults.min_link_window.min(window_budget);
    ChannelConfig {
        receive_budget: window_budget,
        send_budget: window_budget,
        min_link_window,
        // One stream may use a link's whole window, and no more.
        stream_window: window_budget.max(min_link_window),
        max_frame: u32::try_from(plan.batch_bytes + config.max_record_bytes + FRAME_SLACK)
            .unwrap_or(u32::MAX),
        ..defaults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_come_from_the_budget() {
        let config = IngestConfig::default();
        for budget in [16u64 << 20, 128 << 20, 512 << 20, 8 << 30] {
            let plan = MemoryPlan::shuffling(budget, 2, 4, config.batch_bytes);
            let channel = channel_config(&plan, &config);
            assert_eq!(channel.receive_budget, budget / 64);
            assert_eq!(channel.send_budget, budget / 64);
            assert!(channel.min_link_window <= channel.receive_budget);
            // The largest batch a scanner can build fits in a frame.
            assert!(u64::from(channel.max_frame) >= plan.batch_bytes + config.max_record_bytes);
        }
    }
}
