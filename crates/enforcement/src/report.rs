//! What the enforcer tells the rules service it sees, besides acks: each
//! table element's packet counter with when it last grew, and the sockets
//! listening in the instance. Sent over the Sync stream every report interval
//! and when asked; never written to the event log.

use std::collections::HashMap;
use std::time::SystemTime;

use cassette_model::{Cidr, Protocol};
use cassette_proto::{pb, protocol_to_pb};

use crate::{Hits, Listening};

/// The service reads at most this many listening sockets from a report.
const MAX_REPORTED_SOCKETS: usize = 65_536;

/// An element of the table: protocol, port, and allowlist network (if any).
type Element = (Protocol, u16, Option<Cidr>);

/// Turns counter readings into reports, remembering each element's count
/// so that it can say when the count last grew.
#[derive(Debug, Default)]
pub struct Reporter {
    /// Each element's packets at the last report, and when its count last
    /// grew (`None` before this process's first report).
    seen: Option<HashMap<Element, (u64, Option<SystemTime>)>>,
}

impl Reporter {
    /// Whether a first reading has been taken (counts grown after it have a time).
    pub fn has_baseline(&self) -> bool {
        self.seen.is_some()
    }

    /// Takes a reading without reporting it: what later counts grow from.
    pub fn baseline(&mut self, hits: Option<Vec<Hits>>, now: SystemTime) {
        self.report(hits, None, now);
    }

    /// The report for what was read at `now`: `hits` (`None`: the backend
    /// counts nothing) and `listening` (`None`: not readable).
    pub fn report(
        &mut self,
        hits: Option<Vec<Hits>>,
        listening: Option<Vec<Listening>>,
        now: SystemTime,
    ) -> pb::Report {
        let hits_counted = hits.is_some();
        let before = self.seen.take();
        let mut seen = HashMap::new();
        let elements = hits
            .unwrap_or_default()
            .iter()
            .map(|h| {
                let key = (h.protocol, h.port, h.source);
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
                pb::ElementHits {
                    protocol: protocol_to_pb(h.protocol).into(),
                    port: u32::from(h.port),
                    source: h.source.map(|s| s.to_string()).unwrap_or_default(),
                    packets: h.packets,
                    last_hit_time: last_hit.map(Into::into),
                }
            })
            .collect();
        self.seen = Some(seen);
        pb::Report {
            hits: elements,
            observe_time: Some(now.into()),
            listening: listening.map(|sockets| pb::ListeningSockets {
                sockets: sockets
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
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn hits(port: u16, packets: u64) -> Hits {
        Hits {
            protocol: Protocol::Tcp,
            port,
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
        let first = reporter.report(Some(vec![hits(22, 4)]), None, t(10));
        assert_eq!(last_hit(&first, 22), None, "the first report is a baseline");
        assert!(first.hits_counted);
        assert!(first.listening.is_none());

        let second = reporter.report(Some(vec![hits(22, 6), hits(80, 1)]), None, t(20));
        assert_eq!(last_hit(&second, 22), Some(t(20).into()), "grew");
        assert_eq!(last_hit(&second, 80), Some(t(20).into()), "new and hit");

        let third = reporter.report(Some(vec![hits(22, 6), hits(80, 0)]), None, t(30));
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
        fresh.baseline(Some(vec![hits(22, 4)]), t(1));
        assert!(fresh.has_baseline());
        let after_baseline = fresh.report(Some(vec![hits(22, 4), hits(5432, 5)]), None, t(2));
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

        let uncounted = reporter.report(None, Some(Vec::new()), t(40));
        assert!(!uncounted.hits_counted);
        assert!(uncounted.hits.is_empty());
        assert_eq!(uncounted.listening.map(|l| l.sockets.len()), Some(0));
    }
}
