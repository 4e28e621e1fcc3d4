//! Expiring rules: when a rule's expire time comes, the service deletes it
//! with a `RuleExpired` event (actor `system:expiry`) through the one writer,
//! so the enforcer closes the port and the audit log says why.
//!
//! The schedule is the projection's expiry index, rebuilt from the log at
//! start-up: a rule that expired while the service was down expires as soon
//! as it is back. `Command::ExpireRule` appends nothing for a rule that is
//! gone or not yet due, so an expiry repeated (a retry, a race with the
//! user's own delete) happens once.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cassette_model::{ActorId, Command, InstanceId, RuleId};
use futures_util::future::join_all;
use tracing::Instrument;

use crate::mutation::Mutation;
use crate::store::Store;

/// Expiries submitted together (they share the writer's batch and fsync).
const MAX_PER_ROUND: usize = 256;
/// The longest sleep between looks at the clock: a wall clock that jumps is
/// noticed within this.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// After a failed expiry, before trying again.
const RETRY: Duration = Duration::from_secs(1);

/// Expires rules on time until the service stops. A read-only service (a log
/// that failed verification) changes nothing, so expires nothing from then on.
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
        let due = store.due_expiries(now, MAX_PER_ROUND);
        let pause = if due.is_empty() {
            store
                .next_expiry()
                .map_or(MAX_SLEEP, |t| t.duration_since(now).unwrap_or_default())
                .min(MAX_SLEEP)
        } else if due == last_round {
            // The same rules are still due after a round: never spin.
            last_round.clear();
            RETRY
        } else {
            last_round.clone_from(&due);
            let expired = join_all(
                due.into_iter()
                    .map(|(instance, rule)| expire(&store, instance, rule, now)),
            )
            .await;
            if expired.iter().all(|ok| *ok) {
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

/// Submits one expiry; false if it failed (it is retried).
async fn expire(store: &Store, instance: InstanceId, rule: RuleId, now: SystemTime) -> bool {
    let span = tracing::info_span!(
        "expire",
        instance_id = %instance,
        rule_id = %rule,
        principal = ActorId::EXPIRY,
    );
    let mutation = Mutation {
        instance_id: instance,
        command: Command::ExpireRule { rule_id: rule, now },
        request_id: None,
        request_digest: None,
        expected_revision: None,
        actor: ActorId::expiry(),
        on_behalf_of: None,
    };
    async {
        match store.mutate(mutation).await {
            Ok(firewall) => {
                tracing::info!(revision = firewall.revision, "rule expired");
                true
            }
            Err(error) => {
                tracing::warn!(%error, "cannot expire the rule yet");
                false
            }
        }
    }
    .instrument(span)
    .await
}
