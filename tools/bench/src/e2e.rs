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

use crate::procs::{is_root, sibling_binary, Guarded, Netns};
use crate::stats::{percentile_ms, round3};

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
}

pub async fn run(options: Options) -> anyhow::Result<serde_json::Value> {
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
        })
        .await?;
    wait(&mut client, 0).await?;

    let mut latencies = Vec::with_capacity(options.changes as usize);
    let mut rule_ids = Vec::new();
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
        let status = wait(&mut client, revision).await?;
        anyhow::ensure!(
            status.state == pb::SyncState::InSync as i32 || status.applied_revision >= revision,
            "revision {revision} not applied: {status:?}"
        );
        latencies.push(started.elapsed());
    }

    let (nft_call, netns_exec) = process_costs(&netns)?;
    let _ = stop.send(());
    server.await??;
    eprintln!("e2e: {} changes call -> nftables -> ack", latencies.len());
    Ok(json!({
        "bench": "e2e",
        "changes": latencies.len(),
        "tls": options.tls,
        "p50_ms": round3(percentile_ms(&mut latencies, 50.0)),
        "p99_ms": round3(percentile_ms(&mut latencies, 99.0)),
        "max_ms": round3(percentile_ms(&mut latencies, 100.0)),
        "nft_add_element_process_ms": round3(nft_call),
        "netns_exec_process_ms": round3(netns_exec),
    }))
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
