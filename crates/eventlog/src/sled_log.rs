//! The log on sled, for one rules service on the local disk.
//!
//! Layout, one sled tree so that a batch is one atomic write:
//! - `e` + sequence (u64 big-endian) -> the record: `cassette.firewall.v1.Event`
//!   encoded with protobuf, `prev_hash` = SHA-256 of the previous record's bytes;
//! - `i` + instance id + `0x00` + revision (u64 big-endian) -> sequence (u64
//!   big-endian) + the record's hash, so verification can tell which of two
//!   records that no longer link was changed;
//! - `h` -> the head anchor: last sequence (u64 big-endian) + its record's hash,
//!   so that changing the last record is detected too;
//! - `s` + sequence (u64 big-endian) -> the signature over the head an append
//!   left (`cassette.firewall.v1.SignedHead`), for a signed append's last record.
//!
//! Instance ids never contain `0x00`, so an instance's index keys are contiguous
//! and ordered by revision.
//!
//! Durable means on the disk, not in the page cache: sled's own flush ends in
//! `sync_file_range`, which neither flushes the device's write cache nor the
//! file's metadata, so every append also waits for an `fdatasync` of sled's
//! data file. Readers see only records that fsync covered: a record written
//! but not yet synced is invisible to every read.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cassette_model::{Event, InstanceId};

use crate::chain::{self, Next, Verifier, MAX_SIGNED_RUN};
use crate::signing::{SignedHead, SigningKey, TrustedKeys};
use crate::{
    decode, u64_prefix, u64_suffix, Hash, Head, LogError, Record, Verification, GENESIS_HASH,
};

/// sled's data file in the log's directory: what is fsynced, and what says a
/// directory holds a log.
const DATA_FILE: &str = "db";

const EVENT: u8 = b'e';
const INDEX: u8 = b'i';
const SIGNATURE: u8 = b's';
const HEAD: &[u8] = b"h";

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
                    hash: chain::hash(&value),
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
        self.last_revision_through(instance, u64::MAX)
    }

    /// The instance's latest durable revision whose record is at most
    /// `sequence`, 0 if it has none.
    pub fn last_revision_through(
        &self,
        instance: &InstanceId,
        sequence: u64,
    ) -> Result<u64, LogError> {
        let last = self.durable_sequence().min(sequence);
        for entry in self.tree.scan_prefix(index_prefix(instance)).rev() {
            let (key, value) = entry?;
            if u64_prefix(&value) <= last {
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
        self.append_signed(events, None).await
    }

    /// [`EventLog::append`], with `signer`'s signature over the head it
    /// leaves stored in the same write. At most [`MAX_SIGNED_RUN`] events.
    pub async fn append_signed(
        &self,
        events: &[Event],
        signer: Option<&SigningKey>,
    ) -> Result<Head, LogError> {
        if events.is_empty() {
            return Ok(self.head());
        }
        if events.len() > MAX_SIGNED_RUN {
            return Err(LogError::TooLarge(format!(
                "{} events in one append; at most {MAX_SIGNED_RUN}",
                events.len()
            )));
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(LogError::Poisoned);
        }
        let head = {
            let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
            let (records, next) = chain::encode_batch(*head, events, |instance| {
                self.last_written_revision(instance).map(Some)
            })?;
            let mut batch = sled::Batch::default();
            for record in &records {
                let event = record.event;
                batch.insert(event_key(event.sequence).to_vec(), record.bytes.as_slice());
                batch.insert(
                    index_key(&event.instance_id, event.revision),
                    record.index_value(),
                );
            }
            batch.insert(HEAD, chain::anchor_value(next));
            if let Some(signer) = signer {
                batch.insert(
                    signature_key(next.sequence).to_vec(),
                    signer.sign(next).encode(),
                );
            }
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
        // Both on one blocking thread (sled's `flush_async` would hand the
        // flush to a thread of its own first: one more wake-up per append).
        let (db, file) = (self.db.clone(), self.data_file.clone());
        let synced = tokio::task::spawn_blocking(move || {
            db.flush().map_err(LogError::from)?;
            file.sync_data().map_err(LogError::Sync)
        })
        .await
        .unwrap_or_else(|e| Err(LogError::Sync(std::io::Error::other(e.to_string()))));
        if let Err(e) = synced {
            // After a failed write or fsync the page cache may hold data the
            // disk lost: nothing more is written, and the outcome is unknown.
            self.poison();
            return Err(e);
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

    /// Whether any append stored a signature (the log was written signed).
    pub fn is_signed(&self) -> Result<bool, LogError> {
        Ok(self
            .tree
            .scan_prefix([SIGNATURE])
            .next()
            .transpose()?
            .is_some())
    }

    /// The signature stored with record `sequence`, if an append ended there.
    pub fn signature(&self, sequence: u64) -> Result<Option<SignedHead>, LogError> {
        self.tree
            .get(signature_key(sequence))?
            .map(|v| {
                SignedHead::decode(sequence, &v)
                    .map_err(|reason| LogError::Corrupt { sequence, reason })
            })
            .transpose()
    }

    /// Walks the whole log and checks it: sequences without gaps, every record
    /// decodable and stored under its own sequence, every record's bytes
    /// matching the hash its successor (or, for the last, the head anchor)
    /// recorded. Stops at the first bad record and names it.
    pub fn verify(&self) -> Result<Verification, LogError> {
        self.verify_from(Head::default(), None, |_| Ok(()))
    }

    /// [`EventLog::verify`] of the records after `head` (which an earlier
    /// verification vouched for), of their signatures too with `trust`,
    /// handing each good record to `visit` in order (so one pass can both
    /// check and replay the log). A record `visit` refuses is reported as
    /// the first bad one, with its reason.
    pub fn verify_from(
        &self,
        head: Head,
        trust: Option<&TrustedKeys>,
        visit: impl FnMut(&Record) -> Result<(), String>,
    ) -> Result<Verification, LogError> {
        self.walk_newest_first(head, None, trust, visit)
    }

    /// [`EventLog::verify`] of the records up to `until` (which must end
    /// the walk, with `until`'s hash) rather than to the head: what a
    /// projection snapshot anchored at `until` stands on, checked while the
    /// log grows after it.
    pub fn verify_until(
        &self,
        until: Head,
        trust: Option<&TrustedKeys>,
        visit: impl FnMut(&Record) -> Result<(), String>,
    ) -> Result<Verification, LogError> {
        self.walk_newest_first(Head::default(), Some(until), trust, visit)
    }

    /// [`EventLog::walk`] from `head` to `until` (or to the end), with the
    /// newest trusted signature up to there checked first.
    fn walk_newest_first(
        &self,
        head: Head,
        until: Option<Head>,
        trust: Option<&TrustedKeys>,
        visit: impl FnMut(&Record) -> Result<(), String>,
    ) -> Result<Verification, LogError> {
        let through = until.map_or_else(|| self.durable_sequence(), |u| u.sequence);
        let vouched = match trust {
            Some(trust) => self.newest_trusted(head.sequence, through, trust)?,
            None => None,
        };
        self.walk(head, until, trust, vouched, visit)
    }

    /// The hash of record `sequence` as stored, if it is there and durable.
    pub fn record_hash(&self, sequence: u64) -> Result<Option<Hash>, LogError> {
        if sequence > self.durable_sequence() {
            return Ok(None);
        }
        Ok(self.tree.get(event_key(sequence))?.map(|v| chain::hash(&v)))
    }

    /// [`EventLog::verify_from`] with the newest signature already checked
    /// (`vouched`, if any): each signature after it is checked on the walk.
    pub fn verify_vouched(
        &self,
        head: Head,
        trust: Option<&TrustedKeys>,
        vouched: Option<SignedHead>,
        visit: impl FnMut(&Record) -> Result<(), String>,
    ) -> Result<Verification, LogError> {
        self.walk(head, None, trust, vouched, visit)
    }

    /// The walk of the verifications above: from `head` to `until` (its
    /// anchor) or to the end (the head anchor).
    fn walk(
        &self,
        head: Head,
        until: Option<Head>,
        trust: Option<&TrustedKeys>,
        vouched: Option<SignedHead>,
        mut visit: impl FnMut(&Record) -> Result<(), String>,
    ) -> Result<Verification, LogError> {
        let last = until.map_or(u64::MAX, |u| u.sequence);
        let after_vouched = vouched.as_ref().map_or(head.sequence, |s| s.head.sequence);
        let mut verifier = Verifier::from(head, trust).vouched(vouched);
        let first = head.sequence.saturating_add(1);
        // The signatures after the vouched one, read beside the records in
        // the same order.
        let mut signatures = self
            .tree
            .range(signature_key(after_vouched.saturating_add(1))..=signature_key(last))
            .peekable();
        for entry in self.tree.range(event_key(first)..=event_key(last)) {
            let (key, value) = entry?;
            let mut record = match sequence_of(&key) {
                Err(e) => {
                    let expected = verifier.expected();
                    return Ok(verifier.bad_record(expected, e.to_string()));
                }
                // A gap before a good record is found by `next`.
                Ok(sequence) => match decode(sequence, &value) {
                    Ok(record) => record,
                    Err(LogError::Corrupt { reason, .. }) => {
                        return Ok(verifier.bad_record(sequence, reason))
                    }
                    Err(e) => return Err(e),
                },
            };
            if trust.is_some() && record.event.sequence > after_vouched {
                let sequence = record.event.sequence;
                loop {
                    match signatures.peek() {
                        Some(Ok((key, _))) if u64_suffix(key) < sequence => {}
                        Some(Ok((key, value))) if u64_suffix(key) == sequence => {
                            record.signed = Some(SignedHead::decode(sequence, value));
                        }
                        Some(Err(_)) => {}
                        _ => break,
                    }
                    if let Some(Err(e)) = signatures.next() {
                        return Err(e.into());
                    }
                }
            }
            match verifier.next(record, &mut visit) {
                Next::Accepted => {}
                Next::Done(verification) => return Ok(verification),
                Next::Unlinked(unlinked) => {
                    let intact = match unlinked.previous() {
                        Some(previous) => self.intact(previous)?,
                        None => true,
                    };
                    return Ok(verifier.blame(unlinked, intact));
                }
            }
        }
        if until.is_some() {
            return Ok(verifier.finish(until));
        }
        let anchor = self.tree.get(HEAD)?.map(|anchor| {
            let (sequence, hash) = anchor.split_at(8.min(anchor.len()));
            Head {
                sequence: u64_suffix(sequence),
                hash: Hash::try_from(hash).unwrap_or([0; 32]),
            }
        });
        Ok(verifier.finish(anchor))
    }

    /// The newest signature after record `after` that `trust` accepts for
    /// the record it is stored with (checking at most
    /// [`chain::NEWEST_SIGNATURES_CHECKED`], newest first).
    fn newest_trusted(
        &self,
        after: u64,
        through: u64,
        trust: &TrustedKeys,
    ) -> Result<Option<SignedHead>, LogError> {
        let newest = self
            .tree
            .range(signature_key(after.saturating_add(1))..=signature_key(through))
            .rev()
            .take(chain::NEWEST_SIGNATURES_CHECKED);
        for entry in newest {
            let (key, value) = entry?;
            let sequence = u64_suffix(&key);
            let Ok(signed) = SignedHead::decode(sequence, &value) else {
                continue;
            };
            let Some(record) = self.tree.get(event_key(sequence))? else {
                continue;
            };
            let head = Head {
                sequence,
                hash: chain::hash(&record),
            };
            if trust.check(&signed, head).is_ok() {
                return Ok(Some(signed));
            }
        }
        Ok(None)
    }

    /// Removes every record after `sequence` (their index entries and
    /// signatures too) and makes `sequence` the head: how an operator
    /// recovers a log whose verification fails after `sequence`, with the
    /// service stopped. Returns how many records it removed. Refused when
    /// record `sequence` is missing (0 empties the log).
    pub fn remove_after(&self, sequence: u64) -> Result<u64, LogError> {
        let hash = match sequence {
            0 => GENESIS_HASH,
            _ => {
                let value =
                    self.tree
                        .get(event_key(sequence))?
                        .ok_or_else(|| LogError::Corrupt {
                            sequence,
                            reason: "missing: cannot end the log there".to_owned(),
                        })?;
                chain::hash(&value)
            }
        };
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for entry in self
            .tree
            .range(event_key(sequence + 1)..=event_key(u64::MAX))
        {
            let (key, _) = entry?;
            sequence_of(&key)?;
            batch.remove(key);
            removed += 1;
        }
        // The index entries that name them (decodable or not): the index
        // records each entry's sequence.
        for entry in self.tree.scan_prefix([INDEX]) {
            let (key, value) = entry?;
            if u64_prefix(&value) > sequence {
                batch.remove(key);
            }
        }
        for entry in self
            .tree
            .range(signature_key(sequence + 1)..=signature_key(u64::MAX))
        {
            batch.remove(entry?.0);
        }
        let head = Head { sequence, hash };
        if sequence == 0 {
            batch.remove(HEAD);
        } else {
            batch.insert(HEAD, chain::anchor_value(head));
        }
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        *self.head.lock().unwrap_or_else(|p| p.into_inner()) = head;
        self.durable.store(sequence, Ordering::Release);
        Ok(removed)
    }

    /// Whether record `sequence` still has the hash its index entry recorded
    /// (false when it is missing or does not decode: then it changed).
    pub fn intact(&self, sequence: u64) -> Result<bool, LogError> {
        let Some(value) = self.tree.get(event_key(sequence))? else {
            return Ok(false);
        };
        let Ok(record) = decode(sequence, &value) else {
            return Ok(false);
        };
        let recorded = self.recorded_hash(&record.event.instance_id, record.event.revision)?;
        Ok(recorded == Some(record.hash))
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
/// the log is dropped. A lock another process holds is [`LogError::InUse`].
fn open_db(config: sled::Config) -> Result<sled::Db, LogError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match config.open() {
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if std::time::Instant::now() >= deadline {
                    return Err(LogError::InUse(config.path.clone()));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            result => return Ok(result?),
        }
    }
}

fn event_key(sequence: u64) -> [u8; 9] {
    let mut key = [EVENT; 9];
    key[1..].copy_from_slice(&sequence.to_be_bytes());
    key
}

fn signature_key(sequence: u64) -> [u8; 9] {
    let mut key = [SIGNATURE; 9];
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

fn sequence_of(key: &[u8]) -> Result<u64, LogError> {
    match key {
        [EVENT, rest @ ..] if rest.len() == 8 => Ok(u64_suffix(rest)),
        _ => Err(LogError::Corrupt {
            sequence: 0,
            reason: format!("malformed record key {key:?}"),
        }),
    }
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

    /// Rewrites record `sequence` to link to `prev_hash` instead, with its
    /// index entry updated to its new hash: the record itself is consistent,
    /// only its link is wrong.
    pub fn relink(dir: &Path, sequence: u64, prev_hash: Hash) -> Result<(), LogError> {
        let tree = open(dir)?;
        let bytes = tree.get(event_key(sequence))?.ok_or(LogError::Corrupt {
            sequence,
            reason: "absent".into(),
        })?;
        let (bytes, record) = chain::relinked(sequence, &bytes, prev_hash)?;
        tree.insert(event_key(sequence), bytes)?;
        tree.insert(
            index_key(&record.event.instance_id, record.event.revision),
            chain::index_value(sequence, &record.hash),
        )?;
        tree.flush()?;
        Ok(())
    }

    /// Appends `event` as a writer with access to the store would: linked
    /// to the last record, with its index entry, the head anchor and
    /// `signed` (if any) in one write. Correctly linked: only a signature
    /// can tell it from a real append.
    pub fn append_forged(
        dir: &Path,
        event: &Event,
        signed: Option<&SignedHead>,
    ) -> Result<Head, LogError> {
        let log = EventLog::open(dir)?;
        let head = log.head();
        let (records, next) = chain::encode_batch(head, std::slice::from_ref(event), |i| {
            log.last_written_revision(i).map(Some)
        })?;
        let mut batch = sled::Batch::default();
        for record in &records {
            batch.insert(
                event_key(record.event.sequence).to_vec(),
                record.bytes.as_slice(),
            );
            batch.insert(
                index_key(&record.event.instance_id, record.event.revision),
                record.index_value(),
            );
        }
        batch.insert(HEAD, chain::anchor_value(next));
        if let Some(signed) = signed {
            batch.insert(signature_key(next.sequence).to_vec(), signed.encode());
        }
        log.tree.apply_batch(batch)?;
        log.flush()?;
        Ok(next)
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
#[path = "tests.rs"]
pub(crate) mod tests;
