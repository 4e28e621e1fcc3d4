//! Commands and the decision that turns a command, against the current state,
//! into the events to append. The checks themselves live on [`Firewall`], so
//! that the fold enforces exactly the same rules on replay.

use std::time::SystemTime;

use crate::apply::DesiredRule;
use crate::error::DomainError;
use crate::event::{EventPayload, RuleSpec};
use crate::firewall::Firewall;
use crate::sources::Sources;
use crate::values::{default_rules, Description, InstanceId, PortRange, Protocol, RuleId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    CreateFirewall,
    AddRule {
        ports: PortRange,
        protocol: Protocol,
        description: Description,
        enabled: bool,
        /// Checked to be in the future by whoever built the command (the
        /// model has no clock).
        expire_time: Option<SystemTime>,
        sources: Sources,
    },
    /// `None` leaves a field as it is.
    UpdateRule {
        rule_id: RuleId,
        enabled: Option<bool>,
        description: Option<Description>,
        sources: Option<Sources>,
    },
    DeleteRule {
        rule_id: RuleId,
    },
    /// The service's expiry: deletes the rule if its expire time is at or
    /// before `now`. Nothing happens if it is gone, or no longer due (so a
    /// repeated or late expiry appends nothing).
    ExpireRule {
        rule_id: RuleId,
        now: SystemTime,
    },
    DeleteFirewall,
    /// Keeps the unconfirmed change that `revision` belongs to.
    ConfirmChange {
        revision: u64,
        now: SystemTime,
    },
    /// The whole firewall at once: see [`crate::apply`]. `now` checks the
    /// desired expire times.
    ApplyFirewall {
        rules: Vec<DesiredRule>,
        now: SystemTime,
    },
    /// The service's revert: undoes the unconfirmed change named by its last
    /// `revision` if its revert time is at or before `now`. Nothing happens
    /// if it was confirmed or reverted already, or is not yet due.
    RevertChange {
        revision: u64,
        now: SystemTime,
    },
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::CreateFirewall => "create_firewall",
            Command::AddRule { .. } => "add_rule",
            Command::ApplyFirewall { .. } => "apply_firewall",
            Command::UpdateRule { .. } => "update_rule",
            Command::DeleteRule { .. } => "delete_rule",
            Command::ExpireRule { .. } => "expire_rule",
            Command::DeleteFirewall => "delete_firewall",
            Command::ConfirmChange { .. } => "confirm_change",
            Command::RevertChange { .. } => "revert_change",
        }
    }
}

/// Where fresh custom rule ids come from (UUID v7 in the service; fixed in tests).
pub trait RuleIdSource {
    fn next_rule_id(&mut self) -> RuleId;
}

impl<F: FnMut() -> RuleId> RuleIdSource for F {
    fn next_rule_id(&mut self) -> RuleId {
        self()
    }
}

/// Decides what `command` appends to the firewall `state` of `instance_id`.
///
/// An empty list means the command changes nothing (creating an existing
/// firewall, disabling a disabled rule): the caller answers with the current
/// state and appends nothing.
pub fn decide(
    instance_id: &InstanceId,
    state: Option<&Firewall>,
    command: &Command,
    expected_revision: Option<u64>,
    ids: &mut impl RuleIdSource,
) -> Result<Vec<EventPayload>, DomainError> {
    let actual = state.map_or(0, |f| f.revision);
    if let Some(expected) = expected_revision {
        if expected != actual {
            return Err(DomainError::RevisionMismatch { expected, actual });
        }
    }
    let live = state.filter(|f| f.is_live());
    if let Command::ExpireRule { rule_id, now } = command {
        return Ok(live
            .into_iter()
            .flat_map(|f| f.expired_rules(*now))
            .find(|(id, _)| *id == rule_id)
            .map(|(id, expire_time)| EventPayload::RuleExpired {
                rule_id: id.clone(),
                expire_time,
            })
            .into_iter()
            .collect());
    }
    if let Command::RevertChange { revision, now } = command {
        return Ok(live
            .and_then(|f| f.revert(*revision, *now))
            .into_iter()
            .collect());
    }
    if let Command::CreateFirewall = command {
        return Ok(match live {
            Some(_) => Vec::new(),
            None => vec![EventPayload::FirewallCreated {
                default_rules: default_rules(),
            }],
        });
    }
    let firewall = live.ok_or_else(|| DomainError::FirewallNotFound {
        instance_id: instance_id.to_string(),
    })?;

    Ok(match command {
        Command::CreateFirewall | Command::ExpireRule { .. } | Command::RevertChange { .. } => {
            unreachable!("handled above")
        }
        Command::AddRule {
            ports,
            protocol,
            description,
            enabled,
            expire_time,
            sources,
        } => {
            firewall.check_can_add(*ports, *protocol)?;
            vec![EventPayload::RuleAdded(RuleSpec {
                id: ids.next_rule_id(),
                ports: *ports,
                protocol: *protocol,
                description: description.clone(),
                enabled: *enabled,
                is_default: false,
                expire_time: *expire_time,
                sources: sources.clone(),
            })]
        }
        Command::UpdateRule {
            rule_id,
            enabled,
            description,
            sources,
        } => {
            let rule = firewall.check_rule(rule_id)?;
            let mut events = Vec::new();
            match enabled {
                Some(true) if !rule.spec.enabled => events.push(EventPayload::RuleEnabled {
                    rule_id: rule_id.clone(),
                }),
                Some(false) if rule.spec.enabled => events.push(EventPayload::RuleDisabled {
                    rule_id: rule_id.clone(),
                }),
                _ => {}
            }
            if let Some(description) = description
                .as_ref()
                .filter(|d| *d != &rule.spec.description)
            {
                events.push(EventPayload::RuleDescriptionChanged {
                    rule_id: rule_id.clone(),
                    description: description.clone(),
                });
            }
            if let Some(sources) = sources.as_ref().filter(|s| *s != &rule.spec.sources) {
                events.push(EventPayload::RuleSourcesChanged {
                    rule_id: rule_id.clone(),
                    sources: sources.clone(),
                });
            }
            events
        }
        Command::DeleteRule { rule_id } => {
            firewall.check_can_delete(rule_id)?;
            vec![EventPayload::RuleDeleted {
                rule_id: rule_id.clone(),
            }]
        }
        Command::DeleteFirewall => vec![EventPayload::FirewallDeleted],
        Command::ConfirmChange { revision, now } => {
            let change = firewall.check_can_confirm(*revision, *now)?;
            vec![EventPayload::ChangeConfirmed {
                revision: change.revision,
            }]
        }
        Command::ApplyFirewall { rules, now } => {
            firewall.plan_apply(rules, ids, *now)?.into_iter().collect()
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::event::Event;
    use crate::firewall::{fold, replay};
    use crate::values::{ActorId, Port, RequestId};
    use crate::FoldError;

    pub(crate) struct History {
        pub(crate) instance: InstanceId,
        pub(crate) events: Vec<Event>,
        pub(crate) state: Option<Firewall>,
        next_id: u32,
    }

    impl History {
        pub(crate) fn new() -> Self {
            Self {
                instance: InstanceId::parse("web-1").unwrap(),
                events: Vec::new(),
                state: None,
                next_id: 0,
            }
        }

        pub(crate) fn run(&mut self, command: Command) -> Result<usize, DomainError> {
            self.run_marked(command, None)
        }

        /// Runs a command whose events carry `revert_time` (made with a
        /// confirmation window); commit times are the revision in seconds.
        pub(crate) fn run_marked(
            &mut self,
            command: Command,
            revert_time: Option<SystemTime>,
        ) -> Result<usize, DomainError> {
            let first_revision = self.state.as_ref().map_or(0, |f| f.revision) + 1;
            let unconfirmed = revert_time.map(|revert_time| crate::Unconfirmed {
                revert_time,
                first_revision,
                confirm_on_traffic: false,
            });
            let next_id = &mut self.next_id;
            let mut ids = || {
                *next_id += 1;
                RuleId::parse(&format!("rule-{next_id}")).unwrap()
            };
            let payloads = decide(
                &self.instance,
                self.state.as_ref(),
                &command,
                None,
                &mut ids,
            )?;
            let n = payloads.len();
            for payload in payloads {
                let revision = self.state.as_ref().map_or(0, |f| f.revision) + 1;
                let event = Event {
                    sequence: revision,
                    instance_id: self.instance.clone(),
                    revision,
                    event_id: uuid::Uuid::nil(),
                    commit_time: SystemTime::UNIX_EPOCH + Duration::from_secs(revision),
                    actor: ActorId::anonymous(),
                    on_behalf_of: None,
                    request_id: RequestId::parse_optional("r").unwrap(),
                    request_digest: None,
                    unconfirmed,
                    payload,
                };
                self.state = Some(fold(self.state.take(), &event).unwrap());
                self.events.push(event);
            }
            Ok(n)
        }

        pub(crate) fn firewall(&self) -> &Firewall {
            self.state.as_ref().unwrap()
        }
    }

    pub(crate) fn add(port: u32, protocol: Protocol) -> Command {
        Command::AddRule {
            ports: PortRange::single(Port::new(port).unwrap()),
            protocol,
            description: Description::default(),
            enabled: true,
            expire_time: None,
            sources: Sources::anywhere(),
        }
    }

    pub(crate) fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn create_gives_three_enabled_default_rules_and_is_idempotent() {
        let mut h = History::new();
        assert_eq!(h.run(Command::CreateFirewall), Ok(1));
        let ports: Vec<_> = h
            .firewall()
            .rules()
            .iter()
            .map(|r| r.spec.ports.first().get())
            .collect();
        assert_eq!(ports, [22, 80, 443]);
        assert!(h
            .firewall()
            .rules()
            .iter()
            .all(|r| r.spec.enabled && r.spec.is_default));
        assert_eq!(h.run(Command::CreateFirewall), Ok(0));
        assert_eq!(h.firewall().revision, 1);
    }

    #[test]
    fn one_rule_per_port_and_protocol() {
        let mut h = History::new();
        h.run(Command::CreateFirewall).unwrap();
        h.run(add(5432, Protocol::Tcp)).unwrap();
        assert_eq!(
            h.run(add(5432, Protocol::Tcp)),
            Err(DomainError::RuleExists {
                ports: PortRange::single(Port::new(5432).unwrap()),
                protocol: Protocol::Tcp,
                existing_ports: PortRange::single(Port::new(5432).unwrap()),
                existing_rule_id: "rule-1".into()
            })
        );
        assert_eq!(h.run(add(5432, Protocol::Udp)), Ok(1));
        assert!(matches!(
            h.run(add(22, Protocol::Tcp)),
            Err(DomainError::RuleExists { .. })
        ));
    }

    #[test]
    fn rules_are_ordered_by_port_then_protocol() {
        let mut h = History::new();
        h.run(Command::CreateFirewall).unwrap();
        for (port, protocol) in [
            (8080, Protocol::Udp),
            (53, Protocol::Udp),
            (8080, Protocol::Tcp),
        ] {
            h.run(add(port, protocol)).unwrap();
        }
        let order: Vec<_> = h
            .firewall()
            .rules()
            .iter()
            .map(|r| (r.spec.ports.first().get(), r.spec.protocol))
            .collect();
        assert_eq!(
            order,
            [
                (22, Protocol::Tcp),
                (53, Protocol::Udp),
                (80, Protocol::Tcp),
                (443, Protocol::Tcp),
                (8080, Protocol::Tcp),
                (8080, Protocol::Udp)
            ]
        );
    }

    #[test]
    fn defaults_can_be_disabled_but_not_deleted() {
        let mut h = History::new();
        h.run(Command::CreateFirewall).unwrap();
        let ssh = RuleId::parse("default-ssh").unwrap();
        let disable = Command::UpdateRule {
            rule_id: ssh.clone(),
            enabled: Some(false),
            description: None,
            sources: None,
        };
        assert_eq!(h.run(disable.clone()), Ok(1));
        assert!(!h.firewall().rule(&ssh).unwrap().spec.enabled);
        assert_eq!(h.firewall().rule(&ssh).unwrap().revision, 2);
        assert_eq!(h.run(disable), Ok(0), "disabling twice changes nothing");
        assert_eq!(
            h.run(Command::DeleteRule {
                rule_id: ssh.clone()
            }),
            Err(DomainError::DefaultRuleNotDeletable {
                rule_id: "default-ssh".into()
            })
        );
    }

    #[test]
    fn update_with_toggle_and_description_appends_both() {
        let mut h = History::new();
        h.run(Command::CreateFirewall).unwrap();
        h.run(add(3000, Protocol::Tcp)).unwrap();
        let rule_id = RuleId::parse("rule-1").unwrap();
        let n = h.run(Command::UpdateRule {
            rule_id: rule_id.clone(),
            enabled: Some(false),
            description: Some(Description::parse("dev server").unwrap()),
            sources: None,
        });
        assert_eq!(n, Ok(2));
        let rule = h.firewall().rule(&rule_id).unwrap();
        assert!(!rule.spec.enabled);
        assert_eq!(rule.spec.description.as_str(), "dev server");
        assert_eq!(
            h.run(Command::DeleteRule {
                rule_id: rule_id.clone()
            }),
            Ok(1)
        );
        assert!(h.firewall().rule(&rule_id).is_none());
    }

    #[test]
    fn unknown_firewall_and_rule_are_not_found() {
        let mut h = History::new();
        assert!(matches!(
            h.run(add(1, Protocol::Tcp)),
            Err(DomainError::FirewallNotFound { .. })
        ));
        h.run(Command::CreateFirewall).unwrap();
        assert!(matches!(
            h.run(Command::DeleteRule {
                rule_id: RuleId::parse("nope").unwrap()
            }),
            Err(DomainError::RuleNotFound { .. })
        ));
    }

    #[test]
    fn deleted_firewall_keeps_its_revision_and_can_be_created_again() {
        let mut h = History::new();
        h.run(Command::CreateFirewall).unwrap();
        h.run(add(3000, Protocol::Tcp)).unwrap();
        h.run(Command::DeleteFirewall).unwrap();
        assert!(!h.firewall().is_live());
        assert!(matches!(
            h.run(add(1, Protocol::Tcp)),
            Err(DomainError::FirewallNotFound { .. })
        ));
        assert_eq!(h.run(Command::CreateFirewall), Ok(1));
        assert_eq!(h.firewall().revision, 4);
        assert_eq!(h.firewall().rules().len(), 3);
    }

    #[test]
    fn expected_revision_must_match() {
        let h = History::new();
        let err = decide(
            &h.instance,
            None,
            &Command::CreateFirewall,
            Some(3),
            &mut || RuleId::parse("x").unwrap(),
        );
        assert_eq!(
            err,
            Err(DomainError::RevisionMismatch {
                expected: 3,
                actual: 0
            })
        );
    }

    #[test]
    fn replay_equals_the_incremental_state() {
        let mut h = History::new();
        h.run(Command::CreateFirewall).unwrap();
        h.run(add(5432, Protocol::Tcp)).unwrap();
        h.run(add(53, Protocol::Udp)).unwrap();
        h.run(Command::DeleteRule {
            rule_id: RuleId::parse("rule-1").unwrap(),
        })
        .unwrap();
        assert_eq!(replay(&h.events).unwrap().as_ref(), h.state.as_ref());
        let at_two = replay(&h.events[..2]).unwrap().unwrap();
        assert_eq!(at_two.revision, 2);
        assert!(at_two
            .rule_for(Port::new(5432).unwrap(), Protocol::Tcp)
            .is_some());
    }

    #[test]
    fn fold_rejects_a_revision_gap_and_an_impossible_event() {
        let mut h = History::new();
        h.run(Command::CreateFirewall).unwrap();
        h.run(add(5432, Protocol::Tcp)).unwrap();
        let mut gap = h.events.clone();
        gap.remove(0);
        assert!(matches!(
            replay(&gap),
            Err(FoldError::RevisionGap {
                current: 0,
                got: 2,
                ..
            })
        ));

        let mut delete_default = h.events[1].clone();
        delete_default.revision = 3;
        delete_default.payload = EventPayload::RuleDeleted {
            rule_id: RuleId::parse("default-http").unwrap(),
        };
        let err = fold(h.state.clone(), &delete_default).unwrap_err();
        assert!(
            matches!(err, FoldError::Inapplicable { revision: 3, .. }),
            "{err}"
        );
    }

    fn parts(firewall: &Firewall) -> crate::FirewallParts {
        crate::FirewallParts {
            instance_id: firewall.instance_id.clone(),
            revision: firewall.revision,
            rules: firewall.rules().to_vec(),
            create_time: firewall.create_time,
            update_time: firewall.update_time,
            deleted: firewall.deleted,
            unconfirmed: firewall.unconfirmed().to_vec(),
        }
    }

    #[test]
    fn a_restored_fold_result_folds_on_like_the_original() {
        let mut h = History::new();
        h.run(Command::CreateFirewall).unwrap();
        h.run(add(5432, Protocol::Tcp)).unwrap();
        h.run(add(53, Protocol::Udp)).unwrap();
        let mut shuffled = parts(h.firewall());
        shuffled.rules.reverse();
        let restored = Firewall::restore(shuffled).unwrap();
        assert_eq!(
            &restored,
            h.firewall(),
            "order is the fold's, whatever was saved"
        );

        h.run(Command::DeleteRule {
            rule_id: RuleId::parse("rule-1").unwrap(),
        })
        .unwrap();
        let next = h.events.last().unwrap();
        assert_eq!(&fold(Some(restored), next).unwrap(), h.firewall());
    }

    #[test]
    fn restore_refuses_what_no_fold_produces() {
        let mut h = History::new();
        h.run(Command::CreateFirewall).unwrap();
        h.run(add(5432, Protocol::Tcp)).unwrap();
        let good = parts(h.firewall());
        let refused = |change: &dyn Fn(&mut crate::FirewallParts)| {
            let mut bad = good.clone();
            change(&mut bad);
            Firewall::restore(bad).unwrap_err().to_string()
        };
        assert!(refused(&|p| p.revision = 0).contains("revision"));
        assert!(
            refused(&|p| p.rules[1].spec.ports = PortRange::single(Port::new(22).unwrap()))
                .contains("two rules for 22/tcp")
        );
        assert!(
            refused(&|p| p.rules[1].spec.id = p.rules[0].spec.id.clone())
                .contains("two rules with id")
        );
        assert!(refused(&|p| p.rules[0].revision = 3).contains("outside 1..=2"));
        assert!(refused(&|p| p.deleted = true).contains("deleted"));
        assert!(Firewall::restore(good).is_ok());
    }

    #[test]
    fn a_rule_expires_once_at_its_time_and_only_then() {
        let mut h = History::new();
        h.run(Command::CreateFirewall).unwrap();
        h.run(Command::AddRule {
            ports: PortRange::single(Port::new(5432).unwrap()),
            protocol: Protocol::Tcp,
            description: Description::default(),
            enabled: true,
            expire_time: Some(at(100)),
            sources: Sources::anywhere(),
        })
        .unwrap();
        let rule = RuleId::parse("rule-1").unwrap();
        assert_eq!(
            h.firewall().rule(&rule).unwrap().spec.expire_time,
            Some(at(100))
        );
        let expire = |now| Command::ExpireRule {
            rule_id: rule.clone(),
            now: at(now),
        };
        assert_eq!(h.run(expire(99)), Ok(0), "not yet due");
        assert_eq!(h.run(expire(100)), Ok(1));
        assert!(h.firewall().rule(&rule).is_none(), "deleted");
        assert!(matches!(
            h.events.last().unwrap().payload,
            EventPayload::RuleExpired { expire_time, .. } if expire_time == at(100)
        ));
        assert_eq!(h.run(expire(200)), Ok(0), "a second expiry appends nothing");
        assert_eq!(
            replay(&h.events).unwrap().as_ref(),
            Some(h.firewall()),
            "replay agrees"
        );
    }

    #[test]
    fn expiry_of_a_deleted_rule_or_firewall_appends_nothing_and_the_fold_checks_the_time() {
        let mut h = History::new();
        h.run(Command::CreateFirewall).unwrap();
        let ssh = RuleId::parse("default-ssh").unwrap();
        let expire_ssh = Command::ExpireRule {
            rule_id: ssh.clone(),
            now: at(1_000),
        };
        assert_eq!(
            h.run(expire_ssh),
            Ok(0),
            "rules without an expire time never expire"
        );

        // A RuleExpired for a time the rule does not carry does not fold.
        let firewall = h.firewall().clone();
        let forged = Event {
            sequence: 9,
            instance_id: firewall.instance_id.clone(),
            revision: firewall.revision + 1,
            event_id: uuid::Uuid::nil(),
            commit_time: at(1_000),
            actor: ActorId::expiry(),
            on_behalf_of: None,
            request_id: None,
            request_digest: None,
            unconfirmed: None,
            payload: EventPayload::RuleExpired {
                rule_id: ssh,
                expire_time: at(5),
            },
        };
        assert!(fold(Some(firewall), &forged).is_err());

        h.run(Command::DeleteFirewall).unwrap();
        let n = h.run(Command::ExpireRule {
            rule_id: RuleId::parse("rule-1").unwrap(),
            now: at(1_000),
        });
        assert_eq!(n, Ok(0), "a deleted firewall has nothing to expire");
    }

    fn add_range(first: u32, last: u32, protocol: Protocol) -> Command {
        Command::AddRule {
            ports: PortRange::new(first, last).unwrap(),
            protocol,
            description: Description::default(),
            enabled: true,
            expire_time: None,
            sources: Sources::anywhere(),
        }
    }

    #[test]
    fn port_ranges_are_checked_and_no_two_rules_of_a_protocol_overlap() {
        assert_eq!(PortRange::new(0, 5).unwrap_err().field, "port_range.first");
        assert_eq!(
            PortRange::new(5, 70_000).unwrap_err().field,
            "port_range.last"
        );
        let backwards = PortRange::new(27030, 27015).unwrap_err();
        assert_eq!(backwards.field, "port_range");
        assert!(backwards
            .to_string()
            .contains("first (27030) must not be greater than last (27015)"));
        assert_eq!(
            PortRange::parse("27015-27030").unwrap().to_string(),
            "27015-27030"
        );
        assert_eq!(PortRange::parse("22").unwrap().to_string(), "22");
        assert!(PortRange::parse("22-").is_err());

        let mut h = History::new();
        h.run(Command::CreateFirewall).unwrap();
        h.run(add_range(27015, 27030, Protocol::Udp)).unwrap();
        // Inside, at either end, or straddling: refused, naming the rule in the way.
        for (first, last) in [
            (27020, 27020),
            (27015, 27015),
            (27030, 27040),
            (27000, 27015),
            (1, 65535),
        ] {
            let refused = h.run(add_range(first, last, Protocol::Udp)).unwrap_err();
            let DomainError::RuleExists {
                existing_ports,
                existing_rule_id,
                ..
            } = &refused
            else {
                panic!("{refused:?}");
            };
            assert_eq!(existing_ports.to_string(), "27015-27030");
            assert_eq!(existing_rule_id, "rule-1");
            assert!(
                refused
                    .to_string()
                    .contains("would overlap the rule for 27015-27030/udp: rule-1"),
                "{refused}"
            );
        }
        // Next to it, or the other protocol: fine.
        h.run(add(27031, Protocol::Udp)).unwrap();
        h.run(add(27014, Protocol::Udp)).unwrap();
        h.run(add(27020, Protocol::Tcp)).unwrap();
        let firewall = h.firewall();
        let covering = |port: u32, protocol| {
            firewall
                .rule_for(Port::new(port).unwrap(), protocol)
                .map(|r| r.spec.ports.to_string())
        };
        assert_eq!(
            covering(27015, Protocol::Udp).as_deref(),
            Some("27015-27030")
        );
        assert_eq!(
            covering(27022, Protocol::Udp).as_deref(),
            Some("27015-27030")
        );
        assert_eq!(
            covering(27030, Protocol::Udp).as_deref(),
            Some("27015-27030")
        );
        assert_eq!(covering(27031, Protocol::Udp).as_deref(), Some("27031"));
        assert_eq!(covering(27022, Protocol::Tcp), None);
        assert_eq!(covering(27020, Protocol::Tcp).as_deref(), Some("27020"));
        // A saved firewall with two overlapping rules is refused.
        let mut parts = parts(firewall);
        for rule in parts
            .rules
            .iter_mut()
            .filter(|r| r.spec.id.as_str() == "rule-4")
        {
            rule.spec.protocol = Protocol::Udp;
        }
        let refused = Firewall::restore(parts).unwrap_err().to_string();
        assert!(refused.contains("two rules for 27020/udp"), "{refused}");
    }

    #[test]
    fn a_range_that_covers_a_database_port_is_warned_about() {
        let mut h = History::new();
        h.run(Command::CreateFirewall).unwrap();
        let wide = add_range(5000, 6000, Protocol::Tcp);
        h.run(wide.clone()).unwrap();
        let warned = crate::warnings(&wide, h.firewall());
        assert_eq!(warned.len(), 1);
        assert!(
            warned[0]
                .message
                .starts_with("5000-6000/tcp, which covers 5432 (PostgreSQL), is open to anywhere."),
            "{}",
            warned[0].message
        );
        let games = add_range(27015, 27030, Protocol::Udp);
        h.run(games.clone()).unwrap();
        assert!(crate::warnings(&games, h.firewall()).is_empty());
    }

    #[test]
    fn a_database_port_left_open_to_anywhere_is_warned_about_not_refused() {
        let mut h = History::new();
        h.run(Command::CreateFirewall).unwrap();
        let postgres = add(5432, Protocol::Tcp);
        h.run(postgres.clone()).unwrap();
        let warned = crate::warnings(&postgres, h.firewall());
        assert_eq!(warned.len(), 1);
        assert_eq!(warned[0].code, "DATABASE_PORT_OPEN");
        assert_eq!(warned[0].rule_id.as_str(), "rule-1");
        assert!(warned[0]
            .message
            .starts_with("5432/tcp (PostgreSQL) is open to anywhere."));
        assert!(warned[0]
            .message
            .contains("use strong passwords and allowlists"));

        let web = add(8080, Protocol::Tcp);
        h.run(web.clone()).unwrap();
        assert!(crate::warnings(&web, h.firewall()).is_empty());
        let memcached = add(11211, Protocol::Udp);
        h.run(memcached.clone()).unwrap();
        assert_eq!(crate::warnings(&memcached, h.firewall()).len(), 1);

        let rule_id = RuleId::parse("rule-1").unwrap();
        let toggle = |enabled| Command::UpdateRule {
            rule_id: rule_id.clone(),
            enabled: Some(enabled),
            description: None,
            sources: None,
        };
        h.run(toggle(false)).unwrap();
        assert!(
            crate::warnings(&toggle(false), h.firewall()).is_empty(),
            "closed"
        );
        h.run(toggle(true)).unwrap();
        assert_eq!(
            crate::warnings(&toggle(true), h.firewall()).len(),
            1,
            "open again"
        );
        // Describing a rule that is open already does not say it again.
        let describe = Command::UpdateRule {
            rule_id: rule_id.clone(),
            enabled: None,
            description: Some(crate::Description::parse("orders").unwrap()),
            sources: None,
        };
        h.run(describe.clone()).unwrap();
        assert!(
            crate::warnings(&describe, h.firewall()).is_empty(),
            "said once"
        );
    }

    #[test]
    fn an_allowlist_is_replaced_by_update_and_silences_the_database_warning() {
        let mut h = History::new();
        h.run(Command::CreateFirewall).unwrap();
        h.run(add(5432, Protocol::Tcp)).unwrap();
        let rule_id = RuleId::parse("rule-1").unwrap();
        let office = Sources::parse("sources", &["203.0.113.0/24", "2001:db8::/32"]).unwrap();
        let allow = |sources: Sources| Command::UpdateRule {
            rule_id: rule_id.clone(),
            enabled: None,
            description: None,
            sources: Some(sources),
        };
        assert_eq!(h.run(allow(office.clone())), Ok(1));
        assert!(matches!(
            &h.events.last().unwrap().payload,
            EventPayload::RuleSourcesChanged { sources, .. } if *sources == office
        ));
        assert_eq!(h.firewall().rule(&rule_id).unwrap().spec.sources, office);
        assert!(crate::warnings(&allow(office.clone()), h.firewall()).is_empty());
        assert_eq!(
            h.run(allow(office.clone())),
            Ok(0),
            "the same list changes nothing"
        );
        assert_eq!(h.run(allow(Sources::anywhere())), Ok(1));
        assert!(h
            .firewall()
            .rule(&rule_id)
            .unwrap()
            .spec
            .sources
            .is_anywhere());
        assert_eq!(
            crate::warnings(&allow(Sources::anywhere()), h.firewall()).len(),
            1
        );
        assert_eq!(replay(&h.events).unwrap().as_ref(), Some(h.firewall()));
    }
}
