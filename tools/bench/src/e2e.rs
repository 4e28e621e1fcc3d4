//! `e2e` (root): an AddRule/UpdateRule call -> the enforcer's nftables
//! transaction in a network namespace -> its ack, seen by WaitForSync; and, for
//! comparison, what one `nft add element` process call costs on this machine.

use std::time::{Duration, Instant};

use anyhow::Context;
use cassette_proto::pb;
use cassette_proto::pb::firewall_service_client::FirewallServiceClient;
use cassette_proto::Target;
use cassette_rules::{Listener, LogConfig, RulesService};
use serde_json::json;
use tonic::transport::Channel;

use crate::plot::Series;
use crate::procs::{is_root, sibling_binary, Guarded, Netns};
use crate::stats::{percentile_ms, round3};
use crate::Report;

const INSTANCE: &str = "bench-1";
/// Rules added (and measured) before the rest of the changes toggle them.
const RULES: u32 = 50;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Changes to measure.
    #[arg(long, default_value_t = 1000)]
    changes: u32,
    /// Serve and call over TLS, the enforcer with its certificate (what security costs).
    #[arg(long)]
    tls: bool,
    /// Run the enforcer without its state file (what saving before each ack costs).
    #[arg(long)]
    no_state: bool,
    /// Sign the log's appends and verify them, as a secured service does.
    #[arg(long)]
    signed: bool,
    /// Split a change's time into its phases (the writer's decision and
    /// append, the stream, the enforcer's fold, kernel transaction and save,
    /// the rest): means over the run, from the service's metrics and the
    /// enforcer's acks, printed as a table and added to the JSON line.
    #[arg(long)]
    breakdown: bool,
}

pub async fn run(options: Options) -> anyhow::Result<Report> {
    anyhow::ensure!(
        is_root(),
        "e2e needs root: it creates a network namespace and programs nftables"
    );
    let enforcer_bin = sibling_binary("cassette-enforcer")?;
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("rules.sock");
    let tls = options.tls.then(crate::tls::BenchTls::new).transpose()?;
    let signing = crate::signing::maybe(options.signed, &dir.path().join("keys"))?;
    let mut service =
        RulesService::open(&LogConfig::sled(dir.path().join("data")).signed(signing)).await?;
    let mut enforcer_tls = Vec::new();
    let mut client_tls = None;
    if let Some(tls) = &tls {
        service = service.with_security(tls.security()?);
        enforcer_tls = tls.enforcer_args(INSTANCE)?;
        client_tls = Some(tls.client()?);
    }
    let metrics = service.metrics();
    let listener = tokio::net::UnixListener::bind(&socket)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(service.serve_all(vec![Listener::Unix(listener)], async {
        let _ = stopped.await;
    }));

    let netns = Netns::create(format!("cfbench{}", std::process::id()))?;
    let _enforcer = Guarded(
        netns
            .command(enforcer_bin.to_str().context("path is not UTF-8")?)
            .args(["--rules", &format!("unix:{}", socket.display())])
            .args(["--instance", INSTANCE, "--backend", "nft", "--log", "warn"])
            .args(&enforcer_tls)
            .args(state_args(dir.path(), options.no_state))
            .spawn()?,
    );
    let mut client = FirewallServiceClient::new(
        Target::Unix(socket.clone())
            .connect_with(client_tls.as_ref())
            .await?,
    );
    client
        .create_firewall(pb::CreateFirewallRequest {
            instance_id: INSTANCE.into(),
            request_id: String::new(),
            ..Default::default()
        })
        .await?;
    wait(&mut client, 0).await?;

    let mut latencies = Vec::with_capacity(options.changes as usize);
    let mut calls = Duration::ZERO;
    let mut rule_ids = Vec::new();
    let before = Histograms::read(&metrics.render());
    for i in 0..options.changes {
        let started = Instant::now();
        let revision = if i < RULES {
            let port = 20_000 + i;
            let firewall = client
                .add_rule(pb::AddRuleRequest {
                    instance_id: INSTANCE.into(),
                    port,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let rule = firewall
                .rules
                .iter()
                .find(|r| r.port == port)
                .context("rule")?;
            rule_ids.push(rule.id.clone());
            firewall.revision
        } else {
            let k = i - RULES;
            client
                .update_rule(pb::UpdateRuleRequest {
                    instance_id: INSTANCE.into(),
                    rule_id: rule_ids[(k % RULES) as usize].clone(),
                    enabled: Some((k / RULES) % 2 == 1),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .revision
        };
        calls += started.elapsed();
        let status = wait(&mut client, revision).await?;
        anyhow::ensure!(
            status.state == pb::SyncState::InSync as i32 || status.applied_revision >= revision,
            "revision {revision} not applied: {status:?}"
        );
        latencies.push(started.elapsed());
    }

    let phases = Histograms::read(&metrics.render()).since(&before);
    let (nft_call, netns_exec) = process_costs(&netns)?;
    let _ = stop.send(());
    server.await??;
    eprintln!("e2e: {} changes call -> nftables -> ack", latencies.len());
    let total: Duration = latencies.iter().sum();
    let breakdown = options.breakdown.then(|| {
        let changes = latencies.len().max(1) as f64;
        breakdown(
            &phases,
            calls.as_secs_f64() * 1e3 / changes,
            total.as_secs_f64() * 1e3 / changes,
        )
    });
    let json = json!({
        "breakdown": breakdown,
        "bench": "e2e",
        "changes": latencies.len(),
        "tls": options.tls,
        "p50_ms": round3(percentile_ms(&mut latencies, 50.0)),
        "p99_ms": round3(percentile_ms(&mut latencies, 99.0)),
        "max_ms": round3(percentile_ms(&mut latencies, 100.0)),
        "nft_add_element_process_ms": round3(nft_call),
        "netns_exec_process_ms": round3(netns_exec),
    });
    Ok(Report::new(json).series(Series::new("call -> nftables -> ack", latencies)))
}

async fn wait(
    client: &mut FirewallServiceClient<Channel>,
    revision: u64,
) -> anyhow::Result<pb::SyncStatus> {
    Ok(client
        .wait_for_sync(pb::WaitForSyncRequest {
            instance_id: INSTANCE.into(),
            revision,
            timeout: Some(Duration::from_secs(30).try_into()?),
            ..Default::default()
        })
        .await?
        .into_inner())
}

/// Median milliseconds of one `nft add element` process (in the namespace, on
/// a scratch table of its own) and of `ip netns exec … true` alone.
fn process_costs(netns: &Netns) -> anyhow::Result<(f64, f64)> {
    let setup = netns
        .command("nft")
        .args(["add table inet scratch ; add set inet scratch ports { type inet_service ; }"])
        .status()?;
    anyhow::ensure!(setup.success(), "cannot create the scratch table");
    let mut nft = Vec::new();
    let mut exec = Vec::new();
    for i in 0..20u32 {
        let started = Instant::now();
        let ok = netns
            .command("nft")
            .args([
                "add",
                "element",
                "inet",
                "scratch",
                "ports",
                &format!("{{ {} }}", 30_000 + i),
            ])
            .status()?
            .success();
        anyhow::ensure!(ok, "nft add element failed");
        nft.push(started.elapsed());
        let started = Instant::now();
        netns.command("true").status()?;
        exec.push(started.elapsed());
    }
    Ok((
        percentile_ms(&mut nft, 50.0),
        percentile_ms(&mut exec, 50.0),
    ))
}

/// The enforcer's state file in the benchmark's temporary directory, or none.
fn state_args(dir: &std::path::Path, no_state: bool) -> Vec<std::ffi::OsString> {
    if no_state {
        vec!["--no-state".into()]
    } else {
        vec!["--state-dir".into(), dir.join("enforcer-state").into()]
    }
}

/// The sums and counts of the service's histograms (OpenMetrics text).
#[derive(Debug, Default)]
struct Histograms(std::collections::HashMap<String, (f64, f64)>);

impl Histograms {
    fn read(text: &str) -> Self {
        let mut totals = std::collections::HashMap::<String, (f64, f64)>::new();
        for line in text.lines() {
            let Some((name, value)) = line.split_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            if let Some(histogram) = name.strip_suffix("_sum") {
                totals.entry(histogram.to_owned()).or_default().0 = value;
            } else if let Some(histogram) = name.strip_suffix("_count") {
                totals.entry(histogram.to_owned()).or_default().1 = value;
            }
        }
        Self(totals)
    }

    /// What was observed after `before`.
    fn since(&self, before: &Self) -> Self {
        Self(
            self.0
                .iter()
                .map(|(name, (sum, count))| {
                    let (sum0, count0) = before.0.get(name).copied().unwrap_or_default();
                    (name.clone(), (sum - sum0, count - count0))
                })
                .collect(),
        )
    }

    /// The mean of `cassette_rules_<name>_seconds`, in milliseconds.
    fn mean_ms(&self, name: &str) -> f64 {
        match self.0.get(&format!("cassette_rules_{name}_seconds")) {
            Some((sum, count)) if *count > 0.0 => sum / count * 1e3,
            _ => f64::NAN,
        }
    }
}

/// One change's time by phase (means in milliseconds), printed as a table.
fn breakdown(phases: &Histograms, call_ms: f64, total_ms: f64) -> serde_json::Value {
    let ack = phases.mean_ms("ack_latency");
    let rows = [
        (
            "call answered (client: request -> commit -> answer)",
            "call",
            call_ms,
        ),
        (
            "  decide (the writer, against the projection)",
            "decide",
            phases.mean_ms("commit_decide"),
        ),
        (
            "  append + fsync (the log)",
            "append",
            phases.mean_ms("commit_append"),
        ),
        (
            "commit -> events sent on the enforcer's stream",
            "send",
            phases.mean_ms("sync_send"),
        ),
        (
            "  of which after the append",
            "publish",
            phases.mean_ms("sync_send") - phases.mean_ms("commit_append"),
        ),
        (
            "the two hops (sent -> ack, less the enforcer)",
            "transport",
            phases.mean_ms("sync_transport"),
        ),
        (
            "enforcer, arrival -> ack",
            "enforcer",
            phases.mean_ms("enforcer"),
        ),
        ("  fold", "fold", phases.mean_ms("enforcer_fold")),
        (
            "  kernel transaction",
            "kernel",
            phases.mean_ms("enforcer_apply"),
        ),
        (
            "  save (journal + fdatasync, beside the kernel)",
            "save",
            phases.mean_ms("enforcer_save"),
        ),
        (
            "commit -> ack received (the service's clock)",
            "ack_latency",
            ack,
        ),
        (
            "end to end (client: call -> WaitForSync answered)",
            "end_to_end",
            total_ms,
        ),
        (
            "  rest: the call's way in, WaitForSync, waking it",
            "rest",
            total_ms - ack,
        ),
    ];
    eprintln!("{:<56} {:>9}", "phase (mean per change)", "ms");
    let mut json = serde_json::Map::new();
    for (label, key, ms) in rows {
        eprintln!("{label:<56} {ms:>9.3}");
        json.insert(key.into(), json!(round3(ms)));
    }
    serde_json::Value::Object(json)
}
