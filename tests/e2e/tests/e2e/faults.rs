//! Faults: durability on the disk (not the page cache), and what the service
//! does when its log cannot be written.

use std::process::Command;
use std::time::Duration;

use cassette_e2e::{binary, pb, RulesProcess};

/// How many sequential changes the fsync test makes.
const CHANGES: usize = 30;

/// The pid of `parent`'s first child (strace's tracee).
fn child_of(parent: u32) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

/// Sends `signal` to `pid`, if it is still there.
fn kill(signal: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sequentially_acknowledged_change_waited_for_its_own_fdatasync() {
    let strace_found = Command::new("strace").arg("-V").output().is_ok();
    assert!(
        strace_found,
        "strace is not installed: run scripts/test.sh, which installs it"
    );
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("fsync.trace");
    let addr = cassette_e2e::free_port();
    let mut strace = Command::new("strace");
    strace
        .args(["-f", "-qq", "-e", "trace=fdatasync,fsync", "-o"])
        .arg(&trace)
        .arg(binary("cassette-rules"));
    let mut rules = RulesProcess::spawn_command(
        strace,
        &dir.path().join("data"),
        &addr.to_string(),
        cassette_e2e::tcp_target(addr),
        &[],
        None,
    )
    .await;
    // If the test fails, strace dies with the harness; its tracee must too.
    let tracee = child_of(rules.pid()).expect("strace's tracee");
    struct Reap(u32);
    impl Drop for Reap {
        fn drop(&mut self) {
            kill("-9", self.0);
        }
    }
    let reap = Reap(tracee);

    let mut client = rules.client().await;
    cassette_e2e::create_firewall(&mut client, "web-1").await;
    for i in 0..CHANGES {
        client
            .add_rule(pb::AddRuleRequest {
                instance_id: "web-1".into(),
                port: 10_000 + i as u32,
                ..Default::default()
            })
            .await
            .expect("add rule");
    }
    // A graceful stop of the service ends strace and flushes its output.
    kill("-TERM", tracee);
    let status = rules.wait_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "cassette-rules under strace: {status:?}\n{}",
        rules.log()
    );
    drop(reap);

    let trace = std::fs::read_to_string(&trace).unwrap();
    let completed = |call: &str| {
        trace
            .lines()
            .filter(|l| l.contains(&format!("{call}(")) && l.trim_end().ends_with("= 0"))
            .count()
    };
    let (fdatasyncs, fsyncs) = (completed("fdatasync"), completed("fsync"));
    // CreateFirewall + CHANGES AddRule calls, each answered after its batch's
    // own fdatasync (sled alone would have issued only sync_file_range).
    assert!(
        fdatasyncs > CHANGES,
        "{fdatasyncs} completed fdatasync (and {fsyncs} fsync) for {} sequential changes:\n{trace}",
        CHANGES + 1
    );
}

/// A tmpfs of `size` mounted on `dir` (root only), unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "cassette-test",
            ])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(mounted.success(), "mount tmpfs on {}", dir.display());
        Self(dir.to_owned())
    }

    fn grow(&self, size: &str) {
        let grown = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(grown.success(), "remount {}", self.0.display());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_clearly_loses_nothing_acknowledged_and_recovers() {
    if !cassette_e2e::netns::is_root() {
        eprintln!("a_full_disk_fails_writes_clearly: skipped, needs root to mount a tmpfs");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The data directory is the small disk itself; the service's log
    // (`disk.log`, beside it) is not on it.
    let data = dir.path().join("disk");
    let disk = SmallDisk::mount(&data, "6m");
    let mut rules = RulesProcess::start(&data).await;

    // Four writers fill the disk with described rules until the service refuses.
    let description = "a description long enough to fill a small disk quickly ".repeat(4);
    let mut writers = Vec::new();
    for w in 0..4u32 {
        let mut client = rules.client().await;
        let description = description.clone();
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..40_000u32 {
                let instance = format!("fill-{w}-{}", i / 1000);
                if i % 1000 == 0 {
                    if let Err(status) = client
                        .create_firewall(pb::CreateFirewallRequest {
                            instance_id: instance.clone(),
                            request_id: String::new(),
                            ..Default::default()
                        })
                        .await
                    {
                        return (acknowledged, Some(status));
                    }
                }
                let port = 1000 + i % 1000;
                match client
                    .add_rule(pb::AddRuleRequest {
                        instance_id: instance.clone(),
                        port,
                        description: description.clone(),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(_) => acknowledged.push((instance, port)),
                    Err(status) => return (acknowledged, Some(status)),
                }
            }
            (acknowledged, None)
        }));
    }
    let mut acknowledged = Vec::new();
    let mut refusals = Vec::new();
    for writer in writers {
        let (done, refused) = writer.await.unwrap();
        acknowledged.extend(done);
        refusals.extend(refused);
    }
    assert!(
        !acknowledged.is_empty(),
        "nothing was written before the disk filled"
    );
    assert!(!refusals.is_empty(), "a 6 MiB disk never filled");
    let unavailable = refusals
        .iter()
        .find(|s| s.code() == tonic::Code::Unavailable && s.message().contains("request_id"))
        .unwrap_or_else(|| panic!("no clear UNAVAILABLE among {refusals:?}"));
    eprintln!(
        "disk full after {} acknowledged changes: {}",
        acknowledged.len(),
        unavailable.message()
    );
    // The service stops by itself, non-zero, for its supervisor to restart it.
    let status = rules.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "exited {status:?}");
    assert!(
        rules.log().contains("the event log failed"),
        "{}",
        rules.log()
    );

    // Space freed, service restarted: every acknowledged change is there.
    disk.grow("64m");
    let rules = RulesProcess::start(&data).await;
    let mut client = rules.client().await;
    let mut by_instance: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
    for (instance, port) in acknowledged {
        by_instance.entry(instance).or_default().push(port);
    }
    for (instance, ports) in by_instance {
        let firewall = client
            .get_firewall(pb::GetFirewallRequest {
                instance_id: instance.clone(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("{instance} lost: {s:?}"))
            .into_inner();
        let have: std::collections::BTreeSet<u32> = firewall.rules.iter().map(|r| r.port).collect();
        for port in ports {
            assert!(
                have.contains(&port),
                "{instance}: acknowledged port {port} lost"
            );
        }
    }
    client
        .add_rule(pb::AddRuleRequest {
            instance_id: "fill-0-0".into(),
            port: 1,
            ..Default::default()
        })
        .await
        .expect("writes again once there is space");
    drop(rules);
    drop(disk);
}

/// Drops every packet of the rules service's TCP port in the instance
/// namespace (a table of the test's own, never the root namespace's): a
/// silent partition, no RST.
fn partition(lab: &cassette_e2e::netns::Lab, port: u16) {
    let port = port.to_string();
    let client = cassette_e2e::netns::CLIENT_IP;
    for rule in [
        vec!["add", "table", "inet", "partition"],
        vec!["add chain inet partition out { type filter hook output priority -10 ; }"],
        vec![
            "add",
            "rule",
            "inet",
            "partition",
            "out",
            "ip",
            "daddr",
            client,
            "tcp",
            "dport",
            &port,
            "drop",
        ],
        vec!["add chain inet partition in { type filter hook input priority -10 ; }"],
        vec![
            "add",
            "rule",
            "inet",
            "partition",
            "in",
            "ip",
            "saddr",
            client,
            "tcp",
            "sport",
            &port,
            "drop",
        ],
    ] {
        let output = lab.nft(&rule);
        assert!(
            output.status.success(),
            "nft {rule:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn heal(lab: &cassette_e2e::netns::Lab) {
    let output = lab.nft(&["delete", "table", "inet", "partition"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_partition_is_noticed_in_seconds_and_a_change_made_during_it_lands_after() {
    use cassette_e2e::netns::{is_root, EnforcerProcess, Lab, CLIENT_IP};
    use std::time::Instant;
    use tokio::task::block_in_place;
    if !is_root() {
        eprintln!("a_silent_partition_is_noticed: skipped, needs root for namespaces and nftables");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut lab = block_in_place(Lab::new);
    block_in_place(|| lab.start_listeners());
    // The rules service in the client namespace: TCP on the veth for the
    // enforcer (plaintext inside the test's own namespaces), a Unix socket for us.
    let port = cassette_e2e::free_port().port();
    let socket = dir.path().join("rules.sock");
    let tcp = format!("{CLIENT_IP}:{port}");
    let rules = RulesProcess::spawn_command(
        Lab::command(&lab.client_ns, &binary("cassette-rules")),
        &dir.path().join("data"),
        &format!("unix:{}", socket.display()),
        cassette_e2e::Target::Unix(socket.clone()),
        &[
            "--http-listen",
            "off",
            "--listen",
            &tcp,
            "--insecure-plaintext",
            "--keepalive-interval",
            "1s",
            "--keepalive-timeout",
            "2s",
        ],
        None,
    )
    .await;
    let mut client = rules.client().await;
    cassette_e2e::create_firewall(&mut client, "web-1").await;
    let _enforcer = EnforcerProcess::start(
        &lab.instance_ns,
        &format!("http://{tcp}"),
        "web-1",
        dir.path().join("enforcer.log"),
        &[
            // Plaintext across the lab's own veth pair: this test's network.
            "--insecure-plaintext",
            "--refresh-interval",
            "1s",
            "--keepalive-interval",
            "1s",
            "--keepalive-timeout",
            "2s",
        ],
    );
    let wait = |revision: u64, seconds: u64| pb::WaitForSyncRequest {
        instance_id: "web-1".into(),
        revision,
        timeout: Some(Duration::from_secs(seconds).try_into().unwrap()),
        ..Default::default()
    };
    client.wait_for_sync(wait(0, 30)).await.expect("first sync");

    block_in_place(|| partition(&lab, port));
    let cut = Instant::now();
    // The service drops the dead stream: the instance shows no enforcer.
    let mut connected = true;
    while connected && cut.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let firewall = client
            .get_firewall(pb::GetFirewallRequest {
                instance_id: "web-1".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        connected = firewall.sync.is_some_and(|s| s.enforcer_connected);
    }
    assert!(
        !connected,
        "the service still reports the partitioned enforcer after 20 s"
    );
    eprintln!("partition noticed by the service after {:?}", cut.elapsed());
    // The enforcer notices too, and goes on trying.
    let enforcer_log = dir.path().join("enforcer.log");
    let noticed = |log: &std::path::Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("sync session ended")
    };
    while !noticed(&enforcer_log) && cut.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        noticed(&enforcer_log),
        "the enforcer did not notice the dead stream within 20 s"
    );
    eprintln!(
        "partition noticed by the enforcer within {:?}",
        cut.elapsed()
    );

    // A change during the partition, then the network heals.
    let revision = client
        .add_rule(pb::AddRuleRequest {
            instance_id: "web-1".into(),
            port: 5432,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert!(
        !block_in_place(|| lab.tcp_open(5432)),
        "not in force during the partition"
    );
    block_in_place(|| heal(&lab));
    let healed = Instant::now();
    let status = client
        .wait_for_sync(wait(revision, 15))
        .await
        .unwrap_or_else(|s| panic!("not in force within 15 s of the heal: {s:?}"))
        .into_inner();
    assert_eq!(status.state, pb::SyncState::InSync as i32, "{status:?}");
    eprintln!("change in force {:?} after the heal", healed.elapsed());
    assert!(
        block_in_place(|| lab.tcp_open(5432)),
        "5432 open after the heal"
    );
}

#[test]
fn a_unix_listen_path_that_is_not_a_socket_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("precious.txt");
    std::fs::write(&precious, "not a socket").unwrap();
    let output = Command::new(binary("cassette-rules"))
        .args(["--http-listen", "off", "--listen"])
        .arg(format!("unix:{}", precious.display()))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .expect("run cassette-rules");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "not a socket");
}

/// A pseudo-random number in `0..bound` (a fresh std hasher seed each call).
fn random(bound: u64) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now()) % bound.max(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kill_9s_at_random_moments_lose_nothing_acknowledged() {
    const CYCLES: u32 = 20;
    const WRITERS: u32 = 6;
    /// Adds per writer per cycle: 20 cycles stay under 1024 rules a firewall.
    const ADDS: u32 = 50;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut acked: Vec<(String, u32)> = Vec::new();
    for cycle in 0..CYCLES {
        let mut rules = RulesProcess::start(&data).await;
        let client = rules.client().await;
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let mut client = client.clone();
            writers.push(tokio::spawn(async move {
                let instance = format!("chaos-{w}");
                let mut done = Vec::new();
                if client
                    .create_firewall(pb::CreateFirewallRequest {
                        instance_id: instance.clone(),
                        request_id: String::new(),
                        ..Default::default()
                    })
                    .await
                    .is_err()
                {
                    return done;
                }
                for k in 0..ADDS {
                    let port = 1024 + cycle * ADDS + k;
                    let added = client
                        .add_rule(pb::AddRuleRequest {
                            instance_id: instance.clone(),
                            port,
                            ..Default::default()
                        })
                        .await;
                    match added {
                        Ok(_) => done.push((instance.clone(), port)),
                        Err(_) => break,
                    }
                }
                done
            }));
        }
        // A random moment while the writers are busy.
        tokio::time::sleep(Duration::from_millis(5 + random(150))).await;
        rules.kill_9();
        for writer in writers {
            acked.extend(writer.await.unwrap());
        }
    }
    assert!(
        acked.len() > 100 && acked.len() < (CYCLES * WRITERS * ADDS) as usize,
        "{} acknowledged adds: the kills must land mid-write",
        acked.len()
    );

    let rules = RulesProcess::start(&data).await;
    let mut client = rules.client().await;
    let mut ports: std::collections::BTreeMap<String, std::collections::BTreeSet<u32>> =
        Default::default();
    for w in 0..WRITERS {
        let instance = format!("chaos-{w}");
        let firewall = client
            .get_firewall(pb::GetFirewallRequest {
                instance_id: instance.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        ports.insert(instance, firewall.rules.iter().map(|r| r.port).collect());
    }
    for (instance, port) in &acked {
        assert!(
            ports[instance].contains(port),
            "{instance}: acknowledged port {port} lost"
        );
    }
    // Gapless sequences and revisions, and the hash chain intact.
    let verified = pb::audit_service_client::AuditServiceClient::new(
        cassette_e2e::channel(&rules.target).await,
    )
    .verify_log(pb::VerifyLogRequest {})
    .await
    .unwrap()
    .into_inner();
    assert!(verified.ok, "{verified:?}");
    eprintln!(
        "{CYCLES} kill -9 cycles: {} acknowledged adds, all present; log verified ({} events)",
        acked.len(),
        verified.events_checked
    );
}

/// An in-process enforcer of `instance` following `rules`: development mode,
/// no state kept, refreshes and reports an hour apart (a test sets what it
/// needs over these).
fn enforcer_config(
    rules: Vec<cassette_e2e::Target>,
    instance: &str,
    enforcer_id: &str,
) -> cassette_enforcement::Config {
    cassette_enforcement::Config {
        rules,
        keepalive: Default::default(),
        tls: Default::default(),
        instance: cassette_model::InstanceId::parse(instance).unwrap(),
        enforcer_id: enforcer_id.to_owned(),
        table: Default::default(),
        refresh_interval: Duration::from_secs(3600),
        report_interval: Duration::from_secs(3600),
        state_dir: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_enforcers_resume_after_a_rules_restart_without_reapplying_from_scratch() {
    use cassette_enforcement::{Config, Enforcer, MemoryKernel};
    const ENFORCERS: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = cassette_e2e::free_port();
    let target = cassette_e2e::tcp_target(addr);
    let fast = ["--keepalive-interval", "1s", "--keepalive-timeout", "2s"];
    let mut rules = RulesProcess::spawn(&data, &addr.to_string(), target.clone(), &fast).await;
    let mut client = rules.client().await;
    let mut metrics = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..ENFORCERS {
        let instance = format!("sim-{i}");
        cassette_e2e::create_firewall(&mut client, &instance).await;
        let config = Config {
            keepalive: cassette_proto::Keepalive {
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(2),
            },
            ..enforcer_config(vec![target.clone()], &instance, &instance)
        };
        let enforcer = Enforcer::new(config, MemoryKernel::default());
        metrics.push(enforcer.metrics());
        tasks.push(tokio::spawn(enforcer.run(std::future::pending())));
    }
    let in_sync = |client: &mut cassette_e2e::Client, instance: String| {
        let mut client = client.clone();
        async move {
            client
                .wait_for_sync(pb::WaitForSyncRequest {
                    instance_id: instance,
                    revision: 0,
                    timeout: Some(Duration::from_secs(30).try_into().unwrap()),
                    ..Default::default()
                })
                .await
                .map(|s| s.into_inner().state)
        }
    };
    for i in 0..ENFORCERS {
        let state = in_sync(&mut client, format!("sim-{i}")).await.unwrap();
        assert_eq!(state, pb::SyncState::InSync as i32, "sim-{i} first sync");
    }

    // The rules service restarts (kill -9) on the same address and data.
    rules.kill_9();
    let rules = RulesProcess::spawn(&data, &addr.to_string(), target.clone(), &fast).await;
    let mut client = rules.client().await;
    for i in 0..ENFORCERS {
        client
            .update_rule(pb::UpdateRuleRequest {
                instance_id: format!("sim-{i}"),
                rule_id: "default-ssh".into(),
                enabled: Some(false),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    for i in 0..ENFORCERS {
        let state = in_sync(&mut client, format!("sim-{i}")).await.unwrap();
        assert_eq!(state, pb::SyncState::InSync as i32, "sim-{i} resumed");
    }
    for (i, m) in metrics.iter().enumerate() {
        assert!(m.reconnects.get() >= 1, "sim-{i} reconnected");
        assert_eq!(
            m.table_replacements.get(),
            0,
            "sim-{i} re-applied from scratch instead of resuming with element changes"
        );
    }
    for task in tasks {
        task.abort();
    }
}

#[test]
fn the_offline_audit_never_creates_a_log_where_there_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-log-here");
    let output = Command::new(binary("cassette-rules"))
        .args(["audit", "--data-dir"])
        .arg(&missing)
        .arg("verify")
        .output()
        .expect("run cassette-rules audit");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("holds no event log"), "{stderr}");
    assert!(
        !missing.exists(),
        "the audit wrote to {}",
        missing.display()
    );
}

#[tokio::test]
async fn a_stopping_service_ends_waiters_and_follow_streams_with_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let service = cassette_e2e::InProcess::start(dir.path()).await;
    let mut client = service.client().await;
    cassette_e2e::create_firewall(&mut client, "web-1").await;
    let waiter = {
        let mut client = client.clone();
        tokio::spawn(async move {
            client
                .wait_for_sync(pb::WaitForSyncRequest {
                    instance_id: "web-1".into(),
                    revision: 0,
                    timeout: Some(Duration::from_secs(300).try_into().unwrap()),
                    ..Default::default()
                })
                .await
        })
    };
    let channel = cassette_e2e::channel(&cassette_e2e::tcp_target(service.addr)).await;
    let mut follow = pb::audit_service_client::AuditServiceClient::new(channel)
        .list_events(pb::ListEventsRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(follow.message().await.unwrap().map(|e| e.revision), Some(1));
    tokio::time::sleep(Duration::from_millis(100)).await;

    let stopped = std::time::Instant::now();
    service.stop().await;
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "a 300 s waiter held the stop for {:?}",
        stopped.elapsed()
    );
    let waited = waiter.await.unwrap().unwrap_err();
    assert_eq!(waited.code(), tonic::Code::Unavailable, "{waited:?}");
    let ended = follow.message().await.unwrap_err();
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
}

#[tokio::test]
async fn an_enforcer_moves_on_to_the_next_endpoint_when_one_is_unreachable() {
    use cassette_enforcement::{Enforcer, MemoryKernel};
    let dir = tempfile::tempdir().unwrap();
    let service = cassette_e2e::InProcess::start(dir.path()).await;
    let mut client = service.client().await;
    cassette_e2e::create_firewall(&mut client, "web-1").await;
    let dead = cassette_e2e::Target::Unix(dir.path().join("no-service-here.sock"));
    let rules = vec![dead, cassette_e2e::tcp_target(service.addr)];
    let config = enforcer_config(rules, "web-1", "failover");
    let enforcer =
        tokio::spawn(Enforcer::new(config, MemoryKernel::default()).run(std::future::pending()));
    let status = client
        .wait_for_sync(pb::WaitForSyncRequest {
            instance_id: "web-1".into(),
            revision: 0,
            timeout: Some(Duration::from_secs(30).try_into().unwrap()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.state, pb::SyncState::InSync as i32, "{status:?}");
    enforcer.abort();
    service.stop().await;
}

/// An in-memory kernel for in-process enforcers: it can be told to refuse
/// every change (a broken nftables) and to say its updates are quick, and it
/// notes which thread each change ran on.
#[derive(Clone, Default)]
struct TestKernel {
    table: std::sync::Arc<std::sync::Mutex<Option<cassette_ruleset::Ruleset>>>,
    broken: std::sync::Arc<std::sync::atomic::AtomicBool>,
    quick: bool,
    calls: std::sync::Arc<std::sync::Mutex<Vec<(&'static str, std::thread::ThreadId)>>>,
}

impl TestKernel {
    fn put(
        &self,
        call: &'static str,
        ruleset: &cassette_ruleset::Ruleset,
    ) -> Result<(), cassette_enforcement::KernelError> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(cassette_enforcement::KernelError(
                "Error: simulated broken kernel".into(),
            ));
        }
        let thread = std::thread::current().id();
        self.calls.lock().unwrap().push((call, thread));
        *self.table.lock().unwrap() = Some(ruleset.clone());
        Ok(())
    }
}

impl cassette_enforcement::Kernel for TestKernel {
    fn exists(&mut self) -> Result<bool, cassette_enforcement::KernelError> {
        Ok(self.table.lock().unwrap().is_some())
    }

    fn replace(
        &mut self,
        ruleset: &cassette_ruleset::Ruleset,
    ) -> Result<(), cassette_enforcement::KernelError> {
        self.put("replace", ruleset)
    }

    fn update(
        &mut self,
        _from: &cassette_ruleset::Ruleset,
        to: &cassette_ruleset::Ruleset,
    ) -> Result<(), cassette_enforcement::KernelError> {
        self.put("update", to)
    }

    fn quick_updates(&self) -> bool {
        self.quick
    }

    fn holds(
        &mut self,
        ruleset: &cassette_ruleset::Ruleset,
    ) -> Result<bool, cassette_enforcement::KernelError> {
        Ok(self.table.lock().unwrap().as_ref() == Some(ruleset))
    }
}

#[tokio::test]
async fn a_repair_that_fails_is_reported_and_nothing_is_shown_applied() {
    use cassette_enforcement::{Config, Enforcer};
    let dir = tempfile::tempdir().unwrap();
    let service = cassette_e2e::InProcess::start(dir.path()).await;
    let mut client = service.client().await;
    cassette_e2e::create_firewall(&mut client, "web-1").await;
    let kernel = TestKernel::default();
    let config = Config {
        refresh_interval: Duration::from_millis(200),
        ..enforcer_config(
            vec![cassette_e2e::tcp_target(service.addr)],
            "web-1",
            "flaky",
        )
    };
    let enforcer = tokio::spawn(Enforcer::new(config, kernel.clone()).run(std::future::pending()));
    let sync = |client: &mut cassette_e2e::Client| {
        let mut client = client.clone();
        async move {
            client
                .get_firewall(pb::GetFirewallRequest {
                    instance_id: "web-1".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .sync
                .unwrap()
        }
    };
    let eventually = |want: i32| {
        let mut client = client.clone();
        async move {
            let mut last = None;
            for _ in 0..300 {
                let status = sync(&mut client).await;
                if status.state == want {
                    return status;
                }
                last = Some(status);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("never reached state {want}: {last:?}");
        }
    };
    eventually(pb::SyncState::InSync as i32).await;

    // Someone deletes the table and nftables refuses every change: the
    // repair fails, and the service learns it.
    kernel
        .broken
        .store(true, std::sync::atomic::Ordering::SeqCst);
    *kernel.table.lock().unwrap() = None;
    let status = eventually(pb::SyncState::Error as i32).await;
    assert!(
        status.last_error.contains("simulated broken kernel"),
        "{status:?}"
    );
    assert_eq!(
        status.applied_revision, 0,
        "nothing is shown applied: {status:?}"
    );

    // Repaired once nftables works again.
    kernel
        .broken
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let status = eventually(pb::SyncState::InSync as i32).await;
    assert_eq!(status.applied_revision, 1, "{status:?}");
    enforcer.abort();
    service.stop().await;
}

/// The enforcer runs on one thread (a current-thread runtime, as the
/// enforcer binary's): a backend whose updates answer at once (netlink
/// element changes) is updated on it, in place, and everything else a
/// blocking backend does (a whole table's replace) runs on the blocking pool.
#[tokio::test]
async fn quick_kernel_updates_are_made_in_place_and_replaces_off_the_runtime() {
    use cassette_enforcement::Enforcer;
    let runtime_thread = std::thread::current().id();
    for quick in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let service = cassette_e2e::InProcess::start(dir.path()).await;
        let mut client = service.client().await;
        cassette_e2e::create_firewall(&mut client, "web-1").await;
        let kernel = TestKernel {
            quick,
            ..Default::default()
        };
        let rules = vec![cassette_e2e::tcp_target(service.addr)];
        let config = enforcer_config(rules, "web-1", "threads");
        let enforcer =
            tokio::spawn(Enforcer::new(config, kernel.clone()).run(std::future::pending()));
        let mut revision = 1;
        for enabled in [false, true, false] {
            revision = client
                .update_rule(pb::UpdateRuleRequest {
                    instance_id: "web-1".into(),
                    rule_id: "default-ssh".into(),
                    enabled: Some(enabled),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .revision;
        }
        let status = client
            .wait_for_sync(pb::WaitForSyncRequest {
                instance_id: "web-1".into(),
                revision,
                timeout: Duration::from_secs(30).try_into().ok(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.state, pb::SyncState::InSync as i32, "{status:?}");
        let calls = kernel.calls.lock().unwrap().clone();
        let on_runtime = |call: &str| {
            let threads: Vec<bool> = calls
                .iter()
                .filter(|(c, _)| *c == call)
                .map(|(_, thread)| *thread == runtime_thread)
                .collect();
            assert!(!threads.is_empty(), "no {call} among {calls:?}");
            threads
        };
        assert!(
            on_runtime("replace").iter().all(|here| !here),
            "a replace ran on the runtime's thread: {calls:?}"
        );
        assert!(
            on_runtime("update").iter().all(|here| *here == quick),
            "quick updates {quick}: {calls:?} (the runtime's thread is {runtime_thread:?})"
        );
        enforcer.abort();
        service.stop().await;
    }
}
