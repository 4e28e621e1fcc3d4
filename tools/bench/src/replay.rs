//! `replay`: writes a log of N events straight through the event log, then
//! times a rules service from open to its first answered GetFirewall.

use std::time::{Duration, Instant, SystemTime};

use cassette_eventlog::EventLog;
use cassette_model::{
    default_rules, ActorId, Description, Event, EventPayload, InstanceId, Port, Protocol, RuleId,
    RuleSpec,
};
use cassette_proto::pb;
use cassette_proto::pb::audit_service_client::AuditServiceClient;
use cassette_proto::pb::firewall_service_client::FirewallServiceClient;
use cassette_rules::{LogConfig, OpenStats, RulesService};
use serde_json::json;

use crate::stats::round3;
use crate::Report;

/// Custom rules per generated instance; later events toggle them.
const RULES_PER_INSTANCE: u64 = 50;
const EVENTS_PER_INSTANCE: u64 = 1000;
/// Events per append: the most one append may carry.
const BATCH: usize = cassette_eventlog::chain::MAX_SIGNED_RUN;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Events in the generated log.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Keep the generated log here (reused by later runs with the same --events)
    /// instead of in a temp dir removed afterwards.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Sign the generated log and verify it at start-up, as a secured service
    /// does. With --events-per-append 1, one signature per event (a log of
    /// one-event appends).
    #[arg(long)]
    signed: bool,
    /// How the generated log's records are stored: compact or full.
    #[arg(long, default_value = "compact")]
    record_encoding: cassette_eventlog::RecordEncoding,
    /// Events per signed append (at most 4096; on etcd at most 63).
    #[arg(long, default_value_t = BATCH as u64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    events_per_append: u64,
    /// Write the log to this etcd cluster (client URLs, comma-separated)
    /// under a fresh prefix instead, and time a replica's starts on it:
    /// replaying the whole log from etcd, then from the projection
    /// snapshot its shutdown wrote.
    #[arg(long, value_delimiter = ',', conflicts_with = "data_dir")]
    etcd_endpoints: Vec<String>,
}

pub async fn run(options: Options) -> anyhow::Result<Report> {
    if !options.etcd_endpoints.is_empty() {
        return run_on_etcd(options).await;
    }
    let temp = tempfile::tempdir()?;
    let dir = options.data_dir.as_deref().unwrap_or(temp.path());
    let instances = options.events.div_ceil(EVENTS_PER_INSTANCE).max(1);
    let written = Instant::now();
    let existing = EventLog::open(dir)?.head().sequence;
    if existing != 0 && existing != options.events {
        anyhow::bail!(
            "{} holds {existing} events, not {}",
            dir.display(),
            options.events
        );
    }
    let key = match options.signed {
        true => Some(crate::signing::signing(dir)?.1),
        false => None,
    };
    let per_append = usize::try_from(options.events_per_append)?;
    if existing == 0 {
        let log = EventLog::open(dir)?.with_record_encoding(options.record_encoding);
        let mut batch = Vec::with_capacity(per_append);
        for sequence in 1..=options.events {
            batch.push(event(sequence, instances)?);
            if batch.len() == per_append {
                log.append_signed(&batch, key.as_ref()).await?;
                batch.clear();
            }
        }
        log.append_signed(&batch, key.as_ref()).await?;
        log.flush()?;
    }
    eprintln!(
        "replay: wrote {} events over {instances} instances in {:.1}s",
        options.events,
        written.elapsed().as_secs_f64()
    );

    // The log alone: a snapshot an earlier run left is not part of it.
    let _ = std::fs::remove_file(cassette_eventlog::snapshot::path(dir));
    let disk_bytes = dir_bytes(dir)?;
    // What opening sled alone costs (recovering its files), before any replay.
    let opened = Instant::now();
    drop(EventLog::open(dir)?);
    let sled_open = opened.elapsed();
    // A start that replays the whole log; its shutdown writes the snapshot
    // the second start loads.
    let config = LogConfig::sled(dir).signed(crate::signing::maybe(options.signed, dir)?);
    let full = start(&config).await?;
    let snapshot_bytes = std::fs::metadata(cassette_eventlog::snapshot::path(dir))?.len();
    let from_snapshot = start(&config).await?;
    anyhow::ensure!(
        from_snapshot.stats.snapshot.is_some(),
        "the second start did not start from the snapshot"
    );

    let (record_bytes, record_encoding) = record_bytes(dir, options.events)?;
    let seconds = full.to_serving.as_secs_f64();
    let replayed = full.stats;
    Ok(Report::new(json!({
        "bench": "replay",
        "store": "sled",
        "signed": options.signed,
        "events_per_append": per_append,
        "events": replayed.events,
        "instances": replayed.firewalls,
        "sled_open_seconds": round3(sled_open.as_secs_f64()),
        "replay_seconds": round3(replayed.elapsed.as_secs_f64()),
        "start_to_serving_seconds": round3(seconds),
        "events_per_sec": (replayed.events as f64 / seconds).round(),
        "snapshot_bytes": snapshot_bytes,
        "snapshot_start_to_serving_seconds": round3(from_snapshot.to_serving.as_secs_f64()),
        "snapshot_walk_seconds": round3(from_snapshot.walked.as_secs_f64()),
        "disk_bytes": disk_bytes,
        "disk_bytes_per_event": (disk_bytes as f64 / options.events.max(1) as f64).round(),
        "record_encoding": record_encoding,
        "record_bytes_per_event": (record_bytes as f64 / options.events.max(1) as f64).round(),
    })))
}

/// One start of the service on the log.
struct Started {
    stats: OpenStats,
    /// From opening the log to the first GetFirewall answered.
    to_serving: Duration,
    /// From opening the log to the first answer for the oldest history (a
    /// start from a snapshot serves it once the walk of the log before the
    /// snapshot has vouched for it).
    walked: Duration,
}

/// The same log written to etcd, and a replica's two starts on it.
async fn run_on_etcd(options: Options) -> anyhow::Result<Report> {
    let temp = tempfile::tempdir()?;
    let dir = temp.path();
    let mut etcd = cassette_eventlog::etcd::EtcdConfig::new(options.etcd_endpoints.clone());
    etcd.prefix = format!("/cassette-bench/{}", uuid::Uuid::now_v7().simple());
    let per_append =
        usize::try_from(options.events_per_append)?.min(cassette_eventlog::etcd::MAX_BATCH_EVENTS);
    let signing = crate::signing::maybe(options.signed, dir)?;
    let instances = options.events.div_ceil(EVENTS_PER_INSTANCE).max(1);
    let written = Instant::now();
    {
        let log = cassette_eventlog::etcd::EtcdLog::connect(&etcd)?;
        let mut head = cassette_eventlog::Head::default();
        let mut batch = Vec::with_capacity(per_append);
        for sequence in 1..=options.events {
            batch.push(event(sequence, instances)?);
            if batch.len() == per_append || sequence == options.events {
                head = log
                    .append_signed(head, &batch, signing.key.as_deref())
                    .await?;
                batch.clear();
            }
        }
    }
    eprintln!(
        "replay: wrote {} events over {instances} instances to etcd in {:.1}s",
        options.events,
        written.elapsed().as_secs_f64()
    );
    let config = LogConfig::etcd(etcd)
        .signed(signing)
        .snapshots_in(dir.join("data"));
    let full = start(&config).await?;
    let snapshot = cassette_eventlog::snapshot::path(&dir.join("data"));
    let snapshot_bytes = std::fs::metadata(snapshot)?.len();
    let from_snapshot = start(&config).await?;
    anyhow::ensure!(
        from_snapshot.stats.snapshot.is_some(),
        "the second start did not start from the snapshot"
    );
    let seconds = full.to_serving.as_secs_f64();
    Ok(Report::new(json!({
        "bench": "replay",
        "store": "etcd",
        "signed": options.signed,
        "events_per_append": per_append,
        "events": full.stats.events,
        "instances": full.stats.firewalls,
        "replay_seconds": round3(full.stats.elapsed.as_secs_f64()),
        "start_to_serving_seconds": round3(seconds),
        "events_per_sec": (full.stats.events as f64 / seconds).round(),
        "snapshot_bytes": snapshot_bytes,
        "snapshot_start_to_serving_seconds": round3(from_snapshot.to_serving.as_secs_f64()),
        "snapshot_walk_seconds": round3(from_snapshot.walked.as_secs_f64()),
    })))
}

/// Starts a rules service on the log `config` names, times it to its first
/// answers, and stops it (which writes a projection snapshot).
async fn start(config: &LogConfig) -> anyhow::Result<Started> {
    let started = Instant::now();
    let service = RulesService::open(config).await?;
    let stats = service.stats();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(service.serve(listener, async {
        let _ = stopped.await;
    }));
    let mut client = FirewallServiceClient::connect(format!("http://{addr}")).await?;
    let answer = client
        .get_firewall(pb::GetFirewallRequest {
            instance_id: instance_id(0)?.to_string(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let to_serving = started.elapsed();
    anyhow::ensure!(answer.revision > 0, "replayed firewall is empty");
    let mut audit = AuditServiceClient::connect(format!("http://{addr}")).await?;
    audit
        .get_firewall_at(pb::GetFirewallAtRequest {
            instance_id: instance_id(0)?.to_string(),
            at: Some(pb::get_firewall_at_request::At::Revision(1)),
        })
        .await?;
    let walked = started.elapsed();
    let _ = stop.send(());
    task.await??;
    Ok(Started {
        stats,
        to_serving,
        walked,
    })
}

/// The bytes the log's `events` records hold as stored (without sled's
/// keys and pages), and the encodings they are stored in ("compact", or
/// "full and compact" for a log an older writer began): a log kept with
/// --data-dir keeps the encoding it was written in, whatever
/// --record-encoding says.
fn record_bytes(dir: &std::path::Path, events: u64) -> anyhow::Result<(u64, String)> {
    let log = EventLog::open(dir)?;
    let mut total = 0;
    let mut seen = Vec::new();
    for sequence in 1..=events {
        let Some(stored) = log.stored_record(sequence)? else {
            continue;
        };
        total += stored.len() as u64;
        let encoding = cassette_eventlog::decode(sequence, &stored)?.encoding;
        if !seen.contains(&encoding) {
            seen.push(encoding);
        }
    }
    let names: Vec<&str> = seen.iter().map(|e| e.as_str()).collect();
    Ok((total, names.join(" and ")))
}

/// The bytes the files under `dir` hold (the log on disk, before start-up).
fn dir_bytes(dir: &std::path::Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

fn instance_id(i: u64) -> anyhow::Result<InstanceId> {
    Ok(InstanceId::parse(&format!("replay-{i}"))?)
}

fn rule_id(i: u64) -> anyhow::Result<RuleId> {
    Ok(RuleId::parse(&format!("rule-{i}"))?)
}

/// The generated log's record `sequence`: round-robin over `instances` (as
/// a real log interleaves them), each instance's events created, then rules
/// added, then toggles.
fn event(sequence: u64, instances: u64) -> anyhow::Result<Event> {
    let i = (sequence - 1) % instances;
    let revision = (sequence - 1) / instances + 1;
    let payload = match revision {
        1 => EventPayload::FirewallCreated {
            default_rules: default_rules(),
        },
        r if r <= RULES_PER_INSTANCE + 1 => EventPayload::RuleAdded(RuleSpec {
            id: rule_id(r)?,
            ports: Port::new(10_000 + r as u32)?.into(),
            protocol: Protocol::Tcp,
            description: Description::parse("generated")?,
            enabled: true,
            is_default: false,
            expire_time: None,
            sources: Default::default(),
        }),
        r => {
            let n = r - RULES_PER_INSTANCE - 2;
            let rule_id = rule_id(n % RULES_PER_INSTANCE + 2)?;
            if (n / RULES_PER_INSTANCE) % 2 == 0 {
                EventPayload::RuleDisabled { rule_id }
            } else {
                EventPayload::RuleEnabled { rule_id }
            }
        }
    };
    Ok(Event {
        sequence,
        instance_id: instance_id(i)?,
        revision,
        event_id: uuid::Uuid::now_v7(),
        commit_time: SystemTime::UNIX_EPOCH
            + Duration::from_secs(1_760_000_000)
            + Duration::from_micros(sequence),
        actor: ActorId::anonymous(),
        on_behalf_of: None,
        request_id: None,
        request_digest: None,
        unconfirmed: None,
        payload,
    })
}
