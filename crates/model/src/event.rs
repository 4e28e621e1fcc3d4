//! Events: the facts the log records, in past tense.

use std::time::SystemTime;

use crate::sources::Sources;
use crate::values::{
    ActorId, Description, InstanceId, Port, Protocol, RequestDigest, RequestId, RuleId,
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
    pub payload: EventPayload,
}

/// A rule as it was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    pub id: RuleId,
    pub port: Port,
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
        }
    }
}
