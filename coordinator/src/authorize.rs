//! Who may make which client request: the one table of the coordinators'
//! API authorization (`allowed`). The TLS handshake admits any certificate
//! of the cluster CA; its name's role (`proto_schema::cert_role`) decides
//! the rest:
//!
//! - operators (any other name): datasets, submissions, status;
//! - node N (`node-N`): registering, leases, renewals, progress and
//!   completion, each only as node N;
//! - replicas (`coord-N`): Raft RPCs only, admitted apart (`raft_peers`,
//!   which also checks the RPC speaks for the same id);
//! - nobody: what only the leader's lease desk proposes (`GrantLease`) and
//!   partition assignments.
//!
//! The table matches every kind of request exhaustively, and a request's
//! kind is read from every `Request` and `Command` variant, so a new
//! request does not compile until it has a row. Code in the same process
//! (the in-process router: tests and a one-process cluster) may make any
//! request but the leader's own. A refusal is typed (`Forbidden`), counted
//! in `quern_request_refused_total{role,request}` and logged at a bounded
//! rate.

use std::sync::Mutex;
use std::time::Instant;

use proto_schema::cert_role::Role;
use proto_schema::command::Command;
use proto_schema::coordinator_api::{Forbidden, Request};
use proto_schema::ids::NodeId;
use proto_schema::log_limit::LogLimit;
use proto_schema::quic::Peer;

/// Counter of client requests refused for the sender's certificate
/// (labels `role`, `request`).
pub const REQUEST_REFUSED_METRIC: &str = "quern_request_refused_total";

/// Gives the refusal counter its help text; call once the recorder is
/// installed.
pub fn describe_metrics() {
    metrics::describe_counter!(
        REQUEST_REFUSED_METRIC,
        "Client requests refused because the sender's certificate may not make them (labels \
         role: operator, node, coordinator, unrecognized; request: the request's kind)."
    );
}

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A connection, by the certificate it presented.
    Remote(Peer),
    /// Code in this process (the in-process router).
    InProcess,
}

impl Caller {
    fn label(&self) -> &'static str {
        match self {
            Self::Remote(peer) => Role::of(peer.name.as_deref()).label(),
            Self::InProcess => "in_process",
        }
    }
}

/// A client request's kind, as refusals and their metric name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Status,
    Replica,
    Lease,
    Renew,
    RegisterNode,
    CreateDataset,
    BeginSubmission,
    SubmitChunk,
    FinishSubmission,
    AbortSubmission,
    GrantLease,
    ReportProgress,
    CompleteShard,
    AssignPartitions,
}

impl RequestKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Replica => "replica",
            Self::Lease => "lease",
            Self::Renew => "renew",
            Self::RegisterNode => "register_node",
            Self::CreateDataset => "create_dataset",
            Self::BeginSubmission => "begin_submission",
            Self::SubmitChunk => "submit_chunk",
            Self::FinishSubmission => "finish_submission",
            Self::AbortSubmission => "abort_submission",
            Self::GrantLease => "grant_lease",
            Self::ReportProgress => "report_progress",
            Self::CompleteShard => "complete_shard",
            Self::AssignPartitions => "assign_partitions",
        }
    }
}

/// Who may make a kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    Operators,
    /// A node, speaking for itself only.
    TheNodeItself,
    /// The leader's own commands: never accepted from a client.
    Nobody,
}

/// The table.
pub fn allowed(kind: RequestKind) -> Allowed {
    use RequestKind::*;
    match kind {
        Status | Replica | CreateDataset | BeginSubmission | SubmitChunk | FinishSubmission
        | AbortSubmission => Allowed::Operators,
        RegisterNode | Lease | Renew | ReportProgress | CompleteShard => Allowed::TheNodeItself,
        GrantLease | AssignPartitions => Allowed::Nobody,
    }
}

/// What a request asks, and the node it speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject {
    pub kind: RequestKind,
    pub node: Option<NodeId>,
}

impl Subject {
    fn of(kind: RequestKind) -> Self {
        Self { kind, node: None }
    }

    fn for_node(kind: RequestKind, node: NodeId) -> Self {
        Self {
            kind,
            node: Some(node),
        }
    }

    pub fn of_command(cmd: &Command) -> Self {
        use RequestKind as K;
        match cmd {
            Command::RegisterNode(info) => Self::for_node(K::RegisterNode, info.id),
            Command::CreateDataset(_) => Self::of(K::CreateDataset),
            Command::BeginSubmission { .. } => Self::of(K::BeginSubmission),
            Command::SubmitChunk { .. } => Self::of(K::SubmitChunk),
            Command::FinishSubmission { .. } => Self::of(K::FinishSubmission),
            Command::AbortSubmission { .. } => Self::of(K::AbortSubmission),
            Command::GrantLease { node, .. } => Self::for_node(K::GrantLease, *node),
            Command::ReportProgress { node, .. } => Self::for_node(K::ReportProgress, *node),
            Command::CompleteShard { node, .. } => Self::for_node(K::CompleteShard, *node),
            Command::AssignPartitions { .. } => Self::of(K::AssignPartitions),
        }
    }

    /// `None` for a write (its subject is its command's, `of_command`) and
    /// for a Raft RPC (admitted by `raft_peers`).
    pub fn of_request(request: &Request) -> Option<Self> {
        use RequestKind as K;
        match request {
            Request::Raft(_) | Request::Write(_) => None,
            Request::Status => Some(Self::of(K::Status)),
            Request::Replica => Some(Self::of(K::Replica)),
            Request::Lease { node } => Some(Self::for_node(K::Lease, *node)),
            Request::Renew { node, .. } => Some(Self::for_node(K::Renew, *node)),
        }
    }
}

/// Why `caller` may not make `subject`'s request, if it may not.
pub fn refusal(caller: &Caller, subject: Subject) -> Option<String> {
    let role = match caller {
        Caller::Remote(peer) => Some(Role::of(peer.name.as_deref())),
        Caller::InProcess => None,
    };
    match (allowed(subject.kind), role) {
        (Allowed::Nobody, _) => {
            Some("only the leader proposes it; it is never accepted from a client".into())
        }
        (_, None) => None,
        (Allowed::Operators, Some(Role::Operator)) => None,
        (Allowed::Operators, Some(_)) => Some("only operator certificates may".into()),
        (Allowed::TheNodeItself, Some(Role::Node(id))) if subject.node == Some(id) => None,
        (Allowed::TheNodeItself, Some(Role::Node(id))) => Some(format!(
            "node-{id}'s certificate speaks for node {id} only, not for node {}",
            subject.node.map_or("none".into(), |n| n.to_string())
        )),
        (Allowed::TheNodeItself, Some(_)) => {
            Some("only a node-N certificate may, for node N".into())
        }
    }
}

/// What a role may do, in words (`quern cert issue` prints it).
pub fn describe(role: Role) -> String {
    match role {
        Role::Coordinator(id) => {
            format!("coordinator replica {id}: Raft RPCs with its peers, as replica {id} only")
        }
        Role::Node(id) => format!(
            "node {id}: registers, leases, renews, reports progress and completes shards, as node {id} only"
        ),
        Role::Operator => {
            "operator: creates datasets, submits and aborts manifests, reads status".into()
        }
        Role::Unrecognized => "none: a name shaped like coord-N or node-N must be exactly that, \
                               with N a number"
            .into(),
    }
}

/// Applies the table, counting and logging refusals.
#[derive(Default)]
pub struct Gate {
    log: Mutex<LogLimit>,
}

impl Gate {
    pub fn admit(&self, caller: &Caller, subject: Subject) -> Result<(), Forbidden> {
        let Some(reason) = refusal(caller, subject) else {
            return Ok(());
        };
        let (role, request) = (caller.label(), subject.kind.label());
        metrics::counter!(REQUEST_REFUSED_METRIC, "role" => role, "request" => request)
            .increment(1);
        let forbidden = Forbidden {
            role: match caller {
                Caller::Remote(peer) => Role::of(peer.name.as_deref()).to_string(),
                Caller::InProcess => role.into(),
            },
            request: request.into(),
            reason,
        };
        let left_out = self.log.lock().expect("not poisoned").speak(Instant::now());
        if let Some(left_out) = left_out {
            match caller {
                Caller::Remote(peer) => tracing::warn!(
                    remote = %peer.address,
                    name = ?peer.name,
                    fingerprint = %peer.fingerprint,
                    left_out,
                    "{forbidden}"
                ),
                Caller::InProcess => tracing::warn!(left_out, "{forbidden}"),
            }
        }
        Err(forbidden)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proto_schema::command::NodeInfo;
    use proto_schema::tls::Fingerprint;

    use proto_schema::ids::{Epoch, ShardId};

    use super::*;

    fn remote(name: &str) -> Caller {
        Caller::Remote(Peer {
            address: "127.0.0.1:7000".parse().unwrap(),
            fingerprint: Fingerprint([7; 32]),
            name: Some(Arc::from(name)),
        })
    }

    fn every_subject() -> Vec<Subject> {
        use RequestKind::*;
        [
            Status,
            Replica,
            Lease,
            Renew,
            RegisterNode,
            CreateDataset,
            BeginSubmission,
            SubmitChunk,
            FinishSubmission,
            AbortSubmission,
            GrantLease,
            ReportProgress,
            CompleteShard,
            AssignPartitions,
        ]
        .into_iter()
        .map(|kind| Subject {
            kind,
            node: (allowed(kind) != Allowed::Operators).then_some(NodeId(5)),
        })
        .collect()
    }

    #[test]
    fn each_role_may_make_its_own_requests_only() {
        let may = |caller: &Caller| -> Vec<&str> {
            every_subject()
                .into_iter()
                .filter(|s| refusal(caller, *s).is_none())
                .map(|s| s.kind.label())
                .collect()
        };
        let operator = [
            "status",
            "replica",
            "create_dataset",
            "begin_submission",
            "submit_chunk",
            "finish_submission",
            "abort_submission",
        ];
        assert_eq!(may(&remote("alice")), operator);
        let node = [
            "lease",
            "renew",
            "register_node",
            "report_progress",
            "complete_shard",
        ];
        assert_eq!(may(&remote("node-5")), node);
        assert!(may(&remote("node-6")).is_empty(), "node 6 speaks for 5");
        assert!(may(&remote("coord-5")).is_empty());
        assert!(may(&remote("node-05")).is_empty());
        let in_process = may(&Caller::InProcess);
        assert_eq!(in_process.len(), operator.len() + node.len());
    }

    #[test]
    fn a_nodes_requests_are_read_for_the_node_they_speak_for() {
        let register = Command::RegisterNode(NodeInfo {
            id: NodeId(9),
            address: "10.0.0.9:7000".into(),
            cert_fingerprint: [0; 32],
        });
        assert_eq!(
            Subject::of_command(&register),
            Subject::for_node(RequestKind::RegisterNode, NodeId(9))
        );
        let renew = Request::Renew {
            node: NodeId(4),
            shard: ShardId(1),
            epoch: Epoch(1),
        };
        assert_eq!(
            Subject::of_request(&renew),
            Some(Subject::for_node(RequestKind::Renew, NodeId(4)))
        );
        let reason = refusal(&remote("node-3"), Subject::of_request(&renew).unwrap()).unwrap();
        assert_eq!(
            reason,
            "node-3's certificate speaks for node 3 only, not for node 4"
        );
        let grant = Command::GrantLease {
            shard: ShardId(1),
            node: NodeId(3),
            expected_epoch: Epoch(0),
            deadline_ms: u64::MAX,
        };
        let reason = refusal(&remote("node-3"), Subject::of_command(&grant)).unwrap();
        assert!(reason.contains("only the leader proposes it"), "{reason}");
    }
}
