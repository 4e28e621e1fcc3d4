//! What the store answers when it cannot do what it was asked; the doors map
//! each kind to their status once (the gRPC door in `grpc/status.rs`).

use cassette_eventlog::LogError;
use cassette_model::{DomainError, FoldError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("the log does not fold: {0}")]
    Fold(#[from] FoldError),
    #[error("the rules service is shutting down")]
    ShuttingDown,
    #[error("the event log write failed: {0}")]
    WriteFailed(String),
    #[error("the event log fails verification at record {sequence}: {reason}")]
    Unverified { sequence: u64, reason: String },
    #[error("read-only: the event log failed verification at record {sequence} ({reason}); the service was started to investigate it")]
    ReadOnly { sequence: u64, reason: String },
    /// The log holds a record no trusted signature covers (or one that
    /// breaks the chain), met after start-up or at it: the history before it
    /// is served, nothing is written.
    #[error(
        "the event log fails verification at record {sequence} ({reason}): this replica serves \
         the verified history before it and takes no changes. An operator recovers it: stop \
         every replica, remove record {sequence} and those after it (`cassette-rules log \
         remove-after {before}`, with the service's log flags), and start them again",
        before = sequence.saturating_sub(1)
    )]
    Halted { sequence: u64, reason: String },
    /// The projection snapshot this replica started from is not what its
    /// log folds to (found by the walk after start-up): the history the log
    /// holds is served, nothing is written, until a restart replays it.
    #[error(
        "the projection snapshot this service started from (taken at record {anchor}) is not          what the event log folds to ({reason}): it serves the log's history and takes no          changes until it is restarted, which replays the whole log (the snapshot was moved          aside to projection.snapshot.refused)"
    )]
    SnapshotRefused { anchor: u64, reason: String },
}

/// Why the store takes no changes: its log failed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Halt {
    /// Started with `allow_unverified` on a log that fails verification.
    Investigating { sequence: u64, reason: String },
    /// It met a record that no trusted signature covers (or that breaks the
    /// chain) after starting: it serves the verified history before it.
    Unverified { sequence: u64, reason: String },
    /// Started from a projection snapshot the log turned out not to fold to.
    SnapshotRefused { anchor: u64, reason: String },
}

impl From<Halt> for StoreError {
    fn from(halt: Halt) -> Self {
        match halt {
            Halt::Investigating { sequence, reason } => StoreError::ReadOnly { sequence, reason },
            Halt::Unverified { sequence, reason } => StoreError::Halted { sequence, reason },
            Halt::SnapshotRefused { anchor, reason } => {
                StoreError::SnapshotRefused { anchor, reason }
            }
        }
    }
}
