//! What the enforcer tells the rules service it sees, besides acks: each
//! table element's packet counter with when it last grew, what the table
//! dropped (per protocol and port, with its top sources), and the sockets
//! listening in the instance. Sent over the Sync stream every report
//! interval and when asked; never written to the event log.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;
use std::time::SystemTime;

use cassette_model::{Cidr, PortRange, Protocol};
use cassette_proto::{pb, protocol_to_pb};

use crate::{Counters, Dropped, Sockets};

/// The service reads at most this many listening sockets from a report.
const MAX_REPORTED_SOCKETS: usize = 65_536;

/// A report lists at most this many blocked ports, the most recent.
pub const MAX_REPORTED_BLOCKED: usize = 256;

/// And at most this many sources of each.
pub const TOP_SOURCES: usize = 5;

/// An element of the table: protocol, ports, and allowlist network (if any).
type Element = (Protocol, PortRange, Option<Cidr>);

/// Turns counter readings into reports, remembering each element's count
/// so that it can say when the count last grew.
#[derive(Debug, Default)]
pub struct Reporter {
    /// Each element's packets at the last report, and when its count last
    /// grew (`None` before this process's first report).
    seen: Option<HashMap<Element, (u64, Option<SystemTime>)>>,
    /// Each blocked port's first attempt as far as this process knows
    /// (`None`: the record predates it) and its attempts at the last read.
    first_blocked: HashMap<(Protocol, u16), (Option<SystemTime>, u64)>,
    /// When the dropped attempts were last read.
    last_read: Option<SystemTime>,
    /// Each element's count once a minute, as far back as an hour (and the
    /// newest sample before that): what it accepted in the last hour.
    history: HashMap<Element, VecDeque<(SystemTime, u64)>>,
}

/// How often the history keeps a count, and how far back it looks.
const SAMPLE_EVERY: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

impl Reporter {
    /// Whether a first reading has been taken (counts grown after it have a time).
    pub fn has_baseline(&self) -> bool {
        self.seen.is_some()
    }

    /// Takes a reading without reporting it: what later counts grow from.
    pub fn baseline(&mut self, counters: Option<Counters>, now: SystemTime) {
        self.report(counters, None, now);
    }

    /// The report for what was read at `now`: `counters` (`None`: the backend
    /// counts nothing) and `listening` (`None`: not readable).
    pub fn report(
        &mut self,
        counters: Option<Counters>,
        sockets: Option<Sockets>,
        now: SystemTime,
    ) -> pb::Report {
        let hits_counted = counters.is_some();
        let Counters { hits, dropped } = counters.unwrap_or_default();
        let before = self.seen.take();
        let mut seen = HashMap::new();
        let elements = hits
            .iter()
            .map(|h| {
                let key = (h.protocol, h.ports, h.source);
                let last_hit = match before.as_ref().map(|b| b.get(&key)) {
                    // The first report of this process is the baseline.
                    None => None,
                    // Put in the table since the last report, and hit already.
                    Some(None) => (h.packets > 0).then_some(now),
                    Some(Some(&(packets, _))) if h.packets > packets => Some(now),
                    Some(Some(&(packets, last))) if h.packets == packets => last,
                    // The counter restarted (the element was put back).
                    Some(Some(_)) => (h.packets > 0).then_some(now),
                };
                seen.insert(key, (h.packets, last_hit));
                // Put in the table since the last reading: all it counted is new.
                let added = before.as_ref().is_some_and(|b| !b.contains_key(&key));
                let packets_last_hour = self.last_hour(key, h.packets, added, now);
                pb::ElementHits {
                    protocol: protocol_to_pb(h.protocol).into(),
                    port: u32::from(h.ports.first().get()),
                    source: h.source.map(|s| s.to_string()).unwrap_or_default(),
                    packets: h.packets,
                    last_hit_time: last_hit.map(Into::into),
                    last_port: if h.ports.is_single() {
                        0
                    } else {
                        u32::from(h.ports.last().get())
                    },
                    packets_last_hour,
                }
            })
            .collect();
        self.history.retain(|key, _| seen.contains_key(key));
        self.seen = Some(seen);
        let blocked_counted = dropped.is_some();
        let blocked = dropped
            .map(|dropped| self.blocked(&dropped, now))
            .unwrap_or_default();
        pb::Report {
            hits: elements,
            observe_time: Some(now.into()),
            connections: sockets.as_ref().map(|sockets| pb::PortConnections {
                ports: sockets
                    .established
                    .iter()
                    .take(MAX_REPORTED_SOCKETS)
                    .map(|&(port, established)| pb::PortConnection {
                        protocol: protocol_to_pb(Protocol::Tcp).into(),
                        port: u32::from(port),
                        established,
                    })
                    .collect(),
            }),
            listening: sockets.map(|sockets| pb::ListeningSockets {
                sockets: sockets
                    .listening
                    .iter()
                    .take(MAX_REPORTED_SOCKETS)
                    .map(|s| pb::ListeningSocket {
                        protocol: protocol_to_pb(s.protocol).into(),
                        port: u32::from(s.port),
                        address: s.address.to_string(),
                    })
                    .collect(),
            }),
            hits_counted,
            blocked,
            blocked_counted,
        }
    }

    /// What `element` accepted in the last hour (or since this process first
    /// counted it, if that is less), keeping a count a minute to tell.
    fn last_hour(&mut self, element: Element, packets: u64, added: bool, now: SystemTime) -> u64 {
        let samples = self.history.entry(element).or_default();
        if added && samples.is_empty() {
            samples.push_back((now, 0));
        }
        // A counter that went down was put back in the table: start over.
        if samples.back().is_some_and(|&(_, count)| count > packets) {
            samples.clear();
        }
        let due = samples
            .back()
            .is_none_or(|&(at, _)| now.duration_since(at).unwrap_or_default() >= SAMPLE_EVERY);
        if due {
            samples.push_back((now, packets));
        }
        // Keep the newest sample at least an hour old, and those after it.
        let old = |at: SystemTime| now.duration_since(at).unwrap_or_default() >= HOUR;
        while samples.len() > 1 && samples.get(1).is_some_and(|&(at, _)| old(at)) {
            samples.pop_front();
        }
        packets.saturating_sub(samples.front().map_or(packets, |&(_, count)| count))
    }

    /// The kernel's records of dropped attempts, per protocol and port: the
    /// port's own record (or its sources' together, if the port's was
    /// forgotten), its distinct and top sources, most recent first.
    fn blocked(&mut self, dropped: &[Dropped], now: SystemTime) -> Vec<pb::BlockedTraffic> {
        #[derive(Default)]
        struct Port {
            own: Option<(u64, SystemTime)>,
            sources: Vec<(IpAddr, u64, SystemTime)>,
        }
        let mut ports: HashMap<(Protocol, u16), Port> = HashMap::new();
        for record in dropped {
            let port = ports.entry((record.protocol, record.port)).or_default();
            match record.source {
                None => port.own = Some((record.attempts, record.last)),
                Some(source) => port.sources.push((source, record.attempts, record.last)),
            }
        }
        let previous_read = self.last_read.replace(now);
        let mut first_blocked = HashMap::with_capacity(ports.len());
        let mut blocked: Vec<(SystemTime, pb::BlockedTraffic)> = ports
            .into_iter()
            .map(|(key, mut port)| {
                let (attempts, last) = port.own.unwrap_or_else(|| {
                    port.sources
                        .iter()
                        .fold((0, SystemTime::UNIX_EPOCH), |(sum, last), s| {
                            (sum.saturating_add(s.1), last.max(s.2))
                        })
                });
                let first = match self.first_blocked.get(&key) {
                    // The same record, grown or not.
                    Some(&(first, before)) if attempts >= before => first,
                    // New (or forgotten and begun again) since the last read.
                    _ if attempts == 1 => Some(last),
                    _ => previous_read.map(|read| read.min(last)),
                };
                first_blocked.insert(key, (first, attempts));
                port.sources
                    .sort_unstable_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)));
                let distinct_sources = u32::try_from(port.sources.len()).unwrap_or(u32::MAX);
                let traffic = pb::BlockedTraffic {
                    protocol: protocol_to_pb(key.0).into(),
                    port: u32::from(key.1),
                    attempts,
                    distinct_sources,
                    top_sources: port
                        .sources
                        .iter()
                        .take(TOP_SOURCES)
                        .map(|&(address, attempts, last)| pb::BlockedSource {
                            address: address.to_string(),
                            attempts,
                            last_time: Some(last.into()),
                            // The service says, by the rules.
                            allowed: false,
                        })
                        .collect(),
                    last_time: Some(last.into()),
                    first_time: first.map(Into::into),
                    ..Default::default()
                };
                (last, traffic)
            })
            .collect();
        self.first_blocked = first_blocked;
        blocked.sort_unstable_by(|a, b| {
            b.0.cmp(&a.0)
                .then(a.1.port.cmp(&b.1.port))
                .then(a.1.protocol.cmp(&b.1.protocol))
        });
        blocked.truncate(MAX_REPORTED_BLOCKED);
        blocked.into_iter().map(|(_, traffic)| traffic).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Hits;

    fn counted(hits: Vec<Hits>) -> Option<Counters> {
        Some(Counters {
            hits,
            dropped: None,
        })
    }

    fn hits(port: u16, packets: u64) -> Hits {
        Hits {
            protocol: Protocol::Tcp,
            ports: PortRange::single(cassette_model::Port::new(u32::from(port)).unwrap()),
            source: None,
            packets,
        }
    }

    fn last_hit(report: &pb::Report, port: u32) -> Option<prost_types::Timestamp> {
        report
            .hits
            .iter()
            .find(|h| h.port == port)
            .and_then(|h| h.last_hit_time)
    }

    #[test]
    fn the_last_hit_is_when_a_count_was_first_seen_grown() {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let mut reporter = Reporter::default();
        let first = reporter.report(counted(vec![hits(22, 4)]), None, t(10));
        assert_eq!(last_hit(&first, 22), None, "the first report is a baseline");
        assert!(first.hits_counted);
        assert!(first.listening.is_none());

        let second = reporter.report(counted(vec![hits(22, 6), hits(80, 1)]), None, t(20));
        assert_eq!(last_hit(&second, 22), Some(t(20).into()), "grew");
        assert_eq!(last_hit(&second, 80), Some(t(20).into()), "new and hit");

        let third = reporter.report(counted(vec![hits(22, 6), hits(80, 0)]), None, t(30));
        assert_eq!(
            last_hit(&third, 22),
            Some(t(20).into()),
            "unchanged keeps its time"
        );
        assert_eq!(
            last_hit(&third, 80),
            None,
            "put back: counting again from 0"
        );

        let mut fresh = Reporter::default();
        assert!(!fresh.has_baseline());
        fresh.baseline(counted(vec![hits(22, 4)]), t(1));
        assert!(fresh.has_baseline());
        let after_baseline = fresh.report(counted(vec![hits(22, 4), hits(5432, 5)]), None, t(2));
        assert_eq!(
            last_hit(&after_baseline, 5432),
            Some(t(2).into()),
            "added after the baseline, hit"
        );
        assert_eq!(
            last_hit(&after_baseline, 22),
            None,
            "not grown since the baseline"
        );

        let uncounted = reporter.report(None, Some(Sockets::default()), t(40));
        assert!(!uncounted.hits_counted);
        assert!(uncounted.hits.is_empty());
        assert_eq!(uncounted.listening.map(|l| l.sockets.len()), Some(0));
    }

    fn dropped(port: u16, source: Option<&str>, attempts: u64, last: u64) -> Dropped {
        Dropped {
            protocol: Protocol::Tcp,
            port,
            source: source.map(|s| s.parse().unwrap()),
            attempts,
            last: SystemTime::UNIX_EPOCH + Duration::from_secs(last),
        }
    }

    #[test]
    fn blocked_ports_are_summed_with_their_top_sources_most_recent_first() {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let reading = |dropped: Vec<Dropped>| {
            Some(Counters {
                hits: Vec::new(),
                dropped: Some(dropped),
            })
        };
        let mut reporter = Reporter::default();
        let mut records = vec![dropped(3000, None, 9, 50), dropped(9000, None, 1, 40)];
        for (i, attempts) in [1, 2, 1, 3, 1, 1, 1].into_iter().enumerate() {
            records.push(dropped(
                3000,
                Some(&format!("198.51.100.{i}")),
                attempts,
                40 + i as u64,
            ));
        }
        // A port whose own record was forgotten: its sources stand for it.
        records.push(dropped(6000, Some("2001:db8::7"), 4, 45));
        records.push(dropped(6000, Some("192.0.2.1"), 2, 30));
        let first = reporter.report(reading(records.clone()), None, t(60));
        assert!(first.blocked_counted);
        let ports: Vec<u32> = first.blocked.iter().map(|b| b.port).collect();
        assert_eq!(ports, [3000, 6000, 9000], "most recent first");
        let scanned = &first.blocked[0];
        assert_eq!((scanned.attempts, scanned.distinct_sources), (9, 7));
        let top: Vec<(&str, u64)> = scanned
            .top_sources
            .iter()
            .map(|s| (s.address.as_str(), s.attempts))
            .collect();
        assert_eq!(
            top,
            [
                ("198.51.100.3", 3),
                ("198.51.100.1", 2),
                ("198.51.100.6", 1),
                ("198.51.100.5", 1),
                ("198.51.100.4", 1)
            ]
        );
        assert_eq!(scanned.last_time, Some(t(50).into()));
        assert_eq!(scanned.first_time, None, "found at start: unknown");
        let forgotten = &first.blocked[1];
        assert_eq!((forgotten.attempts, forgotten.distinct_sources), (6, 2));
        assert_eq!(forgotten.last_time, Some(t(45).into()));
        assert_eq!(
            first.blocked[2].first_time,
            Some(t(40).into()),
            "one attempt: it was the first"
        );

        // Later: 3000 grew, 7000 began with two attempts, 9000 was forgotten.
        let second = reporter.report(
            reading(vec![
                dropped(3000, None, 12, 70),
                dropped(7000, None, 2, 65),
            ]),
            None,
            t(80),
        );
        let ports: Vec<u32> = second.blocked.iter().map(|b| b.port).collect();
        assert_eq!(ports, [3000, 7000]);
        assert_eq!(second.blocked[0].first_time, None, "still the same record");
        assert_eq!(
            second.blocked[1].first_time,
            Some(t(60).into()),
            "after the previous read"
        );

        let many: Vec<Dropped> = (1..=1000)
            .map(|p| dropped(p, None, 1, u64::from(p)))
            .collect();
        let bounded = reporter.report(reading(many), None, t(2000));
        assert_eq!(bounded.blocked.len(), MAX_REPORTED_BLOCKED);
        assert_eq!(bounded.blocked[0].port, 1000);

        let uncounted = reporter.report(counted(Vec::new()), None, t(2001));
        assert!(!uncounted.blocked_counted);
        assert!(uncounted.blocked.is_empty());
    }

    #[test]
    fn packets_in_the_last_hour_are_told_from_a_count_a_minute() {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let mut reporter = Reporter::default();
        let last_hour = |report: &pb::Report| report.hits[0].packets_last_hour;
        // Counted every 10 s; 10 packets a minute.
        let mut packets = 100;
        let first = reporter.report(counted(vec![hits(22, packets)]), None, t(0));
        assert_eq!(last_hour(&first), 0, "nothing counted yet");
        let mut report = first;
        for s in (10..=5400).step_by(10) {
            packets += 10 / 6 + u64::from(s % 60 == 0) * 4;
            report = reporter.report(counted(vec![hits(22, packets)]), None, t(s));
            if s == 1800 {
                assert_eq!(last_hour(&report), packets - 100, "half an hour: all of it");
            }
        }
        // After 90 minutes: about the last hour's 600 (to the minute).
        let hour = last_hour(&report);
        assert!((590..=610).contains(&hour), "{hour}");
        // The element put back (its counter restarted): counted afresh.
        let restarted = reporter.report(counted(vec![hits(22, 3)]), None, t(5410));
        assert_eq!(last_hour(&restarted), 0);
        // An element added since the last reading: everything it counted.
        let added = reporter.report(counted(vec![hits(22, 3), hits(80, 7)]), None, t(5415));
        assert_eq!(added.hits[1].packets_last_hour, 7);
        let sockets = Sockets {
            listening: Vec::new(),
            established: vec![(8080, 2)],
        };
        let with = reporter.report(None, Some(sockets), t(5420));
        let ports = with.connections.unwrap().ports;
        assert_eq!((ports[0].port, ports[0].established), (8080, 2));
    }
}
