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
}
