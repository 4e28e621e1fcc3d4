//! The enforcer's saved state: an instance that reboots while the control
//! plane is away keeps its firewall; a state file that cannot be trusted is
//! never applied; a restart with nothing new replays nothing; a state that
//! cannot be saved never stops an apply. Real nftables in namespaces (root),
//! except the restored-backup case, which runs in-process on any machine.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cassette_e2e::netns::{eventually, EnforcerProcess, Lab};
use cassette_e2e::{pb, RulesProcess};
use cassette_enforcement::StateFile;
use cassette_model::InstanceId;
use cassette_ruleset::TableName;
use tokio::task::block_in_place;

use crate::kernel::{skip_unless_root, Fixture, INSTANCE, TCP};

/// Where each test's enforcer serves its metrics, inside the instance's own
/// network namespace (so no two tests collide).
const METRICS: &str = "127.0.0.1:9100";

impl Fixture {
    fn enforcer_log_path(&self) -> PathBuf {
        self.dir.path().join("enforcer.log")
    }

    fn state_file(&self) -> StateFile {
        StateFile::new(
            EnforcerProcess::state_dir(&self.enforcer_log_path()),
            &TableName::default(),
        )
    }

    fn enforcer_log_since(&self, offset: usize) -> String {
        let log = std::fs::read_to_string(self.enforcer_log_path()).unwrap_or_default();
        log.get(offset..).unwrap_or_default().to_owned()
    }

    fn enforcer_log_len(&self) -> usize {
        std::fs::metadata(self.enforcer_log_path()).map_or(0, |m| m.len() as usize)
    }

    fn kill_enforcer(&mut self) {
        if let Some(mut enforcer) = self.enforcer.take() {
            enforcer.kill_9();
        }
    }

    /// The instance reboots: its kernel comes back without the table.
    fn empty_kernel(&self) {
        let deleted = block_in_place(|| self.lab.nft(&["delete", "table", "inet", "cassette"]));
        assert!(deleted.status.success(), "{deleted:?}");
    }

    async fn restart_rules(&mut self) {
        let data = self.dir.path().join("data");
        let socket = self.dir.path().join("rules.sock");
        let metrics = self.rules_metrics.to_string();
        self.rules =
            RulesProcess::start_unix(&data, &socket, &["--metrics-listen", &metrics]).await;
        self.client = self.rules.client().await;
    }

    /// One of the enforcer's counters, from its /metrics inside the namespace.
    fn enforcer_metric(&self, name: &str) -> f64 {
        let port = METRICS.rsplit(':').next().and_then(|p| p.parse().ok());
        let mut text = None;
        block_in_place(|| {
            eventually("the enforcer serves its metrics", || {
                text = port.and_then(|p| self.lab.instance_http_get(p, "/metrics"));
                text.is_some()
            })
        });
        let text = text.unwrap_or_default();
        cassette_e2e::metric_value(&text, name).unwrap_or_else(|| panic!("no {name} in {text}"))
    }

    /// Polls GetFirewall until `check` holds for its sync status.
    async fn sync_until(&mut self, what: &str, check: impl Fn(&pb::SyncStatus) -> bool) {
        let deadline = Instant::now() + cassette_e2e::PATIENCE;
        loop {
            let sync = self.firewall().await.sync.unwrap_or_default();
            if check(&sync) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {sync:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_a_reboot_without_the_control_plane_keeps_the_users_firewall() {
    if skip_unless_root("state_a_reboot_without_the_control_plane_keeps_the_users_firewall") {
        return;
    }
    let mut f = Fixture::start(&[]).await;
    f.set_enabled("default-ssh", false).await;
    let (_, revision) = f.add(5432, TCP).await;
    f.wait(revision).await;
    f.assert_tcp(&[5432], &[22]);

    // The rules service goes down, then the instance reboots: its enforcer
    // dies and its kernel comes back empty.
    f.rules.kill_9();
    f.kill_enforcer();
    f.empty_kernel();
    let offset = f.enforcer_log_len();
    let started = Instant::now();
    f.start_enforcer(&["--metrics-listen", METRICS]);
    block_in_place(|| {
        eventually("the saved firewall is back in the kernel", || {
            f.lab.set_elements("tcp_open") == [80, 443, 5432]
        })
    });
    eprintln!(
        "the saved state was in force {:?} after the enforcer started",
        started.elapsed()
    );
    f.assert_tcp(&[80, 443, 5432], &[22]);
    let log = f.enforcer_log_since(offset);
    assert!(log.contains("put the saved state in force"), "{log}");
    assert!(!log.contains("installed the default rules"), "{log}");
    assert_eq!(
        f.enforcer_metric("cassette_enforcer_state_restores_total"),
        1.0
    );

    // The control plane returns: the Hello vouches for the saved revision, so
    // nothing is replayed and the instance is in sync at once.
    f.restart_rules().await;
    let status = f.wait(revision).await;
    assert_eq!(
        (status.state, status.applied_revision),
        (pb::SyncState::InSync as i32, revision),
        "{status:?}"
    );
    assert_eq!(
        f.enforcer_metric("cassette_enforcer_events_received_total"),
        0.0
    );
    let (_, revision) = f.add(6379, TCP).await;
    f.wait(revision).await;
    f.assert_tcp(&[5432, 6379], &[22]);
}

/// `web-1`'s saved state rewritten for another instance, with a valid checksum.
fn state_of_another_instance(mine: &StateFile) -> Vec<u8> {
    let web1 = InstanceId::parse(INSTANCE).unwrap();
    let firewall = mine.load(&web1).unwrap().expect("a saved state").firewall;
    let mut wire = cassette_proto::firewall_to_pb(&firewall);
    wire.instance_id = "db-1".into();
    let theirs = cassette_proto::firewall_from_pb(&wire, false).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let mut other = StateFile::new(elsewhere.path(), &TableName::default());
    other.save(&theirs, &[], Vec::new()).unwrap();
    std::fs::read(other.path()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_a_corrupt_or_foreign_state_is_never_applied_and_is_reported() {
    if skip_unless_root("state_a_corrupt_or_foreign_state_is_never_applied_and_is_reported") {
        return;
    }
    let mut f = Fixture::start(&[]).await;
    // The first sync's save is a snapshot; each change after it a record of
    // the journal.
    let (_, revision) = f.add(5432, TCP).await;
    f.wait(revision).await;
    let (_, revision) = f.add(6379, TCP).await;
    f.wait(revision).await;
    let state = f.state_file();
    let web1 = InstanceId::parse(INSTANCE).unwrap();
    block_in_place(|| {
        eventually("the applied revision is saved", || {
            state
                .load(&web1)
                .ok()
                .flatten()
                .is_some_and(|saved| saved.firewall.revision == revision)
        })
    });
    let good = std::fs::read(state.path()).unwrap();
    let journal = std::fs::read(state.journal_path()).unwrap();
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x20;
    let foreign = state_of_another_instance(&state);
    // A byte of the first record's payload (after the 56-byte header and the
    // record's 48), a valid second record after it.
    let mut damaged = journal.clone();
    damaged[56 + 48 + 2] ^= 0x20;

    for (what, snapshot, journal, reported) in [
        (
            "a flipped byte",
            flipped,
            journal.clone(),
            "is corrupt: checksum mismatch",
        ),
        (
            "another instance's state",
            foreign,
            journal.clone(),
            "belongs to instance \"db-1\"",
        ),
        (
            "a damaged journal record",
            good.clone(),
            damaged,
            "is damaged, and a valid record follows it",
        ),
    ] {
        f.rules.kill_9();
        f.kill_enforcer();
        f.empty_kernel();
        std::fs::write(state.path(), &snapshot).unwrap();
        std::fs::write(state.journal_path(), &journal).unwrap();
        let offset = f.enforcer_log_len();
        f.start_enforcer(&["--metrics-listen", METRICS]);
        // Not applied: the empty kernel gets the defaults, never 5432.
        block_in_place(|| {
            eventually("the defaults on the empty kernel", || {
                f.lab.set_elements("tcp_open") == [22, 80, 443]
            })
        });
        f.assert_tcp(&[22], &[5432, 6379]);
        assert_eq!(
            f.enforcer_metric("cassette_enforcer_state_rejections_total"),
            1.0,
            "{what}"
        );
        assert_eq!(
            f.enforcer_metric("cassette_enforcer_state_restores_total"),
            0.0,
            "{what}"
        );
        let log = f.enforcer_log_since(offset);
        assert!(
            log.contains("not trusting the saved state"),
            "{what}: {log}"
        );
        assert!(log.contains(reported), "{what}: {log}");

        // The service comes back: a resync from revision 0, the problem shown.
        f.restart_rules().await;
        let status = f.wait(revision).await;
        assert_eq!(
            status.state,
            pb::SyncState::InSync as i32,
            "{what}: {status:?}"
        );
        assert!(
            status.enforcer_state_error.contains(reported),
            "{what}: {status:?}"
        );
        f.assert_tcp(&[22, 5432, 6379], &[]);
        block_in_place(|| {
            eventually("a good state is saved again", || {
                state
                    .load(&web1)
                    .ok()
                    .flatten()
                    .is_some_and(|saved| saved.firewall.revision == revision)
            })
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_an_enforcer_restart_with_nothing_new_replays_nothing_and_keeps_the_table() {
    if skip_unless_root(
        "state_an_enforcer_restart_with_nothing_new_replays_nothing_and_keeps_the_table",
    ) {
        return;
    }
    let mut f = Fixture::start(&[]).await;
    let (_, revision) = f.add(5432, TCP).await;
    f.wait(revision).await;

    f.kill_enforcer();
    f.sync_until("the old stream is gone", |s| !s.enforcer_connected)
        .await;
    f.start_enforcer(&["--metrics-listen", METRICS]);
    f.sync_until("the new enforcer is in sync without an ack", |s| {
        s.enforcer_connected
            && s.state == pb::SyncState::InSync as i32
            && s.applied_revision == revision
    })
    .await;
    assert_eq!(
        f.enforcer_metric("cassette_enforcer_events_received_total"),
        0.0
    );
    // A new process cannot vouch for a table it did not build (a rule may
    // have been added to its chain): it replaces it once, in one transaction.
    let replaced = f.enforcer_metric("cassette_enforcer_table_replacements_total");
    assert!(replaced <= 1.0, "{replaced} replacements");
    assert_eq!(
        f.enforcer_metric("cassette_enforcer_state_restores_total"),
        1.0
    );
    f.assert_tcp(&[22, 5432], &[6379]);

    // It follows new changes as before, with element changes.
    let (_, revision) = f.add(6379, TCP).await;
    f.wait(revision).await;
    f.assert_tcp(&[5432, 6379], &[]);
    assert_eq!(
        f.enforcer_metric("cassette_enforcer_events_received_total"),
        1.0
    );
    assert_eq!(
        f.enforcer_metric("cassette_enforcer_table_replacements_total"),
        replaced,
        "an element change, not a replacement"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_a_read_only_state_dir_never_stops_an_apply() {
    if skip_unless_root("state_a_read_only_state_dir_never_stops_an_apply") {
        return;
    }
    let mut f = Fixture::start(&[]).await;
    f.kill_enforcer();
    // Root ignores permission bits: the directory is a read-only bind mount,
    // in a mount namespace of the enforcer's own (gone when it exits).
    let state_dir = f.dir.path().join("read-only-state");
    std::fs::create_dir(&state_dir).unwrap();
    let log = f.enforcer_log_path();
    let state_arg = state_dir.display().to_string();
    let mut extra = vec![
        "--state-dir",
        &state_arg,
        "--metrics-listen",
        METRICS,
        "--refresh-interval",
        "1s",
    ];
    extra.extend(f.enforcer_tls.iter().map(String::as_str));
    let mut command = Lab::command(&f.lab.instance_ns, Path::new("unshare"));
    command
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@""#)
        .arg(&state_dir)
        .arg(cassette_e2e::binary("cassette-enforcer"))
        .args(EnforcerProcess::args(
            &f.socket_target(),
            INSTANCE,
            &log,
            &extra,
        ));
    f.enforcer = Some(EnforcerProcess::spawn(command, log));

    let (_, revision) = f.add(5432, TCP).await;
    let status = f.wait(revision).await;
    assert_eq!(status.state, pb::SyncState::InSync as i32, "{status:?}");
    f.assert_tcp(&[5432], &[]);
    assert!(f.enforcer_metric("cassette_enforcer_state_save_failures_total") >= 1.0);
    assert_eq!(
        f.enforcer_metric("cassette_enforcer_state_saves_total"),
        0.0
    );
    let log = f.enforcer_log_since(0);
    assert!(log.contains("cannot save the applied state"), "{log}");
    assert!(log.contains("Read-only file system"), "{log}");
    assert_eq!(
        std::fs::read_dir(&state_dir).unwrap().count(),
        0,
        "nothing was written"
    );
    let (_, revision) = f.add(6379, TCP).await;
    f.wait(revision).await;
    f.assert_tcp(&[5432, 6379], &[]);
    assert!(
        f.enforcer.as_mut().is_some_and(EnforcerProcess::is_running),
        "the enforcer keeps running"
    );
}

/// Waits (2 s at most) until the state file holds `revision`.
async fn until_saved(state: &StateFile, instance: &InstanceId, revision: u64) {
    for _ in 0..100 {
        let saved = state
            .load(instance)
            .ok()
            .flatten()
            .map(|s| s.firewall.revision);
        if saved == Some(revision) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_ahead_of_a_restored_log_gives_way_to_the_log() {
    use cassette_enforcement::{Config, Enforcer, MemoryKernel};
    let dir = tempfile::tempdir().unwrap();
    let (data, backup) = (dir.path().join("data"), dir.path().join("backup"));
    let state_dir = dir.path().join("enforcer-state");
    let config = |service: &cassette_e2e::InProcess| Config {
        rules: vec![cassette_e2e::tcp_target(service.addr)],
        keepalive: Default::default(),
        tls: Default::default(),
        instance: InstanceId::parse(INSTANCE).unwrap(),
        enforcer_id: "state".into(),
        table: TableName::default(),
        refresh_interval: Duration::from_secs(3600),
        report_interval: Duration::from_secs(3600),
        state_dir: Some(state_dir.clone()),
    };
    let toggle = |client: &mut cassette_e2e::Client, rule: &'static str, enabled: bool| {
        let mut client = client.clone();
        async move { cassette_e2e::set_enabled(&mut client, INSTANCE, rule, enabled).await }
    };
    let in_sync = |client: &mut cassette_e2e::Client, revision: u64| {
        let mut client = client.clone();
        async move {
            client
                .wait_for_sync(pb::WaitForSyncRequest {
                    instance_id: INSTANCE.into(),
                    revision,
                    timeout: Some(Duration::from_secs(30).try_into().unwrap()),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
        }
    };

    // A backup of the log at revision 2 (SSH closed); the live log goes on to
    // revision 3 (HTTP closed too), which the enforcer applies and saves.
    let service = cassette_e2e::InProcess::start(&data).await;
    let mut client = service.client().await;
    cassette_e2e::create_firewall(&mut client, INSTANCE).await;
    toggle(&mut client, "default-ssh", false).await;
    service.stop().await;
    copy_dir(&data, &backup);
    let service = cassette_e2e::InProcess::start(&data).await;
    let mut client = service.client().await;
    let revision = toggle(&mut client, "default-http", false).await;
    assert_eq!(revision, 3);
    let kernel = MemoryKernel::default();
    let enforcer = Enforcer::new(config(&service), kernel.clone());
    let task = tokio::spawn(enforcer.run(std::future::pending()));
    assert_eq!(in_sync(&mut client, 3).await.applied_revision, 3);
    let state = StateFile::new(&state_dir, &TableName::default());
    let web1 = InstanceId::parse(INSTANCE).unwrap();
    until_saved(&state, &web1, 3).await;
    task.abort();
    let _ = task.await;
    service.stop().await;

    // The service comes back from the backup; the instance reboots.
    let service = cassette_e2e::InProcess::start(&backup).await;
    let mut client = service.client().await;
    let kernel = MemoryKernel::default();
    let enforcer = Enforcer::new(config(&service), kernel.clone());
    let metrics = enforcer.metrics();
    let task = tokio::spawn(enforcer.run(std::future::pending()));
    let status = in_sync(&mut client, 2).await;
    assert_eq!(
        (status.state, status.applied_revision),
        (pb::SyncState::InSync as i32, 2),
        "{status:?}"
    );
    let open = kernel.current().expect("a table");
    assert_eq!(
        open.ports(cassette_model::Protocol::Tcp)
            .iter()
            .map(|p| p.first().get())
            .collect::<Vec<_>>(),
        [80, 443],
        "the log's revision 2 (HTTP open again), not the saved revision 3"
    );
    assert_eq!(
        metrics.state_restores.get(),
        1,
        "revision 3 was restored first"
    );
    assert_eq!(metrics.history_resends.get(), 1, "then the log won");
    until_saved(&state, &web1, 2).await;
    assert_eq!(
        state.load(&web1).unwrap().map(|s| s.firewall.revision),
        Some(2)
    );
    task.abort();
    service.stop().await;
}
