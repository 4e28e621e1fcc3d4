//! Signed history, with the real binary: the service signs the head of each
//! append; a record written into its store by someone who can write the
//! store but has no signing key (linked correctly, indexed, with a new head)
//! is refused by a running replica and by one started after. They serve the
//! verified history, refuse changes naming the record and the way out, say
//! NOT_SERVING, and VerifyLog and the offline audit name it; the operator
//! removes it with `cassette-rules log remove-after` and the service resumes.

use std::path::Path;
use std::time::SystemTime;

use cassette_e2e::etcd::{self, EtcdCluster};
use cassette_e2e::{free_port, pb, tcp_target, wait_health, Client, RulesProcess, Target};
use cassette_eventlog::etcd::{EtcdConfig, EtcdLog};
use cassette_eventlog::SigningKey;
use cassette_model::{
    ActorId, Description, Event, EventPayload, InstanceId, Port, Protocol, RuleId, RuleSpec,
    Sources,
};
use cassette_pki::Pki;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::audit::run_to_exit;

type AuditClient = pb::audit_service_client::AuditServiceClient<tonic::transport::Channel>;

/// A development PKI: its log signing key and trusted keys are the flags.
fn keys(dir: &Path) -> (Pki, Vec<String>) {
    let pki = Pki::init(&dir.join("pki"), "cassette.local", &[]).unwrap();
    let flags = signing_flags(&pki.log_signing_key_path(), &pki.log_trusted_keys_path());
    (pki, flags)
}

fn signing_flags(key: &Path, trusted: &Path) -> Vec<String> {
    vec![
        "--log-signing-key".into(),
        key.display().to_string(),
        "--log-trusted-keys".into(),
        trusted.display().to_string(),
    ]
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// What an attacker with write access to the store appends: port 3306 open
/// to anywhere on `instance`, by "admin".
fn forged(sequence: u64, instance: &str, revision: u64) -> Event {
    Event {
        sequence,
        instance_id: InstanceId::parse(instance).unwrap(),
        revision,
        event_id: uuid::Uuid::now_v7(),
        commit_time: SystemTime::now(),
        actor: ActorId::parse("admin").unwrap(),
        on_behalf_of: None,
        request_id: None,
        request_digest: None,
        unconfirmed: None,
        payload: EventPayload::RuleAdded(RuleSpec {
            id: RuleId::from_uuid(uuid::Uuid::now_v7()),
            ports: Port::new(3306).unwrap().into(),
            protocol: Protocol::Tcp,
            description: Description::parse("").unwrap(),
            enabled: true,
            is_default: false,
            expire_time: None,
            sources: Sources::anywhere(),
        }),
    }
}

fn add(port: u32) -> pb::AddRuleRequest {
    pb::AddRuleRequest {
        instance_id: "web-1".into(),
        port,
        protocol: pb::Protocol::Tcp.into(),
        enabled: Some(true),
        ..Default::default()
    }
}

/// AddRule `port` on web-1; the revision it made.
async fn added(client: &mut Client, port: u32) -> u64 {
    let answer = client.add_rule(add(port)).await;
    answer.expect("AddRule").into_inner().revision
}

async fn audit(target: &Target) -> AuditClient {
    AuditClient::new(cassette_e2e::channel(target).await)
}

/// A replica that met the forged record `bad`: it serves the history before
/// it (web-1 at `revision`, no 3306), refuses changes by name, and
/// VerifyLog names the record and the signed head before it.
async fn assert_halted_at(replica: &RulesProcess, bad: u64, revision: u64, key_id: &str) {
    let mut client: Client = replica.client().await;
    let firewall = cassette_e2e::get_firewall(&mut client, "web-1").await;
    assert_eq!(
        firewall.revision, revision,
        "the verified history is served"
    );
    assert!(
        firewall.rules.iter().all(|r| r.port != 3306),
        "the forged rule is not served: {:?}",
        firewall.rules
    );
    let refused = client.add_rule(add(8080)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    for words in [
        format!("record {bad}"),
        format!("cassette-rules log remove-after {}", bad - 1),
        "signature:".to_owned(),
    ] {
        assert!(
            refused.message().contains(&words),
            "{words:?} in {refused:?}"
        );
    }
    // Health says so for the API by name, not only overall.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        cassette_e2e::channel(&replica.target).await,
    );
    let api = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "cassette.firewall.v1.FirewallService".into(),
        })
        .await
        .expect("health of FirewallService")
        .into_inner();
    assert_eq!(api.status, ServingStatus::NotServing as i32, "{api:?}");
    let verified = verify_log(&replica.target).await;
    let mut audit = audit(&replica.target).await;
    assert!(!verified.ok);
    assert_eq!(verified.first_bad_sequence, bad, "{verified:?}");
    assert!(verified.reason.starts_with("signature:"), "{verified:?}");
    let signed = verified.signed_head.expect("the last signed head verified");
    assert_eq!((signed.sequence, signed.key_id.as_str()), (bad - 1, key_id));
    assert_eq!(hex(&signed.hash), verified.head_hash);
    // The audit stream ends before the forged record.
    let mut events = audit
        .list_events(pb::ListEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut last = 0;
    while let Some(event) = events.message().await.unwrap() {
        last = event.sequence;
    }
    assert_eq!(last, bad - 1, "ListEvents serves only verified records");
}

async fn verify_log(target: &Target) -> pb::VerifyLogResponse {
    let mut audit = audit(target).await;
    audit
        .verify_log(pb::VerifyLogRequest {})
        .await
        .expect("VerifyLog")
        .into_inner()
}

/// A replica on a port of its own, once its health says `want`.
async fn replica(data: &Path, flags: &[&str], want: ServingStatus) -> RulesProcess {
    let addr = free_port();
    let (listen, target) = (addr.to_string(), tcp_target(addr));
    match want {
        ServingStatus::NotServing => RulesProcess::spawn_halted(data, &listen, target, flags).await,
        _ => RulesProcess::spawn(data, &listen, target, flags).await,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn key_id(pki: &Pki) -> String {
    SigningKey::load(&pki.log_signing_key_path())
        .unwrap()
        .key_id()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_a_record_forged_into_a_stopped_sled_log_is_served_around_named_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (pki, flags) = keys(dir.path());
    let flags = strs(&flags);
    let addr = free_port();
    let mut rules = RulesProcess::spawn(&data, &addr.to_string(), tcp_target(addr), &flags).await;
    let mut client = rules.client().await;
    cassette_e2e::create_firewall(&mut client, "web-1").await;
    let revision = added(&mut client, 5432).await;
    assert!(rules.terminate().success());

    // Written into the stopped service's store: correctly linked, indexed,
    // with a new head anchor; no signature (the attacker has no key).
    // One instance: its revisions are the log's sequences. (The store is
    // opened once in this process: sled lets its lock go only a moment
    // after a handle is dropped.)
    let bad = revision + 1;
    cassette_eventlog::tamper::append_forged(&data, &forged(bad, "web-1", revision + 1), None)
        .unwrap();

    // The offline audit: a signed log needs the trusted keys, and with them
    // names the record.
    let (ok, text) = tokio::task::block_in_place(|| run_to_exit(&["audit", "verify"], &data));
    assert!(
        !ok && text.contains("holds a signed log: give --trusted-keys"),
        "{text}"
    );
    let trusted = pki.log_trusted_keys_path().display().to_string();
    let (ok, text) = tokio::task::block_in_place(|| {
        run_to_exit(&["audit", "verify", "--trusted-keys", &trusted], &data)
    });
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("FAILED at record {bad}: signature:")),
        "{text}"
    );
    let (ok, text) = tokio::task::block_in_place(|| {
        run_to_exit(&["audit", "events", "--trusted-keys", &trusted], &data)
    });
    assert!(ok, "{text}");
    assert!(
        !text.contains("3306"),
        "the offline audit shows no forged event: {text}"
    );
    assert!(text.contains("only the"), "and says why it stops: {text}");

    // A service started after serves what it verified, read-only, and
    // counts what it met.
    let metrics = free_port();
    let metrics_listen = metrics.to_string();
    let mut halted_flags = flags.clone();
    halted_flags.extend(["--metrics-listen", metrics_listen.as_str()]);
    let rules =
        RulesProcess::spawn_halted(&data, &addr.to_string(), tcp_target(addr), &halted_flags).await;
    assert_halted_at(&rules, bad, revision, &key_id(&pki)).await;
    let scraped = tokio::task::block_in_place(|| cassette_e2e::scrape(metrics));
    assert!(
        scraped.contains("cassette_rules_log_verification_failures_total 1"),
        "{scraped}"
    );
    drop(rules);

    // The way out: remove what follows the last good record.
    let mut remove = vec!["log", "remove-after"];
    let before = (bad - 1).to_string();
    remove.push(&before);
    remove.extend(&flags);
    let (ok, text) = tokio::task::block_in_place(|| run_to_exit(&remove, &data));
    assert!(!ok, "without --yes nothing is removed: {text}");
    assert!(
        text.contains(&format!("would remove records {bad} to {bad}")),
        "{text}"
    );
    remove.push("--yes");
    let (ok, text) = tokio::task::block_in_place(|| run_to_exit(&remove, &data));
    assert!(ok, "{text}");
    assert!(text.contains("removed 1 records"), "{text}");

    let rules = RulesProcess::spawn(&data, &addr.to_string(), tcp_target(addr), &flags).await;
    let mut client = rules.client().await;
    let added = client.add_rule(add(3306)).await.expect("writes resume");
    assert_eq!(added.into_inner().revision, revision + 1);
    let verified = verify_log(&rules.target).await;
    assert!(verified.ok, "{verified:?}");
    assert_eq!(verified.signed_head.map(|h| h.sequence), Some(bad));
}

/// Key rotation across restarts: the new key trusted beside the old one,
/// then signing; then the old one removed: the newest signature vouches for
/// the history before it, whichever key signed that. A key revoked vouches
/// for nothing it signed after the last trusted signature. Secured mode
/// does not start without the keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_a_rotated_key_takes_over_and_a_revoked_one_vouches_for_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (pki, flags) = keys(dir.path());
    let addr = free_port();
    let rules =
        RulesProcess::spawn(&data, &addr.to_string(), tcp_target(addr), &strs(&flags)).await;
    let mut client = rules.client().await;
    let created = cassette_e2e::create_firewall(&mut client, "web-1").await;
    drop(rules);

    // A new key: trusted beside the old one, and signing.
    let new_key = dir.path().join("new.key");
    std::fs::write(&new_key, SigningKey::generate_pem().unwrap()).unwrap();
    let new = SigningKey::load(&new_key).unwrap();
    let both = dir.path().join("both.pem");
    let old_public = std::fs::read_to_string(pki.log_trusted_keys_path()).unwrap();
    std::fs::write(&both, new.public_key_pem() + &old_public).unwrap();
    let rotated = signing_flags(&new_key, &both);
    let rules =
        RulesProcess::spawn(&data, &addr.to_string(), tcp_target(addr), &strs(&rotated)).await;
    let mut client = rules.client().await;
    let revision = added(&mut client, 5432).await;
    drop(rules);

    // The old key removed: the history verifies through the new key's head.
    let only_new = dir.path().join("new.pem");
    std::fs::write(&only_new, new.public_key_pem()).unwrap();
    let flags = signing_flags(&new_key, &only_new);
    let rules =
        RulesProcess::spawn(&data, &addr.to_string(), tcp_target(addr), &strs(&flags)).await;
    let verified = verify_log(&rules.target).await;
    assert!(verified.ok, "{verified:?}");
    assert_eq!(verified.events_checked, revision);
    assert_eq!(
        verified.signed_head.map(|h| h.key_id),
        Some(new.key_id().to_owned())
    );
    drop(rules);

    // The new key revoked (back to the old one alone): what it signed is refused.
    let old = signing_flags(&pki.log_signing_key_path(), &pki.log_trusted_keys_path());
    let rules =
        RulesProcess::spawn_halted(&data, &addr.to_string(), tcp_target(addr), &strs(&old)).await;
    let verified = verify_log(&rules.target).await;
    assert_eq!(
        verified.first_bad_sequence,
        created.revision + 1,
        "{verified:?}"
    );
    assert!(
        verified.reason.contains("not a trusted key"),
        "{verified:?}"
    );
    let mut client = rules.client().await;
    assert_eq!(
        cassette_e2e::get_firewall(&mut client, "web-1")
            .await
            .revision,
        created.revision
    );
    drop(rules);

    // Secured mode signs: without the keys it does not start.
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &pki.server_cert_path().display().to_string(),
        "--tls-key",
        &pki.server_key_path().display().to_string(),
        "--policy",
        &dir.path().join("policy.toml").display().to_string(),
    ]
    .map(str::to_owned);
    std::fs::write(dir.path().join("policy.toml"), "").unwrap();
    let (ok, text) = tokio::task::block_in_place(|| run_to_exit(&strs(&args), &data));
    assert!(!ok);
    assert!(
        text.contains("--log-signing-key and --log-trusted-keys"),
        "{text}"
    );
}

/// On etcd: the record put straight into etcd (record, index entry and head
/// in one transaction) halts the replica that is running, and one started
/// after; removing it through etcd lets both resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_a_record_forged_into_etcd_halts_running_replicas_and_those_started_after() {
    if etcd::skip("signed_a_record_forged_into_etcd_halts_running_replicas_and_those_started_after")
    {
        return;
    }
    let cluster = EtcdCluster::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let (pki, signing) = keys(dir.path());
    let endpoints = cluster.endpoints().join(",");
    let mut flags = vec!["--store", "etcd", "--etcd-endpoints", &endpoints];
    flags.extend(strs(&signing));
    let running = replica(&dir.path().join("a"), &flags, ServingStatus::Serving).await;
    let other = replica(&dir.path().join("o"), &flags, ServingStatus::Serving).await;
    let mut client = running.client().await;
    let mut other_client = other.client().await;
    cassette_e2e::create_firewall(&mut client, "web-1").await;
    // Both replicas sign and each verifies the other's appends as it reads
    // them: writes through both, at once, leave both serving.
    let writes: Vec<_> = (0..20u32)
        .map(|i| {
            let mut client = if i % 2 == 0 {
                client.clone()
            } else {
                other_client.clone()
            };
            tokio::spawn(async move { client.add_rule(add(6000 + i)).await })
        })
        .collect();
    let mut revision = 0;
    for write in writes {
        let answer = write
            .await
            .unwrap()
            .expect("a signed write through either replica");
        revision = revision.max(answer.into_inner().revision);
    }
    for (replica, client) in [(&running, &mut client), (&other, &mut other_client)] {
        wait_health(&replica.target, None, ServingStatus::Serving).await;
        let deadline = std::time::Instant::now() + cassette_e2e::PATIENCE;
        while cassette_e2e::get_firewall(client, "web-1").await.revision < revision {
            assert!(
                std::time::Instant::now() < deadline,
                "{} never caught up",
                replica.listen
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    let store = EtcdLog::connect(&EtcdConfig::new(cluster.endpoints())).unwrap();
    let head = store.head().await.unwrap();
    let bad = head.sequence + 1;
    cassette_eventlog::etcd::tamper::append_forged(
        &store,
        &forged(bad, "web-1", revision + 1),
        head.hash,
        None,
    )
    .await
    .unwrap();
    // The running replicas read it through their head watch and stop there.
    for replica in [&running, &other] {
        wait_health(&replica.target, None, ServingStatus::NotServing).await;
        assert_halted_at(replica, bad, revision, &key_id(&pki)).await;
    }
    // One started after stops there too.
    let later = replica(&dir.path().join("b"), &flags, ServingStatus::NotServing).await;
    assert_halted_at(&later, bad, revision, &key_id(&pki)).await;
    drop((running, other, later));

    let before = (bad - 1).to_string();
    let mut remove = vec!["log", "remove-after", &before, "--yes"];
    remove.extend(&flags);
    let (ok, text) = tokio::task::block_in_place(|| run_to_exit(&remove, &dir.path().join("c")));
    assert!(ok && text.contains("removed 1 records"), "{text}");
    let rules = replica(&dir.path().join("a"), &flags, ServingStatus::Serving).await;
    let mut client = rules.client().await;
    let added = client.add_rule(add(3306)).await.expect("writes resume");
    assert_eq!(added.into_inner().revision, revision + 1);
}

/// Development mode without the two flags runs unsigned, says so at
/// start-up, and VerifyLog has no signed head to offer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_development_mode_without_keys_runs_unsigned_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rules = RulesProcess::start(&data).await;
    let mut client = rules.client().await;
    cassette_e2e::create_firewall(&mut client, "web-1").await;
    let said = std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();
    assert!(
        said.contains("the event log is not signed") && said.contains("WARN"),
        "{said}"
    );
    let verified = verify_log(&rules.target).await;
    assert!(verified.ok, "{verified:?}");
    assert!(verified.signed_head.is_none(), "{verified:?}");
}
