//! For tests: faults between the coordinators' clients and the
//! coordinators, decided by a seed so that a failing run replays.
//!
//! `FaultyTransport` wraps any `coordinator_client::Transport` (the
//! in-process `Router`, in practice) for one party (a node, a
//! submitter): per request it may drop the request, drop the reply after
//! the coordinator served it, delay it, serve it twice, or serve a late
//! copy after the requests that follow it (`Rates`, `Fault`); at requests
//! the plan names it cuts the party off for a while, kills it, makes the
//! coordinators' clock (`JumpClock`) jump ahead, loses the reply to a
//! request the client never resends, or (through the run's cluster hook)
//! cuts the coordinators' leader off (`Disruption`). Requests that
//! `coordinator_client` never resends (writes, leases, renewals) are never
//! served twice or answered lost by the per-request faults: no network
//! delivers one request twice to the server on its own. The `Ledger`
//! checks the lease grants and completions the parties saw.
//!
//! Depends only on `coordinator-client` and `proto-schema`, so tests of
//! every crate above them can use it.

mod clock;
mod kind;
mod ledger;
mod plan;
mod transport;

pub use clock::JumpClock;
pub use kind::Kind;
pub use ledger::Ledger;
pub use plan::{Disruption, Fault, FaultPlan, PartyPlan, Rates, Scheduled};
pub use transport::{ClusterHook, Event, Faults, FaultyConnection, FaultyTransport, MAX_EVENTS};
