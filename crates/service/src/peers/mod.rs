//! What replicas on one shared (etcd) log tell each other beside the log,
//! as values each replica publishes, named per instance:
//!
//! - `<instance>`: the sync state this replica's enforcer stream
//!   acknowledged (`SyncStatus`), shown by every other replica;
//! - `<instance>/asks`: this replica wants the instance's reports (the ask's
//!   time, Unix milliseconds): whichever replica has the enforcer asks it
//!   for a fresh report and forwards each for `REPORT_INTEREST`;
//! - `<instance>/report`: the enforcer's latest report (`Report`), forwarded
//!   for replicas that asked.
//!
//! Reports go only where they are asked for: every enforcer reports every
//! few seconds, and a cluster-wide write for each would load etcd for
//! counters nobody reads.
//!
//! Two ways: a replica served with an address others reach it at
//! ([`Replicas::share_directly`]) publishes only that address in etcd
//! (`@address`, on its lease) and hands its values to the replicas that
//! follow it over gRPC (`direct`): an ack costs no etcd write. Without one,
//! it publishes the values themselves in etcd on its lease (see
//! `cassette_eventlog::etcd::SharedWriter`), as before. Every replica reads
//! both, so the two can run side by side (a rolling upgrade).
//!
//! The values' bytes are the public protobuf messages; this crate speaks no
//! protobuf, so the doors hand in the [`Wire`] that encodes them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cassette_eventlog::etcd::{SharedChange, SharedWriter};
use cassette_model::InstanceId;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::sync::{lock, Observed, Peers, Snapshot, SyncBoard, REPORT_INTEREST};

mod direct;

pub use direct::{Dialer, Following, Published, SharedBatch};

/// How the shared values are encoded: `SyncStatus` and `Report`, the
/// messages every replica version reads.
pub trait Wire: Send + Sync + 'static {
    /// A replica's own view of an instance (what its stream acknowledged).
    fn encode_status(&self, status: &Snapshot) -> Vec<u8>;
    /// Another replica's view: `remote_connected` set if it had the enforcer.
    fn decode_status(&self, bytes: &[u8]) -> Result<Snapshot, String>;
    fn encode_report(&self, report: &Observed) -> Vec<u8>;
    /// A forwarded report; its `received` is filled in here.
    fn decode_report(&self, bytes: &[u8]) -> Result<Observed, String>;
}

/// How long a replica's published values outlive the replica (its etcd
/// lease): an instance whose replica was killed shows no enforcer after at
/// most this, until its enforcer reaches another replica.
pub const SHARED_TTL: Duration = Duration::from_secs(5);

const ASKS: &str = "asks";
const REPORT: &str = "report";
/// Where a replica that shares directly is reached (never an instance id).
const ADDRESS: &str = "@address";

/// This replica among the others on a shared log: what it publishes, and
/// whom it follows directly.
pub struct Replicas {
    /// This process's replica id.
    id: String,
    etcd: SharedWriter,
    wire: Arc<dyn Wire>,
    /// This replica's values, for its followers (once it shares directly).
    published: Arc<Published>,
    /// Set once this replica shares directly: its values stay out of etcd.
    direct: OnceLock<()>,
    dialer: OnceLock<Arc<dyn Dialer>>,
    /// Other replicas that share directly.
    followed: Mutex<HashMap<String, Followed>>,
    /// Where followed replicas' values go (as etcd's do).
    changes: mpsc::Sender<SharedChange>,
}

/// A replica followed directly.
struct Followed {
    address: String,
    task: Option<JoinHandle<()>>,
    /// The names of the values it sent, removed when it lapses.
    held: Arc<Mutex<HashSet<String>>>,
}

impl Replicas {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// This replica's own values, for the doors' `FollowShared`.
    pub fn published(&self) -> &Arc<Published> {
        &self.published
    }

    /// From now on this replica's values go to the replicas that follow it at
    /// `address` (published in etcd on its lease), not to etcd; and it
    /// follows the others that share directly through `dialer`. Call before
    /// any stream acknowledges anything (before serving).
    pub fn share_directly(&self, address: &str, dialer: Arc<dyn Dialer>) {
        self.follow_with(dialer);
        if self.direct.set(()).is_ok() {
            self.etcd.publish(ADDRESS, address.as_bytes().to_vec());
            tracing::info!(replica = %self.id, %address, "sharing sync state with the other replicas directly");
        }
    }

    /// Follows the replicas that share directly through `dialer` (this one's
    /// own values still go through etcd).
    pub fn follow_with(&self, dialer: Arc<dyn Dialer>) {
        if self.dialer.set(dialer).is_err() {
            return;
        }
        let mut followed = lock(&self.followed);
        for (replica, peer) in followed.iter_mut() {
            peer.task = Some(self.spawn_follow(replica, peer));
        }
    }

    fn spawn_follow(&self, replica: &str, peer: &Followed) -> JoinHandle<()> {
        let dialer = self.dialer.get().cloned();
        tokio::spawn(direct::follow(
            replica.to_owned(),
            peer.address.clone(),
            dialer.expect("spawned only with a dialer"),
            self.changes.clone(),
            peer.held.clone(),
            SHARED_TTL,
        ))
    }

    fn publish(&self, name: &str, value: Vec<u8>) {
        if self.direct.get().is_some() {
            self.published.set(name, value);
        } else {
            self.etcd.publish(name, value);
        }
    }

    /// Another replica's address, published or gone (its lease ended).
    fn addressed(&self, replica: &str, address: Option<String>) {
        let mut followed = lock(&self.followed);
        if let Some(old) = followed.get(replica) {
            if Some(&old.address) == address.as_ref() {
                return;
            }
        }
        if let Some(old) = followed.remove(replica) {
            if let Some(task) = old.task {
                task.abort();
            }
            for change in direct::lapse(replica, &old.held) {
                // The queue is the one this is called from: never wait on it.
                if self.changes.try_send(change).is_err() {
                    tracing::warn!(%replica, "a lapsed replica's value stays until its next change: the queue is full");
                }
            }
        }
        let Some(address) = address else { return };
        tracing::info!(%replica, %address, "following a replica's sync state directly");
        let mut peer = Followed {
            address,
            task: None,
            held: Arc::default(),
        };
        if self.dialer.get().is_some() {
            peer.task = Some(self.spawn_follow(replica, &peer));
        }
        followed.insert(replica.to_owned(), peer);
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for peer in lock(&self.followed).values_mut() {
            if let Some(task) = peer.task.take() {
                task.abort();
            }
        }
    }
}

struct Shared(Arc<Replicas>);

impl Peers for Shared {
    fn status(&self, instance: &InstanceId, status: &Snapshot) {
        self.0
            .publish(instance.as_str(), self.0.wire.encode_status(status));
    }

    fn report(&self, instance: &InstanceId, report: &Observed) {
        self.0.publish(
            &format!("{instance}/{REPORT}"),
            self.0.wire.encode_report(report),
        );
    }

    fn ask_for_reports(&self, instance: &InstanceId) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        self.0
            .publish(&format!("{instance}/{ASKS}"), now.to_string().into_bytes());
    }
}

/// Publishes this replica's values through `writer` (or, once it shares
/// directly, to its followers) and applies the other replicas' `changes`
/// (from etcd, and from the replicas it follows) to `board`.
pub(crate) fn share(
    board: &Arc<SyncBoard>,
    id: String,
    writer: SharedWriter,
    mut changes: mpsc::Receiver<SharedChange>,
    wire: Arc<dyn Wire>,
) -> Arc<Replicas> {
    let (followed_tx, mut followed_rx) = mpsc::channel(1024);
    let replicas = Arc::new(Replicas {
        id,
        etcd: writer,
        wire: wire.clone(),
        published: Arc::default(),
        direct: OnceLock::new(),
        dialer: OnceLock::new(),
        followed: Mutex::default(),
        changes: followed_tx,
    });
    board.set_peers(Box::new(Shared(replicas.clone())));
    let board = board.clone();
    let weak = Arc::downgrade(&replicas);
    tokio::spawn(async move {
        loop {
            let change = tokio::select! {
                change = changes.recv() => change,
                change = followed_rx.recv() => change,
            };
            let Some(change) = change else { return };
            if change.name == ADDRESS {
                let Some(replicas) = weak.upgrade() else {
                    return;
                };
                let address = change.value.and_then(|v| String::from_utf8(v).ok());
                replicas.addressed(&change.replica, address);
                continue;
            }
            apply(&board, &*wire, change);
        }
    });
    replicas
}

fn apply(board: &SyncBoard, wire: &dyn Wire, change: SharedChange) {
    let (name, kind) = match change.name.split_once('/') {
        Some((name, kind)) => (name, Some(kind)),
        None => (change.name.as_str(), None),
    };
    let Ok(instance) = InstanceId::parse(name) else {
        return;
    };
    let undecodable = |error: &dyn std::fmt::Display| {
        tracing::warn!(%error, replica = %change.replica, name = %change.name, "undecodable shared value");
    };
    match (kind, change.value) {
        (None, None) => board.record_remote(&instance, &change.replica, None),
        (None, Some(bytes)) => match wire.decode_status(&bytes) {
            Ok(status) => board.record_remote(&instance, &change.replica, Some(status)),
            Err(error) => undecodable(&error),
        },
        (Some(REPORT), Some(bytes)) => match wire.decode_report(&bytes) {
            Ok(mut report) => {
                // As received when the enforcer looked (never later than
                // now): a forwarded report can be read long after it arrived
                // (a replica following the shared values from the start
                // lists old ones).
                let now = SystemTime::now();
                report.received = report.observed.map_or(now, |t| t.min(now));
                board.record_remote_report(&instance, report)
            }
            Err(error) => undecodable(&error),
        },
        (Some(ASKS), Some(bytes)) => {
            let asked = std::str::from_utf8(&bytes)
                .ok()
                .and_then(|ms| ms.parse::<u64>().ok())
                .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
            let Some(asked) = asked else {
                return undecodable(&"not a time");
            };
            // An old ask (listed when this replica starts following) is over.
            let age = SystemTime::now().duration_since(asked).unwrap_or_default();
            if age < REPORT_INTEREST {
                board.record_remote_ask(&instance);
            }
        }
        // A replica gone: its asks and reports go with it.
        _ => {}
    }
}
