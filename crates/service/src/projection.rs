//! The projection: every firewall folded from the log, the request ids
//! already applied (idempotent retries) and the schedule of what the service
//! does on time (expiries, reverts), kept in memory and updated only after a
//! durable append.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use std::time::SystemTime;

use cassette_eventlog::Record;
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
    pub(crate) firewalls: Firewalls,
    /// Each instance's idempotency keys: the revision each request
    /// appended and what that request was. Shared per instance, so that a
    /// snapshot takes the whole map by pointers and a write copies only the
    /// instance it changes while a snapshot still holds it.
    pub(crate) requests: HashMap<InstanceId, Arc<Requests>>,
    /// Every live rule with an expire time and every unconfirmed change,
    /// soonest first: the schedule, rebuilt from the log at start-up.
    pub(crate) deadlines: BTreeSet<(SystemTime, InstanceId, Deadline)>,
}

/// Every firewall by instance id. Calls, streams and acks look one up by
/// id several times per change: hashed, that is one hash and one compare
/// whatever the number of firewalls, where a B-tree of 100,000 ids took
/// about twenty string compares and a cache miss per level. The ids are
/// also kept in order, for listing and snapshots.
#[derive(Default, Clone)]
pub(crate) struct Firewalls {
    by_id: HashMap<InstanceId, Arc<Firewall>>,
    ids: BTreeSet<InstanceId>,
}

impl Firewalls {
    pub(crate) fn get(&self, id: &InstanceId) -> Option<&Arc<Firewall>> {
        self.by_id.get(id)
    }

    pub(crate) fn get_mut(&mut self, id: &InstanceId) -> Option<&mut Arc<Firewall>> {
        self.by_id.get_mut(id)
    }

    pub(crate) fn insert(&mut self, id: InstanceId, firewall: Arc<Firewall>) {
        match self.by_id.entry(id) {
            Entry::Occupied(mut known) => {
                known.insert(firewall);
            }
            Entry::Vacant(new) => {
                self.ids.insert(new.key().clone());
                new.insert(firewall);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Every firewall, in no particular order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &Arc<Firewall>> {
        self.by_id.values()
    }

    /// Every firewall in instance id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&InstanceId, &Arc<Firewall>)> {
        self.after(None)
    }

    /// The firewalls with instance ids after `after` (all, for `None`), in id order.
    pub(crate) fn after<'a>(
        &'a self,
        after: Option<&InstanceId>,
    ) -> impl Iterator<Item = (&'a InstanceId, &'a Arc<Firewall>)> + 'a {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.ids
            .range::<InstanceId, _>((start, Bound::Unbounded))
            .filter_map(|id| Some((id, self.by_id.get(id)?)))
    }
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

/// One instance's applied requests: the revision each appended, and its digest.
pub(crate) type Requests = HashMap<RequestScope, Applied>;

/// What a request appended: its last revision, and its digest.
pub(crate) type Applied = (u64, Option<RequestDigest>);

/// An idempotency key, scoped to who gave it: the same `request_id` from
/// another principal (or for another end user of a delegate) is another
/// request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RequestKey {
    pub(crate) instance: InstanceId,
    pub(crate) scope: RequestScope,
}

/// A request id and who gave it, within one instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RequestScope {
    pub(crate) actor: ActorId,
    pub(crate) on_behalf_of: Option<ActorId>,
    pub(crate) id: RequestId,
}

impl RequestKey {
    pub(crate) fn of_mutation(mutation: &Mutation) -> Option<Self> {
        Some(Self {
            instance: mutation.instance_id.clone(),
            scope: RequestScope {
                actor: mutation.actor.clone(),
                on_behalf_of: mutation.on_behalf_of.clone(),
                id: mutation.request_id.clone()?,
            },
        })
    }

    fn of_event(event: &Event) -> Option<Self> {
        Some(Self {
            instance: event.instance_id.clone(),
            scope: RequestScope {
                actor: event.actor.clone(),
                on_behalf_of: event.on_behalf_of.clone(),
                id: event.request_id.clone()?,
            },
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

    /// Folds one record a walk of the log verified (its `visit`), keeping
    /// `last_time` at the latest commit time folded.
    pub(crate) fn replay_record(
        &mut self,
        record: &Record,
        last_time: &mut SystemTime,
    ) -> Result<(), String> {
        self.replay(&record.event).map_err(|e| e.to_string())?;
        *last_time = (*last_time).max(record.event.commit_time);
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
            let requests = self.requests.entry(key.instance).or_default();
            Arc::make_mut(requests).insert(key.scope, (event.revision, event.request_digest));
        }
    }

    /// What the request with this key appended, if it was applied.
    pub(crate) fn applied(&self, key: &RequestKey) -> Option<Applied> {
        self.requests.get(&key.instance)?.get(&key.scope).copied()
    }

    /// The firewalls and applied requests, shared (pointers, copied on
    /// the next write to either side); deadlines are not copied.
    pub(crate) fn share(&self) -> Projection {
        Projection {
            firewalls: self.firewalls.clone(),
            requests: self.requests.clone(),
            deadlines: BTreeSet::new(),
        }
    }

    /// The first difference between this projection and `other`, if any
    /// (deadlines are derived from the firewalls and not compared).
    pub(crate) fn difference(&self, other: &Projection) -> Option<String> {
        if self.firewalls.len() != other.firewalls.len() {
            return Some(format!(
                "{} firewalls, not {}",
                other.firewalls.len(),
                self.firewalls.len()
            ));
        }
        let requests = |p: &Projection, id| p.requests.get(id).filter(|r| !r.is_empty()).cloned();
        for (id, firewall) in self.firewalls.iter() {
            match other.firewalls.get(id) {
                None => return Some(format!("no firewall {id}")),
                Some(theirs) if theirs != firewall => {
                    return Some(format!(
                        "firewall {id} differs (revision {}, not {})",
                        theirs.revision, firewall.revision
                    ))
                }
                Some(_) if requests(self, id) != requests(other, id) => {
                    return Some(format!("firewall {id}'s applied requests differ"))
                }
                Some(_) => {}
            }
        }
        None
    }
}
