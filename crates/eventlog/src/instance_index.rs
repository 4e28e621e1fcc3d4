//! The sled log's instance index: for each instance, the sequence of each
//! revision, in memory, so that reading an instance's history is a lookup
//! and an append knows where each instance's revisions continue.
//!
//! Why not sled keys (`i` + instance + revision, as the log first kept it):
//! an append inserts them at as many places in sled's tree as it touches
//! instances, and sled rewrites each leaf it inserts into: a log of 200,000
//! events took 603 bytes per event on disk with those keys and 360 without
//! (`cassette-bench replay`), and every append paid an insert and a
//! backwards scan per instance.
//!
//! Everything here can be rebuilt from the records, which carry their
//! instance and revision: opening the log loads the checkpoint
//! (`instances.index`, format in `proto/cassette/firewall/v1/snapshot.proto`)
//! if its anchor is the log's record, and indexes the records after it; the
//! log writes a checkpoint at shutdown and every [`CHECKPOINT_EVERY`] events.
//! A checkpoint is only a shortcut: one that does not check out is ignored.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use cassette_model::InstanceId;
use cassette_proto::pb;
use prost::Message as _;
use sha2::{Digest, Sha256};

use crate::files::Kept;
use crate::{Hash, Head};

/// The checkpoint's file in the log's directory.
pub(crate) const CHECKPOINT: Kept = Kept {
    name: "instances.index",
    temp_prefix: ".instances-index-",
};
/// Events appended between two checkpoints.
pub const CHECKPOINT_EVERY: u64 = 65_536;

const MAGIC: &[u8; 8] = b"CIDX0001";
const HEADER_LEN: usize = MAGIC.len() + 32;

/// A revision whose record the log does not hold (the index was built
/// from a log missing it): reading it is an error naming it.
const MISSING: u64 = 0;

/// Each instance's revisions -> sequences (revision r at position r - 1).
///
/// Each instance's id and sequences are shared (`Arc`), and the ids listed
/// again in the order instances came: a checkpoint's copy takes pointers, a
/// slice of instances at a time, and an append copies an instance's
/// sequences only if a copy in progress holds them.
#[derive(Debug, Default, Clone)]
pub struct InstanceIndex {
    instances: HashMap<Arc<InstanceId>, Arc<Vec<u64>>>,
    /// Every instance (the map's own keys), in the order it was first indexed.
    order: Vec<Arc<InstanceId>>,
}

/// A copy of an [`InstanceIndex`] to checkpoint (see [`InstanceIndex::copy_of`]).
pub struct IndexCopy(Vec<(Arc<InstanceId>, Arc<Vec<u64>>)>);

/// Instances copied per read lock by [`InstanceIndex::copy_of`].
const COPY_SLICE: usize = 2048;

impl PartialEq for InstanceIndex {
    fn eq(&self, other: &Self) -> bool {
        self.instances == other.instances
    }
}

impl Eq for InstanceIndex {}

/// What [`InstanceIndex::sequences`] found for a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Indexed {
    At(u64),
    /// The log holds no record for this revision.
    Missing(u64),
}

impl InstanceIndex {
    /// Records that `instance`'s revision `revision` is record `sequence`.
    /// Revisions already indexed keep their record (a log holding two
    /// records of one revision is for verification to name); revisions
    /// skipped are marked missing.
    pub fn insert(&mut self, instance: &InstanceId, revision: u64, sequence: u64) {
        let Some(position) = revision
            .checked_sub(1)
            .and_then(|p| usize::try_from(p).ok())
        else {
            return;
        };
        let sequences = self.sequences_mut(instance);
        if position < sequences.len() {
            return;
        }
        sequences.resize(position, MISSING);
        sequences.push(sequence);
    }

    /// Makes `instance`'s revision `revision` record `sequence`, whatever
    /// was indexed for it (the record says so: a walk of the log found it
    /// there). Whether anything changed.
    pub fn correct(&mut self, instance: &InstanceId, revision: u64, sequence: u64) -> bool {
        let Some(position) = revision
            .checked_sub(1)
            .and_then(|p| usize::try_from(p).ok())
        else {
            return false;
        };
        let sequences = self.sequences_mut(instance);
        if sequences.get(position) == Some(&sequence) {
            return false;
        }
        if position >= sequences.len() {
            sequences.resize(position + 1, MISSING);
        }
        sequences[position] = sequence;
        true
    }

    /// A copy of the index behind `lock` for a checkpoint: pointers,
    /// taken [`COPY_SLICE`] instances at a time, each slice under a read
    /// lock of its own, so that an append never waits for the whole copy
    /// (a clone of 100,000 instances held appends up 28 ms on this VM).
    /// Entries appended meanwhile may be in the copy; a checkpoint leaves
    /// out what is after its anchor.
    pub fn copy_of(lock: &RwLock<Self>) -> IndexCopy {
        let mut copy = Vec::new();
        loop {
            let index = lock.read().unwrap_or_else(|p| p.into_inner());
            let slice = index.order.get(copy.len()..).unwrap_or_default();
            if slice.is_empty() {
                return IndexCopy(copy);
            }
            for id in slice.iter().take(COPY_SLICE) {
                let sequences = index.instances.get(&**id).cloned().unwrap_or_default();
                copy.push((id.clone(), sequences));
            }
        }
    }

    /// `instance`'s sequences to change: a new entry if it has none, copied
    /// first if a checkpoint's copy holds them.
    fn sequences_mut(&mut self, instance: &InstanceId) -> &mut Vec<u64> {
        // Two lookups rather than the entry API, which would clone the id
        // on every append.
        if !self.instances.contains_key(instance) {
            let id = Arc::new(instance.clone());
            self.order.push(id.clone());
            self.instances.insert(id, Arc::default());
        }
        match self.instances.get_mut(instance) {
            Some(sequences) => Arc::make_mut(sequences),
            None => unreachable!("inserted above"),
        }
    }

    /// Whether `instance`'s revision `revision` is indexed as record `sequence`.
    pub fn holds(&self, instance: &InstanceId, revision: u64, sequence: u64) -> bool {
        let position = revision
            .checked_sub(1)
            .and_then(|p| usize::try_from(p).ok());
        position.is_some_and(|p| {
            self.instances
                .get(instance)
                .and_then(|s| s.get(p))
                .is_some_and(|&s| s == sequence)
        })
    }

    /// Whether every record from 1 to `last` is indexed exactly once (and
    /// nothing else is): what an index of a sled log up to `last` is, and
    /// what a checkpoint must be to be used.
    pub fn covers_each_once(&self, last: u64) -> bool {
        let present = self
            .instances
            .values()
            .flat_map(|s| s.iter())
            .filter(|&&s| s != MISSING);
        // Counted first: `last` may come from a damaged file.
        let Some(len) = usize::try_from(last)
            .ok()
            .filter(|&len| present.count() == len)
        else {
            return false;
        };
        let mut seen = vec![false; len];
        for &sequence in self.instances.values().flat_map(|s| s.iter()) {
            if sequence == MISSING {
                continue;
            }
            match usize::try_from(sequence - 1)
                .ok()
                .and_then(|i| seen.get_mut(i))
            {
                Some(seen) if !*seen => *seen = true,
                _ => return false,
            }
        }
        seen.iter().all(|&s| s)
    }

    /// The instance's last revision indexed, 0 if none.
    pub fn last_revision(&self, instance: &InstanceId) -> u64 {
        self.instances.get(instance).map_or(0, |s| s.len() as u64)
    }

    /// The instance's last revision whose record is at most `sequence`, 0
    /// if none.
    pub fn last_revision_through(&self, instance: &InstanceId, sequence: u64) -> u64 {
        let Some(sequences) = self.instances.get(instance) else {
            return 0;
        };
        // Sequences grow with revisions; a missing one sorts with what
        // precedes it.
        let mut low = 0;
        let mut high = sequences.len();
        while low < high {
            let middle = (low + high) / 2;
            let at = sequences[..=middle]
                .iter()
                .rev()
                .find(|&&s| s != MISSING)
                .copied()
                .unwrap_or(0);
            if at <= sequence {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        low as u64
    }

    /// The records of the instance's revisions `after < revision <= until`
    /// that are at most `through`, in revision order.
    pub fn sequences(
        &self,
        instance: &InstanceId,
        after: u64,
        until: u64,
        through: u64,
    ) -> Vec<Indexed> {
        let Some(sequences) = self.instances.get(instance) else {
            return Vec::new();
        };
        let start = usize::try_from(after).unwrap_or(usize::MAX);
        let end = usize::try_from(until)
            .unwrap_or(usize::MAX)
            .min(sequences.len());
        if start >= end {
            return Vec::new();
        }
        let mut found = Vec::with_capacity(end - start);
        for (position, &sequence) in sequences[start..end].iter().enumerate() {
            match sequence {
                MISSING => found.push(Indexed::Missing(after + 1 + position as u64)),
                s if s > through => break,
                s => found.push(Indexed::At(s)),
            }
        }
        found
    }

    /// Forgets every record after `sequence`.
    pub fn truncate_after(&mut self, sequence: u64) {
        self.instances.retain(|_, sequences| {
            let sequences = Arc::make_mut(sequences);
            while sequences
                .last()
                .is_some_and(|&s| s == MISSING || s > sequence)
            {
                sequences.pop();
            }
            !sequences.is_empty()
        });
        let instances = &self.instances;
        self.order.retain(|id| instances.contains_key(&**id));
    }

    /// The checkpoint's bytes: every record up to `anchor`.
    pub fn encode(&self, anchor: Head) -> Vec<u8> {
        encode(
            self.instances
                .iter()
                .map(|(id, s)| (&**id, s.as_slice()))
                .collect(),
            anchor,
        )
    }

    /// The checkpoint in `bytes` and its anchor, if it checks out: magic,
    /// checksum, encoding, instance ids, and sequences that grow and stay
    /// at or before the anchor. Why not, otherwise.
    pub fn decode(bytes: &[u8]) -> Result<(Head, Self), String> {
        if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != MAGIC {
            return Err("not an instance index (no CIDX0001 header)".to_owned());
        }
        let (checksum, payload) = bytes[MAGIC.len()..].split_at(32);
        if Sha256::digest(payload).as_slice() != checksum {
            return Err("its checksum does not match its content".to_owned());
        }
        let decoded = pb::InstanceIndex::decode(payload).map_err(|e| e.to_string())?;
        let anchor = Head {
            sequence: decoded.head_sequence,
            hash: Hash::try_from(decoded.head_hash.as_slice())
                .map_err(|_| "its anchor's hash is not 32 bytes".to_owned())?,
        };
        let mut index = Self::default();
        for instance in decoded.instances {
            let id = InstanceId::parse(&instance.instance_id).map_err(|e| e.to_string())?;
            let mut previous: u64 = 0;
            let mut sequences = Vec::with_capacity(instance.sequence_deltas.len());
            for delta in instance.sequence_deltas {
                if delta == 0 {
                    sequences.push(MISSING);
                    continue;
                }
                previous = previous
                    .checked_add(delta)
                    .filter(|&s| s <= anchor.sequence)
                    .ok_or_else(|| format!("instance {id} has a record after the anchor"))?;
                sequences.push(previous);
            }
            let id = Arc::new(id);
            if index
                .instances
                .insert(id.clone(), Arc::new(sequences))
                .is_some()
            {
                return Err(format!("instance {id} is listed twice"));
            }
            index.order.push(id);
        }
        Ok((anchor, index))
    }
}

impl IndexCopy {
    /// Replaces the checkpoint in the log's `dir` with this copy, anchored
    /// at `anchor` (durable: the entries after it are left out).
    pub(crate) fn checkpoint(&self, dir: &std::path::Path, anchor: Head) -> std::io::Result<()> {
        CHECKPOINT.replace(dir, &self.encode(anchor))
    }

    /// The checkpoint's bytes: every record up to `anchor`.
    pub fn encode(&self, anchor: Head) -> Vec<u8> {
        encode(
            self.0.iter().map(|(id, s)| (&**id, s.as_slice())).collect(),
            anchor,
        )
    }
}

/// A checkpoint of `instances` (each listed once) anchored at `anchor`.
fn encode(mut instances: Vec<(&InstanceId, &[u64])>, anchor: Head) -> Vec<u8> {
    instances.sort_unstable_by(|a, b| a.0.cmp(b.0));
    instances.dedup_by(|a, b| a.0 == b.0);
    let instances = instances
        .into_iter()
        .filter_map(|(id, sequences)| {
            let mut previous = 0;
            let mut deltas = Vec::new();
            for &sequence in sequences {
                match sequence {
                    MISSING => deltas.push(0),
                    s if s > anchor.sequence => break,
                    s => {
                        deltas.push(s - previous);
                        previous = s;
                    }
                }
            }
            while deltas.last() == Some(&0) {
                deltas.pop();
            }
            (!deltas.is_empty()).then(|| pb::IndexedInstance {
                instance_id: id.as_str().to_owned(),
                sequence_deltas: deltas,
            })
        })
        .collect();
    let payload = pb::InstanceIndex {
        head_sequence: anchor.sequence,
        head_hash: anchor.hash.to_vec(),
        instances,
    }
    .encode_to_vec();
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&Sha256::digest(&payload));
    bytes.extend_from_slice(&payload);
    bytes
}

/// The fields of a stored record the index needs, decoded alone (the
/// others are skipped): opening a log indexes its records after the
/// checkpoint without decoding them whole.
#[derive(Clone, PartialEq, prost::Message)]
struct IndexedFields {
    #[prost(string, tag = "2")]
    instance_id: String,
    #[prost(uint64, tag = "3")]
    revision: u64,
}

/// The instance and revision of a stored record, if it has them.
pub fn indexing(record: &[u8]) -> Option<(InstanceId, u64)> {
    let fields = IndexedFields::decode(record).ok()?;
    Some((
        InstanceId::parse(&fields.instance_id).ok()?,
        fields.revision,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> InstanceId {
        InstanceId::parse(name).unwrap()
    }

    fn index() -> InstanceIndex {
        let mut index = InstanceIndex::default();
        // a: revisions 1..=3 at 1, 3, 6; b: 1 at 2, 2 missing, 3 at 7.
        for (instance, revision, sequence) in [
            ("a", 1, 1),
            ("b", 1, 2),
            ("a", 2, 3),
            ("a", 3, 6),
            ("b", 3, 7),
        ] {
            index.insert(&id(instance), revision, sequence);
        }
        index
    }

    #[test]
    fn an_instance_s_revisions_are_looked_up_through_a_sequence() {
        let index = index();
        assert_eq!(index.last_revision(&id("a")), 3);
        assert_eq!(index.last_revision(&id("b")), 3);
        assert_eq!(index.last_revision(&id("c")), 0);
        assert_eq!(index.last_revision_through(&id("a"), 0), 0);
        assert_eq!(index.last_revision_through(&id("a"), 5), 2);
        assert_eq!(index.last_revision_through(&id("a"), 6), 3);
        assert_eq!(index.last_revision_through(&id("b"), 6), 2);
        assert_eq!(index.last_revision_through(&id("b"), 7), 3);
        assert_eq!(
            index.sequences(&id("a"), 1, u64::MAX, u64::MAX),
            [Indexed::At(3), Indexed::At(6)]
        );
        // Only what `through` covers.
        assert_eq!(
            index.sequences(&id("a"), 0, 3, 5),
            [Indexed::At(1), Indexed::At(3)]
        );
        assert_eq!(
            index.sequences(&id("b"), 0, u64::MAX, u64::MAX),
            [Indexed::At(2), Indexed::Missing(2), Indexed::At(7)]
        );
        assert!(index.sequences(&id("a"), 3, u64::MAX, u64::MAX).is_empty());
        assert!(index.sequences(&id("a"), 2, 1, u64::MAX).is_empty());
        // A revision indexed twice keeps its first record.
        let mut again = index.clone();
        again.insert(&id("a"), 2, 9);
        assert_eq!(again, index);
        // A correction replaces it, and fills what it skips as missing.
        assert!(again.correct(&id("a"), 2, 9));
        assert!(again.holds(&id("a"), 2, 9));
        assert!(!again.correct(&id("a"), 2, 9));
        assert!(again.correct(&id("c"), 2, 8));
        assert_eq!(
            again.sequences(&id("c"), 0, u64::MAX, u64::MAX),
            [Indexed::Missing(1), Indexed::At(8)]
        );
    }

    #[test]
    fn an_index_of_a_log_covers_each_of_its_records_once() {
        let mut index = index();
        // b's revision 2 is missing: records 4 and 5 are nowhere.
        assert!(!index.covers_each_once(7));
        index.correct(&id("b"), 2, 4);
        index.insert(&id("c"), 1, 5);
        assert!(index.covers_each_once(7));
        assert!(!index.covers_each_once(6), "record 7 is past the end");
        assert!(!index.covers_each_once(8), "record 8 is not indexed");
        // A record indexed twice.
        index.correct(&id("c"), 1, 4);
        assert!(!index.covers_each_once(7));
    }

    #[test]
    fn truncating_forgets_every_record_after_a_sequence() {
        let mut index = index();
        index.truncate_after(3);
        assert_eq!(index.last_revision(&id("a")), 2);
        assert_eq!(index.last_revision(&id("b")), 1);
        index.truncate_after(0);
        assert_eq!(index, InstanceIndex::default());
    }

    #[test]
    fn a_checkpoint_decodes_to_what_was_encoded_up_to_its_anchor_and_every_flipped_byte_is_refused()
    {
        let index = index();
        let anchor = Head {
            sequence: 6,
            hash: [6; 32],
        };
        let bytes = index.encode(anchor);
        let (decoded_anchor, decoded) = InstanceIndex::decode(&bytes).unwrap();
        assert_eq!(decoded_anchor, anchor);
        let mut expected = index.clone();
        expected.truncate_after(6);
        assert_eq!(decoded, expected);
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x01;
            assert!(InstanceIndex::decode(&damaged).is_err(), "byte {i}");
        }
        assert!(InstanceIndex::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(InstanceIndex::decode(b"").is_err());
    }

    #[test]
    fn a_copy_taken_a_slice_at_a_time_while_appends_go_on_checkpoints_what_the_index_held_at_its_anchor(
    ) {
        let mut index = InstanceIndex::default();
        let instances = (COPY_SLICE * 2 + 5) as u64;
        for i in 0..instances {
            index.insert(&id(&format!("web-{i}")), 1, i + 1);
        }
        let anchor = Head {
            sequence: instances,
            hash: [7; 32],
        };
        let at_anchor = index.encode(anchor);
        let lock = std::sync::Arc::new(std::sync::RwLock::new(index));
        // Appends after the anchor, to old instances and new ones, while
        // the copy is taken.
        let appending = {
            let lock = lock.clone();
            std::thread::spawn(move || {
                for i in 0..instances {
                    let mut index = lock.write().unwrap();
                    index.insert(&id(&format!("web-{i}")), 2, instances + 2 * i + 1);
                    index.insert(&id(&format!("new-{i}")), 1, instances + 2 * i + 2);
                }
            })
        };
        let copy = InstanceIndex::copy_of(&lock);
        appending.join().unwrap();
        assert_eq!(copy.encode(anchor), at_anchor);
        let everything = Head {
            sequence: u64::MAX,
            hash: [7; 32],
        };
        assert_eq!(
            InstanceIndex::copy_of(&lock).encode(everything),
            lock.read().unwrap().encode(everything)
        );
    }
}
