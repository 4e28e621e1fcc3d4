//! What each instance's enforcers have acknowledged, and the wake-ups that
//! drive sync streams and WaitForSync.
//!
//! Fan-out is proportional to interest: each instance with a stream or a
//! waiter has its own pair of `watch` channels. A commit wakes only the
//! instances it touched; `watch` never blocks the sender, so a slow or stuck
//! enforcer can never delay the writer or another enforcer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use cassette_model::{Event, InstanceId, Port, Protocol};
use tokio::sync::watch;

use crate::blocked::BlockedTraffic;
use crate::metrics::RulesMetrics;

/// An instance's acknowledged sync state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Enforcers with an open stream for the instance.
    pub connected: u32,
    /// Every event up to here is in the kernel.
    pub applied_revision: u64,
    /// The last failed apply (revision, nft's message), cleared by a later success.
    pub failed: Option<(u64, String)>,
    pub last_latency: Option<Duration>,
    pub last_ack_time: Option<SystemTime>,
    /// What the latest enforcer to say Hello reported about its saved state.
    pub state_error: Option<String>,
    /// What the enforcer last reported seeing (hit counts, listening sockets).
    pub observed: Option<Arc<Observed>>,
    /// The instance's enforcer streams to another replica (a shared log),
    /// and the fields above are what that replica published.
    pub remote_connected: bool,
}

/// What the enforcer last reported seeing on the instance: hit counts per
/// rule (its protocol and port, all its sources together) and the listening
/// sockets. Never in the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// When the enforcer looked (its clock).
    pub observed: Option<SystemTime>,
    /// When the report arrived (this service's clock).
    pub received: SystemTime,
    /// Whether the hits are the kernel's counters (else nothing is known of them).
    pub counted: bool,
    /// (wire protocol, port) -> what the rule's elements counted.
    pub by_rule: HashMap<(i32, u32), RuleHits>,
    /// (wire protocol, listening port) -> TCP connections established to
    /// it; `None`: not read.
    pub connections: Option<HashMap<(i32, u32), u32>>,
    /// (wire protocol, port) -> the addresses listening; `None`: not read.
    pub listening: Option<HashMap<(i32, u32), Vec<String>>>,
    /// The revision the enforcer had acknowledged as applied when the report
    /// arrived (set as it is recorded).
    pub applied_revision: u64,
    /// What the firewall dropped lately, most recent first; `None`: the
    /// enforcer's backend records nothing.
    pub blocked: Option<Vec<BlockedTraffic>>,
}

/// What a rule's elements (all its sources together) counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleHits {
    pub packets: u64,
    /// When the enforcer last saw the count grow.
    pub last_hit: Option<SystemTime>,
    /// Packets in the last hour (as far back as the enforcer has counted).
    pub last_hour: u64,
}

/// A rule's key in [`Observed`]: the wire's protocol number
/// (`cassette.firewall.v1.Protocol`: TCP 1, UDP 2) and its first port (rules
/// of one protocol never overlap, so it names one rule).
pub fn observed_key(protocol: Protocol, port: Port) -> (i32, u32) {
    let wire = match protocol {
        Protocol::Tcp => 1,
        Protocol::Udp => 2,
    };
    (wire, u32::from(port.get()))
}

impl Observed {
    /// At most this many elements and sockets are read from one report.
    pub const MAX_ENTRIES: usize = 65_536;
    /// At most this many blocked ports, and top sources of each.
    pub const MAX_BLOCKED: usize = 256;
    pub const MAX_TOP_SOURCES: usize = 5;

    /// The dropped attempts recorded for `protocol`/`port`, if any.
    pub fn blocked_on(&self, protocol: Protocol, port: Port) -> Option<&BlockedTraffic> {
        self.blocked
            .as_deref()?
            .iter()
            .find(|b| b.protocol == protocol && b.port == port)
    }

    /// A rule's hits and last hit: only an enabled rule has an element.
    pub fn hits_of(&self, protocol: i32, port: u32, enabled: bool) -> (u64, Option<SystemTime>) {
        if !enabled {
            return (0, None);
        }
        self.by_rule
            .get(&(protocol, port))
            .map_or((0, None), |hits| (hits.packets, hits.last_hit))
    }
}

impl Snapshot {
    /// Whether `revision` has been acknowledged, as applied or as failed.
    pub fn has_acked(&self, revision: u64) -> bool {
        self.applied_revision >= revision || self.failed_since(revision)
    }

    /// Whether the last failed apply was of `revision` or a later one.
    fn failed_since(&self, revision: u64) -> bool {
        self.failed.as_ref().is_some_and(|(r, _)| *r >= revision)
    }

    /// An enforcer streams for the instance, to this replica or another.
    pub fn is_connected(&self) -> bool {
        self.connected > 0 || self.remote_connected
    }

    /// Takes what another replica published as this state (its own
    /// stream's view: `remote_connected` says whether it had the enforcer).
    fn take_remote(&mut self, remote: &Snapshot) {
        self.remote_connected = remote.remote_connected;
        self.applied_revision = remote.applied_revision;
        self.failed.clone_from(&remote.failed);
        self.last_latency = remote.last_latency;
        self.last_ack_time = remote.last_ack_time;
        self.state_error.clone_from(&remote.state_error);
    }

    /// The rule changed at `revision`: applied, failed or pending.
    pub fn rule_status(&self, revision: u64) -> RuleStatus {
        if self.applied_revision >= revision {
            RuleStatus::Applied
        } else if self.failed_since(revision) {
            RuleStatus::Failed
        } else {
            RuleStatus::Pending
        }
    }

    /// The instance's state when its latest revision is `latest_revision`.
    pub fn state(&self, latest_revision: u64) -> SyncState {
        if !self.is_connected() {
            SyncState::NoEnforcer
        } else if self.failed.is_some() {
            SyncState::Error
        } else if self.applied_revision >= latest_revision {
            SyncState::InSync
        } else {
            SyncState::Pending
        }
    }
}

/// Whether a rule's last change is in force on the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleStatus {
    Applied,
    Pending,
    Failed,
}

/// An instance's enforcer, as far as this replica knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    NoEnforcer,
    Error,
    InSync,
    Pending,
}

struct Channels {
    /// The instance's latest durable revision.
    committed: watch::Sender<u64>,
    /// The events of the instance's latest commit by this replica's writer,
    /// until its stream takes them: a stream that keeps up sends them
    /// without reading back from the log what was just written to it.
    latest: Mutex<Option<Vec<Event>>>,
    status: watch::Sender<Snapshot>,
    /// Bumped by each new sync stream: one live stream per instance, the
    /// newest; older ones see the change and close.
    generation: watch::Sender<u64>,
    /// Bumped to ask the live stream's enforcer for a fresh report.
    report_requests: watch::Sender<u64>,
    /// What other replicas published (replica -> its view), on a shared log.
    remote: Mutex<HashMap<String, Snapshot>>,
    /// Until when another replica wants this one's reports of the instance.
    forward_until: Mutex<Option<Instant>>,
    /// When this replica last asked the others for the instance's reports.
    asked_peers: Mutex<Option<Instant>>,
}

impl Channels {
    fn wake_committed(&self, revision: u64) {
        self.committed.send_if_modified(|current| {
            let newer = revision > *current;
            if newer {
                *current = revision;
            }
            newer
        });
    }
}

/// The latest durable revision of an instance, as the projection has it.
pub type CommittedRevision = Box<dyn Fn(&InstanceId) -> u64 + Send + Sync>;

/// Per-instance sync state and wake-ups.
pub struct SyncBoard {
    instances: Mutex<HashMap<InstanceId, Arc<Channels>>>,
    committed: CommittedRevision,
    metrics: Arc<RulesMetrics>,
    /// On a shared log: the other replicas.
    peers: OnceLock<Box<dyn Peers>>,
}

/// What this replica tells the other replicas on a shared log (written in
/// the background: never blocks).
pub trait Peers: Send + Sync {
    /// What this replica's stream for the instance acknowledged.
    fn status(&self, instance: &InstanceId, status: &Snapshot);
    /// What the instance's enforcer reported to this replica, for replicas
    /// that asked.
    fn report(&self, instance: &InstanceId, report: &Observed);
    /// Asks whichever replica has the instance's enforcer for its reports
    /// (a fresh one now, then each one for [`REPORT_INTEREST`]).
    fn ask_for_reports(&self, instance: &InstanceId);
}

/// How long a replica forwards an instance's reports after another asked.
pub const REPORT_INTEREST: Duration = Duration::from_secs(60);

impl SyncBoard {
    pub fn new(metrics: Arc<RulesMetrics>, committed: CommittedRevision) -> Self {
        Self {
            instances: Mutex::default(),
            committed,
            metrics,
            peers: OnceLock::new(),
        }
    }

    /// Shares local streams' sync state and reports with other replicas
    /// from now on.
    pub fn set_peers(&self, peers: Box<dyn Peers>) {
        let _ = self.peers.set(peers);
    }

    /// After a local stream changed the instance's state: tell the others.
    fn published(&self, instance: &InstanceId, channels: &Channels) {
        if let Some(peers) = self.peers.get() {
            peers.status(instance, &channels.status.borrow());
        }
    }

    /// Another replica asked for the instance's reports: ask this replica's
    /// stream (if it has the enforcer) for a fresh one, and forward each
    /// report for [`REPORT_INTEREST`].
    pub fn record_remote_ask(&self, instance: &InstanceId) {
        if (self.committed)(instance) == 0 {
            return;
        }
        let channels = self.channels(instance);
        *lock(&channels.forward_until) = Some(Instant::now() + REPORT_INTEREST);
        channels
            .report_requests
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A report another replica's stream received, forwarded because this
    /// one asked: shown here while no enforcer streams to this replica.
    pub fn record_remote_report(&self, instance: &InstanceId, observed: Observed) {
        if (self.committed)(instance) == 0 {
            return;
        }
        let observed = Arc::new(observed);
        self.channels(instance).status.send_if_modified(|s| {
            let fresher = s
                .observed
                .as_ref()
                .is_none_or(|o| o.received <= observed.received);
            let take = s.connected == 0 && fresher;
            if take {
                s.observed = Some(observed);
            }
            take
        });
    }

    /// Keeps another replica's reports of the instance coming while someone
    /// reads it here (at most one ask per half [`REPORT_INTEREST`]).
    pub fn want_reports(&self, instance: &InstanceId) {
        let Some(peers) = self.peers.get() else {
            return;
        };
        // Only an instance another replica's enforcer state shows here.
        let Some(channels) = self.lock().get(instance).cloned() else {
            return;
        };
        if !channels.status.borrow().remote_connected || channels.status.borrow().connected > 0 {
            return;
        }
        let mut asked = lock(&channels.asked_peers);
        if asked.is_some_and(|at| at.elapsed() < REPORT_INTEREST / 2) {
            return;
        }
        *asked = Some(Instant::now());
        peers.ask_for_reports(instance);
    }

    /// What another replica published about `instance` (`None`: it no longer
    /// does). Shown here while no enforcer streams to this replica; the
    /// freshest connected replica's view wins.
    pub fn record_remote(&self, instance: &InstanceId, replica: &str, status: Option<Snapshot>) {
        // Sync state only for instances that exist here.
        if (self.committed)(instance) == 0 {
            return;
        }
        let channels = self.channels(instance);
        {
            let mut remote = lock(&channels.remote);
            match status {
                Some(status) => remote.insert(replica.to_owned(), status),
                None => remote.remove(replica),
            };
        }
        self.show_remote(&channels);
    }

    /// Shows the freshest remote view, unless a local stream is the truth.
    fn show_remote(&self, channels: &Channels) {
        let chosen = {
            let remote = lock(&channels.remote);
            remote
                .values()
                .max_by_key(|s| {
                    let ack_time = s.last_ack_time.unwrap_or(SystemTime::UNIX_EPOCH);
                    (s.remote_connected, ack_time)
                })
                .cloned()
        };
        channels.status.send_if_modified(|s| {
            if s.connected > 0 {
                return false;
            }
            let before = s.clone();
            match &chosen {
                Some(remote) => s.take_remote(remote),
                None => s.remote_connected = false,
            }
            *s != before
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceId, Arc<Channels>>> {
        lock(&self.instances)
    }

    /// The instance's channels. New ones start at the projection's revision,
    /// read while this lock is held: the writer updates the projection before
    /// it takes this lock to notify (see [`SyncBoard::notify_committed`]), so
    /// no commit is missed.
    fn channels(&self, instance: &InstanceId) -> Arc<Channels> {
        self.lock()
            .entry(instance.clone())
            .or_insert_with(|| {
                self.metrics.tracked_instances.inc();
                Arc::new(Channels {
                    committed: watch::Sender::new((self.committed)(instance)),
                    latest: Mutex::default(),
                    status: watch::Sender::new(Snapshot::default()),
                    generation: watch::Sender::new(0),
                    report_requests: watch::Sender::new(0),
                    remote: Mutex::default(),
                    forward_until: Mutex::default(),
                    asked_peers: Mutex::default(),
                })
            })
            .clone()
    }

    /// Called by the writer after the projection shows `revision` as durable.
    /// Wakes only this instance's streams, and only if it has any.
    pub fn notify_committed(&self, instance: &InstanceId, revision: u64) {
        if let Some(channels) = self.lock().get(instance) {
            channels.wake_committed(revision);
        }
    }

    /// [`SyncBoard::notify_committed`] for the writer's own commit of
    /// `events` (one instance's, in revision order), which the instance's
    /// stream may take instead of reading them from the log. Kept only for
    /// an instance with channels, and only until the next commit.
    pub fn notify_committed_events(&self, events: Vec<Event>) {
        let Some(last) = events.last() else {
            return;
        };
        let revision = last.revision;
        if let Some(channels) = self.lock().get(&last.instance_id) {
            *lock(&channels.latest) = Some(events);
            channels.wake_committed(revision);
        }
    }

    /// The events of `instance` with `after < revision <= until`, if the
    /// writer's latest commit handed them all on (see
    /// [`SyncBoard::notify_committed_events`]); taken, so that the next
    /// caller reads the log.
    pub fn take_committed_events(
        &self,
        instance: &InstanceId,
        after: u64,
        until: u64,
    ) -> Option<Vec<Event>> {
        let channels = self.lock().get(instance)?.clone();
        let mut events = lock(&channels.latest).take()?;
        events.retain(|e| e.revision > after && e.revision <= until);
        let whole = events.first()?.revision == after + 1
            && events.len() as u64 == until - after
            && events
                .windows(2)
                .all(|w| w[1].revision == w[0].revision + 1);
        whole.then_some(events)
    }

    /// Wakes with each newly durable revision of `instance`.
    pub fn watch_committed(&self, instance: &InstanceId) -> watch::Receiver<u64> {
        self.channels(instance).committed.subscribe()
    }

    pub fn watch_status(&self, instance: &InstanceId) -> watch::Receiver<Snapshot> {
        self.channels(instance).status.subscribe()
    }

    pub fn snapshot(&self, instance: &InstanceId) -> Snapshot {
        self.lock()
            .get(instance)
            .map(|c| c.status.borrow().clone())
            .unwrap_or_default()
    }

    /// Counts an enforcer stream as connected until the guard is dropped, and
    /// makes it the instance's one live stream: any older stream is told to close.
    pub fn connect(self: &Arc<Self>, instance: &InstanceId) -> Connection {
        let channels = self.channels(instance);
        let mut generation = 0;
        channels.generation.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        channels.status.send_modify(|s| s.connected += 1);
        self.published(instance, &channels);
        self.metrics.connected_enforcers.inc();
        Connection {
            board: self.clone(),
            channels,
            instance: instance.clone(),
            generation,
        }
    }

    /// A new stream's Hello says its kernel holds `hello.revision`: never
    /// claim more than that (an instance that rebooted, or an enforcer that
    /// lost its state, shows PENDING until it acks again). A higher claim
    /// raises nothing unless it is `verified` (its ruleset hash matched the
    /// log's for that revision, as an ack's must): then it counts as applied.
    pub fn record_hello(&self, instance: &InstanceId, hello: Hello) {
        let channels = self.channels(instance);
        channels.status.send_modify(|s| {
            s.applied_revision = s.applied_revision.min(hello.revision);
            if hello.verified {
                s.applied_revision = hello.revision;
                if s.failed.as_ref().is_some_and(|(r, _)| *r <= hello.revision) {
                    s.failed = None;
                }
                s.last_ack_time = Some(SystemTime::now());
            }
            s.state_error = hello.state_error;
        });
        self.published(instance, &channels);
    }

    /// Keeps what the instance's enforcer last reported seeing (and
    /// forwards it, if another replica asked for it lately).
    /// Returns the report it replaced, and the one it keeps now.
    pub fn record_report(
        &self,
        instance: &InstanceId,
        mut observed: Observed,
    ) -> (Option<Arc<Observed>>, Arc<Observed>) {
        let channels = self.channels(instance);
        observed.applied_revision = channels.status.borrow().applied_revision;
        let observed = Arc::new(observed);
        let mut previous = None;
        channels
            .status
            .send_modify(|s| previous = s.observed.replace(observed.clone()));
        let forward = lock(&channels.forward_until).is_some_and(|until| Instant::now() < until);
        if let Some(peers) = self.peers.get().filter(|_| forward) {
            peers.report(instance, &observed);
        }
        (previous, observed)
    }

    /// Asks the instance's enforcer for a fresh report: through this
    /// replica's live sync stream, or else through the replica it streams to.
    pub fn request_report(&self, instance: &InstanceId) {
        let channels = self.channels(instance);
        channels
            .report_requests
            .send_modify(|n| *n = n.wrapping_add(1));
        if channels.status.borrow().connected > 0 {
            return;
        }
        if let Some(peers) = self.peers.get() {
            *lock(&channels.asked_peers) = Some(Instant::now());
            peers.ask_for_reports(instance);
        }
    }

    /// Wakes when someone asks for a fresh report.
    pub fn watch_report_requests(&self, instance: &InstanceId) -> watch::Receiver<u64> {
        self.channels(instance).report_requests.subscribe()
    }

    /// Records an enforcer's ack of every event up to `revision`.
    pub fn record_ack(
        &self,
        instance: &InstanceId,
        revision: u64,
        result: Result<(), String>,
        latency: Option<Duration>,
    ) {
        if let Some(latency) = latency {
            self.metrics.ack_latency.observe(latency);
        }
        if result.is_err() {
            self.metrics.failed_acks.inc();
        }
        let channels = self.channels(instance);
        channels.status.send_modify(|s| {
            match result {
                Ok(()) => {
                    s.applied_revision = s.applied_revision.max(revision);
                    if s.failed.as_ref().is_some_and(|(r, _)| *r <= revision) {
                        s.failed = None;
                    }
                }
                Err(error) => s.failed = Some((revision, error)),
            }
            if latency.is_some() {
                s.last_latency = latency;
            }
            s.last_ack_time = Some(SystemTime::now());
        });
        self.published(instance, &channels);
    }
}

/// What a new sync stream's Hello establishes.
#[derive(Debug, Clone, Default)]
pub struct Hello {
    /// The revision the kernel holds, at most.
    pub revision: u64,
    /// The kernel holds exactly `revision` (the Hello's ruleset hash matched).
    pub verified: bool,
    /// Why the enforcer did not trust its saved state, if it did not.
    pub state_error: Option<String>,
}

/// An open enforcer stream; dropping it marks the stream closed.
pub struct Connection {
    board: Arc<SyncBoard>,
    channels: Arc<Channels>,
    instance: InstanceId,
    generation: u64,
}

impl Connection {
    /// Resolves once a newer stream for the same instance has opened.
    pub fn replaced(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut generations = self.channels.generation.subscribe();
        let mine = self.generation;
        async move {
            let _ = generations.wait_for(|g| *g != mine).await;
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.channels
            .status
            .send_modify(|s| s.connected = s.connected.saturating_sub(1));
        self.board.published(&self.instance, &self.channels);
        // The enforcer may have moved to another replica: its view shows now.
        self.board.show_remote(&self.channels);
        self.board.metrics.connected_enforcers.dec();
    }
}

/// A poisoned lock still guards data a panic left consistent (each holder
/// only assigns).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
