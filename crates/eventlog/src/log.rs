//! The log as the rest of the system sees it, whichever engine keeps it:
//! sled on the local disk ([`EventLog`]) or an etcd cluster shared by several
//! replicas ([`EtcdLog`]). The store, audit and sync code use only this.
//!
//! It also owns what a reader may see: appends are signed with the log's
//! key, and reads return only records a verification of this process
//! vouched for (the verified prefix): a record written into the store by
//! anyone else, or not yet checked, is never served. With trusted keys a
//! record is vouched for once a trusted signature covers it; without, once
//! the hash chain reaches it.
//!
//! An enum of engines rather than a trait object: two engines, both known
//! here, and async methods without boxing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cassette_model::{Event, InstanceId};

use crate::etcd::EtcdLog;
use crate::signing::{SigningKey, TrustedKeys};
use crate::{EventLog, Head, LogError, Record, Verification};

/// How a log signs its appends and which signatures it accepts.
#[derive(Debug, Clone, Default)]
pub struct Signing {
    /// Signs the head each append leaves; none: appends are unsigned.
    pub key: Option<Arc<SigningKey>>,
    /// Only records a signature by one of these covers are served; none:
    /// the hash chain alone is checked.
    pub trusted: Option<Arc<TrustedKeys>>,
}

impl Signing {
    /// Signs with `key` and accepts `trusted`'s signatures, refused unless
    /// `trusted` holds `key`'s public key (the log would refuse its own
    /// appends).
    pub fn new(key: SigningKey, trusted: TrustedKeys) -> Result<Self, crate::KeyError> {
        if !trusted.trusts(&key) {
            return Err(crate::KeyError::Format(format!(
                "the signing key (id {}) is not among the trusted keys ({}): add its public key",
                key.key_id(),
                trusted.ids().collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(Self {
            key: Some(Arc::new(key)),
            trusted: Some(Arc::new(trusted)),
        })
    }

    /// Accepts `trusted`'s signatures and signs nothing (an auditor).
    pub fn verify_only(trusted: TrustedKeys) -> Self {
        Self {
            key: None,
            trusted: Some(Arc::new(trusted)),
        }
    }
}

enum Engine {
    Sled(EventLog),
    Etcd(EtcdLog),
}

pub struct Log {
    engine: Engine,
    signing: Signing,
    /// The last record a verification (or this process's own append)
    /// vouched for: reads go no further.
    verified: AtomicU64,
    /// Records up to this one stand on a projection snapshot's anchor and
    /// have not been walked yet (0: none): reads that reach them wait for
    /// the walk in the background ([`Log::verify_until`]).
    unwalked: tokio::sync::watch::Sender<u64>,
}

impl Log {
    /// The sled log, signed as `signing` says; nothing is served until a
    /// verification vouched for it.
    pub fn sled(log: EventLog, signing: Signing) -> Self {
        Self::new(Engine::Sled(log), signing)
    }

    /// The etcd log, signed as `signing` says; nothing is served until a
    /// verification vouched for it.
    pub fn etcd(log: EtcdLog, signing: Signing) -> Self {
        Self::new(Engine::Etcd(log), signing)
    }

    fn new(engine: Engine, signing: Signing) -> Self {
        Self {
            engine,
            signing,
            verified: AtomicU64::new(0),
            unwalked: tokio::sync::watch::Sender::new(0),
        }
    }

    pub fn signing(&self) -> &Signing {
        &self.signing
    }

    /// The last record reads may return.
    pub fn verified(&self) -> u64 {
        self.verified.load(Ordering::Acquire)
    }

    fn vouch(&self, sequence: u64) {
        self.verified.fetch_max(sequence, Ordering::AcqRel);
    }

    /// Records up to here are read only once the walk of them ended (see
    /// [`Log::verify_tail`]); what it refused is then no longer returned.
    async fn settle(&self, records: &mut Vec<Record>) {
        let first = records.first().map(|r| r.event.sequence);
        if first.is_some_and(|first| first <= *self.unwalked.borrow()) {
            // The sender lives as long as the log.
            let _ = self.unwalked.subscribe().wait_for(|u| *u == 0).await;
            let verified = self.verified();
            records.retain(|r| r.event.sequence <= verified);
        }
    }

    /// The hash of record `sequence` as stored (`None`: not there).
    pub async fn record_hash(&self, sequence: u64) -> Result<Option<crate::Hash>, LogError> {
        match &self.engine {
            Engine::Sled(log) => log.record_hash(sequence),
            Engine::Etcd(log) => log.record_hash(sequence).await,
        }
    }

    /// Verifies the records after `anchor` (a projection snapshot's, whose
    /// record has `anchor`'s hash) as [`Log::verify_each`] does, handing each
    /// to `visit`. The records up to the anchor are readable as soon as the
    /// tail checks out, but reads that reach them wait until
    /// [`Log::verify_until`] has walked them ([`Log::prefix_walked`] or
    /// [`Log::take_back`]).
    pub async fn verify_tail(
        &self,
        anchor: Head,
        visit: impl FnMut(&Record) -> Result<(), String>,
    ) -> Result<Verification, LogError> {
        self.unwalked.send_replace(anchor.sequence);
        self.verified_walk(anchor, true, visit).await
    }

    /// Forgets what verifications vouched for (a start-up that walked a
    /// snapshot's tail and now replays the whole log instead).
    pub fn unvouch(&self) {
        self.verified.store(0, Ordering::Release);
        self.unwalked.send_replace(0);
    }

    /// Verifies the records up to `until` as [`Log::verify_each`] does
    /// (`until` must end the walk), handing each to `visit`, without
    /// vouching for anything: the background half of a start-up from a
    /// projection snapshot. Reads the whole prefix (a sled log's without
    /// awaiting): run it off the async workers.
    pub async fn verify_until(
        &self,
        until: Head,
        visit: impl FnMut(&Record) -> Result<(), String>,
    ) -> Result<Verification, LogError> {
        let trust = self.signing.trusted.as_deref();
        match &self.engine {
            Engine::Sled(log) => log.verify_until(until, trust, visit),
            Engine::Etcd(log) => log.verify_until(until, trust, visit).await,
        }
    }

    /// The walk of [`Log::verify_until`] found the records up to the anchor
    /// good: reads of them go on.
    pub fn prefix_walked(&self) {
        self.unwalked.send_replace(0);
    }

    /// Reads go no further than `sequence` from now on (a walk found the
    /// record after it bad).
    pub fn take_back(&self, sequence: u64) {
        self.verified.store(sequence, Ordering::Release);
        self.unwalked.send_replace(0);
    }

    /// The last record: where appends continue.
    pub async fn head(&self) -> Result<Head, LogError> {
        match &self.engine {
            Engine::Sled(log) => Ok(log.head()),
            Engine::Etcd(log) => log.head().await,
        }
    }

    /// Appends `events` after `expected`, signed, durable when it returns;
    /// [`LogError::Conflict`] if the log has moved on from `expected` (another
    /// writer appended; nothing is written).
    pub async fn append(&self, expected: Head, events: &[Event]) -> Result<Head, LogError> {
        if events.is_empty() {
            return Ok(expected);
        }
        let signer = self.signing.key.as_deref();
        let head = match &self.engine {
            Engine::Sled(log) => {
                let head = log.head();
                if head != expected {
                    return Err(LogError::Conflict {
                        expected: expected.sequence,
                        found: head.sequence,
                    });
                }
                log.append_signed(events, signer).await?
            }
            Engine::Etcd(log) => log.append_signed(expected, events, signer).await?,
        };
        // Its own append: signed by its key, after a head it had verified.
        self.vouch(head.sequence);
        Ok(head)
    }

    /// Up to `limit` verified records after `after_sequence`, in order.
    pub async fn read_after(
        &self,
        after_sequence: u64,
        limit: usize,
    ) -> Result<Vec<Record>, LogError> {
        let verified = self.verified();
        let want = verified.saturating_sub(after_sequence);
        let limit = limit.min(usize::try_from(want).unwrap_or(usize::MAX));
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut records = match &self.engine {
            Engine::Sled(log) => log.scan(after_sequence).take(limit).collect(),
            Engine::Etcd(log) => log.read_after(after_sequence, limit).await,
        }?;
        records.retain(|r| r.event.sequence <= verified);
        self.settle(&mut records).await;
        Ok(records)
    }

    /// The instance's latest verified revision (0 if none).
    pub async fn last_revision(&self, instance: &InstanceId) -> Result<u64, LogError> {
        let verified = self.verified();
        match &self.engine {
            Engine::Sled(log) => log.last_revision_through(instance, verified),
            Engine::Etcd(log) => log.last_revision_through(instance, verified).await,
        }
    }

    /// The instance's verified records with `after_revision < revision <= until_revision`.
    pub async fn read_instance_records(
        &self,
        instance: &InstanceId,
        after_revision: u64,
        until_revision: u64,
    ) -> Result<Vec<Record>, LogError> {
        let verified = self.verified();
        let mut records = match &self.engine {
            Engine::Sled(log) => {
                log.read_instance_records(instance, after_revision, until_revision)
            }
            Engine::Etcd(log) => {
                log.read_instance_records(instance, after_revision, until_revision)
                    .await
            }
        }?;
        // Revisions grow with sequences: what is not verified is at the end.
        records.retain(|r| r.event.sequence <= verified);
        self.settle(&mut records).await;
        Ok(records)
    }

    /// [`Log::read_instance_records`] without the hashes.
    pub async fn read_instance(
        &self,
        instance: &InstanceId,
        after_revision: u64,
        until_revision: u64,
    ) -> Result<Vec<Event>, LogError> {
        Ok(self
            .read_instance_records(instance, after_revision, until_revision)
            .await?
            .into_iter()
            .map(|r| r.event)
            .collect())
    }

    /// Checks the whole hash chain, the head anchor, and (with trusted keys)
    /// the signatures. It reads the whole log: callers run it off the async
    /// workers (`spawn_blocking`).
    pub async fn verify(&self) -> Result<Verification, LogError> {
        self.verify_each(|_| Ok(())).await
    }

    /// [`Log::verify`], handing each verified record to `visit` in order, so
    /// one pass both checks and replays the log; a record `visit` refuses is
    /// reported as the first bad one. What it verified may be read.
    ///
    /// With trusted keys, the newest signature that verifies is found first
    /// and vouches for every record before it (one Ed25519 check, however
    /// long the log).
    pub async fn verify_each(
        &self,
        visit: impl FnMut(&Record) -> Result<(), String>,
    ) -> Result<Verification, LogError> {
        self.verified_walk(Head::default(), true, visit).await
    }

    /// The records after `head`, which an earlier verification vouched for:
    /// another replica's appends, each checked with its own signature (a few
    /// since the last look: cheaper than finding the newest first), handed
    /// to `visit` as [`Log::verify_each`] does. What was handed on is
    /// vouched for even if the walk then fails (the store has it).
    pub async fn verify_from(
        &self,
        head: Head,
        visit: impl FnMut(&Record) -> Result<(), String>,
    ) -> Result<Verification, LogError> {
        self.verified_walk(head, false, visit).await
    }

    async fn verified_walk(
        &self,
        head: Head,
        newest_first: bool,
        mut visit: impl FnMut(&Record) -> Result<(), String>,
    ) -> Result<Verification, LogError> {
        let trust = self.signing.trusted.as_deref();
        // Vouched for before `visit` sees it: what `visit` shows (a
        // projection other tasks read) can already be read from the log.
        // A record `visit` refuses is taken back.
        let visit = |record: &Record| {
            let before = self.verified();
            self.vouch(record.event.sequence);
            visit(record).inspect_err(|_| self.verified.store(before, Ordering::Release))
        };
        let verification = match (&self.engine, newest_first) {
            (Engine::Sled(log), true) => log.verify_from(head, trust, visit),
            (Engine::Sled(log), false) => log.verify_vouched(head, trust, None, visit),
            (Engine::Etcd(log), true) => log.verify_from(head, trust, visit).await,
            (Engine::Etcd(log), false) => log.verify_vouched(head, trust, None, visit).await,
        };
        self.vouch(head.sequence);
        verification
    }

    /// Removes every record after `sequence` and makes it the head (an
    /// operator's recovery, with every writer stopped); how many it removed.
    pub async fn remove_after(&self, sequence: u64) -> Result<u64, LogError> {
        match &self.engine {
            Engine::Sled(log) => log.remove_after(sequence),
            Engine::Etcd(log) => log.remove_after(sequence).await,
        }
    }

    /// Whether record `sequence` still has the hash its index recorded (what
    /// [`crate::chain::Unlinked::blame`] asks when two records stop linking).
    pub async fn intact(&self, sequence: u64) -> Result<bool, LogError> {
        match &self.engine {
            Engine::Sled(log) => log.intact(sequence),
            Engine::Etcd(log) => log.intact(sequence).await,
        }
    }

    /// The head sequence other writers' appends left (`u64::MAX`: unknown,
    /// look) on a shared log; `None` when this process is the only writer (sled).
    pub fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match &self.engine {
            Engine::Sled(_) => None,
            Engine::Etcd(log) => Some(log.head_changes()),
        }
    }

    /// Shares small values with the other replicas of a shared log (see
    /// [`EtcdLog::share`]); `None` for a log only this process writes.
    pub fn share(
        &self,
        space: &str,
        replica: &str,
        ttl: std::time::Duration,
    ) -> Option<(
        crate::etcd::SharedWriter,
        tokio::sync::mpsc::Receiver<crate::etcd::SharedChange>,
    )> {
        match &self.engine {
            Engine::Sled(_) => None,
            Engine::Etcd(log) => Some(log.share(space, replica, ttl)),
        }
    }

    /// Whether other processes append to this log too.
    pub fn is_shared(&self) -> bool {
        matches!(self.engine, Engine::Etcd(_))
    }

    /// Makes everything durable (appends already are; this is for shutdown).
    pub fn flush(&self) -> Result<(), LogError> {
        match &self.engine {
            Engine::Sled(log) => log.flush(),
            Engine::Etcd(_) => Ok(()),
        }
    }
}
