//! What can go wrong in the domain, named so that the API layer can map each
//! kind to one status code and name the offending field.

use std::borrow::Cow;

use crate::values::{PortRange, Protocol};

/// A request value outside its allowed range. `field` is the API's field
/// name, with the index of a list entry (`sources[2]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: Cow<'static, str>,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, about the field `field` (a list entry, a nested field).
    pub fn at(self, field: impl Into<Cow<'static, str>>) -> Self {
        Self {
            field: field.into(),
            ..self
        }
    }
}

/// Why a command was refused. A refused command appends nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("firewall for instance {instance_id} not found")]
    FirewallNotFound { instance_id: String },
    #[error("rule {rule_id} not found on instance {instance_id}")]
    RuleNotFound {
        instance_id: String,
        rule_id: String,
    },
    #[error("{}", rule_exists(ports, protocol, existing_ports, existing_rule_id))]
    RuleExists {
        ports: PortRange,
        protocol: Protocol,
        /// What the rule in the way covers.
        existing_ports: PortRange,
        existing_rule_id: String,
    },
    #[error("default rule {rule_id} cannot be deleted; disable it instead")]
    DefaultRuleNotDeletable { rule_id: String },
    #[error("expected revision {expected}, but the firewall is at revision {actual}")]
    RevisionMismatch { expected: u64, actual: u64 },
    #[error("a firewall holds at most {limit} rules")]
    TooManyRules { limit: usize },
    #[error(
        "a firewall holds at most {limit} unconfirmed changes; confirm or wait for some first"
    )]
    TooManyUnconfirmed { limit: usize },
    #[error(
        "revision {revision} of instance {instance_id} is not an unconfirmed change: \
         it was confirmed or reverted already, or made without confirm_within"
    )]
    NotUnconfirmed { instance_id: String, revision: u64 },
    #[error(
        "the change at revision {revision} passed its revert time and is being reverted; \
         make the change again to keep it"
    )]
    RevertDue {
        revision: u64,
        revert_time: std::time::SystemTime,
    },
}

/// An event that cannot follow the state it is applied to. The log guarantees
/// this never happens for a log written by this system; seeing it means the log
/// was damaged or written by something else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    #[error("instance {instance_id}: event revision {got} does not follow revision {current}")]
    RevisionGap {
        instance_id: String,
        current: u64,
        got: u64,
    },
    #[error(
        "instance {instance_id} revision {revision}: event belongs to instance {event_instance}"
    )]
    WrongInstance {
        instance_id: String,
        event_instance: String,
        revision: u64,
    },
    #[error("instance {instance_id} revision {revision}: {reason}")]
    Inapplicable {
        instance_id: String,
        revision: u64,
        reason: String,
    },
}

/// "a rule for 5432/tcp already exists: ID", or for ports that only
/// overlap, which rule is in the way.
fn rule_exists(
    ports: &PortRange,
    protocol: &Protocol,
    existing: &PortRange,
    existing_rule_id: &str,
) -> String {
    if ports == existing {
        format!("a rule for {ports}/{protocol} already exists: {existing_rule_id}")
    } else {
        format!(
            "a rule for {ports}/{protocol} would overlap the rule for {existing}/{protocol}: {existing_rule_id}"
        )
    }
}
