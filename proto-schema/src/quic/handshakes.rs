//! Handshake slots: a server's connections in the TLS handshake, before
//! the peer has shown a certificate, counted apart from its connections.
//! A peer without a certificate holds a slot only until its handshake
//! fails (at most the connect timeout), at most
//! `max_handshakes_per_address` slots per source address and
//! `max_handshakes` in all, so it cannot take the connection slots the
//! cluster's members need. Once slots are half taken, a source address
//! not yet validated is sent a QUIC Retry first: a flood from spoofed
//! addresses then costs one packet each and holds nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counter of connections refused before their handshake (label
/// `reason`: `connections`, `handshakes`, `handshakes_per_address`).
pub const CONNECTION_REFUSED_METRIC: &str = "quern_rpc_connection_refused_total";

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Full {
    Handshakes,
    PerAddress,
}

impl Full {
    pub(super) fn label(self) -> &'static str {
        match self {
            Full::Handshakes => "handshakes",
            Full::PerAddress => "handshakes_per_address",
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// The slots of one server.
#[derive(Clone)]
pub(super) struct Handshakes {
    counts: Arc<Mutex<Counts>>,
    max: usize,
    per_address: usize,
}

/// A slot held until dropped (when the handshake ends, either way).
pub(super) struct Slot {
    counts: Arc<Mutex<Counts>>,
    address: IpAddr,
}

impl Handshakes {
    pub(super) fn new(max: usize, per_address: usize) -> Self {
        Self {
            counts: Arc::default(),
            max,
            per_address,
        }
    }

    /// Whether half the slots or more are taken: unvalidated addresses
    /// are then sent a Retry before they may take one.
    pub(super) fn under_pressure(&self) -> bool {
        2 * self.counts.lock().expect("not poisoned").total >= self.max
    }

    pub(super) fn take(&self, address: IpAddr) -> Result<Slot, Full> {
        let mut counts = self.counts.lock().expect("not poisoned");
        if counts.total >= self.max {
            return Err(Full::Handshakes);
        }
        let held = counts.by_address.entry(address).or_default();
        if *held >= self.per_address {
            return Err(Full::PerAddress);
        }
        *held += 1;
        counts.total += 1;
        Ok(Slot {
            counts: self.counts.clone(),
            address,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().expect("not poisoned");
        counts.total -= 1;
        if let Some(held) = counts.by_address.get_mut(&self.address) {
            *held -= 1;
            if *held == 0 {
                counts.by_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_address_and_in_all_and_freed_when_dropped() {
        let slots = Handshakes::new(4, 2);
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let a1 = slots.take(a).unwrap();
        assert!(!slots.under_pressure());
        let _a2 = slots.take(a).unwrap();
        assert!(slots.under_pressure());
        assert_eq!(slots.take(a).err(), Some(Full::PerAddress));
        let _b1 = slots.take(b).unwrap();
        let _b2 = slots.take(b).unwrap();
        assert_eq!(slots.take(c).err(), Some(Full::Handshakes));
        drop(a1);
        let _c1 = slots.take(c).unwrap();
        assert_eq!(slots.take(a).err(), Some(Full::Handshakes));
        assert_eq!(slots.counts.lock().unwrap().by_address.len(), 3);
    }
}
