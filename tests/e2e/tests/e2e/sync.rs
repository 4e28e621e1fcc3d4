//! EnforcerService.Sync against the in-process service, with raw streams:
//! what is sent, when, and to whom.

use std::collections::HashMap;
use std::time::Duration;

use cassette_e2e::{pb, InProcess};
use cassette_proto::pb::enforcer_service_client::EnforcerServiceClient;
use cassette_proto::pb::sync_request::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// A hand-driven enforcer: it folds what it receives, so its ok acks carry
/// the ruleset hash of the revision they acknowledge, as a real one's do.
pub(crate) struct RawStream {
    acks: mpsc::Sender<pb::SyncRequest>,
    events: Streaming<pb::SyncResponse>,
    firewall: Option<cassette_model::Firewall>,
    hashes: HashMap<u64, String>,
}

async fn open(service: &InProcess, instance: &str, applied: u64) -> RawStream {
    let channel = cassette_e2e::channel(&cassette_e2e::tcp_target(service.addr)).await;
    open_on(channel, instance, applied)
        .await
        .expect("open sync stream")
}

/// Opens a sync stream on `channel` with a Hello for `instance` at `applied`.
pub(crate) async fn open_on(
    channel: tonic::transport::Channel,
    instance: &str,
    applied: u64,
) -> Result<RawStream, tonic::Status> {
    let hello = pb::Hello {
        instance_id: instance.into(),
        applied_revision: applied,
        enforcer_id: "raw".into(),
        version: "test".into(),
        ..Default::default()
    };
    open_with_hello(channel, hello).await
}

/// Opens a sync stream on `channel` that says `hello`.
pub(crate) async fn open_with_hello(
    channel: tonic::transport::Channel,
    hello: pb::Hello,
) -> Result<RawStream, tonic::Status> {
    let (acks, outbound) = mpsc::channel(16);
    acks.send(pb::SyncRequest {
        message: Some(Message::Hello(hello)),
    })
    .await
    .unwrap();
    let events = EnforcerServiceClient::new(channel)
        .sync(ReceiverStream::new(outbound))
        .await?
        .into_inner();
    Ok(RawStream {
        acks,
        events,
        firewall: None,
        hashes: HashMap::new(),
    })
}

impl RawStream {
    /// The stream's next message or its end status, within `wait`.
    pub(crate) async fn status(&mut self, wait: Duration) -> Option<Result<(), tonic::Status>> {
        match tokio::time::timeout(wait, self.events.message()).await {
            Ok(Ok(_)) => Some(Ok(())),
            Ok(Err(status)) => Some(Err(status)),
            Err(_) => None,
        }
    }

    /// The revisions of the next message, or `None` if nothing comes within `wait`.
    pub(crate) async fn next(&mut self, wait: Duration) -> Option<Vec<u64>> {
        let message = tokio::time::timeout(wait, self.events.message())
            .await
            .ok()?;
        let events = message.expect("stream ok").expect("stream open").events;
        for wire in &events {
            let event = cassette_proto::event_from_pb(wire).expect("a valid event");
            // A stream opened past revision 0 lacks the start of the history:
            // it receives, but cannot fold (nor ack with a valid hash).
            self.firewall = cassette_model::fold(self.firewall.take(), &event).ok();
            if let Some(firewall) = &self.firewall {
                let hash = cassette_ruleset::Ruleset::of(Some(firewall)).hash();
                self.hashes.insert(event.revision, hash);
            }
        }
        Some(events.iter().map(|e| e.revision).collect())
    }

    /// Sends a report of the kernel's hit counters.
    pub(crate) async fn report(&self, report: pb::Report) {
        self.acks
            .send(pb::SyncRequest {
                message: Some(Message::Report(report)),
            })
            .await
            .unwrap();
    }

    /// The ruleset hash of `revision`, if this stream folded it.
    pub(crate) fn hash_of(&self, revision: u64) -> Option<String> {
        self.hashes.get(&revision).cloned()
    }

    /// Acks `revision`: applied (with the hash of what it folded), or failed.
    pub(crate) async fn ack(&self, revision: u64, error: Option<&str>) {
        let hash = self.hashes.get(&revision).cloned().unwrap_or_default();
        self.ack_with_hash(revision, error, &hash).await;
    }

    pub(crate) async fn ack_with_hash(
        &self,
        revision: u64,
        error: Option<&str>,
        ruleset_hash: &str,
    ) {
        self.acks
            .send(pb::SyncRequest {
                message: Some(Message::Ack(pb::Ack {
                    revision,
                    ok: error.is_none(),
                    error: error.unwrap_or_default().into(),
                    ruleset_hash: ruleset_hash.into(),
                    ..Default::default()
                })),
            })
            .await
            .unwrap();
    }
}

async fn create(client: &mut cassette_e2e::Client, instance: &str) {
    cassette_e2e::create_firewall(client, instance).await;
}

async fn toggle_ssh(client: &mut cassette_e2e::Client, instance: &str, enabled: bool) -> u64 {
    cassette_e2e::set_enabled(client, instance, "default-ssh", enabled).await
}

async fn get(client: &mut cassette_e2e::Client, instance: &str) -> pb::Firewall {
    cassette_e2e::get_firewall(client, instance).await
}

/// web-1's sync status once it is in sync (acks are one-way: polled).
async fn in_sync(client: &mut cassette_e2e::Client) -> pb::SyncStatus {
    let mut status = pb::SyncStatus::default();
    for _ in 0..250 {
        status = get(client, "web-1").await.sync.unwrap();
        if status.state == pb::SyncState::InSync as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status.state, pb::SyncState::InSync as i32, "{status:?}");
    status
}

/// A client, and a hand-driven stream for web-1 (created) that has acked
/// its first revision.
async fn web_1_acked(service: &InProcess) -> (cassette_e2e::Client, RawStream) {
    let mut client = service.client().await;
    create(&mut client, "web-1").await;
    let mut stream = open(service, "web-1", 0).await;
    assert_eq!(stream.next(LONG).await, Some(vec![1]));
    stream.ack(1, None).await;
    (client, stream)
}

/// `instance` created and its SSH rule toggled `times` times; its last revision.
async fn toggled(client: &mut cassette_e2e::Client, instance: &str, times: usize) -> u64 {
    create(client, instance).await;
    let mut last = 1;
    for i in 0..times {
        last = toggle_ssh(client, instance, i % 2 == 1).await;
    }
    last
}

async fn wait(
    client: &mut cassette_e2e::Client,
    revision: u64,
    timeout: Duration,
) -> Result<pb::SyncStatus, tonic::Status> {
    client
        .wait_for_sync(pb::WaitForSyncRequest {
            instance_id: "web-1".into(),
            revision,
            timeout: Some(timeout.try_into().unwrap()),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// Opens a sync stream whose first message is `first`.
async fn open_with(
    service: &InProcess,
    first: Message,
) -> Result<Streaming<pb::SyncResponse>, tonic::Status> {
    let channel = cassette_e2e::channel(&cassette_e2e::tcp_target(service.addr)).await;
    let (acks, outbound) = mpsc::channel(4);
    acks.send(pb::SyncRequest {
        message: Some(first),
    })
    .await
    .unwrap();
    let answer = EnforcerServiceClient::new(channel)
        .sync(ReceiverStream::new(outbound))
        .await
        .map(|r| r.into_inner());
    drop(acks);
    answer
}

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_stream_gets_the_history_after_its_revision_then_only_its_own_instances_events() {
    let dir = tempfile::tempdir().unwrap();
    let service = InProcess::start(dir.path()).await;
    let mut client = service.client().await;
    create(&mut client, "a").await;
    toggle_ssh(&mut client, "a", false).await;

    let mut a = open(&service, "a", 1).await;
    let mut b = open(&service, "b", 0).await;
    assert_eq!(
        a.next(LONG).await,
        Some(vec![2]),
        "history after revision 1"
    );
    assert_eq!(
        b.next(SHORT).await,
        None,
        "b has no firewall yet: its stream waits"
    );

    toggle_ssh(&mut client, "a", true).await;
    assert_eq!(a.next(LONG).await, Some(vec![3]));
    assert_eq!(b.next(SHORT).await, None, "a's commit does not wake b");

    create(&mut client, "b").await;
    assert_eq!(b.next(LONG).await, Some(vec![1]));
    assert_eq!(a.next(SHORT).await, None, "b's commit does not wake a");
    service.stop().await;
}

#[tokio::test]
async fn a_stuck_enforcer_never_delays_the_writer_or_other_enforcers() {
    let dir = tempfile::tempdir().unwrap();
    let service = InProcess::start(dir.path()).await;
    let mut client = service.client().await;
    create(&mut client, "stuck").await;
    create(&mut client, "live").await;
    // Opened and never read: its buffers fill while its instance keeps changing.
    let _stuck = open(&service, "stuck", 0).await;
    let mut live = open(&service, "live", 1).await;

    for i in 0..300 {
        toggle_ssh(&mut client, "stuck", i % 2 == 1).await;
    }
    let revision = toggle_ssh(&mut client, "live", false).await;
    assert_eq!(live.next(LONG).await, Some(vec![revision]));
    service.stop().await;
}

#[tokio::test]
async fn acks_drive_sync_status_rule_status_and_wait_for_sync() {
    let dir = tempfile::tempdir().unwrap();
    let service = InProcess::start(dir.path()).await;
    let mut client = service.client().await;
    create(&mut client, "web-1").await;
    let sync = get(&mut client, "web-1").await.sync.unwrap();
    assert_eq!(sync.state, pb::SyncState::NoEnforcer as i32);
    assert!(!sync.enforcer_connected);

    let mut stream = open(&service, "web-1", 0).await;
    assert_eq!(stream.next(LONG).await, Some(vec![1]));
    let revision = toggle_ssh(&mut client, "web-1", false).await;
    assert_eq!(stream.next(LONG).await, Some(vec![revision]));

    // Nobody acked revision 2 yet: WaitForSync times out, naming what it waited for.
    let status = wait(&mut client, 0, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    assert!(status.message().contains("revision 2"), "{status:?}");

    stream.ack(1, None).await;
    stream.ack(2, Some("Error: simulated")).await;
    let status = wait(&mut client, 2, LONG).await.unwrap();
    assert_eq!(status.state, pb::SyncState::Error as i32);
    assert_eq!((status.applied_revision, status.failed_revision), (1, 2));
    assert_eq!(status.last_error, "Error: simulated");
    let firewall = get(&mut client, "web-1").await;
    let ssh = firewall
        .rules
        .iter()
        .find(|r| r.id == "default-ssh")
        .unwrap();
    let http = firewall
        .rules
        .iter()
        .find(|r| r.id == "default-http")
        .unwrap();
    assert_eq!(ssh.status, pb::RuleStatus::Failed as i32);
    assert_eq!(http.status, pb::RuleStatus::Applied as i32);

    stream.ack(2, None).await;
    // Acks are one-way: poll until the success lands.
    let status = in_sync(&mut client).await;
    assert!(status.last_error.is_empty());

    // An enforcer's error is kept, truncated to 4 KiB.
    let revision = toggle_ssh(&mut client, "web-1", true).await;
    assert_eq!(stream.next(LONG).await, Some(vec![revision]));
    stream.ack(revision, Some(&"x".repeat(10_000))).await;
    let status = wait(&mut client, revision, LONG).await.unwrap();
    assert_eq!(status.last_error.len(), 4096, "kept truncated");

    let invalid = wait(&mut client, 99, Duration::from_secs(1000))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    assert!(invalid.message().contains("timeout"), "{invalid:?}");
    drop(stream);
    service.stop().await;
}

/// An ack is checked against what the stream sent, at the end of one of its
/// recent messages: an ack of a revision inside a message (or from long
/// ago) is ignored, not answered by replaying the instance's history; one
/// at a message's end with the wrong hash is a mismatch, with the right
/// one, applied.
#[tokio::test]
async fn an_ack_is_checked_against_what_the_stream_sent_without_replaying_history() {
    let dir = tempfile::tempdir().unwrap();
    let service = InProcess::start(dir.path()).await;
    let mut client = service.client().await;
    let last = toggled(&mut client, "web-1", 40).await;
    let mut stream = open(&service, "web-1", 0).await;
    let mut received = Vec::new();
    while received.last() != Some(&last) {
        received.extend(stream.next(LONG).await.expect("the history"));
    }
    assert_eq!(received, (1..=last).collect::<Vec<_>>());
    let ignored = service.metrics.ignored_acks.get();
    // Revision 5 is inside the history's one message: the enforcer never
    // acks it (it acks what it folded to), so nothing vouches for its hash.
    stream.ack(5, None).await;
    stream.ack_with_hash(last, None, "not-the-hash").await;
    let status = wait(&mut client, last, LONG).await.unwrap();
    assert_eq!(status.state, pb::SyncState::Error as i32, "{status:?}");
    assert!(status.last_error.contains("does not hold"), "{status:?}");
    assert_eq!(service.metrics.ignored_acks.get(), ignored + 1);
    assert_eq!(service.metrics.ruleset_hash_mismatches.get(), 1);
    stream.ack(last, None).await;
    in_sync(&mut client).await;
    drop(stream);
    service.stop().await;
}

#[tokio::test]
async fn the_first_message_must_be_a_hello_for_a_valid_instance() {
    let dir = tempfile::tempdir().unwrap();
    let service = InProcess::start(dir.path()).await;
    let status = open_with(&service, Message::Ack(pb::Ack::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("Hello"), "{status:?}");
    let hello = pb::Hello {
        instance_id: "Bad_Id".into(),
        ..Default::default()
    };
    let status = open_with(&service, Message::Hello(hello))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let hello = pb::Hello {
        instance_id: "web-1".into(),
        enforcer_id: "e".repeat(129),
        version: "v".repeat(129),
        ..Default::default()
    };
    let status = open_with(&service, Message::Hello(hello))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    for field in ["enforcer_id", "version", "128"] {
        assert!(status.message().contains(field), "{status:?}");
    }
    service.stop().await;
}

#[tokio::test]
async fn hellos_and_follows_for_unknown_instances_create_no_sync_state() {
    let dir = tempfile::tempdir().unwrap();
    let service = InProcess::start(dir.path()).await;
    let mut ghosts = Vec::new();
    for i in 0..20 {
        ghosts.push(open(&service, &format!("ghost-{i}"), 0).await);
    }
    let channel = cassette_e2e::channel(&cassette_e2e::tcp_target(service.addr)).await;
    let _follow = cassette_proto::pb::audit_service_client::AuditServiceClient::new(channel)
        .list_events(pb::ListEventsRequest {
            instance_id: "ghost-x".into(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap();
    tokio::time::sleep(SHORT).await;
    assert_eq!(service.metrics.tracked_instances.get(), 0);

    // The stream still waits for its firewall, and gets it once created.
    let mut client = service.client().await;
    create(&mut client, "ghost-0").await;
    assert_eq!(ghosts[0].next(LONG).await, Some(vec![1]));
    assert_eq!(service.metrics.tracked_instances.get(), 1);
    service.stop().await;
}

#[tokio::test]
async fn a_long_history_is_streamed_in_bounded_pages() {
    let dir = tempfile::tempdir().unwrap();
    let service = InProcess::start(dir.path()).await;
    let mut client = service.client().await;
    let latest = toggled(&mut client, "busy", 600).await;
    let mut stream = open(&service, "busy", 0).await;
    let mut received = Vec::new();
    while received.len() < latest as usize {
        let page = stream.next(LONG).await.expect("the next page");
        assert!(
            !page.is_empty() && page.len() <= 512,
            "a page of {} events",
            page.len()
        );
        received.extend(page);
    }
    assert_eq!(
        received,
        (1..=latest).collect::<Vec<_>>(),
        "gapless, in order"
    );
    service.stop().await;
}

#[tokio::test]
async fn a_hello_ahead_of_the_log_is_answered_with_the_whole_history() {
    let dir = tempfile::tempdir().unwrap();
    let service = InProcess::start(dir.path()).await;
    let mut client = service.client().await;
    create(&mut client, "web-1").await;
    toggle_ssh(&mut client, "web-1", false).await;
    // An enforcer that applied revision 99 of a log restored to revision 2.
    let mut stream = open(&service, "web-1", 99).await;
    assert_eq!(stream.next(LONG).await, Some(vec![1, 2]), "resynced from 0");
    stream.ack(2, None).await;
    let status = wait(&mut client, 2, LONG).await.unwrap();
    assert_eq!(status.applied_revision, 2, "{status:?}");
    service.stop().await;
}

/// web-1 at revision 2, streamed to an enforcer that folded it (and, with
/// `ack`, acknowledged it) and went away: the revision and its ruleset hash.
async fn applied_then_gone(
    service: &InProcess,
    client: &mut cassette_e2e::Client,
    ack: bool,
) -> (u64, String) {
    create(client, "web-1").await;
    let revision = toggle_ssh(client, "web-1", false).await;
    let mut first = open(service, "web-1", 0).await;
    assert_eq!(first.next(LONG).await, Some(vec![1, 2]));
    if ack {
        first.ack(revision, None).await;
        wait(client, revision, LONG).await.unwrap();
    }
    (revision, first.hash_of(revision).expect("folded"))
}

/// A new sync stream that says `hello`.
async fn hello_on(service: &InProcess, hello: pb::Hello) -> RawStream {
    let channel = cassette_e2e::channel(&cassette_e2e::tcp_target(service.addr)).await;
    open_with_hello(channel, hello)
        .await
        .expect("open sync stream")
}

#[tokio::test]
async fn a_hello_that_vouches_for_its_revision_is_in_sync_at_once_and_replays_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let service = InProcess::start(dir.path()).await;
    let mut client = service.client().await;
    let (revision, hash) = applied_then_gone(&service, &mut client, false).await;

    // A restarted enforcer whose kernel still holds revision 2 (its saved
    // state said so), and whose saved state once could not be trusted.
    let mut stream = hello_on(
        &service,
        pb::Hello {
            instance_id: "web-1".into(),
            applied_revision: revision,
            applied_ruleset_hash: hash,
            state_error: "the saved state /x is corrupt: checksum mismatch".into(),
            ..Default::default()
        },
    )
    .await;
    let status = wait(&mut client, revision, LONG).await.unwrap();
    assert_eq!(
        (status.state, status.applied_revision),
        (pb::SyncState::InSync as i32, revision),
        "{status:?}"
    );
    assert_eq!(
        status.enforcer_state_error,
        "the saved state /x is corrupt: checksum mismatch"
    );
    assert_eq!(stream.next(SHORT).await, None, "nothing is replayed");
    let firewall = get(&mut client, "web-1").await;
    assert!(firewall
        .rules
        .iter()
        .all(|r| r.status == pb::RuleStatus::Applied as i32));
    assert_eq!(service.metrics.history_resends.get(), 0);
    service.stop().await;
}

#[tokio::test]
async fn a_hello_whose_ruleset_differs_from_the_log_gets_the_whole_history() {
    let dir = tempfile::tempdir().unwrap();
    let service = InProcess::start(dir.path()).await;
    let mut client = service.client().await;
    let (revision, _) = applied_then_gone(&service, &mut client, true).await;

    // Its revision 2 is not the log's revision 2 (the log was restored and
    // written again since): the log wins, and nothing shows applied.
    let mut stream = hello_on(
        &service,
        pb::Hello {
            instance_id: "web-1".into(),
            applied_revision: revision,
            applied_ruleset_hash: "0".repeat(64),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(stream.next(LONG).await, Some(vec![1, 2]), "resynced from 0");
    let sync = get(&mut client, "web-1").await.sync.unwrap();
    assert_eq!(
        (sync.applied_revision, sync.state),
        (0, pb::SyncState::Pending as i32),
        "{sync:?}"
    );
    assert_eq!(
        sync.enforcer_state_error, "",
        "no state problem was reported"
    );
    assert_eq!(service.metrics.history_resends.get(), 1);
    stream.ack(revision, None).await;
    let status = wait(&mut client, revision, LONG).await.unwrap();
    assert_eq!(status.state, pb::SyncState::InSync as i32, "{status:?}");
    service.stop().await;
}

/// A report of counted `hits`, observed now, with a TCP socket listening
/// on `port` (all addresses).
pub(crate) fn listening_report(hits: Vec<pb::ElementHits>, port: u32) -> pb::Report {
    pb::Report {
        hits,
        observe_time: Some(std::time::SystemTime::now().into()),
        listening: Some(pb::ListeningSockets {
            sockets: vec![pb::ListeningSocket {
                protocol: pb::Protocol::Tcp.into(),
                port,
                address: "::".into(),
            }],
        }),
        hits_counted: true,
        blocked: Vec::new(),
        blocked_counted: true,
        connections: None,
    }
}

pub(crate) fn element(
    port: u32,
    packets: u64,
    last_hit: Option<std::time::SystemTime>,
) -> pb::ElementHits {
    pb::ElementHits {
        protocol: pb::Protocol::Tcp.into(),
        port,
        packets,
        last_hit_time: last_hit.map(Into::into),
        ..Default::default()
    }
}

#[tokio::test]
async fn reported_hits_show_on_rules_and_list_firewalls_finds_unused_ones() {
    use std::time::SystemTime;
    let dir = tempfile::tempdir().unwrap();
    let service = InProcess::start(dir.path()).await;
    let (mut client, stream) = web_1_acked(&service).await;
    wait(&mut client, 1, LONG).await.unwrap();
    let unused = |d: Duration| pb::ListFirewallsRequest {
        unused_for: d.try_into().ok(),
        ..Default::default()
    };
    // Nothing reported yet: nothing is known to be unused.
    let listed = client
        .list_firewalls(unused(Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(listed.into_inner().firewalls.is_empty());

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let now = SystemTime::now();
    let hour_ago = now - Duration::from_secs(3600);
    stream
        .report(pb::Report {
            hits: vec![
                element(22, 0, None),
                element(80, 12, Some(now)),
                element(443, 3, Some(hour_ago)),
            ],
            observe_time: Some(now.into()),
            hits_counted: true,
            ..Default::default()
        })
        .await;
    // SSH: never hit; HTTP: hit just now; HTTPS: last hit an hour ago.
    let mut firewall = get(&mut client, "web-1").await;
    for _ in 0..100 {
        if firewall.rules.iter().any(|r| r.hits > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        firewall = get(&mut client, "web-1").await;
    }
    let by_port =
        |f: &pb::Firewall, port: u32| f.rules.iter().find(|r| r.port == port).cloned().unwrap();
    assert_eq!(by_port(&firewall, 80).hits, 12);
    assert_eq!(by_port(&firewall, 80).last_hit_time, Some(now.into()));
    assert_eq!(by_port(&firewall, 443).hits, 3);
    assert_eq!(by_port(&firewall, 22).hits, 0);
    assert_eq!(by_port(&firewall, 22).last_hit_time, None);

    let listed = client
        .list_firewalls(unused(Duration::from_secs(1)))
        .await
        .unwrap()
        .into_inner();
    let ports: Vec<u32> = listed.firewalls[0].rules.iter().map(|r| r.port).collect();
    assert_eq!(ports, [22, 443], "unused for a second: SSH and HTTPS");
    let listed = client
        .list_firewalls(unused(Duration::from_secs(7200)))
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.firewalls.is_empty(),
        "nothing was applied two hours ago: {listed:?}"
    );
    let status = client
        .list_firewalls(unused(Duration::ZERO))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("unused_for"), "{status:?}");
    drop(stream);
    service.stop().await;
}

pub(crate) fn result_of(diagnosis: &pb::Diagnosis, name: &str) -> (pb::CheckResult, String) {
    let check = diagnosis
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no {name} in {diagnosis:?}"));
    (
        pb::CheckResult::try_from(check.result).unwrap(),
        format!("{} | {}", check.detail, check.next_step),
    )
}

#[tokio::test]
async fn diagnose_answers_the_checklist_from_the_rule_the_acks_and_a_fresh_report() {
    use pb::CheckResult::{Fail, Pass, Unknown};
    let dir = tempfile::tempdir().unwrap();
    let service = InProcess::start(dir.path()).await;
    let mut client = service.client().await;
    create(&mut client, "web-1").await;
    let added = client
        .add_rule(pb::AddRuleRequest {
            instance_id: "web-1".into(),
            port: 5432,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let diagnoser = client.clone();
    let diagnose = move |port: u32| {
        let mut client = diagnoser.clone();
        async move {
            client
                .diagnose(pb::DiagnoseRequest {
                    instance_id: "web-1".into(),
                    port,
                    ..Default::default()
                })
                .await
        }
    };

    // No enforcer: the rule exists and is enabled, nothing is applied.
    let before = diagnose(5432).await.unwrap().into_inner();
    assert_eq!(before.checks.len(), 7);
    assert_eq!(result_of(&before, "blocked_traffic").0, Unknown);
    assert_eq!(result_of(&before, "rule_exists").0, Pass);
    assert_eq!(result_of(&before, "rule_enabled").0, Pass);
    let (applied, why) = result_of(&before, "rule_applied");
    assert_eq!(applied, Fail);
    assert!(why.contains("no enforcer is connected"), "{why}");
    assert_eq!(result_of(&before, "service_listening").0, Unknown);
    assert!(!before.ok);

    // An enforcer applies it; asked for a fresh report, it says what
    // listens and that no packet came yet.
    let mut stream = open(&service, "web-1", 0).await;
    assert_eq!(stream.next(LONG).await, Some(vec![1, 2]));
    stream.ack(added.revision, None).await;
    wait(&mut client, added.revision, LONG).await.unwrap();
    let asking = tokio::spawn(diagnose(5432));
    assert_eq!(
        stream.next(LONG).await,
        Some(vec![]),
        "a report is asked for"
    );
    stream
        .report(listening_report(
            vec![element(22, 0, None), element(5432, 0, None)],
            5432,
        ))
        .await;
    let after = asking.await.unwrap().unwrap().into_inner();
    for name in [
        "rule_exists",
        "rule_enabled",
        "rule_applied",
        "rule_in_kernel",
    ] {
        assert_eq!(result_of(&after, name).0, Pass, "{name}: {after:?}");
    }
    let (listening, why) = result_of(&after, "service_listening");
    assert_eq!(listening, Pass);
    assert!(why.contains("listening on :: port 5432"), "{why}");
    let (packets, why) = result_of(&after, "packets_arriving");
    assert_eq!(packets, Fail);
    assert!(why.contains("no packet has reached the rule"), "{why}");
    assert!(!after.ok);

    // A port with no rule: the first step is to add one.
    let asking = tokio::spawn(diagnose(3000));
    assert_eq!(stream.next(LONG).await, Some(vec![]));
    stream
        .report(pb::Report {
            hits_counted: true,
            blocked: vec![pb::BlockedTraffic {
                protocol: pb::Protocol::Tcp.into(),
                port: 3000,
                attempts: 4,
                distinct_sources: 1,
                ..Default::default()
            }],
            blocked_counted: true,
            ..Default::default()
        })
        .await;
    let missing = asking.await.unwrap().unwrap().into_inner();
    let (exists, why) = result_of(&missing, "rule_exists");
    assert_eq!(exists, Fail);
    assert!(why.contains("Add a rule for 3000/tcp"), "{why}");
    assert_eq!(result_of(&missing, "packets_arriving").0, Unknown);
    let (blocked, why) = result_of(&missing, "blocked_traffic");
    assert_eq!(blocked, Fail);
    assert!(
        why.contains("connections to 3000/tcp arrive and are dropped: there is no rule (4 attempts from 1 source)"),
        "{why}"
    );
    // The same report lists them on the firewall, never in its log.
    let firewall = get(&mut client, "web-1").await;
    assert_eq!(firewall.blocked.len(), 1, "{firewall:?}");
    assert_eq!(firewall.blocked[0].port, 3000);

    let status = diagnose(0).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = client
        .diagnose(pb::DiagnoseRequest {
            instance_id: "nope-1".into(),
            port: 22,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    drop(stream);
    service.stop().await;
}

/// The service is upgraded before its enforcers: an enforcer of an earlier
/// version renders the same ports as a slightly different table, and its
/// acks and saved state still count (checked against the revision's
/// ruleset), not as a mismatch or a resync.
#[tokio::test]
async fn an_enforcer_of_an_earlier_version_is_in_sync_with_its_own_rendering() {
    // The defaults (22, 80, 443) as the two previous renderers drew them.
    const BEFORE_RANGES: &str = "a3aad04ce79c7555ad23a8516ae84674c71583fceeace540b8d1badc231ba04f";
    const BEFORE_BLOCKED: &str = "4a32d6287fd351da34129be8f0e2e27ffe7fcc688ee64b37fde55d2ef05b5baa";
    let dir = tempfile::tempdir().unwrap();
    let service = InProcess::start(dir.path()).await;
    let mut client = service.client().await;
    cassette_e2e::create_firewall(&mut client, "web-1").await;
    let mut stream = open(&service, "web-1", 0).await;
    assert_eq!(stream.next(LONG).await, Some(vec![1]));
    stream.ack_with_hash(1, None, BEFORE_RANGES).await;
    in_sync(&mut client).await;
    assert_eq!(service.metrics.ruleset_hash_mismatches.get(), 0);
    drop(stream);

    let resends = service.metrics.history_resends.get();
    let channel = cassette_e2e::channel(&cassette_e2e::tcp_target(service.addr)).await;
    let hello = pb::Hello {
        instance_id: "web-1".into(),
        applied_revision: 1,
        applied_ruleset_hash: BEFORE_BLOCKED.into(),
        enforcer_id: "older".into(),
        version: "test".into(),
        ..Default::default()
    };
    let mut older = open_with_hello(channel, hello).await.expect("open");
    assert_eq!(older.next(SHORT).await, None, "nothing resent");
    assert_eq!(service.metrics.history_resends.get(), resends);
    in_sync(&mut client).await;
    drop(older);
    service.stop().await;
}

/// A change with `wait_for_sync` answers once the instance's enforcer has
/// acknowledged its revision (applied or failed), or, if the wait runs out
/// first, with the change saved and a warning; a wait out of range or on a
/// dry run is refused before anything changes.
#[tokio::test]
async fn a_change_with_wait_for_sync_answers_once_its_enforcer_acknowledged_it() {
    let dir = tempfile::tempdir().unwrap();
    let service = InProcess::start(dir.path()).await;
    let (mut client, mut stream) = web_1_acked(&service).await;
    let waiting = |enabled: bool, wait: Duration| pb::UpdateRuleRequest {
        instance_id: "web-1".into(),
        rule_id: "default-ssh".into(),
        enabled: Some(enabled),
        wait_for_sync: Some(wait.try_into().unwrap()),
        ..Default::default()
    };

    let in_background = |client: &cassette_e2e::Client, request| {
        let mut client = client.clone();
        tokio::spawn(async move { client.update_rule(request).await })
    };

    // The answer waits for the ack.
    let call = in_background(&client, waiting(false, LONG));
    assert_eq!(stream.next(LONG).await, Some(vec![2]));
    tokio::time::sleep(SHORT).await;
    assert!(!call.is_finished(), "answered before the enforcer acked");
    stream.ack(2, None).await;
    let firewall = call.await.unwrap().expect("the change").into_inner();
    let sync = firewall.sync.unwrap();
    assert_eq!((firewall.revision, sync.applied_revision), (2, 2));
    assert_eq!(sync.state, pb::SyncState::InSync as i32);
    assert!(firewall.warnings.is_empty(), "{:?}", firewall.warnings);

    // A failed apply is an acknowledgement too: the answer says so.
    let call = in_background(&client, waiting(true, LONG));
    assert_eq!(stream.next(LONG).await, Some(vec![3]));
    stream.ack(3, Some("Error: simulated")).await;
    let firewall = call.await.unwrap().expect("the change").into_inner();
    let sync = firewall.sync.unwrap();
    assert_eq!(sync.state, pb::SyncState::Error as i32);
    assert_eq!((sync.applied_revision, sync.failed_revision), (2, 3));

    // Unacknowledged within the wait: saved, answered with a warning.
    let firewall = client
        .update_rule(waiting(false, Duration::from_millis(200)))
        .await
        .expect("the change")
        .into_inner();
    assert_eq!(firewall.revision, 4);
    assert_eq!(firewall.sync.unwrap().applied_revision, 2);
    let late = &firewall.warnings[..];
    assert!(
        late.len() == 1
            && late[0].code == "NOT_YET_ACKNOWLEDGED"
            && late[0].message.contains("saved as revision 4"),
        "{late:?}"
    );
    assert_eq!(get(&mut client, "web-1").await.revision, 4);
    assert_eq!(
        stream.next(LONG).await,
        Some(vec![4]),
        "streamed, not acked"
    );

    // Out of range, or negative: refused, nothing appended.
    for seconds in [301, -1] {
        let mut request = waiting(true, LONG);
        if let Some(wait) = request.wait_for_sync.as_mut() {
            wait.seconds = seconds;
        }
        let status = client.update_rule(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("wait_for_sync") && status.message().contains("300"),
            "{status:?}"
        );
    }
    let status = client
        .apply_firewall(pb::ApplyFirewallRequest {
            instance_id: "web-1".into(),
            dry_run: true,
            wait_for_sync: Some(LONG.try_into().unwrap()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("dry_run"), "{status:?}");
    assert_eq!(get(&mut client, "web-1").await.revision, 4);

    // A whole-firewall apply waits the same way.
    let call = {
        let mut client = client.clone();
        tokio::spawn(async move {
            client
                .apply_firewall(pb::ApplyFirewallRequest {
                    instance_id: "web-1".into(),
                    rules: vec![pb::DesiredRule {
                        port: 8080,
                        ..Default::default()
                    }],
                    wait_for_sync: Some(LONG.try_into().unwrap()),
                    ..Default::default()
                })
                .await
        })
    };
    assert_eq!(stream.next(LONG).await, Some(vec![5]));
    stream.ack(5, None).await;
    let applied = call.await.unwrap().expect("the apply").into_inner();
    let firewall = applied.firewall.unwrap();
    assert_eq!(firewall.revision, 5);
    assert_eq!(firewall.sync.unwrap().applied_revision, 5);
    drop(stream);
    service.stop().await;
}
