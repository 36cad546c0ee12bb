//! A client request's kind: what faults are decided per, and whether the
//! client itself would send it again.

use std::fmt;

use proto_schema::coordinator_api::Request;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Write,
    Status,
    Replica,
    Register,
    Heartbeat,
    Lease,
    Renew,
    Complete,
    Stage,
    PartitionMap,
    Job,
    Work,
    Restart,
    /// Never a client's: passed through untouched.
    Raft,
}

impl Kind {
    pub fn of(request: &Request) -> Self {
        match request {
            Request::Raft(_) => Kind::Raft,
            Request::Write(_) => Kind::Write,
            Request::Status => Kind::Status,
            Request::Replica => Kind::Replica,
            Request::Register(_) => Kind::Register,
            Request::Heartbeat { .. } => Kind::Heartbeat,
            Request::Lease { .. } => Kind::Lease,
            Request::Renew { .. } => Kind::Renew,
            Request::Complete { .. } => Kind::Complete,
            Request::Stage { .. } => Kind::Stage,
            Request::PartitionMap { .. } => Kind::PartitionMap,
            Request::Job { .. } => Kind::Job,
            Request::Work { .. } => Kind::Work,
            Request::Restart { .. } => Kind::Restart,
        }
    }

    /// Whether `coordinator_client` sends it again after its reply was
    /// lost (it is harmless to serve twice), so the network may deliver
    /// it twice too. A write, a lease and a renewal are never resent: a
    /// lost reply to one is the caller's failure (`Ambiguous`).
    pub fn repeatable(self) -> bool {
        !matches!(self, Kind::Write | Kind::Lease | Kind::Renew | Kind::Raft)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
