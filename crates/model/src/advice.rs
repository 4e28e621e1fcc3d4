//! The product page's advice, as warnings on a change: advice, never a
//! refusal. "Database ports should usually stay closed. Access databases from
//! your app on localhost, not over the internet. If you must expose a
//! database, use strong passwords and allowlists."

use crate::command::Command;
use crate::firewall::{Firewall, Rule};
use crate::values::{Port, PortRange, Protocol, RuleId};

/// Ports of databases (and caches) that should not face the internet.
const DATABASE_PORTS: &[(u16, Protocol, &str)] = &[
    (1433, Protocol::Tcp, "Microsoft SQL Server"),
    (1521, Protocol::Tcp, "Oracle Database"),
    (3306, Protocol::Tcp, "MySQL"),
    (5432, Protocol::Tcp, "PostgreSQL"),
    (5984, Protocol::Tcp, "CouchDB"),
    (6379, Protocol::Tcp, "Redis"),
    (9042, Protocol::Tcp, "Cassandra"),
    (9200, Protocol::Tcp, "Elasticsearch"),
    (11211, Protocol::Tcp, "Memcached"),
    (11211, Protocol::Udp, "Memcached"),
    (27017, Protocol::Tcp, "MongoDB"),
];

/// One piece of advice about a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Stable, for programs: `DATABASE_PORT_OPEN`.
    pub code: &'static str,
    /// The rule it is about.
    pub rule_id: RuleId,
    /// For people, in the product's words.
    pub message: String,
}

impl Warning {
    pub const DATABASE_PORT_OPEN: &'static str = "DATABASE_PORT_OPEN";
}

/// The database a port+protocol belongs to, if it is a database's.
pub fn database_on(port: u16, protocol: Protocol) -> Option<&'static str> {
    DATABASE_PORTS
        .iter()
        .find(|(p, proto, _)| *p == port && *proto == protocol)
        .map(|(_, _, name)| *name)
}

/// A database port inside `ports`, with its database, if there is one.
fn database_in(ports: PortRange, protocol: Protocol) -> Option<(u16, &'static str)> {
    DATABASE_PORTS
        .iter()
        .find(|(p, proto, _)| {
            *proto == protocol && Port::new(u32::from(*p)).is_ok_and(|p| ports.contains(p))
        })
        .map(|(p, _, name)| (*p, *name))
}

/// The warnings for `command` given the firewall after it: a change that
/// opens a database port to anywhere (adding it, turning it on, widening its
/// allowlist to anywhere). Describing an open one says nothing again. A
/// whole firewall applied is advised on every rule it leaves open so.
pub fn warnings(command: &Command, after: &Firewall) -> Vec<Warning> {
    if let Command::ApplyFirewall { rules, .. } = command {
        return rules
            .iter()
            .filter_map(|want| after.rule_for(want.ports.first(), want.protocol))
            .filter_map(database_exposure)
            .collect();
    }
    let rule = match command {
        Command::AddRule {
            ports, protocol, ..
        } => after.rule_for(ports.first(), *protocol),
        Command::UpdateRule {
            rule_id,
            enabled,
            sources,
            ..
        } if *enabled == Some(true) || sources.as_ref().is_some_and(|s| s.is_anywhere()) => {
            after.rule(rule_id)
        }
        _ => None,
    };
    rule.and_then(database_exposure).into_iter().collect()
}

fn database_exposure(rule: &Rule) -> Option<Warning> {
    if !rule.spec.enabled || !rule.spec.sources.is_anywhere() {
        return None;
    }
    let (port, database) = database_in(rule.spec.ports, rule.spec.protocol)?;
    let what = if rule.spec.ports.is_single() {
        format!("{port}/{} ({database})", rule.spec.protocol)
    } else {
        format!(
            "{}/{}, which covers {port} ({database}),",
            rule.spec.ports, rule.spec.protocol
        )
    };
    Some(Warning {
        code: Warning::DATABASE_PORT_OPEN,
        rule_id: rule.spec.id.clone(),
        message: format!(
            "{what} is open to anywhere. Database ports should usually stay closed. \
             Access databases from your app on localhost, not over the internet. If you must \
             expose a database, use strong passwords and allowlists."
        ),
    })
}
