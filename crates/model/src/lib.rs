//! The firewall domain: validated values, events, the decision that turns a
//! command into events, and the one fold from events to state.
//!
//! Every view of a firewall (the rules service's projection, an enforcer's
//! desired state, an audit answer "as of revision N") is [`fold`] over the
//! instance's events, or a saved result of that fold checked on restore
//! ([`Firewall::restore`], the enforcer's state file). This crate does no I/O and knows nothing of gRPC or sled.

mod advice;
pub mod apply;
mod command;
mod error;
mod event;
mod firewall;
mod sources;
mod unconfirmed;
mod values;

pub use advice::{database_on, warnings, Warning};
pub use apply::{rule_changes, DesiredRule, RuleChange};
pub use command::{decide, Command, RuleIdSource};
pub use error::{DomainError, FoldError, ValidationError};
pub use event::{Event, EventPayload, Restored, RuleSpec, Skipped, Unconfirmed};
pub use firewall::{fold, replay, Firewall, FirewallParts, Rule, MAX_RULES};
pub use sources::{Cidr, Sources};
pub use unconfirmed::{
    check_confirm_within, Touched, UnconfirmedChange, MAX_CONFIRM_WITHIN, MAX_UNCONFIRMED,
    MIN_CONFIRM_WITHIN,
};
pub use values::{
    default_rules, ActorId, Description, InstanceId, Port, PortRange, Protocol, RequestDigest,
    RequestId, RuleId,
};
