//! `Diagnose`: the product page's troubleshooting checklist for "connection
//! refused after opening a port", answered with facts from the projection
//! (the rule), the sync state (what the enforcer applied) and the enforcer's
//! last report (what the kernel holds, what listens, what packets arrived).
//! Each check that does not pass says what to do next, in the page's words.

use std::time::{Duration, SystemTime};

use cassette_model::{Cidr, Firewall, Port, Protocol, Rule};
use cassette_proto::{pb, protocol_to_pb, sources_to_pb};

use cassette_service::blocked::{allows, BlockedTraffic, Cause};
use cassette_service::sync::{Observed, Snapshot};

/// The six checks, in the checklist's order, and what the firewall dropped.
pub fn diagnose(
    firewall: &Firewall,
    port: Port,
    protocol: Protocol,
    sync: &Snapshot,
    now: SystemTime,
) -> Vec<pb::Check> {
    let target = format!("{port}/{protocol}");
    let Some(rule) = firewall.rule_for(port, protocol) else {
        let mut checks = vec![fail(
            "rule_exists",
            format!("no rule for {target} on {}", firewall.instance_id),
            format!("Add a rule for {target} (AddRule; the \"Add Port\" form)."),
        )];
        checks.extend(
            [
                "rule_enabled",
                "rule_applied",
                "rule_in_kernel",
                "service_listening",
                "packets_arriving",
            ]
            .map(|name| unknown(name, "no rule to check".into())),
        );
        checks.push(blocked(firewall, port, protocol, sync.observed.as_deref()));
        return checks;
    };
    let observed = sync.observed.as_deref();
    let mut checks = vec![
        pass(
            "rule_exists",
            format!(
                "rule {} ({:?}) accepts {target} from {}",
                rule.spec.id,
                rule.spec.description.as_str(),
                if rule.spec.sources.is_anywhere() {
                    "anywhere".to_owned()
                } else {
                    sources_to_pb(&rule.spec.sources).join(", ")
                }
            ),
        ),
        enabled(rule),
        applied(rule, sync),
        in_kernel(rule, observed, now),
        listening(port, protocol, observed, now),
        packets(rule, observed),
    ];
    checks.push(blocked(firewall, port, protocol, observed));
    checks
}

/// Whether connections to the port arrive and are dropped, and why: the
/// kernel's record of the last hour, from the enforcer's last report.
fn blocked(
    firewall: &Firewall,
    port: Port,
    protocol: Protocol,
    observed: Option<&Observed>,
) -> pb::Check {
    const NAME: &str = "blocked_traffic";
    let Some(observed) = observed.filter(|o| o.blocked.is_some()) else {
        return unknown(
            NAME,
            "the enforcer has not reported what its firewall dropped".into(),
        );
    };
    let target = format!("{port}/{protocol}");
    let Some(record) = observed.blocked_on(protocol, port) else {
        return pass(
            NAME,
            format!("no connection to {target} was dropped in the last hour"),
        );
    };
    let attempts = attempts(record);
    let arrive = format!("connections to {target} arrive and are dropped");
    match record.cause(firewall) {
        Cause::NoRule => fail(
            NAME,
            format!("{arrive}: there is no rule ({attempts})"),
            format!("Open the port: add a rule for {target} (AddRule; \"Open port\" under Recently blocked)."),
        ),
        Cause::RuleOff(_) => fail(
            NAME,
            format!("{arrive}: the rule is off ({attempts})"),
            "Turn the rule on (UpdateRule with enabled true; the toggle goes green).".into(),
        ),
        Cause::NotAllowed(rule) => {
            let outside: Vec<_> = record
                .top_sources
                .iter()
                .filter(|s| !allows(rule, s.address))
                .collect();
            let more = match outside.len() {
                0 | 1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            let (address, network, from_it) = outside.first().map_or_else(
                || (String::new(), String::new(), 0),
                |s| (s.address.to_string(), Cidr::host(s.address).to_string(), s.attempts),
            );
            fail(
                NAME,
                format!(
                    "{arrive}: the source {address}{more} is not in the rule's allowlist ({} from it; {attempts})",
                    plural(from_it, "attempt")
                ),
                format!(
                    "Allow this source: add {network} to the rule's sources (UpdateRule; \"Allow this source\" under Recently blocked), or connect from an allowed network."
                ),
            )
        }
        Cause::AcceptedNow(_) => pass(
            NAME,
            format!("dropped before the rule accepted them: {attempts}"),
        ),
    }
}

/// "4 attempts from 2 sources, the last at 2026-12-06T11:00:00Z"
fn attempts(record: &BlockedTraffic) -> String {
    let mut text = format!(
        "{} from {}",
        plural(record.attempts, "attempt"),
        plural(u64::from(record.distinct_sources), "source")
    );
    if let Some(last) = record.last {
        text.push_str(&format!(
            ", the last at {}",
            prost_types::Timestamp::from(last)
        ));
    }
    text
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn enabled(rule: &Rule) -> pb::Check {
    if rule.spec.enabled {
        pass("rule_enabled", "enabled (the toggle is green)".into())
    } else {
        fail(
            "rule_enabled",
            "disabled (the toggle is gray: blocking)".into(),
            "Confirm the firewall rule is enabled (toggle should be green): UpdateRule with enabled true."
                .into(),
        )
    }
}

fn applied(rule: &Rule, sync: &Snapshot) -> pb::Check {
    if sync.applied_revision >= rule.revision {
        let mut detail = format!(
            "the enforcer applied revision {} (the rule's last change is revision {})",
            sync.applied_revision, rule.revision
        );
        if let Some(at) = sync.last_ack_time {
            detail.push_str(&format!(
                "; last acknowledgement at {}",
                prost_types::Timestamp::from(at)
            ));
        }
        if let Some(latency) = sync.last_latency {
            detail.push_str(&format!(", {} ms after its commit", latency.as_millis()));
        }
        if !sync.is_connected() {
            detail.push_str("; no enforcer is connected now");
        }
        return pass("rule_applied", detail);
    }
    if let Some((revision, error)) = sync.failed.as_ref().filter(|(r, _)| *r >= rule.revision) {
        return fail(
            "rule_applied",
            format!("the enforcer failed to apply revision {revision}: {error}"),
            "Fix what nftables refused (its message above); the enforcer retries and reports each attempt."
                .into(),
        );
    }
    if !sync.is_connected() {
        return fail(
            "rule_applied",
            format!(
                "no enforcer is connected; the last one applied revision {}, the rule changed at revision {}",
                sync.applied_revision, rule.revision
            ),
            "Check that the instance's enforcer (cassette-enforcer) is running and reaches the rules service."
                .into(),
        );
    }
    fail(
        "rule_applied",
        format!(
            "pending: the enforcer applied revision {}, the rule changed at revision {}",
            sync.applied_revision, rule.revision
        ),
        "Wait 10 seconds for the rule to propagate (WaitForSync waits exactly as long as needed)."
            .into(),
    )
}

/// The rule's (wire protocol, port): how the enforcer's report is keyed.
fn wire_key(rule: &Rule) -> (i32, u32) {
    (
        i32::from(protocol_to_pb(rule.spec.protocol)),
        u32::from(rule.spec.ports.first().get()),
    )
}

/// How old a report is, for the details.
fn age(observed: &Observed, now: SystemTime) -> String {
    let age = now
        .duration_since(observed.received)
        .unwrap_or(Duration::ZERO);
    format!("reported {} ms ago", age.as_millis())
}

fn in_kernel(rule: &Rule, observed: Option<&Observed>, now: SystemTime) -> pb::Check {
    let Some(observed) = observed.filter(|o| o.counted) else {
        return unknown(
            "rule_in_kernel",
            "the enforcer has not reported what its kernel holds (its backend counts nothing)"
                .into(),
        );
    };
    let held = observed.by_rule.contains_key(&wire_key(rule));
    match (rule.spec.enabled, held) {
        (true, true) => pass(
            "rule_in_kernel",
            format!(
                "the kernel's table accepts {}/{} ({})",
                rule.spec.ports,
                rule.spec.protocol,
                age(observed, now)
            ),
        ),
        (true, false) => fail(
            "rule_in_kernel",
            format!(
                "the kernel's table has no element for {}/{} ({})",
                rule.spec.ports,
                rule.spec.protocol,
                age(observed, now)
            ),
            "Wait 10 seconds for the rule to propagate; if it stays missing, read the enforcer's log (it repairs drift every refresh interval)."
                .into(),
        ),
        (false, _) => unknown(
            "rule_in_kernel",
            "the rule is disabled, so the kernel blocks the port".into(),
        ),
    }
}

/// Whether something listens on the port asked about (one port of a range).
fn listening(
    port: Port,
    protocol: Protocol,
    observed: Option<&Observed>,
    now: SystemTime,
) -> pb::Check {
    let Some((observed, sockets)) = observed.and_then(|o| o.listening.as_ref().map(|l| (o, l)))
    else {
        return unknown(
            "service_listening",
            "the enforcer has not reported the instance's listening sockets".into(),
        );
    };
    match sockets.get(&(i32::from(protocol_to_pb(protocol)), u32::from(port.get()))) {
        Some(addresses) if !addresses.is_empty() => pass(
            "service_listening",
            format!(
                "listening on {} port {} ({})",
                addresses.join(", "),
                port,
                age(observed, now)
            ),
        ),
        _ => fail(
            "service_listening",
            format!(
                "nothing listens on {}/{} inside the instance ({})",
                port,
                protocol,
                age(observed, now)
            ),
            format!(
                "Verify the service is actually running (sudo systemctl status servicename) and \
                 check it's listening on the right port (sudo netstat -tlnp | grep {}).",
                port
            ),
        ),
    }
}

fn packets(rule: &Rule, observed: Option<&Observed>) -> pb::Check {
    let Some(observed) = observed.filter(|o| o.counted) else {
        return unknown(
            "packets_arriving",
            "the enforcer has not reported hit counts".into(),
        );
    };
    let (protocol, port) = wire_key(rule);
    match observed.hits_of(protocol, port, rule.spec.enabled) {
        (0, _) => fail(
            "packets_arriving",
            "no packet has reached the rule since it was applied".into(),
            format!(
                "Check that the client connects to this instance's address on port {} ({}), and \
                 that nothing on the way blocks it.",
                rule.spec.ports, rule.spec.protocol
            ),
        ),
        (hits, last) => pass(
            "packets_arriving",
            match last {
                Some(last) => format!(
                    "{hits} packets since the rule was applied, the last at {}",
                    prost_types::Timestamp::from(last)
                ),
                None => format!("{hits} packets since the rule was applied"),
            },
        ),
    }
}

fn check(name: &str, result: pb::CheckResult, detail: String, next_step: String) -> pb::Check {
    pb::Check {
        name: name.to_owned(),
        result: result.into(),
        detail,
        next_step,
    }
}

fn pass(name: &str, detail: String) -> pb::Check {
    check(name, pb::CheckResult::Pass, detail, String::new())
}

fn fail(name: &str, detail: String, next_step: String) -> pb::Check {
    check(name, pb::CheckResult::Fail, detail, next_step)
}

fn unknown(name: &str, detail: String) -> pb::Check {
    check(name, pb::CheckResult::Unknown, detail, String::new())
}
