//! What a certificate's name (`cert_name`) makes its holder: replica N of
//! the coordinators (`coord-N`), node N (`node-N`), or an operator (any
//! other name). Only the CA's key can put a name in a certificate, so the
//! role is as trustworthy as the handshake that verified it. A name that
//! starts like a replica's or a node's without being one (`node-x`,
//! `coord-01`) is `Unrecognized`, so that a typo never yields an operator;
//! `quern cert issue` refuses to issue such names.

use std::fmt;

use crate::ids::NodeId;

const COORDINATOR_PREFIX: &str = "coord-";
const NODE_PREFIX: &str = "node-";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `coord-N`: replica N of the coordinators.
    Coordinator(u64),
    /// `node-N`: node N, which leases and reads shards.
    Node(NodeId),
    /// Any other name: a person or a front end acting for one.
    Operator,
    /// No name, or one shaped like a replica's or a node's but not one.
    Unrecognized,
}

impl Role {
    /// The role `name` gives; `None` (a certificate without a name) is
    /// `Unrecognized`.
    pub fn of(name: Option<&str>) -> Self {
        let Some(name) = name else {
            return Self::Unrecognized;
        };
        // One spelling per id: digits only, no leading zeros.
        let numbered = |prefix: &str| {
            let digits = name.strip_prefix(prefix)?;
            let id: u64 = digits.parse().ok()?;
            (id.to_string() == digits).then_some(id)
        };
        if let Some(id) = numbered(COORDINATOR_PREFIX) {
            Self::Coordinator(id)
        } else if let Some(id) = numbered(NODE_PREFIX) {
            Self::Node(NodeId(id))
        } else if name.starts_with(COORDINATOR_PREFIX) || name.starts_with(NODE_PREFIX) {
            Self::Unrecognized
        } else {
            Self::Operator
        }
    }

    /// The role's name in metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Self::Coordinator(_) => "coordinator",
            Self::Node(_) => "node",
            Self::Operator => "operator",
            Self::Unrecognized => "unrecognized",
        }
    }
}

/// The name of replica `id`'s certificate.
pub fn coordinator_name(id: u64) -> String {
    format!("{COORDINATOR_PREFIX}{id}")
}

/// The name of node `id`'s certificate.
pub fn node_name(id: NodeId) -> String {
    format!("{NODE_PREFIX}{id}")
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Coordinator(id) => write!(f, "coordinator {id}"),
            Self::Node(id) => write!(f, "node {id}"),
            Self::Operator => f.write_str("operator"),
            Self::Unrecognized => f.write_str("unrecognized"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_give_roles() {
        let role = |name: &str| Role::of(Some(name));
        assert_eq!(role("coord-3"), Role::Coordinator(3));
        assert_eq!(role(&coordinator_name(17)), Role::Coordinator(17));
        assert_eq!(role("node-0"), Role::Node(NodeId(0)));
        assert_eq!(
            role(&node_name(NodeId(u64::MAX))),
            Role::Node(NodeId(u64::MAX))
        );
        for operator in [
            "client",
            "alice",
            "ops-team",
            "nodes",
            "coordinator",
            "node",
        ] {
            assert_eq!(role(operator), Role::Operator, "{operator}");
        }
        for odd in [
            "node-",
            "node-x",
            "node-01",
            "node-+1",
            "coord-1.example",
            "coord-18446744073709551616",
            "node-1 ",
        ] {
            assert_eq!(role(odd), Role::Unrecognized, "{odd}");
        }
        assert_eq!(Role::of(None), Role::Unrecognized);
    }
}
