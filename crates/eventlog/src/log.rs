//! The log as the rest of the system sees it, whichever engine keeps it:
//! sled on the local disk ([`EventLog`]) or an etcd cluster shared by several
//! replicas ([`EtcdLog`]). The store, audit and sync code use only this.
//!
//! An enum rather than a trait object: two engines, both known here, and
//! async methods without boxing.

use cassette_model::{Event, InstanceId};

use crate::etcd::EtcdLog;
use crate::{EventLog, Head, LogError, Record, Verification};

pub enum Log {
    Sled(EventLog),
    Etcd(EtcdLog),
}

impl Log {
    /// The last record: where appends continue.
    pub async fn head(&self) -> Result<Head, LogError> {
        match self {
            Log::Sled(log) => Ok(log.head()),
            Log::Etcd(log) => log.head().await,
        }
    }

    /// Appends `events` after `expected`, durable when it returns;
    /// [`LogError::Conflict`] if the log has moved on from `expected` (another
    /// writer appended; nothing is written).
    pub async fn append(&self, expected: Head, events: &[Event]) -> Result<Head, LogError> {
        match self {
            Log::Sled(log) => {
                let head = log.head();
                if head != expected {
                    return Err(LogError::Conflict {
                        expected: expected.sequence,
                        found: head.sequence,
                    });
                }
                log.append(events).await
            }
            Log::Etcd(log) => log.append(expected, events).await,
        }
    }

    /// Up to `limit` records after `after_sequence`, in order.
    pub async fn read_after(
        &self,
        after_sequence: u64,
        limit: usize,
    ) -> Result<Vec<Record>, LogError> {
        match self {
            Log::Sled(log) => log.scan(after_sequence).take(limit).collect(),
            Log::Etcd(log) => log.read_after(after_sequence, limit).await,
        }
    }

    /// The instance's latest revision in the log (0 if none).
    pub async fn last_revision(&self, instance: &InstanceId) -> Result<u64, LogError> {
        match self {
            Log::Sled(log) => log.last_revision(instance),
            Log::Etcd(log) => log.last_revision(instance).await,
        }
    }

    /// The instance's records with `after_revision < revision <= until_revision`.
    pub async fn read_instance_records(
        &self,
        instance: &InstanceId,
        after_revision: u64,
        until_revision: u64,
    ) -> Result<Vec<Record>, LogError> {
        match self {
            Log::Sled(log) => log.read_instance_records(instance, after_revision, until_revision),
            Log::Etcd(log) => {
                log.read_instance_records(instance, after_revision, until_revision)
                    .await
            }
        }
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

    /// Checks the whole hash chain and the head anchor. It reads the whole
    /// log: callers run it off the async workers (`spawn_blocking`).
    pub async fn verify(&self) -> Result<Verification, LogError> {
        match self {
            Log::Sled(log) => log.verify(),
            Log::Etcd(log) => log.verify().await,
        }
    }

    /// [`Log::verify`], handing each good record to `visit` in order, so one
    /// pass both checks and replays the log; a record `visit` refuses is
    /// reported as the first bad one.
    pub async fn verify_each(
        &self,
        visit: impl FnMut(&Record) -> Result<(), String>,
    ) -> Result<Verification, LogError> {
        match self {
            Log::Sled(log) => log.verify_each(visit),
            Log::Etcd(log) => log.verify_each(visit).await,
        }
    }

    /// Whether record `sequence` still has the hash its index recorded (what
    /// [`crate::chain::Unlinked::blame`] asks when two records stop linking).
    pub async fn intact(&self, sequence: u64) -> Result<bool, LogError> {
        match self {
            Log::Sled(log) => log.intact(sequence),
            Log::Etcd(log) => log.intact(sequence).await,
        }
    }

    /// The head sequence other writers' appends left (`u64::MAX`: unknown,
    /// look) on a shared log; `None` when this process is the only writer (sled).
    pub fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match self {
            Log::Sled(_) => None,
            Log::Etcd(log) => Some(log.head_changes()),
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
        match self {
            Log::Sled(_) => None,
            Log::Etcd(log) => Some(log.share(space, replica, ttl)),
        }
    }

    /// Whether other processes append to this log too.
    pub fn is_shared(&self) -> bool {
        matches!(self, Log::Etcd(_))
    }

    /// Makes everything durable (appends already are; this is for shutdown).
    pub fn flush(&self) -> Result<(), LogError> {
        match self {
            Log::Sled(log) => log.flush(),
            Log::Etcd(_) => Ok(()),
        }
    }
}
