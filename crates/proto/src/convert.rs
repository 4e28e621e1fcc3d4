//! Wire <-> model conversions. Decoding validates: a wire value the model
//! cannot hold is a `ValidationError` naming the field.

use std::time::{Duration, SystemTime};

use cassette_model::{
    ActorId, Description, Event, EventPayload, Firewall, FirewallParts, InstanceId, Port,
    PortRange, Protocol, RequestDigest, RequestId, Restored, Rule, RuleId, RuleSpec, Skipped,
    Sources, Touched, Unconfirmed, UnconfirmedChange, ValidationError, Warning,
};

use crate::pb;

/// `PROTOCOL_UNSPECIFIED` means TCP, the product's default.
pub fn protocol_from_pb(value: i32) -> Result<Protocol, ValidationError> {
    match pb::Protocol::try_from(value) {
        Ok(pb::Protocol::Unspecified | pb::Protocol::Tcp) => Ok(Protocol::Tcp),
        Ok(pb::Protocol::Udp) => Ok(Protocol::Udp),
        Err(_) => Err(ValidationError::new(
            Protocol::FIELD,
            format!("must be PROTOCOL_TCP or PROTOCOL_UDP, got {value}"),
        )),
    }
}

pub fn protocol_to_pb(protocol: Protocol) -> pb::Protocol {
    match protocol {
        Protocol::Tcp => pb::Protocol::Tcp,
        Protocol::Udp => pb::Protocol::Udp,
    }
}

fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    time.into()
}

pub fn rule_to_pb(rule: &Rule) -> pb::Rule {
    let spec = rule_spec_to_pb(&rule.spec);
    pb::Rule {
        id: spec.rule_id,
        port: spec.port,
        protocol: spec.protocol,
        description: spec.description,
        enabled: spec.enabled,
        is_default: spec.is_default,
        revision: rule.revision,
        create_time: Some(timestamp(rule.create_time)),
        update_time: Some(timestamp(rule.update_time)),
        // Filled by whoever knows the enforcer's state (the rules service),
        // as are the hit counts.
        status: pb::RuleStatus::Unspecified.into(),
        hits: 0,
        last_hit_time: None,
        expire_time: spec.expire_time,
        sources: spec.sources,
        unconfirmed_revision: 0,
        revert_time: None,
        port_range: spec.port_range,
    }
}

pub fn port_range_to_pb(ports: PortRange) -> pb::PortRange {
    pb::PortRange {
        first: u32::from(ports.first().get()),
        last: u32::from(ports.last().get()),
    }
}

pub fn firewall_to_pb(firewall: &Firewall) -> pb::Firewall {
    let rules = firewall
        .rules()
        .iter()
        .map(|rule| {
            let mut pb = rule_to_pb(rule);
            if let Some(change) = firewall.unconfirmed_for(&rule.spec.id) {
                pb.unconfirmed_revision = change.revision;
                pb.revert_time = Some(timestamp(change.revert_time));
            }
            pb
        })
        .collect();
    pb::Firewall {
        instance_id: firewall.instance_id.to_string(),
        revision: firewall.revision,
        rules,
        create_time: Some(timestamp(firewall.create_time)),
        update_time: Some(timestamp(firewall.update_time)),
        sync: None,
        warnings: Vec::new(),
        unconfirmed: firewall
            .unconfirmed()
            .iter()
            .map(|c| unconfirmed_change_to_pb(c, firewall))
            .collect(),
        // What the enforcer reports, never in the log.
        blocked: Vec::new(),
    }
}

/// A firewall's unconfirmed changes as an enforcer saves them.
pub fn unconfirmed_to_saved(firewall: &Firewall) -> Vec<pb::SavedUnconfirmed> {
    firewall
        .unconfirmed()
        .iter()
        .map(|c| pb::SavedUnconfirmed {
            first_revision: c.first_revision,
            revision: c.revision,
            revert_time: Some(timestamp(c.revert_time)),
            confirm_on_traffic: c.confirm_on_traffic,
            touched: c
                .touched
                .iter()
                .map(|t| pb::SavedTouched {
                    rule_id: t.rule_id.to_string(),
                    before: t.before.as_ref().map(rule_to_pb),
                    changed_again: t.changed_again.unwrap_or(0),
                })
                .collect(),
        })
        .collect()
}

fn unconfirmed_from_saved(
    saved: &pb::SavedUnconfirmed,
) -> Result<UnconfirmedChange, ValidationError> {
    Ok(UnconfirmedChange {
        first_revision: saved.first_revision,
        revision: saved.revision,
        revert_time: time_from_pb(saved.revert_time, "unconfirmed.revert_time")?,
        confirm_on_traffic: saved.confirm_on_traffic,
        touched: saved
            .touched
            .iter()
            .map(|t| {
                let before = t.before.as_ref().map(rule_from_pb).transpose()?;
                let rule_id = RuleId::parse(&t.rule_id)?;
                if before.as_ref().is_some_and(|b| b.spec.id != rule_id) {
                    return Err(ValidationError::new(
                        "unconfirmed.touched",
                        format!("rule {rule_id} was saved with another rule's state"),
                    ));
                }
                Ok(Touched {
                    rule_id,
                    before,
                    changed_again: (t.changed_again > 0).then_some(t.changed_again),
                })
            })
            .collect::<Result<_, ValidationError>>()?,
    })
}

pub fn unconfirmed_change_to_pb(
    change: &UnconfirmedChange,
    firewall: &Firewall,
) -> pb::UnconfirmedChange {
    pb::UnconfirmedChange {
        revision: change.revision,
        revert_time: Some(timestamp(change.revert_time)),
        rule_ids: change
            .touched
            .iter()
            .map(|t| t.rule_id.to_string())
            .collect(),
        confirm_on_traffic: change.confirm_on_traffic,
        first_revision: change.first_revision,
        summary: change.summary(firewall),
    }
}

fn time_from_pb(
    time: Option<prost_types::Timestamp>,
    field: &'static str,
) -> Result<SystemTime, ValidationError> {
    let time = time.ok_or_else(|| ValidationError::new(field, "is missing"))?;
    SystemTime::try_from(time).map_err(|e| ValidationError::new(field, e.to_string()))
}

fn optional_time_from_pb(
    time: Option<prost_types::Timestamp>,
    field: &'static str,
) -> Result<Option<SystemTime>, ValidationError> {
    time.map(|t| time_from_pb(Some(t), field)).transpose()
}

fn rule_from_pb(rule: &pb::Rule) -> Result<Rule, ValidationError> {
    // A rule's spec fields are a RuleSpec's: validated by the one conversion.
    let spec = pb::RuleSpec {
        rule_id: rule.id.clone(),
        port: rule.port,
        protocol: rule.protocol,
        description: rule.description.clone(),
        enabled: rule.enabled,
        is_default: rule.is_default,
        expire_time: rule.expire_time,
        sources: rule.sources.clone(),
        port_range: rule.port_range.filter(|r| r.first != r.last),
    };
    Ok(Rule {
        spec: rule_spec_from_pb(&spec)?,
        revision: rule.revision,
        create_time: time_from_pb(rule.create_time, "create_time")?,
        update_time: time_from_pb(rule.update_time, "update_time")?,
    })
}

/// A saved fold result (an enforcer's state file) back into a firewall,
/// checked as strictly as a fold would have built it ([`Firewall::restore`]).
/// `deleted`: the firewall was deleted at its revision (the wire form has no
/// tombstones).
pub fn firewall_from_pb(
    firewall: &pb::Firewall,
    deleted: bool,
) -> Result<Firewall, ValidationError> {
    firewall_from_saved(firewall, deleted, &[])
}

/// [`firewall_from_pb`] with the unconfirmed changes an enforcer saved
/// beside it (what reverting each needs).
pub fn firewall_from_saved(
    firewall: &pb::Firewall,
    deleted: bool,
    unconfirmed: &[pb::SavedUnconfirmed],
) -> Result<Firewall, ValidationError> {
    Firewall::restore(FirewallParts {
        instance_id: InstanceId::parse(&firewall.instance_id)?,
        revision: firewall.revision,
        rules: firewall
            .rules
            .iter()
            .map(rule_from_pb)
            .collect::<Result<_, _>>()?,
        create_time: time_from_pb(firewall.create_time, "create_time")?,
        update_time: time_from_pb(firewall.update_time, "update_time")?,
        deleted,
        // Without them (the wire form lists changes without the rules as
        // they were), a restored firewall folds later confirmations and
        // reverts all the same: a revert's event carries what it puts back.
        unconfirmed: unconfirmed
            .iter()
            .map(unconfirmed_from_saved)
            .collect::<Result<_, _>>()?,
    })
}

/// `Warning.code` of a change answered before its instance's enforcer
/// acknowledged it (its `wait_for_sync` ran out): the service writes it, the
/// CLI turns it into its timed-out exit.
pub const NOT_YET_ACKNOWLEDGED: &str = "NOT_YET_ACKNOWLEDGED";

pub fn warning_to_pb(warning: &Warning) -> pb::Warning {
    pb::Warning {
        code: warning.code.to_owned(),
        message: warning.message.clone(),
        rule_id: warning.rule_id.to_string(),
    }
}

pub fn rule_spec_to_pb(spec: &RuleSpec) -> pb::RuleSpec {
    pb::RuleSpec {
        rule_id: spec.id.to_string(),
        port: u32::from(spec.ports.first().get()),
        protocol: protocol_to_pb(spec.protocol).into(),
        description: spec.description.as_str().to_owned(),
        enabled: spec.enabled,
        is_default: spec.is_default,
        expire_time: spec.expire_time.map(timestamp),
        sources: sources_to_pb(&spec.sources),
        // Absent for one port: such a rule's record is what it always was.
        port_range: (!spec.ports.is_single()).then(|| port_range_to_pb(spec.ports)),
    }
}

pub fn sources_to_pb(sources: &Sources) -> Vec<String> {
    sources.networks().iter().map(ToString::to_string).collect()
}

/// A recorded rule's ports: its range, whose first port must be `port`, or
/// `port` alone.
fn rule_ports_from_pb(
    port: u32,
    range: Option<&pb::PortRange>,
) -> Result<PortRange, ValidationError> {
    let Some(range) = range else {
        return Ok(PortRange::single(Port::new(port)?));
    };
    let ports = PortRange::new(range.first, range.last)?;
    if u32::from(ports.first().get()) != port {
        return Err(ValidationError::new(
            "port_range.first",
            format!("must be the rule's port {port}, got {}", range.first),
        ));
    }
    Ok(ports)
}

fn rule_spec_from_pb(spec: &pb::RuleSpec) -> Result<RuleSpec, ValidationError> {
    Ok(RuleSpec {
        id: RuleId::parse(&spec.rule_id)?,
        ports: rule_ports_from_pb(spec.port, spec.port_range.as_ref())?,
        protocol: protocol_from_pb(spec.protocol)?,
        description: Description::parse(&spec.description)?,
        enabled: spec.enabled,
        is_default: spec.is_default,
        expire_time: optional_time_from_pb(spec.expire_time, "expire_time")?,
        sources: Sources::parse("sources", &spec.sources)?,
    })
}

/// How a record spells its event id and commit time (`--record-encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordEncoding {
    /// `event_id` as the UUID's 36 characters, `commit_time` as a
    /// `Timestamp`: what the service answers and streams, and every record
    /// stored before the compact encoding.
    Full,
    /// `event_uuid` as its 16 bytes, `commit_unix_nanos` as one fixed64 (a
    /// commit time it cannot hold, before 1970 or after 2554, keeps its
    /// `Timestamp`): about 25 bytes fewer per record.
    Compact,
}

impl RecordEncoding {
    /// The encoding `stored` was written in: compact records carry the
    /// event id as `event_uuid` ([`event_to_record`] always does).
    pub fn of(stored: &pb::Event) -> Self {
        match stored.event_uuid.is_empty() {
            true => Self::Full,
            false => Self::Compact,
        }
    }

    /// The `--record-encoding` flag's value for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Compact => "compact",
            Self::Full => "full",
        }
    }
}

impl std::str::FromStr for RecordEncoding {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        [Self::Compact, Self::Full]
            .into_iter()
            .find(|encoding| encoding.as_str() == text)
            .ok_or_else(|| format!("{text:?}: must be compact or full"))
    }
}

impl std::fmt::Display for RecordEncoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The streamed form of an event (and the stored form of the full record
/// encoding); `prev_hash` links the log's hash chain.
pub fn event_to_pb(event: &Event, prev_hash: &[u8]) -> pb::Event {
    event_to_record(event, prev_hash, RecordEncoding::Full)
}

/// An event as a record in `encoding`; `prev_hash` links the log's hash chain.
pub fn event_to_record(event: &Event, prev_hash: &[u8], encoding: RecordEncoding) -> pb::Event {
    use pb::event::Payload;
    let payload = match &event.payload {
        EventPayload::FirewallCreated { default_rules } => {
            Payload::FirewallCreated(pb::FirewallCreated {
                default_rules: default_rules.iter().map(rule_spec_to_pb).collect(),
            })
        }
        EventPayload::RuleAdded(spec) => Payload::RuleAdded(pb::RuleAdded {
            rule: Some(rule_spec_to_pb(spec)),
        }),
        EventPayload::RuleEnabled { rule_id } => Payload::RuleEnabled(pb::RuleEnabled {
            rule_id: rule_id.to_string(),
        }),
        EventPayload::RuleDisabled { rule_id } => Payload::RuleDisabled(pb::RuleDisabled {
            rule_id: rule_id.to_string(),
        }),
        EventPayload::RuleDescriptionChanged {
            rule_id,
            description,
        } => Payload::RuleDescriptionChanged(pb::RuleDescriptionChanged {
            rule_id: rule_id.to_string(),
            description: description.as_str().to_owned(),
        }),
        EventPayload::RuleDeleted { rule_id } => Payload::RuleDeleted(pb::RuleDeleted {
            rule_id: rule_id.to_string(),
        }),
        EventPayload::RuleSourcesChanged { rule_id, sources } => {
            Payload::RuleSourcesChanged(pb::RuleSourcesChanged {
                rule_id: rule_id.to_string(),
                sources: sources_to_pb(sources),
            })
        }
        EventPayload::RuleExpired {
            rule_id,
            expire_time,
        } => Payload::RuleExpired(pb::RuleExpired {
            rule_id: rule_id.to_string(),
            expire_time: Some(timestamp(*expire_time)),
        }),
        EventPayload::FirewallDeleted => Payload::FirewallDeleted(pb::FirewallDeleted {}),
        EventPayload::ChangeConfirmed { revision } => {
            Payload::ChangeConfirmed(pb::ChangeConfirmed {
                revision: *revision,
            })
        }
        EventPayload::FirewallApplied { removed, put } => {
            Payload::FirewallApplied(pb::FirewallApplied {
                removed_rule_ids: removed.iter().map(ToString::to_string).collect(),
                rules: put.iter().map(rule_spec_to_pb).collect(),
            })
        }
        EventPayload::ChangeReverted {
            revision,
            restored,
            skipped,
        } => Payload::ChangeReverted(pb::ChangeReverted {
            revision: *revision,
            restored: restored
                .iter()
                .map(|r| match r {
                    Restored::Removed { rule_id } => pb::RestoredRule {
                        rule_id: rule_id.to_string(),
                        rule: None,
                        create_time: None,
                    },
                    Restored::Put { spec, create_time } => pb::RestoredRule {
                        rule_id: spec.id.to_string(),
                        rule: Some(rule_spec_to_pb(spec)),
                        create_time: Some(timestamp(*create_time)),
                    },
                })
                .collect(),
            skipped: skipped
                .iter()
                .map(|s| pb::SkippedRule {
                    rule_id: s.rule_id.to_string(),
                    reason: s.reason.clone(),
                })
                .collect(),
        }),
    };
    // A commit time nanoseconds since the epoch cannot hold is spelled out.
    let (event_id, event_uuid, commit_unix_nanos) = match encoding {
        RecordEncoding::Full => (event.event_id.hyphenated().to_string(), Vec::new(), None),
        RecordEncoding::Compact => (
            String::new(),
            event.event_id.as_bytes().to_vec(),
            unix_nanos(event.commit_time),
        ),
    };
    pb::Event {
        sequence: event.sequence,
        instance_id: event.instance_id.to_string(),
        revision: event.revision,
        event_id,
        event_uuid,
        commit_time: match commit_unix_nanos {
            Some(_) => None,
            None => Some(timestamp(event.commit_time)),
        },
        commit_unix_nanos: commit_unix_nanos.unwrap_or(0),
        record: Vec::new(),
        actor: event.actor.as_str().to_owned(),
        on_behalf_of: event
            .on_behalf_of
            .as_ref()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default(),
        request_id: event
            .request_id
            .as_ref()
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default(),
        prev_hash: prev_hash.to_vec(),
        request_digest: event
            .request_digest
            .map(|d| d.0.to_vec())
            .unwrap_or_default(),
        unconfirmed: event.unconfirmed.map(|u| pb::Unconfirmed {
            revert_time: Some(timestamp(u.revert_time)),
            first_revision: u.first_revision,
            confirm_on_traffic: u.confirm_on_traffic,
        }),
        payload: Some(payload),
    }
}

/// Nanoseconds since the Unix epoch, when a (non-zero) fixed64 holds them.
fn unix_nanos(time: SystemTime) -> Option<u64> {
    let since = time.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    u64::try_from(since.as_nanos()).ok().filter(|&n| n > 0)
}

/// The event id, spelled either way ([`RecordEncoding`]) but not both.
fn event_id_from_pb(event: &pb::Event) -> Result<uuid::Uuid, ValidationError> {
    match (event.event_id.as_str(), event.event_uuid.as_slice()) {
        (id, []) => {
            uuid::Uuid::parse_str(id).map_err(|e| ValidationError::new("event_id", e.to_string()))
        }
        ("", bytes) => uuid::Uuid::from_slice(bytes).map_err(|_| {
            ValidationError::new(
                "event_uuid",
                format!("must be a UUID's 16 bytes, got {}", bytes.len()),
            )
        }),
        _ => Err(ValidationError::new(
            "event_uuid",
            "is set beside event_id: a record spells its event id one way",
        )),
    }
}

/// The commit time, spelled either way ([`RecordEncoding`]) but not both.
fn commit_time_from_pb(event: &pb::Event) -> Result<SystemTime, ValidationError> {
    match (event.commit_time, event.commit_unix_nanos) {
        (time, 0) => time_from_pb(time, "commit_time"),
        (None, nanos) => SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_nanos(nanos))
            .ok_or_else(|| ValidationError::new("commit_unix_nanos", "is past what a time holds")),
        (Some(_), _) => Err(ValidationError::new(
            "commit_unix_nanos",
            "is set beside commit_time: a record spells its commit time one way",
        )),
    }
}

/// Decodes a stored event (either [`RecordEncoding`]), checking every value as
/// strictly as a request.
pub fn event_from_pb(event: &pb::Event) -> Result<Event, ValidationError> {
    use pb::event::Payload;
    let missing = |field: &'static str| ValidationError::new(field, "is missing");
    let payload = match event.payload.as_ref().ok_or_else(|| missing("payload"))? {
        Payload::FirewallCreated(created) => EventPayload::FirewallCreated {
            default_rules: created
                .default_rules
                .iter()
                .map(rule_spec_from_pb)
                .collect::<Result<_, _>>()?,
        },
        Payload::RuleAdded(added) => EventPayload::RuleAdded(rule_spec_from_pb(
            added.rule.as_ref().ok_or_else(|| missing("rule"))?,
        )?),
        Payload::RuleEnabled(e) => EventPayload::RuleEnabled {
            rule_id: RuleId::parse(&e.rule_id)?,
        },
        Payload::RuleDisabled(e) => EventPayload::RuleDisabled {
            rule_id: RuleId::parse(&e.rule_id)?,
        },
        Payload::RuleDescriptionChanged(e) => EventPayload::RuleDescriptionChanged {
            rule_id: RuleId::parse(&e.rule_id)?,
            description: Description::parse(&e.description)?,
        },
        Payload::RuleDeleted(e) => EventPayload::RuleDeleted {
            rule_id: RuleId::parse(&e.rule_id)?,
        },
        Payload::RuleSourcesChanged(e) => EventPayload::RuleSourcesChanged {
            rule_id: RuleId::parse(&e.rule_id)?,
            sources: Sources::parse("sources", &e.sources)?,
        },
        Payload::RuleExpired(e) => EventPayload::RuleExpired {
            rule_id: RuleId::parse(&e.rule_id)?,
            expire_time: time_from_pb(e.expire_time, "expire_time")?,
        },
        Payload::FirewallDeleted(_) => EventPayload::FirewallDeleted,
        Payload::ChangeConfirmed(e) => EventPayload::ChangeConfirmed {
            revision: e.revision,
        },
        Payload::FirewallApplied(e) => EventPayload::FirewallApplied {
            removed: e
                .removed_rule_ids
                .iter()
                .map(|id| RuleId::parse(id))
                .collect::<Result<_, _>>()?,
            put: e
                .rules
                .iter()
                .map(rule_spec_from_pb)
                .collect::<Result<_, _>>()?,
        },
        Payload::ChangeReverted(e) => EventPayload::ChangeReverted {
            revision: e.revision,
            restored: e
                .restored
                .iter()
                .map(|r| {
                    Ok(match &r.rule {
                        None => Restored::Removed {
                            rule_id: RuleId::parse(&r.rule_id)?,
                        },
                        Some(spec) => {
                            let spec = rule_spec_from_pb(spec)?;
                            if spec.id.as_str() != r.rule_id {
                                return Err(ValidationError::new(
                                    "restored",
                                    "rule_id differs from the rule's",
                                ));
                            }
                            Restored::Put {
                                spec,
                                create_time: time_from_pb(r.create_time, "create_time")?,
                            }
                        }
                    })
                })
                .collect::<Result<_, ValidationError>>()?,
            skipped: e
                .skipped
                .iter()
                .map(|s| {
                    Ok(Skipped {
                        rule_id: RuleId::parse(&s.rule_id)?,
                        reason: s.reason.clone(),
                    })
                })
                .collect::<Result<_, ValidationError>>()?,
        },
    };
    Ok(Event {
        sequence: event.sequence,
        instance_id: InstanceId::parse(&event.instance_id)?,
        revision: event.revision,
        event_id: event_id_from_pb(event)?,
        commit_time: commit_time_from_pb(event)?,
        actor: ActorId::parse(&event.actor)?,
        on_behalf_of: match event.on_behalf_of.as_str() {
            "" => None,
            user => Some(
                ActorId::parse(user)
                    .map_err(|e| ValidationError::new("on_behalf_of", e.message))?,
            ),
        },
        request_id: RequestId::parse_optional(&event.request_id)?,
        request_digest: RequestDigest::parse_optional(&event.request_digest)?,
        unconfirmed: match &event.unconfirmed {
            None => None,
            Some(u) => Some(Unconfirmed {
                revert_time: time_from_pb(u.revert_time, "revert_time")?,
                first_revision: u.first_revision,
                confirm_on_traffic: u.confirm_on_traffic,
            }),
        },
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn event(commit_time: SystemTime) -> Event {
        Event {
            sequence: 7,
            instance_id: InstanceId::parse("web-1").unwrap(),
            revision: 2,
            event_id: uuid::Uuid::now_v7(),
            commit_time,
            actor: ActorId::anonymous(),
            on_behalf_of: None,
            request_id: None,
            request_digest: None,
            unconfirmed: None,
            payload: EventPayload::RuleDisabled {
                rule_id: RuleId::parse("default-ssh").unwrap(),
            },
        }
    }

    #[test]
    fn either_record_encoding_decodes_to_the_same_event() {
        let now = SystemTime::UNIX_EPOCH + Duration::new(1_765_000_000, 987_654_321);
        let before_1970 = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        for time in [now, before_1970, SystemTime::UNIX_EPOCH] {
            let event = event(time);
            let full = event_to_record(&event, &[1; 32], RecordEncoding::Full);
            let compact = event_to_record(&event, &[1; 32], RecordEncoding::Compact);
            assert_eq!(full, event_to_pb(&event, &[1; 32]));
            assert_eq!(event_from_pb(&full).unwrap(), event);
            assert_eq!(event_from_pb(&compact).unwrap(), event);
            assert_eq!(compact.event_uuid, event.event_id.as_bytes());
            // A time a fixed64 of nanoseconds cannot hold (or whose 0 would
            // read as unset) keeps its Timestamp.
            assert_eq!(compact.commit_time.is_some(), time != now, "{time:?}");
        }
    }

    #[test]
    fn a_record_spelling_a_value_both_ways_or_badly_is_refused_by_name() {
        let event = event(SystemTime::now());
        let full = event_to_record(&event, &[], RecordEncoding::Full);
        let compact = event_to_record(&event, &[], RecordEncoding::Compact);
        let refused = |record: pb::Event| event_from_pb(&record).unwrap_err();

        let both_ids = pb::Event {
            event_uuid: compact.event_uuid.clone(),
            ..full.clone()
        };
        assert_eq!(refused(both_ids).field, "event_uuid");
        let both_times = pb::Event {
            commit_unix_nanos: compact.commit_unix_nanos,
            ..full.clone()
        };
        assert_eq!(refused(both_times).field, "commit_unix_nanos");
        let short_id = pb::Event {
            event_uuid: vec![1; 15],
            ..compact.clone()
        };
        let err = refused(short_id);
        assert_eq!(err.field, "event_uuid");
        assert!(err.message.contains("got 15"), "{}", err.message);
        let no_id = pb::Event {
            event_uuid: Vec::new(),
            ..compact.clone()
        };
        assert_eq!(refused(no_id).field, "event_id");
        let no_time = pb::Event {
            commit_unix_nanos: 0,
            ..compact
        };
        assert_eq!(refused(no_time).field, "commit_time");
    }
}
