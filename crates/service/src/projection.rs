//! The projection: every firewall folded from the log, the request ids
//! already applied (idempotent retries) and the schedule of what the service
//! does on time (expiries, reverts), kept in memory and updated only after a
//! durable append.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use cassette_model::{
    fold, ActorId, Event, Firewall, FoldError, InstanceId, RequestDigest, RequestId, RuleId,
};

use crate::mutation::Mutation;

/// Every live and deleted firewall, folded from the log, plus the request ids
/// already applied (for idempotent retries). Updated only after a durable append.
///
/// Firewalls are shared (`Arc`) so that readers and answers take a pointer,
/// not a copy, and the writer installs the state it folded while deciding.
#[derive(Default)]
pub(crate) struct Projection {
    pub(crate) firewalls: BTreeMap<InstanceId, Arc<Firewall>>,
    /// Each idempotency key: the revision its request appended and what
    /// that request was.
    pub(crate) requests: HashMap<RequestKey, (u64, Option<RequestDigest>)>,
    /// Every live rule with an expire time and every unconfirmed change,
    /// soonest first: the schedule, rebuilt from the log at start-up.
    pub(crate) deadlines: BTreeSet<(SystemTime, InstanceId, Deadline)>,
}

/// Something the service does on time by itself, through the writer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Deadline {
    /// The rule reached its expire time: deleted (actor `system:expiry`).
    Expire(RuleId),
    /// The unconfirmed change (its last revision) reached its revert time:
    /// undone (actor `system:revert`).
    Revert(u64),
}

/// An idempotency key, scoped to who gave it: the same `request_id` from
/// another principal (or for another end user of a delegate) is another
/// request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RequestKey {
    instance: InstanceId,
    actor: ActorId,
    on_behalf_of: Option<ActorId>,
    id: RequestId,
}

impl RequestKey {
    pub(crate) fn of_mutation(mutation: &Mutation) -> Option<Self> {
        Some(Self {
            instance: mutation.instance_id.clone(),
            actor: mutation.actor.clone(),
            on_behalf_of: mutation.on_behalf_of.clone(),
            id: mutation.request_id.clone()?,
        })
    }

    fn of_event(event: &Event) -> Option<Self> {
        Some(Self {
            instance: event.instance_id.clone(),
            actor: event.actor.clone(),
            on_behalf_of: event.on_behalf_of.clone(),
            id: event.request_id.clone()?,
        })
    }
}

/// A firewall's deadlines (rules that expire, changes to revert), as index keys.
fn deadline_keys(
    firewall: &Firewall,
) -> impl Iterator<Item = (SystemTime, InstanceId, Deadline)> + '_ {
    let live = firewall.is_live();
    let expiries = firewall.rules().iter().filter_map(|r| {
        r.spec.expire_time.map(|t| {
            (
                t,
                firewall.instance_id.clone(),
                Deadline::Expire(r.spec.id.clone()),
            )
        })
    });
    let reverts = firewall.unconfirmed().iter().map(|c| {
        (
            c.revert_time,
            firewall.instance_id.clone(),
            Deadline::Revert(c.revision),
        )
    });
    expiries.chain(reverts).filter(move |_| live)
}

impl Projection {
    /// How many firewalls (live and deleted) it holds.
    pub(crate) fn len(&self) -> usize {
        self.firewalls.len()
    }

    /// Indexes every deadline (after a replay).
    pub(crate) fn index_deadlines(&mut self) {
        self.deadlines = self
            .firewalls
            .values()
            .flat_map(|f| deadline_keys(f))
            .collect();
    }

    /// Installs a firewall's new state, keeping the schedule in step.
    pub(crate) fn install(&mut self, firewall: Arc<Firewall>) {
        if let Some(old) = self.firewalls.get(&firewall.instance_id) {
            for key in deadline_keys(old) {
                self.deadlines.remove(&key);
            }
        }
        self.deadlines.extend(deadline_keys(&firewall));
        self.firewalls
            .insert(firewall.instance_id.clone(), firewall);
    }

    /// Folds one replayed event into the projection.
    pub(crate) fn replay(&mut self, event: &Event) -> Result<(), FoldError> {
        match self.firewalls.get_mut(&event.instance_id) {
            Some(firewall) => Arc::make_mut(firewall).apply(event)?,
            None => {
                let firewall = fold(None, event)?;
                self.firewalls
                    .insert(event.instance_id.clone(), Arc::new(firewall));
            }
        }
        self.record_request(event);
        Ok(())
    }

    /// Folds a record another replica appended and installs the result, so
    /// the schedule stays in step (a replay at start-up indexes deadlines
    /// once, at the end).
    pub(crate) fn catch_up(&mut self, event: &Event) -> Result<(), FoldError> {
        let current = self
            .firewalls
            .get(&event.instance_id)
            .map(|f| Firewall::clone(f));
        self.install(Arc::new(fold(current, event)?));
        self.record_request(event);
        Ok(())
    }

    pub(crate) fn record_request(&mut self, event: &Event) {
        if let Some(key) = RequestKey::of_event(event) {
            self.requests
                .insert(key, (event.revision, event.request_digest));
        }
    }
}
