//! The append-only firewall event log and its sled implementation.
//!
//! Only this crate touches sled. Everything else sees events: append a batch
//! (durable when the call returns), read one instance's events after a
//! revision (an index lookup), or scan the whole log in sequence order.
//!
//! Layout, one sled tree so that a batch is one atomic write:
//! - `e` + sequence (u64 big-endian) -> the record: `cassette.firewall.v1.Event`
//!   encoded with protobuf, `prev_hash` = SHA-256 of the previous record's bytes;
//! - `i` + instance id + `0x00` + revision (u64 big-endian) -> sequence (u64
//!   big-endian) + the record's hash, so verification can tell which of two
//!   records that no longer link was changed;
//! - `h` -> the head anchor: last sequence (u64 big-endian) + its record's hash,
//!   so that changing the last record is detected too.
//!
//! Instance ids never contain `0x00`, so an instance's index keys are contiguous
//! and ordered by revision.
//!
//! Durable means on the disk, not in the page cache: sled's own flush ends in
//! `sync_file_range`, which neither flushes the device's write cache nor the
//! file's metadata, so every append also waits for an `fdatasync` of sled's
//! data file. Readers see only records that fsync covered: a record written
//! but not yet synced is invisible to every read.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cassette_model::{Event, InstanceId};
use cassette_proto::{event_from_pb, event_to_pb, pb};
use prost::Message;
use sha2::{Digest, Sha256};

pub mod etcd;
mod etcd_shared;
mod log;

pub use log::Log;

/// SHA-256 of a stored record's bytes.
pub type Hash = [u8; 32];

/// The `prev_hash` of the first record.
pub const GENESIS_HASH: Hash = [0; 32];

/// sled's data file in the log's directory: what is fsynced, and what says a
/// directory holds a log.
const DATA_FILE: &str = "db";

const EVENT: u8 = b'e';
const INDEX: u8 = b'i';
const HEAD: &[u8] = b"h";

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("event log storage: {0}")]
    Storage(#[from] StorageError),
    #[error("event log record {sequence} is corrupt: {reason}")]
    Corrupt { sequence: u64, reason: String },
    #[error("append rejected: {0}")]
    OutOfOrder(String),
    #[error(
        "the event log failed an earlier write and accepts no more appends; restart to recover"
    )]
    Poisoned,
    #[error("event log fsync: {0}")]
    Sync(#[source] std::io::Error),
    /// Another writer appended after the head this append was decided
    /// against (the etcd log): nothing was written; catch up and decide again.
    #[error("another writer appended first: the head is {found}, not {expected}")]
    Conflict { expected: u64, found: u64 },
    /// The replicated store could not be reached or could not commit in time.
    #[error("the event log is unavailable: {0}")]
    Unavailable(String),
    /// The replicated store refused the write outright (its database is
    /// full, our credentials were refused): nothing was written.
    #[error("the event log refused the write: {0}")]
    Refused(String),
    #[error("append too large: {0}")]
    TooLarge(String),
}

/// An error from the storage engine, kept opaque so sled stays an implementation detail.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct StorageError(#[from] sled::Error);

impl From<sled::Error> for LogError {
    fn from(e: sled::Error) -> Self {
        LogError::Storage(StorageError(e))
    }
}

/// The last record: where the next append continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// 0 for an empty log.
    pub sequence: u64,
    /// The hash of the last record ([`GENESIS_HASH`] for an empty log).
    pub hash: Hash,
}

/// What [`EventLog::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Records checked and found good.
    pub events_checked: u64,
    /// The last good record.
    pub head: Head,
    /// The first bad record and why, if any.
    pub first_bad: Option<(u64, String)>,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// Hex of a hash, as audit views print it.
pub fn hex(hash: &[u8]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// One record as stored: the event, the hash it links to, and its own hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub event: Event,
    pub prev_hash: Vec<u8>,
    pub hash: Hash,
}

pub struct EventLog {
    db: sled::Db,
    tree: sled::Tree,
    /// The last record written (durable or not): where appends continue.
    head: Mutex<Head>,
    /// The last sequence an fsync covered: what readers may see.
    durable: AtomicU64,
    /// sled's data file, for `fdatasync` (fsync syncs the file, whichever
    /// descriptor asks).
    data_file: Arc<File>,
    poisoned: AtomicBool,
}

impl EventLog {
    /// Opens (or creates) the log in `dir`. Fails if another process has it open.
    pub fn open(dir: &Path) -> Result<Self, LogError> {
        let db = open_db(
            sled::Config::new()
                .path(dir)
                .mode(sled::Mode::HighThroughput),
        )?;
        let tree = db.open_tree("events")?;
        // What sled recovered may still be only in the page cache (a crash of
        // the process, not of the machine): sync it before anyone reads it, and
        // the directory so the data file's entry is durable too.
        let data_file = File::open(dir.join(DATA_FILE)).map_err(LogError::Sync)?;
        data_file.sync_data().map_err(LogError::Sync)?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(LogError::Sync)?;
        let head = match tree.scan_prefix([EVENT]).next_back() {
            None => Head {
                sequence: 0,
                hash: GENESIS_HASH,
            },
            Some(entry) => {
                let (key, value) = entry?;
                Head {
                    sequence: sequence_of(&key)?,
                    hash: hash(&value),
                }
            }
        };
        Ok(Self {
            db,
            tree,
            durable: AtomicU64::new(head.sequence),
            head: Mutex::new(head),
            data_file: Arc::new(data_file),
            poisoned: AtomicBool::new(false),
        })
    }

    /// Whether `dir` holds a log (opening one where there is none creates it).
    pub fn exists(dir: &Path) -> bool {
        dir.join(DATA_FILE).is_file()
    }

    /// The last sequence on stable storage.
    pub fn durable_sequence(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    pub fn head(&self) -> Head {
        *self.head.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The instance's latest durable revision, 0 if it has none.
    pub fn last_revision(&self, instance: &InstanceId) -> Result<u64, LogError> {
        let durable = self.durable_sequence();
        for entry in self.tree.scan_prefix(index_prefix(instance)).rev() {
            let (key, value) = entry?;
            if u64_prefix(&value) <= durable {
                return Ok(u64_suffix(&key));
            }
        }
        Ok(0)
    }

    /// The instance's latest written revision (durable or not), for appends.
    fn last_written_revision(&self, instance: &InstanceId) -> Result<u64, LogError> {
        match self.tree.scan_prefix(index_prefix(instance)).next_back() {
            None => Ok(0),
            Some(entry) => {
                let (key, _) = entry?;
                Ok(u64_suffix(&key))
            }
        }
    }

    /// Appends `events` in one atomic write and returns once they are on disk.
    ///
    /// The events must continue the log: sequences from `head().sequence + 1`
    /// and, per instance, revisions from its last revision + 1. Anything else is
    /// refused with [`LogError::OutOfOrder`] and nothing is written.
    pub async fn append(&self, events: &[Event]) -> Result<Head, LogError> {
        if events.is_empty() {
            return Ok(self.head());
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(LogError::Poisoned);
        }
        let head = {
            let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
            let mut batch = sled::Batch::default();
            let mut next = *head;
            let mut revisions: HashMap<&InstanceId, u64> = HashMap::new();
            for event in events {
                if event.sequence != next.sequence + 1 {
                    return Err(LogError::OutOfOrder(format!(
                        "sequence {} does not follow {}",
                        event.sequence, next.sequence
                    )));
                }
                let last = match revisions.get(&event.instance_id) {
                    Some(r) => *r,
                    None => self.last_written_revision(&event.instance_id)?,
                };
                if event.revision != last + 1 {
                    return Err(LogError::OutOfOrder(format!(
                        "instance {} revision {} does not follow {}",
                        event.instance_id, event.revision, last
                    )));
                }
                revisions.insert(&event.instance_id, event.revision);
                let bytes = event_to_pb(event, &next.hash).encode_to_vec();
                let record_hash = hash(&bytes);
                let mut indexed = event.sequence.to_be_bytes().to_vec();
                indexed.extend_from_slice(&record_hash);
                batch.insert(event_key(event.sequence).to_vec(), bytes.as_slice());
                batch.insert(index_key(&event.instance_id, event.revision), indexed);
                next = Head {
                    sequence: event.sequence,
                    hash: record_hash,
                };
            }
            let mut anchor = next.sequence.to_be_bytes().to_vec();
            anchor.extend_from_slice(&next.hash);
            batch.insert(HEAD, anchor);
            if let Err(e) = self.tree.apply_batch(batch) {
                self.poison();
                return Err(e.into());
            }
            *head = next;
            next
        };
        // Durable before acknowledged: sled writes the batch out, then one
        // fdatasync puts it (and everything before it) on the disk. The caller
        // batches concurrent mutations, so the batch shares this one sync.
        if let Err(e) = self.db.flush_async().await {
            self.poison();
            return Err(e.into());
        }
        let file = self.data_file.clone();
        let synced = tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r);
        if let Err(e) = synced {
            // After a failed fsync the page cache may hold data the disk
            // lost: nothing more is written, and the outcome is unknown.
            self.poison();
            return Err(LogError::Sync(e));
        }
        self.durable.fetch_max(head.sequence, Ordering::AcqRel);
        Ok(head)
    }

    fn poison(&self) {
        tracing::error!("event log write failed; refusing further appends");
        self.poisoned.store(true, Ordering::Release);
    }

    /// The instance's events with `after_revision < revision <= until_revision`,
    /// in revision order (an index lookup, not a scan of the log).
    pub fn read_instance(
        &self,
        instance: &InstanceId,
        after_revision: u64,
        until_revision: u64,
    ) -> Result<Vec<Event>, LogError> {
        let records = self.read_instance_records(instance, after_revision, until_revision)?;
        Ok(records.into_iter().map(|r| r.event).collect())
    }

    /// [`EventLog::read_instance`] with each record's hashes.
    pub fn read_instance_records(
        &self,
        instance: &InstanceId,
        after_revision: u64,
        until_revision: u64,
    ) -> Result<Vec<Record>, LogError> {
        if until_revision <= after_revision {
            return Ok(Vec::new());
        }
        let start = index_key(instance, after_revision + 1);
        let end = index_key(instance, until_revision);
        let durable = self.durable_sequence();
        let mut events = Vec::new();
        for entry in self.tree.range(start..=end) {
            let (_, seq) = entry?;
            let sequence = u64_prefix(&seq);
            if sequence > durable {
                break; // not yet on disk: invisible
            }
            let value = self
                .tree
                .get(event_key(sequence))?
                .ok_or_else(|| LogError::Corrupt {
                    sequence,
                    reason: format!("indexed for instance {instance} but missing"),
                })?;
            events.push(decode(sequence, &value)?);
        }
        Ok(events)
    }

    /// Every durable record with sequence > `after_sequence`, in sequence order.
    pub fn scan(&self, after_sequence: u64) -> impl Iterator<Item = Result<Record, LogError>> + '_ {
        let start = event_key(after_sequence.saturating_add(1));
        let end = event_key(u64::MAX);
        let durable = self.durable_sequence();
        self.tree
            .range(start..=end)
            .map_while(move |entry| match entry {
                Err(e) => Some(Err(e.into())),
                Ok((key, value)) => match sequence_of(&key) {
                    Err(e) => Some(Err(e)),
                    // Not yet on disk: invisible, and so is everything after it.
                    Ok(sequence) if sequence > durable => None,
                    Ok(sequence) => Some(decode(sequence, &value)),
                },
            })
    }

    /// Walks the whole log and checks it: sequences without gaps, every record
    /// decodable and stored under its own sequence, every record's bytes
    /// matching the hash its successor (or, for the last, the head anchor)
    /// recorded. Stops at the first bad record and names it.
    pub fn verify(&self) -> Result<Verification, LogError> {
        self.verify_each(|_| Ok(()))
    }

    /// [`EventLog::verify`], handing each good record to `visit` in order (so
    /// one pass can both check and replay the log). A record `visit` refuses
    /// is reported as the first bad one, with its reason.
    pub fn verify_each(
        &self,
        mut visit: impl FnMut(&Record) -> Result<(), String>,
    ) -> Result<Verification, LogError> {
        let mut checked = 0u64;
        let mut previous = Head {
            sequence: 0,
            hash: GENESIS_HASH,
        };
        let mut previous_event: Option<(InstanceId, u64)> = None;
        let bad = |sequence: u64, reason: String, checked: u64, head: Head| Verification {
            events_checked: checked,
            head,
            first_bad: Some((sequence, reason)),
        };
        for entry in self.tree.scan_prefix([EVENT]) {
            let (key, value) = entry?;
            let sequence = match sequence_of(&key) {
                Ok(sequence) => sequence,
                Err(e) => return Ok(bad(previous.sequence + 1, e.to_string(), checked, previous)),
            };
            if sequence != previous.sequence + 1 {
                let reason = format!("missing: the next record is {sequence}");
                return Ok(bad(previous.sequence + 1, reason, checked, previous));
            }
            let record = match decode(sequence, &value) {
                Ok(record) => record,
                Err(LogError::Corrupt { reason, .. }) => {
                    return Ok(bad(sequence, reason, checked, previous))
                }
                Err(e) => return Err(e),
            };
            if record.prev_hash != previous.hash {
                // Which of the two changed? The index recorded each record's hash.
                let recorded = match &previous_event {
                    Some((instance, revision)) => self.recorded_hash(instance, *revision)?,
                    None => None,
                };
                return Ok(if sequence == 1 {
                    bad(1, "does not start the chain".into(), checked, previous)
                } else if recorded.is_some_and(|h| h == previous.hash) {
                    let reason = format!("does not link to record {}", previous.sequence);
                    bad(sequence, reason, checked, previous)
                } else {
                    let reason = "its content does not match its recorded hash".to_owned();
                    bad(previous.sequence, reason, checked - 1, previous)
                });
            }
            if let Err(reason) = visit(&record) {
                return Ok(bad(sequence, reason, checked, previous));
            }
            checked += 1;
            previous = Head {
                sequence,
                hash: record.hash,
            };
            previous_event = Some((record.event.instance_id.clone(), record.event.revision));
        }
        if let Some(anchor) = self.tree.get(HEAD)? {
            let (sequence, hash) = anchor.split_at(8.min(anchor.len()));
            let sequence = u64_suffix(sequence);
            if sequence > previous.sequence {
                let reason = format!(
                    "missing: the log ends at {} but its head is {sequence}",
                    previous.sequence
                );
                return Ok(bad(previous.sequence + 1, reason, checked, previous));
            }
            if sequence == previous.sequence && hash != previous.hash {
                let reason = "its content does not match the head hash".to_owned();
                return Ok(bad(sequence, reason, checked - 1, previous));
            }
        }
        Ok(Verification {
            events_checked: checked,
            head: previous,
            first_bad: None,
        })
    }

    /// The hash the index recorded for an instance's revision, if any.
    fn recorded_hash(
        &self,
        instance: &InstanceId,
        revision: u64,
    ) -> Result<Option<Hash>, LogError> {
        Ok(self
            .tree
            .get(index_key(instance, revision))?
            .and_then(|v| v.get(8..40).and_then(|h| Hash::try_from(h).ok())))
    }

    /// Flushes everything to disk (appends already do; this is for shutdown).
    pub fn flush(&self) -> Result<(), LogError> {
        self.db.flush()?;
        Ok(())
    }
}

/// Opens sled's database, waiting a moment for a lock that a log closed in
/// this process may still hold: sled's flusher thread lets it go just after
/// the log is dropped. A lock another process holds stays an error.
fn open_db(config: sled::Config) -> Result<sled::Db, LogError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            result => return Ok(result?),
        }
    }
}

fn hash(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

fn event_key(sequence: u64) -> [u8; 9] {
    let mut key = [EVENT; 9];
    key[1..].copy_from_slice(&sequence.to_be_bytes());
    key
}

fn index_prefix(instance: &InstanceId) -> Vec<u8> {
    let mut key = Vec::with_capacity(instance.as_str().len() + 10);
    key.push(INDEX);
    key.extend_from_slice(instance.as_str().as_bytes());
    key.push(0);
    key
}

fn index_key(instance: &InstanceId, revision: u64) -> Vec<u8> {
    let mut key = index_prefix(instance);
    key.extend_from_slice(&revision.to_be_bytes());
    key
}

fn u64_suffix(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[8 - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    u64::from_be_bytes(buf)
}

fn u64_prefix(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[..n].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(buf)
}

fn sequence_of(key: &[u8]) -> Result<u64, LogError> {
    match key {
        [EVENT, rest @ ..] if rest.len() == 8 => Ok(u64_suffix(rest)),
        _ => Err(LogError::Corrupt {
            sequence: 0,
            reason: format!("malformed record key {key:?}"),
        }),
    }
}

/// Decodes the record stored under `sequence`, checking every value as
/// strictly as a request: a corrupt record is an error naming it, never a panic.
pub fn decode(sequence: u64, bytes: &[u8]) -> Result<Record, LogError> {
    let corrupt = |reason: String| LogError::Corrupt { sequence, reason };
    let stored = pb::Event::decode(bytes).map_err(|e| corrupt(format!("undecodable: {e}")))?;
    if stored.sequence != sequence {
        return Err(corrupt(format!(
            "stored under sequence {sequence} but says {}",
            stored.sequence
        )));
    }
    let event = event_from_pb(&stored).map_err(|e| corrupt(e.to_string()))?;
    Ok(Record {
        event,
        prev_hash: stored.prev_hash,
        hash: hash(bytes),
    })
}

/// Tools that damage a closed log on purpose, to test that verification
/// notices. Never used by the services.
#[doc(hidden)]
pub mod tamper {
    use super::*;

    fn open(dir: &Path) -> Result<sled::Tree, LogError> {
        Ok(open_db(sled::Config::new().path(dir))?.open_tree("events")?)
    }

    /// Flips one bit in the middle of record `sequence`'s stored bytes.
    pub fn flip_bit(dir: &Path, sequence: u64) -> Result<(), LogError> {
        let tree = open(dir)?;
        let mut bytes = tree
            .get(event_key(sequence))?
            .ok_or(LogError::Corrupt {
                sequence,
                reason: "absent".into(),
            })?
            .to_vec();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        tree.insert(event_key(sequence), bytes)?;
        tree.flush()?;
        Ok(())
    }

    /// Removes record `sequence` (its index entry stays, dangling).
    pub fn delete(dir: &Path, sequence: u64) -> Result<(), LogError> {
        let tree = open(dir)?;
        tree.remove(event_key(sequence))?;
        tree.flush()?;
        Ok(())
    }

    /// Exchanges the stored bytes of two records.
    pub fn swap(dir: &Path, a: u64, b: u64) -> Result<(), LogError> {
        let tree = open(dir)?;
        let (va, vb) = (tree.get(event_key(a))?, tree.get(event_key(b))?);
        if let (Some(va), Some(vb)) = (va, vb) {
            tree.insert(event_key(a), vb)?;
            tree.insert(event_key(b), va)?;
        }
        tree.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
