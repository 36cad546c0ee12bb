//! When each peer last answered a Raft RPC: the leader's view of its
//! followers' health in `status`. Recorded by the network, read by the
//! status report.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ReplicaId;

#[derive(Clone, Default)]
pub struct Contacts(Arc<Mutex<HashMap<ReplicaId, Instant>>>);

impl Contacts {
    pub fn record(&self, peer: ReplicaId) {
        self.0
            .lock()
            .expect("not poisoned")
            .insert(peer, Instant::now());
    }

    /// Time since `peer` last answered, if it ever did.
    pub fn since(&self, peer: ReplicaId) -> Option<Duration> {
        let contacts = self.0.lock().expect("not poisoned");
        contacts.get(&peer).map(Instant::elapsed)
    }
}
