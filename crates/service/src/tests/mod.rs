//! The writer's batching and decisions, on a real sled log in a temporary
//! directory (no transport: the doors are tested end to end in tests/e2e).

mod snapshots;

use std::sync::Arc;

use cassette_model::{
    ActorId, Command, Description, DomainError, InstanceId, Port, Protocol, RequestDigest,
    RequestId, Sources,
};
use futures_util::future::join_all;

use crate::peers::Wire;
use crate::sync::{Observed, Snapshot};
use crate::{LogConfig, Mutation, Store, StoreError};

/// A sled log shares nothing with other replicas: the wire is never used.
pub(super) struct Unshared;

impl Wire for Unshared {
    fn encode_status(&self, _: &Snapshot) -> Vec<u8> {
        unreachable!("a sled log has no peers")
    }
    fn decode_status(&self, _: &[u8]) -> Result<Snapshot, String> {
        unreachable!("a sled log has no peers")
    }
    fn encode_report(&self, _: &Observed) -> Vec<u8> {
        unreachable!("a sled log has no peers")
    }
    fn decode_report(&self, _: &[u8]) -> Result<Observed, String> {
        unreachable!("a sled log has no peers")
    }
}

pub(super) async fn open(dir: &std::path::Path) -> Arc<Store> {
    let (store, _) = Store::open(&LogConfig::sled(dir), Arc::new(Unshared))
        .await
        .expect("open the store");
    store
}

pub(super) fn web() -> InstanceId {
    InstanceId::parse("web-1").unwrap()
}

pub(super) fn mutation(command: Command, request_id: Option<&str>) -> Mutation {
    Mutation {
        instance_id: web(),
        command,
        request_id: request_id.map(|r| RequestId::parse_optional(r).unwrap().unwrap()),
        request_digest: None,
        expected_revision: None,
        actor: ActorId::anonymous(),
        on_behalf_of: None,
        confirm: None,
    }
}

pub(super) fn add(port: u16) -> Command {
    Command::AddRule {
        ports: Port::new(u32::from(port)).unwrap().into(),
        protocol: Protocol::Tcp,
        description: Description::parse("").unwrap(),
        enabled: true,
        expire_time: None,
        sources: Sources::anywhere(),
    }
}

/// A store on a new log in `dir` with web-1's firewall created (revision 1).
pub(super) async fn with_a_firewall(dir: &std::path::Path) -> Arc<Store> {
    let store = open(dir).await;
    store
        .mutate(mutation(Command::CreateFirewall, None))
        .await
        .unwrap();
    store
}

pub(super) async fn head(store: &Store) -> u64 {
    *store.watch_head().borrow()
}

#[tokio::test]
async fn racing_adds_of_one_port_in_one_batch_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let store = with_a_firewall(dir.path()).await;
    // Queued together, they are decided in one batch, each against the
    // outcomes before it.
    let outcomes = join_all((0..20).map(|_| store.mutate(mutation(add(5432), None)))).await;
    let winners = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(winners, 1, "{outcomes:?}");
    for refused in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        assert!(
            matches!(refused, StoreError::Domain(DomainError::RuleExists { .. })),
            "{refused:?}"
        );
    }
    assert_eq!(store.revision(&web()).unwrap(), 2);
    assert_eq!(head(&store).await, 2, "the refused appended nothing");
}

#[tokio::test]
async fn a_batch_of_distinct_changes_commits_each_with_gapless_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let store = with_a_firewall(dir.path()).await;
    let outcomes = join_all((1000..1050).map(|port| store.mutate(mutation(add(port), None)))).await;
    let mut revisions: Vec<u64> = outcomes
        .iter()
        .map(|o| o.as_ref().unwrap().revision)
        .collect();
    revisions.sort_unstable();
    assert_eq!(revisions, (2..52).collect::<Vec<_>>());
    let events = store.read_events(&web(), 0, u64::MAX).await.unwrap();
    assert_eq!(events.len(), 51);
    assert!(events
        .windows(2)
        .all(|w| w[1].sequence == w[0].sequence + 1));
    assert_eq!(store.metrics().events_appended.get(), 51);
}

#[tokio::test]
async fn a_retried_request_id_answers_the_first_outcome_and_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = with_a_firewall(dir.path()).await;
    // The same request twice in one batch, then once more later.
    let (first, second) = tokio::join!(
        store.mutate(mutation(add(8080), Some("retry-1"))),
        store.mutate(mutation(add(8080), Some("retry-1"))),
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.revision, 2);
    assert_eq!(second.revision, 2);
    store.mutate(mutation(add(9090), None)).await.unwrap();
    // An older request's retry is answered with the state it made then.
    let again = store
        .mutate(mutation(add(8080), Some("retry-1")))
        .await
        .unwrap();
    assert_eq!(again.revision, 2);
    assert_eq!(head(&store).await, 3);
}

/// `mutation` as `actor` sends it, with `digest` standing for what it asks.
pub(super) fn keyed(command: Command, request_id: &str, actor: &str, digest: u8) -> Mutation {
    Mutation {
        actor: ActorId::parse(actor).unwrap(),
        request_digest: Some(RequestDigest([digest; 32])),
        ..mutation(command, Some(request_id))
    }
}

fn is_request_id_reuse(outcome: &Result<Arc<cassette_model::Firewall>, StoreError>) -> bool {
    matches!(outcome, Err(StoreError::Domain(DomainError::Invalid(v)))
        if v.field == "request_id" && v.message.contains("different request"))
}

#[tokio::test]
async fn a_request_id_belongs_to_its_caller_and_its_request() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = with_a_firewall(dir.path()).await;
        // Another principal's identical key is another request: both append.
        let mallory = store
            .mutate(keyed(add(9999), "close-5432", "mallory", 1))
            .await
            .unwrap();
        let alice = store
            .mutate(keyed(add(5432), "close-5432", "alice", 2))
            .await
            .unwrap();
        assert_eq!((mallory.revision, alice.revision), (2, 3));
        assert!(alice
            .rules()
            .iter()
            .any(|r| r.spec.ports.first().get() == 5432));
        // The same caller's key with another request: refused, nothing appended.
        let reused = store
            .mutate(keyed(add(6000), "close-5432", "alice", 3))
            .await;
        assert!(is_request_id_reuse(&reused), "{reused:?}");
        // Within one batch too.
        let (first, second) = tokio::join!(
            store.mutate(keyed(add(7000), "batch-1", "alice", 4)),
            store.mutate(keyed(add(7001), "batch-1", "alice", 5)),
        );
        assert_eq!(first.unwrap().revision, 4);
        assert!(is_request_id_reuse(&second), "{second:?}");
        // A true retry still gets the first answer, appending nothing.
        let retried = store
            .mutate(keyed(add(5432), "close-5432", "alice", 2))
            .await
            .unwrap();
        assert_eq!(retried.revision, 3);
        assert_eq!(head(&store).await, 4);
        store.shutdown().await.unwrap();
    }
    // What each key was is rebuilt from the log.
    let store = open(dir.path()).await;
    let reused = store
        .mutate(keyed(add(6000), "close-5432", "alice", 3))
        .await;
    assert!(is_request_id_reuse(&reused), "after a restart: {reused:?}");
    let retried = store
        .mutate(keyed(add(9999), "close-5432", "mallory", 1))
        .await
        .unwrap();
    assert_eq!(retried.revision, 2);
    assert_eq!(head(&store).await, 4);
}

#[tokio::test]
async fn what_was_committed_is_replayed_on_reopen_and_the_log_must_verify() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = with_a_firewall(dir.path()).await;
        store.mutate(mutation(add(443 + 1), None)).await.unwrap();
        store.shutdown().await.unwrap();
    }
    let store = open(dir.path()).await;
    assert_eq!(store.get(&web()).unwrap().revision, 2);
    store.shutdown().await.unwrap();
    drop(store);
    // A start that replays the whole log refuses it; one from the snapshot
    // the shutdown wrote finds it in the background (see `snapshots.rs`).
    std::fs::remove_file(cassette_eventlog::snapshot::path(dir.path())).unwrap();
    cassette_eventlog::tamper::flip_bit(dir.path(), 1).unwrap();
    let refused = Store::open(&LogConfig::sled(dir.path()), Arc::new(Unshared)).await;
    assert!(
        matches!(refused, Err(StoreError::Unverified { sequence: 1, .. })),
        "{:?}",
        refused.err()
    );
    // Allowed read-only: the history before the bad record, no changes taken.
    let config = LogConfig {
        allow_unverified: true,
        ..LogConfig::sled(dir.path())
    };
    let (store, _) = Store::open(&config, Arc::new(Unshared)).await.unwrap();
    assert!(store.get(&web()).is_err(), "nothing before record 1");
    let change = store.mutate(mutation(Command::CreateFirewall, None)).await;
    assert!(
        matches!(change, Err(StoreError::ReadOnly { .. })),
        "{change:?}"
    );
}

#[tokio::test]
async fn a_commit_hands_its_events_to_the_instance_stream_exactly_as_the_log_holds_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = with_a_firewall(dir.path()).await;
    let board = store.board();
    // No stream, no channels: nothing is kept for the instance.
    store.mutate(mutation(add(5432), None)).await.unwrap();
    assert_eq!(board.take_committed_events(&web(), 1, 2), None);

    let _stream = board.watch_committed(&web());
    let mut with_key = mutation(add(6379), Some("handed-1"));
    with_key.request_digest = Some(RequestDigest([7; 32]));
    store.mutate(with_key).await.unwrap();
    let from_log = store.read_events(&web(), 2, 3).await.unwrap();
    assert_eq!(
        board.take_committed_events(&web(), 2, 3),
        Some(from_log),
        "what the stream sends is what the log holds"
    );
    assert_eq!(
        board.take_committed_events(&web(), 2, 3),
        None,
        "taken: the next reader reads the log"
    );

    // A batch of several of the instance's events (revisions 4 to 13).
    for port in 1000..1010 {
        store.mutate(mutation(add(port), None)).await.unwrap();
    }
    let batch = store.read_events(&web(), 3, 13).await.unwrap();
    // A stream part of the way through, on a page that ends early.
    board.notify_committed_events(batch.clone());
    assert_eq!(
        board.take_committed_events(&web(), 5, 9),
        Some(batch[2..6].to_vec())
    );
    // A stream further behind than the batch reads the log.
    board.notify_committed_events(batch.clone());
    assert_eq!(board.take_committed_events(&web(), 2, 13), None);
    // So does one whose range the batch does not cover whole.
    let mut gap = batch.clone();
    gap.remove(4);
    board.notify_committed_events(gap);
    assert_eq!(board.take_committed_events(&web(), 3, 13), None);
    board.notify_committed_events(batch.clone());
    assert_eq!(board.take_committed_events(&web(), 3, 13), Some(batch));
}
