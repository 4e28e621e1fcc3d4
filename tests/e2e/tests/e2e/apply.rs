//! ApplyFirewall: a whole firewall at once, previewed with what it would
//! cut, refused on a stale revision, and applied as one revision and one
//! kernel transaction while connections that both versions accept keep
//! working (root).

use std::time::Duration;

use cassette_e2e::netns::INSTANCE_IP;
use cassette_e2e::{http, pb, AuditClient};
use tokio::task::block_in_place;
use tonic::Code;

use crate::kernel::{skip_unless_root, Fixture, INSTANCE, TCP};

/// The firewall as a desired list: every rule with its id (what a document
/// written from it says).
fn as_desired(firewall: &pb::Firewall) -> Vec<pb::DesiredRule> {
    firewall
        .rules
        .iter()
        .map(|r| pb::DesiredRule {
            rule_id: r.id.clone(),
            port: r.port,
            port_range: r.port_range,
            protocol: r.protocol,
            description: r.description.clone(),
            enabled: Some(r.enabled),
            sources: r.sources.clone(),
            expire_time: r.expire_time,
        })
        .collect()
}

fn desired_rule(port: u32) -> pb::DesiredRule {
    pb::DesiredRule {
        port,
        ..Default::default()
    }
}

fn change_on(response: &pb::ApplyFirewallResponse, port: u32) -> &pb::RuleChange {
    response
        .changes
        .iter()
        .find(|c| {
            c.before
                .as_ref()
                .or(c.after.as_ref())
                .is_some_and(|r| r.port == port)
        })
        .unwrap_or_else(|| panic!("no change on {port}: {response:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_apply_previews_then_changes_the_whole_firewall_in_one_revision_without_a_dropped_connection(
) {
    if skip_unless_root("kernel_apply_previews_then_changes_the_whole_firewall_in_one_revision_without_a_dropped_connection") {
        return;
    }
    let mut f = Fixture::start(&["--report-interval", "300ms"]).await;
    let (postgres, revision) = f.add(5432, TCP).await;
    f.wait(revision).await;
    // A session open through 5432, which the new firewall closes.
    let mut session = block_in_place(|| {
        f.lab
            .session(&f.lab.client_ns.clone(), "tcp", INSTANCE_IP, 5432)
    });
    assert!(block_in_place(|| session.passes()));
    tokio::time::sleep(Duration::from_millis(800)).await;

    // The new firewall: HTTPS off, 5432 gone, 6379 open.
    let before = f.firewall().await;
    let mut rules = as_desired(&before);
    rules.retain(|r| r.port != 5432);
    for rule in rules.iter_mut().filter(|r| r.port == 443) {
        rule.enabled = Some(false);
    }
    rules.push(desired_rule(6379));
    let request = |dry_run: bool, expected_revision: Option<u64>| pb::ApplyFirewallRequest {
        instance_id: INSTANCE.into(),
        rules: rules.clone(),
        dry_run,
        expected_revision,
        ..Default::default()
    };

    // The preview: what changes, what it would cut, and nothing applied.
    let preview = f
        .client
        .apply_firewall(request(true, None))
        .await
        .expect("dry run")
        .into_inner();
    assert!(preview.dry_run);
    assert_eq!(preview.changes.len(), 3, "{preview:#?}");
    let removed = change_on(&preview, 5432);
    assert_eq!(removed.kind, pb::RuleChangeKind::Removed as i32);
    assert_eq!(removed.before.as_ref().unwrap().id, postgres);
    let cut = removed.impact.expect("closing 5432 has an impact");
    assert!(cut.reported, "{cut:?}");
    assert_eq!(cut.open_connections, 1, "the open session: {cut:?}");
    assert!(cut.hits_last_hour > 0, "{cut:?}");
    let https = change_on(&preview, 443);
    assert_eq!(https.kind, pb::RuleChangeKind::Changed as i32);
    assert!(https.impact.is_some(), "turning 443 off narrows");
    let redis = change_on(&preview, 6379);
    assert_eq!(redis.kind, pb::RuleChangeKind::Added as i32);
    assert!(redis.impact.is_none());
    assert_eq!(
        preview.firewall.as_ref().unwrap().warnings[0].code,
        "DATABASE_PORT_OPEN",
        "6379 open to anywhere is advised against"
    );
    assert_eq!(
        preview.firewall.as_ref().unwrap().revision,
        before.revision + 1
    );
    assert_eq!(
        f.firewall().await.revision,
        before.revision,
        "a dry run appends nothing"
    );
    f.assert_tcp(&[5432, 443], &[6379]);

    // A stale expected revision changes nothing.
    let stale = f
        .client
        .apply_firewall(request(false, Some(before.revision - 1)))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    assert_eq!(f.firewall().await.revision, before.revision);

    // The apply, while port 80 (in both versions) takes connection after connection.
    let lab = &f.lab;
    let (applied, (ok, failed)) = tokio::join!(
        async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            f.client
                .clone()
                .apply_firewall(request(false, Some(before.revision)))
                .await
        },
        async { block_in_place(|| lab.hammer(80, 2.0)) },
    );
    let applied = applied.expect("apply").into_inner();
    eprintln!("port 80 during the apply: {ok} connections, {failed} failed");
    assert!(ok > 20, "the stream ran: {ok}");
    assert_eq!(failed, 0, "no connection both versions accept was dropped");
    assert!(!applied.dry_run);
    let after = applied.firewall.expect("the firewall after");
    assert_eq!(after.revision, before.revision + 1, "one revision");
    assert_eq!(applied.changes.len(), 3);
    f.wait(after.revision).await;
    f.assert_tcp(&[22, 80, 6379], &[443, 5432]);
    assert!(
        !block_in_place(|| session.passes()),
        "the session through 5432 is cut"
    );
    let mut audit = AuditClient::new(cassette_e2e::channel(&f.rules.target).await);
    let events = cassette_e2e::instance_events(&mut audit, INSTANCE).await;
    let last = events.last().unwrap();
    assert_eq!(last.revision, after.revision);
    let Some(pb::event::Payload::FirewallApplied(event)) = &last.payload else {
        panic!("one FirewallApplied event: {last:?}");
    };
    assert_eq!(event.removed_rule_ids, std::slice::from_ref(&postgres));
    assert_eq!(event.rules.len(), 2, "443 changed, 6379 added");

    // The same firewall again: nothing to change, nothing appended.
    let now = f.firewall().await;
    let again = f
        .client
        .apply_firewall(pb::ApplyFirewallRequest {
            instance_id: INSTANCE.into(),
            rules: as_desired(&now),
            ..Default::default()
        })
        .await
        .expect("apply again")
        .into_inner();
    assert!(again.changes.is_empty(), "{again:#?}");
    assert_eq!(again.firewall.unwrap().revision, after.revision);

    // The JSON API's door: the same request, the same answer's shape.
    let console = f.rules.console.expect("the console listens");
    let (status, body) = block_in_place(|| {
        http(
            console,
            "POST",
            &format!("/api/v1/firewalls/{INSTANCE}/apply"),
            &[("content-type", "application/json")],
            r#"{"rules": [{"port": 22, "description": "SSH"}, {"port": 80, "description": "HTTP"}, {"port": 8080}], "dry_run": true}"#,
        )
    });
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["dryRun"], true, "{body}");
    let kinds: Vec<&str> = answer["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        ["RULE_CHANGE_KIND_REMOVED", "RULE_CHANGE_KIND_ADDED"],
        "6379 removed, 8080 added; HTTPS, left out, stays: {body}"
    );
    let (status, body) = block_in_place(|| {
        http(
            console,
            "POST",
            &format!("/api/v1/firewalls/{INSTANCE}/apply"),
            &[("content-type", "application/json")],
            r#"{"rules": [{"port": 22, "port_range": {"first": 22, "last": 23}}]}"#,
        )
    });
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("rules[0].port_range"), "{body}");
}

/// An apply made with confirm_within is one unconfirmed change: listed on
/// the firewall until confirmed, and kept once it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_with_a_window_is_one_unconfirmed_change_until_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let rules = cassette_e2e::RulesProcess::start(&dir.path().join("data")).await;
    let mut client = rules.client().await;
    let created = cassette_e2e::create_firewall(&mut client, INSTANCE).await;
    let mut desired = as_desired(&created);
    for rule in desired.iter_mut().filter(|r| r.port == 80) {
        rule.enabled = Some(false);
    }
    desired.push(desired_rule(8080));
    let applied = client
        .apply_firewall(pb::ApplyFirewallRequest {
            instance_id: INSTANCE.into(),
            rules: desired,
            confirm_within: Some(Duration::from_secs(600).try_into().unwrap()),
            ..Default::default()
        })
        .await
        .expect("an apply with a window")
        .into_inner();
    let firewall = applied.firewall.unwrap();
    assert_eq!(firewall.unconfirmed.len(), 1, "{firewall:?}");
    let change = &firewall.unconfirmed[0];
    assert_eq!(
        (change.first_revision, change.revision),
        (2, 2),
        "one revision"
    );
    assert_eq!(change.rule_ids.len(), 2, "{change:?}");
    let confirmed = client
        .confirm_change(pb::ConfirmChangeRequest {
            instance_id: INSTANCE.into(),
            revision: change.revision,
            ..Default::default()
        })
        .await
        .expect("confirm")
        .into_inner();
    assert!(confirmed.unconfirmed.is_empty());
    assert!(confirmed.rules.iter().any(|r| r.port == 8080));
}
