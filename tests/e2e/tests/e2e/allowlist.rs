//! Source allowlists ("If you must expose a database, use strong passwords
//! and allowlists"): validation naming the entry, replacement by UpdateRule,
//! the audit rendering, and real traffic from two client addresses over IPv4
//! and IPv6 (root).

use std::time::Duration;

use cassette_e2e::netns::{CLIENT_IP, CLIENT_IP6, OTHER_CLIENT_IP, OTHER_CLIENT_IP6};
use cassette_e2e::{pb, InProcess};
use tokio::task::block_in_place;
use tonic::Code;
use tonic_types::StatusExt;

use crate::kernel::{skip_unless_root, Fixture, INSTANCE};

fn add_from(instance: &str, port: u32, sources: &[&str]) -> pb::AddRuleRequest {
    pb::AddRuleRequest {
        instance_id: instance.into(),
        port,
        sources: sources.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

fn allow(instance: &str, rule_id: &str, sources: &[&str]) -> pb::UpdateRuleRequest {
    pb::UpdateRuleRequest {
        instance_id: instance.into(),
        rule_id: rule_id.into(),
        sources: Some(pb::SourceList {
            cidrs: sources.iter().map(|s| (*s).to_owned()).collect(),
        }),
        ..Default::default()
    }
}

fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn allowlists_are_validated_entry_by_entry_and_replaced_by_update() {
    let dir = tempfile::tempdir().unwrap();
    let service = InProcess::start(dir.path()).await;
    let mut client = service.client().await;
    cassette_e2e::create_firewall(&mut client, "db-1").await;
    let many: Vec<String> = (0..65).map(|i| format!("10.0.{i}.0/24")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let refused = [
        (
            add_from("db-1", 5432, &["10.0.0.0/8", "192.0.2.0/24", "10.0.0.1/8"]),
            "sources[2]",
            "host bits set: the network is 10.0.0.0/8",
        ),
        (
            add_from("db-1", 5432, &["192.0.2.7", "192.0.2.7/32"]),
            "sources[1]",
            "listed twice (also sources[0])",
        ),
        (
            add_from("db-1", 5432, &["2001:db8::/129"]),
            "sources[0]",
            "between 0 and 128",
        ),
        (
            add_from("db-1", 5432, &["office"]),
            "sources[0]",
            "not an IPv4 or IPv6 network",
        ),
        (add_from("db-1", 5432, &many), "sources", "at most 64"),
    ];
    for (request, field, why) in refused {
        let status = client.add_rule(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let named = violations(&status);
        assert!(
            named.iter().any(|(f, d)| f == field && d.contains(why)),
            "{field}: {why}: {named:?}"
        );
    }

    // Overlapping networks are fine; the answer lists them canonically and
    // gives no database warning (the port is not open to anywhere).
    let added = client
        .add_rule(add_from(
            "db-1",
            5432,
            &["2001:db8::/32", "10.1.0.0/16", "10.0.0.0/8", "192.0.2.7"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.revision, 2, "the refusals appended nothing");
    assert!(added.warnings.is_empty(), "{:?}", added.warnings);
    let rule = added.rules.iter().find(|r| r.port == 5432).unwrap().clone();
    assert_eq!(
        rule.sources,
        ["10.0.0.0/8", "10.1.0.0/16", "192.0.2.7/32", "2001:db8::/32"]
    );

    let status = client
        .update_rule(allow("db-1", &rule.id, &["198.51.101.0/23"]))
        .await
        .unwrap_err();
    assert_eq!(violations(&status)[0].0, "sources.cidrs[0]", "{status:?}");
    let narrowed = client
        .update_rule(allow("db-1", &rule.id, &["198.51.100.0/24"]))
        .await
        .unwrap()
        .into_inner();
    let after = narrowed.rules.iter().find(|r| r.id == rule.id).unwrap();
    assert_eq!(after.sources, ["198.51.100.0/24"]);
    assert_eq!(after.revision, 3);
    // Absent leaves it; a toggle keeps it.
    let toggled = client
        .update_rule(pb::UpdateRuleRequest {
            instance_id: "db-1".into(),
            rule_id: rule.id.clone(),
            description: Some("PostgreSQL".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let kept = toggled.rules.iter().find(|r| r.id == rule.id).unwrap();
    assert_eq!(kept.sources, ["198.51.100.0/24"]);
    // Empty: anywhere again, with the warning back.
    let opened = client
        .update_rule(allow("db-1", &rule.id, &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(opened
        .rules
        .iter()
        .find(|r| r.id == rule.id)
        .unwrap()
        .sources
        .is_empty());
    assert_eq!(opened.warnings.len(), 1);

    // Audit renders what the enforcer applied at revision 3.
    let mut audit = pb::audit_service_client::AuditServiceClient::new(
        cassette_e2e::channel(&cassette_e2e::tcp_target(service.addr)).await,
    );
    let then = audit
        .get_firewall_at(pb::GetFirewallAtRequest {
            instance_id: "db-1".into(),
            at: Some(pb::get_firewall_at_request::At::Revision(3)),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        then.ruleset
            .contains("elements = { 198.51.100.0/24 . 5432 }"),
        "{}",
        then.ruleset
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlist_only_the_allowed_source_connects_over_ipv4_and_ipv6() {
    if skip_unless_root("allowlist_only_the_allowed_source_connects_over_ipv4_and_ipv6") {
        return;
    }
    let mut f = Fixture::start(&[]).await;
    let from = |f: &Fixture, source: &str| block_in_place(|| f.lab.tcp_open_from(source, 5432));
    let mine = [format!("{CLIENT_IP}/32"), format!("{CLIENT_IP6}/128")];
    let added = f
        .client
        .add_rule(add_from(INSTANCE, 5432, &[&mine[0], &mine[1]]))
        .await
        .unwrap()
        .into_inner();
    let rule = added
        .rules
        .iter()
        .find(|r| r.port == 5432)
        .unwrap()
        .id
        .clone();
    f.wait(added.revision).await;
    assert!(from(&f, CLIENT_IP), "the allowed IPv4 source connects");
    assert!(!from(&f, OTHER_CLIENT_IP), "another IPv4 source is dropped");
    assert!(from(&f, CLIENT_IP6), "the allowed IPv6 source connects");
    assert!(
        !from(&f, OTHER_CLIENT_IP6),
        "another IPv6 source is dropped"
    );
    assert!(!block_in_place(|| f.lab.set_elements("tcp_open")).contains(&5432));
    assert!(
        block_in_place(|| f.lab.tcp_open_from(OTHER_CLIENT_IP, 80)),
        "port 80 stays open to all"
    );

    // Replaced: now only the other addresses.
    let theirs = [
        format!("{OTHER_CLIENT_IP}/32"),
        format!("{OTHER_CLIENT_IP6}/128"),
    ];
    let revision = f
        .client
        .update_rule(allow(INSTANCE, &rule, &[&theirs[0], &theirs[1]]))
        .await
        .unwrap()
        .into_inner()
        .revision;
    f.wait(revision).await;
    assert!(!from(&f, CLIENT_IP));
    assert!(from(&f, OTHER_CLIENT_IP));
    assert!(!from(&f, CLIENT_IP6));
    assert!(from(&f, OTHER_CLIENT_IP6));

    // The read-back understands the allowlist sets: no drift is repaired
    // over a few refresh intervals (1 s here).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let log = f.enforcer.as_ref().map(|e| e.log()).unwrap_or_default();
    assert!(!log.contains("table drifted"), "{log}");

    // Empty: anywhere.
    let revision = f
        .client
        .update_rule(allow(INSTANCE, &rule, &[]))
        .await
        .unwrap()
        .into_inner()
        .revision;
    f.wait(revision).await;
    for source in [CLIENT_IP, OTHER_CLIENT_IP, CLIENT_IP6, OTHER_CLIENT_IP6] {
        assert!(
            from(&f, source),
            "{source} connects to a rule open to anywhere"
        );
    }
}
