//! The append-only firewall event log: the interface the rest of the system
//! uses ([`Log`]), the one hash chain ([`chain`]), and two engines: sled on
//! the local disk ([`EventLog`], `sled_log.rs`) and an etcd cluster shared by
//! several replicas ([`etcd::EtcdLog`]).
//!
//! Only this crate touches sled or etcd. Everything else sees events: append
//! a batch (durable when the call returns), read one instance's events after
//! a revision (an index lookup), or read the whole log in sequence order.
//! Readers see only durable records.

use cassette_model::{Event, InstanceId};
use cassette_proto::{event_from_pb, pb};
use prost::Message;

pub mod background;
pub mod chain;
pub mod etcd;
mod files;
pub mod instance_index;
mod log;
pub mod signing;
mod sled_log;
mod sled_records;
pub mod snapshot;
#[cfg(test)]
mod test_events;

pub use cassette_proto::RecordEncoding;
pub use chain::hash;
pub use log::{Log, Signing};
pub use signing::{KeyError, SignedHead, SigningKey, TrustedKeys};
pub use sled_log::{tamper, EventLog};
/// How the sled log packs records, for its fuzz target.
#[doc(hidden)]
pub use sled_records::{pack, unpack};

/// SHA-256 of a stored record's bytes.
pub type Hash = [u8; 32];

/// The `prev_hash` of the first record.
pub const GENESIS_HASH: Hash = [0; 32];

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("event log storage: {0}")]
    Storage(#[from] StorageError),
    #[error("event log record {sequence} is corrupt: {reason}")]
    Corrupt { sequence: u64, reason: String },
    /// The log holds no record of a revision between two it holds (a
    /// record was removed): which record it was is what is missing.
    #[error("the event log holds no record of instance {instance}'s revision {revision}")]
    MissingRevision { instance: InstanceId, revision: u64 },
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
    /// The log cannot be opened as configured (nothing was contacted).
    #[error("the event log's configuration: {0}")]
    Config(String),
    /// Another process holds the sled log's lock.
    #[error(
        "another process is using the event log in {0}: a running cassette-rules (stop it \
         first), or choose another --data-dir"
    )]
    InUse(std::path::PathBuf),
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

/// The last record: where the next append continues. The default is an
/// empty log's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
    /// The last signed head verified with the trusted keys (none when the
    /// walk checked no signatures).
    pub signed: Option<SignedHead>,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.first_bad.is_none()
    }

    /// Whether the first bad record is bad for want of a trusted signature
    /// (the hash chain holds up to it).
    pub fn signature_failed(&self) -> bool {
        self.first_bad
            .as_ref()
            .is_some_and(|(_, reason)| reason.starts_with(signing::REASON))
    }
}

impl Record {
    /// The record's bytes as stored, encoded again from what it holds, and
    /// checked against its hash; `Corrupt` when they cannot be given back
    /// (a record no writer of this log wrote: fields out of protobuf's
    /// order, or unknown ones).
    pub fn stored_bytes(&self) -> Result<Vec<u8>, LogError> {
        let bytes = cassette_proto::event_to_record(&self.event, &self.prev_hash, self.encoding)
            .encode_to_vec();
        match hash(&bytes) == self.hash {
            true => Ok(bytes),
            false => Err(LogError::Corrupt {
                sequence: self.event.sequence,
                reason: "its stored bytes are not the encoding of what it holds".to_owned(),
            }),
        }
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
    /// How it was stored: the event and `prev_hash` encoded this way give
    /// back its stored bytes ([`Record::stored_bytes`]).
    pub encoding: RecordEncoding,
    /// The signature stored with the record, if an append ended with it
    /// (`Err`: why it cannot be decoded). Filled by the reads verification
    /// walks; other reads leave it `None`.
    pub signed: Option<Result<SignedHead, String>>,
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
    if !stored.record.is_empty() {
        return Err(corrupt(
            "holds a record field: only ListEvents answers carry one".to_owned(),
        ));
    }
    let event = event_from_pb(&stored).map_err(|e| corrupt(e.to_string()))?;
    Ok(Record {
        event,
        encoding: RecordEncoding::of(&stored),
        prev_hash: stored.prev_hash,
        hash: hash(bytes),
        signed: None,
    })
}
