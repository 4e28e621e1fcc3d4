//! `cassette-rules`: the firewall rules service.

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use cassette_rules::{LogConfig, LogStore, RulesService};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

use cli::flags::{
    bind, EtcdArgs, HttpListen, LimitArgs, Listen, SecurityArgs, SigningArgs, StoreKind,
};

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
    /// the flag (or separate with commas) to serve on several. Without
    /// --tls-cert only loopback addresses and Unix sockets are allowed.
    #[arg(
        long,
        env = "CASSETTE_LISTEN",
        default_value = "127.0.0.1:50051",
        value_delimiter = ','
    )]
    listen: Vec<Listen>,

    /// Directory of the event log (created if missing). One process at a time.
    /// With --store etcd, the replica keeps its projection snapshot in its
    /// etcd/ subdirectory.
    #[arg(
        long,
        env = "CASSETTE_DATA_DIR",
        default_value = "./cassette-data",
        global = true
    )]
    data_dir: PathBuf,

    /// Where the event log lives: sled in --data-dir (one rules service), or
    /// an etcd cluster that several rules replicas share.
    #[arg(
        long,
        env = "CASSETTE_STORE",
        default_value = "sled",
        value_enum,
        global = true
    )]
    store: StoreKind,

    #[command(flatten)]
    etcd: EtcdArgs,

    #[command(flatten)]
    signing: SigningArgs,

    /// With --store etcd: the URL the other replicas reach this one's gRPC
    /// listener at (https:// with TLS; say https://rules-a:50051). The
    /// replicas then share their enforcers' sync state directly, over gRPC
    /// with their own certificates' replica identities, instead of writing
    /// each ack to etcd. By default the first --listen address when it is a
    /// specific one; a wildcard listener (0.0.0.0) without it, or "off",
    /// shares through etcd.
    #[arg(long, env = "CASSETTE_REPLICA_ADDRESS", value_name = "URL", value_parser = parse_replica_address)]
    replica_address: Option<cassette_rules::replicas::ReplicaAddress>,

    /// Serve a log that fails hash-chain verification, read-only, to investigate it.
    #[arg(long, env = "CASSETTE_ALLOW_UNVERIFIED_LOG")]
    allow_unverified_log: bool,

    /// Write a snapshot of the projection (every firewall, the request ids
    /// applied) to <data-dir>/projection.snapshot after this many events
    /// since the last one, so that a start replays only the log after it
    /// (and walks the rest in the background). 0 writes none. With --store
    /// etcd each replica writes its own, of the shared log, to
    /// <data-dir>/etcd/projection.snapshot.
    #[arg(
        long,
        env = "CASSETTE_SNAPSHOT_EVERY_EVENTS",
        default_value_t = 100_000
    )]
    snapshot_every_events: u64,

    /// Also write one when this long has passed since the last, if any event
    /// came (one is written at every clean shutdown too).
    #[arg(long, env = "CASSETTE_SNAPSHOT_INTERVAL", default_value = "10m", value_parser = cassette_proto::parse_duration)]
    snapshot_interval: std::time::Duration,

    /// How new records are stored: "compact" (the event id as its 16
    /// bytes, the commit time as one integer: about 25 bytes fewer per
    /// event) or "full" (as the service answers). Records already stored
    /// stay as they are, and every reader reads both; versions before the
    /// compact encoding read only full records, so replicas on etcd being
    /// upgraded from one write "full" until no older replica is left.
    #[arg(long, env = "CASSETTE_RECORD_ENCODING", default_value = "compact")]
    record_encoding: cassette_eventlog::RecordEncoding,

    /// Where to serve the console: the Firewall page, its JSON API
    /// (/api/v1/...), /metrics and /healthz. HTTPS with the service's
    /// certificate when --tls-cert is given; without it, loopback only.
    /// "off" serves none.
    #[arg(long, env = "CASSETTE_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    http_listen: HttpListen,

    /// Host names the console also answers to (comma-separated), besides its
    /// listen address and localhost: say, the name a DNS entry or a reverse
    /// proxy gives it. Any other Host is refused (421), so a page whose name
    /// an attacker points at this machine cannot use the console.
    #[arg(
        long,
        env = "CASSETTE_HTTP_ALLOWED_HOSTS",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    http_allowed_hosts: Vec<String>,

    /// Also serve Prometheus metrics on http://ADDR/metrics (the console's
    /// listener serves them too).
    #[arg(long, env = "CASSETTE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,

    /// Permissions of a unix:/PATH listener's socket file, in octal. The
    /// default lets only this user connect; 0660 adds its group (say, the
    /// enforcers' user).
    #[arg(long, env = "CASSETTE_UNIX_MODE", default_value = "0600", value_parser = parse_mode)]
    unix_mode: u32,

    /// Log filter, in tracing's EnvFilter syntax (e.g. "info", "cassette_rules=debug").
    #[arg(long, env = "CASSETTE_LOG", default_value = "info")]
    log: String,

    /// How long SIGTERM/SIGINT wait for in-flight calls before the log is
    /// flushed and the service exits anyway (e.g. 10s, 500ms).
    #[arg(long, env = "CASSETTE_SHUTDOWN_GRACE", default_value = "10s", value_parser = cassette_proto::parse_duration)]
    shutdown_grace: std::time::Duration,

    #[command(flatten)]
    security: SecurityArgs,

    #[command(flatten)]
    limits: LimitArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Answer audit questions offline from a stopped service's data directory
    /// (or a copy): events, at, diff, verify, export.
    Audit(cli::audit::AuditArgs),
    /// Print SERVING and exit 0 if the rules service at --rules reports
    /// SERVING on grpc.health.v1 (for container health checks and scripts).
    Health {
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        rules: cassette_proto::Target,
        /// CA (PEM) to check a TLS service's certificate with (https:// targets).
        #[arg(long)]
        tls_ca: Option<PathBuf>,
        /// Keep asking until it is serving or this much time has passed (e.g. 10s).
        #[arg(long, value_parser = cassette_proto::parse_duration)]
        wait: Option<std::time::Duration>,
    },
    /// A development PKI: a CA, the service's certificate, client
    /// certificates, the log's signing key.
    Pki(cli::pki::PkiArgs),
    /// An operator's repairs of the event log (--store, --data-dir, the etcd
    /// flags and --log-trusted-keys as the service has them), with the
    /// service stopped.
    Log(cli::log::LogArgs),
}

/// Files and directories this process creates are readable by its user only.
fn private_files() {
    // SAFETY: umask(2) cannot fail and only sets this process's file-mode
    // creation mask; nothing else runs yet.
    unsafe {
        libc::umask(0o077);
    }
}

fn parse_replica_address(text: &str) -> Result<cassette_rules::replicas::ReplicaAddress, String> {
    cassette_rules::replicas::parse_address(text)
}

fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| {
            format!("{text:?} is not a file mode: give octal digits such as 0600 or 0660")
        })
}

impl Args {
    /// Where the log is (sled's directory created if missing), signed as `signing` says.
    fn log_config(&self, signing: cassette_eventlog::Signing) -> anyhow::Result<LogConfig> {
        let config = match self.store {
            StoreKind::Sled => {
                std::fs::create_dir_all(&self.data_dir).with_context(|| {
                    format!("cannot create data directory {}", self.data_dir.display())
                })?;
                LogConfig::sled(&self.data_dir)
            }
            // A replica keeps only its projection snapshot, in a directory
            // of its own: a sled log's data directory may be the same one.
            StoreKind::Etcd => {
                LogConfig::etcd(self.etcd.config()?).snapshots_in(self.data_dir.join("etcd"))
            }
        };
        Ok(LogConfig {
            allow_unverified: self.allow_unverified_log,
            record_encoding: self.record_encoding,
            snapshots: cassette_rules::SnapshotPolicy {
                every_events: self.snapshot_every_events,
                interval: self.snapshot_interval,
            },
            ..config.signed(signing)
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    match args.command.take() {
        Some(Command::Audit(audit)) => return cli::audit::run(&args.data_dir, audit).await,
        Some(Command::Health {
            rules,
            tls_ca,
            wait,
        }) => return cli::health::health(&rules, tls_ca.as_ref(), wait).await,
        Some(Command::Pki(pki)) => return cli::pki::run(pki),
        Some(Command::Log(log)) => {
            let config = args.log_config(args.signing.verify_only()?)?;
            return cli::log::run(&config, log).await;
        }
        None => {}
    }
    // Everything the service creates is its own: the data directory 0700,
    // the log's files 0600 (they hold every tenant's rules and who changed
    // them), unix sockets 0600 until --unix-mode says otherwise.
    private_files();
    let descriptors = cassette_rules::connections::raise_descriptor_limit();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&args.log).context("invalid --log filter")?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tracing::info!(descriptors, "descriptor limit");

    let security = args.security.security()?;
    let authenticator = security.authenticator.clone();
    let tls = security.tls.clone();
    let signing = args.signing.signing(args.security.tls_cert.is_some())?;
    let config = args.log_config(signing)?;
    let service = RulesService::open(&config)
        .await
        .with_context(|| match &config.store {
            LogStore::Sled(data_dir) => format!("cannot open {}", data_dir.display()),
            LogStore::Etcd(etcd) => {
                format!("cannot open the event log in etcd {:?}", etcd.endpoints)
            }
        })?;
    let service = service
        .with_security(security)
        .with_limits(args.limits.limits())
        .with_connection_flags(args.limits.connections())
        .with_replica_address(args.replica_address.clone())
        .with_shutdown_grace(args.shutdown_grace);
    let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            // The certificates first: a policy that revokes an identity is
            // applied with the CA it was written for.
            if let Some(tls) = &tls {
                match tls.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate, key and client CA reloaded"),
                    Err(error) => tracing::error!(
                        %error,
                        "SIGHUP: TLS files refused; the previous certificate, key and CA stay"
                    ),
                }
            }
            match authenticator.reload() {
                Ok(principals) => tracing::info!(principals, "SIGHUP: policy reloaded"),
                Err(error) => {
                    tracing::error!(%error, "SIGHUP: policy refused; the previous policy stays")
                }
            }
        }
    });
    if let Some(addr) = args.metrics_listen {
        anyhow::ensure!(
            addr.ip().is_loopback() || args.security.insecure_plaintext,
            "refusing to serve metrics in plaintext on {addr}: give a loopback address, read \
             them from the console's /metrics over HTTPS, or --insecure-plaintext"
        );
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
    let service = match args.http_listen {
        HttpListen::Off => service,
        HttpListen::Addr(addr) => {
            let listener = TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} for the console (--http-listen)")
            })?;
            let scheme = if args.security.tls_cert.is_some() {
                "https"
            } else {
                "http"
            };
            let bound = listener.local_addr().context("console listener")?;
            tracing::info!(url = %format!("{scheme}://{bound}/"), "serving the console");
            service
                .with_console(listener)
                .with_allowed_hosts(args.http_allowed_hosts.clone())
        }
    };
    let mut listeners = Vec::new();
    for listen in &args.listen {
        listeners.push(bind(listen, args.unix_mode).await?);
        tracing::info!(listen = %listen, "serving cassette.firewall.v1");
    }
    service.serve_all(listeners, shutdown).await?;
    Ok(())
}
