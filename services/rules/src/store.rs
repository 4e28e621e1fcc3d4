//! The firewall store: the event log, the in-memory projection folded from
//! it, and the single writer that decides, appends and publishes.
//!
//! Why one writer: validation against current state and the append must be
//! atomic per instance (two racing requests for a port can never both win),
//! and the log's hash chain is global. One task that takes every queued
//! mutation as a batch gives both, and makes every batch share one fsync
//! (group commit). Deciding is in-memory and takes microseconds; the fsync is
//! the cost, and it is paid once per batch rather than once per request.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Instant, SystemTime};

use cassette_eventlog::etcd::{EtcdConfig, EtcdLog};
use cassette_eventlog::{EventLog, Head, Log, LogError, Record};
use cassette_model::{
    decide, fold, ActorId, Command, DomainError, Event, Firewall, FoldError, InstanceId, RequestId,
    RuleId,
};
use cassette_ruleset::Ruleset;
use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::RulesMetrics;
use crate::sync::{Snapshot, SyncBoard};
use tracing::{info, info_span, Instrument};

/// How many queued mutations one commit takes at most.
const MAX_BATCH: usize = 1024;
/// On a shared (etcd) log: a mutation makes at most three events, and one
/// append carries at most `cassette_eventlog::etcd::MAX_BATCH_EVENTS`.
const MAX_SHARED_BATCH: usize = cassette_eventlog::etcd::MAX_BATCH_EVENTS / 3;
/// How often a writer on a shared log catches up and decides again when
/// other replicas keep appending first, before it answers UNAVAILABLE.
const MAX_CONFLICTS: usize = 16;
/// Records read per request when replaying or catching up.
const REPLAY_PAGE: usize = 1000;
/// How many mutations may wait for the writer before callers wait to enqueue.
const QUEUE_DEPTH: usize = 8192;

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

/// A change someone asked for.
#[derive(Debug)]
pub struct Mutation {
    pub instance_id: InstanceId,
    pub command: Command,
    pub request_id: Option<RequestId>,
    pub expected_revision: Option<u64>,
    pub actor: ActorId,
    /// The end user a delegate actor acts for.
    pub on_behalf_of: Option<ActorId>,
}

/// Every live and deleted firewall, folded from the log, plus the request ids
/// already applied (for idempotent retries). Updated only after a durable append.
///
/// Firewalls are shared (`Arc`) so that readers and answers take a pointer,
/// not a copy, and the writer installs the state it folded while deciding.
#[derive(Default)]
struct Projection {
    firewalls: BTreeMap<InstanceId, Arc<Firewall>>,
    requests: HashMap<(InstanceId, RequestId), u64>,
    /// Every live rule with an expire time, soonest first: the expiry
    /// schedule, rebuilt from the log at start-up.
    expiries: BTreeSet<(SystemTime, InstanceId, RuleId)>,
}

/// A firewall's rules that expire, as index keys.
fn expiry_keys(firewall: &Firewall) -> impl Iterator<Item = (SystemTime, InstanceId, RuleId)> + '_ {
    firewall
        .rules()
        .iter()
        .filter(|_| firewall.is_live())
        .filter_map(|r| {
            r.expire_time
                .map(|t| (t, firewall.instance_id.clone(), r.id.clone()))
        })
}

impl Projection {
    /// Indexes every expiring rule (after a replay).
    fn index_expiries(&mut self) {
        self.expiries = self
            .firewalls
            .values()
            .flat_map(|f| expiry_keys(f))
            .collect();
    }

    /// Installs a firewall's new state, keeping the expiry schedule in step.
    fn install(&mut self, firewall: Arc<Firewall>) {
        if let Some(old) = self.firewalls.get(&firewall.instance_id) {
            for key in expiry_keys(old) {
                self.expiries.remove(&key);
            }
        }
        self.expiries.extend(expiry_keys(&firewall));
        self.firewalls
            .insert(firewall.instance_id.clone(), firewall);
    }

    /// Folds one replayed event into the projection.
    fn replay(&mut self, event: &Event) -> Result<(), FoldError> {
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
    /// the expiry schedule stays in step (a replay at start-up indexes
    /// expiries once, at the end).
    fn catch_up(&mut self, event: &Event) -> Result<(), FoldError> {
        let current = self
            .firewalls
            .get(&event.instance_id)
            .map(|f| Firewall::clone(f));
        self.install(Arc::new(fold(current, event)?));
        self.record_request(event);
        Ok(())
    }

    fn record_request(&mut self, event: &Event) {
        if let Some(request_id) = &event.request_id {
            self.requests.insert(
                (event.instance_id.clone(), request_id.clone()),
                event.revision,
            );
        }
    }
}

enum WriterMessage {
    Mutate(Mutation, Reply),
    /// A writer left the log's head at this sequence (`u64::MAX`: unknown):
    /// read what is new into the projection, unless it was this writer.
    CatchUp(u64),
    /// Commit what is queued before this, then stop.
    Drain(oneshot::Sender<()>),
}

/// Shared by every request handler.
pub struct Store {
    log: Arc<Log>,
    projection: Arc<RwLock<Projection>>,
    writer: mpsc::Sender<WriterMessage>,
    board: Arc<SyncBoard>,
    metrics: Arc<RulesMetrics>,
    /// The log's last durable sequence, for audit tails of the whole log.
    head: watch::Sender<u64>,
    /// Set when the service stops, so long-lived streams end.
    closing: watch::Sender<bool>,
    /// Set when a write failed: what is on disk is unknown, the service must
    /// stop and be restarted on what is really there.
    failed: watch::Sender<Option<String>>,
    /// Set when the log failed verification (served read-only to investigate).
    read_only: Option<(u64, String)>,
}

/// What opening the store found.
#[derive(Debug, Clone, Copy)]
pub struct OpenStats {
    pub events: u64,
    pub firewalls: usize,
    pub elapsed: std::time::Duration,
}

impl Store {
    /// Opens the log in `data_dir`, replays it into the projection with the
    /// model's fold, and starts the writer. Must run inside a tokio runtime.
    pub fn open(data_dir: &Path) -> Result<(Arc<Self>, OpenStats), StoreError> {
        Self::open_with(data_dir, false)
    }

    /// Opens the log, verifying its hash chain while replaying it. A log that
    /// fails is refused, unless `allow_unverified`: then the service starts
    /// read-only with the history before the first bad record, to investigate.
    pub fn open_with(
        data_dir: &Path,
        allow_unverified: bool,
    ) -> Result<(Arc<Self>, OpenStats), StoreError> {
        let started = Instant::now();
        let log = EventLog::open(data_dir)?;
        let mut projection = Projection::default();
        let mut last_time = SystemTime::UNIX_EPOCH;
        let verification = log.verify_each(|record| {
            projection
                .replay(&record.event)
                .map_err(|e| e.to_string())?;
            last_time = last_time.max(record.event.commit_time);
            Ok(())
        })?;
        let read_only = match verification.first_bad {
            None => None,
            Some((sequence, reason)) if allow_unverified => {
                tracing::warn!(sequence, %reason, "event log fails verification: serving read-only");
                // The single pass folded each record before its successor could
                // confirm its hash: fold again, stopping before the bad record.
                projection = Projection::default();
                last_time = SystemTime::UNIX_EPOCH;
                // Records before the bad one are good: read no further than them.
                let good = usize::try_from(sequence.saturating_sub(1)).unwrap_or(usize::MAX);
                for record in log.scan(0).take(good) {
                    let record = record?;
                    if record.event.sequence >= sequence {
                        break;
                    }
                    projection.replay(&record.event)?;
                    last_time = last_time.max(record.event.commit_time);
                }
                Some((sequence, reason))
            }
            Some((sequence, reason)) => return Err(StoreError::Unverified { sequence, reason }),
        };
        projection.index_expiries();
        let stats = OpenStats {
            events: verification.events_checked,
            firewalls: projection.firewalls.len(),
            elapsed: started.elapsed(),
        };
        let log_head = log.head();
        let store = Self::start(Log::Sled(log), log_head, projection, last_time, read_only);
        Ok((store, stats))
    }

    /// Opens the log in an etcd cluster shared with other replicas: replays
    /// it by sequence (checking the hash chain), starts the writer, and
    /// follows what other replicas append.
    pub async fn open_etcd(config: &EtcdConfig) -> Result<(Arc<Self>, OpenStats), StoreError> {
        let started = Instant::now();
        let log = EtcdLog::connect(config)?;
        let mut projection = Projection::default();
        let mut last_time = SystemTime::UNIX_EPOCH;
        let verification = log
            .verify_each(|record| {
                projection
                    .replay(&record.event)
                    .map_err(|e| e.to_string())?;
                last_time = last_time.max(record.event.commit_time);
                Ok(())
            })
            .await?;
        if let Some((sequence, reason)) = verification.first_bad {
            return Err(StoreError::Unverified { sequence, reason });
        }
        let head = verification.head;
        projection.index_expiries();
        let stats = OpenStats {
            events: head.sequence,
            firewalls: projection.firewalls.len(),
            elapsed: started.elapsed(),
        };
        let store = Self::start(Log::Etcd(log), head, projection, last_time, None);
        Ok((store, stats))
    }

    /// Starts the writer (and, on a shared log, the follower of other
    /// replicas' appends) over a replayed projection.
    fn start(
        log: Log,
        log_head: Head,
        projection: Projection,
        last_time: SystemTime,
        read_only: Option<(u64, String)>,
    ) -> Arc<Self> {
        let projection = Arc::new(RwLock::new(projection));
        let metrics = Arc::new(RulesMetrics::default());
        let committed = projection.clone();
        let board = Arc::new(SyncBoard::new(
            metrics.clone(),
            Box::new(move |instance| {
                let projection = committed.read().unwrap_or_else(|p| p.into_inner());
                projection.firewalls.get(instance).map_or(0, |f| f.revision)
            }),
        ));
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let changes = log.changes();
        let log = Arc::new(log);
        let head = watch::Sender::new(log_head.sequence);
        let failed = watch::Sender::new(None);
        let writer_read_only = read_only.clone();
        let writer = Writer {
            log: log.clone(),
            projection: projection.clone(),
            board: board.clone(),
            metrics: metrics.clone(),
            head: head.clone(),
            failed: failed.clone(),
            read_only,
            log_head,
            last_time,
        };
        tokio::spawn(writer.run(rx));
        if let Some((writer, changes)) = log.share(
            "sync",
            &uuid::Uuid::now_v7().to_string(),
            crate::peers::SHARED_TTL,
        ) {
            crate::peers::share(&board, writer, changes);
        }
        if let Some(mut changes) = changes {
            // Another replica's append: the writer reads it in, in order with
            // its own commits. A full queue is a busy writer: it catches up
            // at its next conflict, and the next change wakes it again.
            let queue = tx.clone();
            tokio::spawn(async move {
                while changes.changed().await.is_ok() {
                    let head = *changes.borrow_and_update();
                    match queue.try_send(WriterMessage::CatchUp(head)) {
                        Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
            });
        }
        Arc::new(Self {
            log,
            projection,
            writer: tx,
            board,
            metrics,
            head,
            closing: watch::Sender::new(false),
            failed,
            read_only: writer_read_only,
        })
    }

    /// Applies `mutation` and returns the firewall after it, once durable.
    pub async fn mutate(&self, mutation: Mutation) -> Result<Arc<Firewall>, StoreError> {
        let instance = mutation.instance_id.clone();
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(WriterMessage::Mutate(mutation, reply))
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        match answer.await.map_err(|_| StoreError::ShuttingDown)?? {
            Answer::Firewall(firewall) => Ok(firewall),
            Answer::AppliedBefore { revision } => {
                // A retry of an older request: its answer is the state then,
                // replayed here rather than in the writer, which serves everyone.
                crate::audit::firewall_at(
                    &self.log,
                    &instance,
                    crate::audit::At::Revision(revision),
                )
                .await
                .map(|then| Arc::new(then.firewall))
            }
        }
    }

    /// The latest revision of `instance_id`, deleted firewalls included
    /// (an enforcer still applies a deletion); NOT_FOUND if it never existed.
    pub fn revision(&self, instance_id: &InstanceId) -> Result<u64, StoreError> {
        self.read()
            .firewalls
            .get(instance_id)
            .map(|f| f.revision)
            .ok_or_else(|| {
                DomainError::FirewallNotFound {
                    instance_id: instance_id.to_string(),
                }
                .into()
            })
    }

    /// Waits up to `patience` until the projection holds `revision` of an
    /// existing `instance` (another replica's write arriving); the latest
    /// revision then.
    pub async fn await_revision(
        &self,
        instance: &InstanceId,
        revision: u64,
        patience: std::time::Duration,
    ) -> u64 {
        let mut committed = self.board.watch_committed(instance);
        let _ = tokio::time::timeout(patience, committed.wait_for(|r| *r >= revision)).await;
        self.revision(instance).unwrap_or(0)
    }

    /// The live firewall of `instance_id`.
    pub fn get(&self, instance_id: &InstanceId) -> Result<Arc<Firewall>, StoreError> {
        self.read()
            .firewalls
            .get(instance_id)
            .filter(|f| f.is_live())
            .cloned()
            .ok_or_else(|| {
                DomainError::FirewallNotFound {
                    instance_id: instance_id.to_string(),
                }
                .into()
            })
    }

    /// Up to `limit` live firewalls that `visible` lets through, with instance
    /// ids after `after`, in id order, and whether more follow.
    pub fn list(
        &self,
        after: Option<&InstanceId>,
        limit: usize,
        visible: impl Fn(&InstanceId) -> bool,
    ) -> (Vec<Arc<Firewall>>, bool) {
        let projection = self.read();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut live = projection
            .firewalls
            .range((start, Bound::Unbounded))
            .filter(|(id, f)| f.is_live() && visible(id))
            .map(|(_, f)| f);
        let page: Vec<_> = live.by_ref().take(limit).cloned().collect();
        let more = live.next().is_some();
        (page, more)
    }

    pub fn metrics(&self) -> &Arc<RulesMetrics> {
        &self.metrics
    }

    pub fn board(&self) -> &Arc<SyncBoard> {
        &self.board
    }

    /// The event log, for audit reads.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Wakes with each newly durable sequence of the whole log.
    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// The sync state of `instance`'s enforcers.
    pub fn snapshot(&self, instance: &InstanceId) -> Snapshot {
        self.board.snapshot(instance)
    }

    /// When the next rule expires, if any does.
    pub fn next_expiry(&self) -> Option<SystemTime> {
        self.read().expiries.first().map(|(t, _, _)| *t)
    }

    /// Up to `limit` rules whose expire time is at or before `now`, soonest first.
    pub fn due_expiries(&self, now: SystemTime, limit: usize) -> Vec<(InstanceId, RuleId)> {
        self.read()
            .expiries
            .iter()
            .take_while(|(t, _, _)| *t <= now)
            .take(limit)
            .map(|(_, instance, rule)| (instance.clone(), rule.clone()))
            .collect()
    }

    /// The instance's events with `after < revision <= until`.
    pub async fn read_events(
        &self,
        instance: &InstanceId,
        after: u64,
        until: u64,
    ) -> Result<Vec<Event>, StoreError> {
        Ok(self.log.read_instance(instance, after, until).await?)
    }

    /// The hash of the ruleset revision `revision` of `instance` renders to:
    /// what an enforcer's ok ack of that revision must report.
    pub async fn ruleset_hash(
        &self,
        instance: &InstanceId,
        revision: u64,
    ) -> Result<String, StoreError> {
        if let Some(current) = self.read().firewalls.get(instance) {
            if current.revision == revision {
                return Ok(Ruleset::of(Some(current)).hash());
            }
        }
        let then =
            crate::audit::firewall_at(&self.log, instance, crate::audit::At::Revision(revision))
                .await?;
        Ok(Ruleset::of(Some(&then.firewall)).hash())
    }

    /// When revision `revision` of `instance` was committed.
    pub async fn commit_time(&self, instance: &InstanceId, revision: u64) -> Option<SystemTime> {
        if let Some(f) = self.read().firewalls.get(instance) {
            if f.revision == revision {
                return Some(f.update_time);
            }
        }
        let events = self
            .log
            .read_instance(instance, revision.saturating_sub(1), revision)
            .await
            .ok()?;
        events.first().map(|e| e.commit_time)
    }

    /// Why the service is read-only (a log that failed verification), if it is.
    pub fn read_only(&self) -> Result<(), StoreError> {
        match &self.read_only {
            None => Ok(()),
            Some((sequence, reason)) => Err(StoreError::ReadOnly {
                sequence: *sequence,
                reason: reason.clone(),
            }),
        }
    }

    /// Wakes with the reason once a write to the log has failed.
    pub fn failure(&self) -> watch::Receiver<Option<String>> {
        self.failed.subscribe()
    }

    /// Resolves once the service begins to stop: what every long-lived call
    /// (sync streams, follow streams, WaitForSync) selects on.
    pub fn stopping(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closing = self.closing.subscribe();
        async move {
            let _ = closing.wait_for(|c| *c).await;
        }
    }

    /// Whether the service has begun to stop.
    pub fn is_stopping(&self) -> bool {
        *self.closing.borrow()
    }

    /// Ends long-lived streams; in-flight unary requests still finish.
    pub fn begin_shutdown(&self) {
        self.closing.send_replace(true);
    }

    /// Commits everything queued so far, stops the writer and flushes the log.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        let (done, drained) = oneshot::channel();
        if self.writer.send(WriterMessage::Drain(done)).await.is_ok() {
            let _ = drained.await;
        }
        self.log.flush()?;
        Ok(())
    }

    fn read(&self) -> RwLockReadGuard<'_, Projection> {
        self.projection.read().unwrap_or_else(|p| p.into_inner())
    }
}

struct Writer {
    log: Arc<Log>,
    projection: Arc<RwLock<Projection>>,
    board: Arc<SyncBoard>,
    metrics: Arc<RulesMetrics>,
    head: watch::Sender<u64>,
    failed: watch::Sender<Option<String>>,
    /// Set when the log failed verification: every mutation is refused.
    read_only: Option<(u64, String)>,
    /// The last record appended: the next batch continues it.
    log_head: Head,
    /// Commit times never go backwards, even if the wall clock does.
    last_time: SystemTime,
}

/// What the writer answers a mutation with.
enum Answer {
    /// The firewall after the mutation (or after the retried request, when it
    /// is the current state or was decided in the same batch).
    Firewall(Arc<Firewall>),
    /// A retry of a request that appended `revision` earlier; the caller
    /// replays the state then from the log.
    AppliedBefore { revision: u64 },
}

type Reply = oneshot::Sender<Result<Answer, StoreError>>;

impl Writer {
    async fn run(mut self, mut queue: mpsc::Receiver<WriterMessage>) {
        while let Some(first) = queue.recv().await {
            let mut batch = Vec::new();
            let mut drained = None;
            let mut next = Some(first);
            let mut catch_up = false;
            while let Some(message) = next.take() {
                match message {
                    WriterMessage::Mutate(mutation, reply) => batch.push((mutation, reply)),
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
                let _ = done.send(());
                return;
            }
        }
    }

    /// Reads what other replicas appended after this writer's head into the
    /// projection, in order, checking the hash chain, and wakes the streams
    /// of the instances it touched.
    async fn catch_up(&mut self) -> Result<(), StoreError> {
        loop {
            let page = self
                .log
                .read_after(self.log_head.sequence, REPLAY_PAGE)
                .await?;
            if page.is_empty() {
                return Ok(());
            }
            let mut touched: HashMap<InstanceId, u64> = HashMap::new();
            {
                let mut projection = self.projection.write().unwrap_or_else(|p| p.into_inner());
                for record in &page {
                    follow_chain(&mut self.log_head, record)?;
                    projection.catch_up(&record.event)?;
                    self.last_time = self.last_time.max(record.event.commit_time);
                    touched.insert(record.event.instance_id.clone(), record.event.revision);
                }
            }
            for (instance, revision) in &touched {
                self.board.notify_committed(instance, *revision);
            }
            self.head.send_replace(self.log_head.sequence);
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
                let reason = format!("{error}; the change was not stored");
                refuse(batch.into_iter().map(|(_, reply)| reply), &reason);
                return;
            }
        }
        refuse(
            batch.into_iter().map(|(_, reply)| reply),
            "other replicas kept appending first; the change was not stored",
        );
    }

    /// One attempt; the batch back if another writer appended first.
    async fn try_commit(
        &mut self,
        batch: Vec<(Mutation, Reply)>,
    ) -> Option<Vec<(Mutation, Reply)>> {
        let mut events = Vec::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut pending = Pending::default();
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
        self.metrics.events_appended.add(events.len() as u64);
        let committed: Vec<(InstanceId, u64)> = pending
            .firewalls
            .iter()
            .map(|(id, f)| (id.clone(), f.revision))
            .collect();
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
        // Only now, durable and in the projection, may enforcers see them.
        for (instance, revision) in &committed {
            self.board.notify_committed(instance, *revision);
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
        if let Some((sequence, reason)) = &self.read_only {
            return Err(StoreError::ReadOnly {
                sequence: *sequence,
                reason: reason.clone(),
            });
        }
        let instance = &mutation.instance_id;
        let request_key = mutation.request_id.clone().map(|r| (instance.clone(), r));
        if let Some(key) = &request_key {
            if let Some(firewall) = pending.requests.get(key) {
                return Ok(Answer::Firewall(firewall.clone()));
            }
            if let Some(&revision) = projection.requests.get(key) {
                return Ok(match projection.firewalls.get(instance) {
                    Some(current) if current.revision == revision => {
                        Answer::Firewall(current.clone())
                    }
                    _ => Answer::AppliedBefore { revision },
                });
            }
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
                payload,
            };
            firewall = Some(fold(firewall, &event)?);
            events.push(event);
        }
        let firewall = Arc::new(firewall.expect("folded at least one event"));
        pending.firewalls.insert(instance.clone(), firewall.clone());
        if let Some(key) = request_key {
            pending.requests.insert(key, firewall.clone());
        }
        Ok(Answer::Firewall(firewall))
    }
}

/// Answers every caller of a batch that was not committed.
fn refuse(replies: impl Iterator<Item = Reply>, reason: &str) {
    for reply in replies {
        let _ = reply.send(Err(StoreError::WriteFailed(reason.to_owned())));
    }
}

/// Moves `head` to `record` if it is the next record and links to it.
fn follow_chain(head: &mut Head, record: &Record) -> Result<(), StoreError> {
    let sequence = record.event.sequence;
    if sequence != head.sequence + 1 || record.prev_hash != head.hash {
        return Err(StoreError::Unverified {
            sequence,
            reason: format!("does not follow record {} in the hash chain", head.sequence),
        });
    }
    *head = Head {
        sequence,
        hash: record.hash,
    };
    Ok(())
}

/// Outcomes decided earlier in the same batch, not yet durable.
#[derive(Default)]
struct Pending {
    firewalls: HashMap<InstanceId, Arc<Firewall>>,
    requests: HashMap<(InstanceId, RequestId), Arc<Firewall>>,
}
