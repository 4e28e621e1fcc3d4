//! Identity and authorization over real TLS: the attack table of issue 8.
//! Each row is refused with the right status and appends nothing; what was
//! allowed is recorded under the real principal.

use std::time::Duration;

use cassette_auth::TrustDomain;
use cassette_e2e::secured::{foreign_identity, token_sha256, Secured};
use cassette_e2e::{pb, Client, InProcess, RulesProcess, PATIENCE};
use cassette_proto::pb::audit_service_client::AuditServiceClient;
use cassette_proto::pb::firewall_service_client::FirewallServiceClient;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::{Code, Request};

use crate::sync::open_on;

const OPS_TOKEN: &str = "ops-bot-secret-token";

fn policy() -> String {
    format!(
        r#"
[[principal]]
name = "console"
role = "admin"
instances = ["*"]
delegate = true

[[principal]]
name = "web-team"
role = "editor"
instances = ["web-*"]

[[principal]]
name = "viewer"
role = "viewer"
instances = ["*"]

[[principal]]
name = "auditor"
role = "auditor"
instances = ["*"]

[[principal]]
name = "web-auditor"
role = "auditor"
instances = ["web-*"]

[[principal]]
name = "ops-bot"
role = "editor"
instances = ["*"]
token_sha256 = "{}"
"#,
        token_sha256(OPS_TOKEN)
    )
}

fn add_rule(instance: &str, port: u32) -> pb::AddRuleRequest {
    pb::AddRuleRequest {
        instance_id: instance.into(),
        port,
        ..Default::default()
    }
}

fn with_metadata<T>(message: T, metadata: &[(&'static str, &str)]) -> Request<T> {
    let mut request = Request::new(message);
    for (key, value) in metadata {
        request
            .metadata_mut()
            .insert(*key, value.parse().expect("ascii metadata"));
    }
    request
}

/// The events of the whole log, as the admin sees them.
async fn events(admin: &Channel) -> Vec<pb::Event> {
    let mut audit = AuditServiceClient::new(admin.clone());
    cassette_e2e::list_events(&mut audit, pb::ListEventsRequest::default()).await
}

struct Lab {
    _dir: tempfile::TempDir,
    secured: Secured,
    service: InProcess,
    admin: Channel,
}

impl Lab {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let secured = Secured::new(&policy());
        let service = InProcess::start_secured(dir.path(), &secured).await;
        let admin = service.tls_channel(&secured.principal("console")).await;
        let mut console = FirewallServiceClient::new(admin.clone());
        for instance in ["web-1", "db-1"] {
            cassette_e2e::create_firewall(&mut console, instance).await;
        }
        Self {
            _dir: dir,
            secured,
            service,
            admin,
        }
    }

    async fn client(&self, tls: &ClientTlsConfig) -> Client {
        FirewallServiceClient::new(self.service.tls_channel(tls).await)
    }

    /// Runs `attack` and checks that it appended nothing.
    async fn refused<F: std::future::Future<Output = ()>>(&self, row: &str, attack: F) {
        let before = events(&self.admin).await.len();
        attack.await;
        let after = events(&self.admin).await.len();
        assert_eq!(before, after, "{row}: the log changed");
    }
}

fn expect_code<T: std::fmt::Debug>(
    row: &str,
    result: Result<T, tonic::Status>,
    code: Code,
) -> tonic::Status {
    let status = result.expect_err(row);
    assert_eq!(status.code(), code, "{row}: {status:?}");
    status
}

#[tokio::test]
async fn the_attack_table_is_refused_row_by_row_and_appends_nothing() {
    let lab = Lab::start().await;

    lab.refused("no credentials", async {
        let mut anonymous = lab.client(&lab.secured.no_identity()).await;
        let status = expect_code(
            "no credentials",
            anonymous.add_rule(add_rule("web-1", 5432)).await,
            Code::Unauthenticated,
        );
        assert!(status.message().contains("no credentials"), "{status:?}");
        expect_code(
            "no credentials, read",
            anonymous
                .get_firewall(pb::GetFirewallRequest {
                    instance_id: "web-1".into(),
                    ..Default::default()
                })
                .await,
            Code::Unauthenticated,
        );
    })
    .await;

    lab.refused("a certificate from another CA", async {
        let (foreign, _dir) = foreign_identity(
            &lab.secured.no_identity(),
            "spiffe://cassette.local/principal/console",
        );
        // The TLS handshake itself fails: the call never reaches the service.
        let outcome = match lab
            .service
            .https_target()
            .connect_with(Some(&foreign))
            .await
        {
            Err(error) => Err(error.to_string()),
            Ok(channel) => FirewallServiceClient::new(channel)
                .add_rule(add_rule("web-1", 5432))
                .await
                .map(|_| ())
                .map_err(|s| format!("{s:?}")),
        };
        assert!(outcome.is_err(), "a foreign certificate was accepted");
    })
    .await;

    lab.refused("an enforcer certificate used for the API", async {
        let mut enforcer = lab.client(&lab.secured.enforcer("web-1")).await;
        let status = expect_code(
            "enforcer as API caller",
            enforcer.add_rule(add_rule("web-1", 5432)).await,
            Code::PermissionDenied,
        );
        assert!(status.message().contains("enforcer/web-1"), "{status:?}");
    })
    .await;

    lab.refused("an enforcer of web-1 saying Hello for db-1", async {
        let channel = lab
            .service
            .tls_channel(&lab.secured.enforcer("web-1"))
            .await;
        let status = expect_code(
            "hello for another instance",
            open_on(channel, "db-1", 0).await.map(|_| ()),
            Code::PermissionDenied,
        );
        assert!(status.message().contains("db-1"), "{status:?}");
    })
    .await;

    lab.refused("a principal opening a sync stream", async {
        let channel = lab
            .service
            .tls_channel(&lab.secured.principal("console"))
            .await;
        expect_code(
            "principal calling Sync",
            open_on(channel, "web-1", 0).await.map(|_| ()),
            Code::PermissionDenied,
        );
    })
    .await;

    lab.refused("an editor of web-* changing db-1", async {
        let mut web = lab.client(&lab.secured.principal("web-team")).await;
        let status = expect_code(
            "editor out of scope",
            web.add_rule(add_rule("db-1", 5432)).await,
            Code::PermissionDenied,
        );
        for named in ["web-team", "AddRule", "db-1"] {
            assert!(
                status.message().contains(named),
                "names {named}: {status:?}"
            );
        }
    })
    .await;

    lab.refused("a viewer mutating", async {
        let mut viewer = lab.client(&lab.secured.principal("viewer")).await;
        viewer
            .get_firewall(pb::GetFirewallRequest {
                instance_id: "db-1".into(),
                ..Default::default()
            })
            .await
            .expect("a viewer reads");
        expect_code(
            "viewer mutating",
            viewer
                .delete_firewall(pb::DeleteFirewallRequest {
                    instance_id: "db-1".into(),
                    ..Default::default()
                })
                .await,
            Code::PermissionDenied,
        );
        let audit = AuditServiceClient::new(
            lab.service
                .tls_channel(&lab.secured.principal("viewer"))
                .await,
        )
        .verify_log(pb::VerifyLogRequest {})
        .await;
        expect_code("viewer auditing", audit, Code::PermissionDenied);
    })
    .await;

    lab.refused("an auditor mutating", async {
        let channel = lab
            .service
            .tls_channel(&lab.secured.principal("auditor"))
            .await;
        AuditServiceClient::new(channel.clone())
            .verify_log(pb::VerifyLogRequest {})
            .await
            .expect("an auditor audits");
        expect_code(
            "auditor mutating",
            FirewallServiceClient::new(channel)
                .add_rule(add_rule("db-1", 5432))
                .await,
            Code::PermissionDenied,
        );
    })
    .await;

    lab.refused("a scoped auditor verifying the whole log", async {
        let channel = lab
            .service
            .tls_channel(&lab.secured.principal("web-auditor"))
            .await;
        let status = expect_code(
            "scoped VerifyLog",
            AuditServiceClient::new(channel)
                .verify_log(pb::VerifyLogRequest {})
                .await,
            Code::PermissionDenied,
        );
        assert!(status.message().contains("every instance"), "{status:?}");
    })
    .await;

    lab.refused("x-on-behalf-of from a non-delegate", async {
        let mut web = lab.client(&lab.secured.principal("web-team")).await;
        let status = expect_code(
            "non-delegate on behalf",
            web.add_rule(with_metadata(
                add_rule("web-1", 8080),
                &[("x-on-behalf-of", "alice")],
            ))
            .await,
            Code::PermissionDenied,
        );
        assert!(status.message().contains("delegate"), "{status:?}");
    })
    .await;

    lab.refused("an unknown bearer token", async {
        let mut anonymous = lab.client(&lab.secured.no_identity()).await;
        expect_code(
            "unknown token",
            anonymous
                .add_rule(with_metadata(
                    add_rule("db-1", 5432),
                    &[("authorization", "Bearer guessed")],
                ))
                .await,
            Code::Unauthenticated,
        );
    })
    .await;

    // What is allowed is recorded under the real principal, whatever x-actor says.
    let mut web = lab.client(&lab.secured.principal("web-team")).await;
    let spoofed = web
        .add_rule(with_metadata(
            add_rule("web-1", 3000),
            &[("x-actor", "root")],
        ))
        .await
        .expect("an editor changes its own instance")
        .into_inner();
    let mut console = FirewallServiceClient::new(lab.admin.clone());
    console
        .add_rule(with_metadata(
            add_rule("db-1", 5432),
            &[("x-on-behalf-of", "alice@example.com")],
        ))
        .await
        .expect("a delegate acts for a user");
    let mut bot = lab.client(&lab.secured.no_identity()).await;
    bot.add_rule(with_metadata(
        add_rule("db-1", 6379),
        &[("authorization", &format!("Bearer {OPS_TOKEN}"))],
    ))
    .await
    .expect("a bearer token authenticates");

    let recorded: Vec<(String, String, String)> = events(&lab.admin)
        .await
        .into_iter()
        .map(|e| (e.instance_id, e.actor, e.on_behalf_of))
        .collect();
    let who = |i: &str, a: &str, o: &str| (i.to_owned(), a.to_owned(), o.to_owned());
    assert_eq!(
        recorded,
        vec![
            who("web-1", "console", ""),
            who("db-1", "console", ""),
            who("web-1", "web-team", ""),
            who("db-1", "console", "alice@example.com"),
            who("db-1", "ops-bot", ""),
        ]
    );
    assert_eq!(spoofed.revision, 2);
    lab.service.stop().await;
}

#[tokio::test]
async fn scoped_principals_list_only_their_instances() {
    let lab = Lab::start().await;
    let mut web = lab.client(&lab.secured.principal("web-team")).await;
    cassette_e2e::create_firewall(&mut web, "web-2").await;
    let listed: Vec<String> = web
        .list_firewalls(pb::ListFirewallsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .firewalls
        .into_iter()
        .map(|f| f.instance_id)
        .collect();
    assert_eq!(listed, ["web-1", "web-2"]);
    // Troubleshooting is a read, scoped like one.
    let diagnose = |instance: &str| pb::DiagnoseRequest {
        instance_id: instance.into(),
        port: 22,
        ..Default::default()
    };
    assert!(web.diagnose(diagnose("web-1")).await.is_ok());
    expect_code(
        "web-team diagnosing db-1",
        web.diagnose(diagnose("db-1")).await,
        Code::PermissionDenied,
    );

    let auditor = lab
        .service
        .tls_channel(&lab.secured.principal("web-auditor"))
        .await;
    let mut stream = AuditServiceClient::new(auditor.clone())
        .list_events(pb::ListEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        seen.push(event.instance_id);
    }
    assert_eq!(seen, ["web-1", "web-2"], "db-1's events are not shown");
    expect_code(
        "auditor of web-* reading db-1",
        AuditServiceClient::new(auditor)
            .get_firewall_at(pb::GetFirewallAtRequest {
                instance_id: "db-1".into(),
                at: Some(pb::get_firewall_at_request::At::Revision(1)),
            })
            .await,
        Code::PermissionDenied,
    );
    lab.service.stop().await;
}

/// WaitForSync on web-1's latest revision, as the admin.
async fn wait(lab: &Lab, timeout: Duration) -> Result<pb::SyncStatus, tonic::Status> {
    FirewallServiceClient::new(lab.admin.clone())
        .wait_for_sync(pb::WaitForSyncRequest {
            instance_id: "web-1".into(),
            revision: 0,
            timeout: Some(timeout.try_into().unwrap()),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn the_sync_channel_cannot_lie() {
    let lab = Lab::start().await;
    let enforcer = lab.secured.enforcer("web-1");

    // A Hello claiming the latest revision is sent nothing, so its ack of that
    // revision (even with the right hash) counts for nothing.
    let channel = lab.service.tls_channel(&enforcer).await;
    let liar = open_on(channel, "web-1", 1).await.unwrap();
    liar.ack_with_hash(1, None, &cassette_ruleset::Ruleset::defaults().hash())
        .await;
    let status = wait(&lab, Duration::from_millis(700)).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    drop(liar);
    // A Hello claiming a revision the log does not have gets the log's history.
    let channel = lab.service.tls_channel(&enforcer).await;
    let mut ahead = open_on(channel, "web-1", 1 << 63).await.unwrap();
    assert_eq!(ahead.next(Duration::from_secs(10)).await, Some(vec![1]));
    drop(ahead);

    // An honest stream: history first, and an ack beyond what it was sent is ignored.
    let channel = lab.service.tls_channel(&enforcer).await;
    let mut honest = open_on(channel, "web-1", 0).await.unwrap();
    assert_eq!(honest.next(Duration::from_secs(10)).await, Some(vec![1]));
    honest.ack(5, None).await;
    honest.ack(1, None).await;
    let status = wait(&lab, Duration::from_secs(10)).await.unwrap();
    assert_eq!(status.state, pb::SyncState::InSync as i32, "{status:?}");
    assert_eq!(
        status.applied_revision, 1,
        "the ack of revision 5 was ignored"
    );

    // An ok ack whose hash is not what the service computes: ERROR.
    let mut web = FirewallServiceClient::new(lab.admin.clone());
    web.add_rule(add_rule("web-1", 5432)).await.unwrap();
    assert_eq!(honest.next(Duration::from_secs(10)).await, Some(vec![2]));
    honest.ack_with_hash(2, None, &"0".repeat(64)).await;
    let status = wait(&lab, Duration::from_secs(10)).await.unwrap();
    assert_eq!(status.state, pb::SyncState::Error as i32, "{status:?}");
    assert!(
        status.last_error.contains("does not hold what was sent"),
        "{status:?}"
    );
    let firewall = web
        .get_firewall(pb::GetFirewallRequest {
            instance_id: "web-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let postgres = firewall.rules.iter().find(|r| r.port == 5432).unwrap();
    assert_ne!(
        postgres.status,
        pb::RuleStatus::Applied as i32,
        "never shown applied"
    );

    // One live stream per instance: a new one closes the old.
    let channel = lab.service.tls_channel(&enforcer).await;
    let _newer = open_on(channel, "web-1", 2).await.unwrap();
    let ended = honest.status(Duration::from_secs(10)).await;
    match ended {
        Some(Err(status)) => {
            assert_eq!(status.code(), Code::Aborted, "{status:?}");
            assert!(status.message().contains("newer sync stream"), "{status:?}");
        }
        other => panic!("the replaced stream did not end with ABORTED: {other:?}"),
    }
    lab.service.stop().await;
}

#[tokio::test]
async fn per_principal_caps_answer_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let secured = Secured::new(&policy());
    let limits = cassette_rules::Limits {
        max_follow_streams_per_principal: 1,
        max_waiters_per_principal: 1,
        ..Default::default()
    };
    let service = InProcess::start_with(dir.path(), secured.security(), limits).await;
    let admin = service.tls_channel(&secured.principal("console")).await;
    let mut console = FirewallServiceClient::new(admin.clone());
    cassette_e2e::create_firewall(&mut console, "web-1").await;

    let follow = || pb::ListEventsRequest {
        follow: true,
        ..Default::default()
    };
    let mut audit = AuditServiceClient::new(admin.clone());
    let first = audit
        .list_events(follow())
        .await
        .expect("first follow stream");
    let second = audit.list_events(follow()).await;
    let status = expect_code(
        "second follow stream",
        second.map(|_| ()),
        Code::ResourceExhausted,
    );
    assert!(status.message().contains("follow streams"), "{status:?}");
    drop(first);

    // One long waiter holds the principal's only slot; a second is refused.
    let long_wait = |mut console: Client| {
        tokio::spawn(async move {
            console
                .wait_for_sync(pb::WaitForSyncRequest {
                    instance_id: "web-1".into(),
                    revision: 0,
                    timeout: Some(Duration::from_secs(5).try_into().unwrap()),
                    ..Default::default()
                })
                .await
        })
    };
    let mut waiter = long_wait(console.clone());
    let (mut refused, mut last) = (None, None);
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if waiter.is_finished() {
            // It lost the race for the slot to the previous probe: start it again.
            waiter = long_wait(console.clone());
            continue;
        }
        let answer = console
            .wait_for_sync(pb::WaitForSyncRequest {
                instance_id: "web-1".into(),
                revision: 0,
                timeout: Some(Duration::from_millis(1).try_into().unwrap()),
                ..Default::default()
            })
            .await;
        match answer {
            Err(status) if status.code() == Code::ResourceExhausted => {
                refused = Some(status);
                break;
            }
            other => last = Some(format!("{other:?}")),
        }
    }
    // A change that would wait needs a slot too: refused before it changes anything.
    let before = cassette_e2e::get_firewall(&mut console, "web-1")
        .await
        .revision;
    let waiting_change = console
        .update_rule(pb::UpdateRuleRequest {
            instance_id: "web-1".into(),
            rule_id: "default-ssh".into(),
            enabled: Some(false),
            wait_for_sync: Some(Duration::from_millis(1).try_into().unwrap()),
            ..Default::default()
        })
        .await;
    let still_waiting = !waiter.is_finished();
    waiter.abort();
    let refused = refused.unwrap_or_else(|| panic!("a second waiter was never refused: {last:?}"));
    assert!(
        refused.message().contains("WaitForSync waiters"),
        "{refused:?}"
    );
    if still_waiting {
        let status = waiting_change.expect_err("a waiting change beyond the cap");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        let after = cassette_e2e::get_firewall(&mut console, "web-1")
            .await
            .revision;
        assert_eq!(after, before, "a refused change appended nothing");
    }

    // A message over the size limit is refused before it is decoded.
    let huge = pb::AddRuleRequest {
        instance_id: "web-1".into(),
        port: 8080,
        description: "x".repeat(2 << 20),
        ..Default::default()
    };
    let status = console.add_rule(huge).await.unwrap_err();
    assert_ne!(status.code(), Code::Ok);
    let firewall = cassette_e2e::create_firewall(&mut console, "web-1").await;
    assert_eq!(firewall.revision, 1, "nothing appended");
    service.stop().await;
}

#[tokio::test]
async fn development_mode_refuses_plaintext_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let service = cassette_rules::RulesService::open(&cassette_rules::LogConfig::sled(dir.path()))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let error = service
        .serve(listener, std::future::ready(()))
        .await
        .unwrap_err();
    assert!(
        matches!(error, cassette_rules::ServeError::PlaintextNotLoopback(_)),
        "{error}"
    );
    assert!(error.to_string().contains("--tls-cert"), "{error}");
}

#[tokio::test]
async fn a_revoked_token_stops_working_after_sighup_and_a_bad_policy_keeps_the_old_one() {
    let secured = Secured::new(&policy());
    let dir = tempfile::tempdir().unwrap();
    let addr = cassette_e2e::free_port();
    let rules = secured_binary(&secured, &dir.path().join("data"), addr, &[]).await;
    let mut console = rules.client().await;
    cassette_e2e::create_firewall(&mut console, "db-1").await;
    let mut bot = FirewallServiceClient::new(
        cassette_e2e::channel_with(&rules.target, Some(&secured.no_identity())).await,
    );
    let get = || {
        with_metadata(
            pb::GetFirewallRequest {
                instance_id: "db-1".into(),
                ..Default::default()
            },
            &[("authorization", &format!("Bearer {OPS_TOKEN}"))],
        )
    };
    bot.get_firewall(get()).await.expect("the token works");

    // A policy that does not parse is refused: the old one stays.
    secured.write_policy("[[principal]]\nname = \"broken\"\n");
    hangup(rules.pid());
    tokio::time::sleep(Duration::from_millis(300)).await;
    bot.get_firewall(get()).await.expect("the old policy stays");

    let without_bot: String = policy()
        .split("[[principal]]")
        .filter(|entry| !entry.contains("ops-bot"))
        .collect::<Vec<_>>()
        .join("[[principal]]");
    secured.write_policy(&without_bot);
    hangup(rules.pid());
    let mut last = None;
    for _ in 0..100 {
        match bot.get_firewall(get()).await {
            Err(status) if status.code() == Code::Unauthenticated => {
                last = None;
                break;
            }
            other => last = Some(format!("{other:?}")),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(last.is_none(), "the revoked token still works: {last:?}");
    assert!(rules.log().contains("policy refused"), "{}", rules.log());
    console
        .get_firewall(pb::GetFirewallRequest {
            instance_id: "db-1".into(),
            ..Default::default()
        })
        .await
        .expect("certificates still work");
}

/// `[revoked] spiffe_ids`, applied on SIGHUP: the revoked enforcer's open
/// Sync stream ends (UNAUTHENTICATED, naming the identity) and it cannot
/// open another; other enforcers keep syncing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_enforcer_identity_is_cut_off_after_sighup() {
    let secured = Secured::new(&policy());
    let dir = tempfile::tempdir().unwrap();
    let addr = cassette_e2e::free_port();
    let rules = secured_binary(&secured, &dir.path().join("data"), addr, &[]).await;
    let mut console = rules.client().await;
    for instance in ["web-1", "web-2"] {
        cassette_e2e::create_firewall(&mut console, instance).await;
    }
    let enforcer = |instance: &'static str| {
        let tls = secured.enforcer(instance);
        let target = rules.target.clone();
        async move { cassette_e2e::channel_with(&target, Some(&tls)).await }
    };
    let mut web1 = open_on(enforcer("web-1").await, "web-1", 0)
        .await
        .expect("web-1's enforcer syncs");
    let mut web2 = open_on(enforcer("web-2").await, "web-2", 0)
        .await
        .expect("web-2's enforcer syncs");
    for stream in [&mut web1, &mut web2] {
        assert_eq!(stream.next(PATIENCE).await, Some(vec![1]));
    }

    let revoked = TrustDomain::default().enforcer_uri("web-1");
    secured.write_policy(&format!(
        "{}\n[revoked]\nspiffe_ids = [\"{revoked}\"]\n",
        policy()
    ));
    hangup(rules.pid());
    let ended = web1.status(PATIENCE).await;
    let Some(Err(status)) = ended else {
        panic!("the revoked enforcer's stream must end: {ended:?}");
    };
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains(&revoked), "{status:?}");
    let again = open_on(enforcer("web-1").await, "web-1", 1).await;
    let refused = match again {
        Err(status) => status,
        Ok(mut stream) => match stream.status(PATIENCE).await {
            Some(Err(status)) => status,
            other => panic!("a revoked enforcer reconnected: {other:?}"),
        },
    };
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    // The other enforcer is not affected: it gets the next change.
    console
        .add_rule(pb::AddRuleRequest {
            instance_id: "web-2".into(),
            port: 8080,
            ..Default::default()
        })
        .await
        .expect("a change for web-2");
    assert_eq!(web2.next(PATIENCE).await, Some(vec![2]));
}

/// Certificate rotation without a restart: the service's certificate, key
/// and client CA replaced on disk and SIGHUP; new connections get the new
/// certificate (a client trusting only the old CA is refused), the open
/// sync stream keeps going, and a certificate that ends within 14 days is
/// warned about and counted in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_after_sighup_while_open_streams_go_on() {
    let secured = Secured::new(&policy());
    let dir = tempfile::tempdir().unwrap();
    let addr = cassette_e2e::free_port();
    let metrics = cassette_e2e::free_port();
    let metrics_flag = metrics.to_string();
    let more = ["--metrics-listen", metrics_flag.as_str()];
    let rules = secured_binary(&secured, &dir.path().join("data"), addr, &more).await;
    let mut console = rules.client().await;
    cassette_e2e::create_firewall(&mut console, "web-1").await;
    let channel = cassette_e2e::channel_with(&rules.target, Some(&secured.enforcer("web-1"))).await;
    let mut stream = open_on(channel, "web-1", 0)
        .await
        .expect("web-1's enforcer syncs");
    assert_eq!(stream.next(PATIENCE).await, Some(vec![1]));
    let gauge = |name: &str| -> i64 {
        let text = cassette_e2e::scrape(metrics);
        let line = text.lines().find(|l| l.starts_with(name));
        line.and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    assert!(gauge("cassette_rules_tls_certificate_expiry_timestamp_seconds") > 0);
    assert_eq!(gauge("cassette_rules_tls_certificates_expiring"), 0);

    // A new CA and a server certificate from it that ends in 3 days; the
    // client CA file trusts both CAs, so the enforcers keep their identities.
    let renewed = tempfile::tempdir().unwrap();
    let new_ca = cassette_pki::Pki::init_for(
        renewed.path(),
        "cassette.local",
        &[],
        Duration::from_secs(3 * 86_400),
    )
    .unwrap();
    let copy = |from: std::path::PathBuf, to: std::path::PathBuf| std::fs::copy(from, to).unwrap();
    copy(new_ca.server_cert_path(), secured.pki.server_cert_path());
    copy(new_ca.server_key_path(), secured.pki.server_key_path());
    let both = [secured.pki.ca_cert_path(), new_ca.ca_cert_path()]
        .map(|p| std::fs::read_to_string(p).unwrap())
        .concat();
    let old_ca = std::fs::read(secured.pki.ca_cert_path()).unwrap();
    std::fs::write(secured.pki.ca_cert_path(), &both).unwrap();
    hangup(rules.pid());

    // New connections: a client trusting only the old CA is refused; one
    // trusting the new CA gets in, with its old-CA identity.
    let trusting = |ca: &[u8]| {
        ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(ca))
    };
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let old = rules.target.connect_with(Some(&trusting(&old_ca))).await;
        let refused = match old {
            Err(_) => true,
            Ok(channel) => FirewallServiceClient::new(channel)
                .get_firewall(pb::GetFirewallRequest {
                    instance_id: "web-1".into(),
                    ..Default::default()
                })
                .await
                .is_err_and(|s| s.code() == Code::Unavailable),
        };
        if refused {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old certificate is still served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let issued = secured
        .pki
        .issue(
            &TrustDomain::default().principal_uri("console"),
            "principal-console",
        )
        .unwrap();
    let new_tls = trusting(&std::fs::read(new_ca.ca_cert_path()).unwrap()).identity(
        tonic::transport::Identity::from_pem(issued.cert_pem, issued.key_pem),
    );
    let mut renewed_console =
        FirewallServiceClient::new(cassette_e2e::channel_with(&rules.target, Some(&new_tls)).await);
    renewed_console
        .add_rule(pb::AddRuleRequest {
            instance_id: "web-1".into(),
            port: 8080,
            ..Default::default()
        })
        .await
        .expect("the console's old identity over the new certificate");
    // The sync stream opened before the reload gets the change.
    assert_eq!(stream.next(PATIENCE).await, Some(vec![2]));
    let deadline = std::time::Instant::now() + PATIENCE;
    while gauge("cassette_rules_tls_certificates_expiring") != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the 3-day certificate is not counted: {}",
            cassette_e2e::scrape(metrics)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(rules.log().contains("ends soon"), "{}", rules.log());
}

/// The enforcer's side of rotation: a certificate that ends within 14 days
/// is warned about and published; a renewed one in place and SIGHUP moves
/// the metric, and the next connection (after the rules service restarts)
/// is made with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enforcer_reloads_its_certificate_on_sighup() {
    let secured = Secured::new(&policy());
    let dir = tempfile::tempdir().unwrap();
    let addr = cassette_e2e::free_port();
    let data = dir.path().join("data");
    let start = || secured_binary(&secured, &data, addr, &[]);
    let mut rules = start().await;
    let mut console = rules.client().await;
    cassette_e2e::create_firewall(&mut console, "web-1").await;
    let uri = TrustDomain::default().enforcer_uri("web-1");
    let day = Duration::from_secs(86_400);
    let issued = secured
        .pki
        .issue_for(&uri, "enforcer-web-1", 3 * day)
        .unwrap();
    let metrics = cassette_e2e::free_port();
    let log = dir.path().join("enforcer.log");
    let mut enforcer = std::process::Command::new(cassette_e2e::binary("cassette-enforcer"))
        .args(["--rules", &format!("https://{addr}"), "--instance", "web-1"])
        .args([
            "--backend",
            "file",
            "--metrics-listen",
            &metrics.to_string(),
        ])
        .arg("--ruleset-file")
        .arg(dir.path().join("ruleset.nft"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--tls-ca")
        .arg(secured.pki.ca_cert_path())
        .arg("--tls-cert")
        .arg(&issued.cert_path)
        .arg("--tls-key")
        .arg(&issued.key_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn cassette-enforcer");
    let in_sync = |console: &mut Client| {
        let mut console = console.clone();
        async move {
            let state = console
                .wait_for_sync(pb::WaitForSyncRequest {
                    instance_id: "web-1".into(),
                    revision: 0,
                    timeout: Some(PATIENCE.try_into().unwrap()),
                    ..Default::default()
                })
                .await
                .expect("WaitForSync")
                .into_inner()
                .state;
            assert_eq!(
                state,
                pb::SyncState::InSync as i32,
                "the enforcer is in sync"
            );
        }
    };
    in_sync(&mut console).await;
    // Its saved state is its own.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let state = dir.path().join("state");
        assert_eq!(mode(&state), 0o700, "--state-dir");
        for file in walk(&state) {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
        assert_eq!(mode(&dir.path().join("ruleset.nft")), 0o600);
    }
    let expiry = || -> u64 {
        let text = cassette_e2e::scrape(metrics);
        let line = text
            .lines()
            .find(|l| l.starts_with("cassette_enforcer_tls_certificate_expiry_timestamp_seconds"));
        line.and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no expiry in {text}"))
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let first = expiry();
    assert!(
        first > now && first <= now + 3 * 86_400 + 60,
        "{first} vs {now}"
    );
    assert!(std::fs::read_to_string(&log).unwrap().contains("ends soon"));

    // Renewed in place (90 days), and SIGHUP.
    secured
        .pki
        .issue_for(&uri, "enforcer-web-1", 90 * day)
        .unwrap();
    hangup(enforcer.id());
    let deadline = std::time::Instant::now() + PATIENCE;
    while expiry() < now + 80 * 86_400 {
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate was not read"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The next connection: the rules service restarts, the enforcer
    // reconnects with the renewed certificate and applies a change.
    assert!(rules.terminate().success());
    rules = start().await;
    let mut console = rules.client().await;
    console
        .add_rule(pb::AddRuleRequest {
            instance_id: "web-1".into(),
            port: 8080,
            ..Default::default()
        })
        .await
        .expect("a change after the restart");
    in_sync(&mut console).await;
    let _ = enforcer.kill();
    let _ = enforcer.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("reloaded"), "{text}");
}

/// SIGHUP to `pid`.
fn hangup(pid: u32) {
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success());
}

/// The real binary on `addr`, secured by `secured` (its flags, then
/// `more`), called by the harness as the admin principal `console`.
async fn secured_binary(
    secured: &Secured,
    data: &std::path::Path,
    addr: std::net::SocketAddr,
    more: &[&str],
) -> RulesProcess {
    let flags = secured.server_args();
    let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    extra.extend(more);
    RulesProcess::spawn_with_tls(
        data,
        &addr.to_string(),
        cassette_e2e::Target::Http(format!("https://{addr}")),
        &extra,
        Some(secured.principal("console")),
    )
    .await
}

/// Long-lived calls are checked again after each policy reload (SIGHUP): a
/// ListEvents follow stream whose principal left the policy ends with
/// PERMISSION_DENIED before any event committed after the reload reaches
/// it; one whose scope narrowed gets only what the new scope covers; a
/// WaitForSync whose token was removed ends UNAUTHENTICATED before its
/// timeout; the console's live view gets an `error` event and ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_answer_to_the_policy_reloaded_after_they_opened() {
    let secured = Secured::new(&policy());
    let dir = tempfile::tempdir().unwrap();
    let addr = cassette_e2e::free_port();
    let console_addr = cassette_e2e::free_port();
    let console_flag = console_addr.to_string();
    let more = ["--http-listen", console_flag.as_str()];
    let rules = secured_binary(&secured, &dir.path().join("data"), addr, &more).await;
    let mut admin = rules.client().await;
    for instance in ["web-1", "db-1"] {
        cassette_e2e::create_firewall(&mut admin, instance).await;
    }
    let follow = |tls: ClientTlsConfig, history: usize| {
        let target = rules.target.clone();
        async move {
            let channel = cassette_e2e::channel_with(&target, Some(&tls)).await;
            let mut stream = AuditServiceClient::new(channel)
                .list_events(pb::ListEventsRequest {
                    follow: true,
                    ..Default::default()
                })
                .await
                .expect("a follow stream")
                .into_inner();
            // The history so far: the firewalls it may see.
            for _ in 0..history {
                stream.message().await.unwrap().expect("an event");
            }
            stream
        }
    };
    let mut leaving = follow(secured.principal("web-auditor"), 1).await;
    let mut narrowed = follow(secured.principal("auditor"), 2).await;
    let bot = with_metadata(
        pb::WaitForSyncRequest {
            instance_id: "web-1".into(),
            revision: 0,
            timeout: Some(Duration::from_secs(60).try_into().unwrap()),
            ..Default::default()
        },
        &[("authorization", &format!("Bearer {OPS_TOKEN}"))],
    );
    let mut bot_client = FirewallServiceClient::new(
        cassette_e2e::channel_with(&rules.target, Some(&secured.no_identity())).await,
    );
    let waiting = tokio::spawn(async move { bot_client.wait_for_sync(bot).await });
    let mut live = std::process::Command::new("curl")
        .args(["-sN", "--max-time", "60", "--cacert"])
        .arg(secured.pki.ca_cert_path())
        .args(["-H", &format!("authorization: Bearer {OPS_TOKEN}")])
        .arg(format!(
            "https://127.0.0.1:{}/api/v1/firewalls/web-1/live",
            console_addr.port()
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run curl (scripts/test.sh installs it)");
    let live_out = live.stdout.take().unwrap();
    let (first_event, got_first_event) = std::sync::mpsc::channel();
    let live_lines = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(live_out)
            .lines()
            .map_while(Result::ok)
        {
            if line == "event: firewall" {
                let _ = first_event.send(());
            }
            lines.push(line);
        }
        lines
    });
    // The live view is open (its first event came) before the reload.
    tokio::task::block_in_place(|| got_first_event.recv_timeout(PATIENCE))
        .expect("the live view's first event");

    // The reload: web-auditor leaves, the auditor's scope narrows to web-*,
    // ops-bot's token goes.
    let reloaded: String = policy()
        .split("[[principal]]")
        .filter(|entry| !entry.contains("web-auditor") && !entry.contains("ops-bot"))
        .map(|entry| match entry.contains("name = \"auditor\"") {
            true => entry.replace("instances = [\"*\"]", "instances = [\"web-*\"]"),
            false => entry.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("[[principal]]");
    secured.write_policy(&reloaded);
    hangup(rules.pid());
    // Applied once a fresh call by web-auditor is refused.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let tls = secured.principal("web-auditor");
        let channel = cassette_e2e::channel_with(&rules.target, Some(&tls)).await;
        let listed = AuditServiceClient::new(channel)
            .list_events(pb::ListEventsRequest::default())
            .await;
        if listed.is_err() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the policy was not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Committed after the reload: db-1 then web-1.
    admin.add_rule(add_rule("db-1", 3306)).await.unwrap();
    admin.add_rule(add_rule("web-1", 8080)).await.unwrap();
    let ended = tokio::time::timeout(PATIENCE, leaving.message())
        .await
        .unwrap();
    let status = ended.expect_err("web-auditor's stream ends, no event");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let next = tokio::time::timeout(PATIENCE, narrowed.message())
        .await
        .unwrap()
        .unwrap()
        .expect("the auditor still follows");
    assert_eq!(
        next.instance_id, "web-1",
        "db-1 is outside the narrowed scope"
    );
    let waited = tokio::time::timeout(PATIENCE, waiting)
        .await
        .unwrap()
        .unwrap();
    let status = waited.expect_err("WaitForSync ends before its timeout");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let live_status = tokio::task::block_in_place(|| live.wait()).unwrap();
    let lines = live_lines.join().unwrap();
    assert!(lines.iter().any(|l| l == "event: error"), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("UNAUTHENTICATED")),
        "{lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| *l == "event: firewall").count(),
        1,
        "only the firewall before the reload: {lines:?}"
    );
    assert!(live_status.success(), "the live view ended, not timed out");
}

/// What the service creates is its own: the data directory 0700, the log's
/// files 0600, a unix socket 0600 (or `--unix-mode`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_the_log_and_the_socket_are_the_services_own() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let socket = dir.path().join("rules.sock");
    let rules = RulesProcess::start_unix(&data, &socket, &[]).await;
    let mut client = rules.client().await;
    cassette_e2e::create_firewall(&mut client, "web-1").await;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data directory");
    assert_eq!(mode(&socket), 0o600, "the socket");
    let mut files = 0;
    for entry in walk(&data) {
        let m = mode(&entry);
        let expected = if entry.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(m, expected, "{}: {m:o}", entry.display());
        files += 1;
    }
    assert!(files > 1, "the log's files were checked");
    drop(rules);
    let wider = dir.path().join("group.sock");
    let _rules =
        RulesProcess::start_unix(&dir.path().join("data-2"), &wider, &["--unix-mode", "0660"])
            .await;
    assert_eq!(mode(&wider), 0o660);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(walk(&path));
        }
        found.push(path);
    }
    found
}

/// A token with `expires`: it works until then, and a call it holds open
/// (WaitForSync here) ends UNAUTHENTICATED at that moment, not at its own
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_ends_the_calls_it_holds_open() {
    let at = std::time::SystemTime::now() + Duration::from_secs(4);
    let seconds = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let date = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{seconds}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("run date");
    let expires = String::from_utf8(date.stdout).unwrap().trim().to_owned();
    let policy = policy().replace(
        "name = \"ops-bot\"",
        &format!("name = \"ops-bot\"\nexpires = \"{expires}\""),
    );
    let secured = Secured::new(&policy);
    let dir = tempfile::tempdir().unwrap();
    let service = InProcess::start_secured(dir.path(), &secured).await;
    let admin = service.tls_channel(&secured.principal("console")).await;
    cassette_e2e::create_firewall(&mut FirewallServiceClient::new(admin), "web-1").await;
    let mut bot = FirewallServiceClient::new(service.tls_channel(&secured.no_identity()).await);
    let token = format!("Bearer {OPS_TOKEN}");
    let request = || {
        with_metadata(
            pb::WaitForSyncRequest {
                instance_id: "web-1".into(),
                revision: 0,
                timeout: Some(Duration::from_secs(60).try_into().unwrap()),
                ..Default::default()
            },
            &[("authorization", &token)],
        )
    };
    let started = std::time::Instant::now();
    let status = bot
        .wait_for_sync(request())
        .await
        .expect_err("no enforcer: it waits");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("expired"), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "ended at the expiry, not the timeout"
    );
    let again = bot.wait_for_sync(request()).await.expect_err("expired");
    assert_eq!(again.code(), Code::Unauthenticated);
}

/// Plaintext that would leave the machine is refused at start-up, naming the
/// way to say it is meant: the enforcer's stream to a --rules address beyond
/// loopback, and metrics served beyond loopback (both binaries).
#[test]
fn plaintext_beyond_loopback_is_refused_unless_meant() {
    let dir = tempfile::tempdir().unwrap();
    let exit = |binary: &str, args: &[&str]| {
        let output = std::process::Command::new(cassette_e2e::binary(binary))
            .args(args)
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let enforcer = |extra: &[&str]| {
        let mut args = vec!["--instance", "web-1", "--backend", "file", "--no-state"];
        args.extend(extra);
        exit("cassette-enforcer", &args)
    };
    // 192.0.2.0/24 is TEST-NET-1: never contacted, the refusal comes first.
    let (ok, text) = enforcer(&["--rules", "http://192.0.2.7:50051"]);
    assert!(
        !ok && text.contains("refusing plaintext to http://192.0.2.7:50051"),
        "{text}"
    );
    assert!(text.contains("--insecure-plaintext"), "{text}");
    let (ok, text) = enforcer(&["--metrics-listen", "0.0.0.0:0"]);
    assert!(
        !ok && text.contains("refusing to serve metrics in plaintext"),
        "{text}"
    );
    let (ok, text) = exit(
        "cassette-rules",
        &[
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
            "--metrics-listen",
            "0.0.0.0:0",
        ],
    );
    assert!(
        !ok && text.contains("refusing to serve metrics in plaintext"),
        "{text}"
    );
    // Where other replicas would follow this one: not in plaintext beyond
    // loopback either (refused at start, whatever the log).
    let (ok, text) = exit(
        "cassette-rules",
        &[
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
            "--data-dir",
            "data",
            "--replica-address",
            "http://192.0.2.7:50051",
        ],
    );
    assert!(
        !ok && text.contains("--replica-address http://192.0.2.7:50051")
            && text.contains("plaintext beyond loopback"),
        "{text}"
    );
}
