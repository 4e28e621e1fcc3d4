//! `cassette-rules log`: an operator's repairs of the event log, with the
//! service stopped (sled) or every replica stopped or halted (etcd).

use anyhow::bail;
use cassette_eventlog::etcd::EtcdLog;
use cassette_eventlog::{hex, Log};
use cassette_rules::{LogConfig, LogStore};
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct LogArgs {
    #[command(subcommand)]
    command: LogCommand,
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Removes every record after SEQUENCE (with its index entries and
    /// signatures) and makes SEQUENCE the log's head: how a log recovers from
    /// records that fail verification (written into its store by someone
    /// else, or not signed by a trusted key). SEQUENCE must verify (with
    /// --log-trusted-keys, its signature too). Without --yes, says what it
    /// would remove and changes nothing.
    RemoveAfter {
        sequence: u64,
        /// Remove them.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn run(config: &LogConfig, args: LogArgs) -> anyhow::Result<()> {
    let log = match &config.store {
        LogStore::Sled(dir) => {
            let log = super::open_existing(dir, "stop the service that holds it first")?;
            Log::sled(log, config.signing.clone())
        }
        LogStore::Etcd(etcd) => Log::etcd(EtcdLog::connect(etcd)?, config.signing.clone()),
    };
    let LogCommand::RemoveAfter { sequence, yes } = args.command;
    let verification = log.verify().await?;
    if config.signing.trusted.is_none() {
        eprintln!("warning: no --log-trusted-keys: only the hash chain up to {sequence} is checked, not its signatures");
    }
    if verification.head.sequence < sequence {
        let (bad, reason) = verification.first_bad.unwrap_or_default();
        bail!(
            "record {sequence} does not verify: the log verifies up to record {} (record {bad}: {reason}); \
             remove after {} instead",
            verification.head.sequence,
            verification.head.sequence
        );
    }
    let head = log.head().await?;
    if head.sequence <= sequence {
        cassette_proto::outln!(
            "nothing to remove: the log ends at record {}",
            head.sequence
        )?;
        return Ok(());
    }
    let what = format!(
        "records {} to {} ({} records)",
        sequence + 1,
        head.sequence,
        head.sequence - sequence
    );
    if !yes {
        cassette_proto::outln!(
            "would remove {what}; the log would end at record {sequence}. Run again with --yes to remove them."
        )?;
        std::process::exit(1);
    }
    let removed = log.remove_after(sequence).await?;
    // Taken on records that may be gone: the next start replays the log.
    // (Other replicas' snapshots of a shared log, anchored on a record that
    // is gone or different, are refused when they start.)
    if let Some(dir) = config.projection_snapshot_dir() {
        cassette_eventlog::snapshot::set_aside(dir)?;
    }
    let now = log.head().await?;
    cassette_proto::outln!(
        "removed {removed} records; the log ends at record {} ({}). Start the service again.",
        now.sequence,
        hex(&now.hash)
    )?;
    Ok(())
}
