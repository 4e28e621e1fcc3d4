//! The words both command lines use for what an event did (`cassette
//! events` and `cassette-rules audit events`): one line per event.

use std::time::SystemTime;

use cassette_model::{Event, EventPayload, Restored};

use crate::sources_to_pb;

/// What `describe_event`'s lines say, in order, for a header row.
pub const EVENT_COLUMNS: &str = "SEQUENCE TIME INSTANCE#REVISION ACTOR: CHANGE";

fn rfc3339(time: SystemTime) -> String {
    prost_types::Timestamp::from(time).to_string()
}

/// One line: sequence, time, instance#revision, actor (and whom it acted for), what happened.
pub fn describe_event(event: &Event) -> String {
    let what = match &event.payload {
        EventPayload::FirewallCreated { default_rules } => format!(
            "created with {}",
            default_rules
                .iter()
                .map(|r| format!("{}/{}", r.ports, r.protocol))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        EventPayload::RuleAdded(spec) => format!(
            "added {}/{} {}{}{}",
            spec.ports,
            spec.protocol,
            spec.id,
            if spec.enabled { "" } else { " (disabled)" },
            spec.expire_time
                .map(|t| format!(" (expires {})", rfc3339(t)))
                .unwrap_or_default()
        ),
        EventPayload::RuleEnabled { rule_id } => format!("enabled {rule_id}"),
        EventPayload::RuleDisabled { rule_id } => format!("disabled {rule_id}"),
        EventPayload::RuleDescriptionChanged {
            rule_id,
            description,
        } => format!("described {rule_id} as {:?}", description.as_str()),
        EventPayload::RuleDeleted { rule_id } => format!("deleted {rule_id}"),
        EventPayload::RuleSourcesChanged { rule_id, sources } => format!(
            "allowed {rule_id} from {}",
            if sources.is_anywhere() {
                "anywhere".to_owned()
            } else {
                sources_to_pb(sources).join(", ")
            }
        ),
        EventPayload::RuleExpired {
            rule_id,
            expire_time,
        } => format!("expired {rule_id} (due {})", rfc3339(*expire_time)),
        EventPayload::FirewallDeleted => "deleted the firewall".to_owned(),
        EventPayload::ChangeConfirmed { revision } => {
            format!("confirmed the change at revision {revision}")
        }
        EventPayload::ChangeReverted {
            revision,
            restored,
            skipped,
        } => {
            let mut what = format!("reverted the change at revision {revision}");
            for restoration in restored {
                what.push_str(&match restoration {
                    Restored::Removed { rule_id } => format!("; removed {rule_id}"),
                    Restored::Put { spec, .. } => format!(
                        "; put back {}/{} {} ({})",
                        spec.ports,
                        spec.protocol,
                        spec.id,
                        if spec.enabled { "on" } else { "off" }
                    ),
                });
            }
            for skip in skipped {
                what.push_str(&format!(
                    "; left {} as it is: {}",
                    skip.rule_id, skip.reason
                ));
            }
            what
        }
        EventPayload::FirewallApplied { removed, put } => {
            let mut what = "applied the whole firewall".to_owned();
            for rule_id in removed {
                what.push_str(&format!("; removed {rule_id}"));
            }
            for spec in put {
                what.push_str(&format!(
                    "; set {}/{} {} ({})",
                    spec.ports,
                    spec.protocol,
                    spec.id,
                    if spec.enabled { "on" } else { "off" }
                ));
            }
            what
        }
    };
    let window = event
        .unconfirmed
        .map(|u| format!(" (undone at {} unless confirmed)", rfc3339(u.revert_time)))
        .unwrap_or_default();
    let for_whom = event
        .on_behalf_of
        .as_ref()
        .map(|user| format!(" (for {})", user.as_str()))
        .unwrap_or_default();
    format!(
        "{} {} {}#{} {}{for_whom}: {what}{window}",
        event.sequence,
        rfc3339(event.commit_time),
        event.instance_id,
        event.revision,
        event.actor.as_str()
    )
}
