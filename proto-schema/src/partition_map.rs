//! Which node owns which partitions of a dataset: contiguous ranges, one
//! per live node, under an epoch. A new map (a node joined or was lost) has
//! the next epoch, and whatever carries an older epoch (a data stream, an
//! owner's report) is refused. Replicated as part of the coordinators'
//! state (rkyv) and sent to nodes in the API's envelope (serde).

use rkyv::{Archive, Deserialize, Serialize};

use crate::ids::{Epoch, NodeId, PartitionId};

/// Most partitions a dataset may have (a partition is a `u16`, and a
/// range's end is one past its last).
pub const MAX_PARTITIONS: u16 = u16::MAX - 1;

/// Partitions `start..end`, owned by `node`.
#[derive(
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
)]
pub struct PartitionRange {
    pub start: PartitionId,
    pub end: PartitionId,
    pub node: NodeId,
}

#[derive(
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
    Debug,
    Clone,
    PartialEq,
    Eq,
)]
pub struct PartitionMap {
    pub epoch: Epoch,
    /// The dataset's partition count, fixed when it was created.
    pub partitions: u16,
    /// In partition order, covering `0..partitions` without a gap.
    pub ranges: Vec<PartitionRange>,
}

impl PartitionMap {
    /// `partitions` cut into contiguous ranges as even as can be, one per
    /// node in `nodes` (sorted, distinct), in that order; a node gets none
    /// only when there are more nodes than partitions. A pure function of
    /// its arguments, so every replica and node computes the same map.
    pub fn split(partitions: u16, nodes: &[NodeId], epoch: Epoch) -> Self {
        let count = nodes.len().min(usize::from(partitions));
        let ranges = (0..count)
            .map(|i| {
                let at = |i: usize| (i * usize::from(partitions) / count) as u16;
                PartitionRange {
                    start: PartitionId(at(i)),
                    end: PartitionId(at(i + 1)),
                    node: nodes[i],
                }
            })
            .collect();
        Self {
            epoch,
            partitions,
            ranges,
        }
    }

    /// The node owning `partition`.
    pub fn owner(&self, partition: PartitionId) -> Option<NodeId> {
        self.ranges
            .iter()
            .find(|r| r.start <= partition && partition < r.end)
            .map(|r| r.node)
    }

    /// The nodes owning a range, in partition order.
    pub fn nodes(&self) -> Vec<NodeId> {
        self.ranges.iter().map(|r| r.node).collect()
    }

    /// This map at `epoch` with `lost`'s range joined to that of its
    /// neighbour in partition order (the one before it, else the one
    /// after) if `live` holds that neighbour: the neighbour, and the map.
    /// Every other range stays as it is. `None` if `lost` owns no range
    /// or has no live neighbour.
    pub fn without(
        &self,
        lost: NodeId,
        live: impl Fn(NodeId) -> bool,
        epoch: Epoch,
    ) -> Option<(NodeId, Self)> {
        let at = self.ranges.iter().position(|r| r.node == lost)?;
        let before = at.checked_sub(1).filter(|&i| live(self.ranges[i].node));
        let after = Some(at + 1).filter(|&i| i < self.ranges.len() && live(self.ranges[i].node));
        let heir = before.or(after)?;
        let mut ranges = self.ranges.clone();
        let taken = ranges.remove(at);
        let heir = if heir > at { heir - 1 } else { heir };
        let range = &mut ranges[heir];
        range.start = range.start.min(taken.start);
        range.end = range.end.max(taken.end);
        let node = range.node;
        let map = Self {
            epoch,
            partitions: self.partitions,
            ranges,
        };
        Some((node, map))
    }

    /// Why the ranges do not cover `0..partitions` in order without gaps
    /// or empty ranges, if they do not.
    pub fn check(&self) -> Result<(), String> {
        let mut next = 0;
        for range in &self.ranges {
            if range.start.get() != next || range.end <= range.start {
                return Err(format!(
                    "range {}..{} of node {} does not follow partition {next}",
                    range.start, range.end, range.node
                ));
            }
            next = range.end.get();
        }
        if next != self.partitions {
            return Err(format!(
                "the ranges end at partition {next}, not at {}",
                self.partitions
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Contiguous, in order, covering every partition once, one range
        /// per node (while nodes are fewer than partitions), sizes within
        /// one of each other.
        #[test]
        fn split_covers_every_partition_once(partitions in 1u16..2000, count in 1usize..80) {
            let nodes: Vec<NodeId> = (1..=count as u64).map(NodeId).collect();
            let map = PartitionMap::split(partitions, &nodes, Epoch(3));
            prop_assert_eq!(map.check(), Ok(()));
            prop_assert_eq!(map.ranges.len(), count.min(usize::from(partitions)));
            let sizes: Vec<u16> = map.ranges.iter().map(|r| r.end.get() - r.start.get()).collect();
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            prop_assert!(max - min <= 1, "{:?}", sizes);
            for p in 0..partitions {
                let owner = map.owner(PartitionId(p)).unwrap();
                let range = map.ranges.iter().find(|r| r.node == owner).unwrap();
                prop_assert!(range.start.get() <= p && p < range.end.get());
            }
            prop_assert_eq!(map.owner(PartitionId(partitions)), None);
        }
    }

    proptest! {
        /// A lost node's range goes whole to a live neighbour; the map
        /// still covers every partition once, and no other range moves.
        #[test]
        fn a_lost_range_joins_a_live_neighbour(
            partitions in 2u16..500,
            count in 2usize..12,
            lost in 0usize..12,
            dead in proptest::collection::vec(any::<bool>(), 12),
        ) {
            let nodes: Vec<NodeId> = (1..=count as u64).map(NodeId).collect();
            let map = PartitionMap::split(partitions, &nodes, Epoch(3));
            let lost = nodes[lost % count];
            let live = |n: NodeId| n != lost && !dead[n.get() as usize - 1];
            let Some(at) = map.ranges.iter().position(|r| r.node == lost) else {
                // More nodes than partitions: this one owns none.
                prop_assert!(map.without(lost, live, Epoch(4)).is_none());
                return Ok(());
            };
            let Some((heir, joined)) = map.without(lost, live, Epoch(4)) else {
                let neighbours = [at.checked_sub(1), Some(at + 1)];
                let dead = |&i: &usize| i >= map.ranges.len() || !live(map.ranges[i].node);
                prop_assert!(neighbours.iter().flatten().all(dead));
                return Ok(());
            };
            prop_assert!(live(heir));
            prop_assert_eq!(joined.check(), Ok(()));
            prop_assert_eq!((joined.epoch, joined.ranges.len()), (Epoch(4), map.ranges.len() - 1));
            let was = &map.ranges[at];
            for p in 0..partitions {
                let before = map.owner(PartitionId(p)).unwrap();
                let expected = if before == lost { heir } else { before };
                prop_assert_eq!(joined.owner(PartitionId(p)), Some(expected));
            }
            let heir_range = joined.ranges.iter().find(|r| r.node == heir).unwrap();
            prop_assert!(heir_range.end == was.start || heir_range.start <= was.start);
        }
    }

    #[test]
    fn a_gap_an_overlap_or_a_short_cover_is_named() {
        let range = |start, end, node| PartitionRange {
            start: PartitionId(start),
            end: PartitionId(end),
            node: NodeId(node),
        };
        let map = |ranges| PartitionMap {
            epoch: Epoch(1),
            partitions: 10,
            ranges,
        };
        assert!(map(vec![range(0, 4, 1), range(5, 10, 2)]).check().is_err());
        assert!(map(vec![range(0, 6, 1), range(5, 10, 2)]).check().is_err());
        assert!(map(vec![range(0, 4, 1), range(4, 9, 2)]).check().is_err());
        assert!(
            map(vec![range(0, 4, 1), range(4, 4, 2), range(4, 10, 3)])
                .check()
                .is_err()
        );
        assert_eq!(map(vec![range(0, 4, 1), range(4, 10, 2)]).check(), Ok(()));
    }
}
