//! `cassette-rules`: the firewall rules service.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

// mimalloc: +10% durable events/s over glibc malloc in `cassette-bench append`
// (allocation is a sixth of the service's profile: gRPC frames, protobuf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The cassette-firewall rules service: keeps every instance's firewall rules
/// as an append-only event log and serves them over gRPC
/// (cassette.firewall.v1.FirewallService, server reflection, grpc.health.v1).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to serve gRPC on. Loopback by default: put it behind your own
    /// authenticating proxy before exposing it.
    #[arg(long, env = "CASSETTE_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,

    /// Directory of the event log (created if missing). One process at a time.
    #[arg(long, env = "CASSETTE_DATA_DIR", default_value = "./cassette-data")]
    data_dir: PathBuf,

    /// Log filter, in tracing's EnvFilter syntax (e.g. "info", "cassette_rules=debug").
    #[arg(long, env = "CASSETTE_LOG", default_value = "info")]
    log: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&args.log).context("invalid --log filter")?)
        .with_writer(std::io::stderr)
        .init();

    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data directory {}", args.data_dir.display()))?;
    let service = cassette_rules::RulesService::open(&args.data_dir)
        .with_context(|| format!("cannot open {}", args.data_dir.display()))?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "serving cassette.firewall.v1");

    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    };
    service.serve(listener, shutdown).await?;
    Ok(())
}
