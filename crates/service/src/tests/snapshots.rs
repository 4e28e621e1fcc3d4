//! Starting from a projection snapshot, on a real sled log on disk: what a
//! start loads, what it refuses, and what the walk after it finds.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cassette_eventlog::snapshot;
use cassette_model::Command;

use super::{add, head, keyed, mutation, web, with_a_firewall, Unshared};
use crate::{Halt, LogConfig, OpenStats, SnapshotPolicy, Store, StoreError};

/// Snapshots only at shutdown (`on`), or never.
fn config(dir: &Path, on: bool) -> LogConfig {
    LogConfig {
        snapshots: SnapshotPolicy {
            every_events: if on { 1_000_000 } else { 0 },
            interval: Duration::from_secs(3600),
        },
        ..LogConfig::sled(dir)
    }
}

async fn open_with(dir: &Path, on: bool) -> (Arc<Store>, OpenStats) {
    Store::open(&config(dir, on), Arc::new(Unshared))
        .await
        .expect("open the store")
}

/// A log of 7 events (web-1 and its rules, one with a request id), with a
/// snapshot taken at its shutdown.
async fn log_with_a_snapshot(dir: &Path) {
    let store = with_a_firewall(dir).await;
    for port in 5000..5005 {
        store.mutate(mutation(add(port), None)).await.unwrap();
    }
    store
        .mutate(keyed(add(6000), "open-6000", "alice", 1))
        .await
        .unwrap();
    store.shutdown().await.unwrap();
    assert!(
        snapshot::read(dir).unwrap().is_some(),
        "written at shutdown"
    );
}

/// What a store shows of web-1 and its history.
async fn view(store: &Store) -> (cassette_model::Firewall, Vec<u64>) {
    let firewall = (*store.get(&web()).unwrap()).clone();
    let history = store
        .read_events(&web(), 0, u64::MAX)
        .await
        .unwrap()
        .iter()
        .map(|e| e.sequence)
        .collect();
    (firewall, history)
}

async fn halted(store: &Store) -> Halt {
    let mut halted = store.halted();
    let halt = tokio::time::timeout(Duration::from_secs(30), halted.wait_for(|h| h.is_some()))
        .await
        .expect("the walk after start-up halts the store")
        .unwrap()
        .clone();
    halt.unwrap()
}

#[tokio::test]
async fn a_start_from_the_snapshot_replays_only_the_log_after_it_and_serves_the_same() {
    let dir = tempfile::tempdir().unwrap();
    log_with_a_snapshot(dir.path()).await;
    // Three more events, with snapshots off: the snapshot stays at 7.
    let (store, _) = open_with(dir.path(), false).await;
    for port in 7000..7003 {
        store.mutate(mutation(add(port), None)).await.unwrap();
    }
    store.shutdown().await.unwrap();
    drop(store);

    let (store, stats) = open_with(dir.path(), true).await;
    assert_eq!(stats.snapshot, Some(7), "started from the snapshot");
    assert_eq!(stats.events, 3, "replayed only the log after it");
    // The history before the anchor is read once the walk has vouched for it.
    let from_snapshot = view(&store).await;
    assert_eq!(from_snapshot.1, (1..=10).collect::<Vec<_>>());
    // The request id applied before the snapshot is still known.
    let retried = store
        .mutate(keyed(add(6000), "open-6000", "alice", 1))
        .await
        .unwrap();
    assert_eq!(retried.revision, 7, "the retry's answer, not a new change");
    assert_eq!(head(&store).await, 10, "the retry appended nothing");
    assert!(store.read_only().is_ok());
    store.shutdown().await.unwrap();
    drop(store);

    // The whole log replayed (the snapshot removed) shows the same.
    std::fs::remove_file(snapshot::path(dir.path())).unwrap();
    let (store, stats) = open_with(dir.path(), false).await;
    assert_eq!((stats.snapshot, stats.events), (None, 10));
    assert_eq!(view(&store).await, from_snapshot);
}

#[tokio::test]
async fn a_damaged_or_foreign_snapshot_is_not_used_and_the_log_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    log_with_a_snapshot(dir.path()).await;
    let good = snapshot::read(dir.path()).unwrap().unwrap();
    let mut damaged = good.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0x01;
    snapshot::write(dir.path(), &damaged).unwrap();
    let (store, stats) = open_with(dir.path(), false).await;
    assert_eq!(
        (stats.snapshot, stats.events),
        (None, 7),
        "replayed in full"
    );
    assert_eq!(store.metrics().snapshots_refused.get(), 1);
    assert_eq!(store.get(&web()).unwrap().revision, 7);
    store.shutdown().await.unwrap();
    drop(store);

    // Another log's snapshot, sound in itself: its anchor is not this
    // log's record.
    let other = tempfile::tempdir().unwrap();
    let store = with_a_firewall(other.path()).await;
    for port in 1..=6 {
        store.mutate(mutation(add(port), None)).await.unwrap();
    }
    store.shutdown().await.unwrap();
    drop(store);
    snapshot::write(dir.path(), &good).unwrap();
    std::fs::copy(snapshot::path(dir.path()), snapshot::path(other.path())).unwrap();
    let (store, stats) = open_with(other.path(), false).await;
    assert_eq!(
        (stats.snapshot, stats.events),
        (None, 7),
        "replayed in full"
    );
    assert_eq!(store.get(&web()).unwrap().rules().len(), 3 + 6);
}

#[tokio::test]
async fn a_forged_snapshot_is_found_by_the_walk_and_the_store_serves_the_log_read_only() {
    let dir = tempfile::tempdir().unwrap();
    log_with_a_snapshot(dir.path()).await;
    // A snapshot with a sound checksum (the log is unsigned: no seal) that
    // says web-1 has one port fewer.
    let bytes = snapshot::read(dir.path()).unwrap().unwrap();
    let mut forged = snapshot::decode(&bytes, None).unwrap();
    let truth = (*forged.firewalls[0].firewall).clone();
    let lie = cassette_model::Firewall::restore(cassette_model::FirewallParts {
        instance_id: truth.instance_id.clone(),
        revision: truth.revision,
        rules: truth
            .rules()
            .iter()
            .filter(|r| r.spec.ports.first().get() != 5000)
            .cloned()
            .collect(),
        create_time: truth.create_time,
        update_time: truth.update_time,
        deleted: false,
        unconfirmed: truth.unconfirmed().to_vec(),
    })
    .unwrap();
    assert_eq!(lie.rules().len() + 1, truth.rules().len());
    forged.firewalls[0].firewall = Arc::new(lie);
    snapshot::write(dir.path(), &snapshot::encode(&forged, None)).unwrap();

    let (store, stats) = open_with(dir.path(), true).await;
    assert_eq!(
        stats.snapshot,
        Some(7),
        "taken at first: it checks out by itself"
    );
    let halt = halted(&store).await;
    assert!(
        matches!(&halt, Halt::SnapshotRefused { anchor: 7, reason } if reason.contains("web-1")),
        "{halt:?}"
    );
    // What the log folds to is served; nothing is taken.
    assert_eq!(*store.get(&web()).unwrap(), truth);
    let change = store.mutate(mutation(add(8000), None)).await;
    assert!(
        matches!(change, Err(StoreError::SnapshotRefused { anchor: 7, .. })),
        "{change:?}"
    );
    assert_eq!(store.metrics().snapshots_refused.get(), 1);
    store.shutdown().await.unwrap();
    drop(store);
    // Moved aside: the next start replays the log and takes changes.
    assert!(snapshot::read(dir.path()).unwrap().is_none());
    assert!(dir.path().join(snapshot::REFUSED_FILE).exists());
    let (store, stats) = open_with(dir.path(), true).await;
    assert_eq!(stats.snapshot, None);
    assert_eq!(*store.get(&web()).unwrap(), truth);
    store.mutate(mutation(add(8000), None)).await.unwrap();
}

#[tokio::test]
async fn a_record_changed_before_the_anchor_is_found_by_the_walk_and_history_stops_before_it() {
    let dir = tempfile::tempdir().unwrap();
    log_with_a_snapshot(dir.path()).await;
    cassette_eventlog::tamper::flip_bit(dir.path(), 3).unwrap();
    let (store, stats) = open_with(dir.path(), true).await;
    assert_eq!(stats.snapshot, Some(7), "its anchor, record 7, is intact");
    let halt = halted(&store).await;
    assert!(
        matches!(halt, Halt::Unverified { sequence: 3, .. }),
        "{halt:?}"
    );
    // Served: the history before the changed record, folded again.
    assert_eq!(store.get(&web()).unwrap().revision, 2);
    let history = store.read_events(&web(), 0, u64::MAX).await.unwrap();
    assert_eq!(
        history.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2]
    );
    let change = store.mutate(mutation(Command::CreateFirewall, None)).await;
    assert!(
        matches!(change, Err(StoreError::Halted { sequence: 3, .. })),
        "{change:?}"
    );
    store.shutdown().await.unwrap();
    drop(store);
    // The next start replays the whole log, and refuses it as it always did.
    let refused = Store::open(&config(dir.path(), true), Arc::new(Unshared)).await;
    assert!(
        matches!(refused, Err(StoreError::Unverified { sequence: 3, .. })),
        "{:?}",
        refused.err()
    );
}

#[tokio::test]
async fn a_snapshot_is_written_every_interval_when_something_changed_and_after_enough_events() {
    let dir = tempfile::tempdir().unwrap();
    let anchor = |dir: &Path| {
        snapshot::read(dir)
            .unwrap()
            .map(|bytes| snapshot::decode(&bytes, None).unwrap().anchor.sequence)
    };
    let wait_for = |want: u64| {
        let dir = dir.path().to_owned();
        async move {
            for _ in 0..400 {
                if anchor(&dir) == Some(want) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("no snapshot at {want}: {:?}", anchor(&dir));
        }
    };
    let policy = |every_events, interval| LogConfig {
        snapshots: SnapshotPolicy {
            every_events,
            interval,
        },
        ..LogConfig::sled(dir.path())
    };
    // By time: one change, then a snapshot within the interval.
    let config = policy(1_000_000, Duration::from_millis(200));
    let (store, _) = Store::open(&config, Arc::new(Unshared)).await.unwrap();
    store
        .mutate(mutation(Command::CreateFirewall, None))
        .await
        .unwrap();
    wait_for(1).await;
    assert_eq!(store.metrics().snapshots_written.get(), 1);
    // Nothing changed since: none more.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(store.metrics().snapshots_written.get(), 1);
    store.shutdown().await.unwrap();
    drop(store);

    // By count: every 3 events.
    let config = policy(3, Duration::from_secs(3600));
    let (store, _) = Store::open(&config, Arc::new(Unshared)).await.unwrap();
    for port in 5000..5003 {
        store.mutate(mutation(add(port), None)).await.unwrap();
    }
    wait_for(4).await;
}
