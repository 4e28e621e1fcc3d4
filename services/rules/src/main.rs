//! `cassette-rules`: the firewall rules service.

mod audit_cli;
mod pki_cli;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use cassette_auth::{Authenticator, Policy, TrustDomain};
use cassette_rules::{Limits, Listener, Security};
use clap::Parser;
use std::sync::Arc;
use tonic::transport::{Certificate, ClientTlsConfig};

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
    #[arg(
        long,
        env = "CASSETTE_DATA_DIR",
        default_value = "./cassette-data",
        global = true
    )]
    data_dir: PathBuf,

    /// Where the event log lives: sled in --data-dir (one rules service), or
    /// an etcd cluster that several rules replicas share.
    #[arg(long, env = "CASSETTE_STORE", default_value = "sled", value_enum)]
    store: StoreKind,

    #[command(flatten)]
    etcd: EtcdArgs,

    /// Serve a log that fails hash-chain verification, read-only, to investigate it.
    #[arg(long, env = "CASSETTE_ALLOW_UNVERIFIED_LOG")]
    allow_unverified_log: bool,

    /// Where to serve the console: the Firewall page, its JSON API
    /// (/api/v1/...), /metrics and /healthz. HTTPS with the service's
    /// certificate when --tls-cert is given; without it, loopback only.
    /// "off" serves none.
    #[arg(long, env = "CASSETTE_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    http_listen: HttpListen,

    /// Also serve Prometheus metrics on http://ADDR/metrics (the console's
    /// listener serves them too).
    #[arg(long, env = "CASSETTE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,

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

/// Without --tls-cert the service runs in development mode: plaintext on
/// loopback and Unix sockets only, every caller `anonymous` with role admin.
#[derive(Debug, clap::Args)]
struct SecurityArgs {
    /// The server's certificate chain (PEM). Turns on TLS for every listener.
    #[arg(long, env = "CASSETTE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The server certificate's private key (PEM).
    #[arg(long, env = "CASSETTE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// CA bundle (PEM) client certificates must chain to. Without it only
    /// bearer tokens authenticate (and no enforcer can connect).
    #[arg(long, env = "CASSETTE_CLIENT_CA", requires = "tls_cert")]
    client_ca: Option<PathBuf>,

    /// The trust domain of client identities (spiffe://<trust-domain>/...).
    #[arg(long, env = "CASSETTE_TRUST_DOMAIN", default_value = "cassette.local")]
    trust_domain: TrustDomain,

    /// The policy (TOML): principals, roles, instance scopes, token hashes.
    /// Required with --tls-cert; reloaded on SIGHUP.
    #[arg(long, env = "CASSETTE_POLICY", requires = "tls_cert")]
    policy: Option<PathBuf>,

    /// Serve plaintext on non-loopback addresses too (development mode: every
    /// caller is an admin). Only behind something else that authenticates.
    #[arg(long, env = "CASSETTE_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StoreKind {
    Sled,
    Etcd,
}

/// The etcd cluster of `--store etcd`.
#[derive(Debug, clap::Args)]
struct EtcdArgs {
    /// Client URLs of the etcd members (http:// or https://), comma-separated.
    #[arg(long, env = "CASSETTE_ETCD_ENDPOINTS", value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Every key of the log starts with it: several deployments can share a cluster.
    #[arg(long, env = "CASSETTE_ETCD_PREFIX", default_value = "/cassette/v1")]
    etcd_prefix: String,
    /// CA (PEM) to check https:// etcd members with.
    #[arg(long, env = "CASSETTE_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for an etcd cluster that asks for one.
    #[arg(long, env = "CASSETTE_ETCD_CERT", requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "CASSETTE_ETCD_KEY", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// User for an etcd cluster with authentication enabled.
    #[arg(long, env = "CASSETTE_ETCD_USER", requires = "etcd_password")]
    etcd_user: Option<String>,
    /// Its password (better given as CASSETTE_ETCD_PASSWORD than on the command line).
    #[arg(
        long,
        env = "CASSETTE_ETCD_PASSWORD",
        requires = "etcd_user",
        hide_env_values = true
    )]
    etcd_password: Option<String>,
    /// How long an append keeps trying (through leader elections) before it
    /// answers UNAVAILABLE.
    #[arg(long, env = "CASSETTE_ETCD_APPEND_DEADLINE", default_value = "10s", value_parser = cassette_proto::parse_duration)]
    etcd_append_deadline: std::time::Duration,
}

impl EtcdArgs {
    fn config(&self) -> anyhow::Result<cassette_eventlog::etcd::EtcdConfig> {
        anyhow::ensure!(
            !self.etcd_endpoints.is_empty(),
            "--store etcd needs --etcd-endpoints URL[,URL...]"
        );
        let mut config = cassette_eventlog::etcd::EtcdConfig::new(self.etcd_endpoints.clone());
        config.prefix = self.etcd_prefix.clone();
        config.append_deadline = self.etcd_append_deadline;
        if let (Some(user), Some(password)) = (&self.etcd_user, &self.etcd_password) {
            config.credentials = Some((user.clone(), password.clone()));
        }
        if self.etcd_ca.is_some() || self.etcd_cert.is_some() {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &self.etcd_ca {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca, "--etcd-ca")?));
            }
            if let (Some(cert), Some(key)) = (&self.etcd_cert, &self.etcd_key) {
                tls = tls.identity(tonic::transport::Identity::from_pem(
                    read(cert, "--etcd-cert")?,
                    read(key, "--etcd-key")?,
                ));
            }
            config.tls = Some(tls);
        }
        Ok(config)
    }
}

#[derive(Debug, clap::Args)]
struct LimitArgs {
    /// Largest request message decoded, in bytes.
    #[arg(long, env = "CASSETTE_MAX_MESSAGE_BYTES", default_value_t = Limits::default().max_message_bytes)]
    max_message_bytes: usize,
    /// HTTP/2 streams one connection may have open at once.
    #[arg(long, env = "CASSETTE_MAX_CONCURRENT_STREAMS", default_value_t = Limits::default().max_concurrent_streams)]
    max_concurrent_streams: u32,
    /// ListEvents follow streams one principal may hold open.
    #[arg(long, env = "CASSETTE_MAX_FOLLOW_STREAMS", default_value_t = Limits::default().max_follow_streams_per_principal)]
    max_follow_streams: usize,
    /// WaitForSync calls one principal may have waiting.
    #[arg(long, env = "CASSETTE_MAX_WAITERS", default_value_t = Limits::default().max_waiters_per_principal)]
    max_waiters: usize,
    /// How often every connection is pinged (HTTP/2 and TCP keepalive).
    #[arg(long, env = "CASSETTE_KEEPALIVE_INTERVAL", default_value = "5s", value_parser = cassette_proto::parse_duration)]
    keepalive_interval: std::time::Duration,
    /// How long a ping may go unanswered before the connection and its sync
    /// streams are dropped (the instance then shows no enforcer).
    #[arg(long, env = "CASSETTE_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = cassette_proto::parse_duration)]
    keepalive_timeout: std::time::Duration,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            max_message_bytes: self.max_message_bytes,
            max_concurrent_streams: self.max_concurrent_streams,
            max_follow_streams_per_principal: self.max_follow_streams,
            max_waiters_per_principal: self.max_waiters,
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
            ..Limits::default()
        }
    }
}

impl SecurityArgs {
    /// The service's security from the flags, reading every file now so a
    /// bad one stops the start with its name.
    fn security(&self) -> anyhow::Result<Security> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            if self.policy.is_some() || self.client_ca.is_some() {
                bail!("--policy and --client-ca need --tls-cert and --tls-key");
            }
            let mut security = Security::development();
            security.insecure_plaintext = self.insecure_plaintext;
            if self.insecure_plaintext {
                tracing::warn!(
                    "--insecure-plaintext: serving plaintext beyond loopback with NO authentication; \
                     anyone who can reach the service controls every firewall"
                );
            }
            return Ok(security);
        };
        let Some(policy_path) = &self.policy else {
            bail!("--tls-cert needs --policy: the file that says which principal may do what");
        };
        let policy = Policy::load(policy_path)?;
        let client_ca = match &self.client_ca {
            Some(ca) => Some(read(ca, "--client-ca")?),
            None => {
                tracing::warn!(
                    "no --client-ca: only bearer tokens authenticate, and no enforcer can connect"
                );
                None
            }
        };
        tracing::info!(
            trust_domain = %self.trust_domain,
            principals = policy.grants().len(),
            policy = %policy_path.display(),
            "TLS on every listener; callers authenticated by client certificate or bearer token"
        );
        Ok(Security::tls(
            read(cert, "--tls-cert")?,
            read(key, "--tls-key")?,
            client_ca,
            Authenticator::secure(self.trust_domain.clone(), policy, Some(policy_path.clone())),
        ))
    }
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Answer audit questions offline from a stopped service's data directory
    /// (or a copy): events, at, diff, verify, export.
    Audit(audit_cli::AuditArgs),
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
    /// A development PKI: a CA, the service's certificate, client certificates.
    Pki(pki_cli::PkiArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    match args.command.take() {
        Some(Command::Audit(audit)) => return audit_cli::run(&args.data_dir, audit).await,
        Some(Command::Health {
            rules,
            tls_ca,
            wait,
        }) => return health(&rules, tls_ca.as_ref(), wait).await,
        Some(Command::Pki(pki)) => return pki_cli::run(pki),
        None => {}
    }
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&args.log).context("invalid --log filter")?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let security = args.security.security()?;
    let authenticator = security.authenticator.clone();
    let service = match args.store {
        StoreKind::Sled => {
            std::fs::create_dir_all(&args.data_dir).with_context(|| {
                format!("cannot create data directory {}", args.data_dir.display())
            })?;
            cassette_rules::RulesService::open_with(&args.data_dir, args.allow_unverified_log)
                .with_context(|| format!("cannot open {}", args.data_dir.display()))?
        }
        StoreKind::Etcd => {
            let config = args.etcd.config()?;
            cassette_rules::RulesService::open_etcd(&config)
                .await
                .with_context(|| {
                    format!("cannot open the event log in etcd {:?}", config.endpoints)
                })?
        }
    };
    let service = service
        .with_security(security)
        .with_limits(args.limits.limits())
        .with_shutdown_grace(args.shutdown_grace);
    let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match authenticator.reload() {
                Ok(principals) => tracing::info!(principals, "SIGHUP: policy reloaded"),
                Err(error) => {
                    tracing::error!(%error, "SIGHUP: policy refused; the previous policy stays")
                }
            }
        }
    });
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
            service.with_console(listener)
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

async fn health(
    rules: &cassette_proto::Target,
    tls_ca: Option<&PathBuf>,
    wait: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    use std::time::{Duration, Instant};
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let tls = match tls_ca {
        Some(path) => Some(
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(path, "--tls-ca")?)),
        ),
        None => None,
    };
    let check = || async {
        let mut client = HealthClient::new(rules.connect_with(tls.as_ref()).await?);
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
    let deadline = Instant::now() + wait.unwrap_or_default();
    loop {
        let result = tokio::time::timeout(Duration::from_secs(5), check())
            .await
            .with_context(|| format!("{rules} did not answer within 5 s"))
            .and_then(|r| r);
        match result {
            Ok(()) => {
                println!("SERVING");
                return Ok(());
            }
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A file a flag names, read now so a bad one stops the start with its name.
fn read(path: &PathBuf, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {flag} {}", path.display()))
}

async fn bind(listen: &Listen) -> anyhow::Result<Listener> {
    Ok(match listen {
        Listen::Tcp(addr) => Listener::Tcp(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?,
        ),
        Listen::Unix(path) => {
            // A socket file left by a killed predecessor would refuse the bind;
            // anything that is not a socket is someone else's and stays.
            if let Ok(metadata) = std::fs::symlink_metadata(path) {
                use std::os::unix::fs::FileTypeExt;
                anyhow::ensure!(
                    metadata.file_type().is_socket(),
                    "{} exists and is not a socket: refusing to replace it",
                    path.display()
                );
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

/// The console's listen address, or `off`.
#[derive(Debug, Clone)]
enum HttpListen {
    Off,
    Addr(SocketAddr),
}

impl std::str::FromStr for HttpListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(HttpListen::Off),
            _ => s
                .parse()
                .map(HttpListen::Addr)
                .map_err(|e| format!("{s:?} is neither HOST:PORT nor off: {e}")),
        }
    }
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
