//! The application's answers as protobuf: sync state on a firewall and its
//! rules, enforcer reports in and out, audit answers, and the [`ProtoWire`]
//! that encodes what replicas share. The model types stay in
//! `cassette-service`; their wire form is decided here, once.

use std::collections::HashMap;
use std::time::SystemTime;

use cassette_eventlog::{hex, SignedHead, Verification};
use cassette_model::{Firewall, Port, Rule, RuleChange};
use cassette_proto::{
    event_to_pb, firewall_to_pb, pb, protocol_from_pb, protocol_to_pb, rule_to_pb,
};
use cassette_service::blocked::{allows, BlockedSource, BlockedTraffic, Cause};
use cassette_service::peers::Wire;
use cassette_service::replay::{Diff, FirewallAt};
use cassette_service::sync::{observed_key, Observed, RuleHits, RuleStatus, Snapshot, SyncState};
use prost::Message;

/// An instance's sync state when its latest revision is `latest_revision`.
pub fn sync_status(snapshot: &Snapshot, latest_revision: u64) -> pb::SyncStatus {
    let state = match snapshot.state(latest_revision) {
        SyncState::NoEnforcer => pb::SyncState::NoEnforcer,
        SyncState::Error => pb::SyncState::Error,
        SyncState::InSync => pb::SyncState::InSync,
        SyncState::Pending => pb::SyncState::Pending,
    };
    pb::SyncStatus {
        enforcer_connected: snapshot.is_connected(),
        applied_revision: snapshot.applied_revision,
        state: state.into(),
        last_error: snapshot
            .failed
            .as_ref()
            .map(|(_, e)| e.clone())
            .unwrap_or_default(),
        last_ack_latency: snapshot.last_latency.and_then(|d| d.try_into().ok()),
        last_ack_time: snapshot.last_ack_time.map(Into::into),
        latest_revision,
        failed_revision: snapshot.failed.as_ref().map_or(0, |(r, _)| *r),
        enforcer_state_error: snapshot.state_error.clone().unwrap_or_default(),
    }
}

/// The projection's view of a firewall, with its sync state: `sync`, each
/// rule's status and, from the enforcer's last report, its hits.
pub fn present(firewall: &Firewall, snapshot: &Snapshot) -> pb::Firewall {
    let mut view = firewall_to_pb(firewall);
    for rule in &mut view.rules {
        let status = match snapshot.rule_status(rule.revision) {
            RuleStatus::Applied => pb::RuleStatus::Applied,
            RuleStatus::Failed => pb::RuleStatus::Failed,
            RuleStatus::Pending => pb::RuleStatus::Pending,
        };
        rule.status = status.into();
        if let Some(observed) = snapshot.observed.as_ref().filter(|o| o.counted) {
            let (packets, last) = observed.hits_of(rule.protocol, rule.port, rule.enabled);
            rule.hits = packets;
            rule.last_hit_time = last.map(Into::into);
        }
    }
    if let Some(blocked) = snapshot.observed.as_ref().and_then(|o| o.blocked.as_ref()) {
        view.blocked = blocked
            .iter()
            .take(MAX_BLOCKED_SHOWN)
            .map(|b| blocked_with_cause(b, firewall))
            .collect();
    }
    view.sync = Some(sync_status(snapshot, view.revision));
    view
}

/// One rule's change (ApplyFirewall), with what it would cut when it
/// closes or narrows what the rule accepted.
pub fn rule_change(change: &RuleChange<'_>, observed: Option<&Observed>) -> pb::RuleChange {
    let kind = match (change.before, change.after) {
        (None, _) => pb::RuleChangeKind::Added,
        (_, None) => pb::RuleChangeKind::Removed,
        _ => pb::RuleChangeKind::Changed,
    };
    pb::RuleChange {
        before: change.before.map(rule_to_pb),
        after: change.after.map(rule_to_pb),
        kind: kind.into(),
        impact: change
            .before
            .filter(|_| change.closes_or_narrows())
            .map(|rule| impact(rule, observed)),
    }
}

/// What the enforcer's last report says goes through `rule`: its packets in
/// the last hour, its last hit, the connections established to its ports.
fn impact(rule: &Rule, observed: Option<&Observed>) -> pb::Impact {
    let Some(observed) = observed.filter(|o| o.counted) else {
        return pb::Impact::default();
    };
    let key = observed_key(rule.spec.protocol, rule.spec.ports.first());
    let open_connections = observed.connections.as_ref().map_or(0, |connections| {
        connections
            .iter()
            .filter(|((protocol, port), _)| {
                *protocol == key.0
                    && Port::new(*port).is_ok_and(|port| rule.spec.ports.contains(port))
            })
            .fold(0u32, |sum, (_, n)| sum.saturating_add(*n))
    });
    let hits = observed.by_rule.get(&key).copied().unwrap_or_default();
    pb::Impact {
        hits_last_hour: hits.last_hour,
        last_hit_time: hits.last_hit.map(Into::into),
        open_connections,
        reported: true,
    }
}

/// A firewall lists at most this many blocked ports.
const MAX_BLOCKED_SHOWN: usize = 100;

fn blocked_to_pb(blocked: &BlockedTraffic) -> pb::BlockedTraffic {
    pb::BlockedTraffic {
        protocol: protocol_to_pb(blocked.protocol).into(),
        port: u32::from(blocked.port.get()),
        attempts: blocked.attempts,
        distinct_sources: blocked.distinct_sources,
        top_sources: blocked
            .top_sources
            .iter()
            .map(|source| pb::BlockedSource {
                address: source.address.to_string(),
                attempts: source.attempts,
                last_time: source.last.map(Into::into),
                allowed: false,
            })
            .collect(),
        last_time: blocked.last.map(Into::into),
        first_time: blocked.first.map(Into::into),
        reason: pb::BlockedReason::Unspecified.into(),
        rule_id: String::new(),
    }
}

/// A blocked port on the page: with why, by the firewall as it is now.
fn blocked_with_cause(blocked: &BlockedTraffic, firewall: &Firewall) -> pb::BlockedTraffic {
    let mut view = blocked_to_pb(blocked);
    let (reason, rule) = match blocked.cause(firewall) {
        Cause::NoRule => (pb::BlockedReason::NoRule, None),
        Cause::RuleOff(rule) => (pb::BlockedReason::RuleOff, Some(rule)),
        Cause::NotAllowed(rule) => (pb::BlockedReason::SourceNotAllowed, Some(rule)),
        Cause::AcceptedNow(rule) => (pb::BlockedReason::AcceptedNow, Some(rule)),
    };
    view.reason = reason.into();
    if let Some(rule) = rule {
        view.rule_id = rule.spec.id.to_string();
        for (source, wire) in blocked.top_sources.iter().zip(&mut view.top_sources) {
            wire.allowed = rule.spec.enabled && allows(rule, source.address);
        }
    }
    view
}

/// A reported blocked port, if its protocol, port and addresses are valid
/// (an enforcer's report is not trusted to be).
fn blocked_from_pb(blocked: &pb::BlockedTraffic) -> Option<BlockedTraffic> {
    let time = |t: Option<prost_types::Timestamp>| t.and_then(|t| SystemTime::try_from(t).ok());
    Some(BlockedTraffic {
        protocol: protocol_from_pb(blocked.protocol).ok()?,
        port: Port::new(blocked.port).ok()?,
        attempts: blocked.attempts,
        distinct_sources: blocked.distinct_sources,
        top_sources: blocked
            .top_sources
            .iter()
            .take(Observed::MAX_TOP_SOURCES)
            .filter_map(|source| {
                Some(BlockedSource {
                    address: source.address.parse().ok()?,
                    attempts: source.attempts,
                    last: time(source.last_time),
                })
            })
            .collect(),
        last: time(blocked.last_time),
        first: time(blocked.first_time),
    })
}

/// An enforcer's report, as received at `received` (this service's clock):
/// hits summed per rule (its protocol and port, all its sources together),
/// at most [`Observed::MAX_ENTRIES`] elements and sockets read.
pub fn observed(report: &pb::Report, received: SystemTime) -> Observed {
    let mut by_rule: HashMap<(i32, u32), RuleHits> = HashMap::new();
    for element in report.hits.iter().take(Observed::MAX_ENTRIES) {
        let last = element
            .last_hit_time
            .and_then(|t| SystemTime::try_from(t).ok());
        let hits = by_rule.entry((element.protocol, element.port)).or_default();
        hits.packets = hits.packets.saturating_add(element.packets);
        hits.last_hit = hits.last_hit.max(last);
        hits.last_hour = hits.last_hour.saturating_add(element.packets_last_hour);
    }
    let connections = report.connections.as_ref().map(|c| {
        c.ports
            .iter()
            .take(Observed::MAX_ENTRIES)
            .map(|p| ((p.protocol, p.port), p.established))
            .collect()
    });
    let listening = report.listening.as_ref().map(|l| {
        let mut by_port: HashMap<(i32, u32), Vec<String>> = HashMap::new();
        for socket in l.sockets.iter().take(Observed::MAX_ENTRIES) {
            by_port
                .entry((socket.protocol, socket.port))
                .or_default()
                .push(socket.address.chars().take(64).collect());
        }
        by_port
    });
    Observed {
        observed: report
            .observe_time
            .and_then(|t| SystemTime::try_from(t).ok()),
        received,
        counted: report.hits_counted,
        by_rule,
        connections,
        listening,
        applied_revision: 0,
        blocked: report.blocked_counted.then(|| {
            let mut blocked: Vec<BlockedTraffic> = report
                .blocked
                .iter()
                .take(Observed::MAX_BLOCKED)
                .filter_map(blocked_from_pb)
                .collect();
            blocked.sort_by_key(|b| std::cmp::Reverse(b.last));
            blocked
        }),
    }
}

/// What [`observed`] read, as a report again (to forward to a replica).
fn report(observed: &Observed) -> pb::Report {
    pb::Report {
        hits: observed
            .by_rule
            .iter()
            .map(|(&(protocol, port), hits)| pb::ElementHits {
                protocol,
                port,
                source: String::new(),
                packets: hits.packets,
                last_hit_time: hits.last_hit.map(Into::into),
                last_port: 0,
                packets_last_hour: hits.last_hour,
            })
            .collect(),
        observe_time: observed.observed.map(Into::into),
        listening: observed.listening.as_ref().map(|l| pb::ListeningSockets {
            sockets: l
                .iter()
                .flat_map(|(&(protocol, port), addresses)| {
                    addresses.iter().map(move |address| pb::ListeningSocket {
                        protocol,
                        port,
                        address: address.clone(),
                    })
                })
                .collect(),
        }),
        hits_counted: observed.counted,
        connections: observed.connections.as_ref().map(|c| pb::PortConnections {
            ports: c
                .iter()
                .map(|(&(protocol, port), &established)| pb::PortConnection {
                    protocol,
                    port,
                    established,
                })
                .collect(),
        }),
        blocked: observed
            .blocked
            .iter()
            .flatten()
            .map(blocked_to_pb)
            .collect(),
        blocked_counted: observed.blocked.is_some(),
    }
}

pub fn firewall_at(found: &FirewallAt) -> pb::FirewallAt {
    pb::FirewallAt {
        firewall: Some(firewall_to_pb(&found.firewall)),
        revision: found.event.revision,
        ruleset: found.ruleset(),
        commit_time: Some(found.event.commit_time.into()),
        deleted: !found.firewall.is_live(),
    }
}

pub fn diff(diff: &Diff) -> pb::FirewallDiff {
    pb::FirewallDiff {
        added: diff.added.iter().map(rule_to_pb).collect(),
        removed: diff.removed.iter().map(rule_to_pb).collect(),
        changed: diff
            .changed
            .iter()
            .map(|(before, after)| pb::RuleChange {
                before: Some(rule_to_pb(before)),
                after: Some(rule_to_pb(after)),
                kind: pb::RuleChangeKind::Changed.into(),
                impact: None,
            })
            .collect(),
        events: diff
            .events
            .iter()
            .map(|r| event_to_pb(&r.event, &r.prev_hash))
            .collect(),
        next_page_token: diff.next_after.map(|r| r.to_string()).unwrap_or_default(),
    }
}

pub fn verification(v: &Verification) -> pb::VerifyLogResponse {
    let (first_bad_sequence, reason) = v.first_bad.clone().unwrap_or_default();
    pb::VerifyLogResponse {
        ok: v.ok(),
        events_checked: v.events_checked,
        head_sequence: v.head.sequence,
        head_hash: hex(&v.head.hash),
        first_bad_sequence,
        reason,
        signed_head: v.signed.as_ref().map(SignedHead::to_pb),
    }
}

/// What replicas share beside the log, as the public messages: a replica's
/// view is the `SyncStatus` it would answer (latest revision 0), a
/// forwarded report a `Report`.
pub struct ProtoWire;

impl Wire for ProtoWire {
    fn encode_status(&self, status: &Snapshot) -> Vec<u8> {
        sync_status(status, 0).encode_to_vec()
    }

    fn decode_status(&self, bytes: &[u8]) -> Result<Snapshot, String> {
        let remote = pb::SyncStatus::decode(bytes).map_err(|e| e.to_string())?;
        Ok(Snapshot {
            remote_connected: remote.enforcer_connected,
            applied_revision: remote.applied_revision,
            failed: (remote.failed_revision > 0)
                .then(|| (remote.failed_revision, remote.last_error.clone())),
            last_latency: remote.last_ack_latency.and_then(|d| d.try_into().ok()),
            last_ack_time: remote
                .last_ack_time
                .and_then(|t| SystemTime::try_from(t).ok()),
            state_error: (!remote.enforcer_state_error.is_empty())
                .then(|| remote.enforcer_state_error.clone()),
            ..Snapshot::default()
        })
    }

    fn encode_report(&self, observed: &Observed) -> Vec<u8> {
        report(observed).encode_to_vec()
    }

    fn decode_report(&self, bytes: &[u8]) -> Result<Observed, String> {
        let report = pb::Report::decode(bytes).map_err(|e| e.to_string())?;
        Ok(observed(&report, SystemTime::now()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_replicas_view_crosses_the_wire_as_what_another_replica_shows() {
        let ack = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let local = Snapshot {
            connected: 1,
            applied_revision: 7,
            failed: Some((9, "nft: no such table".into())),
            last_latency: Some(Duration::from_millis(6)),
            last_ack_time: Some(ack),
            state_error: Some("bad magic".into()),
            ..Snapshot::default()
        };
        let remote = ProtoWire
            .decode_status(&ProtoWire.encode_status(&local))
            .unwrap();
        assert_eq!(
            remote,
            Snapshot {
                connected: 0,
                remote_connected: true,
                ..local.clone()
            }
        );
        assert!(ProtoWire.decode_status(b"\xff\xff").is_err());
    }

    #[test]
    fn a_forwarded_report_keeps_each_rules_hits_and_the_listening_sockets() {
        let looked = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let tcp = pb::Protocol::Tcp as i32;
        let report = pb::Report {
            hits: vec![
                pb::ElementHits {
                    protocol: tcp,
                    port: 22,
                    source: String::new(),
                    packets: 3,
                    last_hit_time: Some(looked.into()),
                    last_port: 0,
                    packets_last_hour: 2,
                },
                pb::ElementHits {
                    protocol: tcp,
                    port: 22,
                    source: "10.0.0.0/8".into(),
                    packets: 4,
                    last_hit_time: None,
                    last_port: 0,
                    packets_last_hour: 1,
                },
            ],
            observe_time: Some(looked.into()),
            listening: Some(pb::ListeningSockets {
                sockets: vec![pb::ListeningSocket {
                    protocol: tcp,
                    port: 22,
                    address: "0.0.0.0".into(),
                }],
            }),
            hits_counted: true,
            connections: Some(pb::PortConnections {
                ports: vec![pb::PortConnection {
                    protocol: tcp,
                    port: 22,
                    established: 3,
                }],
            }),
            blocked: vec![
                pb::BlockedTraffic {
                    protocol: tcp,
                    port: 3000,
                    attempts: 9,
                    distinct_sources: 2,
                    top_sources: vec![
                        pb::BlockedSource {
                            address: "198.51.100.7".into(),
                            attempts: 8,
                            last_time: Some(looked.into()),
                            allowed: false,
                        },
                        pb::BlockedSource {
                            address: "not an address".into(),
                            ..Default::default()
                        },
                    ],
                    last_time: Some(looked.into()),
                    ..Default::default()
                },
                pb::BlockedTraffic {
                    port: 70_000,
                    protocol: tcp,
                    ..Default::default()
                },
                pb::BlockedTraffic {
                    port: 53,
                    protocol: 9,
                    ..Default::default()
                },
            ],
            blocked_counted: true,
        };
        let here = observed(&report, looked);
        let blocked = here.blocked.as_deref().unwrap();
        assert_eq!(blocked.len(), 1, "an invalid port or protocol is left out");
        assert_eq!(
            blocked[0].top_sources,
            [BlockedSource {
                address: "198.51.100.7".parse().unwrap(),
                attempts: 8,
                last: Some(looked)
            }],
            "an invalid address is left out"
        );
        assert_eq!(here.hits_of(tcp, 22, true), (7, Some(looked)));
        assert_eq!(here.hits_of(tcp, 22, false), (0, None));
        let there = ProtoWire
            .decode_report(&ProtoWire.encode_report(&here))
            .unwrap();
        assert_eq!(there.by_rule, here.by_rule);
        assert_eq!(there.listening, here.listening);
        assert_eq!(there.blocked, here.blocked);
        assert_eq!(here.by_rule[&(tcp, 22)].last_hour, 3);
        assert_eq!(there.connections, here.connections);
        assert_eq!(
            here.connections.as_ref().and_then(|c| c.get(&(tcp, 22))),
            Some(&3)
        );
        assert_eq!((there.observed, there.counted), (Some(looked), true));
    }

    /// The service crate keys reported hits by the wire's protocol numbers
    /// without depending on protobuf: they are this crate's conversion's.
    #[test]
    fn observed_keys_are_the_wire_protocols() {
        use cassette_model::{Port, Protocol};
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let port = Port::new(5432).unwrap();
            assert_eq!(
                cassette_service::sync::observed_key(protocol, port),
                (cassette_proto::protocol_to_pb(protocol) as i32, 5432)
            );
        }
    }
}
