//! `fanout`: N simulated enforcers (the real enforcement loop with an
//! in-memory kernel, real gRPC streams) on one real rules service process,
//! or spread over several replicas on one etcd log (`--replicas`,
//! `--etcd-endpoints`); R changes a second to random instances through the
//! first replica, each timed from the call until WaitForSync there reports
//! its ack (received by whichever replica the enforcer streams to). Also the
//! services' memory per enforcer.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cassette_enforcement::{Config, Enforcer, MemoryKernel};
use cassette_model::InstanceId;
use cassette_proto::pb;
use cassette_proto::pb::firewall_service_client::FirewallServiceClient;
use cassette_proto::Target;
use cassette_ruleset::TableName;
use serde_json::json;
use tokio::sync::Semaphore;
use tonic::transport::Channel;

use crate::plot::Series;
use crate::procs::{cpu_seconds, rss_kib, sibling_binary, Guarded};
use crate::stats::{percentile_ms, round3};
use crate::Report;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Simulated enforcers, one instance each.
    #[arg(long, default_value_t = 1000)]
    enforcers: u32,
    /// Changes per second, to random instances.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// How long to send changes, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// HTTP/2 connections the enforcers' streams share (spread over the replicas).
    #[arg(long, default_value_t = 100)]
    connections: u32,
    /// Rules replicas (more than one needs --etcd-endpoints).
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Keep the log in this etcd cluster (client URLs, comma-separated) under
    /// a fresh prefix, instead of sled.
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// With replicas on etcd: they share their enforcers' acks through etcd
    /// (`--replica-address off`, one etcd write per ack) instead of replica
    /// to replica, for comparison.
    #[arg(long)]
    share_through_etcd: bool,
    /// Each change is one call that answers once the change is acknowledged
    /// (UpdateRule with wait_for_sync) instead of UpdateRule, then
    /// WaitForSync: half the calls. The commit alone, and the ack on the
    /// replica the enforcer streams to, are then not timed apart.
    #[arg(long)]
    wait_in_call: bool,
    /// Threads the simulated enforcers run on, each a single-threaded
    /// runtime with its share of the connections (a real enforcer's runtime
    /// is single-threaded too).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    enforcer_threads: u32,
}

pub async fn run(options: Options) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    anyhow::ensure!(
        options.replicas <= 1 || !options.etcd_endpoints.is_empty(),
        "--replicas above 1 share a log: give --etcd-endpoints"
    );
    let prefix = format!("/cassette-bench/{}", uuid::Uuid::now_v7().simple());
    let mut replicas = Vec::new();
    let mut targets = Vec::new();
    for r in 0..options.replicas.max(1) {
        let addr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?
        };
        let mut command = std::process::Command::new(sibling_binary("cassette-rules")?);
        command.args([
            "--listen",
            &addr.to_string(),
            "--log",
            "warn",
            "--http-listen",
            "off",
        ]);
        if options.etcd_endpoints.is_empty() {
            command.arg("--data-dir").arg(dir.path().join("data"));
        } else {
            command
                .args([
                    "--store",
                    "etcd",
                    "--etcd-prefix",
                    &prefix,
                    "--etcd-endpoints",
                ])
                .arg(options.etcd_endpoints.join(","))
                .arg("--data-dir")
                .arg(dir.path().join(format!("unused-{r}")));
            if options.share_through_etcd {
                command.args(["--replica-address", "off"]);
            }
        }
        replicas.push(Guarded(command.spawn()?));
        targets.push(Target::Http(format!("http://{addr}")));
    }
    let pids: Vec<u32> = replicas.iter().map(|r| r.0.id()).collect();
    let rss = || -> anyhow::Result<u64> { pids.iter().map(|p| rss_kib(*p)).sum() };
    // CPU used by the services, and by this process (the enforcers and the
    // client): what the changes cost the machine.
    let cpu = || -> anyhow::Result<(f64, f64)> {
        let services = pids
            .iter()
            .map(|p| cpu_seconds(*p))
            .sum::<anyhow::Result<f64>>()?;
        Ok((services, cpu_seconds(std::process::id())?))
    };
    let target = targets[0].clone();
    let control = connect_retrying(&target).await?;
    let client = FirewallServiceClient::new(control.clone());
    // A client of each replica, to see when the replica an instance's
    // enforcer streams to has its ack (before any other replica can).
    let mut owners = vec![client.clone()];
    for other in &targets[1..] {
        owners.push(FirewallServiceClient::new(connect_retrying(other).await?));
    }
    let rss_idle = rss()?;

    let n = options.enforcers.max(1);
    let instances: Vec<String> = (0..n).map(|i| format!("fan-{i}")).collect();
    let created = Instant::now();
    run_all(&instances, 64, |id| {
        let mut client = client.clone();
        async move {
            client
                .create_firewall(pb::CreateFirewallRequest {
                    instance_id: id,
                    request_id: String::new(),
                    ..Default::default()
                })
                .await
                .map(drop)
        }
    })
    .await?;
    eprintln!(
        "fanout: created {n} firewalls in {:.1}s",
        created.elapsed().as_secs_f64()
    );

    // Each replica gets its share of the connections; enforcer i streams to
    // replica i % replicas, on its connection there (i / replicas) %
    // per_replica, which belongs to thread (that connection) % threads.
    let per_replica = (options.connections / options.replicas.max(1)).max(1) as usize;
    let threads = options.enforcer_threads.max(1) as usize;
    let instances = Arc::new(instances);
    let mut enforcers = Vec::new();
    for thread in 0..threads {
        enforcers.push(EnforcerThread::spawn(
            thread,
            threads,
            per_replica,
            targets.clone(),
            instances.clone(),
        )?);
    }
    for enforcer in &mut enforcers {
        enforcer.connected().await?;
    }
    let rss_before = rss()?;
    let started = Instant::now();
    for enforcer in &mut enforcers {
        enforcer.go();
    }
    run_all(&instances, 64, |id| {
        let mut client = client.clone();
        async move { wait(&mut client, id, 1).await.map(drop) }
    })
    .await?;
    let connect_seconds = started.elapsed().as_secs_f64();
    let rss_connected = rss()?;
    eprintln!("fanout: {n} enforcers connected and synced in {connect_seconds:.1}s");

    // Changes at a fixed rate; each toggles default-ssh on a random instance.
    let toggles: Arc<Vec<AtomicU32>> = Arc::new((0..n).map(|_| AtomicU32::new(0)).collect());
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(
        1.0 / f64::from(options.rate.max(1)),
    ));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let cpu_before = cpu()?;
    let deadline = Instant::now() + Duration::from_secs(options.duration);
    let mut random = Random::seeded();
    let owner_count = owners.len();
    // Each change reports on a channel and its task ends there: holding the
    // tasks' JoinHandles kept every finished task's memory until the end of
    // the run (in a saturated run, 12% of the bench's samples were the
    // kernel clearing fresh pages for it).
    let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
    let mut sent = 0;
    while Instant::now() < deadline {
        ticker.tick().await;
        let i = (random.next() % u64::from(n)) as usize;
        let id = instances[i].clone();
        let toggles = toggles.clone();
        let mut client = client.clone();
        let mut owner = owners[i % owners.len()].clone();
        let wait_in_call = options.wait_in_call;
        let change = async move {
            let flip = toggles[i].fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let firewall = client
                .update_rule(pb::UpdateRuleRequest {
                    instance_id: id.clone(),
                    rule_id: "default-ssh".into(),
                    enabled: Some(flip % 2 == 1),
                    wait_for_sync: wait_in_call
                        .then(|| Duration::from_secs(60).try_into().ok())
                        .flatten(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let revision = firewall.revision;
            let committed = started.elapsed();
            if wait_in_call {
                let applied = firewall.sync.map_or(0, |s| s.applied_revision);
                anyhow::ensure!(
                    applied >= revision,
                    "{id}: answered before revision {revision} was acknowledged (applied {applied})"
                );
                // Acknowledged where it was asked (through the replica
                // stream, if the enforcer streams to another): where it
                // streams is not timed apart.
                return anyhow::Ok((i, committed, committed, committed));
            }
            if i % owner_count == 0 {
                wait(&mut client, id, revision).await?;
                let acked = started.elapsed();
                return anyhow::Ok((i, committed, acked, acked));
            }
            // Through another replica: also ask the one the enforcer streams to.
            let here = async {
                wait(&mut owner, id.clone(), revision).await?;
                anyhow::Ok(started.elapsed())
            };
            let there = async {
                wait(&mut client, id.clone(), revision).await?;
                anyhow::Ok(started.elapsed())
            };
            let (owned, acked) = tokio::try_join!(here, there)?;
            anyhow::Ok((i, committed, owned, acked))
        };
        let done = done.clone();
        tokio::spawn(async move {
            let _ = done.send(change.await);
        });
        sent += 1;
    }
    drop(done);
    let mut latencies = Vec::with_capacity(sent);
    let mut commits = Vec::with_capacity(sent);
    // Acks received by the replica the changes went through, and by others.
    let (mut local, mut remote, mut owned) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(change) = finished.recv().await {
        let (i, committed, on_owner, acked) = change?;
        latencies.push(acked);
        commits.push(committed);
        if i % targets.len() == 0 {
            local.push(acked);
        } else {
            remote.push(acked);
            owned.push(on_owner);
        }
    }
    anyhow::ensure!(
        latencies.len() == sent,
        "{} of {sent} changes never reported (a task panicked)",
        sent - latencies.len()
    );
    let elapsed = Duration::from_secs(options.duration).as_secs_f64();
    let cpu_after = cpu()?;
    let per_change_ms = |seconds: f64| round3(seconds * 1000.0 / sent.max(1) as f64);
    let rss_loaded = rss()?;
    drop(enforcers);
    drop(replicas);

    let per_enforcer = (rss_connected.saturating_sub(rss_before)) as f64 / f64::from(n);
    let json = json!({
        "bench": "fanout",
        "enforcers": n,
        "replicas": targets.len(),
        "store": if options.etcd_endpoints.is_empty() { "sled" } else { "etcd" },
        "calls_per_change": if options.wait_in_call { 1 } else { 2 },
        "acks_shared": match (options.etcd_endpoints.is_empty(), options.share_through_etcd) {
            (true, _) => "none",
            (false, true) => "etcd",
            (false, false) => "replica to replica",
        },
        "connections": options.connections,
        "rate": options.rate,
        "changes": sent,
        "changes_per_sec": (sent as f64 / elapsed).round(),
        "p50_ms": round3(percentile_ms(&mut latencies, 50.0)),
        "p99_ms": round3(percentile_ms(&mut latencies, 99.0)),
        "commit_p50_ms": round3(percentile_ms(&mut commits, 50.0)),
        "commit_p99_ms": round3(percentile_ms(&mut commits, 99.0)),
        "acked_on_first_replica_p99_ms": round3(percentile_ms(&mut local, 99.0)),
        "acked_on_other_replicas_p99_ms": round3(percentile_ms(&mut remote, 99.0)),
        // The same changes, as the replica their enforcer streams to saw the ack.
        "acked_where_streamed_p99_ms": round3(percentile_ms(&mut owned, 99.0)),
        "acked_on_other_replicas_p50_ms": round3(percentile_ms(&mut remote, 50.0)),
        "acked_where_streamed_p50_ms": round3(percentile_ms(&mut owned, 50.0)),
        "connect_and_sync_seconds": round3(connect_seconds),
        "service_rss_idle_kib": rss_idle,
        "service_rss_connected_kib": rss_connected,
        "service_rss_loaded_kib": rss_loaded,
        "service_kib_per_enforcer": round3(per_enforcer),
        // From the first change to the last ack.
        "service_cpu_ms_per_change": per_change_ms(cpu_after.0 - cpu_before.0),
        "bench_cpu_ms_per_change": per_change_ms(cpu_after.1 - cpu_before.1),
    });
    Ok(Report::new(json)
        .series(Series::new("change -> acked (WaitForSync)", latencies))
        .series(Series::new("change -> committed", commits)))
}

/// A thread of simulated enforcers: a single-threaded runtime with its
/// share of the connections and the enforcers on them. Where the enforcers
/// shared the bench's work-stealing pool, each event's wake-ups crossed
/// between its threads, which a real enforcer's do not; the machine's two
/// cores are what the service is measured on, so the load should cost no
/// more than it must. Dropped: its enforcers stop with its runtime.
struct EnforcerThread {
    connected: Option<tokio::sync::oneshot::Receiver<anyhow::Result<()>>>,
    go: Option<tokio::sync::oneshot::Sender<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EnforcerThread {
    fn spawn(
        thread: usize,
        threads: usize,
        per_replica: usize,
        targets: Vec<Target>,
        instances: Arc<Vec<String>>,
    ) -> anyhow::Result<Self> {
        let (connected_tx, connected) = tokio::sync::oneshot::channel();
        let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = std::thread::Builder::new()
            .name(format!("enforcers-{thread}"))
            .spawn(move || {
                runtime.block_on(async move {
                    // This thread's connections, and the enforcers on them.
                    let preparing = async {
                        let mut channels = std::collections::HashMap::new();
                        for (replica, target) in targets.iter().enumerate() {
                            for index in (thread..per_replica).step_by(threads) {
                                channels.insert((replica, index), target.connect().await?);
                            }
                        }
                        let mut enforcers = Vec::new();
                        for (i, id) in instances.iter().enumerate() {
                            let replica = i % targets.len();
                            let index = (i / targets.len()) % per_replica;
                            let Some(channel) = channels.get(&(replica, index)) else {
                                continue; // another thread's
                            };
                            enforcers.push(
                                simulated(&targets[replica], id, &format!("sim-{i}"))?
                                    .with_channel(channel.clone()),
                            );
                        }
                        anyhow::Ok(enforcers)
                    };
                    let enforcers = match preparing.await {
                        Ok(enforcers) => {
                            if connected_tx.send(Ok(())).is_err() {
                                return;
                            }
                            enforcers
                        }
                        Err(error) => {
                            let _ = connected_tx.send(Err(error));
                            return;
                        }
                    };
                    if go_rx.await.is_err() {
                        return;
                    }
                    for enforcer in enforcers {
                        tokio::spawn(enforcer.run(std::future::pending()));
                    }
                    let _ = stop_rx.await;
                });
            })?;
        Ok(Self {
            connected: Some(connected),
            go: Some(go),
            stop: Some(stop),
            thread: Some(handle),
        })
    }

    /// Once its connections are up and its enforcers made.
    async fn connected(&mut self) -> anyhow::Result<()> {
        let connected = self.connected.take().context("asked twice")?;
        connected
            .await
            .context("an enforcer thread ended while connecting")?
    }

    /// Starts its enforcers.
    fn go(&mut self) {
        if let Some(go) = self.go.take() {
            let _ = go.send(());
        }
    }
}

impl Drop for EnforcerThread {
    fn drop(&mut self) {
        drop(self.go.take());
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn connect_retrying(target: &Target) -> anyhow::Result<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match target.connect().await {
            Ok(channel) => return Ok(channel),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A simulated enforcer for `instance`, streaming from `rules`, its kernel
/// in memory; it neither repairs nor reports on its own.
pub(crate) fn simulated(
    rules: &Target,
    instance: &str,
    enforcer_id: &str,
) -> anyhow::Result<Enforcer<MemoryKernel>> {
    let config = Config {
        rules: vec![rules.clone()],
        keepalive: Default::default(),
        tls: Default::default(),
        instance: InstanceId::parse(instance)?,
        enforcer_id: enforcer_id.to_owned(),
        table: TableName::default(),
        refresh_interval: Duration::from_secs(3600),
        report_interval: Duration::from_secs(3600),
        state_dir: None,
    };
    Ok(Enforcer::new(config, MemoryKernel::default()))
}

pub(crate) async fn wait(
    client: &mut FirewallServiceClient<Channel>,
    instance_id: String,
    revision: u64,
) -> Result<pb::SyncStatus, tonic::Status> {
    client
        .wait_for_sync(pb::WaitForSyncRequest {
            instance_id,
            revision,
            timeout: Duration::from_secs(60).try_into().ok(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// Runs `call` for every item, `concurrency` at a time; fails on the first error.
async fn run_all<F, Fut>(items: &[String], concurrency: usize, call: F) -> anyhow::Result<()>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(items.len());
    for item in items {
        let permit = permits.clone().acquire_owned().await?;
        let call = call(item.clone());
        tasks.push(tokio::spawn(async move {
            let result = call.await;
            drop(permit);
            result
        }));
    }
    for task in tasks {
        task.await?.context("call failed")?;
    }
    Ok(())
}

/// xorshift64*: enough randomness to pick instances, no dependency.
struct Random(u64);

impl Random {
    fn seeded() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9E37_79B9, |d| d.as_nanos() as u64);
        Random(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}
