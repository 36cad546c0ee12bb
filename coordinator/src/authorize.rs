//! Who may make which client request: the one table of the coordinators'
//! API authorization (`allowed`). The TLS handshake admits any certificate
//! of the cluster CA; its name's role (`proto_schema::cert_role`) decides
//! the rest:
//!
//! - operators (any other name): datasets, submissions, status, a job's
//!   progress;
//! - node N (`node-N`): registering, heartbeats, leases, renewals,
//!   completion, staging, partition maps, the jobs to work on, each only
//!   as node N; any job's progress;
//! - replicas (`coord-N`): Raft RPCs only, admitted apart (`raft_peers`,
//!   which also checks the RPC speaks for the same id);
//! - nobody: the commands only the leader's lease desk proposes
//!   (`GrantLeases`, `AssignPartitions`, `DeclareNodeLost`).
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
use proto_schema::tls::Fingerprint;

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

/// Declares `RequestKind` from one list of its kinds and their labels, so
/// the enum, `ALL` and `label` cannot drift apart.
macro_rules! request_kinds {
    ($($kind:ident => $label:literal,)*) => {
        /// A client request's kind, as refusals and their metric name it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum RequestKind {
            $($kind,)*
        }

        impl RequestKind {
            /// Every kind, in the order refusals are listed.
            pub const ALL: &[RequestKind] = &[$(RequestKind::$kind,)*];

            pub fn label(self) -> &'static str {
                match self {
                    $(Self::$kind => $label,)*
                }
            }
        }
    };
}

request_kinds! {
    Status => "status",
    Replica => "replica",
    Job => "job",
    Register => "register",
    Heartbeat => "heartbeat",
    Lease => "lease",
    Renew => "renew",
    Complete => "complete",
    Stage => "stage",
    PartitionMap => "partition_map",
    RegisterNode => "register_node",
    CreateDataset => "create_dataset",
    BeginSubmission => "begin_submission",
    SubmitChunk => "submit_chunk",
    SubmitRanges => "submit_ranges",
    FinishSubmission => "finish_submission",
    AbortSubmission => "abort_submission",
    GrantLeases => "grant_leases",
    ReportProgress => "report_progress",
    CompleteShards => "complete_shards",
    AssignPartitions => "assign_partitions",
    DeclareNodeLost => "declare_node_lost",
    StageJob => "stage_job",
    Work => "work",
    Restart => "restart",
    RestartJob => "restart_job",
    RecoverJob => "recover_job",
}

/// Who may make a kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    Operators,
    /// Operators, and any node (reads that name no node).
    OperatorsAndNodes,
    /// A node, speaking for itself only.
    TheNodeItself,
    /// The leader's own commands: never accepted from a client.
    Nobody,
}

/// The table.
pub fn allowed(kind: RequestKind) -> Allowed {
    use RequestKind::*;
    match kind {
        Status | Replica | CreateDataset | BeginSubmission | SubmitChunk | SubmitRanges
        | FinishSubmission | AbortSubmission => Allowed::Operators,
        Job => Allowed::OperatorsAndNodes,
        Register | Heartbeat | Lease | Renew | Complete | Stage | PartitionMap | RegisterNode
        | ReportProgress | CompleteShards | StageJob | Work | Restart => Allowed::TheNodeItself,
        GrantLeases | AssignPartitions | DeclareNodeLost | RestartJob | RecoverJob => {
            Allowed::Nobody
        }
    }
}

/// What a request asks, the node it speaks for, and for a registration
/// the certificate fingerprint it registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject {
    pub kind: RequestKind,
    pub node: Option<NodeId>,
    pub fingerprint: Option<Fingerprint>,
}

impl Subject {
    fn of(kind: RequestKind) -> Self {
        Self {
            kind,
            node: None,
            fingerprint: None,
        }
    }

    fn for_node(kind: RequestKind, node: NodeId) -> Self {
        Self {
            kind,
            node: Some(node),
            fingerprint: None,
        }
    }

    fn registering(kind: RequestKind, node: NodeId, fingerprint: [u8; 32]) -> Self {
        Self {
            fingerprint: Some(Fingerprint(fingerprint)),
            ..Self::for_node(kind, node)
        }
    }

    pub fn of_command(cmd: &Command) -> Self {
        use RequestKind as K;
        match cmd {
            Command::RegisterNode(info) => {
                Self::registering(K::RegisterNode, info.id, info.cert_fingerprint)
            }
            Command::CreateDataset(_) => Self::of(K::CreateDataset),
            Command::BeginSubmission { .. } => Self::of(K::BeginSubmission),
            Command::SubmitChunk { .. } => Self::of(K::SubmitChunk),
            Command::SubmitRanges { .. } => Self::of(K::SubmitRanges),
            Command::FinishSubmission { .. } => Self::of(K::FinishSubmission),
            Command::AbortSubmission { .. } => Self::of(K::AbortSubmission),
            Command::GrantLeases { node, .. } => Self::for_node(K::GrantLeases, *node),
            Command::ReportProgress { node, .. } => Self::for_node(K::ReportProgress, *node),
            Command::CompleteShards { node, .. } => Self::for_node(K::CompleteShards, *node),
            Command::AssignPartitions { .. } => Self::of(K::AssignPartitions),
            Command::DeclareNodeLost { node, .. } => Self::for_node(K::DeclareNodeLost, *node),
            Command::StageJob { node, .. } => Self::for_node(K::StageJob, *node),
            Command::RestartJob { .. } => Self::of(K::RestartJob),
            Command::RecoverJob { .. } => Self::of(K::RecoverJob),
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
            Request::Job { .. } => Some(Self::of(K::Job)),
            Request::Work { node } => Some(Self::for_node(K::Work, *node)),
            Request::Register(registration) => Some(Self::registering(
                K::Register,
                registration.node,
                registration.cert_fingerprint,
            )),
            Request::Heartbeat { node, .. } => Some(Self::for_node(K::Heartbeat, *node)),
            Request::Lease { node, .. } => Some(Self::for_node(K::Lease, *node)),
            Request::Renew { node, .. } => Some(Self::for_node(K::Renew, *node)),
            Request::Complete { node, .. } => Some(Self::for_node(K::Complete, *node)),
            Request::Stage { node, .. } => Some(Self::for_node(K::Stage, *node)),
            Request::PartitionMap { node, .. } => Some(Self::for_node(K::PartitionMap, *node)),
            Request::Restart { node, .. } => Some(Self::for_node(K::Restart, *node)),
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
        (Allowed::OperatorsAndNodes, Some(Role::Operator | Role::Node(_))) => None,
        (Allowed::OperatorsAndNodes, Some(_)) => {
            Some("only operator and node certificates may".into())
        }
        (Allowed::TheNodeItself, Some(Role::Node(id))) if subject.node == Some(id) => {
            // A node registers the certificate it presents, never another's.
            let presented = match caller {
                Caller::Remote(peer) => Some(peer.fingerprint),
                Caller::InProcess => None,
            };
            match (subject.fingerprint, presented) {
                (Some(registered), Some(presented)) if registered != presented => Some(format!(
                    "node-{id} registers certificate {registered} but presented {presented}"
                )),
                _ => None,
            }
        }
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
            "node {id}: registers, heartbeats, finds its work, leases, renews, completes shards, \
             stages jobs and reads partition maps, as node {id} only"
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

    use proto_schema::command::{LeaseGrant, NodeInfo};

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
        RequestKind::ALL
            .iter()
            .map(|&kind| Subject {
                kind,
                node: (allowed(kind) == Allowed::TheNodeItself).then_some(NodeId(5)),
                fingerprint: None,
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
            "job",
            "create_dataset",
            "begin_submission",
            "submit_chunk",
            "submit_ranges",
            "finish_submission",
            "abort_submission",
        ];
        assert_eq!(may(&remote("alice")), operator);
        let node = [
            "job",
            "register",
            "heartbeat",
            "lease",
            "renew",
            "complete",
            "stage",
            "partition_map",
            "register_node",
            "report_progress",
            "complete_shards",
            "stage_job",
            "work",
            "restart",
        ];
        assert_eq!(may(&remote("node-5")), node);
        assert_eq!(may(&remote("node-6")), ["job"], "node 6 speaks for 5");
        assert!(may(&remote("coord-5")).is_empty());
        assert!(may(&remote("node-05")).is_empty());
        let in_process = may(&Caller::InProcess);
        // Everything but the leader's own commands.
        assert_eq!(in_process.len(), RequestKind::ALL.len() - 5);
        assert_eq!(in_process.len(), operator.len() + node.len() - 1);
    }

    #[test]
    fn a_node_registers_the_certificate_it_presents_only() {
        let register = |fingerprint| {
            Command::RegisterNode(NodeInfo {
                id: NodeId(5),
                incarnation: 1,
                address: "10.0.0.5:7000".into(),
                cert_fingerprint: fingerprint,
            })
        };
        // `remote` presents fingerprint [7; 32].
        let own = Subject::of_command(&register([7; 32]));
        assert_eq!(refusal(&remote("node-5"), own), None);
        let other = Subject::of_command(&register([8; 32]));
        let reason = refusal(&remote("node-5"), other).unwrap();
        assert!(reason.contains("registers certificate 0808"), "{reason}");
        assert!(reason.contains("but presented 0707"), "{reason}");
        assert_eq!(refusal(&Caller::InProcess, other), None);
    }

    #[test]
    fn a_nodes_requests_are_read_for_the_node_they_speak_for() {
        let register = Command::RegisterNode(NodeInfo {
            id: NodeId(9),
            incarnation: 1,
            address: "10.0.0.9:7000".into(),
            cert_fingerprint: [0; 32],
        });
        assert_eq!(
            Subject::of_command(&register),
            Subject::registering(RequestKind::RegisterNode, NodeId(9), [0; 32])
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
        let grant = Command::GrantLeases {
            node: NodeId(3),
            shards: vec![LeaseGrant {
                shard: ShardId(1),
                expected_epoch: Epoch(0),
            }],
            deadline_ms: u64::MAX,
        };
        let reason = refusal(&remote("node-3"), Subject::of_command(&grant)).unwrap();
        assert!(reason.contains("only the leader proposes it"), "{reason}");
    }
}
