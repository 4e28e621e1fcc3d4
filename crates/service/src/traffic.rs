//! Proof of access as confirmation (`confirm_on_traffic`): an unconfirmed
//! change is kept once its enforcer reports traffic accepted through a rule
//! it touched after the change was in the kernel, say SSH narrowed to the
//! office network and a packet from there let through. The service appends
//! `ChangeConfirmed` for it (actor `system:traffic`) through the one writer.
//!
//! "After" is measured in the enforcer's own reports, whatever the clocks:
//! a rule's last hit is the report in which its counters grew, so growth seen
//! in a report whose predecessor arrived once the change was acknowledged
//! happened after the change was applied. The input chain checks every
//! inbound packet against the rules (not only a connection's first), so a
//! packet of a session opened before the change proves the same access as a
//! new connection would.

use std::sync::Arc;
use std::time::SystemTime;

use cassette_model::{ActorId, Command, Firewall, InstanceId};
use tracing::Instrument;

use crate::mutation::Mutation;
use crate::store::Store;
use crate::sync::{observed_key, Observed};

/// Keeps what the instance's enforcer (streaming to this replica) reports
/// seeing, and confirms the unconfirmed changes its traffic proves.
pub fn record_report(store: &Arc<Store>, instance: &InstanceId, observed: Observed) {
    let (Some(previous), current) = store.board().record_report(instance, observed) else {
        return;
    };
    let Ok(firewall) = store.get(instance) else {
        return;
    };
    confirm(store, instance, proven(&firewall, &previous, &current));
}

/// The unconfirmed changes (their revisions) that `current`, the report
/// after `previous`, proves: made with `confirm_on_traffic`, acknowledged
/// before `previous` arrived, and a rule they touched (still as they left
/// it) accepted traffic between the two reports.
pub(crate) fn proven(firewall: &Firewall, previous: &Observed, current: &Observed) -> Vec<u64> {
    let Some(now) = current.observed.filter(|_| current.counted) else {
        return Vec::new();
    };
    firewall
        .unconfirmed()
        .iter()
        .filter(|c| c.confirm_on_traffic && previous.applied_revision >= c.revision)
        .filter(|c| {
            c.touched
                .iter()
                .filter(|t| t.changed_again.is_none())
                .filter_map(|t| firewall.rule(&t.rule_id))
                .filter(|r| r.spec.enabled)
                .any(|r| {
                    current
                        .by_rule
                        .get(&observed_key(r.spec.protocol, r.spec.ports.first()))
                        .is_some_and(|hits| hits.last_hit == Some(now))
                })
        })
        .map(|c| c.revision)
        .collect()
}

/// Confirms each of `revisions` for `instance`, as the service itself.
fn confirm(store: &Arc<Store>, instance: &InstanceId, revisions: Vec<u64>) {
    for revision in revisions {
        let store = store.clone();
        let span = tracing::info_span!(
            "confirm_on_traffic",
            instance_id = %instance,
            confirmed_revision = revision,
            principal = ActorId::TRAFFIC,
        );
        let mutation = Mutation {
            instance_id: instance.clone(),
            command: Command::ConfirmChange {
                revision,
                now: SystemTime::now(),
            },
            request_id: None,
            request_digest: None,
            expected_revision: None,
            actor: ActorId::traffic(),
            on_behalf_of: None,
            confirm: None,
        };
        tokio::spawn(
            async move {
                match store.mutate(mutation).await {
                    Ok(firewall) => {
                        tracing::info!(revision = firewall.revision, "confirmed by traffic");
                    }
                    // Another report (or the user) confirmed it first, or it
                    // is being reverted: nothing to do.
                    Err(error) => tracing::debug!(%error, "not confirmed by traffic"),
                }
            }
            .instrument(span),
        );
    }
}
