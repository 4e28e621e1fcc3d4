//! `lag`: two rules replicas (in process, on real sockets) on one log in an
//! etcd cluster. Changes are made through A one after another; the time from
//! A's answer until B's ListEvents follow stream delivers the same event is
//! how far B's projection trails the commit. A simulated enforcer streams
//! from B; the time from A's answer until WaitForSync on A reports the
//! change applied is how long an ack received by B takes to show on A
//! (through B's stream to the enforcer, its ack, and the shared sync state).

use std::time::{Duration, Instant};

use anyhow::Context;
use cassette_eventlog::etcd::EtcdConfig;
use cassette_proto::pb;
use cassette_proto::pb::audit_service_client::AuditServiceClient;
use cassette_proto::pb::firewall_service_client::FirewallServiceClient;
use cassette_proto::Target;
use cassette_rules::{LogConfig, RulesService};
use serde_json::json;

use crate::fanout::{simulated, wait};
use crate::plot::Series;
use crate::stats::{percentile_ms, round3};
use crate::Report;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Client URLs of the etcd cluster (scripts/etcd-cluster.sh runs one).
    #[arg(long, value_delimiter = ',', required = true)]
    etcd_endpoints: Vec<String>,
    /// Changes made through replica A.
    #[arg(long, default_value_t = 1000)]
    changes: u32,
}

pub async fn run(options: Options) -> anyhow::Result<Report> {
    let mut config = EtcdConfig::new(options.etcd_endpoints.clone());
    config.prefix = format!("/cassette-bench/{}", uuid::Uuid::now_v7().simple());
    let mut replicas = vec![];
    let mut stops = vec![];
    for _ in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let service = RulesService::open(&LogConfig::etcd(config.clone())).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(service.serve(listener, async {
            let _ = stopped.await;
        }));
        stops.push(stop);
        replicas.push(Target::Http(format!("http://{addr}")));
    }
    let mut a = FirewallServiceClient::new(replicas[0].connect_with(None).await.context("A")?);
    let mut b = AuditServiceClient::new(replicas[1].connect_with(None).await.context("B")?);
    a.create_firewall(pb::CreateFirewallRequest {
        instance_id: "lag-1".into(),
        request_id: String::new(),
        ..Default::default()
    })
    .await?;
    let mut follow = b
        .list_events(pb::ListEventsRequest {
            instance_id: "lag-1".into(),
            follow: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    // The follow stream starts with the history: the creation.
    follow.message().await?.context("the creation event")?;
    let enforcer = simulated(&replicas[1], "lag-1", "lag-enforcer")?;
    let enforcer = tokio::spawn(enforcer.run(std::future::pending()));
    wait(&mut a, "lag-1".into(), 1).await?;
    let mut lags = Vec::with_capacity(options.changes as usize);
    let mut acks = Vec::with_capacity(options.changes as usize);
    for i in 0..options.changes {
        let answer = a
            .update_rule(pb::UpdateRuleRequest {
                instance_id: "lag-1".into(),
                rule_id: "default-ssh".into(),
                enabled: Some(i % 2 == 1),
                ..Default::default()
            })
            .await?
            .into_inner();
        let answered = Instant::now();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), follow.message())
                .await
                .context("B never delivered the change")??
                .context("B's follow stream ended")?;
            if event.revision >= answer.revision {
                break;
            }
        }
        lags.push(answered.elapsed());
        let synced = wait(&mut a, "lag-1".into(), answer.revision).await?;
        anyhow::ensure!(
            synced.applied_revision >= answer.revision,
            "WaitForSync on A: {synced:?}"
        );
        acks.push(answered.elapsed());
    }
    enforcer.abort();
    for stop in stops {
        let _ = stop.send(());
    }
    let json = json!({
        "bench": "lag",
        "changes": options.changes,
        "p50_ms": round3(percentile_ms(&mut lags, 50.0)),
        "p99_ms": round3(percentile_ms(&mut lags, 99.0)),
        "max_ms": round3(percentile_ms(&mut lags, 100.0)),
        "applied_on_b_seen_on_a_p50_ms": round3(percentile_ms(&mut acks, 50.0)),
        "applied_on_b_seen_on_a_p99_ms": round3(percentile_ms(&mut acks, 99.0)),
        "applied_on_b_seen_on_a_max_ms": round3(percentile_ms(&mut acks, 100.0)),
    });
    Ok(Report::new(json)
        .series(Series::new("answered on A -> delivered by B", lags))
        .series(Series::new(
            "answered on A -> applied via B, seen on A",
            acks,
        )))
}
