//! `cassette-enforcer`: the per-instance sidecar that keeps the kernel's
//! nftables ruleset in step with the instance's firewall.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cassette_enforcement::{ClientTls, Config, Enforcer, EnforcerMetrics, FileKernel, Kernel};
use cassette_model::InstanceId;
use cassette_nft::NftKernel;
use cassette_proto::{parse_duration, Keepalive, Target};
use cassette_ruleset::TableName;
use clap::{Parser, ValueEnum};
use tokio::signal::unix::{signal, SignalKind};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Streams one instance's firewall events from the rules service, replays them
/// into the kernel (one nftables transaction per batch) and acknowledges what
/// is in force. Losing the rules service changes nothing in the kernel.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
struct Args {
    /// The rules service: http://HOST:PORT, https://HOST:PORT or unix:/PATH.
    /// Repeat it (or separate with commas) for several replicas: when one is
    /// unreachable the enforcer tries the next.
    #[arg(
        long,
        env = "CASSETTE_RULES",
        default_value = "http://127.0.0.1:50051",
        value_delimiter = ','
    )]
    rules: Vec<Target>,

    /// How often the connection to the rules service is pinged (HTTP/2 and TCP
    /// keepalive), e.g. 5s.
    #[arg(long, env = "CASSETTE_KEEPALIVE_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    keepalive_interval: Duration,

    /// How long a ping may go unanswered (and a connect may take) before the
    /// stream is dropped as dead and the next endpoint tried.
    #[arg(long, env = "CASSETTE_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    keepalive_timeout: Duration,

    /// CA (PEM) the rules service's certificate must chain to. Turns on TLS
    /// (with https:// or unix: targets).
    #[arg(long, env = "CASSETTE_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,

    /// This enforcer's certificate (PEM), with the URI SAN
    /// spiffe://<trust-domain>/enforcer/<instance>.
    #[arg(long, env = "CASSETTE_TLS_CERT", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,

    /// The certificate's private key (PEM).
    #[arg(long, env = "CASSETTE_TLS_KEY", requires_all = ["tls_ca", "tls_cert"])]
    tls_key: Option<PathBuf>,

    /// The name the rules service's certificate must carry (default: the
    /// host of --rules, or localhost for unix: targets).
    #[arg(long, env = "CASSETTE_TLS_SERVER_NAME", requires = "tls_ca")]
    tls_server_name: Option<String>,

    /// The instance whose firewall this enforcer applies.
    #[arg(long, env = "CASSETTE_INSTANCE")]
    instance: String,

    /// nft: the kernel (needs CAP_NET_ADMIN); file: write the ruleset to --ruleset-file.
    #[arg(long, env = "CASSETTE_BACKEND", value_enum)]
    backend: Backend,

    /// The nftables table (family inet) this enforcer owns; nothing else is touched.
    #[arg(long, env = "CASSETTE_TABLE", default_value = "cassette")]
    table: String,

    /// Where the file backend writes the ruleset.
    #[arg(
        long,
        env = "CASSETTE_RULESET_FILE",
        default_value = "./cassette-ruleset.nft"
    )]
    ruleset_file: PathBuf,

    /// Where the enforcer saves what it applied before each ack (per table: a
    /// snapshot, `<table>.state`, written atomically now and then, and a
    /// journal, `<table>.journal`, one record and one fdatasync per apply) and, at start-up,
    /// puts it back in force before it reaches the rules service: an instance
    /// that reboots while the control plane is away keeps its firewall.
    #[arg(
        long,
        env = "CASSETTE_STATE_DIR",
        default_value = "/var/lib/cassette-enforcer"
    )]
    state_dir: PathBuf,

    /// Keep no state file: a restart starts from what the kernel holds (the
    /// defaults on an empty one) and replays the whole history. For dry runs
    /// and measurements; an instance that reboots without the rules service
    /// then comes back with the defaults.
    #[arg(long, env = "CASSETTE_NO_STATE", conflicts_with = "state_dir")]
    no_state: bool,

    /// How often the table is read back and repaired if it drifted (e.g. 30s, 500ms).
    #[arg(long, env = "CASSETTE_REFRESH_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    refresh_interval: Duration,

    /// How often the table's hit counters are reported to the rules service
    /// (e.g. 10s, 500ms): each rule's hits and last hit time.
    #[arg(long, env = "CASSETTE_REPORT_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    report_interval: Duration,

    /// Serve Prometheus metrics on http://ADDR/metrics (a loopback address
    /// unless --insecure-plaintext).
    #[arg(long, env = "CASSETTE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,

    /// Talk plaintext to a --rules address beyond loopback, and serve
    /// metrics beyond loopback: only where something else protects the
    /// network (an enforcer's stream carries its instance's whole firewall).
    #[arg(long, env = "CASSETTE_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,

    /// Run this nft command per change instead of loading libnftables.
    #[arg(long, env = "CASSETTE_NFT_PATH")]
    nft_path: Option<PathBuf>,

    /// Create the instance's firewall (with the default rules) if it does not
    /// exist yet: for demos and compose files; in production the console does.
    #[arg(long, env = "CASSETTE_CREATE_FIREWALL")]
    create_firewall: bool,

    /// Names this enforcer in the rules service's logs (default: hostname-pid).
    #[arg(long, env = "CASSETTE_ENFORCER_ID")]
    enforcer_id: Option<String>,

    /// Log filter, in tracing's EnvFilter syntax.
    #[arg(long, env = "CASSETTE_LOG", default_value = "info")]
    log: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Backend {
    Nft,
    File,
}

// One thread: the enforcer follows one stream, and its blocking work (the
// kernel transaction, the state's fdatasync) runs on the blocking pool. A
// message then wakes the task on the thread that read it, not on another
// worker: the two hops of a change cost 0.08 ms instead of 0.11
// (`cassette-bench e2e --breakdown`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&args.log).context("invalid --log filter")?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    plaintext_stays_private(&args)?;
    // Its saved state (the instance's whole firewall) and ruleset file are
    // its own: directories 0700, files 0600.
    // SAFETY: umask(2) cannot fail and only sets this process's file-mode
    // creation mask.
    unsafe {
        libc::umask(0o077);
    }
    let instance = InstanceId::parse(&args.instance).context("invalid --instance")?;
    let table = TableName::parse(&args.table).context("invalid --table")?;
    let enforcer_id = args.enforcer_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let config = Config {
        rules: args.rules.clone(),
        keepalive: Keepalive {
            interval: args.keepalive_interval,
            timeout: args.keepalive_timeout,
        },
        tls: ClientTls::new(client_tls(&args)?),
        instance,
        enforcer_id,
        table: table.clone(),
        refresh_interval: args.refresh_interval,
        report_interval: args.report_interval,
        state_dir: (!args.no_state).then(|| args.state_dir.clone()),
    };
    match args.backend {
        Backend::Nft => {
            let kernel = NftKernel::new(table, args.nft_path.clone());
            tracing::info!(mode = %kernel.mode(), "nft backend");
            run(config, kernel, &args).await
        }
        Backend::File => {
            let kernel = FileKernel::new(args.ruleset_file.clone(), table);
            tracing::info!(path = %args.ruleset_file.display(), "file backend");
            run(config, kernel, &args).await
        }
    }
}

/// TLS to the rules service from --tls-ca/--tls-cert/--tls-key.
fn client_tls(args: &Args) -> anyhow::Result<Option<ClientTlsConfig>> {
    let (Some(ca), Some(cert), Some(key)) = (&args.tls_ca, &args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let read = |path: &PathBuf, flag: &str| {
        std::fs::read(path).with_context(|| format!("cannot read {flag} {}", path.display()))
    };
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca, "--tls-ca")?))
        .identity(Identity::from_pem(
            read(cert, "--tls-cert")?,
            read(key, "--tls-key")?,
        ));
    if let Some(name) = &args.tls_server_name {
        tls = tls.domain_name(name.clone());
    }
    Ok(Some(tls))
}

async fn run(config: Config, kernel: impl Kernel, args: &Args) -> anyhow::Result<()> {
    let endpoints: Vec<String> = config.rules.iter().map(ToString::to_string).collect();
    tracing::info!(
        instance_id = %config.instance,
        rules = ?endpoints,
        tls = config.tls.is_some(),
        state_dir = %if args.no_state { "none".into() } else { args.state_dir.display().to_string() },
        "enforcer starting"
    );
    if args.create_firewall {
        tokio::spawn(create_firewall(
            config.rules.clone(),
            config.tls.current(),
            config.instance.clone(),
        ));
    }
    let tls = config.tls.clone();
    let enforcer = Enforcer::new(config, kernel);
    check_certificate(args, &enforcer.metrics());
    // SIGHUP: the certificate, key and CA read again for the next
    // connection (a renewed certificate); the open stream goes on.
    let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let (reload_args, metrics) = (args.clone(), enforcer.metrics());
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match client_tls(&reload_args) {
                Ok(Some(config)) => {
                    tls.replace(config);
                    tracing::info!(
                        "SIGHUP: TLS certificate, key and CA reloaded for the next connection"
                    );
                    check_certificate(&reload_args, &metrics);
                }
                Ok(None) => tracing::info!("SIGHUP: no TLS to reload"),
                Err(error) => tracing::error!(
                    error = %format!("{error:#}"),
                    "SIGHUP: TLS files refused; the previous ones stay"
                ),
            }
        }
    });
    if let Some(addr) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for metrics"))?;
        let metrics = enforcer.metrics();
        tokio::spawn(cassette_metrics::serve(
            listener,
            Arc::new(move || metrics.render()),
            std::future::pending(),
        ));
    }
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    enforcer
        .run(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            tracing::info!("stopping; the kernel keeps the last applied ruleset");
        })
        .await;
    Ok(())
}

/// Refuses plaintext that would leave the machine, unless told.
fn plaintext_stays_private(args: &Args) -> anyhow::Result<()> {
    if args.insecure_plaintext {
        return Ok(());
    }
    for target in &args.rules {
        anyhow::ensure!(
            target.stays_private(),
            "refusing plaintext to {target}: the stream carries the instance's firewall and its acks; \
             use https:// with --tls-ca/--tls-cert/--tls-key, a loopback address or a unix: socket \
             (or --insecure-plaintext if something else protects that network)"
        );
    }
    if let Some(addr) = args.metrics_listen {
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "refusing to serve metrics in plaintext on {addr}: give a loopback address \
             (or --insecure-plaintext)"
        );
    }
    Ok(())
}

/// Publishes when the enforcer's certificate ends, and warns when that is
/// within [`cassette_auth::CERTIFICATE_WARNING`].
fn check_certificate(args: &Args, metrics: &EnforcerMetrics) {
    let Some(path) = &args.tls_cert else {
        return;
    };
    let end = std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|pem| cassette_auth::certificate_end_pem(&pem));
    let (subject, end) = match end {
        Ok(end) => end,
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "cannot read when the certificate ends");
            return;
        }
    };
    let at = end
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    metrics
        .tls_certificate_expiry
        .set(i64::try_from(at).unwrap_or(i64::MAX));
    let left = end
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    if left <= cassette_auth::CERTIFICATE_WARNING {
        tracing::warn!(
            %subject,
            days_left = left.as_secs() / 86_400,
            "the enforcer's certificate ends soon: renew it and send SIGHUP"
        );
    }
}

/// CreateFirewall (idempotent), retried until the rules service answers.
/// Refused outright (an enforcer identity may not call the API) ends it.
async fn create_firewall(rules: Vec<Target>, tls: Option<ClientTlsConfig>, instance: InstanceId) {
    use cassette_proto::pb::{
        firewall_service_client::FirewallServiceClient, CreateFirewallRequest,
    };
    let mut pause = Duration::from_millis(200);
    for attempt in 0usize.. {
        let Some(rules) = rules.get(attempt % rules.len().max(1)) else {
            return;
        };
        let created = async {
            let mut client = FirewallServiceClient::new(rules.connect_with(tls.as_ref()).await?);
            client
                .create_firewall(CreateFirewallRequest {
                    instance_id: instance.to_string(),
                    request_id: String::new(),
                    ..Default::default()
                })
                .await?;
            anyhow::Ok(())
        };
        match created.await {
            Ok(()) => {
                tracing::info!(instance_id = %instance, "firewall exists");
                return;
            }
            Err(error) => {
                let refused = error.downcast_ref::<tonic::Status>().is_some_and(|s| {
                    matches!(
                        s.code(),
                        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
                    )
                });
                if refused {
                    tracing::error!(%error, "--create-firewall refused; create the firewall with an editor's credentials");
                    return;
                }
                tracing::warn!(%error, "cannot create the firewall yet");
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}
