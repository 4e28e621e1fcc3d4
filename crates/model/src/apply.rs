//! A whole firewall at once: the desired rules (every custom rule, and the
//! default rules' state), matched to the existing ones by rule id or else
//! by protocol and ports, become one `FirewallApplied` event: one revision,
//! so the enforcer puts the whole difference in force in one kernel
//! transaction, with no moment in which traffic both versions accept is
//! dropped.

use std::time::SystemTime;

use crate::error::{DomainError, ValidationError};
use crate::event::{EventPayload, Restored, RuleSpec};
use crate::firewall::{Firewall, Rule, MAX_RULES};
use crate::sources::Sources;
use crate::values::{Description, PortRange, Protocol, RuleId};
use crate::RuleIdSource;

/// One rule of the desired firewall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRule {
    /// Matches the existing rule with this id; `None`: the existing rule
    /// with the same protocol and ports, if any, else a new rule.
    pub rule_id: Option<RuleId>,
    pub ports: PortRange,
    pub protocol: Protocol,
    pub description: Description,
    pub enabled: bool,
    pub expire_time: Option<SystemTime>,
    pub sources: Sources,
}

/// One rule's difference between two firewalls, matched by id: added
/// (`before` is `None`), removed (`after` is `None`) or changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleChange<'a> {
    pub before: Option<&'a Rule>,
    pub after: Option<&'a Rule>,
}

impl RuleChange<'_> {
    /// Whether traffic the rule accepted before is refused after: the rule
    /// removed or turned off, or its allowlist narrowed.
    pub fn closes_or_narrows(&self) -> bool {
        let Some(before) = self.before.filter(|b| b.spec.enabled) else {
            return false;
        };
        let Some(after) = self.after.filter(|a| a.spec.enabled) else {
            return true;
        };
        if after.spec.ports != before.spec.ports || after.spec.protocol != before.spec.protocol {
            return true;
        }
        let (was, is) = (
            before.spec.sources.networks(),
            after.spec.sources.networks(),
        );
        !is.is_empty() && (was.is_empty() || was.iter().any(|w| !is.iter().any(|n| n.contains(w))))
    }
}

/// The rules that differ between `before` and `after`, matched by id:
/// removed first, then changed and added, in `after`'s order.
pub fn rule_changes<'a>(before: &'a Firewall, after: &'a Firewall) -> Vec<RuleChange<'a>> {
    let mut changes: Vec<RuleChange<'a>> = before
        .rules()
        .iter()
        .filter(|r| after.rule(&r.spec.id).is_none())
        .map(|r| RuleChange {
            before: Some(r),
            after: None,
        })
        .collect();
    for rule in after.rules() {
        match before.rule(&rule.spec.id) {
            Some(was) if was.spec == rule.spec => {}
            was => changes.push(RuleChange {
                before: was,
                after: Some(rule),
            }),
        }
    }
    changes
}

impl Firewall {
    /// The event that turns this firewall into `desired` (`None`: it already
    /// is). Existing custom rules the desired list leaves out are removed;
    /// default rules it leaves out stay as they are. A custom rule matched by
    /// id whose protocol or ports changed is replaced (removed, and added
    /// with a new id); a default rule keeps its port.
    pub(crate) fn plan_apply(
        &self,
        desired: &[DesiredRule],
        ids: &mut dyn RuleIdSource,
        now: SystemTime,
    ) -> Result<Option<EventPayload>, DomainError> {
        let field = |i: usize, name: &str| format!("rules[{i}].{name}");
        if desired.len() > MAX_RULES {
            return Err(DomainError::TooManyRules { limit: MAX_RULES });
        }
        let mut matched: Vec<(&RuleId, usize)> = Vec::new();
        let mut removed: Vec<RuleId> = Vec::new();
        let mut put: Vec<RuleSpec> = Vec::new();
        for (i, want) in desired.iter().enumerate() {
            let existing = match &want.rule_id {
                Some(id) => Some(self.check_rule(id)?),
                None => self
                    .rules()
                    .iter()
                    .find(|r| (r.spec.ports, r.spec.protocol) == (want.ports, want.protocol)),
            };
            if let Some(rule) = existing {
                if let Some((_, j)) = matched.iter().find(|(id, _)| **id == rule.spec.id) {
                    return Err(DomainError::Invalid(ValidationError::new(
                        field(i, "rule_id"),
                        format!("names rule {} again (rules[{j}] did)", rule.spec.id),
                    )));
                }
                matched.push((&rule.spec.id, i));
            }
            let keeps_expiry = existing.is_some_and(|r| r.spec.expire_time == want.expire_time);
            if want.expire_time.is_some_and(|t| t <= now) && !keeps_expiry {
                return Err(DomainError::Invalid(ValidationError::new(
                    field(i, "expire_time"),
                    "must be in the future",
                )));
            }
            let same_place =
                |r: &Rule| (r.spec.ports, r.spec.protocol) == (want.ports, want.protocol);
            match existing {
                Some(rule) if rule.spec.is_default && !same_place(rule) => {
                    return Err(DomainError::Invalid(ValidationError::new(
                        field(i, "port"),
                        format!(
                            "default rule {} stays on {}/{}",
                            rule.spec.id, rule.spec.ports, rule.spec.protocol
                        ),
                    )));
                }
                Some(rule) if same_place(rule) => {
                    let spec = RuleSpec {
                        description: want.description.clone(),
                        enabled: want.enabled,
                        expire_time: want.expire_time,
                        sources: want.sources.clone(),
                        ..rule.spec.clone()
                    };
                    if spec != rule.spec {
                        put.push(spec);
                    }
                }
                replaced => {
                    removed.extend(replaced.map(|r| r.spec.id.clone()));
                    put.push(RuleSpec {
                        id: ids.next_rule_id(),
                        ports: want.ports,
                        protocol: want.protocol,
                        description: want.description.clone(),
                        enabled: want.enabled,
                        is_default: false,
                        expire_time: want.expire_time,
                        sources: want.sources.clone(),
                    });
                }
            }
        }
        removed.extend(
            self.rules()
                .iter()
                .filter(|r| !r.spec.is_default)
                .filter(|r| !matched.iter().any(|(id, _)| **id == r.spec.id))
                .map(|r| r.spec.id.clone()),
        );
        if removed.is_empty() && put.is_empty() {
            return Ok(None);
        }
        // The result must be a firewall the fold accepts (no overlaps).
        self.clone()
            .put_back(&self.applied(&removed, &put, now), self.revision + 1, now)?;
        Ok(Some(EventPayload::FirewallApplied { removed, put }))
    }

    /// A `FirewallApplied` event's changes as restorations (removals first):
    /// a rule it puts that exists keeps its creation time, a new one is
    /// created at `time`.
    pub(crate) fn applied(
        &self,
        removed: &[RuleId],
        put: &[RuleSpec],
        time: SystemTime,
    ) -> Vec<Restored> {
        removed
            .iter()
            .map(|rule_id| Restored::Removed {
                rule_id: rule_id.clone(),
            })
            .chain(put.iter().map(|spec| Restored::Put {
                spec: spec.clone(),
                create_time: self.rule(&spec.id).map_or(time, |r| r.create_time),
            }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::tests::{add, at, History};
    use crate::values::Port;
    use crate::{replay, Cidr, Command};

    fn want(ports: &str, protocol: Protocol) -> DesiredRule {
        DesiredRule {
            rule_id: None,
            ports: PortRange::parse(ports).unwrap(),
            protocol,
            description: Description::default(),
            enabled: true,
            expire_time: None,
            sources: Sources::anywhere(),
        }
    }

    /// The firewall as it is, as a desired list (what `firewall get -o yaml` writes).
    fn as_desired(firewall: &Firewall) -> Vec<DesiredRule> {
        firewall
            .rules()
            .iter()
            .map(|r| DesiredRule {
                rule_id: Some(r.spec.id.clone()),
                ports: r.spec.ports,
                protocol: r.spec.protocol,
                description: r.spec.description.clone(),
                enabled: r.spec.enabled,
                expire_time: r.spec.expire_time,
                sources: r.spec.sources.clone(),
            })
            .collect()
    }

    fn apply(rules: Vec<DesiredRule>) -> Command {
        Command::ApplyFirewall { rules, now: at(50) }
    }

    fn ports(firewall: &Firewall) -> Vec<String> {
        firewall
            .rules()
            .iter()
            .map(|r| {
                format!(
                    "{}/{}{}",
                    r.spec.ports,
                    r.spec.protocol,
                    if r.spec.enabled { "" } else { " off" }
                )
            })
            .collect()
    }

    #[test]
    fn a_whole_firewall_is_one_event_and_applying_it_again_appends_nothing() {
        let mut h = History::new();
        h.run(Command::CreateFirewall).unwrap();
        h.run(add(5432, Protocol::Tcp)).unwrap();
        h.run(add(6379, Protocol::Tcp)).unwrap();
        let before = h.firewall().clone();

        // Keep SSH and HTTP, turn HTTPS off, keep 5432 (matched by port),
        // drop 6379, add a UDP range and 8080.
        let mut desired = as_desired(&before);
        desired.retain(|d| d.ports.first().get() != 6379);
        desired[2].enabled = false;
        desired[3].rule_id = None;
        desired.push(want("27015-27030", Protocol::Udp));
        desired.push(want("8080", Protocol::Tcp));
        assert_eq!(h.run(apply(desired.clone())).unwrap(), 1, "one event");
        let after = h.firewall().clone();
        assert_eq!(after.revision, before.revision + 1);
        assert_eq!(
            ports(&after),
            [
                "22/tcp",
                "80/tcp",
                "443/tcp off",
                "5432/tcp",
                "8080/tcp",
                "27015-27030/udp"
            ]
        );
        assert_eq!(
            after
                .rule_for(Port::new(5432).unwrap(), Protocol::Tcp)
                .unwrap()
                .spec
                .id,
            before
                .rule_for(Port::new(5432).unwrap(), Protocol::Tcp)
                .unwrap()
                .spec
                .id,
            "matched by port: the same rule"
        );
        let changes = rule_changes(&before, &after);
        let described: Vec<(Option<String>, Option<String>, bool)> = changes
            .iter()
            .map(|c| {
                (
                    c.before.map(|r| r.spec.ports.to_string()),
                    c.after.map(|r| r.spec.ports.to_string()),
                    c.closes_or_narrows(),
                )
            })
            .collect();
        assert_eq!(
            described,
            [
                (Some("6379".into()), None, true),
                (Some("443".into()), Some("443".into()), true),
                (None, Some("8080".into()), false),
                (None, Some("27015-27030".into()), false),
            ]
        );
        // The log alone says the same.
        assert_eq!(replay(&h.events).unwrap().as_ref(), Some(&after));

        // Applied again (as written back, ids and all): nothing to do.
        assert_eq!(h.run(apply(as_desired(&after))).unwrap(), 0);
        assert_eq!(h.run(apply(desired)).unwrap(), 0, "matched by port again");
    }

    #[test]
    fn an_apply_is_refused_whole_when_any_rule_is_wrong() {
        let mut h = History::new();
        h.run(Command::CreateFirewall).unwrap();
        h.run(add(5432, Protocol::Tcp)).unwrap();
        let before = h.firewall().clone();
        let refused = |desired: Vec<DesiredRule>, h: &mut History| {
            let error = h.run(apply(desired)).unwrap_err();
            assert_eq!(h.firewall(), &before, "nothing changed");
            error
        };
        // Two desired rules that overlap.
        let overlapping = vec![
            want("27015-27030", Protocol::Udp),
            want("27020", Protocol::Udp),
        ];
        assert!(matches!(
            refused(overlapping, &mut h),
            DomainError::RuleExists { .. }
        ));
        // A default rule moved.
        let mut moved = as_desired(&before);
        moved[0].ports = PortRange::parse("2222").unwrap();
        let error = refused(moved, &mut h);
        assert!(
            error
                .to_string()
                .contains("rules[0].port: default rule default-ssh stays on 22/tcp"),
            "{error}"
        );
        // An unknown id, one rule named twice, an expiry in the past.
        let mut unknown = as_desired(&before);
        unknown[3].rule_id = Some(RuleId::parse("nope").unwrap());
        assert!(matches!(
            refused(unknown, &mut h),
            DomainError::RuleNotFound { .. }
        ));
        let mut twice = as_desired(&before);
        twice.push(twice[3].clone());
        let error = refused(twice, &mut h);
        assert!(
            error
                .to_string()
                .contains("rules[4].rule_id: names rule rule-1 again (rules[3] did)"),
            "{error}"
        );
        let mut past = as_desired(&before);
        past[3].expire_time = Some(at(10));
        assert!(refused(past, &mut h)
            .to_string()
            .contains("rules[3].expire_time"));
    }

    #[test]
    fn a_rule_matched_by_id_on_other_ports_is_replaced_and_defaults_left_out_stay() {
        let mut h = History::new();
        h.run(Command::CreateFirewall).unwrap();
        h.run(add(5432, Protocol::Tcp)).unwrap();
        let before = h.firewall().clone();
        let old = before
            .rule_for(Port::new(5432).unwrap(), Protocol::Tcp)
            .unwrap()
            .spec
            .id
            .clone();
        let mut moved = want("5433", Protocol::Tcp);
        moved.rule_id = Some(old.clone());
        // Only the moved rule: the defaults are left out, and stay.
        h.run(apply(vec![moved])).unwrap();
        let after = h.firewall().clone();
        assert_eq!(ports(&after), ["22/tcp", "80/tcp", "443/tcp", "5433/tcp"]);
        assert!(after.rule(&old).is_none(), "replaced, with a new id");

        // Narrowing an allowlist narrows; widening it does not.
        let mut narrow = as_desired(&after);
        narrow[3].sources = Sources::parse("sources", &["10.0.0.0/8".to_owned()]).unwrap();
        h.run(apply(narrow)).unwrap();
        let narrowed = h.firewall().clone();
        let changes = rule_changes(&after, &narrowed);
        assert_eq!(changes.len(), 1);
        assert!(changes[0].closes_or_narrows());
        let mut wider = as_desired(&narrowed);
        wider[3].sources = Sources::parse(
            "sources",
            &["10.0.0.0/8".to_owned(), "192.0.2.0/24".to_owned()],
        )
        .unwrap();
        h.run(apply(wider)).unwrap();
        let widened = h.firewall().clone();
        assert!(!rule_changes(&narrowed, &widened)[0].closes_or_narrows());
        assert!(widened.rules()[3]
            .spec
            .sources
            .networks()
            .contains(&Cidr::parse("192.0.2.0/24").unwrap()));
    }

    #[test]
    fn an_unconfirmed_apply_is_reverted_whole() {
        let mut h = History::new();
        h.run(Command::CreateFirewall).unwrap();
        h.run(add(5432, Protocol::Tcp)).unwrap();
        let before = h.firewall().clone();
        let mut desired = as_desired(&before);
        desired[0].enabled = false;
        desired.remove(3);
        desired.push(want("8080", Protocol::Tcp));
        h.run_marked(apply(desired), Some(at(100))).unwrap();
        let applied = h.firewall().revision;
        assert_eq!(h.firewall().unconfirmed().len(), 1);
        h.run(Command::RevertChange {
            revision: applied,
            now: at(100),
        })
        .unwrap();
        assert_eq!(
            ports(h.firewall()),
            ports(&before),
            "SSH on, 5432 back, 8080 gone"
        );
        assert_eq!(
            h.firewall()
                .rule_for(Port::new(5432).unwrap(), Protocol::Tcp)
                .unwrap()
                .spec
                .id,
            before
                .rule_for(Port::new(5432).unwrap(), Protocol::Tcp)
                .unwrap()
                .spec
                .id
        );
    }
}
