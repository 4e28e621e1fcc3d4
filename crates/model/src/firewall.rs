//! The firewall state and the one fold that produces it from events.

use std::time::SystemTime;

use crate::error::{DomainError, FoldError, ValidationError};
use crate::event::{Event, EventPayload, Restored, RuleSpec};
use crate::unconfirmed::UnconfirmedChange;
use crate::values::{InstanceId, Port, PortRange, Protocol, RuleId};

/// How many rules one firewall may hold, defaults included.
pub const MAX_RULES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// What the rule is: the fields an event names it with.
    pub spec: RuleSpec,
    /// The firewall revision that last changed this rule.
    pub revision: u64,
    pub create_time: SystemTime,
    pub update_time: SystemTime,
}

/// An instance's firewall as of `revision`.
///
/// A deleted firewall keeps its revision (a tombstone), so that the
/// instance's revisions stay gapless if it is created again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firewall {
    pub instance_id: InstanceId,
    pub revision: u64,
    /// Sorted by first port, then protocol; no two rules of one protocol
    /// overlap.
    pub(crate) rules: Vec<Rule>,
    pub create_time: SystemTime,
    pub update_time: SystemTime,
    pub deleted: bool,
    /// Changes the service reverts at their revert time unless confirmed,
    /// oldest first.
    pub(crate) unconfirmed: Vec<UnconfirmedChange>,
}

impl Firewall {
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn unconfirmed(&self) -> &[UnconfirmedChange] {
        &self.unconfirmed
    }

    pub fn rule(&self, id: &RuleId) -> Option<&Rule> {
        self.rules.iter().find(|r| &r.spec.id == id)
    }

    /// The rule of `protocol` that covers `port` (one port or a range).
    pub fn rule_for(&self, port: Port, protocol: Protocol) -> Option<&Rule> {
        // Rules of one protocol never overlap: the last one starting at or
        // before the port is the only one that can cover it.
        let starting = self.rules.partition_point(|r| r.spec.ports.first() <= port);
        self.rules[..starting]
            .iter()
            .rev()
            .find(|r| r.spec.protocol == protocol)
            .filter(|r| r.spec.ports.contains(port))
    }

    /// The first rule of `protocol` that overlaps `ports`.
    pub fn rule_overlapping(&self, ports: PortRange, protocol: Protocol) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.spec.protocol == protocol && r.spec.ports.overlaps(ports))
    }

    pub fn is_live(&self) -> bool {
        !self.deleted
    }

    fn position(&self, ports: PortRange, protocol: Protocol) -> Result<usize, usize> {
        self.rules
            .binary_search_by(|r| (r.spec.ports, r.spec.protocol).cmp(&(ports, protocol)))
    }

    /// The product's rules for adding a rule: no two rules of one protocol
    /// overlap, a bounded count.
    pub(crate) fn check_can_add(
        &self,
        ports: PortRange,
        protocol: Protocol,
    ) -> Result<(), DomainError> {
        if let Some(existing) = self.rule_overlapping(ports, protocol) {
            return Err(DomainError::RuleExists {
                ports,
                protocol,
                existing_ports: existing.spec.ports,
                existing_rule_id: existing.spec.id.to_string(),
            });
        }
        if self.rules.len() >= MAX_RULES {
            return Err(DomainError::TooManyRules { limit: MAX_RULES });
        }
        Ok(())
    }

    pub(crate) fn check_rule(&self, id: &RuleId) -> Result<&Rule, DomainError> {
        self.rule(id).ok_or_else(|| DomainError::RuleNotFound {
            instance_id: self.instance_id.to_string(),
            rule_id: id.to_string(),
        })
    }

    /// Default rules can be disabled, never deleted.
    pub(crate) fn check_can_delete(&self, id: &RuleId) -> Result<(), DomainError> {
        if self.check_rule(id)?.spec.is_default {
            return Err(DomainError::DefaultRuleNotDeletable {
                rule_id: id.to_string(),
            });
        }
        Ok(())
    }

    /// Only a rule that carries this expire time can expire at it.
    pub(crate) fn check_can_expire(
        &self,
        id: &RuleId,
        expire_time: SystemTime,
    ) -> Result<(), DomainError> {
        let rule = self.check_rule(id)?;
        if rule.spec.is_default || rule.spec.expire_time != Some(expire_time) {
            return Err(DomainError::Invalid(ValidationError::new(
                "expire_time",
                format!("rule {id} does not expire at that time"),
            )));
        }
        Ok(())
    }

    /// Rules whose expire time is at or before `now`, with that time.
    pub fn expired_rules(&self, now: SystemTime) -> impl Iterator<Item = (&RuleId, SystemTime)> {
        self.rules
            .iter()
            .filter(|_| self.is_live())
            .filter_map(move |r| {
                r.spec
                    .expire_time
                    .filter(|t| *t <= now)
                    .map(|t| (&r.spec.id, t))
            })
    }

    fn new_rule(spec: &RuleSpec, event: &Event) -> Rule {
        Rule {
            spec: spec.clone(),
            revision: event.revision,
            create_time: event.commit_time,
            update_time: event.commit_time,
        }
    }

    fn insert(&mut self, rule: Rule) -> Result<(), DomainError> {
        self.check_can_add(rule.spec.ports, rule.spec.protocol)?;
        if self.rule(&rule.spec.id).is_some() {
            return Err(DomainError::RuleExists {
                ports: rule.spec.ports,
                protocol: rule.spec.protocol,
                existing_ports: rule.spec.ports,
                existing_rule_id: rule.spec.id.to_string(),
            });
        }
        let at = self
            .position(rule.spec.ports, rule.spec.protocol)
            .unwrap_or_else(|i| i);
        self.rules.insert(at, rule);
        Ok(())
    }

    fn touch_rule(
        &mut self,
        id: &RuleId,
        event: &Event,
        change: impl FnOnce(&mut Rule),
    ) -> Result<(), DomainError> {
        let instance_id = &self.instance_id;
        let rule = self
            .rules
            .iter_mut()
            .find(|r| &r.spec.id == id)
            .ok_or_else(|| DomainError::RuleNotFound {
                instance_id: instance_id.to_string(),
                rule_id: id.to_string(),
            })?;
        change(rule);
        rule.revision = event.revision;
        rule.update_time = event.commit_time;
        Ok(())
    }
}

/// The one fold: the state after `event`, given the state before it.
///
/// Strict: an event that does not follow its state (a revision gap, a rule
/// that does not exist, a second rule for a port) is an error, never skipped.
pub fn fold(state: Option<Firewall>, event: &Event) -> Result<Firewall, FoldError> {
    match state {
        Some(mut firewall) => {
            firewall.apply(event)?;
            Ok(firewall)
        }
        None => {
            check_follows(0, event)?;
            Firewall::created(event)
        }
    }
}

fn check_follows(current: u64, event: &Event) -> Result<(), FoldError> {
    if event.revision != current + 1 {
        return Err(FoldError::RevisionGap {
            instance_id: event.instance_id.to_string(),
            current,
            got: event.revision,
        });
    }
    Ok(())
}

fn inapplicable(event: &Event, reason: impl ToString) -> FoldError {
    FoldError::Inapplicable {
        instance_id: event.instance_id.to_string(),
        revision: event.revision,
        reason: reason.to_string(),
    }
}

impl Firewall {
    /// [`fold`] in place, for a firewall that has a history. On error the
    /// firewall is unchanged: every check runs before anything is modified.
    pub fn apply(&mut self, event: &Event) -> Result<(), FoldError> {
        check_follows(self.revision, event)?;
        if self.instance_id != event.instance_id {
            return Err(FoldError::WrongInstance {
                instance_id: self.instance_id.to_string(),
                event_instance: event.instance_id.to_string(),
                revision: event.revision,
            });
        }
        if let EventPayload::FirewallCreated { .. } = &event.payload {
            if self.is_live() {
                return Err(inapplicable(event, "firewall created twice"));
            }
            *self = Firewall::created(event)?;
            return Ok(());
        }
        if self.deleted {
            return Err(inapplicable(event, "firewall was deleted"));
        }
        let before: Vec<(RuleId, Option<Rule>)> = event
            .payload
            .rule_ids()
            .into_iter()
            .map(|id| (id.clone(), self.rule(id).cloned()))
            .collect();
        let applied = match &event.payload {
            EventPayload::FirewallCreated { .. } => unreachable!("handled above"),
            EventPayload::RuleAdded(spec) => self.insert(Firewall::new_rule(spec, event)),
            EventPayload::RuleEnabled { rule_id } => {
                self.touch_rule(rule_id, event, |r| r.spec.enabled = true)
            }
            EventPayload::RuleDisabled { rule_id } => {
                self.touch_rule(rule_id, event, |r| r.spec.enabled = false)
            }
            EventPayload::RuleDescriptionChanged {
                rule_id,
                description,
            } => self.touch_rule(rule_id, event, |r| {
                r.spec.description = description.clone();
            }),
            EventPayload::RuleSourcesChanged { rule_id, sources } => {
                self.touch_rule(rule_id, event, |r| r.spec.sources = sources.clone())
            }
            EventPayload::RuleDeleted { rule_id } => self.check_can_delete(rule_id).map(|()| {
                self.rules.retain(|r| &r.spec.id != rule_id);
            }),
            EventPayload::RuleExpired {
                rule_id,
                expire_time,
            } => self.check_can_expire(rule_id, *expire_time).map(|()| {
                self.rules.retain(|r| &r.spec.id != rule_id);
            }),
            EventPayload::FirewallDeleted => {
                self.rules.clear();
                self.deleted = true;
                Ok(())
            }
            EventPayload::ChangeConfirmed { .. } => Ok(()),
            EventPayload::ChangeReverted { restored, .. } => {
                self.put_back(restored, event.revision, event.commit_time)
            }
            EventPayload::FirewallApplied { removed, put } => {
                let applied = self.applied(removed, put, event.commit_time);
                self.put_back(&applied, event.revision, event.commit_time)
            }
        };
        applied.map_err(|e| inapplicable(event, e))?;
        self.track_unconfirmed(event, before);
        self.revision = event.revision;
        self.update_time = event.commit_time;
        Ok(())
    }

    /// A revert's restorations, all or none; the rules it puts back were
    /// changed at `revision`, at `time`.
    pub(crate) fn put_back(
        &mut self,
        restored: &[Restored],
        revision: u64,
        time: SystemTime,
    ) -> Result<(), DomainError> {
        // Staged on a copy: all restorations apply, or none.
        let mut rules = self.clone();
        for restoration in restored {
            match restoration {
                Restored::Removed { rule_id } => {
                    rules.check_can_delete(rule_id)?;
                    rules.rules.retain(|r| &r.spec.id != rule_id);
                }
                Restored::Put { spec, create_time } => match rules.rule(&spec.id) {
                    Some(current)
                        if (current.spec.ports, current.spec.protocol)
                            != (spec.ports, spec.protocol)
                            || current.spec.is_default != spec.is_default =>
                    {
                        return Err(DomainError::Invalid(ValidationError::new(
                            "restored",
                            format!("rule {} cannot change its port or kind", spec.id),
                        )));
                    }
                    Some(_) => {
                        for rule in rules.rules.iter_mut().filter(|r| r.spec.id == spec.id) {
                            rule.spec = spec.clone();
                            rule.revision = revision;
                            rule.update_time = time;
                        }
                    }
                    None => rules.insert(Rule {
                        spec: spec.clone(),
                        revision,
                        create_time: *create_time,
                        update_time: time,
                    })?,
                },
            }
        }
        self.rules = rules.rules;
        Ok(())
    }

    /// The state a `FirewallCreated` event starts.
    fn created(event: &Event) -> Result<Firewall, FoldError> {
        let EventPayload::FirewallCreated { default_rules } = &event.payload else {
            return Err(inapplicable(event, "no firewall exists"));
        };
        let mut firewall = Firewall {
            instance_id: event.instance_id.clone(),
            revision: event.revision,
            rules: Vec::with_capacity(default_rules.len()),
            create_time: event.commit_time,
            update_time: event.commit_time,
            deleted: false,
            unconfirmed: Vec::new(),
        };
        for spec in default_rules {
            firewall
                .insert(Firewall::new_rule(spec, event))
                .map_err(|e| inapplicable(event, e))?;
        }
        Ok(firewall)
    }
}

/// What a saved fold result is made of: see [`Firewall::restore`].
#[derive(Debug, Clone)]
pub struct FirewallParts {
    pub instance_id: InstanceId,
    pub revision: u64,
    pub rules: Vec<Rule>,
    pub create_time: SystemTime,
    pub update_time: SystemTime,
    pub deleted: bool,
    pub unconfirmed: Vec<UnconfirmedChange>,
}

impl Firewall {
    /// A firewall saved earlier as the result of [`fold`] (an enforcer's state
    /// file), checked against everything the fold guarantees: one rule per
    /// port+protocol and per id, at most [`MAX_RULES`], no rule newer than the
    /// firewall, no rules on a deleted one. Folding later events continues from it.
    pub fn restore(parts: FirewallParts) -> Result<Firewall, ValidationError> {
        let FirewallParts {
            instance_id,
            revision,
            mut rules,
            create_time,
            update_time,
            deleted,
            unconfirmed,
        } = parts;
        if revision == 0 {
            return Err(ValidationError::new("revision", "must be at least 1"));
        }
        if rules.len() > MAX_RULES {
            return Err(ValidationError::new(
                "rules",
                format!("at most {MAX_RULES} rules, got {}", rules.len()),
            ));
        }
        if deleted && !rules.is_empty() {
            return Err(ValidationError::new(
                "rules",
                "a deleted firewall holds no rules",
            ));
        }
        if let Some(rule) = rules
            .iter()
            .find(|r| r.revision == 0 || r.revision > revision)
        {
            return Err(ValidationError::new(
                "rules",
                format!(
                    "rule {} was changed at revision {}, outside 1..={revision}",
                    rule.spec.id, rule.revision
                ),
            ));
        }
        rules.sort_by_key(|r| (r.spec.ports, r.spec.protocol));
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let mut of_protocol = rules.iter().filter(|r| r.spec.protocol == protocol);
            let Some(mut before) = of_protocol.next() else {
                continue;
            };
            for rule in of_protocol {
                if before.spec.ports.overlaps(rule.spec.ports) {
                    return Err(ValidationError::new(
                        "rules",
                        format!(
                            "two rules for {}/{protocol}: {} and {}",
                            rule.spec.ports.first(),
                            before.spec.ports,
                            rule.spec.ports
                        ),
                    ));
                }
                before = rule;
            }
        }
        let mut ids: Vec<&RuleId> = rules.iter().map(|r| &r.spec.id).collect();
        ids.sort();
        if let Some(pair) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(ValidationError::new(
                "rules",
                format!("two rules with id {}", pair[0]),
            ));
        }
        if deleted && !unconfirmed.is_empty() {
            return Err(ValidationError::new(
                "unconfirmed",
                "a deleted firewall has no unconfirmed changes",
            ));
        }
        if let Some(change) = unconfirmed.iter().find(|c| {
            c.first_revision == 0 || c.first_revision > c.revision || c.revision > revision
        }) {
            return Err(ValidationError::new(
                "unconfirmed",
                format!(
                    "a change of revisions {}..={} is outside 1..={revision}",
                    change.first_revision, change.revision
                ),
            ));
        }
        if unconfirmed.len() > crate::unconfirmed::MAX_UNCONFIRMED {
            return Err(ValidationError::new(
                "unconfirmed",
                format!(
                    "at most {} unconfirmed changes, got {}",
                    crate::unconfirmed::MAX_UNCONFIRMED,
                    unconfirmed.len()
                ),
            ));
        }
        Ok(Firewall {
            instance_id,
            revision,
            rules,
            create_time,
            update_time,
            deleted,
            unconfirmed,
        })
    }
}

/// Folds a whole history (one instance's events, in revision order).
pub fn replay<'a>(
    events: impl IntoIterator<Item = &'a Event>,
) -> Result<Option<Firewall>, FoldError> {
    events
        .into_iter()
        .try_fold(None, |state, event| fold(state, event).map(Some))
}
