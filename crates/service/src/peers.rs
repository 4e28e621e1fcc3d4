//! What replicas on one shared (etcd) log tell each other beside the log,
//! as values each replica publishes on a lease of its own (see
//! `cassette_eventlog::etcd::SharedWriter`), named per instance:
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
//! The values' bytes are the public protobuf messages; this crate speaks no
//! protobuf, so the doors hand in the [`Wire`] that encodes them.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cassette_eventlog::etcd::{SharedChange, SharedWriter};
use cassette_model::InstanceId;
use tokio::sync::mpsc;

use crate::sync::{Observed, Peers, Snapshot, SyncBoard, REPORT_INTEREST};

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

struct Shared(SharedWriter, Arc<dyn Wire>);

impl Peers for Shared {
    fn status(&self, instance: &InstanceId, status: &Snapshot) {
        self.0
            .publish(instance.as_str(), self.1.encode_status(status));
    }

    fn report(&self, instance: &InstanceId, report: &Observed) {
        self.0.publish(
            &format!("{instance}/{REPORT}"),
            self.1.encode_report(report),
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

/// Publishes this replica's values through `writer` and applies the other
/// replicas' `changes` to `board`.
pub(crate) fn share(
    board: &Arc<SyncBoard>,
    writer: SharedWriter,
    mut changes: mpsc::Receiver<SharedChange>,
    wire: Arc<dyn Wire>,
) {
    board.set_peers(Box::new(Shared(writer, wire.clone())));
    let board = board.clone();
    tokio::spawn(async move {
        while let Some(change) = changes.recv().await {
            apply(&board, &*wire, change);
        }
    });
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
