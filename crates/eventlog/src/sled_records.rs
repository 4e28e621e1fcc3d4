//! Where the sled log's records live in its tree, and how they are found.
//!
//! An append stores its records in packs: `p` + the first record's sequence
//! (u64 big-endian) -> up to [`PACK_RECORDS`] consecutive records, each a
//! varint length and the record's bytes, at most [`PACK_BYTES`] in all
//! unless one record alone is larger. sled spends about 75 bytes on each
//! key (its leaves split at 17 keys, and each key's fragment is written
//! before the leaf is), so a pack of 16 takes a log written in large appends
//! from about 270 to about 170 bytes an event, and makes an append of 64
//! events 4 inserts rather than 64. A pack never spans two appends: a pack
//! is written once, in its append's one atomic batch, and never rewritten.
//!
//! Logs written before packs hold one record per key, `e` + sequence; such
//! a log goes on with packs after its last `e` record, and every reader
//! takes both. The records' bytes are the same either way: what is hashed,
//! signed and linked is each record, never a pack.
//!
//! A pack whose framing is damaged (a length of zero, or one running past
//! the pack's end) is reported as a corrupt record at the first sequence
//! it cannot give, and a record stored twice (overlapping packs, or an `e`
//! key beside a pack) as a corrupt record where the second copy starts: a
//! walk names them like any other damage.

use std::ops::Range;

use crate::{u64_suffix, LogError};

/// A single record's key, in logs written before packs.
pub const EVENT: u8 = b'e';
/// A pack's key.
pub const PACK: u8 = b'p';
/// The most records one pack holds.
pub const PACK_RECORDS: usize = 16;
/// A pack closes before a record that would take it past this many bytes:
/// sled keeps its leaves (17 keys at most) well below its 128 KiB limit
/// for values kept in its log rather than in a file of their own.
pub const PACK_BYTES: usize = 4096;

pub fn event_key(sequence: u64) -> [u8; 9] {
    key(EVENT, sequence)
}

pub fn pack_key(first: u64) -> [u8; 9] {
    key(PACK, first)
}

fn key(prefix: u8, sequence: u64) -> [u8; 9] {
    let mut key = [prefix; 9];
    key[1..].copy_from_slice(&sequence.to_be_bytes());
    key
}

/// The sequence a record or pack key names.
pub fn sequence_of(key: &[u8]) -> Result<u64, LogError> {
    match key {
        [EVENT | PACK, rest @ ..] if rest.len() == 8 => Ok(u64_suffix(rest)),
        _ => Err(LogError::Corrupt {
            sequence: 0,
            reason: format!("malformed record key {key:?}"),
        }),
    }
}

/// One stored record: its sequence, and its bytes inside the value that
/// holds them (a pack, or a key of its own).
#[derive(Debug, Clone)]
pub struct Stored {
    pub sequence: u64,
    value: sled::IVec,
    range: Range<usize>,
}

impl Stored {
    /// A record stored as a value of its own.
    fn whole(sequence: u64, value: sled::IVec) -> Self {
        let range = 0..value.len();
        Self {
            sequence,
            value,
            range,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.value[self.range.clone()]
    }
}

/// Puts `records` (consecutive, from `first`; each record's bytes) into
/// `batch` as packs.
pub fn insert_packs<'r>(
    batch: &mut sled::Batch,
    first: u64,
    records: impl IntoIterator<Item = &'r [u8]>,
) {
    let mut pack = Vec::new();
    let (mut start, mut count, mut next) = (first, 0, first);
    for record in records {
        // 5 bytes: the longest varint of a record's length.
        if count == PACK_RECORDS || (count > 0 && pack.len() + 5 + record.len() > PACK_BYTES) {
            batch.insert(&pack_key(start)[..], std::mem::take(&mut pack));
            (start, count) = (next, 0);
        }
        push(&mut pack, record);
        count += 1;
        next += 1;
    }
    if count > 0 {
        batch.insert(&pack_key(start)[..], pack);
    }
}

/// One pack of `records`, whatever their number and size (appends keep
/// to [`PACK_RECORDS`] and [`PACK_BYTES`]).
pub fn pack<'r>(records: impl IntoIterator<Item = &'r [u8]>) -> Vec<u8> {
    let mut pack = Vec::new();
    for record in records {
        push(&mut pack, record);
    }
    pack
}

fn push(pack: &mut Vec<u8>, record: &[u8]) {
    prost::encoding::encode_varint(record.len() as u64, pack);
    pack.extend_from_slice(record);
}

/// The records of the pack stored under `first`, each as its range in
/// `pack`; a framing fault ends them, as the corrupt record it stops at.
pub fn unpack(first: u64, pack: &[u8]) -> impl Iterator<Item = Unpacked> + '_ {
    let mut at = 0;
    let mut sequence = first;
    let mut failed = false;
    std::iter::from_fn(move || {
        // An empty pack is malformed; a pack read to its end is done.
        if failed || (at == pack.len() && sequence > first) {
            return None;
        }
        let mut rest = &pack[at..];
        let before = rest.len();
        let length = prost::encoding::decode_varint(&mut rest)
            .ok()
            .and_then(|l| usize::try_from(l).ok())
            .filter(|&l| l > 0 && l <= rest.len());
        let Some(length) = length else {
            failed = true;
            return Some(Err(LogError::Corrupt {
                sequence,
                reason: format!(
                    "the pack stored under sequence {first} is malformed at its byte {at} of {}",
                    pack.len()
                ),
            }));
        };
        let start = at + (before - rest.len());
        at = start + length;
        sequence += 1;
        Some(Ok((sequence - 1, start..at)))
    })
}

/// Record `sequence` as stored, in either layout; `None` if it is not
/// there. A pack whose framing fails before it is [`LogError::Corrupt`].
pub fn get(tree: &sled::Tree, sequence: u64) -> Result<Option<Stored>, LogError> {
    if let Some(value) = tree.get(event_key(sequence))? {
        return Ok(Some(Stored::whole(sequence, value)));
    }
    let Some((_, first, value)) = pack_holding(tree, sequence)? else {
        return Ok(None);
    };
    for record in unpack(first, &value) {
        let (at, range) = record?;
        if at == sequence {
            return Ok(Some(Stored {
                sequence,
                value: value.clone(),
                range,
            }));
        }
    }
    Ok(None)
}

/// [`get`], with a record whose pack is damaged before it read as absent:
/// for the checks that only use a record they can read (a checkpoint's
/// anchor, a signature's record), which verification then names.
pub fn get_readable(tree: &sled::Tree, sequence: u64) -> Result<Option<Stored>, LogError> {
    match get(tree, sequence) {
        Err(LogError::Corrupt { .. }) => Ok(None),
        other => other,
    }
}

/// The pack that would hold record `sequence`: the last one stored under
/// a sequence at most it, as its key, its first sequence and its value.
fn pack_holding(
    tree: &sled::Tree,
    sequence: u64,
) -> Result<Option<(sled::IVec, u64, sled::IVec)>, LogError> {
    let Some(entry) = tree.range(pack_key(0)..=pack_key(sequence)).next_back() else {
        return Ok(None);
    };
    let (key, value) = entry?;
    let first = sequence_of(&key)?;
    Ok(Some((key, first, value)))
}

/// The records stored from `first` through `last` in sequence order, the
/// single-record keys of an older writer and the packs merged. Stops after
/// an error from sled; a damaged pack or a record stored twice is a
/// corrupt record, after which the next one goes on.
pub fn range(tree: &sled::Tree, first: u64, last: u64) -> Records {
    // The pack holding `first` may begin before it.
    let from = match pack_holding(tree, first) {
        Ok(Some((_, from, _))) => from,
        _ => first,
    };
    let singles = tree.range(event_key(first)..=event_key(last)).map(|entry| {
        let (key, value) = entry?;
        Ok(Stored::whole(sequence_of(&key)?, value))
    });
    let packed = Packed {
        packs: tree.range(pack_key(from)..=pack_key(last)),
        pack: None,
        first,
        last,
    };
    Records {
        singles: source(singles),
        packed: source(packed),
        yielded: None,
        failed: false,
    }
}

type Source = std::iter::Peekable<Box<dyn Iterator<Item = Result<Stored, LogError>> + Send>>;

fn source(records: impl Iterator<Item = Result<Stored, LogError>> + Send + 'static) -> Source {
    let boxed: Box<dyn Iterator<Item = Result<Stored, LogError>> + Send> = Box::new(records);
    boxed.peekable()
}

pub struct Records {
    singles: Source,
    packed: Source,
    /// The last sequence handed out.
    yielded: Option<u64>,
    failed: bool,
}

impl Iterator for Records {
    type Item = Result<Stored, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        // Errors first, then the lower sequence.
        let single_first = match (self.singles.peek(), self.packed.peek()) {
            (None, None) => return None,
            (Some(_), None) | (Some(Err(_)), _) => true,
            (None, Some(_)) | (_, Some(Err(_))) => false,
            (Some(Ok(s)), Some(Ok(p))) if s.sequence == p.sequence => {
                let sequence = s.sequence;
                self.singles.next();
                self.packed.next();
                self.yielded = Some(sequence);
                return Some(Err(LogError::Corrupt {
                    sequence,
                    reason: "stored twice: under a key of its own and in a pack".to_owned(),
                }));
            }
            (Some(Ok(s)), Some(Ok(p))) => s.sequence < p.sequence,
        };
        let next = match single_first {
            true => self.singles.next(),
            false => self.packed.next(),
        }?;
        Some(match next {
            Err(e) => {
                self.failed = matches!(e, LogError::Storage(_));
                Err(e)
            }
            Ok(stored) if self.yielded.is_some_and(|y| stored.sequence <= y) => {
                Err(LogError::Corrupt {
                    sequence: stored.sequence,
                    reason: "stored twice".to_owned(),
                })
            }
            Ok(stored) => {
                self.yielded = Some(stored.sequence);
                Ok(stored)
            }
        })
    }
}

/// A record of a pack (its sequence and where it is), or where its framing
/// failed.
type Unpacked = Result<(u64, Range<usize>), LogError>;

/// The packs' records from `first` through `last`.
struct Packed {
    packs: sled::Iter,
    /// The pack being read: its value, and its records' ranges left.
    pack: Option<(sled::IVec, std::vec::IntoIter<Unpacked>)>,
    first: u64,
    last: u64,
}

impl Iterator for Packed {
    type Item = Result<Stored, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((value, records)) = &mut self.pack {
                match records.next() {
                    Some(Ok((sequence, _))) if sequence < self.first => continue,
                    Some(Ok((sequence, _))) if sequence > self.last => self.pack = None,
                    Some(Ok((sequence, range))) => {
                        let value = value.clone();
                        return Some(Ok(Stored {
                            sequence,
                            value,
                            range,
                        }));
                    }
                    // The records from `first` on cannot be read either.
                    Some(Err(LogError::Corrupt { sequence, reason })) => {
                        let sequence = sequence.max(self.first);
                        return Some(Err(LogError::Corrupt { sequence, reason }));
                    }
                    Some(Err(e)) => return Some(Err(e)),
                    None => self.pack = None,
                }
                continue;
            }
            let (key, value) = match self.packs.next()? {
                Ok(entry) => entry,
                Err(e) => return Some(Err(e.into())),
            };
            let first = match sequence_of(&key) {
                Ok(first) => first,
                Err(e) => return Some(Err(e)),
            };
            let records: Vec<_> = unpack(first, &value).collect();
            self.pack = Some((value, records.into_iter()));
        }
    }
}

/// The last record stored, in either layout (packs follow the single
/// records of an older writer); `None` for an empty log. Of a last pack
/// whose framing fails, its last record that parses, or (if none does)
/// the whole pack as its first record, for verification to name.
pub fn last(tree: &sled::Tree) -> Result<Option<Stored>, LogError> {
    let single = tree.scan_prefix([EVENT]).next_back().transpose()?;
    let pack = tree.scan_prefix([PACK]).next_back().transpose()?;
    let packed = match pack {
        None => None,
        Some((key, value)) => {
            let first = sequence_of(&key)?;
            let last = unpack(first, &value).map_while(Result::ok).last();
            Some(match last {
                Some((sequence, range)) => Stored {
                    sequence,
                    value,
                    range,
                },
                None => Stored::whole(first, value),
            })
        }
    };
    let single = match single {
        None => None,
        Some((key, value)) => Some(Stored::whole(sequence_of(&key)?, value)),
    };
    Ok(match (single, packed) {
        (Some(s), Some(p)) if s.sequence > p.sequence => Some(s),
        (s, p) => p.or(s),
    })
}

/// Removes every record after `sequence` in `batch`: the single-record
/// keys and packs after it, and the pack holding it cut short after it.
/// Returns how many records that removes (a damaged pack's unreadable
/// rest counting as one).
pub fn remove_after(
    tree: &sled::Tree,
    batch: &mut sled::Batch,
    sequence: u64,
) -> Result<u64, LogError> {
    let mut removed = 0;
    for entry in tree.range(event_key(sequence + 1)..=event_key(u64::MAX)) {
        let (key, _) = entry?;
        sequence_of(&key)?;
        batch.remove(key);
        removed += 1;
    }
    if let Some((key, first, value)) = pack_holding(tree, sequence)? {
        let records: Vec<_> = unpack(first, &value).collect();
        let kept = records
            .iter()
            .take_while(|r| matches!(r, Ok((s, _)) if *s <= sequence))
            .count();
        if kept < records.len() {
            removed += (records.len() - kept) as u64;
            // A batch keeps the last word on a key: the cut pack replaces it.
            batch.remove(key);
            let kept = records[..kept].iter().filter_map(|r| r.as_ref().ok());
            insert_packs(batch, first, kept.map(|(_, range)| &value[range.clone()]));
        }
    }
    for entry in tree.range(pack_key(sequence + 1)..=pack_key(u64::MAX)) {
        let (key, value) = entry?;
        removed += unpack(sequence_of(&key)?, &value).count() as u64;
        batch.remove(key);
    }
    Ok(removed)
}

/// Stores `new` as record `sequence` in place of what is there, in the
/// layout it is in (`None` removes it: a pack is split around it). For
/// the tools that damage a log on purpose. False if no record is there.
pub fn replace(tree: &sled::Tree, sequence: u64, new: Option<&[u8]>) -> Result<bool, LogError> {
    if tree.get(event_key(sequence))?.is_some() {
        match new {
            Some(bytes) => tree.insert(event_key(sequence), bytes)?,
            None => tree.remove(event_key(sequence))?,
        };
        return Ok(true);
    }
    let Some((key, first, value)) = pack_holding(tree, sequence)? else {
        return Ok(false);
    };
    let mut records: Vec<Vec<u8>> = Vec::new();
    for record in unpack(first, &value) {
        records.push(value[record?.1].to_vec());
    }
    let Some(at) = usize::try_from(sequence - first)
        .ok()
        .filter(|&at| at < records.len())
    else {
        return Ok(false);
    };
    let mut batch = sled::Batch::default();
    batch.remove(&key);
    match new {
        Some(bytes) => {
            records[at] = bytes.to_vec();
            insert_packs(&mut batch, first, records.iter().map(Vec::as_slice));
        }
        None => {
            insert_packs(&mut batch, first, records[..at].iter().map(Vec::as_slice));
            let after = records[at + 1..].iter().map(Vec::as_slice);
            insert_packs(&mut batch, sequence + 1, after);
        }
    }
    tree.apply_batch(batch)?;
    Ok(true)
}
