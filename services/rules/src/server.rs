//! The server: one opened application (`cassette-service`'s store) behind
//! the gRPC services, the console and health, on every listener, until a
//! stop signal or a failed log write ends it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use cassette_auth::Authenticator;
use cassette_proto::pb::audit_service_server::AuditServiceServer;
use cassette_proto::pb::enforcer_service_server::EnforcerServiceServer;
use cassette_proto::pb::firewall_service_server::FirewallServiceServer;
use cassette_proto::pb::replica_service_server::ReplicaServiceServer;
use cassette_service::{Limits, LogConfig, LogStore, OpenStats, RulesMetrics, Store, StoreError};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_stream::StreamExt;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

use crate::connections::{ConnectionLimits, Gate, TrackRequests};
use crate::console;
use crate::grpc::{caller, present, AuditApi, EnforcerApi, FirewallApi, ReplicaApi};
use crate::replicas::ReplicaAddress;
use crate::tls::{ServerTls, TlsError, TlsFiles};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the event log: {0}")]
    Open(#[source] StoreError),
    #[error("cannot flush the event log on shutdown: {0}")]
    Close(#[source] StoreError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(
        "refusing to serve plaintext on {0}: without --tls-cert every caller is an admin, so only \
         loopback addresses and Unix sockets are served (give --tls-cert/--tls-key, or \
         --insecure-plaintext if you really mean it)"
    )]
    PlaintextNotLoopback(std::net::SocketAddr),
    #[error(
        "refusing to serve the console in plaintext on {0}: without --tls-cert every caller is an \
         admin, so only a loopback --http-listen is served (give --tls-cert/--tls-key, or \
         --insecure-plaintext if you really mean it)"
    )]
    ConsolePlaintextNotLoopback(std::net::SocketAddr),
    #[error("listener: {0}")]
    Listener(#[source] std::io::Error),
    #[error("the console: {0}")]
    Console(String),
    #[error("stopped: writing the event log failed ({0}); restart on what is on disk")]
    LogFailed(String),
    #[error(
        "--replica-address {0}: the other replicas could not authenticate to this one (nor it to \
         them) without client certificates: give --client-ca, or leave --replica-address out to \
         share through etcd"
    )]
    ReplicaAddressWithoutCertificates(String),
    #[error("--replica-address {address}: {why}")]
    ReplicaAddress { address: String, why: &'static str },
}

/// Who may call, and over what.
pub struct Security {
    pub authenticator: Arc<Authenticator>,
    /// TLS for every listener, gRPC and console (server certificate, and the
    /// CA client certificates must chain to); `None` is plaintext.
    pub tls: Option<Arc<ServerTls>>,
    /// Serve plaintext on non-loopback addresses too.
    pub insecure_plaintext: bool,
}

impl Security {
    /// Development mode: plaintext on loopback and Unix sockets only, every
    /// caller `anonymous` with role admin.
    pub fn development() -> Self {
        Self {
            authenticator: Arc::new(Authenticator::development()),
            tls: None,
            insecure_plaintext: false,
        }
    }

    /// TLS on every listener with the server certificate `cert` and its `key`
    /// (PEM). Client certificates must chain to `client_ca` (PEM); without it
    /// only bearer tokens authenticate. Certificates are optional at the TLS
    /// layer because bearer-token callers present none.
    pub fn tls(
        cert: Vec<u8>,
        key: Vec<u8>,
        client_ca: Option<Vec<u8>>,
        authenticator: Authenticator,
    ) -> Result<Self, TlsError> {
        let tls = ServerTls::from_pem(&cert, &key, client_ca.as_deref())?;
        Ok(Self::with_tls(tls, authenticator))
    }

    /// [`Security::tls`] from files, which a reload (SIGHUP) reads again.
    pub fn tls_files(files: TlsFiles, authenticator: Authenticator) -> Result<Self, TlsError> {
        Ok(Self::with_tls(ServerTls::from_files(files)?, authenticator))
    }

    fn with_tls(tls: ServerTls, authenticator: Authenticator) -> Self {
        Self {
            authenticator: Arc::new(authenticator),
            tls: Some(Arc::new(tls)),
            insecure_plaintext: false,
        }
    }
}

/// What grpc.health.v1 reports on: the server as a whole ("") and each
/// service, by the names the generated servers register.
const SERVICES: [&str; 5] = [
    "",
    <FirewallServiceServer<FirewallApi> as NamedService>::NAME,
    <EnforcerServiceServer<EnforcerApi> as NamedService>::NAME,
    <AuditServiceServer<AuditApi> as NamedService>::NAME,
    <ReplicaServiceServer<ReplicaApi> as NamedService>::NAME,
];

/// How long a service whose log failed keeps answering (UNAVAILABLE, health
/// NOT_SERVING) before it stops.
const FAILURE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// How often the certificates the service holds are checked for their end.
const CERTIFICATE_CHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// How long a stop waits for in-flight calls by default.
pub const DEFAULT_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// One listener's server, running until the stop signal.
type Serving = Pin<Box<dyn Future<Output = Result<(), ServeError>> + Send>>;

/// A bound socket to serve gRPC on.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// An opened rules service: its log replayed, its writer running.
pub struct RulesService {
    store: Arc<Store>,
    stats: OpenStats,
    security: Security,
    limits: Limits,
    shutdown_grace: std::time::Duration,
    console: Option<TcpListener>,
    /// Names besides its listen address and localhost the console answers to.
    allowed_hosts: Vec<String>,
    connections: ConnectionFlags,
    /// Where the other replicas of a shared log reach this one (`None`: its
    /// first TCP listener's address, if it is a specific one).
    replica_address: Option<ReplicaAddress>,
}

/// How connections are bounded, as the flags say (see
/// [`ConnectionLimits`]): `max_per_listener` by default from the
/// descriptor limit.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionFlags {
    pub max_per_listener: Option<usize>,
    pub first_request: std::time::Duration,
    pub idle: std::time::Duration,
}

impl Default for ConnectionFlags {
    fn default() -> Self {
        Self {
            max_per_listener: None,
            first_request: ConnectionLimits::DEFAULT_FIRST_REQUEST,
            idle: ConnectionLimits::DEFAULT_IDLE,
        }
    }
}

/// A TCP listener's connections, without Nagle's delay.
fn tcp_accepted(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send + 'static {
    TcpListenerStream::new(listener).map(|stream| {
        let stream = stream?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

impl RulesService {
    /// Opens the log `config` names and replays it (checking its hash
    /// chain): the embedded sled log, or one in an etcd cluster shared with
    /// other replicas. Must run inside a tokio runtime.
    pub async fn open(config: &LogConfig) -> Result<Self, ServeError> {
        let (store, stats) = Store::open(config, Arc::new(present::ProtoWire))
            .await
            .map_err(ServeError::Open)?;
        let signed_by = config.signing.key.as_ref().map(|k| k.key_id().to_owned());
        let trusted_keys = config
            .signing
            .trusted
            .as_ref()
            .map(|t| t.ids().collect::<Vec<_>>().join(","));
        match &config.store {
            LogStore::Sled(data_dir) => tracing::info!(
                data_dir = %data_dir.display(),
                events = stats.events,
                firewalls = stats.firewalls,
                elapsed_ms = stats.elapsed.as_millis() as u64,
                snapshot = stats.snapshot,
                signed_by,
                trusted_keys,
                "{}",
                started_from(stats, "event log replayed")
            ),
            LogStore::Etcd(etcd) => tracing::info!(
                endpoints = ?etcd.endpoints,
                prefix = %etcd.prefix,
                events = stats.events,
                firewalls = stats.firewalls,
                elapsed_ms = stats.elapsed.as_millis() as u64,
                snapshot = stats.snapshot,
                signed_by,
                trusted_keys,
                "{}",
                started_from(stats, "event log replayed from etcd")
            ),
        }
        Ok(Self::serving(store, stats))
    }

    /// A service for `store`, in development mode with the default limits.
    fn serving(store: Arc<Store>, stats: OpenStats) -> Self {
        Self {
            store,
            stats,
            security: Security::development(),
            limits: Limits::default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            console: None,
            allowed_hosts: Vec::new(),
            connections: ConnectionFlags::default(),
            replica_address: None,
        }
    }

    /// Serves with `security` instead of development mode.
    pub fn with_security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// How long a stop waits for in-flight calls before it flushes and ends anyway.
    pub fn with_shutdown_grace(mut self, grace: std::time::Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Also serves the console (the Firewall page, its JSON API, `/metrics`
    /// and `/healthz`) on `listener`: HTTPS when the service has TLS.
    pub fn with_console(mut self, listener: TcpListener) -> Self {
        self.console = Some(listener);
        self
    }

    /// How connections are bounded on every listener.
    pub fn with_connection_flags(mut self, flags: ConnectionFlags) -> Self {
        self.connections = flags;
        self
    }

    /// Host names the console answers to besides its listen address and
    /// `localhost` (see `console::Guard`).
    pub fn with_allowed_hosts(mut self, hosts: Vec<String>) -> Self {
        self.allowed_hosts = hosts;
        self
    }

    /// The URL the other replicas of a shared log reach this one at (see
    /// `--replica-address`).
    pub fn with_replica_address(mut self, address: Option<ReplicaAddress>) -> Self {
        self.replica_address = address;
        self
    }

    /// On a shared log: how this replica shares its enforcers' sync state
    /// with the others. Directly, at its address, when it has one and the
    /// others can authenticate to it; else through etcd. It follows the
    /// replicas that share directly either way (when it can authenticate).
    fn share_with_replicas(&self, listeners: &[Listener]) -> Result<(), ServeError> {
        let tls = self.security.tls.clone();
        let certificates = tls.as_ref().is_none_or(|t| t.replica_client().is_some());
        let listening = listeners.iter().find_map(|l| match l {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(_) => None,
        });
        let address = match &self.replica_address {
            Some(ReplicaAddress::Url(url)) => {
                self.check_replica_address(url, certificates)?;
                Some(url.clone())
            }
            Some(ReplicaAddress::Off) => None,
            None => crate::replicas::default_address(listening, tls.is_some()),
        };
        // Checked whatever the log: a wrong address is refused before it
        // could matter.
        let Some(replicas) = self.store.replicas() else {
            return Ok(());
        };
        if !certificates {
            tracing::warn!(
                "this replica shares its enforcers' sync state through etcd and cannot follow \
                 replicas that share theirs directly: without --client-ca it has no identity \
                 they admit"
            );
            return Ok(());
        }
        let dialer = Arc::new(crate::replicas::GrpcDialer::new(
            replicas.id(),
            Box::new(move || tls.as_ref().and_then(|t| t.replica_client())),
            self.security.insecure_plaintext,
        ));
        match address {
            Some(address) => replicas.share_directly(&address, dialer),
            None => {
                tracing::info!(
                    "this replica shares its enforcers' sync state through etcd: give \
                     --replica-address (the URL the other replicas reach it at) to share it directly"
                );
                replicas.follow_with(dialer);
            }
        }
        Ok(())
    }

    /// A `--replica-address` the other replicas could follow: with
    /// certificates to authenticate with, over the service's own scheme, and
    /// in plaintext only on loopback unless meant.
    fn check_replica_address(&self, address: &str, certificates: bool) -> Result<(), ServeError> {
        let refused = |why| {
            Err(ServeError::ReplicaAddress {
                address: address.to_owned(),
                why,
            })
        };
        if !certificates {
            return Err(ServeError::ReplicaAddressWithoutCertificates(
                address.to_owned(),
            ));
        }
        if !self.security.insecure_plaintext
            && !cassette_proto::Target::Http(address.to_owned()).stays_private()
        {
            return refused(
                "the other replicas would follow this one in plaintext beyond loopback: \
                 serve TLS, or give --insecure-plaintext if you really mean it",
            );
        }
        let https = address.starts_with("https://");
        match (https, self.security.tls.is_some()) {
            (true, false) => refused("https:// needs --tls-cert: this service serves plaintext"),
            (false, true) => refused("this service serves TLS: give an https:// URL"),
            _ => Ok(()),
        }
    }

    pub fn stats(&self) -> OpenStats {
        self.stats
    }

    /// The service's metrics, for a `/metrics` endpoint.
    pub fn metrics(&self) -> Arc<RulesMetrics> {
        self.store.metrics().clone()
    }

    /// Serves on `listener` until `shutdown` resolves, then stops accepting,
    /// ends sync streams, finishes in-flight requests, commits what they
    /// queued and flushes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        self.serve_all(vec![Listener::Tcp(listener)], shutdown)
            .await
    }

    /// [`RulesService::serve`] on several listeners at once (say, loopback TCP
    /// for users and a Unix socket for enforcers in other network namespaces).
    pub async fn serve_all(
        mut self,
        listeners: Vec<Listener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        // Read-only (a log that failed verification) is not serving: it
        // answers to investigate, but takes no changes and syncs no enforcer.
        let status = match self.store.read_only() {
            Ok(()) => tonic_health::ServingStatus::Serving,
            Err(_) => tonic_health::ServingStatus::NotServing,
        };
        for service in SERVICES {
            health.set_service_status(service, status).await;
        }
        // A log that fails verification later (another replica's append,
        // the head watch): not serving from then on.
        let mut halted = self.store.halted();
        let reporter = health.clone();
        tokio::spawn(async move {
            let halt = halted.wait_for(Option::is_some).await.map(|h| h.clone());
            if let Ok(Some(halt)) = halt {
                tracing::error!(
                    ?halt,
                    "the event log fails verification: read-only, NOT_SERVING"
                );
                for service in SERVICES {
                    reporter
                        .set_service_status(service, tonic_health::ServingStatus::NotServing)
                        .await;
                }
            }
        });
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(cassette_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // google.rpc error details, so grpcurl can print BadRequest & co.
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        };
        if self.security.tls.is_none() && !self.security.insecure_plaintext {
            for listener in &listeners {
                if let Listener::Tcp(l) = listener {
                    let addr = l.local_addr().map_err(ServeError::Listener)?;
                    if !addr.ip().is_loopback() {
                        return Err(ServeError::PlaintextNotLoopback(addr));
                    }
                }
            }
            if let Some(console) = &self.console {
                let addr = console.local_addr().map_err(ServeError::Listener)?;
                if !addr.ip().is_loopback() {
                    return Err(ServeError::ConsolePlaintextNotLoopback(addr));
                }
            }
        }
        if self.security.authenticator.is_development() {
            tracing::warn!(
                "development mode: no TLS, every caller is `anonymous` with role admin \
                 (x-actor names who asks); give --tls-cert, --tls-key and --policy to secure it"
            );
        }
        let limits = &self.limits;
        let authenticate = caller::Authenticate(self.security.authenticator.clone());
        let authenticator = &self.security.authenticator;
        let firewall_api = Arc::new(FirewallApi::new(
            self.store.clone(),
            limits,
            authenticator.clone(),
        ));
        let firewall = FirewallServiceServer::from_arc(firewall_api.clone())
            .max_decoding_message_size(limits.max_message_bytes);
        let enforcer = EnforcerServiceServer::new(EnforcerApi::new(
            self.store.clone(),
            self.security.authenticator.clone(),
        ))
        .max_decoding_message_size(limits.max_message_bytes);
        let audit = AuditServiceServer::new(AuditApi::new(
            self.store.clone(),
            limits,
            authenticator.clone(),
        ))
        .max_decoding_message_size(limits.max_message_bytes);
        let replica =
            ReplicaServiceServer::new(ReplicaApi::new(self.store.clone(), authenticator.clone()))
                .max_decoding_message_size(limits.max_message_bytes);
        self.share_with_replicas(&listeners)?;
        let (stop, stopped) = watch::channel(false);
        let mut servers: Vec<Serving> = Vec::new();
        let connection_limits = ConnectionLimits::new(
            self.connections.max_per_listener,
            listeners.len() + usize::from(self.console.is_some()),
            self.connections.first_request,
            self.connections.idle,
        );
        tracing::info!(
            max_per_listener = connection_limits.max_per_listener,
            first_request_ms = connection_limits.first_request.as_millis() as u64,
            idle_ms = connection_limits.idle.as_millis() as u64,
            "connections bounded"
        );
        let metrics = self.store.metrics().clone();
        let gate = || Gate::new(connection_limits, metrics.clone());
        for listener in listeners {
            let mut builder = Server::builder()
                .max_concurrent_streams(limits.max_concurrent_streams)
                .http2_keepalive_interval(Some(limits.keepalive_interval))
                .http2_keepalive_timeout(Some(limits.keepalive_timeout))
                .layer(TrackRequests);
            let router = builder
                .add_service(health_service.clone())
                .add_service(reflection().build_v1()?)
                .add_service(reflection().build_v1alpha()?)
                .add_service(InterceptedService::new(
                    firewall.clone(),
                    authenticate.clone(),
                ))
                .add_service(InterceptedService::new(
                    enforcer.clone(),
                    authenticate.clone(),
                ))
                .add_service(InterceptedService::new(audit.clone(), authenticate.clone()))
                .add_service(InterceptedService::new(
                    replica.clone(),
                    authenticate.clone(),
                ));
            let mut stopped = stopped.clone();
            let stop_signal = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            let tls = self.security.tls.as_ref().map(|tls| tls.grpc());
            let gate = gate();
            servers.push(match (listener, tls) {
                (Listener::Tcp(l), None) => {
                    let incoming = gate.admit_all(tcp_accepted(l), false);
                    Box::pin(async move {
                        router
                            .serve_with_incoming_shutdown(incoming, stop_signal)
                            .await
                            .map_err(ServeError::from)
                    })
                }
                (Listener::Tcp(l), Some(tls)) => {
                    let incoming = crate::tls::incoming(gate.admit_all(tcp_accepted(l), true), tls);
                    Box::pin(async move {
                        router
                            .serve_with_incoming_shutdown(incoming, stop_signal)
                            .await
                            .map_err(ServeError::from)
                    })
                }
                (Listener::Unix(l), None) => {
                    let incoming = gate.admit_all(UnixListenerStream::new(l), false);
                    Box::pin(async move {
                        router
                            .serve_with_incoming_shutdown(incoming, stop_signal)
                            .await
                            .map_err(ServeError::from)
                    })
                }
                (Listener::Unix(l), Some(tls)) => {
                    let accepted = gate.admit_all(UnixListenerStream::new(l), true);
                    let incoming = crate::tls::incoming(accepted, tls);
                    Box::pin(async move {
                        router
                            .serve_with_incoming_shutdown(incoming, stop_signal)
                            .await
                            .map_err(ServeError::from)
                    })
                }
            });
        }
        if let Some(listener) = self.console.take() {
            let tls = self.security.tls.as_ref().map(|tls| tls.console());
            let console = console::Console::new(
                firewall_api.clone(),
                self.store.clone(),
                self.security.authenticator.clone(),
                limits,
            )
            .map_err(|e| ServeError::Console(e.to_string()))?;
            let listen = listener.local_addr().map_err(ServeError::Listener)?;
            let guard = console::Guard::new(listen, tls.is_some(), &self.allowed_hosts);
            let router = console::router(console, guard).layer(
                axum::extract::DefaultBodyLimit::max(limits.max_message_bytes),
            );
            let mut stopped = stopped.clone();
            let stop_signal = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            let console_gate = gate();
            servers.push(Box::pin(async move {
                console::serve(listener, tls, router, console_gate, stop_signal)
                    .await
                    .map_err(ServeError::Listener)
            }));
        }
        if let Some(tls) = self.security.tls.clone() {
            // Certificates that end soon: said at start-up, after a reload
            // that changes them, and daily; the metrics follow each reload
            // and every minute.
            let metrics = self.store.metrics().clone();
            let stopping = self.store.stopping();
            let mut reloads = tls.reloads();
            tokio::spawn(async move {
                tokio::pin!(stopping);
                let mut said: Option<(Vec<crate::tls::Expiry>, std::time::Instant)> = None;
                loop {
                    reloads.borrow_and_update();
                    let (expiring, soonest) = tls.expiring();
                    let stale = said.as_ref().is_none_or(|(then, at)| {
                        *then != expiring || at.elapsed() >= std::time::Duration::from_secs(86_400)
                    });
                    if stale {
                        crate::tls::warn_expiring(&expiring);
                        said = Some((expiring.clone(), std::time::Instant::now()));
                    }
                    let at = soonest
                        .and_then(|t| t.duration_since(std::time::SystemTime::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_secs());
                    metrics
                        .tls_certificate_expiry
                        .set(i64::try_from(at).unwrap_or(i64::MAX));
                    metrics
                        .tls_certificates_expiring
                        .set(i64::try_from(expiring.len()).unwrap_or(i64::MAX));
                    tokio::select! {
                        () = &mut stopping => return,
                        _ = reloads.changed() => {}
                        () = tokio::time::sleep(CERTIFICATE_CHECK) => {}
                    }
                }
            });
        }
        let expiry = tokio::spawn(cassette_service::run_deadlines(self.store.clone()));
        let store = self.store.clone();
        let mut failure = self.store.failure();
        let signal = async move {
            let failed = tokio::select! {
                () = shutdown => None,
                reason = failure.wait_for(Option::is_some) => {
                    reason.ok().and_then(|r| r.clone())
                }
            };
            match &failed {
                None => tracing::info!("shutting down: no new requests, finishing in-flight ones"),
                Some(reason) => {
                    tracing::error!(%reason, "the event log failed: not serving, stopping")
                }
            }
            store.begin_shutdown();
            // Every service, and the server as a whole (""), says so.
            for service in SERVICES {
                health
                    .set_service_status(service, tonic_health::ServingStatus::NotServing)
                    .await;
            }
            if failed.is_some() {
                // Answer what is still queued (UNAVAILABLE) and let health
                // checkers see NOT_SERVING before the connections close.
                tokio::time::sleep(FAILURE_LINGER).await;
            }
            stop.send_replace(true);
            failed
        };
        let serving = futures_util::future::try_join_all(servers);
        tokio::pin!(signal, serving);
        let grace = self.shutdown_grace;
        let failed = tokio::select! {
            result = &mut serving => { result?; None }
            failed = &mut signal => {
                match tokio::time::timeout(grace, &mut serving).await {
                    Ok(result) => { result?; }
                    Err(_) => tracing::warn!(
                        grace_ms = grace.as_millis() as u64,
                        "calls still running after the shutdown grace period are cut"
                    ),
                }
                failed
            }
        };
        expiry.abort();
        if let Some(reason) = failed {
            return Err(ServeError::LogFailed(reason));
        }
        self.store.shutdown().await.map_err(ServeError::Close)?;
        tracing::info!("event log flushed; stopped");
        Ok(())
    }
}

/// What a start-up's log line says it started from.
fn started_from(stats: OpenStats, replayed: &'static str) -> &'static str {
    match stats.snapshot {
        Some(_) => "started from the projection snapshot and the log after it (the log before it is walked in the background)",
        None => replayed,
    }
}
