//! The log on sled, for one rules service on the local disk.
//!
//! Layout, one sled tree so that a batch is one atomic write:
//! - the records, in packs of consecutive records under `p` + the first
//!   one's sequence (u64 big-endian), or one per `e` + sequence key in logs
//!   written before packs (see `sled_records.rs`). A record is
//!   `cassette.firewall.v1.Event` encoded with protobuf (in the log's
//!   [`RecordEncoding`]: records written before the compact one stay as they
//!   were), `prev_hash` = SHA-256 of the previous record's bytes;
//! - `h` -> the head anchor: last sequence (u64 big-endian) + its record's hash,
//!   so that changing the last record is detected too;
//! - `s` + sequence (u64 big-endian) -> the signature over the head an append
//!   left (`cassette.firewall.v1.SignedHead`), for a signed append's last record.
//!
//! Each instance's revisions are indexed in memory ([`InstanceIndex`], with a
//! checkpoint file beside sled's): logs written before kept that index in
//! sled as `i` + instance id + `0x00` + revision keys, which opening such a
//! log removes.
//!
//! Durable means on the disk, not in the page cache: sled's own flush ends in
//! `sync_file_range`, which neither flushes the device's write cache nor the
//! file's metadata, so every append also waits for an `fdatasync` of sled's
//! data file. Readers see only records that fsync covered: a record written
//! but not yet synced is invisible to every read.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use cassette_model::{Event, InstanceId};

use crate::background::{self, Background};
use crate::chain::{self, Next, Verifier, MAX_SIGNED_RUN};
use crate::instance_index::{self, IndexCopy, Indexed, InstanceIndex, CHECKPOINT_EVERY};
use crate::signing::{SignedHead, SigningKey, TrustedKeys};
use crate::sled_records::{self as records, insert_packs};
use crate::{
    decode, u64_suffix, Hash, Head, LogError, Record, RecordEncoding, Verification, GENESIS_HASH,
};

/// sled's data file in the log's directory: what is fsynced, and what says a
/// directory holds a log.
const DATA_FILE: &str = "db";

/// The instance index's keys in logs written before it moved to memory.
const OLD_INDEX: u8 = b'i';
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
    dir: PathBuf,
    /// Every record written (durable or not), by instance and revision.
    index: Arc<RwLock<InstanceIndex>>,
    /// The anchor of the last index checkpoint written or claimed.
    checkpointed: AtomicU64,
    /// The index checkpoint being written in the background, if any.
    checkpointing: Mutex<Option<Background<()>>>,
    /// The thread removing the index keys of an earlier layout, and its stop.
    old_index_removal: Mutex<Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>>,
    /// How appends spell their records (reads take either).
    encoding: RecordEncoding,
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.end_old_index_removal(true);
        self.end_checkpointing();
    }
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
        let head = match records::last(&tree)? {
            None => Head {
                sequence: 0,
                hash: GENESIS_HASH,
            },
            Some(last) => Head {
                sequence: last.sequence,
                hash: chain::hash(last.bytes()),
            },
        };
        let (index, checkpointed) = index_records(&tree, dir)?;
        let log = Self {
            db,
            tree,
            durable: AtomicU64::new(head.sequence),
            head: Mutex::new(head),
            data_file: Arc::new(data_file),
            poisoned: AtomicBool::new(false),
            dir: dir.to_owned(),
            index: Arc::new(RwLock::new(index)),
            checkpointed: AtomicU64::new(checkpointed),
            checkpointing: Mutex::new(None),
            old_index_removal: Mutex::new(None),
            encoding: RecordEncoding::Compact,
        };
        // A long walk to index (a log written before the checkpoint existed,
        // or a crash long after the last one) is not made twice.
        if head.sequence >= checkpointed.saturating_add(CHECKPOINT_EVERY) {
            log.checkpoint()?;
        }
        log.remove_old_index()?;
        Ok(log)
    }

    /// Appends from now on store their records in `encoding` (compact
    /// unless told); the log reads records in either, old and new alike.
    pub fn with_record_encoding(mut self, encoding: RecordEncoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// Removes, on a thread of its own, the `i` keys a log written before
    /// the index moved to memory holds (14 s for 1,000,000 on this VM: not
    /// something a start waits for). Stopped when the log is dropped; the
    /// next open goes on.
    fn remove_old_index(&self) -> Result<(), LogError> {
        if self.tree.scan_prefix([OLD_INDEX]).next().is_none() {
            return Ok(());
        }
        let (tree, stop) = (self.tree.clone(), Arc::new(AtomicBool::new(false)));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("old-index-removal".to_owned())
            .spawn(move || match remove_old_index_keys(&tree, &stopping) {
                Ok((removed, done)) => tracing::info!(
                    removed,
                    done,
                    "removed the instance index keys a log written before kept in sled"
                ),
                Err(error) => tracing::warn!(%error, "removing the old instance index keys"),
            })
            .map_err(LogError::Sync)?;
        *self
            .old_index_removal
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((stop, thread));
        Ok(())
    }

    /// Waits for the removal of the old index keys to end, if one runs,
    /// stopping it first with `stop`.
    fn end_old_index_removal(&self, stop: bool) {
        let removal = self
            .old_index_removal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((stopping, thread)) = removal {
            stopping.store(stop, Ordering::Release);
            let _ = thread.join();
        }
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, InstanceIndex> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
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
        Ok(self.index().last_revision_through(instance, last))
    }

    /// The instance's latest written revision (durable or not), for appends.
    fn last_written_revision(&self, instance: &InstanceId) -> Result<u64, LogError> {
        Ok(self.index().last_revision(instance))
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
            let (records, next) = chain::encode_batch(*head, events, self.encoding, |instance| {
                self.last_written_revision(instance).map(Some)
            })?;
            let signed = signer.map(|signer| signer.sign(next));
            let batch = append_batch(*head, &records, next, signed.as_ref());
            if let Err(e) = self.tree.apply_batch(batch) {
                self.poison();
                return Err(e.into());
            }
            let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
            for record in &records {
                let event = record.event;
                index.insert(&event.instance_id, event.revision, event.sequence);
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
        self.checkpoint_when_due(head);
        Ok(head)
    }

    /// Writes an index checkpoint anchored at `head` (durable) in the
    /// background, once [`CHECKPOINT_EVERY`] events followed the last and
    /// the one before is written.
    fn checkpoint_when_due(&self, head: Head) {
        let last = self.checkpointed.load(Ordering::Acquire);
        if head.sequence < last.saturating_add(CHECKPOINT_EVERY) {
            return;
        }
        let mut checkpointing = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        if checkpointing.as_ref().is_some_and(|c| !c.is_finished())
            || self
                .checkpointed
                .compare_exchange(last, head.sequence, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        let (index, dir) = (self.index.clone(), self.dir.clone());
        // A copy, so that appends wait for a slice of a copy at most, never
        // for the encoding.
        let copy = move || InstanceIndex::copy_of(&index);
        let write = move |copy: IndexCopy| {
            if let Err(error) = copy.checkpoint(&dir, head) {
                tracing::warn!(%error, sequence = head.sequence, "could not write the instance index checkpoint");
            }
        };
        match background::spawn("index-checkpoint", copy, write) {
            Ok(started) => *checkpointing = Some(started),
            Err(error) => {
                tracing::warn!(%error, "could not start writing the instance index checkpoint");
            }
        }
    }

    /// Waits for the index checkpoint being written in the background, if any.
    fn end_checkpointing(&self) {
        let started = self
            .checkpointing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(started) = started {
            started.join();
        }
    }

    /// Writes an index checkpoint anchored at the durable head, if every
    /// record written is durable.
    fn checkpoint(&self) -> Result<(), LogError> {
        let head = self.head();
        if head.sequence != self.durable_sequence() {
            return Ok(());
        }
        InstanceIndex::copy_of(&self.index)
            .checkpoint(&self.dir, head)
            .map_err(LogError::Sync)?;
        self.checkpointed.fetch_max(head.sequence, Ordering::AcqRel);
        Ok(())
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
        // Records not yet on disk are invisible.
        let indexed = self.index().sequences(
            instance,
            after_revision,
            until_revision,
            self.durable_sequence(),
        );
        let mut events = Vec::with_capacity(indexed.len());
        for (revision, indexed) in (after_revision + 1..).zip(indexed) {
            let sequence = match indexed {
                Indexed::At(sequence) => sequence,
                Indexed::Missing(revision) => {
                    return Err(LogError::MissingRevision {
                        instance: instance.clone(),
                        revision,
                    })
                }
            };
            let corrupt = |reason: String| LogError::Corrupt { sequence, reason };
            let stored = records::get(&self.tree, sequence)?
                .ok_or_else(|| corrupt(format!("indexed for instance {instance} but missing")))?;
            let record = decode(sequence, stored.bytes())?;
            if record.event.instance_id != *instance || record.event.revision != revision {
                return Err(corrupt(format!(
                    "indexed as instance {instance}'s revision {revision} but holds {}'s revision {}",
                    record.event.instance_id, record.event.revision
                )));
            }
            events.push(record);
        }
        Ok(events)
    }

    /// Every durable record with sequence > `after_sequence`, in sequence order.
    pub fn scan(&self, after_sequence: u64) -> impl Iterator<Item = Result<Record, LogError>> + '_ {
        let durable = self.durable_sequence();
        // Not yet on disk: invisible.
        records::range(&self.tree, after_sequence.saturating_add(1), durable)
            .map(|stored| stored.and_then(|s| decode(s.sequence, s.bytes())))
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

    /// Record `sequence`'s bytes as stored (a `cassette.firewall.v1.Event`
    /// in either encoding, what its hash covers), if it is there and durable.
    pub fn stored_record(&self, sequence: u64) -> Result<Option<Vec<u8>>, LogError> {
        Ok(self.durable_record(sequence)?.map(|s| s.bytes().to_vec()))
    }

    /// The hash of record `sequence` as stored, if it is there and durable.
    pub fn record_hash(&self, sequence: u64) -> Result<Option<Hash>, LogError> {
        Ok(self
            .durable_record(sequence)?
            .map(|s| chain::hash(s.bytes())))
    }

    fn durable_record(&self, sequence: u64) -> Result<Option<records::Stored>, LogError> {
        if sequence > self.durable_sequence() {
            return Ok(None);
        }
        records::get(&self.tree, sequence)
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
        for stored in records::range(&self.tree, first, last) {
            // A gap before a good record is found by `next`.
            let decoded = stored.and_then(|s| decode(s.sequence, s.bytes()));
            let mut record = match decoded {
                Ok(record) => record,
                // A malformed key names no sequence: the one expected.
                Err(LogError::Corrupt {
                    sequence: 0,
                    reason,
                }) => {
                    let expected = verifier.expected();
                    return Ok(verifier.bad_record(expected, reason));
                }
                Err(LogError::Corrupt { sequence, reason }) => {
                    return Ok(verifier.bad_record(sequence, reason))
                }
                Err(e) => return Err(e),
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
            self.correct_index(&record);
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
        Ok(verifier.finish(self.stored_anchor()?))
    }

    /// The head anchor as stored (a malformed one reads as a hash of zeros,
    /// which no record has).
    fn stored_anchor(&self) -> Result<Option<Head>, LogError> {
        Ok(self.tree.get(HEAD)?.map(|anchor| {
            let (sequence, hash) = anchor.split_at(8.min(anchor.len()));
            Head {
                sequence: u64_suffix(sequence),
                hash: Hash::try_from(hash).unwrap_or([0; 32]),
            }
        }))
    }

    /// Makes the index say what a record walked says of itself, should a
    /// checkpoint have said otherwise (the records are the truth; every
    /// start walks them all, the ones before a projection snapshot's anchor
    /// before any read reaches them).
    fn correct_index(&self, record: &Record) {
        let (event, sequence) = (&record.event, record.event.sequence);
        if self
            .index()
            .holds(&event.instance_id, event.revision, sequence)
        {
            return;
        }
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        if index.correct(&event.instance_id, event.revision, sequence) {
            tracing::warn!(
                instance_id = %event.instance_id,
                revision = event.revision,
                sequence,
                "the instance index did not hold this record: corrected from the log"
            );
        }
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
            let Some(record) = records::get_readable(&self.tree, sequence)? else {
                continue;
            };
            let head = Head {
                sequence,
                hash: chain::hash(record.bytes()),
            };
            if trust.check(&signed, head).is_ok() {
                return Ok(Some(signed));
            }
        }
        Ok(None)
    }

    /// Removes every record after `sequence` (their index entries and
    /// signatures too, and the index checkpoint) and makes `sequence` the head: how an operator
    /// recovers a log whose verification fails after `sequence`, with the
    /// service stopped. Returns how many records it removed. Refused when
    /// record `sequence` is missing (0 empties the log).
    pub fn remove_after(&self, sequence: u64) -> Result<u64, LogError> {
        let hash = match sequence {
            0 => GENESIS_HASH,
            _ => {
                let stored =
                    records::get(&self.tree, sequence)?.ok_or_else(|| LogError::Corrupt {
                        sequence,
                        reason: "missing: cannot end the log there".to_owned(),
                    })?;
                chain::hash(stored.bytes())
            }
        };
        let mut batch = sled::Batch::default();
        let removed = records::remove_after(&self.tree, &mut batch, sequence)?;
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
        // The checkpoint may be anchored after `sequence`: gone before the
        // records are (it is only a shortcut), and none being written.
        self.end_checkpointing();
        instance_index::CHECKPOINT
            .remove(&self.dir)
            .map_err(LogError::Sync)?;
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        let mut head_now = self.head.lock().unwrap_or_else(|p| p.into_inner());
        self.index
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .truncate_after(sequence);
        *head_now = head;
        self.durable.store(sequence, Ordering::Release);
        self.checkpointed.store(sequence, Ordering::Release);
        drop(head_now);
        Ok(removed)
    }

    /// Whether record `sequence` is intact when the record after it does not
    /// link to it: false when that next record is vouched for by its own
    /// successor (whose `prev_hash` is its hash; for the last record, the
    /// head anchor), as then it is as written and `sequence` changed.
    pub fn intact(&self, sequence: u64) -> Result<bool, LogError> {
        let next = sequence + 1;
        let Some(next_stored) = records::get_readable(&self.tree, next)? else {
            return Ok(true);
        };
        let next_hash = chain::hash(next_stored.bytes());
        let vouched = match records::get_readable(&self.tree, next + 1)? {
            Some(after) => decode(next + 1, after.bytes()).is_ok_and(|r| r.prev_hash == next_hash),
            None => {
                self.stored_anchor()?
                    == Some(Head {
                        sequence: next,
                        hash: next_hash,
                    })
            }
        };
        Ok(!vouched)
    }

    /// Flushes everything to disk (appends already do; this is for
    /// shutdown), with an index checkpoint.
    pub fn flush(&self) -> Result<(), LogError> {
        self.db.flush()?;
        // Not after this one: an older checkpoint never replaces it.
        self.end_checkpointing();
        self.checkpoint()
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

/// One append's write, for one atomic batch: its records (continuing
/// `head`) in packs, the head anchor it leaves (`next`) and the signature
/// over that, if any.
fn append_batch(
    head: Head,
    records: &[chain::Encoded<'_>],
    next: Head,
    signed: Option<&SignedHead>,
) -> sled::Batch {
    let mut batch = sled::Batch::default();
    let stored = records.iter().map(|r| r.bytes.as_slice());
    insert_packs(&mut batch, head.sequence + 1, stored);
    batch.insert(HEAD, chain::anchor_value(next));
    if let Some(signed) = signed {
        batch.insert(signature_key(next.sequence).to_vec(), signed.encode());
    }
    batch
}

fn signature_key(sequence: u64) -> [u8; 9] {
    let mut key = [SIGNATURE; 9];
    key[1..].copy_from_slice(&sequence.to_be_bytes());
    key
}

/// Removes the `i` keys of the earlier layout, 10,000 per write, until none
/// is left or `stop`: after each write it rests four times as long as the
/// write took, so that a start's replay and the appends keep most of sled.
/// How many it removed, and whether none is left.
fn remove_old_index_keys(tree: &sled::Tree, stop: &AtomicBool) -> Result<(u64, bool), sled::Error> {
    let mut removed = 0;
    let mut rest = std::time::Duration::ZERO;
    loop {
        let resting = std::time::Instant::now() + rest;
        while std::time::Instant::now() < resting && !stop.load(Ordering::Acquire) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if stop.load(Ordering::Acquire) {
            return Ok((removed, false));
        }
        let started = std::time::Instant::now();
        let mut batch = sled::Batch::default();
        let mut keys = 0;
        for entry in tree.scan_prefix([OLD_INDEX]).take(10_000) {
            batch.remove(entry?.0);
            keys += 1;
        }
        if keys == 0 {
            tree.flush()?;
            return Ok((removed, true));
        }
        tree.apply_batch(batch)?;
        removed += keys;
        rest = (started.elapsed() * 4).min(std::time::Duration::from_secs(1));
    }
}

/// The instance index of the records in `tree`: the checkpoint in `dir`
/// if it may be used, then every record after it (a record that does not
/// decode is left out, for verification to name). Returns the index and
/// the sequence its checkpoint covered.
fn index_records(tree: &sled::Tree, dir: &Path) -> Result<(InstanceIndex, u64), LogError> {
    let checkpoint = match instance_index::CHECKPOINT
        .read(dir)
        .map_err(LogError::Sync)?
    {
        None => None,
        Some(bytes) => match usable_checkpoint(tree, &bytes)? {
            Ok(checkpoint) => Some(checkpoint),
            Err(reason) => {
                tracing::warn!(%reason, "ignoring the instance index checkpoint");
                None
            }
        },
    };
    let (from, mut index) = checkpoint.unwrap_or_default();
    for stored in records::range(tree, from.saturating_add(1), u64::MAX) {
        let stored = match stored {
            Ok(stored) => stored,
            Err(LogError::Corrupt { .. }) => continue,
            Err(e) => return Err(e),
        };
        if let Some((instance, revision)) = instance_index::indexing(stored.bytes()) {
            index.insert(&instance, revision, stored.sequence);
        }
    }
    Ok((index, from))
}

/// The checkpoint in `bytes` and the sequence it covers, if it may be used
/// for the records in `tree`: it decodes, its anchor is the log's record,
/// and it indexes each record up to there once. Why not, otherwise.
fn usable_checkpoint(
    tree: &sled::Tree,
    bytes: &[u8],
) -> Result<Result<(u64, InstanceIndex), String>, LogError> {
    let (anchor, index) = match InstanceIndex::decode(bytes) {
        Ok(decoded) => decoded,
        Err(reason) => return Ok(Err(reason)),
    };
    let anchored = anchor.sequence == 0
        || records::get_readable(tree, anchor.sequence)?
            .is_some_and(|r| chain::hash(r.bytes()) == anchor.hash);
    if !anchored {
        return Ok(Err(format!(
            "its anchor, record {}, is not the log's record",
            anchor.sequence
        )));
    }
    if !index.covers_each_once(anchor.sequence) {
        return Ok(Err(format!(
            "it does not index each record up to its anchor, record {}, once",
            anchor.sequence
        )));
    }
    Ok(Ok((anchor.sequence, index)))
}

/// Tools that damage a closed log on purpose, to test that verification
/// notices. Never used by the services.
#[doc(hidden)]
pub mod tamper {
    use super::*;

    fn open(dir: &Path) -> Result<sled::Tree, LogError> {
        Ok(open_db(sled::Config::new().path(dir))?.open_tree("events")?)
    }

    /// Record `sequence`'s stored bytes.
    fn stored(tree: &sled::Tree, sequence: u64) -> Result<Vec<u8>, LogError> {
        Ok(records::get(tree, sequence)?
            .ok_or(LogError::Corrupt {
                sequence,
                reason: "absent".into(),
            })?
            .bytes()
            .to_vec())
    }

    /// Stores `bytes` as record `sequence`, where it is stored.
    fn store(tree: &sled::Tree, sequence: u64, bytes: Option<&[u8]>) -> Result<(), LogError> {
        records::replace(tree, sequence, bytes)?;
        tree.flush()?;
        Ok(())
    }

    /// Flips the lowest bit of record `sequence`'s last stored byte: a
    /// change of the event's payload, which protobuf writes last (after
    /// `prev_hash`, whose change would be a bad link instead).
    pub fn flip_bit(dir: &Path, sequence: u64) -> Result<(), LogError> {
        let tree = open(dir)?;
        let mut bytes = stored(&tree, sequence)?;
        if let Some(last) = bytes.last_mut() {
            *last ^= 0x01;
        }
        store(&tree, sequence, Some(&bytes))
    }

    /// Removes record `sequence`.
    pub fn delete(dir: &Path, sequence: u64) -> Result<(), LogError> {
        store(&open(dir)?, sequence, None)
    }

    /// Rewrites record `sequence` to link to `prev_hash` instead: the record
    /// itself is consistent, only its link is wrong.
    pub fn relink(dir: &Path, sequence: u64, prev_hash: Hash) -> Result<(), LogError> {
        let tree = open(dir)?;
        let (bytes, _) = chain::relinked(sequence, &stored(&tree, sequence)?, prev_hash)?;
        store(&tree, sequence, Some(&bytes))
    }

    /// Appends `event` as a writer with access to the store would: linked
    /// to the last record, with the head anchor and `signed` (if any) in
    /// one write. Correctly linked: only a signature
    /// can tell it from a real append.
    pub fn append_forged(
        dir: &Path,
        event: &Event,
        signed: Option<&SignedHead>,
    ) -> Result<Head, LogError> {
        let log = EventLog::open(dir)?;
        let head = log.head();
        let (records, next) =
            chain::encode_batch(head, std::slice::from_ref(event), log.encoding, |i| {
                log.last_written_revision(i).map(Some)
            })?;
        log.tree
            .apply_batch(append_batch(head, &records, next, signed))?;
        log.flush()?;
        Ok(next)
    }

    /// Exchanges the stored bytes of two records.
    pub fn swap(dir: &Path, a: u64, b: u64) -> Result<(), LogError> {
        let tree = open(dir)?;
        let (va, vb) = (stored(&tree, a)?, stored(&tree, b)?);
        records::replace(&tree, a, Some(&vb))?;
        store(&tree, b, Some(&va))
    }
}

#[cfg(test)]
#[path = "tests.rs"]
pub(crate) mod tests;
