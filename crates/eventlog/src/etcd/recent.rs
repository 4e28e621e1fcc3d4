//! The records this replica appended or read at the head of the log last,
//! by instance: a sync stream woken for a change reads the change's records
//! here instead of in two more etcd round trips (the instance's index, then
//! its records) for every change.
//!
//! Only a whole range is answered from here, every revision of it held;
//! anything else is read from etcd. What is held is what etcd held when this
//! replica wrote or read it: verification walks always read etcd itself, and
//! the log's reads stay bounded by what a verification vouched for.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use cassette_model::InstanceId;

use crate::Record;

/// Records held (the oldest go first): a few seconds of changes at
/// thousands a second...
const CAPACITY: usize = 8192;
/// ...and at most this many bytes of them as stored (a record of a whole
/// firewall's rules is large; held, it takes a few times that).
const CAPACITY_BYTES: usize = 4 << 20;

#[derive(Default)]
pub(super) struct Recent {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// revision -> (when it was held, the record).
    by_instance: HashMap<InstanceId, BTreeMap<u64, (u64, Record)>>,
    /// (instance, revision, when, bytes as stored) in the order they came.
    order: VecDeque<(InstanceId, u64, u64, usize)>,
    /// Counts the records held, to tell an entry from a later one.
    held: u64,
    /// The bytes of the records in `order`.
    bytes: usize,
}

impl Recent {
    /// Holds `records`, each with its size as stored (their signatures are
    /// not kept: reads of an instance do not return them).
    pub(super) fn remember(&self, records: impl IntoIterator<Item = (Record, usize)>) {
        let mut inner = self.lock();
        for (mut record, size) in records {
            record.signed = None;
            inner.held += 1;
            let when = inner.held;
            let event = &record.event;
            let key = (event.instance_id.clone(), event.revision, when, size);
            inner.bytes += size;
            inner
                .by_instance
                .entry(event.instance_id.clone())
                .or_default()
                .insert(event.revision, (when, record));
            inner.order.push_back(key);
        }
        while inner.order.len() > CAPACITY || inner.bytes > CAPACITY_BYTES {
            let Some((instance, revision, when, size)) = inner.order.pop_front() else {
                break;
            };
            inner.bytes -= size;
            let Some(held) = inner.by_instance.get_mut(&instance) else {
                continue;
            };
            // Held again since (the same record read back): that entry evicts it.
            if held.get(&revision).is_some_and(|(w, _)| *w == when) {
                held.remove(&revision);
            }
            if held.is_empty() {
                inner.by_instance.remove(&instance);
            }
        }
    }

    /// The instance's records with `after < revision <= until`, if every
    /// one of them is held.
    pub(super) fn range(
        &self,
        instance: &InstanceId,
        after: u64,
        until: u64,
    ) -> Option<Vec<Record>> {
        let wanted = until.checked_sub(after)?;
        let inner = self.lock();
        let held = inner.by_instance.get(instance)?;
        let records: Vec<Record> = held
            .range(after.checked_add(1)?..=until)
            .map(|(_, (_, record))| record.clone())
            .collect();
        (records.len() as u64 == wanted).then_some(records)
    }

    /// Forgets everything (the log was cut back).
    pub(super) fn clear(&self) {
        *self.lock() = Inner::default();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_events::{disabled, instance};

    fn record(name: &str, revision: u64, sequence: u64) -> (Record, usize) {
        let record = Record {
            event: disabled(sequence, name, revision),
            prev_hash: vec![],
            hash: [sequence as u8; 32],
            signed: None,
            encoding: crate::RecordEncoding::Compact,
        };
        (record, 100)
    }

    #[test]
    fn only_a_range_held_whole_is_answered() {
        let recent = Recent::default();
        recent.remember([record("a", 3, 10), record("b", 1, 11), record("a", 4, 12)]);
        let got = recent.range(&instance("a"), 2, 4).unwrap();
        assert_eq!(
            got.iter().map(|r| r.event.revision).collect::<Vec<_>>(),
            [3, 4]
        );
        let a = instance("a");
        // Revision 2 was never held; nothing past 4 is known; the open end.
        assert!(recent.range(&a, 1, 4).is_none());
        assert!(recent.range(&a, 3, 5).is_none());
        assert!(recent.range(&a, 3, u64::MAX).is_none());
        assert!(recent.range(&instance("c"), 0, 1).is_none());
        recent.clear();
        assert!(recent.range(&a, 2, 4).is_none());
    }

    #[test]
    fn the_oldest_go_first_and_a_record_held_again_stays() {
        let recent = Recent::default();
        let a = instance("a");
        recent.remember([record("a", 1, 1)]);
        recent.remember((2..=CAPACITY as u64).map(|s| record("b", s, s)));
        // Read back just before it would go: held again, it stays.
        recent.remember([record("a", 1, 1)]);
        recent.remember([record("b", CAPACITY as u64 + 1, CAPACITY as u64 + 1)]);
        assert!(recent.range(&a, 0, 1).is_some());
        let b = instance("b");
        assert!(recent.range(&b, 1, 2).is_none(), "the oldest of b went");
        assert!(recent.range(&b, 2, CAPACITY as u64 + 1).is_some());
        assert!(recent.lock().order.len() <= CAPACITY);
    }

    #[test]
    fn large_records_are_held_within_the_byte_budget() {
        let recent = Recent::default();
        let big = |revision: u64| {
            let (record, _) = record("a", revision, revision);
            (record, CAPACITY_BYTES / 4)
        };
        recent.remember((1..=6).map(big));
        let inner = recent.lock();
        assert!(inner.bytes <= CAPACITY_BYTES);
        let held: Vec<u64> = inner.by_instance[&instance("a")].keys().copied().collect();
        assert_eq!(held, [3, 4, 5, 6]);
    }
}
