//! The single writer: takes every queued mutation as one batch, decides
//! each against the projection (plus the batch's earlier outcomes), appends
//! the batch in one durable write, installs the folded states, wakes the
//! streams of the instances it touched, and only then answers.
//!
//! Why one writer: validation against current state and the append must be
//! atomic per instance (two racing requests for a port can never both win),
//! and the log's hash chain is global. One task that takes every queued
//! mutation as a batch gives both, and makes every batch share one fsync
//! (group commit). Deciding is in-memory and takes microseconds; the fsync is
//! the cost, and it is paid once per batch rather than once per request.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use cassette_eventlog::{Head, Log, LogError};
use cassette_model::{
    decide, fold, Command, DomainError, Event, Firewall, FoldError, InstanceId, RequestDigest,
    RequestId, RuleId, Unconfirmed, ValidationError,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, info_span, Instrument};

use crate::error::{Halt, StoreError};
use crate::metrics::RulesMetrics;
use crate::mutation::Mutation;
use crate::projection::{Projection, RequestKey};
use crate::snapshots::{Confirmation, Snapshotter};
use crate::sync::SyncBoard;

/// How many queued mutations one commit takes at most.
const MAX_BATCH: usize = 1024;
/// On a shared (etcd) log: a mutation makes at most three events, and one
/// append carries at most `cassette_eventlog::etcd::MAX_BATCH_EVENTS`.
const MAX_SHARED_BATCH: usize = cassette_eventlog::etcd::MAX_BATCH_EVENTS / 3;
/// How often a writer on a shared log catches up and decides again when
/// other replicas keep appending first, before it answers UNAVAILABLE.
const MAX_CONFLICTS: usize = 16;

pub(crate) enum WriterMessage {
    Mutate(Box<Mutation>, Reply),
    /// A writer left the log's head at this sequence (`u64::MAX`: unknown):
    /// read what is new into the projection, unless it was this writer.
    CatchUp(u64),
    /// Commit what is queued before this, then stop.
    Drain(oneshot::Sender<()>),
    /// What the walk of the log up to the projection snapshot the service
    /// started from found.
    Confirmed(Box<Confirmation>),
}

pub(crate) struct Writer {
    pub(crate) log: Arc<Log>,
    pub(crate) projection: Arc<RwLock<Projection>>,
    pub(crate) board: Arc<SyncBoard>,
    pub(crate) metrics: Arc<RulesMetrics>,
    pub(crate) head: watch::Sender<u64>,
    pub(crate) failed: watch::Sender<Option<String>>,
    /// Set when the log failed verification: every mutation is refused,
    /// and other writers' appends are no longer read.
    pub(crate) halt: watch::Sender<Option<Halt>>,
    /// The last record appended: the next batch continues it.
    pub(crate) log_head: Head,
    /// Commit times never go backwards, even if the wall clock does.
    pub(crate) last_time: SystemTime,
    /// Writes projection snapshots (a sled log's).
    pub(crate) snapshots: Option<Snapshotter>,
}

/// What the writer answers a mutation with.
pub(crate) enum Answer {
    /// The firewall after the mutation (or after the retried request, when it
    /// is the current state or was decided in the same batch).
    Firewall(Arc<Firewall>),
    /// A retry of a request that appended `revision` earlier; the caller
    /// replays the state then from the log.
    AppliedBefore { revision: u64 },
}

pub(crate) type Reply = oneshot::Sender<Result<Answer, StoreError>>;

impl Writer {
    pub(crate) async fn run(mut self, mut queue: mpsc::Receiver<WriterMessage>) {
        loop {
            self.snapshot_when(Snapshotter::due);
            let head = self.log_head.sequence;
            let due = self.snapshots.as_mut().and_then(|s| s.next_due(head));
            let first = match due {
                Some(due) => tokio::select! {
                    first = queue.recv() => first,
                    () = tokio::time::sleep_until(due.into()) => continue,
                },
                None => queue.recv().await,
            };
            let Some(first) = first else { return };
            let mut batch = Vec::new();
            let mut drained = None;
            let mut next = Some(first);
            let mut catch_up = false;
            while let Some(message) = next.take() {
                match message {
                    WriterMessage::Confirmed(found) => self.confirmed(*found).await,
                    WriterMessage::Mutate(mutation, reply) => batch.push((*mutation, reply)),
                    // Its own appends come back through the watch too:
                    // only a head beyond this writer's is news.
                    WriterMessage::CatchUp(head) => {
                        catch_up |= head > self.log_head.sequence;
                    }
                    WriterMessage::Drain(done) => {
                        drained = Some(done);
                        break;
                    }
                }
                let max = if self.log.is_shared() {
                    MAX_SHARED_BATCH
                } else {
                    MAX_BATCH
                };
                if batch.len() < max {
                    next = queue.try_recv().ok();
                }
            }
            if catch_up {
                if let Err(error) = self.catch_up().await {
                    tracing::warn!(%error, "cannot read other replicas' appends yet");
                }
            }
            if !batch.is_empty() {
                let span = info_span!("commit", mutations = batch.len());
                self.commit(batch).instrument(span).await;
            }
            if let Some(done) = drained {
                // The next start replays nothing this one committed.
                if let Some(snapshots) = &mut self.snapshots {
                    snapshots.finish().await;
                    self.snapshot_when(Snapshotter::can_write);
                }
                if let Some(snapshots) = &mut self.snapshots {
                    snapshots.finish().await;
                }
                let _ = done.send(());
                return;
            }
        }
    }

    /// Starts writing a projection snapshot at the log's head if `when`
    /// says so (never while the store is halted).
    fn snapshot_when(&mut self, when: fn(&mut Snapshotter, u64) -> bool) {
        let Some(snapshots) = &mut self.snapshots else {
            return;
        };
        if self.halt.borrow().is_some() || !when(snapshots, self.log_head.sequence) {
            return;
        }
        let projection = self.projection.read().unwrap_or_else(|p| p.into_inner());
        snapshots.start(&projection, self.log_head, self.last_time);
    }

    /// Acts on what the walk of the log up to the snapshot the service
    /// started from found: reads of those records go on, or (a record that
    /// fails verification, a snapshot the log does not fold to) the store
    /// serves the history that verifies, read-only, folded again from the
    /// log, and the snapshot is moved aside for the next start to replay
    /// the log in full.
    async fn confirmed(&mut self, found: Confirmation) {
        let (halt, good) = match found {
            Confirmation::Confirmed { records, elapsed } => {
                self.log.prefix_walked();
                if let Some(snapshots) = &mut self.snapshots {
                    snapshots.confirmed();
                }
                info!(
                    records,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "the log up to the projection snapshot verifies and folds to it"
                );
                return;
            }
            Confirmation::Unverified { sequence, reason } => {
                self.metrics.log_verification_failures.inc();
                let good = sequence.saturating_sub(1);
                (Halt::Unverified { sequence, reason }, good)
            }
            Confirmation::Disagrees { anchor, reason } => {
                let good = self.log_head.sequence;
                (Halt::SnapshotRefused { anchor, reason }, good)
            }
            // Nothing was found wrong with a record, so no record is named
            // for removal: a restart replays the whole log and says.
            Confirmation::Unfinished { anchor, reason } => {
                let reason = format!("{reason}; none of the log's history is served");
                (Halt::SnapshotRefused { anchor, reason }, 0)
            }
        };
        let error = StoreError::from(halt.clone());
        tracing::error!(%error, "found after starting from a projection snapshot");
        if let Some(snapshots) = &mut self.snapshots {
            snapshots.refuse();
        }
        self.halt.send_replace(Some(halt));
        self.log.take_back(good);
        match crate::replay::fold_before(&self.log, good.saturating_add(1)).await {
            Ok((projection, last_time)) => {
                *self.projection.write().unwrap_or_else(|p| p.into_inner()) = projection;
                self.last_time = last_time;
            }
            Err(error) => tracing::error!(%error, "cannot fold the log's history again"),
        }
    }

    /// Reads what other replicas appended after this writer's head into the
    /// projection, in order, verified as every reader of the log verifies
    /// it (the chain, and with trusted keys the signatures), and wakes the
    /// streams of the instances it touched. A record that fails halts the
    /// store: it serves what it verified before it and takes no changes.
    async fn catch_up(&mut self) -> Result<(), StoreError> {
        if let Some(halt) = &*self.halt.borrow() {
            return Err(halt.clone().into());
        }
        let mut last_time = self.last_time;
        // What the projection holds once the walk ends, however it ends: a
        // walk cut short by an unreachable log has folded what it handed on.
        let mut folded = self.log_head;
        let projection = self.projection.clone();
        let board = self.board.clone();
        let walked = self
            .log
            .verify_from(self.log_head, |record| {
                projection
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .catch_up(&record.event)
                    .map_err(|e| format!("does not fold: {e}"))?;
                // Its streams are woken now, not when the walk ends: under
                // a steady stream of other replicas' appends the walk
                // follows the head for as long as they keep coming.
                board.notify_committed(&record.event.instance_id, record.event.revision);
                last_time = last_time.max(record.event.commit_time);
                folded = Head {
                    sequence: record.event.sequence,
                    hash: record.hash,
                };
                Ok(())
            })
            .await;
        self.last_time = last_time;
        self.log_head = folded;
        self.head.send_replace(self.log_head.sequence);
        let verification = walked?;
        match verification.first_bad {
            None => Ok(()),
            Some((sequence, reason)) => {
                tracing::error!(
                    sequence,
                    %reason,
                    verified = self.log_head.sequence,
                    "another writer's append fails verification: serving the verified history read-only"
                );
                self.metrics.log_verification_failures.inc();
                let halt = Halt::Unverified { sequence, reason };
                self.halt.send_replace(Some(halt.clone()));
                Err(halt.into())
            }
        }
    }

    /// Decides every mutation of the batch against the projection plus the
    /// batch's own earlier outcomes, appends all their events in one durable
    /// write, publishes them, then answers. On a shared log another replica
    /// may have appended first: then it catches up and decides again.
    async fn commit(&mut self, mut batch: Vec<(Mutation, Reply)>) {
        for _ in 0..MAX_CONFLICTS {
            match self.try_commit(batch).await {
                None => return,
                Some(again) => batch = again,
            }
            if let Err(error) = self.catch_up().await {
                tracing::warn!(%error, "cannot catch up with the other replicas");
                self.answer_after_failed_catch_up(batch, &error);
                return;
            }
        }
        refuse(
            batch.into_iter().map(|(_, reply)| reply),
            "other replicas kept appending first; the change was not stored",
        );
    }

    /// Answers a batch whose append met another writer's and whose catch-up
    /// then failed. A retry whose earlier attempt (its answer lost) is among
    /// what the catch-up did read gets that attempt's answer; for the others
    /// this attempt was not stored, but an earlier one may be among the
    /// appends not read: never "not stored" then.
    fn answer_after_failed_catch_up(&self, batch: Vec<(Mutation, Reply)>, error: &StoreError) {
        let reason = format!(
            "{error}; whether the change was stored is unknown (an earlier attempt may have been): retry with the same request_id"
        );
        let projection = self.projection.read().unwrap_or_else(|p| p.into_inner());
        let mut pending = Pending::default();
        for (mutation, reply) in batch {
            let known = RequestKey::of_mutation(&mutation)
                .is_some_and(|key| projection.applied(&key).is_some());
            if known {
                let mut none = Vec::new();
                let answer = self.decide_one(
                    &projection,
                    &mut pending,
                    &mutation,
                    self.last_time,
                    &mut none,
                );
                debug_assert!(none.is_empty(), "a retry appends nothing");
                let _ = reply.send(answer);
            } else {
                let _ = reply.send(Err(StoreError::WriteFailed(reason.clone())));
            }
        }
    }

    /// One attempt; the batch back if another writer appended first.
    async fn try_commit(
        &mut self,
        batch: Vec<(Mutation, Reply)>,
    ) -> Option<Vec<(Mutation, Reply)>> {
        let mut events = Vec::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut pending = Pending::default();
        let deciding = Instant::now();
        {
            let projection = self.projection.read().unwrap_or_else(|p| p.into_inner());
            let now = SystemTime::now().max(self.last_time);
            for (mutation, reply) in batch {
                let first_event = events.len();
                let outcome =
                    self.decide_one(&projection, &mut pending, &mutation, now, &mut events);
                outcomes.push((mutation, reply, outcome, first_event..events.len()));
            }
            self.last_time = now;
        }

        // On a shared log this replica decided against its own view, which
        // may lag the log by the time another replica's append takes to
        // arrive. An append proves the view current (it compares the head);
        // an answer that appends nothing (a refusal, a no-op) is given only
        // once the head etcd has now (after the request arrived) is the one
        // it was decided against, else it is decided again after catching up.
        if self.log.is_shared() && outcomes.iter().any(|o| o.3.is_empty()) {
            match self.log.head().await {
                Ok(head) if head == self.log_head => {}
                Ok(head) => {
                    tracing::debug!(
                        view = self.log_head.sequence,
                        log = head.sequence,
                        "a refusal was decided on a view behind the log: deciding again"
                    );
                    self.metrics.stale_decisions.inc();
                    return Some(
                        outcomes
                            .into_iter()
                            .map(|(mutation, reply, _, _)| (mutation, reply))
                            .collect(),
                    );
                }
                Err(error) => {
                    // Unconfirmed answers are not given; the changes go on.
                    let (unconfirmed, appending): (Vec<_>, Vec<_>) =
                        outcomes.into_iter().partition(|o| o.3.is_empty());
                    let reason = format!(
                        "{error}; this replica cannot confirm its answer against the log, and nothing was stored"
                    );
                    refuse(
                        unconfirmed.into_iter().map(|(_, reply, _, _)| reply),
                        &reason,
                    );
                    outcomes = appending;
                }
            }
        }

        self.metrics.commit_decide.observe(deciding.elapsed());
        let appending = Instant::now();
        let appended = self.log.append(self.log_head, &events).await;
        let head = match appended {
            Ok(head) => head,
            Err(LogError::Conflict { expected, found }) => {
                tracing::debug!(
                    expected,
                    found,
                    "another replica appended first: deciding again"
                );
                return Some(
                    outcomes
                        .into_iter()
                        .map(|(mutation, reply, _, _)| (mutation, reply))
                        .collect(),
                );
            }
            Err(error @ (LogError::Unavailable(_) | LogError::Refused(_))) => {
                // A shared log out of reach or refusing: refuse, keep serving
                // reads; the next batch catches up with whatever did commit.
                tracing::warn!(%error, events = events.len(), "append not acknowledged by the cluster");
                let reason = if matches!(error, LogError::Refused(_)) {
                    format!("{error}; the change was not stored")
                } else {
                    format!(
                        "{error}; whether the change was stored is unknown: retry with the same request_id"
                    )
                };
                refuse(outcomes.into_iter().map(|(_, reply, _, _)| reply), &reason);
                return None;
            }
            Err(error) => {
                tracing::error!(%error, events = events.len(), "append failed: the batch's outcome is unknown");
                let reason = match error {
                    // An earlier failure stopped appends: nothing of this batch was written.
                    LogError::Poisoned => format!("{error}; the change was not stored"),
                    _ => format!(
                        "{error}; whether the change was stored is unknown: retry with the same request_id once the service is back"
                    ),
                };
                refuse(outcomes.into_iter().map(|(_, reply, _, _)| reply), &reason);
                self.failed.send_replace(Some(error.to_string()));
                return None;
            }
        };
        self.log_head = head;
        self.metrics.commit_append.observe(appending.elapsed());
        self.metrics.events_appended.add(events.len() as u64);
        {
            let mut projection = self.projection.write().unwrap_or_else(|p| p.into_inner());
            // The states folded while deciding are the states after these events.
            for firewall in pending.firewalls.into_values() {
                projection.install(firewall);
            }
            for event in &events {
                projection.record_request(event);
            }
        }
        // Only now, durable and in the projection, may enforcers see them:
        // each instance's events handed to its stream, in revision order
        // (the sort is stable).
        events.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        let mut events = events.into_iter().peekable();
        while let Some(first) = events.next() {
            let mut batch = vec![first];
            while let Some(next) = events.next_if(|e| e.instance_id == batch[0].instance_id) {
                batch.push(next);
            }
            self.board.notify_committed_events(batch);
        }
        self.head.send_replace(self.log_head.sequence);
        for (mutation, reply, outcome, range) in outcomes {
            if let Ok(Answer::Firewall(firewall)) = &outcome {
                info!(
                    instance_id = %mutation.instance_id,
                    revision = firewall.revision,
                    request_id = mutation.request_id.as_ref().map(RequestId::as_str),
                    actor = mutation.actor.as_str(),
                    command = mutation.command.name(),
                    events = range.len(),
                    "mutation committed"
                );
            }
            let _ = reply.send(outcome);
        }
        None
    }

    fn decide_one(
        &self,
        projection: &Projection,
        pending: &mut Pending,
        mutation: &Mutation,
        now: SystemTime,
        events: &mut Vec<Event>,
    ) -> Result<Answer, StoreError> {
        let instance = &mutation.instance_id;
        let request_key = RequestKey::of_mutation(mutation);
        if let Some(key) = &request_key {
            if let Some((firewall, digest)) = pending.requests.get(key) {
                same_request(mutation, *digest, None)?;
                return Ok(Answer::Firewall(firewall.clone()));
            }
            if let Some((revision, digest)) = projection.applied(key) {
                same_request(mutation, digest, Some(revision))?;
                return Ok(match projection.firewalls.get(instance) {
                    Some(current) if current.revision == revision => {
                        Answer::Firewall(current.clone())
                    }
                    _ => Answer::AppliedBefore { revision },
                });
            }
        }
        // A retry of what the verified log holds is answered above, even by
        // a store that takes no changes.
        if let Some(halt) = &*self.halt.borrow() {
            return Err(halt.clone().into());
        }
        let state = pending
            .firewalls
            .get(instance)
            .or_else(|| projection.firewalls.get(instance));
        let mut new_rule_id = || RuleId::from_uuid(uuid::Uuid::now_v7());
        let payloads = decide(
            instance,
            state.map(|f| &**f),
            &mutation.command,
            mutation.expected_revision,
            &mut new_rule_id,
        )?;
        if payloads.is_empty() {
            // Nothing changes; decide only answers with no events for a live firewall.
            return state.cloned().map(Answer::Firewall).ok_or_else(|| {
                StoreError::Fold(FoldError::Inapplicable {
                    instance_id: instance.to_string(),
                    revision: 0,
                    reason: "no-op on a missing firewall".into(),
                })
            });
        }
        let unconfirmed = match mutation.confirm {
            None => None,
            Some(confirm) => {
                if !matches!(
                    mutation.command,
                    Command::AddRule { .. }
                        | Command::UpdateRule { .. }
                        | Command::DeleteRule { .. }
                        | Command::ApplyFirewall { .. }
                ) {
                    return Err(DomainError::Invalid(ValidationError::new(
                        "confirm_within",
                        "only adding, changing or deleting rules can wait for a confirmation",
                    ))
                    .into());
                }
                let current = state.ok_or_else(|| {
                    StoreError::Domain(DomainError::FirewallNotFound {
                        instance_id: instance.to_string(),
                    })
                })?;
                current.check_can_hold_unconfirmed()?;
                Some(Unconfirmed {
                    revert_time: now + confirm.within,
                    first_revision: current.revision + 1,
                    confirm_on_traffic: confirm.on_traffic,
                })
            }
        };
        let mut firewall = state.map(|f| Firewall::clone(f));
        for payload in payloads {
            let event = Event {
                sequence: self.log_head.sequence + 1 + events.len() as u64,
                instance_id: instance.clone(),
                revision: firewall.as_ref().map_or(0, |f| f.revision) + 1,
                event_id: uuid::Uuid::now_v7(),
                commit_time: now,
                actor: mutation.actor.clone(),
                on_behalf_of: mutation.on_behalf_of.clone(),
                request_id: mutation.request_id.clone(),
                request_digest: mutation.request_digest,
                unconfirmed,
                payload,
            };
            firewall = Some(fold(firewall, &event)?);
            events.push(event);
        }
        let firewall = Arc::new(firewall.expect("folded at least one event"));
        pending.firewalls.insert(instance.clone(), firewall.clone());
        if let Some(key) = request_key {
            pending
                .requests
                .insert(key, (firewall.clone(), mutation.request_digest));
        }
        Ok(Answer::Firewall(firewall))
    }
}

/// Refuses a request that reuses an idempotency key its caller gave
/// another request (that appended `revision`, or is earlier in this batch):
/// answering it with the other request's outcome would say it happened.
/// A key recorded without a digest (before digests) counts as a retry.
fn same_request(
    mutation: &Mutation,
    first: Option<RequestDigest>,
    revision: Option<u64>,
) -> Result<(), StoreError> {
    match (first, mutation.request_digest) {
        (Some(first), Some(this)) if first != this => {
            let id = mutation.request_id.as_ref().map_or("", RequestId::as_str);
            let when = revision.map_or_else(
                || "earlier in the same batch".to_owned(),
                |r| format!("which made revision {r}"),
            );
            Err(DomainError::Invalid(ValidationError::new(
                RequestId::FIELD,
                format!(
                    "{id:?} was already used by this caller for a different request ({when}); \
                     a retry must repeat the request exactly, a new request needs a new request_id"
                ),
            ))
            .into())
        }
        _ => Ok(()),
    }
}

/// Answers every caller of a batch that was not committed.
fn refuse(replies: impl Iterator<Item = Reply>, reason: &str) {
    for reply in replies {
        let _ = reply.send(Err(StoreError::WriteFailed(reason.to_owned())));
    }
}

/// Outcomes decided earlier in the same batch, not yet durable.
#[derive(Default)]
struct Pending {
    firewalls: HashMap<InstanceId, Arc<Firewall>>,
    requests: HashMap<RequestKey, (Arc<Firewall>, Option<RequestDigest>)>,
}
