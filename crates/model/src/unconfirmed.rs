//! Changes that undo themselves unless confirmed ("commit confirm"): a
//! change made with a confirmation window is listed on its firewall until
//! someone confirms it (`ChangeConfirmed`) or its revert time comes and the
//! service puts back what it altered (`ChangeReverted`).
//!
//! Everything a revert needs is kept by the fold itself, so every reader of
//! the log (the service, a replica, an enforcer, an audit "as of revision N")
//! agrees on it: each touched rule as it was before the change, and the
//! first later revision that changed the rule again (a revert never undoes a
//! newer change: it skips that rule and says why).

use std::time::{Duration, SystemTime};

use crate::error::{DomainError, ValidationError};
use crate::event::{Event, EventPayload, Restored, Skipped};
use crate::firewall::{Firewall, Rule};
use crate::values::RuleId;

/// How many changes one firewall may hold unconfirmed at once.
pub const MAX_UNCONFIRMED: usize = 64;
/// The shortest confirmation window.
pub const MIN_CONFIRM_WITHIN: Duration = Duration::from_secs(1);
/// The longest confirmation window.
pub const MAX_CONFIRM_WITHIN: Duration = Duration::from_secs(24 * 3600);

/// Checks a confirmation window, for the field `confirm_within`.
pub fn check_confirm_within(within: Duration) -> Result<Duration, ValidationError> {
    if within < MIN_CONFIRM_WITHIN || within > MAX_CONFIRM_WITHIN {
        return Err(ValidationError::new(
            "confirm_within",
            format!("must be between 1s and 24h, got {within:?}"),
        ));
    }
    Ok(within)
}

/// A change the service reverts at `revert_time` unless it is confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnconfirmedChange {
    /// The change's events are revisions `first_revision..=revision`; the
    /// change is named by `revision`, the revision its request answered.
    pub first_revision: u64,
    pub revision: u64,
    pub revert_time: SystemTime,
    pub confirm_on_traffic: bool,
    /// The rules it changed, in the order it changed them.
    pub touched: Vec<Touched>,
}

/// A rule an unconfirmed change altered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touched {
    pub rule_id: RuleId,
    /// The rule before the change; `None`: the change added it.
    pub before: Option<Rule>,
    /// The first later revision that changed the rule again.
    pub changed_again: Option<u64>,
}

impl UnconfirmedChange {
    pub fn covers(&self, revision: u64) -> bool {
        (self.first_revision..=self.revision).contains(&revision)
    }

    pub fn touches(&self, rule_id: &RuleId) -> bool {
        self.touched.iter().any(|t| &t.rule_id == rule_id)
    }

    /// What the change did, in a few words: "turned 22/tcp off".
    pub fn summary(&self, firewall: &Firewall) -> String {
        self.touched
            .iter()
            .map(|t| {
                let now = firewall.rule(&t.rule_id);
                let name = |r: &Rule| format!("{}/{}", r.spec.ports, r.spec.protocol);
                match (&t.before, now) {
                    (None, Some(now)) => format!("added {}", name(now)),
                    (None, None) => format!("added rule {}", t.rule_id),
                    (Some(before), None) => format!("deleted {}", name(before)),
                    (Some(before), Some(now)) => {
                        let mut what = Vec::new();
                        if before.spec.enabled != now.spec.enabled {
                            what.push(format!(
                                "turned {} {}",
                                name(now),
                                if now.spec.enabled { "on" } else { "off" }
                            ));
                        }
                        if before.spec.sources != now.spec.sources {
                            what.push(format!("changed who may reach {}", name(now)));
                        }
                        if before.spec.description != now.spec.description {
                            what.push(format!("described {}", name(now)));
                        }
                        if what.is_empty() {
                            what.push(format!("changed {}", name(now)));
                        }
                        what.join(", ")
                    }
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl Firewall {
    /// The unconfirmed change `revision` belongs to.
    pub fn unconfirmed_change(&self, revision: u64) -> Option<&UnconfirmedChange> {
        self.unconfirmed.iter().find(|c| c.covers(revision))
    }

    /// The unconfirmed change that last touched the rule, if any.
    pub fn unconfirmed_for(&self, rule_id: &RuleId) -> Option<&UnconfirmedChange> {
        self.unconfirmed.iter().rev().find(|c| {
            c.touched
                .iter()
                .any(|t| &t.rule_id == rule_id && t.changed_again.is_none())
        })
    }

    /// Unconfirmed changes whose revert time is at or before `now`.
    pub fn due_reverts(&self, now: SystemTime) -> impl Iterator<Item = &UnconfirmedChange> {
        self.unconfirmed
            .iter()
            .filter(move |c| self.is_live() && c.revert_time <= now)
    }

    /// Whether one more unconfirmed change fits.
    pub fn check_can_hold_unconfirmed(&self) -> Result<(), DomainError> {
        if self.unconfirmed.len() >= MAX_UNCONFIRMED {
            return Err(DomainError::TooManyUnconfirmed {
                limit: MAX_UNCONFIRMED,
            });
        }
        Ok(())
    }

    /// Confirming the change `revision` belongs to: only before its revert time.
    pub(crate) fn check_can_confirm(
        &self,
        revision: u64,
        now: SystemTime,
    ) -> Result<&UnconfirmedChange, DomainError> {
        let change =
            self.unconfirmed_change(revision)
                .ok_or_else(|| DomainError::NotUnconfirmed {
                    instance_id: self.instance_id.to_string(),
                    revision,
                })?;
        if change.revert_time <= now {
            return Err(DomainError::RevertDue {
                revision: change.revision,
                revert_time: change.revert_time,
            });
        }
        Ok(change)
    }

    /// What reverting the change `revision` appends, once it is due: every
    /// rule it touched put back as it was before, except those changed again
    /// since (and a deleted rule whose port another rule took meanwhile).
    pub(crate) fn revert(&self, revision: u64, now: SystemTime) -> Option<EventPayload> {
        let change = self.due_reverts(now).find(|c| c.revision == revision)?;
        let mut restored = Vec::new();
        let mut skipped = Vec::new();
        for touched in &change.touched {
            let skip = |reason: String| Skipped {
                rule_id: touched.rule_id.clone(),
                reason,
            };
            if let Some(again) = touched.changed_again {
                skipped.push(skip(format!(
                    "changed again at revision {again}, after this change: the newer change stays"
                )));
                continue;
            }
            match (&touched.before, self.rule(&touched.rule_id)) {
                (None, Some(_)) => restored.push(Restored::Removed {
                    rule_id: touched.rule_id.clone(),
                }),
                (None, None) => skipped.push(skip("no longer exists".to_owned())),
                (Some(before), Some(_)) => restored.push(Restored::Put {
                    spec: before.spec.clone(),
                    create_time: before.create_time,
                }),
                (Some(before), None) => {
                    match self.check_can_add(before.spec.ports, before.spec.protocol) {
                        Ok(()) => restored.push(Restored::Put {
                            spec: before.spec.clone(),
                            create_time: before.create_time,
                        }),
                        Err(error) => skipped.push(skip(format!("cannot be re-created: {error}"))),
                    }
                }
            }
        }
        Some(EventPayload::ChangeReverted {
            revision: change.revision,
            restored,
            skipped,
        })
    }

    /// The firewall with the unconfirmed changes `revisions` undone as the
    /// service's revert would undo them at `now` (those not yet due, or
    /// gone, are left): what an enforcer that can reach no rules service
    /// puts in force once their revert time passes. Its revision stays: the
    /// log has no such event until the service appends its own revert.
    pub fn reverted_locally(&self, revisions: &[u64], now: SystemTime) -> Firewall {
        let mut firewall = self.clone();
        for &revision in revisions {
            let Some(EventPayload::ChangeReverted { restored, .. }) =
                firewall.revert(revision, now)
            else {
                continue;
            };
            let at = firewall.revision;
            if firewall.put_back(&restored, at, now).is_ok() {
                firewall.unconfirmed.retain(|c| c.revision != revision);
            }
        }
        firewall
    }

    /// Keeps the unconfirmed changes in step with an event just applied;
    /// `before` holds the rules the event changed as they were before it.
    pub(crate) fn track_unconfirmed(&mut self, event: &Event, before: Vec<(RuleId, Option<Rule>)>) {
        match &event.payload {
            EventPayload::FirewallDeleted => {
                self.unconfirmed.clear();
                return;
            }
            EventPayload::ChangeConfirmed { revision }
            | EventPayload::ChangeReverted { revision, .. } => {
                self.unconfirmed.retain(|c| c.revision != *revision);
            }
            _ => {}
        }
        let own = event.unconfirmed.map(|u| u.first_revision);
        for change in &mut self.unconfirmed {
            if Some(change.first_revision) == own {
                continue;
            }
            for touched in &mut change.touched {
                if touched.changed_again.is_none()
                    && before.iter().any(|(id, _)| id == &touched.rule_id)
                {
                    touched.changed_again = Some(event.revision);
                }
            }
        }
        let Some(marker) = event.unconfirmed else {
            return;
        };
        let at = self.unconfirmed.iter().position(|c| {
            c.first_revision == marker.first_revision && c.revision + 1 == event.revision
        });
        let change = match at {
            Some(at) => &mut self.unconfirmed[at],
            None => {
                self.unconfirmed.push(UnconfirmedChange {
                    first_revision: marker.first_revision.min(event.revision),
                    revision: event.revision,
                    revert_time: marker.revert_time,
                    confirm_on_traffic: marker.confirm_on_traffic,
                    touched: Vec::new(),
                });
                self.unconfirmed.last_mut().expect("just pushed")
            }
        };
        change.revision = event.revision;
        for (rule_id, before) in before {
            if !change.touches(&rule_id) {
                change.touched.push(Touched {
                    rule_id,
                    before,
                    changed_again: None,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::tests::{add, at, History};
    use crate::values::{Port, Protocol};
    use crate::{replay, Command, Sources};

    /// What the history's last event, a ChangeReverted, put back and left.
    fn last_revert(h: &History) -> (&[crate::Restored], &[Skipped]) {
        match h.events.last().map(|e| &e.payload) {
            Some(EventPayload::ChangeReverted {
                restored, skipped, ..
            }) => (restored, skipped),
            other => panic!("a ChangeReverted, not {other:?}"),
        }
    }

    /// The id of the rule on `port`/tcp.
    fn rule_on(h: &History, port: u32) -> RuleId {
        h.firewall()
            .rule_for(Port::new(port).unwrap(), Protocol::Tcp)
            .unwrap()
            .spec
            .id
            .clone()
    }

    fn ssh() -> RuleId {
        RuleId::parse("default-ssh").unwrap()
    }

    fn turn(rule_id: &RuleId, enabled: bool) -> Command {
        Command::UpdateRule {
            rule_id: rule_id.clone(),
            enabled: Some(enabled),
            description: None,
            sources: None,
        }
    }

    fn revert(revision: u64, now: u64) -> Command {
        Command::RevertChange {
            revision,
            now: at(now),
        }
    }

    fn created() -> History {
        let mut h = History::new();
        h.run(Command::CreateFirewall).unwrap();
        h
    }

    /// The firewall's rules, without the revisions and times that changed.
    fn specs(firewall: &Firewall) -> Vec<crate::RuleSpec> {
        firewall.rules().iter().map(|r| r.spec.clone()).collect()
    }

    #[test]
    fn a_revert_puts_back_exactly_what_each_kind_of_change_altered() {
        let office = Sources::parse("sources", &["203.0.113.0/24".to_owned()]).unwrap();
        type Change = Box<dyn Fn(&History) -> Command>;
        let changes: Vec<(&str, Change)> = vec![
            ("turned off", Box::new(|_| turn(&ssh(), false))),
            ("added", Box::new(|_| add(5432, Protocol::Tcp))),
            (
                "deleted",
                Box::new(|h| Command::DeleteRule {
                    rule_id: rule_on(h, 6379),
                }),
            ),
            (
                "narrowed and described",
                Box::new(move |_| Command::UpdateRule {
                    rule_id: ssh(),
                    enabled: None,
                    description: Some(crate::Description::parse("office only").unwrap()),
                    sources: Some(office.clone()),
                }),
            ),
        ];
        for (what, change) in changes {
            let mut h = created();
            h.run(add(6379, Protocol::Tcp)).unwrap();
            let before = h.firewall().clone();
            let command = change(&h);
            let made = h.run_marked(command, Some(at(100))).unwrap();
            assert!(made >= 1, "{what}");
            let pending = h.firewall().unconfirmed().to_vec();
            assert_eq!(pending.len(), 1, "{what}");
            assert_eq!(pending[0].revision, h.firewall().revision, "{what}");
            assert_ne!(specs(h.firewall()), specs(&before), "{what}");

            assert_eq!(
                h.run(revert(pending[0].revision, 99)),
                Ok(0),
                "{what}: not due yet"
            );
            assert_eq!(h.run(revert(pending[0].revision, 100)), Ok(1), "{what}");
            assert_eq!(specs(h.firewall()), specs(&before), "{what}: put back");
            assert!(h.firewall().unconfirmed().is_empty(), "{what}");
            // A deleted rule comes back with its id and creation time.
            for rule in before.rules() {
                let now = h.firewall().rule(&rule.spec.id).unwrap();
                assert_eq!(now.create_time, rule.create_time, "{what}");
            }
            assert_eq!(
                h.run(revert(pending[0].revision, 200)),
                Ok(0),
                "{what}: once"
            );
            // Every reader of the log folds it to the same state.
            assert_eq!(
                replay(&h.events).unwrap().as_ref(),
                h.state.as_ref(),
                "{what}"
            );
        }
    }

    #[test]
    fn a_local_revert_puts_in_force_what_the_services_revert_will() {
        let mut h = created();
        h.run_marked(turn(&ssh(), false), Some(at(100))).unwrap();
        let revision = h.firewall().revision;
        let early = h.firewall().reverted_locally(&[revision], at(99));
        assert_eq!(early, *h.firewall(), "not due: nothing undone");
        let local = h.firewall().reverted_locally(&[revision], at(100));
        assert_eq!(
            local.revision,
            h.firewall().revision,
            "no revision of its own"
        );
        assert!(local.unconfirmed().is_empty());
        h.run(revert(revision, 100)).unwrap();
        assert_eq!(specs(&local), specs(h.firewall()));
    }

    #[test]
    fn a_confirmed_change_stays_and_cannot_be_confirmed_after_its_revert_time() {
        let mut h = created();
        h.run_marked(turn(&ssh(), false), Some(at(100))).unwrap();
        let revision = h.firewall().revision;
        assert!(h.firewall().unconfirmed_for(&ssh()).is_some());

        let late = h.run(Command::ConfirmChange {
            revision,
            now: at(100),
        });
        assert!(
            matches!(late, Err(DomainError::RevertDue { .. })),
            "{late:?}"
        );
        assert_eq!(
            h.run(Command::ConfirmChange {
                revision,
                now: at(50)
            }),
            Ok(1)
        );
        assert!(h.firewall().unconfirmed().is_empty());
        assert_eq!(
            h.run(revert(revision, 500)),
            Ok(0),
            "a confirmed change is never reverted"
        );
        assert!(!h.firewall().rule(&ssh()).unwrap().spec.enabled);

        let again = h.run(Command::ConfirmChange {
            revision,
            now: at(50),
        });
        assert!(
            matches!(again, Err(DomainError::NotUnconfirmed { .. })),
            "{again:?}"
        );
        let never = h.run(Command::ConfirmChange {
            revision: 1,
            now: at(50),
        });
        assert!(
            matches!(never, Err(DomainError::NotUnconfirmed { .. })),
            "{never:?}"
        );
    }

    #[test]
    fn a_revert_skips_rules_changed_again_and_says_why() {
        let mut h = created();
        h.run(add(6379, Protocol::Tcp)).unwrap();
        let redis = rule_on(&h, 6379);
        // One change touching SSH, another touching Redis, both unconfirmed.
        h.run_marked(turn(&ssh(), false), Some(at(100))).unwrap();
        let ssh_change = h.firewall().revision;
        h.run_marked(turn(&redis, false), Some(at(100))).unwrap();
        // SSH changed again (by someone else, confirmed or not): the newer change stays.
        h.run(Command::UpdateRule {
            rule_id: ssh(),
            enabled: None,
            description: Some(crate::Description::parse("bastion").unwrap()),
            sources: None,
        })
        .unwrap();
        let again = h.firewall().revision;
        assert_eq!(h.run(revert(ssh_change, 100)), Ok(1));
        let (restored, skipped) = last_revert(&h);
        assert!(restored.is_empty());
        assert_eq!(skipped.len(), 1);
        assert!(
            skipped[0].reason.contains(&format!("revision {again}")),
            "{}",
            skipped[0].reason
        );
        assert!(
            !h.firewall().rule(&ssh()).unwrap().spec.enabled,
            "the newer change stands"
        );
        // The other change is untouched by it and still reverts whole.
        assert_eq!(h.firewall().unconfirmed().len(), 1);
        let redis_change = h.firewall().unconfirmed()[0].revision;
        assert_eq!(h.run(revert(redis_change, 100)), Ok(1));
        assert!(h.firewall().rule(&redis).unwrap().spec.enabled);
    }

    #[test]
    fn a_deleted_rule_whose_port_was_taken_is_not_re_created() {
        let mut h = created();
        h.run(add(6379, Protocol::Tcp)).unwrap();
        let redis = rule_on(&h, 6379);
        h.run_marked(Command::DeleteRule { rule_id: redis }, Some(at(100)))
            .unwrap();
        let deleted = h.firewall().revision;
        h.run(add(6379, Protocol::Tcp)).unwrap();
        assert_eq!(h.run(revert(deleted, 100)), Ok(1));
        let (restored, skipped) = last_revert(&h);
        assert!(restored.is_empty());
        assert!(
            skipped[0].reason.contains("already exists"),
            "{}",
            skipped[0].reason
        );
    }

    #[test]
    fn unconfirmed_changes_are_bounded_and_end_with_their_firewall() {
        let mut h = created();
        for i in 0..MAX_UNCONFIRMED {
            h.run_marked(turn(&ssh(), i % 2 == 1), Some(at(1_000)))
                .unwrap();
        }
        assert_eq!(
            h.firewall().check_can_hold_unconfirmed(),
            Err(DomainError::TooManyUnconfirmed {
                limit: MAX_UNCONFIRMED
            })
        );
        h.run(Command::DeleteFirewall).unwrap();
        assert!(h.firewall().unconfirmed().is_empty());
        assert_eq!(h.run(revert(5, 2_000)), Ok(0));
    }
}
