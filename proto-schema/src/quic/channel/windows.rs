//! A node's receive and send budgets divided among its links, so that its
//! memory does not grow with the number of peers. Each link gets budget /
//! links, counting the links the node expects (its peers in the partition
//! map) even before they are up, and never less than the minimum window
//! (so the budget is exceeded only past budget / minimum links). Credit a
//! peer was granted cannot be taken back: a window that shrinks takes
//! effect only as the peer uses up what it had. Dividing by the expected
//! links from the start keeps windows from shrinking while the node's
//! peers connect one by one; only links beyond those shrink the shares.

use std::sync::Mutex;

use metrics::Gauge;

use super::{ChannelConfig, LINK_WINDOW_METRIC, LINKS_METRIC};
use crate::quic::RpcError;

pub(super) fn varint(bytes: u64) -> Result<quinn::VarInt, RpcError> {
    quinn::VarInt::from_u64(bytes)
        .map_err(|_| RpcError::Setup(format!("a window of {bytes} bytes is too large")))
}

/// One link's share of `budget` when `links` are live.
pub(super) fn per_link(budget: u64, min: u64, links: usize) -> u64 {
    (budget / links.max(1) as u64).max(min)
}

pub(super) struct LinkWindows {
    receive_budget: u64,
    send_budget: u64,
    min: u64,
    live: Mutex<Live>,
    links_gauge: Gauge,
    window_gauge: Gauge,
}

#[derive(Default)]
struct Live {
    next_id: u64,
    connections: Vec<(u64, quinn::Connection)>,
    /// Links the node expects, whether up or not.
    expected: usize,
}

/// A live link's place in the shares; dropping it gives the share back.
pub(super) struct Registration {
    windows: std::sync::Arc<LinkWindows>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut live = self.windows.live.lock().expect("never poisoned");
        live.connections.retain(|(id, _)| *id != self.id);
        self.windows.rebalance(&live);
    }
}

impl LinkWindows {
    pub(super) fn new(config: &ChannelConfig) -> Self {
        Self {
            receive_budget: config.receive_budget,
            send_budget: config.send_budget,
            min: config.min_link_window,
            live: Mutex::new(Live::default()),
            links_gauge: metrics::gauge!(LINKS_METRIC),
            window_gauge: metrics::gauge!(LINK_WINDOW_METRIC),
        }
    }

    /// Counts `connection` among the live links and resets every share.
    pub(super) fn register(
        self: &std::sync::Arc<Self>,
        connection: &quinn::Connection,
    ) -> Registration {
        let mut live = self.live.lock().expect("never poisoned");
        let id = live.next_id;
        live.next_id += 1;
        live.connections.push((id, connection.clone()));
        self.rebalance(&live);
        Registration {
            windows: self.clone(),
            id,
        }
    }

    /// Divides the budgets among at least `links` links from now on.
    pub(super) fn expect(&self, links: usize) {
        let mut live = self.live.lock().expect("never poisoned");
        live.expected = links;
        self.rebalance(&live);
    }

    fn rebalance(&self, live: &Live) {
        let links = live.connections.len().max(live.expected);
        let receive = per_link(self.receive_budget, self.min, links);
        let send = per_link(self.send_budget, self.min, links);
        let receive_window = varint(receive).unwrap_or(quinn::VarInt::MAX);
        for (_, connection) in &live.connections {
            connection.set_receive_window(receive_window);
            connection.set_send_window(send);
        }
        self.links_gauge.set(live.connections.len() as f64);
        self.window_gauge.set(receive as f64);
    }

    pub(super) fn live(&self) -> usize {
        self.live.lock().expect("never poisoned").connections.len()
    }

    pub(super) fn receive_per_link(&self) -> u64 {
        let live = self.live.lock().expect("never poisoned");
        let links = live.connections.len().max(live.expected);
        per_link(self.receive_budget, self.min, links)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// All links' windows together stay within the budget while each
        /// can have its minimum, and never fall below the minimum.
        #[test]
        fn shares_stay_within_the_budget(budget in 1u64..1 << 40, min in 1u64..1 << 24, links in 0usize..10_000) {
            let share = per_link(budget, min, links);
            prop_assert!(share >= min);
            if (links as u64).saturating_mul(min) <= budget {
                prop_assert!(share.saturating_mul(links as u64) <= budget);
            } else {
                prop_assert_eq!(share, min);
            }
        }
    }
}
