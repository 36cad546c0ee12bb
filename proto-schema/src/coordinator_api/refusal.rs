//! Why a replica refused a request without serving it: nothing was
//! proposed and nothing changed. Typed, so a client can tell a command
//! that breaks a bound (refused before the log, with the error the state
//! machine would give) from a request its certificate may not make.

use serde::{Deserialize, Serialize};

use crate::command::CommandError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The command breaks a bound checked before the log.
    #[error("{0}")]
    Invalid(CommandError),
    /// The certificate's role may not make this request.
    #[error("{0}")]
    Forbidden(Forbidden),
}

/// A request the sender's certificate does not allow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("refused {request} from a {role} certificate: {reason}")]
pub struct Forbidden {
    /// The role the certificate's name gives (`node 3`, `operator`, ...).
    pub role: String,
    /// The request, as the refusal metric's `request` label names it.
    pub request: String,
    pub reason: String,
}
