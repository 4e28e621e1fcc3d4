//! Changes that undo themselves unless confirmed (`confirm_within`):
//! validation, ConfirmChange, the ChangeReverted event by `system:revert`
//! exactly once across a kill -9, and SSH really opening again in the kernel
//! (real nftables in namespaces, root).

use std::time::{Duration, Instant, SystemTime};

use cassette_e2e::{pb, AuditClient, Client, RulesProcess, PATIENCE};
use tokio::task::block_in_place;
use tonic::Code;
use tonic_types::StatusExt;

use crate::kernel::{skip_unless_root, Fixture, INSTANCE};

const SSH: &str = "default-ssh";

/// Turns `rule` on or off, to be undone after `within` unless confirmed.
pub(crate) fn toggle_within(
    instance: &str,
    rule: &str,
    enabled: bool,
    within: Duration,
) -> pb::UpdateRuleRequest {
    pb::UpdateRuleRequest {
        instance_id: instance.into(),
        rule_id: rule.into(),
        enabled: Some(enabled),
        confirm_within: within.try_into().ok(),
        ..Default::default()
    }
}

/// The ChangeReverted events of `revision`'s change.
pub(crate) fn reverts_of(events: &[pb::Event], revision: u64) -> Vec<&pb::Event> {
    events
        .iter()
        .filter(|e| {
            matches!(&e.payload,
                Some(pb::event::Payload::ChangeReverted(r)) if r.revision == revision)
        })
        .collect()
}

/// Polls GetFirewall until the change `revision` is no longer unconfirmed.
async fn until_settled(client: &mut Client, instance: &str, revision: u64) -> pb::Firewall {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let firewall = cassette_e2e::get_firewall(client, instance).await;
        if firewall.unconfirmed.iter().all(|c| c.revision != revision) {
            return firewall;
        }
        assert!(
            Instant::now() < deadline,
            "revision {revision} was never reverted: {firewall:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn field_of(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn confirm_within_and_confirm_change_are_validated_and_change_nothing_when_refused() {
    let dir = tempfile::tempdir().unwrap();
    let service = cassette_e2e::InProcess::start(dir.path()).await;
    let mut client = service.client().await;
    let created = cassette_e2e::create_firewall(&mut client, "web-1").await;
    for (within, why) in [
        (Duration::ZERO, "zero"),
        (Duration::from_millis(999), "under a second"),
        (Duration::from_secs(24 * 3600 + 1), "over a day"),
    ] {
        let status = client
            .update_rule(toggle_within("web-1", SSH, false, within))
            .await
            .expect_err(why);
        assert_eq!(status.code(), Code::InvalidArgument, "{why}: {status:?}");
        assert_eq!(field_of(&status), ["confirm_within"], "{why}: {status:?}");
        assert!(status.message().contains("1s and 24h"), "{why}: {status:?}");
    }
    let status = client
        .delete_rule(pb::DeleteRuleRequest {
            instance_id: "web-1".into(),
            rule_id: "nope".into(),
            confirm_on_traffic: true,
            ..Default::default()
        })
        .await
        .expect_err("confirm_on_traffic alone");
    assert_eq!(field_of(&status), ["confirm_on_traffic"], "{status:?}");

    let confirm = |revision| pb::ConfirmChangeRequest {
        instance_id: "web-1".into(),
        revision,
        ..Default::default()
    };
    let status = client.confirm_change(confirm(0)).await.unwrap_err();
    assert_eq!(field_of(&status), ["revision"], "{status:?}");
    // A change made without a window is not unconfirmed.
    let status = client.confirm_change(confirm(1)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("not an unconfirmed change"),
        "{status:?}"
    );
    let status = client
        .confirm_change(pb::ConfirmChangeRequest {
            instance_id: "web-9".into(),
            ..confirm(1)
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let firewall = cassette_e2e::get_firewall(&mut client, "web-1").await;
    assert_eq!(firewall.revision, created.revision, "nothing appended");
    assert!(firewall.unconfirmed.is_empty());

    // A window listed on the firewall and on the rule; confirmed, it stays.
    let changed = client
        .update_rule(toggle_within(
            "web-1",
            SSH,
            false,
            Duration::from_secs(3600),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.unconfirmed.len(), 1, "{changed:?}");
    let change = &changed.unconfirmed[0];
    assert_eq!(change.revision, changed.revision);
    assert_eq!(change.rule_ids, [SSH]);
    assert_eq!(change.summary, "turned 22/tcp off");
    let ssh = changed.rules.iter().find(|r| r.id == SSH).unwrap();
    assert_eq!(ssh.unconfirmed_revision, changed.revision);
    assert_eq!(ssh.revert_time, change.revert_time);
    let confirmed = client
        .confirm_change(confirm(changed.revision))
        .await
        .unwrap()
        .into_inner();
    assert!(confirmed.unconfirmed.is_empty());
    assert!(
        !confirmed
            .rules
            .iter()
            .find(|r| r.id == SSH)
            .unwrap()
            .enabled
    );
    let status = client
        .confirm_change(confirm(changed.revision))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "confirmed twice");
    service.stop().await;
}

#[tokio::test]
async fn an_unconfirmed_change_is_reverted_once_even_when_the_service_is_killed_in_its_window() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut rules = RulesProcess::start(&data).await;
    let mut client = rules.client().await;
    cassette_e2e::create_firewall(&mut client, "web-1").await;
    let added = client
        .add_rule(pb::AddRuleRequest {
            instance_id: "web-1".into(),
            port: 5432,
            confirm_within: Duration::from_secs(2).try_into().ok(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(added.rules.iter().any(|r| r.port == 5432));
    rules.kill_9();
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let rules = RulesProcess::start(&data).await;
    let mut client = rules.client().await;
    let firewall = until_settled(&mut client, "web-1", added.revision).await;
    assert!(
        firewall.rules.iter().all(|r| r.port != 5432),
        "the added rule is removed: {firewall:?}"
    );
    let mut audit = AuditClient::new(cassette_e2e::channel(&rules.target).await);
    let history = cassette_e2e::instance_events(&mut audit, "web-1").await;
    let reverts = reverts_of(&history, added.revision);
    assert_eq!(reverts.len(), 1, "{history:?}");
    assert_eq!(reverts[0].actor, "system:revert");
    drop(rules);
    // Another restart reverts nothing twice.
    cassette_e2e::assert_restart_appends_nothing(&data, "web-1", history.len()).await;
}

/// The seed's lock-out: SSH turned off with a 3 s window and nobody
/// confirms: port 22 opens again by itself. Confirmed, it stays closed.
/// Prints the time from the revert time to port 22 in the kernel's set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_ssh_turned_off_with_a_window_opens_again_by_itself_unless_confirmed() {
    if skip_unless_root(
        "kernel_ssh_turned_off_with_a_window_opens_again_by_itself_unless_confirmed",
    ) {
        return;
    }
    let mut f = Fixture::start(&[]).await;
    let window = Duration::from_secs(3);
    let (off, revert_time) = ssh_off_within(&mut f, window).await;

    // The kernel's set gains 22 again once the revert is applied.
    let late = until_ssh_open(&f, revert_time, "22 never opened again").await;
    eprintln!("revert_time to 22 in the kernel's set: {late:?}");
    f.assert_tcp(&[22, 80], &[]);
    let firewall = f.firewall().await;
    assert!(firewall.unconfirmed.is_empty(), "{firewall:?}");
    assert!(firewall.rules.iter().find(|r| r.id == SSH).unwrap().enabled);
    let status = f.wait(firewall.revision).await;
    assert_eq!(status.state, pb::SyncState::InSync as i32, "{status:?}");
    let mut audit = AuditClient::new(cassette_e2e::channel(&f.rules.target).await);
    let history = cassette_e2e::instance_events(&mut audit, INSTANCE).await;
    let reverts = reverts_of(&history, off.revision);
    assert_eq!(reverts.len(), 1, "{history:?}");
    assert_eq!(reverts[0].actor, "system:revert");

    // Confirmed in time: it stays off past its revert time.
    let off = f
        .client
        .update_rule(toggle_within(INSTANCE, SSH, false, window))
        .await
        .unwrap()
        .into_inner();
    f.client
        .confirm_change(pb::ConfirmChangeRequest {
            instance_id: INSTANCE.into(),
            revision: off.revision,
            ..Default::default()
        })
        .await
        .expect("confirmed");
    tokio::time::sleep(window + Duration::from_secs(1)).await;
    f.assert_tcp(&[80], &[22]);
    let firewall = f.firewall().await;
    assert!(firewall.unconfirmed.is_empty());
    assert_eq!(
        firewall.revision,
        off.revision + 1,
        "only the confirmation was appended"
    );
}

/// Proof of access: a port opened with `confirm_on_traffic` stays
/// unconfirmed while nothing reaches it, and is confirmed by `system:traffic`
/// once a connection is accepted through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_a_change_confirmed_on_traffic_is_kept_once_a_connection_gets_through() {
    if skip_unless_root(
        "kernel_a_change_confirmed_on_traffic_is_kept_once_a_connection_gets_through",
    ) {
        return;
    }
    let mut f = Fixture::start(&["--report-interval", "200ms"]).await;
    let added = f
        .client
        .add_rule(pb::AddRuleRequest {
            instance_id: INSTANCE.into(),
            port: 5432,
            confirm_within: Duration::from_secs(120).try_into().ok(),
            confirm_on_traffic: true,
            ..Default::default()
        })
        .await
        .expect("add with a window")
        .into_inner();
    assert!(added.unconfirmed[0].confirm_on_traffic);
    f.wait(added.revision).await;
    // Several reports with no traffic through 5432 (SSH's probes do not count).
    f.assert_tcp(&[22], &[]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let firewall = f.firewall().await;
    assert_eq!(firewall.unconfirmed.len(), 1, "{firewall:?}");

    let deadline = Instant::now() + PATIENCE;
    let confirmed = loop {
        f.assert_tcp(&[5432], &[]);
        let firewall = f.firewall().await;
        if firewall.unconfirmed.is_empty() {
            break firewall;
        }
        assert!(Instant::now() < deadline, "never confirmed: {firewall:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(confirmed.rules.iter().any(|r| r.port == 5432));
    let mut audit = AuditClient::new(cassette_e2e::channel(&f.rules.target).await);
    let history = cassette_e2e::instance_events(&mut audit, INSTANCE).await;
    let confirmations: Vec<_> = history
        .iter()
        .filter(|e| {
            matches!(&e.payload,
            Some(pb::event::Payload::ChangeConfirmed(c)) if c.revision == added.revision)
        })
        .collect();
    assert_eq!(confirmations.len(), 1, "{history:?}");
    assert_eq!(confirmations[0].actor, "system:traffic");
}

/// The enforcer cut off from the rules service (frozen with SIGSTOP, so its
/// socket accepts and never answers) when SSH's revert time passes: the
/// enforcer opens 22 again itself. Once the service is back, its own revert
/// is the one event in the log, the enforcer applies it, and 22 stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_an_enforcer_cut_off_past_the_revert_time_reverts_locally_and_the_log_agrees() {
    if skip_unless_root(
        "kernel_an_enforcer_cut_off_past_the_revert_time_reverts_locally_and_the_log_agrees",
    ) {
        return;
    }
    let mut f = Fixture::start(&[
        "--keepalive-interval",
        "300ms",
        "--keepalive-timeout",
        "600ms",
    ])
    .await;
    let (off, revert_time) = ssh_off_within(&mut f, Duration::from_secs(4)).await;
    let rules = f.rules.pid().to_string();
    let signal = |signal: &str| {
        let status = std::process::Command::new("kill")
            .args([signal, &rules])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {rules}");
    };
    signal("-STOP");
    let resumed = scopeguard(|| signal("-CONT"));

    let late = until_ssh_open(&f, revert_time, "the enforcer never reverted by itself").await;
    eprintln!("revert_time to 22 in the kernel's set, the service frozen: {late:?}");
    f.assert_tcp(&[22, 80], &[]);
    let log = f.dir.path().join("enforcer.log");
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        said.contains("reverted it here"),
        "the enforcer says so: {said}"
    );
    // An enforcer restarted (kill -9) while the service is still out of
    // reach keeps the local revert: it is in its saved state.
    let restored_before = said.matches("saved state").count();
    f.enforcer.take().expect("enforcer").kill_9();
    f.start_enforcer(&[
        "--keepalive-interval",
        "300ms",
        "--keepalive-timeout",
        "600ms",
    ]);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        if said.matches("saved state").count() > restored_before {
            break;
        }
        assert!(Instant::now() < deadline, "the restarted enforcer: {said}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(block_in_place(|| f.lab.set_elements("tcp_open")).contains(&22));
    f.assert_tcp(&[22, 80], &[]);
    drop(resumed);

    let firewall = until_settled(&mut f.client, INSTANCE, off.revision).await;
    assert!(firewall.rules.iter().find(|r| r.id == SSH).unwrap().enabled);
    let status = f.wait(firewall.revision).await;
    assert_eq!(status.state, pb::SyncState::InSync as i32, "{status:?}");
    f.assert_tcp(&[22, 80], &[]);
    let mut audit = AuditClient::new(cassette_e2e::channel(&f.rules.target).await);
    let history = cassette_e2e::instance_events(&mut audit, INSTANCE).await;
    let reverts = reverts_of(&history, off.revision);
    assert_eq!(reverts.len(), 1, "{history:?}");
    assert_eq!(reverts[0].actor, "system:revert");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        if said.contains("the log has settled a change reverted here") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the enforcer never saw the log agree: {said}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Turns SSH off with a `window`, once the enforcer applied it and 22 is
/// closed: the answer and its revert time.
async fn ssh_off_within(f: &mut Fixture, window: Duration) -> (pb::Firewall, SystemTime) {
    let off = f
        .client
        .update_rule(toggle_within(INSTANCE, SSH, false, window))
        .await
        .expect("SSH off with a window")
        .into_inner();
    f.wait(off.revision).await;
    f.assert_tcp(&[80], &[22]);
    let revert_time = SystemTime::try_from(off.unconfirmed[0].revert_time.unwrap()).unwrap();
    (off, revert_time)
}

/// Waits until 22 is back in the kernel's set; how long after `revert_time`.
async fn until_ssh_open(f: &Fixture, revert_time: SystemTime, never: &str) -> Duration {
    let deadline = Instant::now() + PATIENCE;
    while !block_in_place(|| f.lab.set_elements("tcp_open")).contains(&22) {
        assert!(Instant::now() < deadline, "{never}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    SystemTime::now()
        .duration_since(revert_time)
        .unwrap_or_default()
}

/// Runs `f` when dropped (a test that fails half-way still resumes what it froze).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
