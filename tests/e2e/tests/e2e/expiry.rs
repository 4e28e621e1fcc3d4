//! Expiring rules ("open 5432 for two hours"): validation, the RuleExpired
//! event by `system:expiry`, exactly once, across a kill -9 and restart, and
//! the port really closing (real nftables, root).

use std::time::{Duration, Instant, SystemTime};

use cassette_e2e::{pb, AuditClient, Client, RulesProcess};
use tokio::task::block_in_place;
use tonic::Code;
use tonic_types::StatusExt;

use crate::kernel::{skip_unless_root, Fixture, INSTANCE, TCP};

fn add_for(instance: &str, port: u32, lasting: Duration) -> pb::AddRuleRequest {
    pb::AddRuleRequest {
        instance_id: instance.into(),
        port,
        ttl: lasting.try_into().ok(),
        ..Default::default()
    }
}

fn expirations(events: &[pb::Event]) -> Vec<&pb::Event> {
    events
        .iter()
        .filter(|e| matches!(e.payload, Some(pb::event::Payload::RuleExpired(_))))
        .collect()
}

/// Polls GetFirewall until the rule for `port` is gone.
async fn until_gone(client: &mut Client, instance: &str, port: u32) -> pb::Firewall {
    let deadline = Instant::now() + cassette_e2e::PATIENCE;
    loop {
        let firewall = cassette_e2e::get_firewall(client, instance).await;
        if firewall.rules.iter().all(|r| r.port != port) {
            return firewall;
        }
        assert!(
            Instant::now() < deadline,
            "{port} never expired: {firewall:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn expire_time_and_ttl_are_validated_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let service = cassette_e2e::InProcess::start(dir.path()).await;
    let mut client = service.client().await;
    cassette_e2e::create_firewall(&mut client, "web-1").await;
    let past = SystemTime::now() - Duration::from_secs(60);
    let cases = [
        ("ttl", add_for("web-1", 5432, Duration::ZERO)),
        (
            "ttl",
            add_for("web-1", 5432, Duration::from_secs(367 * 24 * 3600)),
        ),
        (
            "ttl",
            pb::AddRuleRequest {
                expire_time: Some(past.into()),
                ..add_for("web-1", 5432, Duration::from_secs(60))
            },
        ),
        (
            "expire_time",
            pb::AddRuleRequest {
                instance_id: "web-1".into(),
                port: 5432,
                expire_time: Some(past.into()),
                ..Default::default()
            },
        ),
    ];
    for (field, request) in cases {
        let status = client.add_rule(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}");
        let fields: Vec<String> = status
            .get_details_bad_request()
            .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
            .unwrap_or_default();
        assert!(
            fields.contains(&field.to_owned()),
            "{fields:?} for {request:?}"
        );
        assert!(status.message().contains("366 days") || status.message().contains("not both"));
    }
    let firewall = cassette_e2e::get_firewall(&mut client, "web-1").await;
    assert_eq!(firewall.revision, 1, "nothing was appended");

    // A valid one shows its expire time.
    let before = SystemTime::now();
    let added = client
        .add_rule(add_for("web-1", 5432, Duration::from_secs(7200)))
        .await
        .unwrap()
        .into_inner();
    let rule = added.rules.iter().find(|r| r.port == 5432).unwrap();
    let expires = SystemTime::try_from(rule.expire_time.unwrap()).unwrap();
    let lasting = expires.duration_since(before).unwrap();
    assert!(
        lasting >= Duration::from_secs(7199) && lasting <= Duration::from_secs(7201),
        "{lasting:?}"
    );
    service.stop().await;
}

#[tokio::test]
async fn a_rule_expires_once_by_system_expiry_and_audit_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let service = cassette_e2e::InProcess::start(dir.path()).await;
    let mut client = service.client().await;
    let channel = cassette_e2e::channel(&cassette_e2e::tcp_target(service.addr)).await;
    let mut audit = AuditClient::new(channel);
    cassette_e2e::create_firewall(&mut client, "web-1").await;
    let added = client
        .add_rule(add_for("web-1", 5432, Duration::from_secs(1)))
        .await
        .unwrap()
        .into_inner();
    let rule = added.rules.iter().find(|r| r.port == 5432).unwrap().clone();
    // A rule that never expires stays.
    client
        .add_rule(pb::AddRuleRequest {
            instance_id: "web-1".into(),
            port: 6379,
            ..Default::default()
        })
        .await
        .unwrap();
    let firewall = until_gone(&mut client, "web-1", 5432).await;
    assert!(firewall.rules.iter().any(|r| r.port == 6379));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let history = cassette_e2e::instance_events(&mut audit, "web-1").await;
    let expired = expirations(&history);
    assert_eq!(expired.len(), 1, "{history:?}");
    assert_eq!(expired[0].actor, "system:expiry");
    let Some(pb::event::Payload::RuleExpired(payload)) = &expired[0].payload else {
        unreachable!("filtered on RuleExpired");
    };
    assert_eq!(payload.rule_id, rule.id);
    assert_eq!(payload.expire_time, rule.expire_time);
    let committed = SystemTime::try_from(expired[0].commit_time.unwrap()).unwrap();
    let due = SystemTime::try_from(rule.expire_time.unwrap()).unwrap();
    assert!(committed >= due, "never before its time");

    // Deleting it now is NOT_FOUND, like any deleted rule.
    let status = client
        .delete_rule(pb::DeleteRuleRequest {
            instance_id: "web-1".into(),
            rule_id: rule.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    service.stop().await;
}

#[tokio::test]
async fn a_rule_that_expired_while_the_service_was_down_expires_at_start_up_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut rules = RulesProcess::start(&data).await;
    let mut client = rules.client().await;
    cassette_e2e::create_firewall(&mut client, "web-1").await;
    client
        .add_rule(add_for("web-1", 5432, Duration::from_secs(2)))
        .await
        .unwrap();
    rules.kill_9();
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let rules = RulesProcess::start(&data).await;
    let mut client = rules.client().await;
    until_gone(&mut client, "web-1", 5432).await;
    let mut audit = AuditClient::new(cassette_e2e::channel(&rules.target).await);
    let history = cassette_e2e::instance_events(&mut audit, "web-1").await;
    assert_eq!(expirations(&history).len(), 1, "{history:?}");
    drop(rules);
    // Another restart expires nothing twice.
    cassette_e2e::assert_restart_appends_nothing(&data, "web-1", history.len()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_a_rule_that_expires_in_two_seconds_closes_its_port() {
    if skip_unless_root("expiry_a_rule_that_expires_in_two_seconds_closes_its_port") {
        return;
    }
    let mut f = Fixture::start(&[]).await;
    let added = f
        .client
        .add_rule(pb::AddRuleRequest {
            protocol: TCP.into(),
            ..add_for(INSTANCE, 5432, Duration::from_secs(2))
        })
        .await
        .unwrap()
        .into_inner();
    f.wait(added.revision).await;
    f.assert_tcp(&[5432], &[]);
    let firewall = until_gone(&mut f.client, INSTANCE, 5432).await;
    let status = f.wait(firewall.revision).await;
    assert_eq!(status.state, pb::SyncState::InSync as i32, "{status:?}");
    f.assert_tcp(&[22], &[5432]);
    assert!(!block_in_place(|| f.lab.set_elements("tcp_open")).contains(&5432));
}
