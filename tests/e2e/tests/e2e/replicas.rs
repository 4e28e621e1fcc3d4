//! Several rules replicas (the real binary, `--store etcd`) on one log in a
//! real three-member etcd cluster: one winner among racing writes through
//! different replicas, a write on one replica read on another and applied by
//! an enforcer streaming from it, and no write without a quorum while reads
//! keep serving.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
        Self::on(EtcdCluster::start(3).await, n, None, 0).await
    }

    /// `flags.len()` replicas on a new cluster, replica `i` with `flags[i]` too.
    async fn start_with(flags: &[&[&str]]) -> Self {
        Self::with(EtcdCluster::start(3).await, flags, None, 0).await
    }

    /// `n` replicas on `cluster`, logging in as `credentials` (user, password).
    /// Replica `i` lists the members starting at member `first + i` (so
    /// replica 0 watches and writes through member `first` first, replica 1
    /// through the next).
    async fn on(
        cluster: EtcdCluster,
        n: usize,
        credentials: Option<(&str, &str)>,
        first: usize,
    ) -> Self {
        Self::with(cluster, &vec![&[][..]; n], credentials, first).await
    }

    async fn with(
        cluster: EtcdCluster,
        flags: &[&[&str]],
        credentials: Option<(&str, &str)>,
        first: usize,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut replicas = Vec::new();
        let mut clients = Vec::new();
        for (i, own) in flags.iter().enumerate() {
            let mut members = cluster.endpoints();
            let len = members.len();
            members.rotate_left((first + i) % len);
            let endpoints = members.join(",");
            let addr = free_port();
            let mut command = Command::new(binary("cassette-rules"));
            let mut extra = vec![
                "--store",
                "etcd",
                "--etcd-endpoints",
                &endpoints,
                "--etcd-append-deadline",
                "3s",
            ];
            if let Some((user, password)) = credentials {
                extra.extend(["--etcd-user", user]);
                command.env("CASSETTE_ETCD_PASSWORD", password);
            }
            extra.extend(*own);
            let replica = RulesProcess::spawn_command(
                command,
                &dir.path().join(format!("replica-{i}")),
                &addr.to_string(),
                tcp_target(addr),
                &extra,
                None,
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
                    ..Default::default()
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

impl Replicas {
    /// Waits (WaitForSync on replica `i`) until web-1's enforcer applied
    /// `revision`, wherever it streams.
    async fn synced(&mut self, i: usize, revision: u64) {
        self.synced_of(i, "web-1", revision).await;
    }

    /// [`Replicas::synced`] for `instance`; the sync state it answered.
    async fn synced_of(&mut self, i: usize, instance: &str, revision: u64) -> pb::SyncStatus {
        let synced = self.clients[i]
            .wait_for_sync(pb::WaitForSyncRequest {
                instance_id: instance.into(),
                revision,
                timeout: Some(Duration::from_secs(20).try_into().unwrap()),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("WaitForSync of {instance} on replica {i}: {s:?}"))
            .into_inner();
        assert!(
            synced.applied_revision >= revision,
            "{instance} on {i}: {synced:?}"
        );
        synced
    }

    /// Waits until none of `replicas` shows `instance`'s enforcer connected
    /// (its replica died); how long it took.
    async fn until_no_enforcer_shows(&mut self, replicas: &[usize], instance: &str) -> Duration {
        let started = Instant::now();
        for &i in replicas {
            loop {
                let firewall = cassette_e2e::get_firewall(&mut self.clients[i], instance).await;
                if !firewall.sync.is_some_and(|s| s.enforcer_connected) {
                    break;
                }
                assert!(
                    started.elapsed() < PATIENCE,
                    "replica {i} still shows the enforcer of a dead replica"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        started.elapsed()
    }

    /// [`Replicas::synced`], then stops the enforcer, so its ruleset file
    /// holds what was applied.
    async fn applied(&mut self, enforcer: &mut FileEnforcer, i: usize, revision: u64) {
        self.synced(i, revision).await;
        enforcer.stop();
    }
}

/// A real enforcer for web-1 (file backend: its ruleset in `dir/ruleset.nft`)
/// given the `rules` endpoints; killed on drop.
struct FileEnforcer(std::process::Child);

impl FileEnforcer {
    fn start(rules: &str, dir: &std::path::Path) -> Self {
        Self::start_for("web-1", rules, dir)
    }

    fn start_for(instance: &str, rules: &str, dir: &std::path::Path) -> Self {
        Self::start_with(instance, rules, dir, &[])
    }

    /// [`FileEnforcer::start_for`] with `extra` flags (its TLS).
    fn start_with(
        instance: &str,
        rules: &str,
        dir: &std::path::Path,
        extra: &[std::path::PathBuf],
    ) -> Self {
        let log = std::fs::File::create(dir.join("enforcer.log")).unwrap();
        let child = Command::new(binary("cassette-enforcer"))
            .args([
                "--rules",
                rules,
                "--instance",
                instance,
                "--backend",
                "file",
            ])
            .arg("--ruleset-file")
            .arg(dir.join("ruleset.nft"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn cassette-enforcer");
        Self(child)
    }
}

impl FileEnforcer {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for FileEnforcer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Two writers per client add ports of `instance` until stopped, each
/// recording what was acknowledged.
struct WriteLoad {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(u32, u64)>>>,
    writers: Vec<tokio::task::JoinHandle<()>>,
}

impl WriteLoad {
    fn start(clients: &[Client], instance: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let writers = (0..2 * clients.len() as u32)
            .map(|w| {
                let mut client = clients[w as usize % clients.len()].clone();
                let (stop, acked, instance) = (stop.clone(), acked.clone(), instance.to_owned());
                tokio::spawn(async move {
                    for i in 0..1000u32 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let port = 10_000 + w * 1000 + i;
                        if let Ok(firewall) = client.add_rule(add(&instance, port)).await {
                            acked
                                .lock()
                                .unwrap()
                                .push((port, firewall.into_inner().revision));
                        } else {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            acked,
            writers,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `more` writes beyond those acknowledged now are.
    async fn continues(&self, more: usize, after: &str) {
        let target = self.acked() + more;
        let started = Instant::now();
        while self.acked() < target {
            assert!(
                started.elapsed() < PATIENCE,
                "writes did not continue after {after}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "{more} writes acknowledged {:?} after {after}",
            started.elapsed()
        );
    }

    /// Stops the writers; every port acknowledged.
    async fn stop(self) -> Acked {
        self.stop.store(true, Ordering::Relaxed);
        for writer in self.writers {
            writer.await.unwrap();
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        Acked {
            revision: acked.iter().map(|(_, r)| *r).max().unwrap_or(0),
            ports: acked.into_iter().map(|(port, _)| port).collect(),
        }
    }
}

/// What a [`WriteLoad`] got acknowledged.
struct Acked {
    ports: Vec<u32>,
    /// The last revision an acknowledgement named.
    revision: u64,
}

/// Panics unless replica `i` holds every port in `acked`, once it has
/// caught up with the last acknowledged revision (another replica's
/// acknowledgement may reach it a moment later).
async fn assert_none_lost(replicas: &mut Replicas, i: usize, acked: &Acked) -> pb::Firewall {
    replicas.seen(i, "web-1", acked.revision).await;
    let acked = &acked.ports;
    let firewall = cassette_e2e::get_firewall(&mut replicas.clients[i], "web-1").await;
    let held: std::collections::HashSet<u32> = firewall.rules.iter().map(|r| r.port).collect();
    let lost: Vec<u32> = acked
        .iter()
        .copied()
        .filter(|p| !held.contains(p))
        .collect();
    if !lost.is_empty() {
        let diagnosis = diagnose_loss(replicas, &lost).await;
        panic!("replica {i}: acknowledged but lost: {lost:?}\n{diagnosis}");
    }
    firewall
}

/// Where the lost ports are: in each replica's projection, and in the log
/// as each replica replays it.
async fn diagnose_loss(replicas: &mut Replicas, lost: &[u32]) -> String {
    let mut text = String::new();
    for (j, replica) in replicas.replicas.iter().enumerate() {
        let firewall = cassette_e2e::get_firewall(&mut replicas.clients[j], "web-1").await;
        let ports = |rules: &[pb::Rule]| -> Vec<u32> {
            let held: std::collections::HashSet<u32> = rules.iter().map(|r| r.port).collect();
            lost.iter().copied().filter(|p| held.contains(p)).collect()
        };
        let mut audit =
            cassette_e2e::AuditClient::new(cassette_e2e::channel(&replica.target).await);
        let replayed = audit
            .get_firewall_at(pb::GetFirewallAtRequest {
                instance_id: "web-1".into(),
                at: Some(pb::get_firewall_at_request::At::Revision(firewall.revision)),
            })
            .await
            .map(|f| f.into_inner().firewall.map(|f| ports(&f.rules)));
        text += &format!(
            "replica {j}: revision {}, lost ports in its projection {:?}, in the log replayed at that revision {replayed:?}\n",
            firewall.revision,
            ports(&firewall.rules)
        );
    }
    text
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
    let mut enforcer = FileEnforcer::start(&replicas.replicas[1].target.to_string(), dir.path());
    let revision = replicas.clients[0]
        .add_rule(add("web-1", 6379))
        .await
        .expect("add on A")
        .into_inner()
        .revision;
    replicas.applied(&mut enforcer, 1, revision).await;
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
    let mut enforcer = FileEnforcer::start(&rules, dir.path());

    let load = WriteLoad::start(&replicas.clients, "web-1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    replicas.replicas[0].kill_9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = load.stop().await;
    let firewall = assert_none_lost(&mut replicas, 1, &acked).await;
    eprintln!("{} acknowledged adds, none lost", acked.ports.len());

    // The enforcer moved to B and has everything.
    replicas.applied(&mut enforcer, 1, firewall.revision).await;
    let text = std::fs::read_to_string(&ruleset).unwrap();
    for port in acked.ports.iter().take(20) {
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
        ..Default::default()
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
    let gone = replicas.until_no_enforcer_shows(&[0], "web-1").await;
    eprintln!("A saw B's enforcer gone {gone:?} after B's kill -9");
    drop(enforcer);
}

/// Acks go replica to replica: A and B (each at its loopback address, the
/// default) publish only that address in etcd and stream their enforcers'
/// sync state to the replicas that follow them; C (`--replica-address off`)
/// publishes its own in etcd, as before. Each replica answers WaitForSync
/// for an enforcer streaming to another, either way; no ack of A's or B's
/// enforcers is written to etcd; a killed replica's enforcer stops showing
/// on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_acks_directly_without_etcd_writes_and_beside_one_that_shares_through_etcd()
{
    if etcd::skip(
        "replicas_share_acks_directly_without_etcd_writes_and_beside_one_that_shares_through_etcd",
    ) {
        return;
    }
    let mut replicas = Replicas::start_with(&[&[], &[], &["--replica-address", "off"]]).await;
    for instance in ["web-1", "web-2"] {
        cassette_e2e::create_firewall(&mut replicas.clients[0], instance).await;
        for i in 1..3 {
            replicas.seen(i, instance, 1).await;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (on_b, on_c) = (dir.path().join("b"), dir.path().join("c"));
    std::fs::create_dir_all(&on_b).unwrap();
    std::fs::create_dir_all(&on_c).unwrap();
    // web-1's enforcer streams to B (direct), web-2's to C (through etcd).
    let _web1 = FileEnforcer::start_for("web-1", &replicas.replicas[1].target.to_string(), &on_b);
    let _web2 = FileEnforcer::start_for("web-2", &replicas.replicas[2].target.to_string(), &on_c);
    for (instance, port) in [("web-1", 4000), ("web-2", 4001), ("web-1", 4002)] {
        let revision = replicas.clients[0]
            .add_rule(add(instance, port))
            .await
            .expect("add on A")
            .into_inner()
            .revision;
        for i in 0..3 {
            let status = replicas.synced_of(i, instance, revision).await;
            assert!(status.enforcer_connected, "{instance} on {i}: {status:?}");
        }
    }
    let keys = replicas.cluster.keys("/cassette/v1/sync/").await;
    let under = |name: &str| {
        keys.iter()
            .filter(|k| k.starts_with(&format!("/cassette/v1/sync/{name}/")))
            .count()
    };
    assert_eq!(under("@address"), 2, "A's and B's addresses: {keys:?}");
    assert_eq!(
        under("web-1"),
        0,
        "web-1's acks went replica to replica: {keys:?}"
    );
    assert_eq!(under("web-2"), 1, "C published web-2's in etcd: {keys:?}");

    // B dies: A and C stop showing web-1's enforcer (B's address lapses with
    // its lease, and its stream is gone).
    replicas.replicas[1].kill_9();
    let gone = replicas.until_no_enforcer_shows(&[0, 2], "web-1").await;
    eprintln!("A and C saw B's enforcer gone {gone:?} after B's kill -9");
    // A and C may see B's stream break before etcd revokes B's lease (the
    // leader revokes expired leases on its own beat), so wait for it.
    let lapsed = Instant::now();
    loop {
        let keys = replicas.cluster.keys("/cassette/v1/sync/@address/").await;
        if keys.len() == 1 {
            break;
        }
        assert!(
            lapsed.elapsed() < PATIENCE,
            "B's address outlived its lease: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Secured replicas (TLS, client certificates, the development PKI) share
/// acks directly: each follows the other presenting its server
/// certificate's replica identity (spiffe://cassette.local/replica/rules),
/// and an ack received by one answers WaitForSync on the other. FollowShared
/// admits replica identities only (an admin principal and an enforcer are
/// refused, a caller without a certificate is not authenticated), and a
/// replica identity revoked by the policy is cut off on SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_secured_share_acks_over_tls_and_admit_only_replica_identities() {
    use cassette_proto::pb::replica_service_client::ReplicaServiceClient;
    if etcd::skip("replicas_secured_share_acks_over_tls_and_admit_only_replica_identities") {
        return;
    }
    let secured = cassette_e2e::secured::Secured::new(
        "[[principal]]\nname = \"console\"\nrole = \"admin\"\ninstances = [\"*\"]\n",
    );
    let cluster = EtcdCluster::start(3).await;
    let endpoints = cluster.endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    let mut replicas = Vec::new();
    let mut clients = Vec::new();
    for i in 0..2 {
        let addr = free_port();
        let mut flags = secured.server_args();
        flags.extend(["--store", "etcd", "--etcd-endpoints", &endpoints].map(String::from));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let replica = RulesProcess::spawn_with_tls(
            &dir.path().join(format!("replica-{i}")),
            &addr.to_string(),
            cassette_e2e::Target::Http(format!("https://{addr}")),
            &flags,
            Some(secured.principal("console")),
        )
        .await;
        clients.push(replica.client().await);
        replicas.push(replica);
    }
    cassette_e2e::create_firewall(&mut clients[0], "web-1").await;
    // web-1's enforcer, with its own certificate, streams to B.
    let (cert, key) = secured.enforcer_files("web-1");
    let tls = [
        "--tls-ca".into(),
        secured.pki.ca_cert_path(),
        "--tls-cert".into(),
        cert,
        "--tls-key".into(),
        key,
    ];
    let mut enforcer =
        FileEnforcer::start_with("web-1", &replicas[1].target.to_string(), dir.path(), &tls);
    let revision = clients[0]
        .add_rule(add("web-1", 4000))
        .await
        .expect("add on A")
        .into_inner()
        .revision;
    let status = clients[0]
        .wait_for_sync(pb::WaitForSyncRequest {
            instance_id: "web-1".into(),
            revision,
            timeout: Some(Duration::from_secs(20).try_into().unwrap()),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| {
            panic!(
                "WaitForSync on A, for an enforcer streaming to B: {s:?}\nA: {}\nB: {}",
                replicas[0].log(),
                replicas[1].log()
            )
        })
        .into_inner();
    assert!(
        status.applied_revision >= revision && status.enforcer_connected,
        "{status:?}"
    );
    let keys = cluster.keys("/cassette/v1/sync/").await;
    assert!(keys.iter().all(|k| !k.contains("/web-1/")), "{keys:?}");
    assert_eq!(keys.len(), 2, "the two replicas' addresses only: {keys:?}");

    let follow = |tls: Option<tonic::transport::ClientTlsConfig>| {
        let target = replicas[1].target.clone();
        async move {
            let channel = cassette_e2e::channel_with(&target, tls.as_ref()).await;
            ReplicaServiceClient::new(channel)
                .follow_shared(pb::FollowSharedRequest {
                    replica: "test".into(),
                })
                .await
        }
    };
    for (who, tls, code) in [
        (
            "an admin principal",
            Some(secured.principal("console")),
            Code::PermissionDenied,
        ),
        (
            "an enforcer",
            Some(secured.enforcer("web-1")),
            Code::PermissionDenied,
        ),
        (
            "no certificate",
            Some(secured.no_identity()),
            Code::Unauthenticated,
        ),
    ] {
        let refused = follow(tls).await.expect_err(who);
        assert_eq!(refused.code(), code, "{who}: {refused:?}");
    }
    let revoked = "spiffe://cassette.local/replica/auditor-replica";
    let mut values = follow(Some(secured.identity(revoked, "replica-auditor")))
        .await
        .expect("a replica identity follows")
        .into_inner();
    let first = values
        .message()
        .await
        .expect("a first batch")
        .expect("a first batch");
    assert!(first.complete, "{first:?}");
    assert!(
        first.values.iter().any(|v| v.name == "web-1"),
        "B's view of web-1: {first:?}"
    );

    // Revoked, and SIGHUP: the open follow ends, naming the identity.
    secured.write_policy(&format!(
        "[[principal]]\nname = \"console\"\nrole = \"admin\"\ninstances = [\"*\"]\n[revoked]\nspiffe_ids = [\"{revoked}\"]\n"
    ));
    let sent = Command::new("kill")
        .args(["-HUP", &replicas[1].pid().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success());
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match values.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the revoked follow ends");
    let status = ended.expect_err("ends with an error");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains(revoked), "{status:?}");
    enforcer.stop();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_keep_writing_through_the_loss_of_an_etcd_follower_then_its_leader() {
    if etcd::skip("replicas_keep_writing_through_the_loss_of_an_etcd_follower_then_its_leader") {
        return;
    }
    let mut replicas = Replicas::start(2).await;
    cassette_e2e::create_firewall(&mut replicas.clients[0], "web-1").await;
    replicas.seen(1, "web-1", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut enforcer = FileEnforcer::start(&replicas.replicas[1].target.to_string(), dir.path());
    let load = WriteLoad::start(&replicas.clients, "web-1");
    load.continues(20, "the start").await;

    let leader = replicas.cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    replicas.cluster.kill_member(follower);
    load.continues(50, "the loss of a follower").await;
    replicas.cluster.start_member(follower);
    replicas.cluster.wait_for_member(follower).await;

    replicas.cluster.kill_member(leader);
    load.continues(50, "the loss of the leader").await;
    let elected = replicas.cluster.wait_for_leader().await;
    assert_ne!(elected, leader);
    let acked = load.stop().await;
    eprintln!("{} acknowledged adds", acked.ports.len());

    let firewall = assert_none_lost(&mut replicas, 0, &acked).await;
    replicas.seen(1, "web-1", firewall.revision).await;
    assert_none_lost(&mut replicas, 1, &acked).await;
    // The enforcer (streaming to B) has all of it; WaitForSync on A says so.
    replicas.applied(&mut enforcer, 0, firewall.revision).await;
    let text = std::fs::read_to_string(dir.path().join("ruleset.nft")).unwrap();
    let last = acked.ports.iter().max().unwrap();
    assert!(
        text.contains(&last.to_string()),
        "port {last} in the ruleset"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_a_secured_etcd_log_in_again_when_etcd_forgets_their_tokens() {
    if etcd::skip("replicas_on_a_secured_etcd_log_in_again_when_etcd_forgets_their_tokens") {
        return;
    }
    let cluster = EtcdCluster::start(1).await;
    cluster.enable_auth("root", "root-password").await;
    let mut replicas = Replicas::on(cluster, 2, Some(("root", "root-password")), 0).await;
    cassette_e2e::create_firewall(&mut replicas.clients[0], "web-1").await;
    replicas.seen(1, "web-1", 1).await;
    let token = replicas.cluster.authenticate("root", "root-password").await;
    assert!(replicas.cluster.token_accepted(&token).await);
    // etcd forgets every token when authentication is turned off and on.
    // (An idle token also expires, after --auth-token-ttl; the replicas'
    // reads of the log's head every second keep theirs from idling.)
    replicas
        .cluster
        .revoke_tokens("root", "root-password")
        .await;
    assert!(
        !replicas.cluster.token_accepted(&token).await,
        "etcd forgot the token"
    );
    // The replicas' tokens went the same way: writes through either go on.
    for (i, port) in [(0, 8080), (1, 9090)] {
        replicas.clients[i]
            .add_rule(add("web-1", port))
            .await
            .unwrap_or_else(|s| panic!("replica {i} after etcd forgot its token: {s:?}"));
    }
    let revision = cassette_e2e::get_firewall(&mut replicas.clients[1], "web-1")
        .await
        .revision;
    assert_eq!(revision, 3);
    replicas.seen(0, "web-1", 3).await;
    for (i, replica) in replicas.replicas.iter().enumerate() {
        let logins = replica.log().matches("authenticated to etcd").count();
        assert!(logins >= 2, "replica {i} logged in {logins} time(s)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_forward_an_enforcers_reports_to_the_replica_that_asks() {
    use crate::sync::{element, listening_report, open_on, result_of};
    use pb::CheckResult::Pass;
    if etcd::skip("replicas_forward_an_enforcers_reports_to_the_replica_that_asks") {
        return;
    }
    let mut replicas = Replicas::start(2).await;
    cassette_e2e::create_firewall(&mut replicas.clients[0], "web-1").await;
    let added = replicas.clients[0]
        .add_rule(add("web-1", 5432))
        .await
        .unwrap()
        .into_inner();
    replicas.seen(1, "web-1", added.revision).await;
    // The enforcer streams to B, and applies everything.
    let channel = cassette_e2e::channel(&replicas.replicas[1].target).await;
    let mut stream = open_on(channel, "web-1", 0).await.unwrap();
    let mut received = vec![];
    while !received.contains(&added.revision) {
        let events = stream.next(Duration::from_secs(10)).await;
        received.extend(events.expect("B streams the rule"));
    }
    stream.ack(added.revision, None).await;
    // A asks only for an enforcer it knows is connected somewhere: B's
    // published state reaches A through etcd's watch (later under load).
    let started = Instant::now();
    loop {
        let on_a = cassette_e2e::get_firewall(&mut replicas.clients[0], "web-1").await;
        if on_a.sync.is_some_and(|s| s.enforcer_connected) {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "A never saw B's enforcer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Diagnose on A: B asks its enforcer for a fresh report, and forwards it.
    let mut diagnoser = replicas.clients[0].clone();
    let asking = tokio::spawn(async move {
        diagnoser
            .diagnose(pb::DiagnoseRequest {
                instance_id: "web-1".into(),
                port: 5432,
                ..Default::default()
            })
            .await
    });
    assert_eq!(
        stream.next(Duration::from_secs(10)).await,
        Some(vec![]),
        "B asks the enforcer for a report on A's behalf"
    );
    let report = |packets| {
        let hits = vec![element(5432, packets, Some(std::time::SystemTime::now()))];
        listening_report(hits, 5432)
    };
    stream.report(report(7)).await;
    let diagnosis = asking.await.unwrap().unwrap().into_inner();
    for name in [
        "rule_exists",
        "rule_enabled",
        "rule_applied",
        "rule_in_kernel",
        "service_listening",
        "packets_arriving",
    ] {
        assert_eq!(result_of(&diagnosis, name).0, Pass, "{name}: {diagnosis:?}");
    }
    assert!(result_of(&diagnosis, "service_listening")
        .1
        .contains("listening on :: port 5432"));
    assert!(diagnosis.ok);

    // A shows the enforcer's hit counts, and later reports while asked.
    let hits_on_a = |client: &mut Client| {
        let mut client = client.clone();
        async move {
            let firewall = cassette_e2e::get_firewall(&mut client, "web-1").await;
            firewall
                .rules
                .iter()
                .find(|r| r.port == 5432)
                .map(|r| r.hits)
        }
    };
    assert_eq!(hits_on_a(&mut replicas.clients[0]).await, Some(7));
    stream.report(report(9)).await;
    let started = Instant::now();
    while hits_on_a(&mut replicas.clients[0]).await != Some(9) {
        assert!(
            started.elapsed() < PATIENCE,
            "A never showed the next report"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("a report on B shown on A after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_a_full_etcd_refuse_writes_by_name_keep_reading_and_resume_once_space_is_freed()
{
    if etcd::skip(
        "replicas_on_a_full_etcd_refuse_writes_by_name_keep_reading_and_resume_once_space_is_freed",
    ) {
        return;
    }
    // A 2 MiB quota (etcd's default is 2 GiB) that creations fill in seconds.
    let cluster = EtcdCluster::start_with(1, &["--quota-backend-bytes", "2097152"]).await;
    let mut replicas = Replicas::on(cluster, 2, None, 0).await;
    let mut created = vec![];
    let refusal = loop {
        assert!(created.len() < 20_000, "etcd's quota never filled");
        let id = format!("web-{}", created.len());
        match replicas.clients[created.len() % 2]
            .create_firewall(pb::CreateFirewallRequest {
                instance_id: id.clone(),
                request_id: String::new(),
                ..Default::default()
            })
            .await
        {
            Ok(_) => created.push(id),
            Err(status) => break status,
        }
    };
    eprintln!("etcd full after {} creations: {refusal:?}", created.len());
    assert_eq!(refusal.code(), Code::Unavailable, "{refusal:?}");
    for said in [
        "database space exceeded",
        "defragment each member",
        "the change was not stored",
    ] {
        assert!(refusal.message().contains(said), "{said:?} in {refusal:?}");
    }
    assert_eq!(replicas.cluster.alarms().await, vec!["NOSPACE".to_owned()]);
    // Every acknowledged creation is there, on both replicas; reads go on.
    let last = created.last().unwrap().clone();
    replicas.seen(0, &last, 1).await;
    replicas.seen(1, &last, 1).await;
    for i in 0..2 {
        let refused = replicas.clients[i].add_rule(add(&created[0], 8080)).await;
        assert_eq!(refused.unwrap_err().code(), Code::Unavailable);
        for id in created.iter().step_by(97) {
            cassette_e2e::get_firewall(&mut replicas.clients[i], id).await;
        }
    }

    replicas.cluster.free_space().await;
    assert!(replicas.cluster.alarms().await.is_empty());
    let added = replicas.clients[1]
        .add_rule(add(&created[0], 8080))
        .await
        .expect("writes resume once space is freed")
        .into_inner();
    replicas.seen(0, &created[0], added.revision).await;
    let firewall = cassette_e2e::get_firewall(&mut replicas.clients[0], &created[0]).await;
    assert_eq!(firewall.rules.iter().filter(|r| r.port == 8080).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_keep_following_the_log_when_the_etcd_member_they_watch_freezes() {
    if etcd::skip("replicas_keep_following_the_log_when_the_etcd_member_they_watch_freezes") {
        return;
    }
    // A watches the log (and the shared sync state) through a follower; B
    // writes through the next member, and its enforcer acks to B.
    let cluster = EtcdCluster::start(3).await;
    let follower = (cluster.wait_for_leader().await + 1) % 3;
    let mut replicas = Replicas::on(cluster, 2, None, follower).await;
    cassette_e2e::create_firewall(&mut replicas.clients[0], "web-1").await;
    replicas.seen(1, "web-1", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let _enforcer = FileEnforcer::start(&replicas.replicas[1].target.to_string(), dir.path());
    replicas.synced(0, 1).await;

    replicas.cluster.freeze_member(follower);
    let frozen = Instant::now();
    let added = replicas.clients[1]
        .add_rule(add("web-1", 8080))
        .await
        .expect("a write through B")
        .into_inner();
    let written = frozen.elapsed();
    replicas.seen(0, "web-1", added.revision).await;
    eprintln!(
        "A's member frozen: B's write answered after {written:?}, on A after {:?}",
        frozen.elapsed()
    );
    // The ack B's enforcer sent shows on A too.
    replicas.synced(0, added.revision).await;
    eprintln!("B's enforcer's ack on A after {:?}", frozen.elapsed());
    // A saw both its watches fall silent (keepalive alone would take 5-10 s)
    // and watches through another member.
    for said in [
        "the etcd watch on the log's head fell silent",
        "the etcd watch of shared values fell silent",
    ] {
        let started = Instant::now();
        while !replicas.replicas[0].log().contains(said) {
            assert!(started.elapsed() < PATIENCE, "A never said {said:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "A watches through other members {:?} after the freeze",
        frozen.elapsed()
    );
    let again = replicas.clients[1]
        .add_rule(add("web-1", 9090))
        .await
        .expect("a second write through B")
        .into_inner();
    let lag = replicas.seen(0, "web-1", again.revision).await;
    eprintln!("the next write on A after {lag:?}");
    replicas.cluster.thaw_member(follower);
}

/// The Jepsen finding, replayed: a rule added through B, then at once
/// deleted through A. A refusal ("not found") must not be decided on A's
/// view a few milliseconds behind the log: A checks the head in etcd first
/// and catches up. A linearizable read through A sees what B acknowledged
/// before it; a replica read is what A has seen. Prints what each costs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_refuse_nothing_on_a_stale_view_and_read_linearizably_when_asked() {
    if etcd::skip("replicas_refuse_nothing_on_a_stale_view_and_read_linearizably_when_asked") {
        return;
    }
    let mut replicas = Replicas::start(2).await;
    cassette_e2e::create_firewall(&mut replicas.clients[0], "web-1").await;
    replicas.seen(1, "web-1", 1).await;
    let (mut a, mut b) = (replicas.clients[0].clone(), replicas.clients[1].clone());
    let rounds = 40;
    let mut linearizable_reads = Vec::new();
    for i in 0..rounds {
        let port = 20_000 + i;
        let added = b.add_rule(add("web-1", port)).await.expect("add through B");
        let added = added.into_inner();
        let rule = added
            .rules
            .iter()
            .find(|r| r.port == port)
            .expect("the added rule")
            .id
            .clone();
        let started = Instant::now();
        let read = a
            .get_firewall(pb::GetFirewallRequest {
                instance_id: "web-1".into(),
                consistency: pb::ReadConsistency::Linearizable as i32,
            })
            .await
            .expect("a linearizable read through A")
            .into_inner();
        linearizable_reads.push(started.elapsed());
        assert!(
            read.revision >= added.revision && read.rules.iter().any(|r| r.id == rule),
            "round {i}: A's linearizable read misses what B acknowledged"
        );
        let added = b
            .add_rule(add("web-1", port + 1000))
            .await
            .expect("add through B");
        let rule = added
            .into_inner()
            .rules
            .into_iter()
            .find(|r| r.port == port + 1000)
            .expect("the added rule")
            .id;
        a.delete_rule(pb::DeleteRuleRequest {
            instance_id: "web-1".into(),
            rule_id: rule,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("round {i}: A refused to delete what B added: {s:?}"));
    }
    // What a refusal and a read cost, through A, with A current.
    let mut refusals = Vec::new();
    let mut replica_reads = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        let refused = a.add_rule(add("web-1", 20_000)).await.unwrap_err();
        refusals.push(started.elapsed());
        assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
        let started = Instant::now();
        a.get_firewall(pb::GetFirewallRequest {
            instance_id: "web-1".into(),
            ..Default::default()
        })
        .await
        .expect("a replica read");
        replica_reads.push(started.elapsed());
    }
    let p50 = |mut times: Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    eprintln!(
        "through A, p50 of {rounds}: linearizable read {:?}, replica read {:?}, refusal {:?}",
        p50(linearizable_reads),
        p50(replica_reads),
        p50(refusals)
    );
}

/// Both replicas meet every deadline; a change through B with a 2 s window,
/// nobody confirming: the log holds one ChangeReverted, and both replicas
/// show the rule gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_revert_an_unconfirmed_change_once() {
    if etcd::skip("replicas_revert_an_unconfirmed_change_once") {
        return;
    }
    let mut replicas = Replicas::start(2).await;
    cassette_e2e::create_firewall(&mut replicas.clients[0], "web-1").await;
    let mut changes = Vec::new();
    for port in [5432, 6379, 3306] {
        let added = replicas.clients[1]
            .add_rule(pb::AddRuleRequest {
                confirm_within: Duration::from_secs(2).try_into().ok(),
                ..add("web-1", port)
            })
            .await
            .expect("add with a window")
            .into_inner();
        changes.push(added.revision);
    }
    for i in 0..2 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let firewall = cassette_e2e::get_firewall(&mut replicas.clients[i], "web-1").await;
            if firewall.unconfirmed.is_empty() && firewall.rules.len() == 3 {
                break;
            }
            assert!(Instant::now() < deadline, "replica {i}: {firewall:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut audit =
        cassette_e2e::AuditClient::new(cassette_e2e::channel(&replicas.replicas[0].target).await);
    let history = cassette_e2e::instance_events(&mut audit, "web-1").await;
    for revision in changes {
        let reverts = crate::confirm::reverts_of(&history, revision);
        assert_eq!(reverts.len(), 1, "revision {revision}: {history:?}");
    }
}

impl Replicas {
    /// Replica `i` started again on its own data directory (where it keeps
    /// its projection snapshot), expecting it to come up serving or, with
    /// `halted`, read-only (NOT_SERVING).
    async fn restart(&self, i: usize, halted: bool) -> RulesProcess {
        let data = self._dir.path().join(format!("replica-{i}"));
        let (listen, target) = (&self.replicas[i].listen, self.replicas[i].target.clone());
        let endpoints = self.cluster.endpoints().join(",");
        let args = ["--store", "etcd", "--etcd-endpoints", &endpoints];
        match halted {
            false => RulesProcess::spawn(&data, listen, target, &args).await,
            true => RulesProcess::spawn_halted(&data, listen, target, &args).await,
        }
    }

    /// Waits until replica `i`'s log says `said`.
    async fn says(&self, i: usize, said: &str) {
        let started = Instant::now();
        while !self.replicas[i].log().contains(said) {
            assert!(
                started.elapsed() < PATIENCE,
                "replica {i} never said {said:?}: {}",
                self.replicas[i].log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_start_from_their_projection_snapshot_and_replay_only_the_log_after_it() {
    if etcd::skip("replicas_start_from_their_projection_snapshot_and_replay_only_the_log_after_it")
    {
        return;
    }
    let mut replicas = Replicas::start(2).await;
    cassette_e2e::create_firewall(&mut replicas.clients[0], "web-1").await;
    let keyed = |port| pb::AddRuleRequest {
        request_id: format!("add-{port}"),
        ..add("web-1", port)
    };
    let mut first = None;
    for port in 5000..5010 {
        let added = replicas.clients[0]
            .add_rule(keyed(port))
            .await
            .expect("add on A")
            .into_inner();
        first.get_or_insert(added);
    }
    replicas.seen(1, "web-1", 11).await;
    assert!(replicas.replicas[0].terminate().success());
    let snapshot = replicas
        ._dir
        .path()
        .join("replica-0/etcd/projection.snapshot");
    assert!(
        snapshot.is_file(),
        "a replica's clean shutdown writes its projection snapshot"
    );
    // The tail, through the other replica while A is down.
    for port in 6000..6003 {
        replicas.clients[1]
            .add_rule(add("web-1", port))
            .await
            .expect("add on B");
    }

    let back = replicas.restart(0, false).await;
    let log = back.log();
    assert!(
        log.contains("started from the projection snapshot"),
        "{log}"
    );
    assert!(
        log.contains("events=3 "),
        "only the three records after it replayed: {log}"
    );
    let mut client = back.client().await;
    let on_a = cassette_e2e::get_firewall(&mut client, "web-1").await;
    let on_b = cassette_e2e::get_firewall(&mut replicas.clients[1], "web-1").await;
    assert_eq!(on_a.revision, 14);
    assert_eq!(
        on_a.rules, on_b.rules,
        "the snapshot and its tail fold to the log"
    );
    // Request ids came with the snapshot: a retry of a change before it is
    // answered as the change it was, not refused (port 5000 is taken) or
    // applied again.
    replicas.replicas[0] = back;
    replicas.clients[0] = client;
    let retried = replicas.clients[0]
        .add_rule(keyed(5000))
        .await
        .expect("a retry")
        .into_inner();
    assert_eq!(Some(retried), first, "the first answer");
    // It takes writes, which the other replica reads.
    let next = replicas.clients[0]
        .add_rule(add("web-1", 7000))
        .await
        .expect("add on A after its start from the snapshot")
        .into_inner()
        .revision;
    assert_eq!(next, 15);
    replicas.seen(1, "web-1", next).await;
    // And the walk of the log before the snapshot vouched for it.
    replicas
        .says(
            0,
            "the log up to the projection snapshot verifies and folds to it",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_from_its_snapshot_finds_a_record_changed_before_it_and_serves_read_only()
{
    if etcd::skip(
        "a_replica_started_from_its_snapshot_finds_a_record_changed_before_it_and_serves_read_only",
    ) {
        return;
    }
    let mut replicas = Replicas::start(1).await;
    cassette_e2e::create_firewall(&mut replicas.clients[0], "web-1").await;
    for port in 5000..5005 {
        replicas.clients[0]
            .add_rule(add("web-1", port))
            .await
            .expect("add");
    }
    assert!(replicas.replicas[0].terminate().success());
    let config = cassette_eventlog::etcd::EtcdConfig::new(replicas.cluster.endpoints());
    let log = cassette_eventlog::etcd::EtcdLog::connect(&config).expect("the log in etcd");
    cassette_eventlog::etcd::tamper::flip_bit(&log, 3)
        .await
        .expect("change record 3");

    // Its anchor (record 6) is intact: the replica starts from it, and the
    // walk of the log before it finds record 3 in the background.
    let back = replicas.restart(0, true).await;
    assert!(
        back.log().contains("started from the projection snapshot"),
        "{}",
        back.log()
    );
    let mut client = back.client().await;
    let refused = client
        .add_rule(add("web-1", 6000))
        .await
        .expect_err("read-only");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("verification at record 3"),
        "{}",
        refused.message()
    );
    // What is served is the history before the changed record.
    let served = cassette_e2e::get_firewall(&mut client, "web-1").await;
    assert_eq!(served.revision, 2, "records 1 and 2, folded again");
    drop(back);
    assert!(
        replicas
            ._dir
            .path()
            .join("replica-0/etcd/projection.snapshot.refused")
            .is_file(),
        "moved aside: the next start replays the log"
    );
}
