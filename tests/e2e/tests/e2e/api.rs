//! FirewallService semantics through the generated Rust client, against the
//! service on a real loopback socket with sled in a temp dir.

use std::collections::HashSet;

use cassette_e2e::{pb, Client, InProcess};
use tempfile::TempDir;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

struct Fixture {
    _dir: TempDir,
    service: InProcess,
    client: Client,
}

async fn fresh() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = InProcess::start(dir.path()).await;
    let client = service.client().await;
    Fixture {
        _dir: dir,
        service,
        client,
    }
}

async fn create(client: &mut Client, instance: &str) -> pb::Firewall {
    cassette_e2e::create_firewall(client, instance).await
}

fn add(instance: &str, port: u32, protocol: pb::Protocol) -> pb::AddRuleRequest {
    pb::AddRuleRequest {
        instance_id: instance.into(),
        port,
        protocol: protocol.into(),
        ..Default::default()
    }
}

async fn get(client: &mut Client, instance: &str) -> Result<pb::Firewall, Status> {
    client
        .get_firewall(pb::GetFirewallRequest {
            instance_id: instance.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

fn rule(firewall: &pb::Firewall, port: u32, protocol: pb::Protocol) -> Option<&pb::Rule> {
    firewall
        .rules
        .iter()
        .find(|r| r.port == port && r.protocol == protocol as i32)
}

/// The fields named in the status's google.rpc.BadRequest.
fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn create_firewall_has_the_three_default_rules_and_is_idempotent() {
    let mut f = fresh().await;
    let firewall = create(&mut f.client, "web-1").await;
    assert_eq!(firewall.instance_id, "web-1");
    assert_eq!(firewall.revision, 1);
    let defaults: Vec<_> = firewall
        .rules
        .iter()
        .map(|r| (r.id.as_str(), r.port, r.protocol, r.enabled, r.is_default))
        .collect();
    let tcp = pb::Protocol::Tcp as i32;
    assert_eq!(
        defaults,
        [
            ("default-ssh", 22, tcp, true, true),
            ("default-http", 80, tcp, true, true),
            ("default-https", 443, tcp, true, true)
        ]
    );
    assert!(firewall.create_time.is_some() && firewall.rules[0].update_time.is_some());
    assert_eq!(
        create(&mut f.client, "web-1").await,
        firewall,
        "second create changes nothing"
    );
    assert_eq!(get(&mut f.client, "web-1").await.unwrap(), firewall);
    f.service.stop().await;
}

#[tokio::test]
async fn add_rule_defaults_to_tcp_enabled_and_lists_rules_by_port_then_protocol() {
    let mut f = fresh().await;
    create(&mut f.client, "web-1").await;
    f.client
        .add_rule(add("web-1", 8080, pb::Protocol::Udp))
        .await
        .unwrap();
    f.client
        .add_rule(add("web-1", 53, pb::Protocol::Udp))
        .await
        .unwrap();
    let firewall = f
        .client
        .add_rule(pb::AddRuleRequest {
            description: "Alternative HTTP".into(),
            ..add("web-1", 8080, pb::Protocol::Unspecified)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(firewall.revision, 4);
    let order: Vec<_> = firewall
        .rules
        .iter()
        .map(|r| (r.port, r.protocol))
        .collect();
    let (tcp, udp) = (pb::Protocol::Tcp as i32, pb::Protocol::Udp as i32);
    assert_eq!(
        order,
        [
            (22, tcp),
            (53, udp),
            (80, tcp),
            (443, tcp),
            (8080, tcp),
            (8080, udp)
        ]
    );
    let http_alt = rule(&firewall, 8080, pb::Protocol::Tcp).unwrap();
    assert!(http_alt.enabled && !http_alt.is_default);
    assert_eq!(http_alt.description, "Alternative HTTP");
    assert_eq!(http_alt.revision, 4);
    let id = uuid::Uuid::parse_str(&http_alt.id).expect("custom rule ids are UUIDs");
    assert_eq!(id.get_version_num(), 7, "custom rule ids are UUID v7");

    let disabled = f
        .client
        .add_rule(pb::AddRuleRequest {
            enabled: Some(false),
            ..add("web-1", 9000, pb::Protocol::Tcp)
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!rule(&disabled, 9000, pb::Protocol::Tcp).unwrap().enabled);
    f.service.stop().await;
}

#[tokio::test]
async fn invalid_fields_are_invalid_argument_naming_each_field_and_append_nothing() {
    let mut f = fresh().await;
    create(&mut f.client, "web-1").await;
    let cases: Vec<(pb::AddRuleRequest, &[&str], &str)> = vec![
        (
            add("web-1", 0, pb::Protocol::Tcp),
            &["port"],
            "between 1 and 65535",
        ),
        (
            add("web-1", 70000, pb::Protocol::Tcp),
            &["port"],
            "got 70000",
        ),
        (
            pb::AddRuleRequest {
                protocol: 7,
                ..add("web-1", 5432, pb::Protocol::Tcp)
            },
            &["protocol"],
            "PROTOCOL_TCP or PROTOCOL_UDP",
        ),
        (
            pb::AddRuleRequest {
                description: "x".repeat(10_000),
                ..add("web-1", 5432, pb::Protocol::Tcp)
            },
            &["description"],
            "at most 255 characters",
        ),
        (
            pb::AddRuleRequest {
                description: "line\nbreak".into(),
                ..add("web-1", 5432, pb::Protocol::Tcp)
            },
            &["description"],
            "control characters",
        ),
        (
            add("Web_1", 5432, pb::Protocol::Tcp),
            &["instance_id"],
            "a-z, 0-9",
        ),
        (
            add("", 0, pb::Protocol::Tcp),
            &["instance_id", "port"],
            "must not be empty",
        ),
        (
            pb::AddRuleRequest {
                request_id: "a".repeat(200),
                ..add("web-1", 5432, pb::Protocol::Tcp)
            },
            &["request_id"],
            "at most 128",
        ),
    ];
    for (request, fields, message) in cases {
        let status = f.client.add_rule(request.clone()).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{request:?}: {status:?}"
        );
        assert_eq!(violated_fields(&status), *fields, "{status:?}");
        assert!(status.message().contains(message), "{status:?}");
    }
    let mut bad_actor = Request::new(add("web-1", 5432, pb::Protocol::Tcp));
    bad_actor
        .metadata_mut()
        .insert("x-actor", "".parse().unwrap());
    let status = f.client.add_rule(bad_actor).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["x-actor"]);

    let status = f
        .client
        .update_rule(pb::UpdateRuleRequest {
            instance_id: "web-1".into(),
            rule_id: "default-ssh".into(),
            description: Some("\u{7}".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["description"]);
    // Bidi overrides would make the page show another text than the one stored.
    let status = f
        .client
        .update_rule(pb::UpdateRuleRequest {
            instance_id: "web-1".into(),
            rule_id: "default-ssh".into(),
            description: Some("ssh \u{202E}lanigiro".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["description"]);
    assert!(status.message().contains("U+202E"), "{status:?}");
    let status = f
        .client
        .delete_rule(pb::DeleteRuleRequest {
            instance_id: "web-1".into(),
            rule_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["rule_id"]);

    assert_eq!(
        get(&mut f.client, "web-1").await.unwrap().revision,
        1,
        "nothing appended"
    );
    f.service.stop().await;
}

#[tokio::test]
async fn duplicate_port_and_protocol_is_already_exists_naming_the_existing_rule() {
    let mut f = fresh().await;
    create(&mut f.client, "db-1").await;
    let firewall = f
        .client
        .add_rule(add("db-1", 5432, pb::Protocol::Tcp))
        .await
        .unwrap()
        .into_inner();
    let existing = rule(&firewall, 5432, pb::Protocol::Tcp).unwrap().id.clone();
    let status = f
        .client
        .add_rule(add("db-1", 5432, pb::Protocol::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(status.message().contains(&existing), "{status:?}");
    assert_eq!(
        status.get_details_resource_info().map(|r| r.resource_name),
        Some(existing)
    );
    let status = f
        .client
        .add_rule(add("db-1", 22, pb::Protocol::Tcp))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::AlreadyExists,
        "a default rule's port is taken too"
    );
    f.client
        .add_rule(add("db-1", 5432, pb::Protocol::Udp))
        .await
        .expect("same port, other protocol");
    assert_eq!(get(&mut f.client, "db-1").await.unwrap().revision, 3);
    f.service.stop().await;
}

fn toggle(instance: &str, rule_id: &str, enabled: bool) -> pb::UpdateRuleRequest {
    pb::UpdateRuleRequest {
        instance_id: instance.into(),
        rule_id: rule_id.into(),
        enabled: Some(enabled),
        ..Default::default()
    }
}

#[tokio::test]
async fn default_rules_can_be_disabled_and_enabled_but_never_deleted() {
    let mut f = fresh().await;
    create(&mut f.client, "web-1").await;
    let off = f
        .client
        .update_rule(toggle("web-1", "default-ssh", false))
        .await
        .unwrap()
        .into_inner();
    let ssh = &off.rules[0];
    assert_eq!(
        (ssh.id.as_str(), ssh.enabled, ssh.revision),
        ("default-ssh", false, 2)
    );
    let status = f
        .client
        .delete_rule(pb::DeleteRuleRequest {
            instance_id: "web-1".into(),
            rule_id: "default-ssh".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.get_details_precondition_failure().is_some());
    let on = f
        .client
        .update_rule(toggle("web-1", "default-ssh", true))
        .await
        .unwrap()
        .into_inner();
    assert!(on.rules[0].enabled);
    assert_eq!(on.revision, 3);
    assert_eq!(on.rules.len(), 3);
    f.service.stop().await;
}

#[tokio::test]
async fn update_and_delete_custom_rules() {
    let mut f = fresh().await;
    create(&mut f.client, "web-1").await;
    let firewall = f
        .client
        .add_rule(add("web-1", 3000, pb::Protocol::Tcp))
        .await
        .unwrap()
        .into_inner();
    let id = rule(&firewall, 3000, pb::Protocol::Tcp).unwrap().id.clone();
    let updated = f
        .client
        .update_rule(pb::UpdateRuleRequest {
            description: Some("Rails dev server".into()),
            ..toggle("web-1", &id, false)
        })
        .await
        .unwrap()
        .into_inner();
    let r = rule(&updated, 3000, pb::Protocol::Tcp).unwrap();
    assert_eq!(
        (r.enabled, r.description.as_str()),
        (false, "Rails dev server")
    );
    assert_eq!(
        updated.revision, 4,
        "a toggle and a description: two events"
    );
    let unchanged = f
        .client
        .update_rule(toggle("web-1", &id, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unchanged.revision, 4, "no change, no event");

    let deleted = f
        .client
        .delete_rule(pb::DeleteRuleRequest {
            instance_id: "web-1".into(),
            rule_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(rule(&deleted, 3000, pb::Protocol::Tcp).is_none());
    let status = f
        .client
        .update_rule(toggle("web-1", &id, true))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        status.get_details_resource_info().map(|r| r.resource_name),
        Some(id)
    );
    f.service.stop().await;
}

#[tokio::test]
async fn unknown_instance_is_not_found_and_delete_firewall_removes_it() {
    let mut f = fresh().await;
    let status = get(&mut f.client, "nobody").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = f
        .client
        .add_rule(add("nobody", 80, pb::Protocol::Tcp))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    create(&mut f.client, "web-1").await;
    create(&mut f.client, "web-2").await;
    f.client
        .delete_firewall(pb::DeleteFirewallRequest {
            instance_id: "web-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        get(&mut f.client, "web-1").await.unwrap_err().code(),
        Code::NotFound
    );
    let listed = f
        .client
        .list_firewalls(pb::ListFirewallsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = listed
        .firewalls
        .iter()
        .map(|f| f.instance_id.as_str())
        .collect();
    assert_eq!(ids, ["web-2"]);
    let status = f
        .client
        .delete_firewall(pb::DeleteFirewallRequest {
            instance_id: "web-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let again = create(&mut f.client, "web-1").await;
    assert_eq!(again.revision, 3, "revisions continue after a deletion");
    assert_eq!(again.rules.len(), 3);
    f.service.stop().await;
}

#[tokio::test]
async fn list_firewalls_pages_in_instance_order() {
    let mut f = fresh().await;
    for i in (0..7).rev() {
        create(&mut f.client, &format!("i-{i}")).await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let page = f
            .client
            .list_firewalls(pb::ListFirewallsRequest {
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.firewalls.len() <= 3);
        seen.extend(page.firewalls.into_iter().map(|f| f.instance_id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let expected: Vec<_> = (0..7).map(|i| format!("i-{i}")).collect();
    assert_eq!(seen, expected);
    let status = f
        .client
        .list_firewalls(pb::ListFirewallsRequest {
            page_size: 3,
            page_token: "!!".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["page_token"]);
    f.service.stop().await;
}

#[tokio::test]
async fn a_retry_with_the_same_request_id_returns_the_original_result_and_appends_nothing() {
    let mut f = fresh().await;
    create(&mut f.client, "web-1").await;
    let request = pb::AddRuleRequest {
        request_id: "add-5432-attempt".into(),
        ..add("web-1", 5432, pb::Protocol::Tcp)
    };
    let first = f
        .client
        .add_rule(request.clone())
        .await
        .unwrap()
        .into_inner();
    let retry = f
        .client
        .add_rule(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry, first);
    assert_eq!(get(&mut f.client, "web-1").await.unwrap().revision, 2);

    // Later changes do not alter what the retry answers.
    f.client
        .update_rule(toggle("web-1", "default-http", false))
        .await
        .unwrap();
    let late_retry = f.client.add_rule(request).await.unwrap().into_inner();
    assert_eq!(late_retry, first);
    assert_eq!(get(&mut f.client, "web-1").await.unwrap().revision, 3);

    // The same key on another instance is another request.
    create(&mut f.client, "web-2").await;
    let other = f
        .client
        .add_rule(pb::AddRuleRequest {
            request_id: "add-5432-attempt".into(),
            ..add("web-2", 5432, pb::Protocol::Tcp)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((other.instance_id.as_str(), other.revision), ("web-2", 2));
    f.service.stop().await;
}

/// `message` sent as `actor` (development mode names callers by `x-actor`).
fn as_actor<T>(actor: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-actor", actor.parse().expect("an actor name"));
    request
}

/// The hijack: another principal sends its own change with the victim's
/// key first. Keys are scoped to their caller, so the victim's change still
/// happens; and the victim's own key reused for another change is refused,
/// naming request_id, while a true retry gets the first answer.
#[tokio::test]
async fn a_request_id_belongs_to_its_caller_and_to_one_request() {
    let mut f = fresh().await;
    create(&mut f.client, "web-1").await;
    let added = f
        .client
        .add_rule(as_actor("alice", add("web-1", 5432, pb::Protocol::Tcp)))
        .await
        .unwrap()
        .into_inner();
    let postgres = rule(&added, 5432, pb::Protocol::Tcp).unwrap().id.clone();
    let key = "close-5432".to_owned();
    f.client
        .add_rule(as_actor(
            "mallory",
            pb::AddRuleRequest {
                request_id: key.clone(),
                ..add("web-1", 9999, pb::Protocol::Tcp)
            },
        ))
        .await
        .expect("mallory's own change");
    let delete = pb::DeleteRuleRequest {
        instance_id: "web-1".into(),
        rule_id: postgres,
        request_id: key.clone(),
        ..Default::default()
    };
    let deleted = f
        .client
        .delete_rule(as_actor("alice", delete.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        rule(&deleted, 5432, pb::Protocol::Tcp).is_none(),
        "alice's delete happened: {deleted:?}"
    );
    assert_eq!(deleted.revision, 4);

    let reused = f
        .client
        .update_rule(as_actor(
            "alice",
            pb::UpdateRuleRequest {
                request_id: key.clone(),
                ..toggle("web-1", "default-ssh", false)
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::InvalidArgument, "{reused:?}");
    assert_eq!(violated_fields(&reused), ["request_id"]);
    assert!(reused.message().contains("different request"), "{reused:?}");
    assert_eq!(get(&mut f.client, "web-1").await.unwrap().revision, 4);

    let retried = f
        .client
        .delete_rule(as_actor("alice", delete))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried, deleted);
    assert_eq!(get(&mut f.client, "web-1").await.unwrap().revision, 4);
    f.service.stop().await;
}

#[tokio::test]
async fn a_stale_expected_revision_is_aborted_and_appends_nothing() {
    let mut f = fresh().await;
    create(&mut f.client, "web-1").await;
    f.client
        .add_rule(pb::AddRuleRequest {
            expected_revision: Some(1),
            ..add("web-1", 5432, pb::Protocol::Tcp)
        })
        .await
        .expect("current revision matches");
    let status = f
        .client
        .add_rule(pb::AddRuleRequest {
            expected_revision: Some(1),
            ..add("web-1", 6379, pb::Protocol::Tcp)
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(
        status.get_details_error_info().map(|e| e.reason),
        Some("REVISION_MISMATCH".to_owned())
    );
    let firewall = get(&mut f.client, "web-1").await.unwrap();
    assert_eq!(firewall.revision, 2);
    assert!(rule(&firewall, 6379, pb::Protocol::Tcp).is_none());
    f.service.stop().await;
}

#[tokio::test]
async fn fifty_concurrent_adds_of_one_port_have_exactly_one_winner() {
    let mut f = fresh().await;
    create(&mut f.client, "web-1").await;
    let mut calls = Vec::new();
    for _ in 0..50 {
        let mut client = f.client.clone();
        calls.push(tokio::spawn(async move {
            client.add_rule(add("web-1", 5432, pb::Protocol::Tcp)).await
        }));
    }
    let mut winners = Vec::new();
    let mut codes = HashSet::new();
    for call in calls {
        match call.await.expect("task") {
            Ok(firewall) => winners.push(firewall.into_inner()),
            Err(status) => {
                codes.insert(status.code());
            }
        }
    }
    assert_eq!(winners.len(), 1, "exactly one AddRule wins");
    assert_eq!(codes, HashSet::from([Code::AlreadyExists]));
    let firewall = get(&mut f.client, "web-1").await.unwrap();
    assert_eq!(firewall.revision, 2);
    assert_eq!(firewall.rules.len(), 4);
    f.service.stop().await;
}

#[tokio::test]
async fn state_survives_a_graceful_restart_on_the_same_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let service = InProcess::start(dir.path()).await;
    let mut client = service.client().await;
    create(&mut client, "web-1").await;
    client
        .add_rule(add("web-1", 27017, pb::Protocol::Tcp))
        .await
        .unwrap();
    let before = get(&mut client, "web-1").await.unwrap();
    service.stop().await;

    let service = InProcess::start(dir.path()).await;
    let mut client = service.client().await;
    assert_eq!(get(&mut client, "web-1").await.unwrap(), before);
    let next = client
        .add_rule(add("web-1", 3306, pb::Protocol::Tcp))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.revision, before.revision + 1);
    service.stop().await;
}

#[tokio::test]
async fn list_firewalls_pages_are_bounded_by_size_as_well_as_count() {
    let dir = tempfile::tempdir().unwrap();
    let limits = cassette_rules::Limits {
        max_list_page_bytes: 600,
        ..Default::default()
    };
    let service =
        InProcess::start_with(dir.path(), cassette_rules::Security::development(), limits).await;
    let mut client = service.client().await;
    let instances: Vec<String> = (0..6).map(|i| format!("web-{i}")).collect();
    for instance in &instances {
        create(&mut client, instance).await;
    }
    let mut pages = Vec::new();
    let mut token = String::new();
    for _ in 0..20 {
        let page = client
            .list_firewalls(pb::ListFirewallsRequest {
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages.push(
            page.firewalls
                .into_iter()
                .map(|f| f.instance_id)
                .collect::<Vec<_>>(),
        );
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert!(
        pages.len() > 1,
        "600 bytes cannot hold six firewalls: {pages:?}"
    );
    assert!(pages.iter().all(|p| !p.is_empty()), "{pages:?}");
    assert_eq!(pages.concat(), instances, "every firewall once, in order");
    service.stop().await;
}

#[tokio::test]
async fn a_database_port_open_to_anywhere_is_answered_with_advice_not_refused() {
    let mut f = fresh().await;
    create(&mut f.client, "web-1").await;
    let added = f
        .client
        .add_rule(add("web-1", 5432, pb::Protocol::Tcp))
        .await
        .expect("allowed")
        .into_inner();
    let postgres = rule(&added, 5432, pb::Protocol::Tcp).unwrap().id.clone();
    assert_eq!(added.warnings.len(), 1, "{:?}", added.warnings);
    let warning = &added.warnings[0];
    assert_eq!(
        (warning.code.as_str(), warning.rule_id.as_str()),
        ("DATABASE_PORT_OPEN", postgres.as_str())
    );
    assert!(
        warning
            .message
            .contains("Database ports should usually stay closed"),
        "{warning:?}"
    );

    let web = f
        .client
        .add_rule(add("web-1", 8080, pb::Protocol::Tcp))
        .await
        .unwrap()
        .into_inner();
    assert!(web.warnings.is_empty(), "{:?}", web.warnings);
    let read = get(&mut f.client, "web-1").await.unwrap();
    assert!(read.warnings.is_empty(), "only answers to changes advise");

    let closed = f
        .client
        .update_rule(toggle("web-1", &postgres, false))
        .await
        .unwrap()
        .into_inner();
    assert!(closed.warnings.is_empty(), "{:?}", closed.warnings);
    let reopened = f
        .client
        .update_rule(toggle("web-1", &postgres, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reopened.warnings.len(), 1);
    f.service.stop().await;
}
