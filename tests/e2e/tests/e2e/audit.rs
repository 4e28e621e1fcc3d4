//! AuditService and `cassette-rules audit`: history, state as of any
//! revision, diffs, a tamper-evident log.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cassette_e2e::{
    binary, list_events as events, pb, AuditClient, Client, InProcess, RulesProcess, PATIENCE,
};
use cassette_eventlog::tamper;
use tonic::Request;

async fn create(client: &mut Client, instance: &str, actor: &str) -> pb::Firewall {
    let mut request = Request::new(pb::CreateFirewallRequest {
        instance_id: instance.into(),
        request_id: String::new(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-actor", actor.parse().unwrap());
    client.create_firewall(request).await.unwrap().into_inner()
}

async fn add(client: &mut Client, instance: &str, port: u32, actor: &str) -> pb::Firewall {
    let mut request = Request::new(pb::AddRuleRequest {
        instance_id: instance.into(),
        port,
        description: format!("port {port}"),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-actor", actor.parse().unwrap());
    client.add_rule(request).await.unwrap().into_inner()
}

async fn update(
    client: &mut Client,
    instance: &str,
    rule_id: &str,
    enabled: bool,
    actor: &str,
) -> pb::Firewall {
    let mut request = Request::new(pb::UpdateRuleRequest {
        instance_id: instance.into(),
        rule_id: rule_id.into(),
        enabled: Some(enabled),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-actor", actor.parse().unwrap());
    client.update_rule(request).await.unwrap().into_inner()
}

async fn delete(client: &mut Client, instance: &str, rule_id: &str, actor: &str) -> pb::Firewall {
    let mut request = Request::new(pb::DeleteRuleRequest {
        instance_id: instance.into(),
        rule_id: rule_id.into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-actor", actor.parse().unwrap());
    client.delete_rule(request).await.unwrap().into_inner()
}

fn rule_id(firewall: &pb::Firewall, port: u32) -> String {
    firewall
        .rules
        .iter()
        .find(|r| r.port == port)
        .unwrap()
        .id
        .clone()
}

/// The firewall as history keeps it: without the live sync state.
/// A firewall as the log knows it: without the enforcer's sync state, and
/// without the advice that answered the change.
fn as_history(mut firewall: pb::Firewall) -> pb::Firewall {
    firewall.sync = None;
    firewall.warnings.clear();
    for rule in &mut firewall.rules {
        rule.status = pb::RuleStatus::Unspecified.into();
    }
    firewall
}

/// A scripted history over two instances by three actors; returns every answer.
async fn script(client: &mut Client) -> Vec<pb::Firewall> {
    let mut seen = vec![create(client, "a-1", "ops").await];
    seen.push(create(client, "b-1", "ops").await);
    seen.push(add(client, "a-1", 5432, "alice").await);
    let postgres = rule_id(seen.last().unwrap(), 5432);
    seen.push(add(client, "b-1", 6379, "bob").await);
    seen.push(update(client, "a-1", &postgres, false, "bob").await);
    seen.push(add(client, "a-1", 3000, "alice").await);
    seen.push(update(client, "a-1", "default-ssh", false, "alice").await);
    seen.push(delete(client, "a-1", &postgres, "alice").await);
    seen.push(update(client, "a-1", "default-ssh", true, "bob").await);
    seen
}

async fn audit_client(service: &InProcess) -> AuditClient {
    AuditClient::new(cassette_e2e::channel(&cassette_e2e::tcp_target(service.addr)).await)
}

/// A way to damage a stopped log, and the record verification must name.
type Tampering = (&'static str, fn(&Path), u64);

#[tokio::test]
async fn get_firewall_at_every_revision_equals_what_the_api_answered_then() {
    let dir = tempfile::tempdir().unwrap();
    let service = InProcess::start(dir.path()).await;
    let mut client = service.client().await;
    let answers = script(&mut client).await;
    let mut audit = audit_client(&service).await;
    for answer in answers {
        let at = audit
            .get_firewall_at(pb::GetFirewallAtRequest {
                instance_id: answer.instance_id.clone(),
                at: Some(pb::get_firewall_at_request::At::Revision(answer.revision)),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(at.revision, answer.revision);
        assert_eq!(
            at.firewall.unwrap(),
            as_history(answer.clone()),
            "{} at {}",
            answer.instance_id,
            answer.revision
        );
        // By time: the same revision, resolved from its commit time.
        let by_time = audit
            .get_firewall_at(pb::GetFirewallAtRequest {
                instance_id: answer.instance_id.clone(),
                at: Some(pb::get_firewall_at_request::At::AtTime(
                    answer.update_time.unwrap(),
                )),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(by_time.revision, answer.revision);
    }
    let status = audit
        .get_firewall_at(pb::GetFirewallAtRequest {
            instance_id: "a-1".into(),
            at: Some(pb::get_firewall_at_request::At::Revision(99)),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    service.stop().await;
}

#[tokio::test]
async fn list_events_filters_by_instance_actor_sequence_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let service = InProcess::start(dir.path()).await;
    let mut client = service.client().await;
    script(&mut client).await;
    let mut audit = audit_client(&service).await;

    let all = events(&mut audit, pb::ListEventsRequest::default()).await;
    let sequences: Vec<u64> = all.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=9).collect::<Vec<_>>());
    assert!(all.windows(2).all(|w| !w[1].prev_hash.is_empty()));

    let a = events(
        &mut audit,
        pb::ListEventsRequest {
            instance_id: "a-1".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        a.iter().map(|e| e.revision).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    assert!(a.iter().all(|e| e.instance_id == "a-1"));

    let alice = events(
        &mut audit,
        pb::ListEventsRequest {
            actor: "alice".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        alice.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [3, 6, 7, 8]
    );
    let rule_added = alice[0].payload.clone().unwrap();
    assert!(
        matches!(rule_added, pb::event::Payload::RuleAdded(ref r) if r.rule.as_ref().unwrap().port == 5432)
    );

    let window = events(
        &mut audit,
        pb::ListEventsRequest {
            after_sequence: 2,
            until_sequence: 4,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        window.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [3, 4]
    );

    let since = all[4].commit_time;
    let until = all[6].commit_time;
    let timed = events(
        &mut audit,
        pb::ListEventsRequest {
            since,
            until,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        timed.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [5, 6, 7]
    );
    service.stop().await;
}

#[tokio::test]
async fn diff_firewall_names_added_removed_and_changed_rules_and_the_events_between() {
    let dir = tempfile::tempdir().unwrap();
    let service = InProcess::start(dir.path()).await;
    let mut client = service.client().await;
    script(&mut client).await;
    let mut audit = audit_client(&service).await;
    // a-1: 1 created, 2 +5432, 3 5432 off, 4 +3000, 5 ssh off, 6 -5432, 7 ssh on.
    let diff = audit
        .diff_firewall(pb::DiffFirewallRequest {
            instance_id: "a-1".into(),
            from_revision: 2,
            to_revision: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        diff.added.iter().map(|r| r.port).collect::<Vec<_>>(),
        [3000]
    );
    assert!(diff.removed.is_empty());
    let changed: Vec<(u32, bool, bool)> = diff
        .changed
        .iter()
        .map(|c| {
            (
                c.before.as_ref().unwrap().port,
                c.before.as_ref().unwrap().enabled,
                c.after.as_ref().unwrap().enabled,
            )
        })
        .collect();
    assert_eq!(changed, [(22, true, false), (5432, true, false)]);
    assert_eq!(
        diff.events.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [3, 4, 5]
    );

    let whole = audit
        .diff_firewall(pb::DiffFirewallRequest {
            instance_id: "a-1".into(),
            from_revision: 0,
            to_revision: 7,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        whole.added.iter().map(|r| r.port).collect::<Vec<_>>(),
        [22, 80, 443, 3000]
    );
    let removed = audit
        .diff_firewall(pb::DiffFirewallRequest {
            instance_id: "a-1".into(),
            from_revision: 2,
            to_revision: 7,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        removed.removed.iter().map(|r| r.port).collect::<Vec<_>>(),
        [5432]
    );
    let status = audit
        .diff_firewall(pb::DiffFirewallRequest {
            instance_id: "a-1".into(),
            from_revision: 5,
            to_revision: 5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // The events come in pages; the rule changes are on every page.
    let mut pages = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let page = audit
            .diff_firewall(pb::DiffFirewallRequest {
                instance_id: "a-1".into(),
                from_revision: 0,
                to_revision: 7,
                page_size: 3,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.added.len(), 4, "rule changes on every page");
        pages.push(page.events.iter().map(|e| e.revision).collect::<Vec<_>>());
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(pages, [vec![1, 2, 3], vec![4, 5, 6], vec![7]]);
    let status = audit
        .diff_firewall(pb::DiffFirewallRequest {
            instance_id: "a-1".into(),
            from_revision: 0,
            to_revision: 7,
            page_size: 1001,
            page_token: "nonsense".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    for field in ["page_size", "page_token"] {
        assert!(status.message().contains(field), "{status:?}");
    }
    service.stop().await;
}

#[tokio::test]
async fn a_follow_stream_delivers_new_events_in_order_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let service = InProcess::start(dir.path()).await;
    let mut client = service.client().await;
    create(&mut client, "a-1", "ops").await;
    let mut audit = audit_client(&service).await;
    let mut everything = audit
        .list_events(pb::ListEventsRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut only_b = audit
        .list_events(pb::ListEventsRequest {
            follow: true,
            instance_id: "b-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        everything.message().await.unwrap().unwrap().sequence,
        1,
        "history first"
    );

    create(&mut client, "b-1", "ops").await;
    for i in 0..10 {
        let instance = if i % 2 == 0 { "a-1" } else { "b-1" };
        add(&mut client, instance, 1000 + i, "alice").await;
    }
    for expected in 2..=12 {
        let event = tokio::time::timeout(PATIENCE, everything.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(event.sequence, expected);
    }
    let mut revisions = Vec::new();
    for _ in 0..6 {
        let event = tokio::time::timeout(PATIENCE, only_b.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(event.instance_id, "b-1");
        revisions.push(event.revision);
    }
    assert_eq!(revisions, (1..=6).collect::<Vec<_>>());
    service.stop().await;
}

#[tokio::test]
async fn get_firewall_at_renders_exactly_what_the_enforcer_applied() {
    let dir = tempfile::tempdir().unwrap();
    let rules = RulesProcess::start(&dir.path().join("data")).await;
    let mut client = rules.client().await;
    let ruleset = dir.path().join("ruleset.nft");
    let mut enforcer = Command::new(binary("cassette-enforcer"))
        .args([
            "--rules",
            &format!("http://{}", rules.listen),
            "--instance",
            "a-1",
        ])
        .args(["--backend", "file", "--ruleset-file"])
        .arg(&ruleset)
        .arg("--state-dir")
        .arg(dir.path().join("enforcer-state"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let answers = script(&mut client).await;
    let latest = answers
        .iter()
        .filter(|f| f.instance_id == "a-1")
        .map(|f| f.revision)
        .max()
        .unwrap();
    let synced = client
        .wait_for_sync(pb::WaitForSyncRequest {
            instance_id: "a-1".into(),
            revision: latest,
            timeout: Some(Duration::from_secs(30).try_into().unwrap()),
            ..Default::default()
        })
        .await;
    let _ = synced.expect("the enforcer applied the latest revision");
    let mut audit = pb::audit_service_client::AuditServiceClient::new(
        cassette_e2e::channel(&rules.target).await,
    );
    let at = audit
        .get_firewall_at(pb::GetFirewallAtRequest {
            instance_id: "a-1".into(),
            at: Some(pb::get_firewall_at_request::At::Revision(latest)),
        })
        .await
        .unwrap()
        .into_inner();
    let applied = std::fs::read_to_string(&ruleset).unwrap();
    let _ = enforcer.kill();
    let _ = enforcer.wait();
    assert_eq!(at.ruleset, applied);
    assert!(
        applied.contains("elements = { 22, 80, 443, 3000 }"),
        "{applied}"
    );
}

/// The revisions of every firewall the service serves, summed: how many
/// records its projection folded (each is one revision of one firewall).
async fn revisions_served(client: &mut Client) -> u64 {
    let listed = client
        .list_firewalls(pb::ListFirewallsRequest::default())
        .await
        .unwrap()
        .into_inner();
    listed.firewalls.iter().map(|f| f.revision).sum()
}

/// Runs `cassette-rules` with `args` expecting it to exit; its status and output.
pub(crate) fn run_to_exit(args: &[&str], data: &Path) -> (bool, String) {
    let mut child = Command::new(binary("cassette-rules"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cassette-rules {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_named_by_verify_log_offline_and_at_startup() {
    let cases: [Tampering; 3] = [
        ("one changed byte", |d| tamper::flip_bit(d, 4).unwrap(), 4),
        ("one deleted event", |d| tamper::delete(d, 3).unwrap(), 3),
        ("two swapped events", |d| tamper::swap(d, 5, 7).unwrap(), 5),
    ];
    for (what, damage, first_bad) in cases {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut rules = RulesProcess::start(&data).await;
        let mut client = rules.client().await;
        script(&mut client).await;
        assert!(rules.terminate().success());
        // A start that replays the whole log (a start from the snapshot the
        // shutdown wrote finds the damage after it: the next test).
        std::fs::remove_file(data.join("projection.snapshot")).unwrap();
        damage(&data);

        let (ok, text) = tokio::task::block_in_place(|| run_to_exit(&["audit", "verify"], &data));
        assert!(!ok, "{what}: offline verify must fail");
        assert!(
            text.contains(&format!("FAILED at record {first_bad}")),
            "{what}: {text}"
        );

        let (ok, text) =
            tokio::task::block_in_place(|| run_to_exit(&["--listen", "127.0.0.1:0"], &data));
        assert!(!ok, "{what}: the service must refuse the log");
        assert!(
            text.contains(&format!("verification at record {first_bad}")),
            "{what}: {text}"
        );

        let addr = cassette_e2e::free_port();
        let rules = RulesProcess::spawn(
            &data,
            &addr.to_string(),
            cassette_e2e::tcp_target(addr),
            &["--allow-unverified-log"],
        )
        .await;
        let mut audit = pb::audit_service_client::AuditServiceClient::new(
            cassette_e2e::channel(&rules.target).await,
        );
        let verified = audit
            .verify_log(pb::VerifyLogRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(!verified.ok, "{what}");
        assert_eq!(
            verified.first_bad_sequence, first_bad,
            "{what}: {verified:?}"
        );
        assert_eq!(verified.events_checked, first_bad - 1, "{what}");
        let mut client = rules.client().await;
        let refused = client
            .create_firewall(pb::CreateFirewallRequest {
                instance_id: "c-1".into(),
                request_id: String::new(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::FailedPrecondition,
            "{what}: read-only"
        );
        // Enforcers keep what they have: no sync stream from a log that failed.
        let channel = cassette_e2e::channel(&rules.target).await;
        let refused = crate::sync::open_on(channel, "a-1", 0).await.err();
        assert_eq!(
            refused.map(|s| s.code()),
            Some(tonic::Code::FailedPrecondition),
            "{what}: sync refused"
        );
        // The projection stops before the first bad record.
        let latest_sequence = first_bad - 1;
        assert_eq!(
            revisions_served(&mut client).await,
            latest_sequence,
            "{what}: the projection folds exactly the good records before the first bad one"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_from_a_snapshot_finds_a_changed_record_before_it_then_serves_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut rules = RulesProcess::start(&data).await;
    let mut client = rules.client().await;
    script(&mut client).await;
    assert!(rules.terminate().success());
    assert!(
        data.join("projection.snapshot").is_file(),
        "a clean shutdown writes the projection snapshot"
    );
    tamper::flip_bit(&data, 4).unwrap();

    // Its anchor (the last record) is intact: the service starts from it,
    // and the walk of the log before it finds record 4 in the background
    // and says so (NOT_SERVING).
    let addr = cassette_e2e::free_port();
    let target = cassette_e2e::tcp_target(addr);
    let rules = RulesProcess::spawn_halted(&data, &addr.to_string(), target, &[]).await;
    assert!(
        rules.log().contains("started from the projection snapshot"),
        "{}",
        rules.log()
    );
    let mut client = rules.client().await;
    let refused = client
        .create_firewall(pb::CreateFirewallRequest {
            instance_id: "c-1".into(),
            request_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("verification at record 4"),
        "{}",
        refused.message()
    );
    // The history before the changed record is what is served.
    assert_eq!(
        revisions_served(&mut client).await,
        3,
        "the records before record 4, folded again"
    );
    drop(rules);
    // Moved aside: the next start replays the whole log and refuses it.
    assert!(data.join("projection.snapshot.refused").is_file());
    let (ok, text) =
        tokio::task::block_in_place(|| run_to_exit(&["--listen", "127.0.0.1:0"], &data));
    assert!(!ok, "the service must refuse the log");
    assert!(text.contains("verification at record 4"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_written_full_then_compact_is_one_history_to_every_reader() {
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let audit_of = |rules: &RulesProcess| {
        let target = rules.target.clone();
        async move { AuditClient::new(cassette_e2e::channel(&target).await) }
    };
    // As a version before the compact encoding wrote its records.
    let addr = cassette_e2e::free_port();
    let rules = RulesProcess::spawn(
        &data,
        &addr.to_string(),
        cassette_e2e::tcp_target(addr),
        &["--record-encoding", "full"],
    )
    .await;
    script(&mut rules.client().await).await;
    let before = events(&mut audit_of(&rules).await, Default::default()).await;
    let mut rules = rules;
    assert!(rules.terminate().success());

    let mut rules = RulesProcess::start(&data).await;
    let mut client = rules.client().await;
    add(&mut client, "a-1", 8443, "carol").await;
    create(&mut client, "c-1", "carol").await;
    let mut audit = audit_of(&rules).await;
    let after = events(&mut audit, Default::default()).await;
    assert_eq!(after.len(), before.len() + 2);
    // What was streamed before is streamed the same, byte for byte; every
    // event is answered spelled out, whichever encoding stored it.
    assert_eq!(after[..before.len()], before[..]);
    for event in &after {
        assert!(uuid::Uuid::parse_str(&event.event_id).is_ok(), "{event:?}");
        assert!(event.commit_time.is_some(), "{event:?}");
        assert!(event.event_uuid.is_empty() && event.commit_unix_nanos == 0);
    }
    let verified = audit
        .verify_log(pb::VerifyLogRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "{verified:?}");
    assert_eq!(verified.events_checked, after.len() as u64);
    // The chain checked by hand from the records themselves: each one's
    // SHA-256 is the next one's prev_hash, the last one's the head's.
    let with_records = events(
        &mut audit,
        pb::ListEventsRequest {
            with_records: true,
            ..Default::default()
        },
    )
    .await;
    let sha256 = |bytes: &[u8]| -> Vec<u8> {
        use sha2::Digest;
        sha2::Sha256::digest(bytes).to_vec()
    };
    for (i, event) in with_records.iter().enumerate() {
        let expected = pb::Event {
            record: Vec::new(),
            ..event.clone()
        };
        assert_eq!(expected, after[i], "the same event, with its record");
        let stored = pb::Event::decode(event.record.as_slice()).unwrap();
        // Spelled as it was stored: the first ones full, the new ones compact.
        assert_eq!(stored.event_id.is_empty(), i >= before.len(), "{stored:?}");
        assert_eq!(stored.prev_hash, event.prev_hash);
        let next = with_records
            .get(i + 1)
            .map_or(hex_decode(&verified.head_hash), |n| n.prev_hash.clone());
        assert_eq!(sha256(&event.record), next, "record {} links", i + 1);
    }
    assert!(rules.terminate().success());

    // Stored: the old records full, the new ones compact, each hashed as stored.
    let last = after.len() as u64;
    {
        let log = cassette_eventlog::EventLog::open(&data).unwrap();
        let stored = |sequence: u64| {
            let bytes = log.stored_record(sequence).unwrap().unwrap();
            pb::Event::decode(bytes.as_slice()).unwrap()
        };
        let old = stored(before.len() as u64);
        assert_eq!(old.event_id, before.last().unwrap().event_id);
        assert!(old.event_uuid.is_empty());
        let new = stored(last);
        assert!(new.event_id.is_empty() && new.commit_time.is_none());
        assert_eq!(
            uuid::Uuid::from_slice(&new.event_uuid).unwrap().to_string(),
            after.last().unwrap().event_id
        );
        assert_eq!(new.prev_hash, after.last().unwrap().prev_hash);
    }

    // The offline audit reads both.
    let (ok, text) = tokio::task::block_in_place(|| run_to_exit(&["audit", "verify"], &data));
    assert!(ok, "{text}");
    assert!(text.starts_with(&format!("ok: {last} events")), "{text}");
    let (ok, text) =
        tokio::task::block_in_place(|| run_to_exit(&["audit", "events", "--json"], &data));
    assert!(ok, "{text}");
    let ids: Vec<String> = text
        .lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            event["eventId"].as_str().unwrap().to_owned()
        })
        .collect();
    let streamed: Vec<String> = after.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(ids, streamed);
}

fn hex_decode(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}
