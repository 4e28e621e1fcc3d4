//! `append`: N concurrent clients, each on its own instance, send AddRule and
//! UpdateRule calls as fast as they are answered; every call appends one event
//! that is durable before its answer.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use cassette_proto::pb;
use cassette_proto::pb::firewall_service_client::FirewallServiceClient;
use cassette_proto::Target;
use cassette_rules::{LogConfig, RulesService};
use serde_json::json;
use tonic::transport::Channel;

use crate::plot::Series;
use crate::stats::{percentile_ms, round3};
use crate::Report;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: u32,
    /// How long to measure, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Custom rules each client adds to its firewall before it starts toggling
    /// them. Every answer carries the whole firewall, so this sets the answer size.
    #[arg(long, default_value_t = 10)]
    rules_per_firewall: u32,
    /// HTTP/2 connections the clients share.
    #[arg(long, default_value_t = 4)]
    connections: u32,
    /// A running rules service to measure instead of an in-process one on a temp dir.
    #[arg(long, conflicts_with = "tls")]
    target: Option<SocketAddr>,
    /// Serve and call over TLS with a client certificate (what security costs).
    #[arg(long)]
    tls: bool,
    /// Keep the in-process service's log in this etcd cluster (client URLs,
    /// comma-separated) instead of sled, under a fresh prefix.
    #[arg(long, value_delimiter = ',', conflicts_with = "target")]
    etcd_endpoints: Vec<String>,
    /// Sign the log's appends and verify them, as a secured service does.
    #[arg(long, conflicts_with = "target")]
    signed: bool,
    /// How the in-process service stores its records: compact or full.
    #[arg(long, default_value = "compact", conflicts_with = "target")]
    record_encoding: cassette_eventlog::RecordEncoding,
}

pub async fn run(options: Options) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    let tls = options.tls.then(crate::tls::BenchTls::new).transpose()?;
    let (addr, stop) = match options.target {
        Some(addr) => (addr, None),
        None => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let signing = crate::signing::maybe(options.signed, &dir.path().join("keys"))?;
            let config = if options.etcd_endpoints.is_empty() {
                LogConfig::sled(dir.path().join("data"))
            } else {
                let mut config =
                    cassette_eventlog::etcd::EtcdConfig::new(options.etcd_endpoints.clone());
                config.prefix = format!("/cassette-bench/{}", uuid::Uuid::now_v7().simple());
                LogConfig::etcd(config)
            };
            let config = LogConfig {
                record_encoding: options.record_encoding,
                ..config.signed(signing)
            };
            let mut service = RulesService::open(&config).await?;
            if let Some(tls) = &tls {
                service = service.with_security(tls.security()?);
            }
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(service.serve(listener, async {
                let _ = stopped.await;
            }));
            (addr, Some((stop, task)))
        }
    };
    let (target, client_tls) = match &tls {
        Some(tls) => (Target::Http(format!("https://{addr}")), Some(tls.client()?)),
        None => (Target::Http(format!("http://{addr}")), None),
    };
    let mut channels = Vec::new();
    for _ in 0..options.connections.max(1) {
        channels.push(
            target
                .connect_with(client_tls.as_ref())
                .await
                .with_context(|| format!("connect to {target}"))?,
        );
    }

    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..options.clients {
        let client = FirewallServiceClient::new(channels[c as usize % channels.len()].clone());
        let instance = format!("bench-{}-{c}", &run_id[..12]);
        clients.push(tokio::spawn(client_loop(
            client,
            instance,
            options.rules_per_firewall.max(1),
            deadline,
        )));
    }
    let mut latencies = Vec::new();
    for client in clients {
        latencies.extend(client.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some((stop, task)) = stop {
        let _ = stop.send(());
        task.await??;
    }

    let ops = latencies.len();
    eprintln!(
        "append: {} clients, {ops} durable events in {elapsed:.2}s",
        options.clients
    );
    let json = json!({
        "bench": "append",
        "clients": options.clients,
        "connections": options.connections,
        "tls": options.tls,
        "store": if options.etcd_endpoints.is_empty() { "sled" } else { "etcd" },
        "record_encoding": options.target.is_none().then(|| options.record_encoding.to_string()),
        "rules_per_firewall": options.rules_per_firewall + 3,
        "events": ops,
        "seconds": round3(elapsed),
        "events_per_sec": (ops as f64 / elapsed).round(),
        "p50_ms": round3(percentile_ms(&mut latencies, 50.0)),
        "p99_ms": round3(percentile_ms(&mut latencies, 99.0)),
    });
    let label = format!("{} clients, durable appends", options.clients);
    Ok(Report::new(json).series(Series::new(label, latencies)))
}

/// Creates the client's firewall, adds `rules` custom rules, then toggles
/// them round-robin until the deadline. Returns each mutation's latency.
async fn client_loop(
    mut client: FirewallServiceClient<Channel>,
    instance: String,
    rules: u32,
    deadline: Instant,
) -> anyhow::Result<Vec<Duration>> {
    client
        .create_firewall(pb::CreateFirewallRequest {
            instance_id: instance.clone(),
            request_id: String::new(),
            ..Default::default()
        })
        .await?;
    let mut rule_ids = Vec::new();
    let mut latencies = Vec::new();
    let mut k: u32 = 0;
    while Instant::now() < deadline {
        let sent = Instant::now();
        if k < rules {
            let port = 10_000 + k;
            let firewall = client
                .add_rule(pb::AddRuleRequest {
                    instance_id: instance.clone(),
                    port,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let id = firewall
                .rules
                .iter()
                .find(|r| r.port == port)
                .map(|r| r.id.clone())
                .context("added rule missing from the answer")?;
            rule_ids.push(id);
        } else {
            let i = (k % rules) as usize;
            let pass = k / rules;
            client
                .update_rule(pb::UpdateRuleRequest {
                    instance_id: instance.clone(),
                    rule_id: rule_ids[i].clone(),
                    enabled: Some(pass % 2 == 0),
                    ..Default::default()
                })
                .await?;
        }
        latencies.push(sent.elapsed());
        k += 1;
    }
    Ok(latencies)
}
