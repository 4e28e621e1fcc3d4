//! What an instance's firewall dropped lately, as its enforcer reports it
//! (the kernel's own record of the last hour, never in the event log), and
//! why: the one reading of a blocked port against the rules that Diagnose,
//! the page and the CLI all show.

use std::net::IpAddr;
use std::time::SystemTime;

use cassette_model::{Cidr, Firewall, Port, Protocol, Rule};

/// Attempts to reach one port that the instance's firewall dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedTraffic {
    pub protocol: Protocol,
    pub port: Port,
    pub attempts: u64,
    pub distinct_sources: u32,
    /// The sources with the most attempts, most first.
    pub top_sources: Vec<BlockedSource>,
    pub last: Option<SystemTime>,
    pub first: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedSource {
    pub address: IpAddr,
    pub attempts: u64,
    pub last: Option<SystemTime>,
}

/// Why connections to a port were dropped, by the rules as they are now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause<'a> {
    /// No rule for the port and protocol.
    NoRule,
    /// Its rule is turned off.
    RuleOff(&'a Rule),
    /// Its rule has an allowlist that leaves out some of the top sources.
    NotAllowed(&'a Rule),
    /// Its rule accepts them now (they were dropped before it did).
    AcceptedNow(&'a Rule),
}

impl BlockedTraffic {
    /// Why these attempts were dropped, judged by `firewall` as it is now.
    pub fn cause<'a>(&self, firewall: &'a Firewall) -> Cause<'a> {
        let Some(rule) = firewall
            .rule_for(self.port, self.protocol)
            .filter(|_| firewall.is_live())
        else {
            return Cause::NoRule;
        };
        if !rule.spec.enabled {
            Cause::RuleOff(rule)
        } else if self.top_sources.iter().any(|s| !allows(rule, s.address)) {
            Cause::NotAllowed(rule)
        } else {
            Cause::AcceptedNow(rule)
        }
    }
}

/// Whether `rule`'s allowlist (if it has one) takes `address`.
pub fn allows(rule: &Rule, address: IpAddr) -> bool {
    let networks = rule.spec.sources.networks();
    networks.is_empty() || networks.iter().any(|n| n.contains(&Cidr::host(address)))
}
