//! Waiting for an instance's enforcer to acknowledge a revision: WaitForSync,
//! and a change asked to answer only once it is in force (`wait_for_sync`).
//! One wait serves both: the caller is checked again at each policy change,
//! and a stopping service ends it.

use std::time::{Duration, Instant};

use cassette_auth::Action;
use cassette_model::InstanceId;
use cassette_proto::{pb, NOT_YET_ACKNOWLEDGED};
use cassette_service::limits::Slot;
use cassette_service::sync::Snapshot;
use cassette_service::{Store, StoreError};
use tonic::Status;

use crate::grpc::caller::Reauthorized;
use crate::grpc::status;

/// One wait for an acknowledgement: how long, the caller (checked again at
/// each policy change), and the caller's waiter slot, held until it ends.
/// A change takes it before it is made, so a caller at its cap changes
/// nothing.
pub struct Waiting {
    timeout: Duration,
    reauthorized: Reauthorized,
    _slot: Slot,
}

/// How a wait ended, with the instance's sync state then.
pub enum Waited {
    Acknowledged(Snapshot),
    TimedOut(Snapshot),
}

impl Waiting {
    pub fn new(timeout: Duration, reauthorized: Reauthorized, slot: Slot) -> Self {
        Self {
            timeout,
            reauthorized,
            _slot: slot,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Waits until the instance's enforcer has acknowledged `target`
    /// (applied it, or failed to) or the time is up. The caller is checked
    /// again at each policy change: the wait ends if it may no longer read
    /// the instance (`method` names the call in the refusal).
    pub async fn acknowledged(
        &mut self,
        store: &Store,
        instance_id: &InstanceId,
        target: u64,
        method: &'static str,
    ) -> Result<Waited, Status> {
        let deadline = Instant::now() + self.timeout;
        let mut status = store.board().watch_status(instance_id);
        let stopping = store.stopping();
        tokio::pin!(stopping);
        loop {
            let snapshot = status.borrow_and_update().clone();
            if snapshot.has_acked(target) {
                return Ok(Waited::Acknowledged(snapshot));
            }
            tokio::select! {
                changed = status.changed() => {
                    if changed.is_err() {
                        return Err(status::store(StoreError::ShuttingDown));
                    }
                }
                () = self.reauthorized.changed() => {
                    self.reauthorized
                        .recheck(|c| c.authorize(Action::Read, method, instance_id.as_str()))?;
                }
                // A stopping service does not keep a waiter until its timeout.
                () = &mut stopping => return Err(status::store(StoreError::ShuttingDown)),
                _ = tokio::time::sleep_until(deadline.into()) => {
                    return Ok(Waited::TimedOut(snapshot));
                }
            }
        }
    }
}

/// The warning for a change saved as `revision` whose wait ran out first.
pub fn not_yet_acknowledged(revision: u64, timeout: Duration, sync: &Snapshot) -> pb::Warning {
    pb::Warning {
        code: NOT_YET_ACKNOWLEDGED.to_owned(),
        message: format!(
            "the change is saved as revision {revision}, but the instance's enforcer has not \
             acknowledged it within {timeout:?} (applied revision {}, enforcer connected: {}); \
             WaitForSync waits for it",
            sync.applied_revision,
            sync.is_connected()
        ),
        rule_id: String::new(),
    }
}
