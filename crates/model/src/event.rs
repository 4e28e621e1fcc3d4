//! Events: the facts the log records, in past tense.

use std::time::SystemTime;

use crate::sources::Sources;
use crate::values::{
    ActorId, Description, InstanceId, PortRange, Protocol, RequestDigest, RequestId, RuleId,
};

/// One committed fact about one instance's firewall, with its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the whole log, gapless from 1.
    pub sequence: u64,
    pub instance_id: InstanceId,
    /// Position in the instance's history, gapless from 1.
    pub revision: u64,
    /// UUID v7.
    pub event_id: uuid::Uuid,
    pub commit_time: SystemTime,
    pub actor: ActorId,
    /// The end user a delegate actor acted for.
    pub on_behalf_of: Option<ActorId>,
    pub request_id: Option<RequestId>,
    /// What the request with `request_id` asked for.
    pub request_digest: Option<RequestDigest>,
    /// Set on each event of a change that undoes itself unless confirmed.
    pub unconfirmed: Option<Unconfirmed>,
    pub payload: EventPayload,
}

/// What marks an event as part of a change that the service reverts at
/// `revert_time` unless someone confirms it first. A change is the events
/// one request made: revisions `first_revision` through the last of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unconfirmed {
    pub revert_time: SystemTime,
    pub first_revision: u64,
    /// Whether a new connection accepted through a rule the change touched
    /// confirms it.
    pub confirm_on_traffic: bool,
}

/// How a revert puts one rule back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// The change added the rule: it is removed.
    Removed { rule_id: RuleId },
    /// The rule is put back as it was before the change (re-created with its
    /// id and creation time if the change deleted it).
    Put {
        spec: RuleSpec,
        create_time: SystemTime,
    },
}

impl Restored {
    pub fn rule_id(&self) -> &RuleId {
        match self {
            Restored::Removed { rule_id } => rule_id,
            Restored::Put { spec, .. } => &spec.id,
        }
    }
}

/// A rule a revert left as it is, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub rule_id: RuleId,
    pub reason: String,
}

/// A rule as it was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    pub id: RuleId,
    /// The port, or range of ports, it opens.
    pub ports: PortRange,
    pub protocol: Protocol,
    pub description: Description,
    pub enabled: bool,
    pub is_default: bool,
    /// When the rule removes itself ("open 5432 for two hours"); `None`: never.
    pub expire_time: Option<SystemTime>,
    /// The networks it accepts traffic from; empty: anywhere.
    pub sources: Sources,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPayload {
    FirewallCreated {
        default_rules: Vec<RuleSpec>,
    },
    RuleAdded(RuleSpec),
    RuleEnabled {
        rule_id: RuleId,
    },
    RuleDisabled {
        rule_id: RuleId,
    },
    RuleDescriptionChanged {
        rule_id: RuleId,
        description: Description,
    },
    RuleDeleted {
        rule_id: RuleId,
    },
    /// The rule's allowlist was replaced (empty: anywhere).
    RuleSourcesChanged {
        rule_id: RuleId,
        sources: Sources,
    },
    /// The rule reached its `expire_time` and was deleted by the service
    /// (actor `system:expiry`).
    RuleExpired {
        rule_id: RuleId,
        expire_time: SystemTime,
    },
    FirewallDeleted,
    /// Someone kept an unconfirmed change (the change's last revision).
    ChangeConfirmed {
        revision: u64,
    },
    /// An unconfirmed change reached its revert time and the service undid it
    /// (actor `system:revert`): what it put back, and what it left because
    /// the rule changed again since.
    ChangeReverted {
        revision: u64,
        restored: Vec<Restored>,
        skipped: Vec<Skipped>,
    },
    /// A whole firewall was applied at once (ApplyFirewall): the custom
    /// rules it removed (or replaced), then every rule it added or changed,
    /// as it is after.
    FirewallApplied {
        removed: Vec<RuleId>,
        put: Vec<RuleSpec>,
    },
}

impl EventPayload {
    /// A short name for logs and audit views.
    pub fn kind(&self) -> &'static str {
        match self {
            EventPayload::FirewallCreated { .. } => "firewall_created",
            EventPayload::RuleAdded(_) => "rule_added",
            EventPayload::RuleEnabled { .. } => "rule_enabled",
            EventPayload::RuleDisabled { .. } => "rule_disabled",
            EventPayload::RuleDescriptionChanged { .. } => "rule_description_changed",
            EventPayload::RuleDeleted { .. } => "rule_deleted",
            EventPayload::RuleSourcesChanged { .. } => "rule_sources_changed",
            EventPayload::RuleExpired { .. } => "rule_expired",
            EventPayload::FirewallDeleted => "firewall_deleted",
            EventPayload::ChangeConfirmed { .. } => "change_confirmed",
            EventPayload::ChangeReverted { .. } => "change_reverted",
            EventPayload::FirewallApplied { .. } => "firewall_applied",
        }
    }

    /// The rules the event changes.
    pub fn rule_ids(&self) -> Vec<&RuleId> {
        match self {
            EventPayload::FirewallCreated { .. }
            | EventPayload::FirewallDeleted
            | EventPayload::ChangeConfirmed { .. } => Vec::new(),
            EventPayload::RuleAdded(spec) => vec![&spec.id],
            EventPayload::RuleEnabled { rule_id }
            | EventPayload::RuleDisabled { rule_id }
            | EventPayload::RuleDescriptionChanged { rule_id, .. }
            | EventPayload::RuleDeleted { rule_id }
            | EventPayload::RuleSourcesChanged { rule_id, .. }
            | EventPayload::RuleExpired { rule_id, .. } => vec![rule_id],
            EventPayload::ChangeReverted { restored, .. } => {
                restored.iter().map(Restored::rule_id).collect()
            }
            EventPayload::FirewallApplied { removed, put } => {
                removed.iter().chain(put.iter().map(|s| &s.id)).collect()
            }
        }
    }
}
