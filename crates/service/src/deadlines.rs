//! What the service does on time by itself, through the one writer, so the
//! enforcer follows and the audit log says why:
//! - a rule whose expire time comes is deleted with a `RuleExpired` event
//!   (actor `system:expiry`);
//! - a change made with `confirm_within` and not confirmed by its revert
//!   time is undone with a `ChangeReverted` event (actor `system:revert`).
//!
//! The schedule is the projection's deadline index, rebuilt from the log at
//! start-up: what fell due while the service was down happens as soon as it
//! is back. `Command::ExpireRule` and `Command::RevertChange` append nothing
//! for what is gone, settled or not yet due, so a deadline met twice (a
//! retry, a race with the user's own change, two replicas on one log: the
//! second decides again after the first's append) happens once.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cassette_model::{ActorId, Command, InstanceId};
use futures_util::future::join_all;
use tracing::Instrument;

use crate::mutation::Mutation;
use crate::projection::Deadline;
use crate::store::Store;

/// Deadlines submitted together (they share the writer's batch and fsync).
const MAX_PER_ROUND: usize = 256;
/// The longest sleep between looks at the clock: a wall clock that jumps is
/// noticed within this.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// After a failed attempt, before trying again.
const RETRY: Duration = Duration::from_secs(1);

/// Meets deadlines on time until the service stops. A read-only service (a
/// log that failed verification) changes nothing, so meets none from then on.
pub async fn run(store: Arc<Store>) {
    let mut head = store.watch_head();
    let stopping = store.stopping();
    tokio::pin!(stopping);
    let mut last_round = Vec::new();
    loop {
        if store.read_only().is_err() {
            return;
        }
        // A commit may add a rule that expires sooner: look again after each.
        head.borrow_and_update();
        let now = SystemTime::now();
        let due = store.due_deadlines(now, MAX_PER_ROUND);
        let pause = if due.is_empty() {
            store
                .next_deadline()
                .map_or(MAX_SLEEP, |t| t.duration_since(now).unwrap_or_default())
                .min(MAX_SLEEP)
        } else if due == last_round {
            // The same rules are still due after a round: never spin.
            last_round.clear();
            RETRY
        } else {
            last_round.clone_from(&due);
            let met = join_all(
                due.into_iter()
                    .map(|(instance, deadline)| meet(&store, instance, deadline, now)),
            )
            .await;
            if met.iter().all(|ok| *ok) {
                continue;
            }
            RETRY
        };
        tokio::select! {
            () = &mut stopping => return,
            changed = head.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Submits one deadline's change; false if it failed (it is retried).
async fn meet(store: &Store, instance: InstanceId, deadline: Deadline, now: SystemTime) -> bool {
    let (command, actor, span) = match deadline {
        Deadline::Expire(rule_id) => (
            Command::ExpireRule {
                rule_id: rule_id.clone(),
                now,
            },
            ActorId::expiry(),
            tracing::info_span!(
                "expire",
                instance_id = %instance,
                rule_id = %rule_id,
                principal = ActorId::EXPIRY,
            ),
        ),
        Deadline::Revert(revision) => (
            Command::RevertChange { revision, now },
            ActorId::revert(),
            tracing::info_span!(
                "revert",
                instance_id = %instance,
                reverted_revision = revision,
                principal = ActorId::REVERT,
            ),
        ),
    };
    let mutation = Mutation {
        instance_id: instance,
        command,
        request_id: None,
        request_digest: None,
        expected_revision: None,
        actor,
        on_behalf_of: None,
        confirm: None,
    };
    async {
        match store.mutate(mutation).await {
            Ok(firewall) => {
                tracing::info!(revision = firewall.revision, "deadline met");
                true
            }
            Err(error) => {
                tracing::warn!(%error, "cannot meet the deadline yet");
                false
            }
        }
    }
    .instrument(span)
    .await
}
