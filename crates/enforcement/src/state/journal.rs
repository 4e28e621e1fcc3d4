//! The state journal's file format: a header naming the journal, then one
//! checksummed record per save, then zeros.
//!
//! The file is preallocated by writing zeros (so that an append changes no
//! metadata an `fdatasync` must flush) and written only by appending a record
//! after the last. Header: `CJOURN01`, the journal's id (16 bytes; the
//! snapshot it continues names it), the SHA-256 of both. Record: `CJRN`, the
//! payload's length (u32, little-endian), the record's index (u64,
//! little-endian, from 0), the SHA-256 of (journal id, index, length,
//! payload), then the payload.
//!
//! A crash can tear only the record being written, which was never
//! acknowledged (the ack waits for its fdatasync): a record that does not
//! check out ends the journal when no valid record follows it, and is damage
//! (the whole state untrusted) when one does.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"CJOURN01";
const RECORD_MAGIC: &[u8; 4] = b"CJRN";
pub(crate) const ID_LEN: usize = 16;
const HASH_LEN: usize = 32;
const HEADER_LEN: usize = MAGIC.len() + ID_LEN + HASH_LEN;
/// Marker, length, index, checksum.
const RECORD_HEADER_LEN: usize = RECORD_MAGIC.len() + 4 + 8 + HASH_LEN;
/// The journal's size on disk: a few thousand saves of small changes before
/// a compaction.
pub(crate) const JOURNAL_BYTES: usize = 1 << 20;
/// A journal file larger than this is not read (not one this code wrote).
pub(crate) const MAX_JOURNAL_BYTES: u64 = 16 << 20;

pub(crate) type JournalId = [u8; ID_LEN];

/// A new journal's id: unique to it, so that no record of another journal
/// (an older one, another table's) passes for one of its own.
pub(crate) fn new_id() -> JournalId {
    *uuid::Uuid::now_v7().as_bytes()
}

fn header(id: &JournalId) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_LEN);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(id);
    let hash = Sha256::digest(&bytes);
    bytes.extend_from_slice(&hash);
    bytes
}

fn record_hash(id: &JournalId, index: u64, payload: &[u8]) -> [u8; HASH_LEN] {
    let mut hasher = Sha256::new();
    hasher.update(id);
    hasher.update(index.to_le_bytes());
    hasher.update((payload.len() as u32).to_le_bytes());
    hasher.update(payload);
    hasher.finalize().into()
}

/// One record's bytes.
pub(crate) fn record(id: &JournalId, index: u64, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(RECORD_HEADER_LEN + payload.len());
    bytes.extend_from_slice(RECORD_MAGIC);
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&index.to_le_bytes());
    bytes.extend_from_slice(&record_hash(id, index, payload));
    bytes.extend_from_slice(payload);
    bytes
}

/// What a journal file holds for the snapshot that names `id`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Records<'a> {
    /// Another journal (the snapshot was replaced, and a crash came before
    /// its new journal was put in place): none of its records continue it.
    Stale,
    /// The records' payloads, in order.
    Valid(Vec<&'a [u8]>),
}

/// The records of a journal file's bytes, if they check out; damage (a bad
/// header, a bad record with a good one after it) is an error.
pub(crate) fn parse<'a>(bytes: &'a [u8], id: &JournalId) -> Result<Records<'a>, String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!("the journal is truncated at {} bytes", bytes.len()));
    }
    let (head, body) = bytes.split_at(HEADER_LEN);
    if !head.starts_with(MAGIC) {
        return Err("not an enforcer state journal (bad magic)".into());
    }
    let found: JournalId = head[MAGIC.len()..MAGIC.len() + ID_LEN]
        .try_into()
        .map_err(|_| "the journal header is short".to_owned())?;
    if header(&found) != head {
        return Err("the journal header's checksum does not match".into());
    }
    if found != *id {
        return Ok(Records::Stale);
    }
    let mut records = Vec::new();
    let mut at = 0;
    while let Some((payload, next)) = record_at(body, at, id, records.len() as u64) {
        records.push(payload);
        at = next;
    }
    // What follows is the tail: zeros, or the torn record of a crash. A
    // valid record in it means the bad one was damaged after it was written.
    let tail = &body[at..];
    if let Some(later) = (1..tail.len())
        .filter(|&q| tail[q..].starts_with(RECORD_MAGIC))
        .find(|&q| record_at(body, at + q, id, u64::MAX).is_some())
    {
        return Err(format!(
            "record {} (byte {}) is damaged, and a valid record follows it (byte {})",
            records.len(),
            HEADER_LEN + at,
            HEADER_LEN + at + later
        ));
    }
    Ok(Records::Valid(records))
}

/// The payload of the record at `at` and where the next one starts, if it
/// checks out and has index `index` (`u64::MAX`: any index).
fn record_at<'a>(
    body: &'a [u8],
    at: usize,
    id: &JournalId,
    index: u64,
) -> Option<(&'a [u8], usize)> {
    let head = body.get(at..at.checked_add(RECORD_HEADER_LEN)?)?;
    if !head.starts_with(RECORD_MAGIC) {
        return None;
    }
    let len = u32::from_le_bytes(head[4..8].try_into().ok()?) as usize;
    let found = u64::from_le_bytes(head[8..16].try_into().ok()?);
    if index != u64::MAX && found != index {
        return None;
    }
    let start = at + RECORD_HEADER_LEN;
    let payload = body.get(start..start.checked_add(len)?)?;
    (record_hash(id, found, payload) == head[16..]).then_some((payload, start + len))
}

/// An open journal, appended to by one process.
#[derive(Debug)]
pub(crate) struct Writer {
    file: File,
    id: JournalId,
    next_index: u64,
    /// Where the next record goes.
    offset: usize,
}

impl Writer {
    /// A new, empty journal in a temporary file in `dir` (header and zeros,
    /// fsynced), to be put in place by [`Writer::persist`] once the snapshot
    /// naming it is durable.
    pub(crate) fn create(dir: &Path, id: JournalId) -> std::io::Result<Pending> {
        let mut temp = tempfile::Builder::new()
            .prefix(".journal-")
            .tempfile_in(dir)?;
        let mut bytes = header(&id);
        bytes.resize(JOURNAL_BYTES, 0);
        temp.write_all(&bytes)?;
        temp.as_file().sync_all()?;
        Ok(Pending { temp, id })
    }

    pub(crate) fn fits(&self, payload_len: usize) -> bool {
        HEADER_LEN + self.offset + RECORD_HEADER_LEN + payload_len <= JOURNAL_BYTES
    }

    /// Appends one record and waits for it to be on disk (one fdatasync: the
    /// file's blocks are already allocated).
    pub(crate) fn append(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let bytes = record(&self.id, self.next_index, payload);
        self.file
            .write_all_at(&bytes, (HEADER_LEN + self.offset) as u64)?;
        self.file.sync_data()?;
        self.offset += bytes.len();
        self.next_index += 1;
        Ok(())
    }
}

/// A new journal not yet in place.
#[derive(Debug)]
pub(crate) struct Pending {
    temp: tempfile::NamedTempFile,
    id: JournalId,
}

impl Pending {
    pub(crate) fn id(&self) -> JournalId {
        self.id
    }

    /// Renames the journal to `path` and makes the rename durable.
    pub(crate) fn persist(self, path: &Path, dir: &Path) -> std::io::Result<Writer> {
        let file = self.temp.persist(path).map_err(|e| e.error)?;
        File::open(dir)?.sync_all()?;
        Ok(Writer {
            file,
            id: self.id,
            next_index: 0,
            offset: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(id: &JournalId, payloads: &[&[u8]]) -> Vec<u8> {
        let mut bytes = header(id);
        for (index, payload) in payloads.iter().enumerate() {
            bytes.extend(record(id, index as u64, payload));
        }
        bytes.resize(bytes.len() + 256, 0);
        bytes
    }

    #[test]
    fn records_read_back_in_order_and_the_zeros_end_them() {
        let id = new_id();
        let bytes = journal(&id, &[b"one", b"", b"three"]);
        assert_eq!(
            parse(&bytes, &id).unwrap(),
            Records::Valid(vec![&b"one"[..], b"", b"three"])
        );
        assert_eq!(
            parse(&header(&id), &id).unwrap(),
            Records::Valid(vec![]),
            "no room after the header: no records"
        );
    }

    #[test]
    fn another_journals_file_is_stale_and_its_records_are_not_taken() {
        let (ours, theirs) = (new_id(), new_id());
        assert_ne!(ours, theirs);
        let bytes = journal(&theirs, &[b"one"]);
        assert_eq!(parse(&bytes, &ours).unwrap(), Records::Stale);
        // Their record spliced after our header is not ours either.
        let mut spliced = header(&ours);
        spliced.extend_from_slice(&bytes[HEADER_LEN..]);
        assert_eq!(parse(&spliced, &ours).unwrap(), Records::Valid(vec![]));
    }

    #[test]
    fn a_torn_last_record_ends_the_journal_but_a_damaged_middle_one_is_refused() {
        let id = new_id();
        let bytes = journal(&id, &[b"first record", b"second record", b"third"]);
        let third = HEADER_LEN + 2 * RECORD_HEADER_LEN + 12 + 13;
        // The crash tore the third record: any prefix of it written.
        for written in 0..RECORD_HEADER_LEN + 5 {
            let mut torn = bytes.clone();
            torn[third + written..third + RECORD_HEADER_LEN + 5].fill(0);
            assert_eq!(
                parse(&torn, &id).unwrap(),
                Records::Valid(vec![&b"first record"[..], b"second record"]),
                "{written} bytes written"
            );
        }
        // A flipped byte in the second record, with the third intact after it.
        for at in HEADER_LEN + RECORD_HEADER_LEN + 12..third {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            let error = parse(&damaged, &id).unwrap_err();
            assert!(error.contains("record 1 "), "byte {at}: {error}");
        }
        // Any flipped byte of the header.
        for at in 0..HEADER_LEN {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x80;
            assert!(parse(&damaged, &id).is_err(), "byte {at}");
        }
        assert!(parse(&bytes[..HEADER_LEN - 1], &id).is_err());
    }
}
