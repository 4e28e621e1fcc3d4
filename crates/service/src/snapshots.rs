//! Projection snapshots, the store's side: when the writer writes one (every
//! N events, every so often if anything changed, and at shutdown), how the
//! projection becomes a snapshot and back, and the background walk that
//! checks a start-up from one. The file format is the event log's
//! (`cassette_eventlog::snapshot`).
//!
//! A start from a snapshot trusts it only as far as it checks out at once
//! (checksum, seal with trusted keys, its anchor is the log's record) and
//! only until the walk ends: the records up to the anchor are verified and
//! folded again off the runtime, and the result must be the snapshot. Until
//! then, reads of those records wait (`Log::verify_tail`) and no newer
//! snapshot is written on top of it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cassette_eventlog::background::{self, Background};
use cassette_eventlog::snapshot::{self, AppliedRequest, ProjectionSnapshot, SnapshotFirewall};
use cassette_eventlog::{Head, Log, SigningKey};
use cassette_model::Firewall;

use crate::metrics::RulesMetrics;
use crate::projection::{Projection, RequestScope, Requests};

/// When the service writes a projection snapshot (of a log on sled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// After this many events since the last one (0: never write one).
    pub every_events: u64,
    /// Or once this long has passed since the last one, if any event came.
    pub interval: Duration,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        Self {
            every_events: 100_000,
            interval: Duration::from_secs(600),
        }
    }
}

/// The projection as a snapshot anchored at `anchor`.
pub(crate) fn to_snapshot(
    firewalls: &[(Arc<Firewall>, Option<Arc<Requests>>)],
    anchor: Head,
    last_time: SystemTime,
) -> ProjectionSnapshot {
    let firewalls = firewalls
        .iter()
        .map(|(firewall, requests)| {
            let mut requests: Vec<AppliedRequest> = requests
                .iter()
                .flat_map(|r| r.iter())
                .map(|(scope, &(revision, digest))| AppliedRequest {
                    actor: scope.actor.clone(),
                    on_behalf_of: scope.on_behalf_of.clone(),
                    request_id: scope.id.clone(),
                    revision,
                    digest,
                })
                .collect();
            // One order for one projection, whatever the hash map's.
            fn key(r: &AppliedRequest) -> (&str, Option<&str>, &str) {
                let on_behalf_of = r.on_behalf_of.as_ref().map(|a| a.as_str());
                (r.actor.as_str(), on_behalf_of, r.request_id.as_str())
            }
            requests.sort_by(|a, b| key(a).cmp(&key(b)));
            SnapshotFirewall {
                firewall: firewall.clone(),
                requests,
            }
        })
        .collect();
    ProjectionSnapshot {
        anchor,
        last_time,
        firewalls,
    }
}

/// A snapshot's projection (its deadlines not indexed yet).
pub(crate) fn from_snapshot(snapshot: ProjectionSnapshot) -> Projection {
    let mut projection = Projection::default();
    for SnapshotFirewall { firewall, requests } in snapshot.firewalls {
        let instance = firewall.instance_id.clone();
        if !requests.is_empty() {
            let requests: Requests = requests
                .into_iter()
                .map(|r| {
                    let scope = RequestScope {
                        actor: r.actor,
                        on_behalf_of: r.on_behalf_of,
                        id: r.request_id,
                    };
                    (scope, (r.revision, r.digest))
                })
                .collect();
            projection
                .requests
                .insert(instance.clone(), Arc::new(requests));
        }
        projection.firewalls.insert(instance, firewall);
    }
    projection
}

/// What the writer keeps to write snapshots.
pub(crate) struct Snapshotter {
    dir: PathBuf,
    key: Option<Arc<SigningKey>>,
    policy: SnapshotPolicy,
    metrics: Arc<RulesMetrics>,
    /// The anchor of the newest snapshot written or loaded.
    anchor: u64,
    /// When the last one was taken (or the service started).
    since: Instant,
    /// A start from a snapshot not yet confirmed by the walk of the log: no
    /// snapshot is written on top of it.
    unconfirmed: bool,
    writing: Option<Background<()>>,
}

impl Snapshotter {
    pub(crate) fn new(
        dir: PathBuf,
        key: Option<Arc<SigningKey>>,
        policy: SnapshotPolicy,
        metrics: Arc<RulesMetrics>,
        loaded: Option<u64>,
    ) -> Self {
        if let Some(anchor) = loaded {
            metrics
                .snapshot_anchor
                .set(i64::try_from(anchor).unwrap_or(i64::MAX));
        }
        if let Err(error) = snapshot::remove_leftovers(&dir) {
            tracing::warn!(%error, "cannot remove what an interrupted snapshot left");
        }
        Self {
            dir,
            key,
            policy,
            metrics,
            anchor: loaded.unwrap_or(0),
            since: Instant::now(),
            unconfirmed: loaded.is_some(),
            writing: None,
        }
    }

    /// The walk of the log confirmed the snapshot the service started from.
    pub(crate) fn confirmed(&mut self) {
        self.unconfirmed = false;
    }

    /// Whether a snapshot at `head` may be written now (newer than the
    /// last, none being written, a confirmed start, snapshots on).
    pub(crate) fn can_write(&mut self, head: u64) -> bool {
        if self.writing.as_ref().is_some_and(|w| w.is_finished()) {
            self.writing = None;
        }
        self.policy.every_events > 0
            && !self.unconfirmed
            && self.writing.is_none()
            && head > self.anchor
    }

    /// Whether a snapshot is due at `head`.
    pub(crate) fn due(&mut self, head: u64) -> bool {
        self.can_write(head)
            && (head - self.anchor >= self.policy.every_events
                || self.since.elapsed() >= self.policy.interval)
    }

    /// When the interval makes the next snapshot due, if one can be written.
    pub(crate) fn next_due(&mut self, head: u64) -> Option<Instant> {
        self.can_write(head)
            .then(|| self.since + self.policy.interval)
    }

    /// Takes a snapshot of `projection` at `anchor` (pointers to its
    /// firewalls and request maps, under the writer's read lock) and writes
    /// it off the runtime.
    pub(crate) fn start(&mut self, projection: &Projection, anchor: Head, last_time: SystemTime) {
        let started = Instant::now();
        let taken: Vec<(Arc<Firewall>, Option<Arc<Requests>>)> = projection
            .firewalls
            .iter()
            .map(|(id, firewall)| (firewall.clone(), projection.requests.get(id).cloned()))
            .collect();
        self.anchor = anchor.sequence;
        self.since = started;
        let (dir, key, metrics) = (self.dir.clone(), self.key.clone(), self.metrics.clone());
        let write = move |taken: Vec<(Arc<Firewall>, Option<Arc<Requests>>)>| {
            let snapshot = to_snapshot(&taken, anchor, last_time);
            drop(taken);
            let bytes = snapshot::encode(&snapshot, key.as_deref());
            match snapshot::write(&dir, &bytes) {
                Ok(()) => {
                    let elapsed = started.elapsed();
                    metrics.snapshots_written.inc();
                    metrics.snapshot_write.observe(elapsed);
                    metrics
                        .snapshot_bytes
                        .set(i64::try_from(bytes.len()).unwrap_or(i64::MAX));
                    metrics
                        .snapshot_anchor
                        .set(i64::try_from(anchor.sequence).unwrap_or(i64::MAX));
                    tracing::info!(
                        anchor = anchor.sequence,
                        firewalls = snapshot.firewalls.len(),
                        bytes = bytes.len(),
                        elapsed_ms = elapsed.as_millis() as u64,
                        "projection snapshot written"
                    );
                }
                // The older snapshot (if any) stays: start-up replays more.
                Err(error) => tracing::warn!(
                    anchor = anchor.sequence,
                    %error,
                    "cannot write the projection snapshot"
                ),
            }
        };
        // Off the runtime, at the lowest priority: it takes what the
        // service leaves idle (see cassette_eventlog::background).
        match background::spawn("projection-snapshot", move || taken, write) {
            Ok(writing) => self.writing = Some(writing),
            Err(error) => {
                tracing::warn!(anchor = anchor.sequence, %error, "cannot start writing the projection snapshot");
            }
        }
    }

    /// Waits for the snapshot being written, if any.
    pub(crate) async fn finish(&mut self) {
        if let Some(writing) = self.writing.take() {
            writing.wait().await;
        }
    }

    /// Moves the snapshot aside and writes none from now on (the walk of
    /// the log disagreed with it).
    pub(crate) fn refuse(&mut self) {
        self.metrics.snapshots_refused.inc();
        self.policy.every_events = 0;
        if let Err(error) = snapshot::set_aside(&self.dir) {
            tracing::error!(%error, "cannot move the projection snapshot aside: remove it before restarting");
        }
    }
}

/// What the walk of the records up to a snapshot's anchor found.
pub(crate) enum Confirmation {
    /// They verify and fold to the snapshot.
    Confirmed { records: u64, elapsed: Duration },
    /// Record `sequence` fails verification (the records before it are good).
    Unverified { sequence: u64, reason: String },
    /// The log verifies, and folds to something else than the snapshot
    /// taken at record `anchor`.
    Disagrees { anchor: u64, reason: String },
    /// The walk did not finish (the log could not be read, the walk
    /// panicked): nothing before the anchor was vouched for.
    Unfinished { anchor: u64, reason: String },
}

/// The snapshot a start-up loaded, as loaded.
pub(crate) struct Loaded {
    pub(crate) anchor: Head,
    pub(crate) projection: Projection,
    pub(crate) last_time: SystemTime,
}

/// Walks and folds the records up to the snapshot's anchor again, off the
/// runtime, and compares the fold with the snapshot.
pub(crate) async fn confirm(log: Arc<Log>, loaded: Loaded) -> Confirmation {
    let Loaded {
        anchor,
        projection: snapshot,
        last_time,
    } = loaded;
    let started = Instant::now();
    // On a thread of its own: a sled log's walk reads without awaiting, an
    // etcd log's awaits its reads on the runtime's reactor.
    let runtime = tokio::runtime::Handle::current();
    let walked = tokio::task::spawn_blocking(move || {
        let mut folded = Projection::default();
        let mut folded_time = SystemTime::UNIX_EPOCH;
        let verification = runtime.block_on(log.verify_until(anchor, |record| {
            folded.replay_record(record, &mut folded_time)
        }));
        (verification, folded, folded_time)
    })
    .await;
    let (verification, folded, folded_time) = match walked {
        Ok(walked) => walked,
        Err(error) => {
            return Confirmation::Unfinished {
                anchor: anchor.sequence,
                reason: format!("the walk of the log stopped: {error}"),
            }
        }
    };
    match verification {
        Err(error) => Confirmation::Unfinished {
            anchor: anchor.sequence,
            reason: format!("the log could not be read: {error}"),
        },
        Ok(v) => match v.first_bad {
            Some((sequence, reason)) => Confirmation::Unverified { sequence, reason },
            None => match folded.difference(&snapshot) {
                Some(reason) => Confirmation::Disagrees {
                    anchor: anchor.sequence,
                    reason,
                },
                None if folded_time != last_time => Confirmation::Disagrees {
                    anchor: anchor.sequence,
                    reason: "its last commit time is not the log's".to_owned(),
                },
                None => Confirmation::Confirmed {
                    records: v.events_checked,
                    elapsed: started.elapsed(),
                },
            },
        },
    }
}
