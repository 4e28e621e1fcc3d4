//! `cassette-rules audit`: the AuditService's answers from a stopped
//! service's data directory (or a copy of it), human-readable or as JSON lines.

use std::path::Path;
use std::time::SystemTime;

use anyhow::{bail, Context};
use cassette_eventlog::{hex, Log, Record, Signing, TrustedKeys};
use cassette_model::{InstanceId, Rule};
use cassette_proto::{event_to_pb, ProtoJson};
use cassette_rules::grpc::present;
use cassette_service::replay::{self, At, Cursor, EventFilter};
use clap::{Args, Subcommand};
use prost::Message;

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// One JSON object per line (protobuf JSON, as grpcurl prints it).
    #[arg(long, global = true)]
    json: bool,

    /// The public keys the service trusts (its --log-trusted-keys): only
    /// records a signature by one of them covers are shown. Required for a
    /// signed log.
    #[arg(long, global = true, value_name = "FILE")]
    trusted_keys: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Events in log order, filtered.
    Events {
        #[arg(long)]
        instance: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        #[arg(long, default_value_t = 0)]
        after_sequence: u64,
        /// 0: no limit.
        #[arg(long, default_value_t = 0)]
        until_sequence: u64,
        /// RFC 3339, e.g. 2026-11-24T14:02:00Z.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
    },
    /// The firewall and its nftables ruleset as of a revision or a time.
    At {
        #[arg(long)]
        instance: String,
        #[arg(long, conflicts_with = "time", required_unless_present = "time")]
        revision: Option<u64>,
        /// RFC 3339: the last revision committed at or before it.
        #[arg(long)]
        time: Option<String>,
    },
    /// Rules added, removed and changed between two revisions, and the events between.
    Diff {
        #[arg(long)]
        instance: String,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
    },
    /// Checks the log's hash chain and (with --trusted-keys) its signatures;
    /// exits 1 naming the first bad record.
    Verify,
    /// The whole log as JSON lines, for a SIEM.
    Export,
}

pub async fn run(data_dir: &Path, args: AuditArgs) -> anyhow::Result<()> {
    let log = super::open_existing(
        data_dir,
        "a running service holds it: stop it, copy the directory, or use AuditService",
    )?;
    let signing = match &args.trusted_keys {
        Some(path) => Signing::verify_only(TrustedKeys::load(path).context("--trusted-keys")?),
        None if log.is_signed()? => bail!(
            "{} holds a signed log: give --trusted-keys FILE (the public keys the service trusts, \
             its --log-trusted-keys), so that only what they signed is shown",
            data_dir.display()
        ),
        None => Signing::default(),
    };
    let log = Log::sled(log, signing);
    // Only what this verification vouches for is read below.
    let verification = log.verify().await?;
    if let (Some((sequence, reason)), false) = (
        &verification.first_bad,
        matches!(args.command, AuditCommand::Verify),
    ) {
        eprintln!(
            "warning: the log fails verification at record {sequence} ({reason}): \
             only the {} verified records before it are shown",
            verification.events_checked
        );
    }
    let json = Json::new()?;
    match args.command {
        AuditCommand::Events {
            instance,
            actor,
            after_sequence,
            until_sequence,
            since,
            until,
        } => {
            let filter = EventFilter {
                instance: instance.as_deref().map(InstanceId::parse).transpose()?,
                after_sequence,
                until_sequence,
                since: since.as_deref().map(parse_time).transpose()?,
                until: until.as_deref().map(parse_time).transpose()?,
                actor,
            };
            for_each_event(&log, &filter, |record| {
                if args.json {
                    json.print_event(record)
                } else {
                    cassette_proto::outln!("{}", cassette_proto::describe_event(&record.event))?;
                    Ok(())
                }
            })
            .await
        }
        AuditCommand::Export => {
            for_each_event(&log, &EventFilter::default(), |r| json.print_event(r)).await
        }
        AuditCommand::At {
            instance,
            revision,
            time,
        } => {
            let instance = InstanceId::parse(&instance)?;
            let at = match (revision, time) {
                (Some(r), _) => At::Revision(r),
                (None, Some(t)) => At::Time(parse_time(&t)?),
                (None, None) => bail!("give --revision or --time"),
            };
            let found = replay::firewall_at(&log, &instance, at).await?;
            if args.json {
                return json.print("FirewallAt", &present::firewall_at(&found));
            }
            cassette_proto::outln!(
                "{instance} at revision {} (committed {} by {}){}",
                found.event.revision,
                rfc3339(found.event.commit_time),
                found.event.actor.as_str(),
                if found.firewall.is_live() {
                    ""
                } else {
                    ": deleted"
                }
            )?;
            for rule in found.firewall.rules() {
                cassette_proto::outln!("  {}", describe_rule(rule))?;
            }
            cassette_proto::out!("{}", found.ruleset())?;
            Ok(())
        }
        AuditCommand::Diff { instance, from, to } => {
            let instance = InstanceId::parse(&instance)?;
            let diff = replay::diff(&log, &instance, from, to, replay::EventPage::ALL).await?;
            if args.json {
                return json.print("FirewallDiff", &present::diff(&diff));
            }
            cassette_proto::outln!("{instance} from revision {from} to {to}:")?;
            for rule in &diff.added {
                cassette_proto::outln!("+ {}", describe_rule(rule))?;
            }
            for rule in &diff.removed {
                cassette_proto::outln!("- {}", describe_rule(rule))?;
            }
            for (before, after) in &diff.changed {
                cassette_proto::outln!(
                    "~ {}\n  -> {}",
                    describe_rule(before),
                    describe_rule(after)
                )?;
            }
            for record in &diff.events {
                cassette_proto::outln!("  {}", cassette_proto::describe_event(&record.event))?;
            }
            Ok(())
        }
        AuditCommand::Verify => {
            if args.json {
                json.print("VerifyLogResponse", &present::verification(&verification))?;
            } else {
                match &verification.first_bad {
                    None => cassette_proto::outln!(
                        "ok: {} events, head {} {}{}",
                        verification.events_checked,
                        verification.head.sequence,
                        hex(&verification.head.hash),
                        match &verification.signed {
                            Some(signed) => format!(
                                ", signed by key {} at record {}",
                                signed.key_id, signed.head.sequence
                            ),
                            None => ", signatures not checked".to_owned(),
                        }
                    )?,
                    Some((sequence, reason)) => cassette_proto::outln!(
                        "FAILED at record {sequence}: {reason} ({} good events before it)",
                        verification.events_checked
                    )?,
                }
            }
            if !verification.ok() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

async fn for_each_event(
    log: &Log,
    filter: &EventFilter,
    mut each: impl FnMut(&Record) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut cursor = Cursor {
        sequence: filter.after_sequence,
        revision: 0,
    };
    loop {
        let before = (cursor.sequence, cursor.revision);
        for record in replay::next_events(log, filter, &mut cursor, 1000).await? {
            each(&record)?;
        }
        if filter.exhausted(cursor.sequence) || before == (cursor.sequence, cursor.revision) {
            return Ok(());
        }
    }
}

fn parse_time(text: &str) -> anyhow::Result<SystemTime> {
    let timestamp: prost_types::Timestamp = text.parse().with_context(|| {
        format!("{text:?} is not an RFC 3339 time such as 2026-11-24T14:02:00Z")
    })?;
    SystemTime::try_from(timestamp).with_context(|| format!("{text:?} is out of range"))
}

fn rfc3339(time: SystemTime) -> String {
    prost_types::Timestamp::from(time).to_string()
}

fn describe_rule(rule: &Rule) -> String {
    let mut extra = String::new();
    if !rule.spec.sources.is_anywhere() {
        extra.push_str(&format!(
            ", from {}",
            cassette_proto::sources_to_pb(&rule.spec.sources).join(" ")
        ));
    }
    if let Some(expires) = rule.spec.expire_time {
        extra.push_str(&format!(", expires {}", rfc3339(expires)));
    }
    format!(
        "{}/{} {} {}{} ({}, revision {}{extra})",
        rule.spec.ports,
        rule.spec.protocol,
        if rule.spec.enabled {
            "enabled"
        } else {
            "disabled"
        },
        if rule.spec.description.as_str().is_empty() {
            ""
        } else {
            "\""
        },
        if rule.spec.description.as_str().is_empty() {
            String::new()
        } else {
            format!("{}\"", rule.spec.description.as_str())
        },
        rule.spec.id,
        rule.revision
    )
}

/// Protobuf JSON, the shape grpcurl prints.
struct Json(ProtoJson);

impl Json {
    fn new() -> anyhow::Result<Self> {
        Ok(Self(ProtoJson::new()?))
    }

    /// Prints `message`, of type `cassette.firewall.v1.<name>`.
    fn print(&self, name: &str, message: &impl Message) -> anyhow::Result<()> {
        cassette_proto::outln!("{}", self.0.to_string(name, message)?)?;
        Ok(())
    }

    fn print_event(&self, record: &Record) -> anyhow::Result<()> {
        self.print("Event", &event_to_pb(&record.event, &record.prev_hash))
    }
}
