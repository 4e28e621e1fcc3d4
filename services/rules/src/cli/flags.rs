//! The serving flags that are not the top level's: security, the etcd
//! log, limits, listen addresses; each turned into what `cassette-rules`'
//! library takes, reading every file a flag names now so a bad one stops
//! the start with its name.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use cassette_auth::{Authenticator, Policy, TrustDomain};
use cassette_eventlog::{Signing, SigningKey, TrustedKeys};
use cassette_rules::{Limits, Listener, Security, TlsFiles};
use tokio::net::{TcpListener, UnixListener};
use tonic::transport::{Certificate, ClientTlsConfig};

/// Without --tls-cert the service runs in development mode: plaintext on
/// loopback and Unix sockets only, every caller `anonymous` with role admin.
#[derive(Debug, clap::Args)]
pub struct SecurityArgs {
    /// The server's certificate chain (PEM). Turns on TLS for every listener.
    #[arg(long, env = "CASSETTE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

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
    pub insecure_plaintext: bool,
}

/// The event log's signatures: who signs appends, whose signatures count.
#[derive(Debug, clap::Args)]
pub struct SigningArgs {
    /// The Ed25519 key (PKCS#8 PEM, as `openssl genpkey -algorithm ed25519`
    /// writes it) that signs the head of every append. Required with
    /// --tls-cert; `cassette-rules pki init` writes one (log-signing.key).
    #[arg(long, env = "CASSETTE_LOG_SIGNING_KEY", global = true)]
    log_signing_key: Option<PathBuf>,
    /// The public keys whose signatures the log accepts (SubjectPublicKeyInfo
    /// PEM, as `openssl pkey -pubout` writes them; several during a key
    /// rotation): only records one of them signed are served. Required with
    /// --tls-cert; `pki init` writes one (log-trusted-keys.pem).
    #[arg(long, env = "CASSETTE_LOG_TRUSTED_KEYS", global = true)]
    log_trusted_keys: Option<PathBuf>,
}

impl SigningArgs {
    /// How the service signs and verifies its log. Secured mode (TLS)
    /// requires both flags; development mode signs when given both and
    /// otherwise runs unsigned, with a warning.
    pub fn signing(&self, secured: bool) -> anyhow::Result<Signing> {
        match (&self.log_signing_key, &self.log_trusted_keys) {
            (Some(key), Some(trusted)) => {
                let signing = Signing::new(SigningKey::load(key)?, self.trusted(trusted)?)
                    .with_context(|| format!("--log-signing-key {}", key.display()))?;
                Ok(signing)
            }
            (None, None) if secured => bail!(
                "--tls-cert signs the event log: give --log-signing-key and --log-trusted-keys \
                 (`cassette-rules pki init` writes log-signing.key and log-trusted-keys.pem beside the CA)"
            ),
            (None, None) => {
                tracing::warn!(
                    "the event log is not signed (no --log-signing-key/--log-trusted-keys): \
                     whoever can write its store can write its history"
                );
                Ok(Signing::default())
            }
            (Some(_), None) => bail!(
                "--log-signing-key needs --log-trusted-keys (which must hold its public key)"
            ),
            (None, Some(_)) => bail!(
                "--log-trusted-keys needs --log-signing-key: the service signs what it appends"
            ),
        }
    }

    /// The trusted keys alone, for tools that only read (and remove) what the
    /// service wrote.
    pub fn verify_only(&self) -> anyhow::Result<Signing> {
        Ok(match &self.log_trusted_keys {
            Some(trusted) => Signing::verify_only(self.trusted(trusted)?),
            None => Signing::default(),
        })
    }

    fn trusted(&self, path: &std::path::Path) -> anyhow::Result<TrustedKeys> {
        TrustedKeys::load(path).context("--log-trusted-keys")
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StoreKind {
    Sled,
    Etcd,
}

/// The etcd cluster of `--store etcd`.
#[derive(Debug, clap::Args)]
pub struct EtcdArgs {
    /// Client URLs of the etcd members (http:// or https://), comma-separated.
    #[arg(
        long,
        env = "CASSETTE_ETCD_ENDPOINTS",
        value_delimiter = ',',
        global = true
    )]
    etcd_endpoints: Vec<String>,
    /// Every key of the log starts with it: several deployments can share a cluster.
    #[arg(
        long,
        env = "CASSETTE_ETCD_PREFIX",
        default_value = "/cassette/v1",
        global = true
    )]
    etcd_prefix: String,
    /// CA (PEM) to check https:// etcd members with.
    #[arg(long, env = "CASSETTE_ETCD_CA", global = true)]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for an etcd cluster that asks for one.
    #[arg(long, env = "CASSETTE_ETCD_CERT", requires = "etcd_key", global = true)]
    etcd_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "CASSETTE_ETCD_KEY", requires = "etcd_cert", global = true)]
    etcd_key: Option<PathBuf>,
    /// User for an etcd cluster with authentication enabled.
    #[arg(
        long,
        env = "CASSETTE_ETCD_USER",
        requires = "etcd_password",
        global = true
    )]
    etcd_user: Option<String>,
    /// Its password (better given as CASSETTE_ETCD_PASSWORD than on the command line).
    #[arg(
        long,
        env = "CASSETTE_ETCD_PASSWORD",
        requires = "etcd_user",
        hide_env_values = true,
        global = true
    )]
    etcd_password: Option<String>,
    /// How long an append keeps trying (through leader elections) before it
    /// answers UNAVAILABLE.
    #[arg(long, env = "CASSETTE_ETCD_APPEND_DEADLINE", default_value = "10s", value_parser = cassette_proto::parse_duration, global = true)]
    etcd_append_deadline: std::time::Duration,
}

impl EtcdArgs {
    pub fn config(&self) -> anyhow::Result<cassette_eventlog::etcd::EtcdConfig> {
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
pub struct LimitArgs {
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
    /// Connections each listener (gRPC, console) holds at once. At the cap, a
    /// new connection closes the oldest one that has not finished its
    /// handshake or sent a request. Default: the listeners' share of the
    /// descriptor limit (raised to its hard limit at start-up), less 256.
    #[arg(long, env = "CASSETTE_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// How long a new connection may take to send its first request (its
    /// TLS handshake included), and the console's HTTP/1 requests their
    /// headers.
    #[arg(long, env = "CASSETTE_FIRST_REQUEST_TIMEOUT", default_value = "10s", value_parser = cassette_proto::parse_duration)]
    first_request_timeout: std::time::Duration,
    /// How long a connection with no request open (no call, no stream) is
    /// kept after its last request.
    #[arg(long, env = "CASSETTE_IDLE_TIMEOUT", default_value = "60s", value_parser = cassette_proto::parse_duration)]
    idle_timeout: std::time::Duration,
}

impl LimitArgs {
    pub fn connections(&self) -> cassette_rules::ConnectionFlags {
        cassette_rules::ConnectionFlags {
            max_per_listener: self.max_connections,
            first_request: self.first_request_timeout,
            idle: self.idle_timeout,
        }
    }

    pub fn limits(&self) -> Limits {
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
    pub fn security(&self) -> anyhow::Result<Security> {
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
        if self.client_ca.is_none() {
            tracing::warn!(
                "no --client-ca: only bearer tokens authenticate, and no enforcer can connect"
            );
        }
        tracing::info!(
            trust_domain = %self.trust_domain,
            principals = policy.grants().len(),
            policy = %policy_path.display(),
            "TLS on every listener; callers authenticated by client certificate or bearer token"
        );
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: self.client_ca.clone(),
        };
        let authenticator =
            Authenticator::secure(self.trust_domain.clone(), policy, Some(policy_path.clone()));
        Ok(Security::tls_files(files, authenticator)?)
    }
}

/// A file a flag names, read now so a bad one stops the start with its name.
pub fn read(path: &PathBuf, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {flag} {}", path.display()))
}

/// Binds `listen`; a unix socket file gets `unix_mode`.
pub async fn bind(listen: &Listen, unix_mode: u32) -> anyhow::Result<Listener> {
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
            let listener = UnixListener::bind(path)
                .with_context(|| format!("cannot listen on unix:{}", path.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(unix_mode))
                .with_context(|| {
                    format!("cannot set {}'s mode to {unix_mode:o}", path.display())
                })?;
            Listener::Unix(listener)
        }
    })
}

/// The console's listen address, or `off`.
#[derive(Debug, Clone)]
pub enum HttpListen {
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
pub enum Listen {
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
