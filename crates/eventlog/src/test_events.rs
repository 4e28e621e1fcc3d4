//! Events for the crate's unit tests.

use std::time::{Duration, SystemTime};

use cassette_model::{ActorId, Event, EventPayload, InstanceId, RuleId};

pub(crate) fn instance(name: &str) -> InstanceId {
    InstanceId::parse(name).unwrap()
}

pub(crate) fn event(sequence: u64, name: &str, revision: u64, payload: EventPayload) -> Event {
    Event {
        sequence,
        instance_id: instance(name),
        revision,
        event_id: uuid::Uuid::now_v7(),
        commit_time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + sequence),
        actor: ActorId::anonymous(),
        on_behalf_of: None,
        request_id: None,
        request_digest: None,
        unconfirmed: None,
        payload,
    }
}

pub(crate) fn created(sequence: u64, name: &str) -> Event {
    event(
        sequence,
        name,
        1,
        EventPayload::FirewallCreated {
            default_rules: cassette_model::default_rules(),
        },
    )
}

pub(crate) fn disabled(sequence: u64, name: &str, revision: u64) -> Event {
    event(
        sequence,
        name,
        revision,
        EventPayload::RuleDisabled {
            rule_id: RuleId::parse("default-ssh").unwrap(),
        },
    )
}
