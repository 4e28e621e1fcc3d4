//! Several rules replicas (the real binary, `--store etcd`) on one log in a
//! real three-member etcd cluster: one winner among racing writes through
//! different replicas, a write on one replica read on another and applied by
//! an enforcer streaming from it, and no write without a quorum while reads
//! keep serving.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cassette_e2e::etcd::{self, EtcdCluster};
use cassette_e2e::{binary, free_port, pb, tcp_target, Client, RulesProcess, PATIENCE};
use tonic::Code;

struct Replicas {
    cluster: EtcdCluster,
    replicas: Vec<RulesProcess>,
    clients: Vec<Client>,
    _dir: tempfile::TempDir,
}

impl Replicas {
    async fn start(n: usize) -> Self {
        let cluster = EtcdCluster::start(3).await;
        let dir = tempfile::tempdir().unwrap();
        let endpoints = cluster.endpoints().join(",");
        let mut replicas = Vec::new();
        let mut clients = Vec::new();
        for i in 0..n {
            let addr = free_port();
            let replica = RulesProcess::spawn(
                &dir.path().join(format!("replica-{i}")),
                &addr.to_string(),
                tcp_target(addr),
                &[
                    "--store",
                    "etcd",
                    "--etcd-endpoints",
                    &endpoints,
                    "--etcd-append-deadline",
                    "3s",
                ],
            )
            .await;
            clients.push(replica.client().await);
            replicas.push(replica);
        }
        Self {
            cluster,
            replicas,
            clients,
            _dir: dir,
        }
    }

    /// Waits until replica `i` shows `instance` at `revision` or later; how long it took.
    async fn seen(&mut self, i: usize, instance: &str, revision: u64) -> Duration {
        let started = Instant::now();
        loop {
            let answer = self.clients[i]
                .get_firewall(pb::GetFirewallRequest {
                    instance_id: instance.into(),
                })
                .await;
            if answer.is_ok_and(|f| f.into_inner().revision >= revision) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < PATIENCE,
                "replica {i} never showed {instance} at revision {revision}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// A real enforcer for web-1 (file backend: its ruleset in `dir/ruleset.nft`)
/// given the `rules` endpoints; killed on drop.
struct FileEnforcer(std::process::Child);

impl FileEnforcer {
    fn start(rules: &str, dir: &std::path::Path) -> Self {
        let log = std::fs::File::create(dir.join("enforcer.log")).unwrap();
        let child = Command::new(binary("cassette-enforcer"))
            .args(["--rules", rules, "--instance", "web-1", "--backend", "file"])
            .arg("--ruleset-file")
            .arg(dir.join("ruleset.nft"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn cassette-enforcer");
        Self(child)
    }
}

impl Drop for FileEnforcer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn add(instance: &str, port: u32) -> pb::AddRuleRequest {
    pb::AddRuleRequest {
        instance_id: instance.into(),
        port,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_fifty_concurrent_adds_of_one_port_over_three_replicas_have_one_winner() {
    if etcd::skip("replicas_fifty_concurrent_adds_of_one_port_over_three_replicas_have_one_winner")
    {
        return;
    }
    let mut replicas = Replicas::start(3).await;
    cassette_e2e::create_firewall(&mut replicas.clients[0], "web-1").await;
    for i in 1..3 {
        replicas.seen(i, "web-1", 1).await;
    }
    let tasks: Vec<_> = (0..50)
        .map(|n| {
            let mut client = replicas.clients[n % 3].clone();
            tokio::spawn(async move { client.add_rule(add("web-1", 5432)).await })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => won += 1,
            Err(status) => assert_eq!(status.code(), Code::AlreadyExists, "{status:?}"),
        }
    }
    assert_eq!(won, 1, "exactly one AddRule of 5432/tcp wins");
    for i in 0..3 {
        replicas.seen(i, "web-1", 2).await;
        let firewall = cassette_e2e::get_firewall(&mut replicas.clients[i], "web-1").await;
        assert_eq!(firewall.revision, 2, "replica {i}");
        assert_eq!(firewall.rules.iter().filter(|r| r.port == 5432).count(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_a_write_on_one_is_read_on_the_others_and_applied_by_an_enforcer_streaming_from_one(
) {
    if etcd::skip("replicas_a_write_on_one_is_read_on_the_others_and_applied_by_an_enforcer_streaming_from_one") {
        return;
    }
    let mut replicas = Replicas::start(2).await;
    cassette_e2e::create_firewall(&mut replicas.clients[0], "web-1").await;
    replicas.seen(1, "web-1", 1).await;

    // Read your writes on A; B follows within milliseconds.
    let mut lags = vec![];
    for port in 3000..3050 {
        let firewall = replicas.clients[0]
            .add_rule(add("web-1", port))
            .await
            .expect("add on A")
            .into_inner();
        let on_a = cassette_e2e::get_firewall(&mut replicas.clients[0], "web-1").await;
        assert_eq!(on_a.revision, firewall.revision, "A reads its own write");
        lags.push(replicas.seen(1, "web-1", firewall.revision).await);
    }
    lags.sort();
    eprintln!(
        "replica lag (answer on A -> visible on B, 50 writes): p50 {:?}, max {:?}",
        lags[lags.len() / 2],
        lags[lags.len() - 1]
    );

    // An enforcer on B applies a change made on A.
    let dir = tempfile::tempdir().unwrap();
    let ruleset = dir.path().join("ruleset.nft");
    let enforcer = FileEnforcer::start(&replicas.replicas[1].target.to_string(), dir.path());
    let revision = replicas.clients[0]
        .add_rule(add("web-1", 6379))
        .await
        .expect("add on A")
        .into_inner()
        .revision;
    let synced = replicas.clients[1]
        .wait_for_sync(pb::WaitForSyncRequest {
            instance_id: "web-1".into(),
            revision,
            timeout: Some(Duration::from_secs(20).try_into().unwrap()),
        })
        .await
        .expect("WaitForSync on B")
        .into_inner();
    drop(enforcer);
    assert!(synced.applied_revision >= revision, "{synced:?}");
    let text = std::fs::read_to_string(&ruleset).unwrap();
    assert!(text.contains("6379"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_without_an_etcd_quorum_refuse_writes_keep_reading_and_resume() {
    if etcd::skip("replicas_without_an_etcd_quorum_refuse_writes_keep_reading_and_resume") {
        return;
    }
    let mut replicas = Replicas::start(2).await;
    cassette_e2e::create_firewall(&mut replicas.clients[0], "web-1").await;
    replicas.seen(1, "web-1", 1).await;
    replicas.cluster.kill_member(0);
    replicas.cluster.kill_member(1);
    for i in 0..2 {
        let refused = replicas.clients[i].add_rule(add("web-1", 8080)).await;
        let status = refused.expect_err("no write without a quorum");
        assert_eq!(status.code(), Code::Unavailable, "replica {i}: {status:?}");
        let firewall = cassette_e2e::get_firewall(&mut replicas.clients[i], "web-1").await;
        assert!(firewall.revision >= 1, "replica {i} still reads");
    }
    replicas.cluster.start_member(0);
    replicas.cluster.start_member(1);
    replicas.cluster.wait_for_leader().await;
    // Writes resume (the refused ones may or may not have committed: a
    // retry of the same port is then a conflict, never a second rule).
    let deadline = Instant::now() + PATIENCE;
    loop {
        match replicas.clients[1].add_rule(add("web-1", 9090)).await {
            Ok(_) => break,
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("writes did not resume: {status:?}"),
        }
    }
    let revision = cassette_e2e::get_firewall(&mut replicas.clients[1], "web-1")
        .await
        .revision;
    replicas.seen(0, "web-1", revision).await;
    for i in 0..2 {
        let firewall = cassette_e2e::get_firewall(&mut replicas.clients[i], "web-1").await;
        assert!(firewall.rules.iter().filter(|r| r.port == 8080).count() <= 1);
        assert_eq!(firewall.rules.iter().filter(|r| r.port == 9090).count(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_a_replica_killed_under_write_load_loses_nothing_acknowledged_and_its_enforcer_moves_on(
) {
    if etcd::skip("replicas_a_replica_killed_under_write_load_loses_nothing_acknowledged_and_its_enforcer_moves_on") {
        return;
    }
    let mut replicas = Replicas::start(2).await;
    cassette_e2e::create_firewall(&mut replicas.clients[0], "web-1").await;
    replicas.seen(1, "web-1", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let ruleset = dir.path().join("ruleset.nft");
    let rules = format!(
        "{},{}",
        replicas.replicas[0].target, replicas.replicas[1].target
    );
    let enforcer = FileEnforcer::start(&rules, dir.path());

    // Two writers per replica add ports until told to stop; each records
    // what was acknowledged.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4u32)
        .map(|w| {
            let mut client = replicas.clients[(w % 2) as usize].clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut acked = vec![];
                for i in 0..200u32 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let port = 10_000 + w * 1000 + i;
                    if client.add_rule(add("web-1", port)).await.is_ok() {
                        acked.push(port);
                    }
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    replicas.replicas[0].kill_9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = vec![];
    for writer in writers {
        acked.extend(writer.await.unwrap());
    }
    let firewall = cassette_e2e::get_firewall(&mut replicas.clients[1], "web-1").await;
    let held: std::collections::HashSet<u32> = firewall.rules.iter().map(|r| r.port).collect();
    let lost: Vec<u32> = acked
        .iter()
        .copied()
        .filter(|p| !held.contains(p))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    eprintln!("{} acknowledged adds, none lost", acked.len());

    // The enforcer moved to B and has everything.
    let synced = replicas.clients[1]
        .wait_for_sync(pb::WaitForSyncRequest {
            instance_id: "web-1".into(),
            revision: firewall.revision,
            timeout: Some(Duration::from_secs(20).try_into().unwrap()),
        })
        .await
        .expect("WaitForSync on B")
        .into_inner();
    drop(enforcer);
    assert!(synced.applied_revision >= firewall.revision, "{synced:?}");
    let text = std::fs::read_to_string(&ruleset).unwrap();
    for port in acked.iter().take(20) {
        assert!(
            text.contains(&port.to_string()),
            "port {port} in the ruleset"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_sync_state_an_ack_on_one_answers_wait_for_sync_on_another() {
    if etcd::skip("replicas_share_sync_state_an_ack_on_one_answers_wait_for_sync_on_another") {
        return;
    }
    let mut replicas = Replicas::start(2).await;
    cassette_e2e::create_firewall(&mut replicas.clients[0], "web-1").await;
    replicas.seen(1, "web-1", 1).await;
    // The enforcer knows only B.
    let dir = tempfile::tempdir().unwrap();
    let enforcer = FileEnforcer::start(&replicas.replicas[1].target.to_string(), dir.path());
    let wait = |revision: u64| pb::WaitForSyncRequest {
        instance_id: "web-1".into(),
        revision,
        timeout: Some(Duration::from_secs(20).try_into().unwrap()),
    };
    let mut on_a = vec![];
    for port in 4000..4020 {
        let revision = replicas.clients[0]
            .add_rule(add("web-1", port))
            .await
            .expect("add on A")
            .into_inner()
            .revision;
        let started = Instant::now();
        let status = replicas.clients[0]
            .wait_for_sync(wait(revision))
            .await
            .expect("WaitForSync on A, whose replica has no stream")
            .into_inner();
        on_a.push(started.elapsed());
        assert!(status.applied_revision >= revision, "{status:?}");
        assert!(status.enforcer_connected, "{status:?}");
    }
    on_a.sort();
    eprintln!(
        "WaitForSync on A for changes made on A, applied by an enforcer on B: p50 {:?}, max {:?}",
        on_a[on_a.len() / 2],
        on_a[on_a.len() - 1]
    );
    let firewall = cassette_e2e::get_firewall(&mut replicas.clients[0], "web-1").await;
    let sync = firewall.sync.expect("sync");
    assert_eq!(sync.state, pb::SyncState::InSync as i32, "{sync:?}");
    assert!(firewall
        .rules
        .iter()
        .all(|r| r.status == pb::RuleStatus::Applied as i32));

    // B dies: A stops claiming a connected enforcer once B's lease lapses.
    replicas.replicas[1].kill_9();
    let started = Instant::now();
    loop {
        let firewall = cassette_e2e::get_firewall(&mut replicas.clients[0], "web-1").await;
        if !firewall.sync.is_some_and(|s| s.enforcer_connected) {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "A still shows the enforcer of a dead replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "A saw B's enforcer gone {:?} after B's kill -9",
        started.elapsed()
    );
    drop(enforcer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_one_down_while_etcd_compacts_catches_up_on_return() {
    if etcd::skip("replicas_one_down_while_etcd_compacts_catches_up_on_return") {
        return;
    }
    let mut replicas = Replicas::start(2).await;
    cassette_e2e::create_firewall(&mut replicas.clients[0], "web-1").await;
    replicas.seen(1, "web-1", 1).await;
    replicas.replicas[1].kill_9();
    let mut revision = 1;
    for port in 5000..5100 {
        revision = replicas.clients[0]
            .add_rule(add("web-1", port))
            .await
            .expect("add on A")
            .into_inner()
            .revision;
    }
    // Every superseded version of the log's head is gone from etcd.
    replicas.cluster.compact().await;
    let listen = replicas.replicas[1].listen.clone();
    let endpoints = replicas.cluster.endpoints().join(",");
    let back = RulesProcess::spawn(
        &replicas._dir.path().join("replica-1-again"),
        &listen,
        replicas.replicas[1].target.clone(),
        &["--store", "etcd", "--etcd-endpoints", &endpoints],
    )
    .await;
    let mut client = back.client().await;
    let firewall = cassette_e2e::get_firewall(&mut client, "web-1").await;
    assert_eq!(firewall.revision, revision, "replayed to the end");
    assert_eq!(firewall.rules.len(), 103);
    // And it follows what comes next, after the compaction.
    let next = replicas.clients[0]
        .add_rule(add("web-1", 6000))
        .await
        .expect("add on A")
        .into_inner()
        .revision;
    replicas.clients[1] = client;
    replicas.seen(1, "web-1", next).await;
}
