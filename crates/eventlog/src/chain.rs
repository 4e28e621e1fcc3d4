//! The hash chain, written once: how a batch of events becomes records that
//! continue the log, and how a walk over records checks that each continues
//! the one before. Both engines (sled, etcd) and the store's catch-up of
//! other replicas' appends call it, so a broken chain is found and named
//! the same way whoever reads it.
//!
//! A record is the public `Event` message with the previous record's hash
//! (`prev_hash`), in the log's [`RecordEncoding`]; its own hash is SHA-256
//! of its stored bytes, which are never re-encoded (a log holds records of
//! either encoding, each hashed as it is stored). When two records stop
//! linking, the walk tells whether the earlier one's content changed or
//! the later one does not link from the later one's successor, the head
//! anchor or (on etcd) the index's copy of each hash (see
//! [`Unlinked::blame`]).

use std::collections::HashMap;

use cassette_model::{Event, InstanceId};
use cassette_proto::{event_to_record, RecordEncoding};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::signing::{SignedHead, TrustedKeys, REASON};
use crate::{Hash, Head, LogError, Record, Verification, GENESIS_HASH};

/// SHA-256 of a stored record's bytes.
pub fn hash(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

/// One event encoded as the record that continues the chain.
#[derive(Debug, Clone)]
pub struct Encoded<'a> {
    pub event: &'a Event,
    /// What is stored: the event with the previous record's hash.
    pub bytes: Vec<u8>,
    /// Its hash: what the next record links to and the index records.
    pub hash: Hash,
}

impl Encoded<'_> {
    /// The index entry: the record's sequence (u64 big-endian) and hash.
    pub fn index_value(&self) -> Vec<u8> {
        index_value(self.event.sequence, &self.hash)
    }
}

/// The head anchor's value: the last sequence (u64 big-endian) and its hash.
pub fn anchor_value(head: Head) -> Vec<u8> {
    index_value(head.sequence, &head.hash)
}

/// Encodes `events` as the records (in `encoding`) that continue `head`, refusing what does
/// not continue the log: sequences from `head.sequence + 1` and, per
/// instance, revisions from its last one + 1. `last_revision` says an
/// instance's last revision in the log (asked once per instance); `None`
/// leaves that check to the engine's own write (etcd compares the index
/// inside its transaction), and only a revision 0 is refused here.
pub fn encode_batch<'a>(
    head: Head,
    events: &'a [Event],
    encoding: RecordEncoding,
    mut last_revision: impl FnMut(&InstanceId) -> Result<Option<u64>, LogError>,
) -> Result<(Vec<Encoded<'a>>, Head), LogError> {
    let mut next = head;
    let mut revisions: HashMap<&InstanceId, u64> = HashMap::new();
    let mut records = Vec::with_capacity(events.len());
    for event in events {
        if event.sequence != next.sequence + 1 {
            return Err(LogError::OutOfOrder(format!(
                "sequence {} does not follow {}",
                event.sequence, next.sequence
            )));
        }
        let last = match revisions.get(&event.instance_id) {
            Some(&last) => Some(last),
            None => last_revision(&event.instance_id)?,
        };
        match last {
            Some(last) if event.revision != last + 1 => {
                return Err(LogError::OutOfOrder(format!(
                    "instance {} revision {} does not follow {}",
                    event.instance_id, event.revision, last
                )));
            }
            None if event.revision == 0 => {
                return Err(LogError::OutOfOrder(format!(
                    "instance {} revision 0: revisions start at 1",
                    event.instance_id
                )));
            }
            _ => {}
        }
        revisions.insert(&event.instance_id, event.revision);
        let bytes = event_to_record(event, &next.hash, encoding).encode_to_vec();
        let record_hash = hash(&bytes);
        next = Head {
            sequence: event.sequence,
            hash: record_hash,
        };
        records.push(Encoded {
            event,
            bytes,
            hash: record_hash,
        });
    }
    Ok((records, next))
}

/// A walk along the chain: where it stands, and whether the next record
/// continues it.
#[derive(Debug, Clone, Copy)]
pub struct Walk {
    head: Head,
}

/// Why a record does not continue the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unlinked {
    /// The record after `after` is missing: the next one found is `found`.
    Gap { after: u64, found: u64 },
    /// Record `sequence` does not carry the hash of the record before it.
    Link { sequence: u64 },
}

impl Walk {
    /// A walk from the start of the log.
    pub fn genesis() -> Self {
        Self::from(Head {
            sequence: 0,
            hash: GENESIS_HASH,
        })
    }

    /// A walk that continues from `head` (a replica catching up).
    pub fn from(head: Head) -> Self {
        Self { head }
    }

    /// The last record the walk accepted.
    pub fn head(&self) -> Head {
        self.head
    }

    /// Moves past `record` if it is the next record and links to the last.
    pub fn follow(&mut self, record: &Record) -> Result<(), Unlinked> {
        let sequence = record.event.sequence;
        if sequence != self.head.sequence + 1 {
            return Err(Unlinked::Gap {
                after: self.head.sequence,
                found: sequence,
            });
        }
        if record.prev_hash != self.head.hash {
            return Err(Unlinked::Link { sequence });
        }
        self.head = Head {
            sequence,
            hash: record.hash,
        };
        Ok(())
    }

    /// Checks the head anchor against the end of the walk: the first bad
    /// record and why, if they disagree.
    pub fn check_anchor(&self, anchor: Head) -> Result<(), Bad> {
        let walked = self.head;
        if anchor.sequence > walked.sequence {
            return Err(Bad::new(
                walked.sequence + 1,
                format!(
                    "missing: the log ends at {} but its head is {}",
                    walked.sequence, anchor.sequence
                ),
            ));
        }
        if anchor.sequence < walked.sequence {
            return Err(Bad::new(
                anchor.sequence + 1,
                format!(
                    "beyond the head anchor, which ends the log at {}",
                    anchor.sequence
                ),
            ));
        }
        if anchor.hash != walked.hash {
            return Err(Bad::previous(
                walked.sequence,
                "its content does not match the head hash".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Most records in a row that no signature covers a signed log can hold:
/// the largest append. A longer run is refused without waiting for its end.
pub const MAX_SIGNED_RUN: usize = 4096;

/// How many of the newest signatures an engine checks, newest first, for one
/// that verifies before a walk (see [`Verifier::vouched`]); past them, the
/// walk checks each append's signature.
pub const NEWEST_SIGNATURES_CHECKED: usize = 64;

/// A whole log's verification, record by record: the walk, what it
/// counted, and the [`Verification`] it ends with. Each engine reads its
/// records and asks its index (`intact`); everything else is here.
///
/// With trusted keys, a record is handed on only once a trusted signature
/// covers it. A signature covers its record and, through the chain, every
/// record before it, so one check vouches for a whole prefix: the engine
/// finds the newest signature that verifies before the walk
/// ([`Verifier::vouched`]), and the records up to it are handed on as they
/// link. After it (another writer's appends meanwhile, or what no good
/// signature covers), each append's records wait for its own signature,
/// checked one by one, and the verified head is the last signed one.
/// Without trusted keys, every record that links is handed on.
#[derive(Debug, Clone)]
pub struct Verifier<'t> {
    walk: Walk,
    checked: u64,
    trust: Option<&'t TrustedKeys>,
    /// Records that link but that no signature covers yet.
    pending: Vec<Record>,
    /// The last record handed on.
    covered: Head,
    /// The last signature verified.
    signed: Option<SignedHead>,
    /// Records up to this one are covered by `signed`, checked before the walk.
    vouched: u64,
}

/// What [`Verifier::next`] made of a record.
#[derive(Debug)]
pub enum Next {
    /// Good (or waiting for its signature): read on.
    Accepted,
    /// The verification ends here, with this answer.
    Done(Verification),
    /// The record does not continue the chain: answer with
    /// [`Verifier::blame`], once the index says whether the record before it
    /// is intact.
    Unlinked(Unlinked),
}

impl<'t> Verifier<'t> {
    /// A verification that continues from `head`, which an earlier one
    /// verified (a replica catching up; `Head::default()`: from the start),
    /// of signatures too when `trust` is given.
    pub fn from(head: Head, trust: Option<&'t TrustedKeys>) -> Self {
        Self {
            walk: Walk::from(head),
            checked: 0,
            trust,
            pending: Vec::new(),
            covered: head,
            signed: None,
            vouched: 0,
        }
    }

    /// The newest signature that verifies, checked by the engine against the
    /// stored record it signs: every record up to it is covered as soon as
    /// the walk shows that it links.
    pub fn vouched(mut self, signed: Option<SignedHead>) -> Self {
        if let Some(signed) = signed {
            self.vouched = signed.head.sequence;
            self.signed = Some(signed);
        }
        self
    }

    /// The sequence the next record must have.
    pub fn expected(&self) -> u64 {
        self.walk.head().sequence + 1
    }

    /// Checks `record` and hands it to `visit` (which may refuse it) once it
    /// is covered: at once without trusted keys, else with its append's
    /// signature.
    pub fn next(
        &mut self,
        record: Record,
        visit: &mut impl FnMut(&Record) -> Result<(), String>,
    ) -> Next {
        if let Err(unlinked) = self.walk.follow(&record) {
            return Next::Unlinked(unlinked);
        }
        let Some(trust) = self.trust else {
            return self.hand_on(std::iter::once(record), visit);
        };
        let sequence = record.event.sequence;
        if sequence <= self.vouched {
            // What the checked signature signs is what the walk reached.
            let signed_head = self.signed.as_ref().map(|s| s.head);
            if sequence == self.vouched && signed_head != Some(self.walk.head()) {
                let reason = format!("{REASON} record {sequence} changed after it was checked");
                return Next::Done(self.bad(Bad::new(sequence, reason)));
            }
            return self.hand_on(std::iter::once(record), visit);
        }
        match &record.signed {
            None if self.pending.len() >= MAX_SIGNED_RUN => {
                let first = self.covered.sequence + 1;
                let reason = format!(
                    "{REASON} no signature covers records {first} to {} (no append is that long)",
                    record.event.sequence
                );
                Next::Done(self.bad(Bad::new(first, reason)))
            }
            None => {
                self.pending.push(record);
                Next::Accepted
            }
            Some(Err(reason)) => {
                let bad = Bad::new(record.event.sequence, reason.clone());
                Next::Done(self.bad(bad))
            }
            Some(Ok(signed)) => match trust.check(signed, self.walk.head()) {
                Err(reason) => Next::Done(self.bad(Bad::new(record.event.sequence, reason))),
                Ok(()) => {
                    self.signed = Some(signed.clone());
                    let mut covered = std::mem::take(&mut self.pending);
                    covered.push(record);
                    self.hand_on(covered, visit)
                }
            },
        }
    }

    /// Hands the covered records on.
    fn hand_on(
        &mut self,
        covered: impl IntoIterator<Item = Record>,
        visit: &mut impl FnMut(&Record) -> Result<(), String>,
    ) -> Next {
        for record in covered {
            if let Err(reason) = visit(&record) {
                return Next::Done(self.bad(Bad::new(record.event.sequence, reason)));
            }
            self.checked += 1;
            self.covered = Head {
                sequence: record.event.sequence,
                hash: record.hash,
            };
        }
        Next::Accepted
    }

    /// The answer for a record that does not link (see [`Unlinked::blame`]).
    pub fn blame(mut self, unlinked: Unlinked, previous_intact: bool) -> Verification {
        let bad = unlinked.blame(previous_intact);
        self.bad(bad)
    }

    /// The answer for a record found bad before its link could be checked
    /// (missing, undecodable): a gap before it comes first.
    pub fn bad_record(mut self, sequence: u64, reason: String) -> Verification {
        let expected = self.expected();
        if sequence != expected {
            let gap = Unlinked::Gap {
                after: expected - 1,
                found: sequence,
            };
            return self.bad(gap.blame(true));
        }
        self.bad(Bad::new(sequence, reason))
    }

    /// The answer once every record was read: the head anchor (if the log
    /// has one) must be where the walk ended, and a signature must cover the
    /// last records.
    pub fn finish(mut self, anchor: Option<Head>) -> Verification {
        if let Some(Err(wrong)) = anchor.map(|a| self.walk.check_anchor(a)) {
            return self.bad(wrong);
        }
        if let Some(last) = self.pending.last() {
            let reason = format!(
                "{REASON} no signature covers records {} to {}: the log ends without one",
                self.covered.sequence + 1,
                last.event.sequence
            );
            let first = self.covered.sequence + 1;
            return self.bad(Bad::new(first, reason));
        }
        let covered = self.covered.sequence;
        Verification {
            events_checked: self.checked,
            head: self.covered,
            first_bad: None,
            signed: self.signed.filter(|s| s.head.sequence <= covered),
        }
    }

    fn bad(&mut self, bad: Bad) -> Verification {
        let first_uncovered = self.covered.sequence + 1;
        let (sequence, reason) = match self.pending.last() {
            // Records before the bad one wait for a signature they will not
            // get: the first of them is the first bad record.
            Some(last) if bad.sequence > first_uncovered => (
                first_uncovered,
                format!(
                    "{REASON} no signature covers records {first_uncovered} to {} (then record {}: {})",
                    last.event.sequence, bad.sequence, bad.reason
                ),
            ),
            _ => (bad.sequence, bad.reason),
        };
        Verification {
            // A record its successor showed to be changed was counted good.
            events_checked: if bad.walked_past && bad.sequence <= self.covered.sequence {
                self.checked.saturating_sub(1)
            } else {
                self.checked
            },
            head: self.covered,
            first_bad: Some((sequence, reason)),
            signed: self
                .signed
                .take()
                .filter(|s| s.head.sequence <= self.covered.sequence),
        }
    }
}

/// Record `sequence` (stored as `bytes`) rewritten to link to `prev_hash`:
/// its new bytes and what they decode to (for the tamper tools).
pub(crate) fn relinked(
    sequence: u64,
    bytes: &[u8],
    prev_hash: Hash,
) -> Result<(Vec<u8>, Record), LogError> {
    let corrupt = |reason: String| LogError::Corrupt { sequence, reason };
    let mut event = cassette_proto::pb::Event::decode(bytes).map_err(|e| corrupt(e.to_string()))?;
    event.prev_hash = prev_hash.to_vec();
    let bytes = event.encode_to_vec();
    let record = crate::decode(sequence, &bytes)?;
    Ok((bytes, record))
}

/// An index entry: a record's sequence (u64 big-endian) and hash.
pub fn index_value(sequence: u64, hash: &Hash) -> Vec<u8> {
    let mut value = sequence.to_be_bytes().to_vec();
    value.extend_from_slice(hash);
    value
}

/// The first bad record and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bad {
    pub sequence: u64,
    pub reason: String,
    /// The bad record is the walk's last accepted one (its successor showed
    /// that its content changed): one fewer record was good.
    pub walked_past: bool,
}

impl Bad {
    /// Record `sequence` is bad for `reason`.
    pub fn new(sequence: u64, reason: String) -> Self {
        Self {
            sequence,
            reason,
            walked_past: false,
        }
    }

    fn previous(sequence: u64, reason: String) -> Self {
        Self {
            sequence,
            reason,
            walked_past: true,
        }
    }
}

impl Unlinked {
    /// What to report. For a record that does not link, `previous_intact`
    /// says whether the record before it still has the hash the index
    /// recorded for it: then the later record is the bad one; else the
    /// earlier one's content was changed.
    pub fn blame(&self, previous_intact: bool) -> Bad {
        match *self {
            Unlinked::Gap { after, found } => {
                Bad::new(after + 1, format!("missing: the next record is {found}"))
            }
            Unlinked::Link { sequence: 1 } => Bad::new(1, "does not start the chain".to_owned()),
            Unlinked::Link { sequence } if previous_intact => Bad::new(
                sequence,
                format!("does not link to record {}", sequence - 1),
            ),
            Unlinked::Link { sequence } => Bad::previous(
                sequence - 1,
                "its content does not match its recorded hash".to_owned(),
            ),
        }
    }

    /// The record whose recorded hash [`Unlinked::blame`] needs (the one
    /// before a record that does not link), if any.
    pub fn previous(&self) -> Option<u64> {
        match *self {
            Unlinked::Link { sequence } if sequence > 1 => Some(sequence - 1),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sequence: u64, prev: Hash, hash_byte: u8) -> Record {
        let event = crate::test_events::created(sequence, "a");
        Record {
            event,
            prev_hash: prev.to_vec(),
            hash: [hash_byte; 32],
            signed: None,
            encoding: RecordEncoding::Compact,
        }
    }

    #[test]
    fn a_walk_names_gaps_bad_links_and_changed_content_alike_for_every_reader() {
        let mut walk = Walk::genesis();
        walk.follow(&record(1, GENESIS_HASH, 1)).unwrap();
        walk.follow(&record(2, [1; 32], 2)).unwrap();
        assert_eq!(walk.head().sequence, 2);
        // A gap.
        let gap = walk.follow(&record(4, [2; 32], 4)).unwrap_err();
        assert_eq!(gap.blame(true).sequence, 3);
        assert_eq!(gap.blame(true).reason, "missing: the next record is 4");
        // A record that does not link: its predecessor intact, it is to blame;
        // else the predecessor's content changed.
        let unlinked = walk.follow(&record(3, [9; 32], 3)).unwrap_err();
        assert_eq!(unlinked.previous(), Some(2));
        let bad = unlinked.blame(true);
        assert_eq!((bad.sequence, bad.walked_past), (3, false));
        assert_eq!(bad.reason, "does not link to record 2");
        let bad = unlinked.blame(false);
        assert_eq!((bad.sequence, bad.walked_past), (2, true));
        assert_eq!(bad.reason, "its content does not match its recorded hash");
        // The first record must start the chain.
        let start = Walk::genesis().follow(&record(1, [5; 32], 1)).unwrap_err();
        assert_eq!(start.blame(true).reason, "does not start the chain");
        // The anchor.
        assert!(walk.check_anchor(walk.head()).is_ok());
        let short = walk.check_anchor(Head {
            sequence: 3,
            hash: [3; 32],
        });
        assert_eq!(short.unwrap_err().sequence, 3);
        let changed = walk
            .check_anchor(Head {
                sequence: 2,
                hash: [7; 32],
            })
            .unwrap_err();
        assert_eq!((changed.sequence, changed.walked_past), (2, true));
    }

    #[test]
    fn a_batch_continues_its_head_and_each_instance_or_is_refused() {
        use crate::test_events::{created, disabled};
        let head = Head {
            sequence: 0,
            hash: GENESIS_HASH,
        };
        let batch = [created(1, "a"), disabled(2, "a", 2)];
        let (records, next) =
            encode_batch(head, &batch, RecordEncoding::Compact, |_| Ok(Some(0))).unwrap();
        assert_eq!(next.sequence, 2);
        assert_eq!(next.hash, records[1].hash);
        assert_eq!(records[0].hash, hash(&records[0].bytes));
        // The second links to the first: a walk over decoded records accepts them.
        let mut walk = Walk::genesis();
        for r in &records {
            let decoded = crate::decode(r.event.sequence, &r.bytes).unwrap();
            walk.follow(&decoded).unwrap();
        }
        assert_eq!(walk.head(), next);
        let gap = [created(2, "a")];
        assert!(matches!(
            encode_batch(head, &gap, RecordEncoding::Compact, |_| Ok(Some(0))),
            Err(LogError::OutOfOrder(_))
        ));
        let skipped = [disabled(1, "a", 3)];
        assert!(matches!(
            encode_batch(head, &skipped, RecordEncoding::Compact, |_| Ok(Some(1))),
            Err(LogError::OutOfOrder(_))
        ));
        // Left to the engine: any revision but 0.
        assert!(encode_batch(head, &skipped, RecordEncoding::Compact, |_| Ok(None)).is_ok());
        let zero = [disabled(1, "a", 0)];
        assert!(encode_batch(head, &zero, RecordEncoding::Compact, |_| Ok(None)).is_err());
    }
}
