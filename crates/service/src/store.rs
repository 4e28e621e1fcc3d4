//! The firewall store: the event log, the in-memory projection folded from
//! it, and the single writer (`writer.rs`) that decides, appends and
//! publishes. Reads are served from the projection without touching the log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Instant, SystemTime};

use cassette_eventlog::etcd::{EtcdConfig, EtcdLog};
use cassette_eventlog::{snapshot, EventLog, Head, Log, LogError, RecordEncoding, Signing};
use cassette_model::{decide, ActorId, Command, DomainError, Event, Firewall, InstanceId, RuleId};
use cassette_ruleset::Ruleset;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Halt, StoreError};
use crate::metrics::RulesMetrics;
use crate::mutation::Mutation;
use crate::peers::Wire;
use crate::projection::{Deadline, Projection};
use crate::replay::{firewall_at, fold_before, At};
use crate::snapshots::{self, Loaded, SnapshotPolicy, Snapshotter};
use crate::sync::{Snapshot, SyncBoard};
use crate::writer::{Answer, Writer, WriterMessage};

/// How many mutations may wait for the writer before callers wait to enqueue.
const QUEUE_DEPTH: usize = 8192;
/// How long a linearizable read waits for this replica to catch up.
const LINEARIZABLE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Where the event log is and how it is signed: the one value both engines
/// open from.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub store: LogStore,
    /// Signs appends and (with trusted keys) serves only what a trusted
    /// signature covers.
    pub signing: Signing,
    /// Serve a sled log whose hash chain fails verification read-only (the
    /// history before the first bad record), to investigate, instead of
    /// refusing to start.
    pub allow_unverified: bool,
    /// When to write projection snapshots.
    pub snapshots: SnapshotPolicy,
    /// Where a replica of a shared (etcd) log keeps its projection snapshot
    /// (created if missing); `None` keeps none. A sled log keeps it in its
    /// data directory.
    pub snapshot_dir: Option<PathBuf>,
    /// How appends store their records (reads take either).
    pub record_encoding: RecordEncoding,
}

/// Which engine keeps the log.
// Made once at start-up: the etcd variant's size costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum LogStore {
    /// The embedded sled log in a data directory, written by this process alone.
    Sled(PathBuf),
    /// A log in an etcd cluster that several replicas share.
    Etcd(EtcdConfig),
}

impl LogConfig {
    /// The sled log in `data_dir`, unsigned, refused if it fails verification.
    pub fn sled(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            store: LogStore::Sled(data_dir.into()),
            signing: Signing::default(),
            allow_unverified: false,
            snapshots: SnapshotPolicy::default(),
            snapshot_dir: None,
            record_encoding: RecordEncoding::Compact,
        }
    }

    /// The log in etcd, unsigned.
    pub fn etcd(config: EtcdConfig) -> Self {
        Self {
            store: LogStore::Etcd(config),
            signing: Signing::default(),
            allow_unverified: false,
            snapshots: SnapshotPolicy::default(),
            snapshot_dir: None,
            record_encoding: RecordEncoding::Compact,
        }
    }

    /// Signed (and verified) as `signing` says.
    pub fn signed(mut self, signing: Signing) -> Self {
        self.signing = signing;
        self
    }

    /// Where a shared log's replica keeps its projection snapshot.
    pub fn snapshots_in(mut self, dir: impl Into<PathBuf>) -> Self {
        self.snapshot_dir = Some(dir.into());
        self
    }

    /// The directory of the projection snapshot, if one is kept: a sled
    /// log's data directory, or a shared log's [`LogConfig::snapshot_dir`].
    pub fn projection_snapshot_dir(&self) -> Option<&Path> {
        match &self.store {
            LogStore::Sled(data_dir) => Some(data_dir),
            LogStore::Etcd(_) => self.snapshot_dir.as_deref(),
        }
    }
}

/// Whether `dir` exists or could be made: a replica whose snapshot
/// directory cannot be made keeps no snapshot and says so.
fn snapshots_can_live_in(dir: &Path) -> bool {
    match std::fs::create_dir_all(dir) {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(
                dir = %dir.display(),
                %error,
                "cannot create the directory for projection snapshots: keeping none, a start replays the whole log"
            );
            false
        }
    }
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
    /// Set when the log failed verification: read-only from then on.
    halt: watch::Sender<Option<Halt>>,
    /// On a shared log: this replica among the others.
    replicas: Option<Arc<crate::peers::Replicas>>,
}

/// What opening the store found.
#[derive(Debug, Clone, Copy)]
pub struct OpenStats {
    /// Records verified and folded at start-up (with a snapshot: its tail).
    pub events: u64,
    pub firewalls: usize,
    pub elapsed: std::time::Duration,
    /// The record the projection snapshot it started from was taken at, if
    /// it started from one (the records up to it are walked in the background).
    pub snapshot: Option<u64>,
}

/// The projection a start-up folded, and from what.
struct Replayed {
    projection: Projection,
    last_time: SystemTime,
    head: Head,
    halt: Option<Halt>,
    events: u64,
    /// Started from a snapshot: the snapshot as loaded, for the walk that
    /// confirms it.
    snapshot: Option<Loaded>,
}

impl Store {
    /// Opens the log, replays it into the projection with the model's fold
    /// while checking its hash chain (one pass), and starts the writer; on a
    /// shared log, also the follower of other replicas' appends and the
    /// sharing of sync state, whose values `wire` encodes. Must run inside a
    /// tokio runtime.
    pub async fn open(
        config: &LogConfig,
        wire: Arc<dyn Wire>,
    ) -> Result<(Arc<Self>, OpenStats), StoreError> {
        let started = Instant::now();
        let signing = config.signing.clone();
        let metrics = Arc::new(RulesMetrics::default());
        let log = match &config.store {
            LogStore::Sled(data_dir) => Log::sled(
                EventLog::open(data_dir)?.with_record_encoding(config.record_encoding),
                signing.clone(),
            ),
            LogStore::Etcd(etcd) => Log::etcd(
                EtcdLog::connect(etcd)?.with_record_encoding(config.record_encoding),
                signing.clone(),
            ),
        };
        let snapshots = config
            .projection_snapshot_dir()
            .filter(|dir| snapshots_can_live_in(dir))
            .map(Path::to_path_buf);
        // A log served to investigate it is replayed in full, as it is.
        let from_snapshot = match &snapshots {
            Some(dir) if !config.allow_unverified => {
                Self::from_snapshot(&log, dir, &metrics).await?
            }
            _ => None,
        };
        let replayed = match from_snapshot {
            Some(replayed) => replayed,
            None => Self::replay_all(&log, config.allow_unverified).await?,
        };
        let stats = OpenStats {
            events: replayed.events,
            firewalls: replayed.projection.len(),
            elapsed: started.elapsed(),
            snapshot: replayed.snapshot.as_ref().map(|s| s.anchor.sequence),
        };
        let snapshotter = snapshots.map(|dir| {
            Snapshotter::new(
                dir,
                signing.key.clone(),
                config.snapshots,
                metrics.clone(),
                stats.snapshot,
            )
        });
        let store = Self::start(log, replayed, wire, metrics, snapshotter);
        Ok((store, stats))
    }

    /// The projection from the snapshot in `dir` and the records after it,
    /// if there is a snapshot and it checks out: its checksum, its seal
    /// (with trusted keys), its anchor (the log's record there has its
    /// hash), and the records after it verify. `None` (the log is then
    /// replayed in full) otherwise.
    async fn from_snapshot(
        log: &Log,
        dir: &std::path::Path,
        metrics: &RulesMetrics,
    ) -> Result<Option<Replayed>, StoreError> {
        let refused = |reason: String| {
            metrics.snapshots_refused.inc();
            tracing::warn!(%reason, "the projection snapshot is not used: replaying the whole log");
            None
        };
        let bytes = match snapshot::read(dir) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(None),
            Err(e) => return Ok(refused(format!("cannot read it: {e}"))),
        };
        let snapshot = match snapshot::decode(&bytes, log.signing().trusted.as_deref()) {
            Ok(snapshot) => snapshot,
            Err(reason) => return Ok(refused(reason)),
        };
        let anchor = snapshot.anchor;
        match log.record_hash(anchor.sequence).await? {
            Some(hash) if hash == anchor.hash => {}
            Some(_) => {
                return Ok(refused(format!(
                    "the log's record {} is not the one it was taken at",
                    anchor.sequence
                )))
            }
            None => {
                return Ok(refused(format!(
                    "it was taken at record {}, beyond the end of the log",
                    anchor.sequence
                )))
            }
        }
        let mut last_time = snapshot.last_time;
        let mut projection = snapshots::from_snapshot(snapshot);
        let loaded = Loaded {
            anchor,
            projection: projection.share(),
            last_time,
        };
        let tail = log
            .verify_tail(anchor, |record| {
                projection.replay_record(record, &mut last_time)
            })
            .await?;
        if let Some((sequence, reason)) = tail.first_bad {
            // The whole log's replay says what to do about it.
            log.unvouch();
            tracing::warn!(sequence, %reason, "the log after the projection snapshot fails verification: replaying the whole log");
            return Ok(None);
        }
        projection.index_deadlines();
        Ok(Some(Replayed {
            projection,
            last_time,
            head: tail.head,
            halt: None,
            events: tail.events_checked,
            snapshot: Some(loaded),
        }))
    }

    /// Replays the whole log into the projection with the model's fold while
    /// checking its hash chain (one pass).
    async fn replay_all(log: &Log, allow_unverified: bool) -> Result<Replayed, StoreError> {
        let mut projection = Projection::default();
        let mut last_time = SystemTime::UNIX_EPOCH;
        let verification = log
            .verify_each(|record| projection.replay_record(record, &mut last_time))
            .await?;
        let halt = match verification.first_bad.clone() {
            None => None,
            // Only what a trusted signature covers was folded: serve it.
            Some((sequence, reason)) if verification.signature_failed() => {
                tracing::error!(
                    sequence,
                    %reason,
                    "the event log holds a record no trusted signature covers: serving the verified history read-only"
                );
                Some(Halt::Unverified { sequence, reason })
            }
            Some((sequence, reason)) if allow_unverified => {
                tracing::warn!(sequence, %reason, "event log fails verification: serving read-only");
                // The single pass folded each record before its successor could
                // confirm its hash: fold again, stopping before the bad record.
                (projection, last_time) = fold_before(log, sequence).await?;
                Some(Halt::Investigating { sequence, reason })
            }
            Some((sequence, reason)) => return Err(StoreError::Unverified { sequence, reason }),
        };
        projection.index_deadlines();
        Ok(Replayed {
            projection,
            last_time,
            // A halted writer appends nothing and reads no other writer's
            // appends: it stays at the verified head.
            head: verification.head,
            halt,
            events: verification.events_checked,
            snapshot: None,
        })
    }

    /// Starts the writer (and, on a shared log, the follower of other
    /// replicas' appends) over a replayed projection.
    fn start(
        log: Log,
        replayed: Replayed,
        wire: Arc<dyn Wire>,
        metrics: Arc<RulesMetrics>,
        snapshots: Option<Snapshotter>,
    ) -> Arc<Self> {
        let Replayed {
            projection,
            last_time,
            head: log_head,
            halt,
            snapshot,
            ..
        } = replayed;
        let projection = Arc::new(RwLock::new(projection));
        if matches!(halt, Some(Halt::Unverified { .. })) {
            metrics.log_verification_failures.inc();
        }
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
        let halt = watch::Sender::new(halt);
        let writer = Writer {
            log: log.clone(),
            projection: projection.clone(),
            board: board.clone(),
            metrics: metrics.clone(),
            head: head.clone(),
            failed: failed.clone(),
            halt: halt.clone(),
            log_head,
            last_time,
            snapshots,
        };
        tokio::spawn(writer.run(rx));
        if let Some(loaded) = snapshot {
            // The records up to the anchor, walked and folded again while
            // the service serves; the writer acts on what the walk found.
            let (log, queue) = (log.clone(), tx.clone());
            tokio::spawn(async move {
                let found = snapshots::confirm(log, loaded).await;
                let _ = queue.send(WriterMessage::Confirmed(Box::new(found))).await;
            });
        }
        let id = uuid::Uuid::now_v7().to_string();
        let replicas = log
            .share("sync", &id, crate::peers::SHARED_TTL)
            .map(|(writer, changes)| crate::peers::share(&board, id, writer, changes, wire));
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
            halt,
            replicas,
        })
    }

    /// Applies `mutation` and returns the firewall after it, once durable.
    pub async fn mutate(&self, mutation: Mutation) -> Result<Arc<Firewall>, StoreError> {
        let instance = mutation.instance_id.clone();
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(WriterMessage::Mutate(Box::new(mutation), reply))
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        match answer.await.map_err(|_| StoreError::ShuttingDown)?? {
            Answer::Firewall(firewall) => Ok(firewall),
            Answer::AppliedBefore { revision } => {
                // A retry of an older request: its answer is the state then,
                // replayed here rather than in the writer, which serves everyone.
                firewall_at(&self.log, &instance, At::Revision(revision))
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

    /// Makes this replica's view at least as current as the shared log is
    /// now: one linearizable read of the head in etcd, then, if the view is
    /// behind it, the writer catches up (another replica's appends). What is
    /// read from the store afterwards includes everything acknowledged before
    /// this call, through any replica. At once on a log only this process
    /// writes.
    pub async fn catch_up_with_log(&self) -> Result<(), StoreError> {
        if !self.log.is_shared() {
            return Ok(());
        }
        if let Some(halt) = &*self.halt.borrow() {
            return Err(halt.clone().into());
        }
        let head = self.log.head().await?;
        let mut folded = self.watch_head();
        if *folded.borrow_and_update() >= head.sequence {
            return Ok(());
        }
        self.writer
            .send(WriterMessage::CatchUp(head.sequence))
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        let caught_up = async {
            folded
                .wait_for(|folded| *folded >= head.sequence)
                .await
                .map(drop)
        };
        match tokio::time::timeout(LINEARIZABLE_PATIENCE, caught_up).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(StoreError::ShuttingDown),
            Err(_) => Err(StoreError::Log(LogError::Unavailable(format!(
                "this replica could not catch up with the log's record {} within {:?}",
                head.sequence, LINEARIZABLE_PATIENCE
            )))),
        }
    }

    /// What `command` would make of the live firewall of `instance_id`,
    /// decided and folded as the writer would, on a copy: nothing is
    /// appended (a dry run). `actor` is whom the events would name.
    pub fn preview(
        &self,
        instance_id: &InstanceId,
        command: &Command,
        expected_revision: Option<u64>,
        actor: &ActorId,
    ) -> Result<(Arc<Firewall>, Firewall), StoreError> {
        let before = self.get(instance_id)?;
        let mut new_rule_id = || RuleId::from_uuid(uuid::Uuid::now_v7());
        let payloads = decide(
            instance_id,
            Some(&before),
            command,
            expected_revision,
            &mut new_rule_id,
        )?;
        let mut after = (*before).clone();
        let now = SystemTime::now();
        for payload in payloads {
            after.apply(&Event {
                sequence: 0,
                instance_id: instance_id.clone(),
                revision: after.revision + 1,
                event_id: uuid::Uuid::now_v7(),
                commit_time: now.max(after.update_time),
                actor: actor.clone(),
                on_behalf_of: None,
                request_id: None,
                request_digest: None,
                unconfirmed: None,
                payload,
            })?;
        }
        Ok((before, after))
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
        let mut live = projection
            .firewalls
            .after(after)
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

    /// On a shared log: this replica among the others (what it shares with
    /// them, and how).
    pub fn replicas(&self) -> Option<&Arc<crate::peers::Replicas>> {
        self.replicas.as_ref()
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

    /// When the next rule expires or unconfirmed change is reverted, if any.
    pub fn next_deadline(&self) -> Option<SystemTime> {
        self.read().deadlines.first().map(|(t, _, _)| *t)
    }

    /// Up to `limit` deadlines at or before `now`, soonest first.
    pub fn due_deadlines(&self, now: SystemTime, limit: usize) -> Vec<(InstanceId, Deadline)> {
        self.read()
            .deadlines
            .iter()
            .take_while(|(t, _, _)| *t <= now)
            .take(limit)
            .map(|(_, instance, deadline)| (instance.clone(), deadline.clone()))
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

    /// Whether `hash` is what revision `revision` of `instance` renders to:
    /// by this renderer, or by an earlier one (an enforcer not yet upgraded
    /// holds the same ports in the table it renders). Also answers the
    /// current rendering's hash, for logs.
    pub async fn ruleset_hash_matches(
        &self,
        instance: &InstanceId,
        revision: u64,
        hash: &str,
    ) -> Result<(bool, String), StoreError> {
        let then = self.firewall_at(instance, revision).await?;
        let ruleset = Ruleset::of(Some(&then));
        Ok((ruleset.hash_matches(hash), ruleset.hash()))
    }

    /// `instance`'s firewall at `revision` (deleted or not): the projection's
    /// when it is the current one, else replayed from the log (a cost that
    /// grows with the instance's history: once per sync stream, never per ack).
    pub async fn firewall_at(
        &self,
        instance: &InstanceId,
        revision: u64,
    ) -> Result<Arc<Firewall>, StoreError> {
        if let Some(current) = self.read().firewalls.get(instance) {
            if current.revision == revision {
                return Ok(current.clone());
            }
        }
        let then = firewall_at(&self.log, instance, At::Revision(revision)).await?;
        Ok(Arc::new(then.firewall))
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
        match &*self.halt.borrow() {
            None => Ok(()),
            Some(halt) => Err(halt.clone().into()),
        }
    }

    /// Wakes when the store becomes read-only: it met a record that fails
    /// verification.
    pub fn halted(&self) -> watch::Receiver<Option<Halt>> {
        self.halt.subscribe()
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
