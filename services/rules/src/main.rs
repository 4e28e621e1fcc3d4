//! `cassette-rules`: the firewall rules service.

mod audit_cli;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use cassette_rules::Listener;
use clap::Parser;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

// mimalloc: +10% durable events/s over glibc malloc in `cassette-bench append`
// (allocation is a sixth of the service's profile: gRPC frames, protobuf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The cassette-firewall rules service: keeps every instance's firewall rules
/// as an append-only event log and serves them over gRPC
/// (cassette.firewall.v1.FirewallService, EnforcerService, AuditService,
/// server reflection, grpc.health.v1).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Without a command: serve.
    #[command(subcommand)]
    command: Option<Command>,

    /// Where to serve gRPC: HOST:PORT, or unix:/PATH for a Unix socket; repeat
    /// the flag (or separate with commas) to serve on several. Loopback by
    /// default: put it behind your own authenticating proxy before exposing it.
    #[arg(
        long,
        env = "CASSETTE_LISTEN",
        default_value = "127.0.0.1:50051",
        value_delimiter = ','
    )]
    listen: Vec<Listen>,

    /// Directory of the event log (created if missing). One process at a time.
    #[arg(
        long,
        env = "CASSETTE_DATA_DIR",
        default_value = "./cassette-data",
        global = true
    )]
    data_dir: PathBuf,

    /// Serve a log that fails hash-chain verification, read-only, to investigate it.
    #[arg(long, env = "CASSETTE_ALLOW_UNVERIFIED_LOG")]
    allow_unverified_log: bool,

    /// Serve Prometheus metrics on http://ADDR/metrics.
    #[arg(long, env = "CASSETTE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,

    /// Log filter, in tracing's EnvFilter syntax (e.g. "info", "cassette_rules=debug").
    #[arg(long, env = "CASSETTE_LOG", default_value = "info")]
    log: String,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Answer audit questions offline from a stopped service's data directory
    /// (or a copy): events, at, diff, verify, export.
    Audit(audit_cli::AuditArgs),
    /// Exit 0 if the rules service at --rules reports SERVING on
    /// grpc.health.v1 (for container health checks).
    Health {
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        rules: cassette_proto::Target,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    match args.command.take() {
        Some(Command::Audit(audit)) => return audit_cli::run(&args.data_dir, audit),
        Some(Command::Health { rules }) => return health(&rules).await,
        None => {}
    }
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&args.log).context("invalid --log filter")?)
        .with_writer(std::io::stderr)
        .init();

    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data directory {}", args.data_dir.display()))?;
    let service =
        cassette_rules::RulesService::open_with(&args.data_dir, args.allow_unverified_log)
            .with_context(|| format!("cannot open {}", args.data_dir.display()))?;
    if let Some(addr) = args.metrics_listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for metrics"))?;
        let metrics = service.metrics();
        tokio::spawn(cassette_metrics::serve(
            listener,
            Arc::new(move || metrics.render()),
            std::future::pending(),
        ));
        tracing::info!(%addr, "serving metrics");
    }
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    };
    let mut listeners = Vec::new();
    for listen in &args.listen {
        listeners.push(bind(listen).await?);
        tracing::info!(listen = %listen, "serving cassette.firewall.v1");
    }
    service.serve_all(listeners, shutdown).await?;
    Ok(())
}

async fn health(rules: &cassette_proto::Target) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let check = async {
        let mut client = HealthClient::new(rules.connect().await?);
        let status = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner()
            .status;
        anyhow::ensure!(
            status == ServingStatus::Serving as i32,
            "{rules} is not serving"
        );
        anyhow::Ok(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), check)
        .await
        .with_context(|| format!("{rules} did not answer within 5 s"))?
}

async fn bind(listen: &Listen) -> anyhow::Result<Listener> {
    Ok(match listen {
        Listen::Tcp(addr) => Listener::Tcp(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?,
        ),
        Listen::Unix(path) => {
            // A socket file left by a killed predecessor would refuse the bind.
            if path.exists() {
                std::fs::remove_file(path)
                    .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
            }
            Listener::Unix(
                UnixListener::bind(path)
                    .with_context(|| format!("cannot listen on unix:{}", path.display()))?,
            )
        }
    })
}

/// A gRPC listen address: `HOST:PORT` or `unix:/PATH`.
#[derive(Debug, Clone)]
enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(addr) => addr.fmt(f),
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("unix:") {
            Some("") => Err("unix: needs a socket path".into()),
            Some(path) => Ok(Listen::Unix(PathBuf::from(path))),
            None => s
                .parse()
                .map(Listen::Tcp)
                .map_err(|e| format!("{s:?} is neither HOST:PORT nor unix:/PATH: {e}")),
        }
    }
}
