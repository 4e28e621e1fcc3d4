//! The end-to-end test harness: start the rules service (in-process on a real
//! socket, or as the real binary), connect generated clients, and clean up
//! every process and directory a test made, also when it fails.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cassette_proto::pb::firewall_service_client::FirewallServiceClient;
pub use cassette_proto::Target;
use cassette_rules::{LogConfig, RulesService};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

pub mod browser;
pub mod cluster;
pub mod etcd;
pub mod netns;
pub mod secured;

pub use cassette_proto::pb;

/// How long a service may take to start or stop before a test gives up.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub type Client = FirewallServiceClient<Channel>;

/// A binary of this workspace, built next to the test binary
/// (`cargo build --bins`; `scripts/test.sh` does it). `CASSETTE_BIN_DIR` overrides.
pub fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("CASSETTE_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
            .expect("cannot locate the target directory"),
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Connects a client, retrying until `PATIENCE` passes.
pub async fn connect(addr: SocketAddr) -> Client {
    connect_to(&tcp_target(addr)).await
}

/// Connects a client to `target` (TCP or Unix socket), retrying until `PATIENCE` passes.
pub async fn connect_to(target: &Target) -> Client {
    FirewallServiceClient::new(channel(target).await)
}

pub fn tcp_target(addr: SocketAddr) -> Target {
    Target::Http(format!("http://{addr}"))
}

pub async fn channel(target: &Target) -> Channel {
    channel_with(target, None).await
}

/// A channel to `target`, over TLS when `tls` is given, retrying until `PATIENCE` passes.
pub async fn channel_with(target: &Target, tls: Option<&ClientTlsConfig>) -> Channel {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match target.connect_with(tls).await {
            Ok(channel) => return channel,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Waits until grpc.health.v1 reports SERVING.
pub async fn wait_serving(target: &Target) {
    wait_serving_with(target, None).await
}

/// [`wait_serving`] over TLS when `tls` is given.
pub async fn wait_serving_with(target: &Target, tls: Option<&ClientTlsConfig>) {
    wait_health(target, tls, ServingStatus::Serving).await
}

/// Waits until grpc.health.v1 reports `want` for the whole server (`""`).
pub async fn wait_health(target: &Target, tls: Option<&ClientTlsConfig>, want: ServingStatus) {
    let deadline = Instant::now() + PATIENCE;
    let mut health = HealthClient::new(channel_with(target, tls).await);
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status);
        if matches!(status, Ok(s) if s == want as i32) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{target} never reported {want:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The rules service as a library, on a real socket, with its data in `dir`.
pub struct InProcess {
    pub addr: SocketAddr,
    /// The service's metrics, as its `/metrics` would show them.
    pub metrics: std::sync::Arc<cassette_rules::RulesMetrics>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), cassette_rules::ServeError>>>,
    /// The etcd the log is in, with `CASSETTE_TEST_STORE=etcd`.
    etcd: Option<etcd::EtcdCluster>,
}

impl InProcess {
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(
            dir,
            cassette_rules::Security::development(),
            Default::default(),
        )
        .await
    }

    /// A secured service: TLS with client certificates, `secured`'s policy,
    /// its log signed with `secured`'s key.
    pub async fn start_secured(dir: &Path, secured: &secured::Secured) -> Self {
        Self::start_signed(
            dir,
            secured.security(),
            Default::default(),
            secured.signing(),
        )
        .await
    }

    pub async fn start_with(
        dir: &Path,
        security: cassette_rules::Security,
        limits: cassette_rules::Limits,
    ) -> Self {
        Self::start_signed(dir, security, limits, Default::default()).await
    }

    /// [`InProcess::start_with`], the log signed as `signing` says.
    pub async fn start_signed(
        dir: &Path,
        security: cassette_rules::Security,
        limits: cassette_rules::Limits,
        signing: cassette_eventlog::Signing,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        // CASSETTE_TEST_STORE=etcd runs the same tests on the etcd log: a
        // one-member cluster with its data in `dir`, so a restart on the same
        // directory finds the log again.
        let (service, etcd) = match std::env::var("CASSETTE_TEST_STORE").as_deref() {
            Ok("etcd") => {
                let etcd = etcd::EtcdCluster::start_in(&dir.join("etcd"), 1).await;
                let config = cassette_eventlog::etcd::EtcdConfig::new(etcd.endpoints());
                let service = RulesService::open(&LogConfig::etcd(config).signed(signing))
                    .await
                    .expect("open rules service on etcd");
                (service, Some(etcd))
            }
            _ => (
                RulesService::open(&LogConfig::sled(dir).signed(signing))
                    .await
                    .expect("open rules service"),
                None,
            ),
        };
        let service = service.with_security(security).with_limits(limits);
        let metrics = service.metrics();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(service.serve(listener, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            metrics,
            stop: Some(stop),
            task: Some(task),
            etcd,
        }
    }

    pub async fn client(&self) -> Client {
        connect(self.addr).await
    }

    /// `https://127.0.0.1:PORT` (the development PKI's server certificate names 127.0.0.1).
    pub fn https_target(&self) -> Target {
        Target::Http(format!("https://{}", self.addr))
    }

    /// A channel over TLS with `tls`'s identity.
    pub async fn tls_channel(&self, tls: &ClientTlsConfig) -> Channel {
        channel_with(&self.https_target(), Some(tls)).await
    }

    /// Graceful shutdown; panics if the service reports an error.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("service stops in time")
                .expect("service task")
                .expect("service stops cleanly");
        }
        // The log's etcd stops with the service (kept on disk for a restart).
        self.etcd.take();
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The real `cassette-rules` binary on a loopback port. Killed on drop; its
/// log is printed if the test is failing.
pub struct RulesProcess {
    /// What `--listen` was given: HOST:PORT or unix:/PATH.
    pub listen: String,
    pub target: Target,
    /// TLS (and the identity) `client` and the health check use.
    pub tls: Option<ClientTlsConfig>,
    /// The console's address (`--http-listen`), unless `extra` turned it off.
    pub console: Option<SocketAddr>,
    child: Option<Child>,
    log: PathBuf,
}

impl RulesProcess {
    /// Starts the binary on `data_dir` (logging to `data_dir`.log) and waits until it serves.
    pub async fn start(data_dir: &Path) -> Self {
        let addr = free_port();
        Self::spawn(data_dir, &addr.to_string(), tcp_target(addr), &[]).await
    }

    /// The same, serving on a Unix socket (reachable from other network namespaces).
    pub async fn start_unix(data_dir: &Path, socket: &Path, extra: &[&str]) -> Self {
        let listen = format!("unix:{}", socket.display());
        Self::spawn(data_dir, &listen, Target::Unix(socket.to_owned()), extra).await
    }

    pub async fn spawn(data_dir: &Path, listen: &str, target: Target, extra: &[&str]) -> Self {
        Self::spawn_with_tls(data_dir, listen, target, extra, None).await
    }

    /// [`RulesProcess::spawn`] for a service with TLS (its flags in `extra`);
    /// `tls` is what the harness connects with.
    pub async fn spawn_with_tls(
        data_dir: &Path,
        listen: &str,
        target: Target,
        extra: &[&str],
        tls: Option<ClientTlsConfig>,
    ) -> Self {
        Self::spawn_command(
            Command::new(binary("cassette-rules")),
            data_dir,
            listen,
            target,
            extra,
            tls,
        )
        .await
    }

    /// [`RulesProcess::spawn`] of a service that comes up read-only and
    /// says so (NOT_SERVING): its log fails verification.
    pub async fn spawn_halted(
        data_dir: &Path,
        listen: &str,
        target: Target,
        extra: &[&str],
    ) -> Self {
        let command = Command::new(binary("cassette-rules"));
        let want = ServingStatus::NotServing;
        Self::spawn_expecting(command, data_dir, listen, target, extra, None, want).await
    }

    /// The binary started by `command` (the binary itself, or a wrapper such
    /// as strace whose arguments end with it).
    pub async fn spawn_command(
        command: Command,
        data_dir: &Path,
        listen: &str,
        target: Target,
        extra: &[&str],
        tls: Option<ClientTlsConfig>,
    ) -> Self {
        // A service investigating a log that fails verification serves
        // read-only and says so: NOT_SERVING.
        let want = if extra.contains(&"--allow-unverified-log") {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        };
        Self::spawn_expecting(command, data_dir, listen, target, extra, tls, want).await
    }

    /// Starts `command` and waits until its health says `want`.
    async fn spawn_expecting(
        mut command: Command,
        data_dir: &Path,
        listen: &str,
        target: Target,
        extra: &[&str],
        tls: Option<ClientTlsConfig>,
        want: ServingStatus,
    ) -> Self {
        let log = data_dir.with_extension("log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open service log");
        // Tests run side by side: each console on a port of its own, unless
        // the test chose one (or "off").
        let console = match extra.iter().position(|a| *a == "--http-listen") {
            Some(i) => extra.get(i + 1).and_then(|a| a.parse().ok()),
            None => {
                let addr = free_port();
                command.arg("--http-listen").arg(addr.to_string());
                Some(addr)
            }
        };
        let child = command
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log handle"))
            .stderr(log_file)
            .spawn()
            .expect("spawn cassette-rules");
        let process = Self {
            listen: listen.to_owned(),
            target,
            tls,
            console,
            child: Some(child),
            log,
        };
        wait_health(&process.target, process.tls.as_ref(), want).await;
        process
    }

    pub async fn client(&self) -> Client {
        FirewallServiceClient::new(channel_with(&self.target, self.tls.as_ref()).await)
    }

    /// The pid, to signal it.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.pid();
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        self.wait_exit(PATIENCE)
    }

    /// Waits for the process to exit by itself (killed if it has not within `patience`).
    pub fn wait_exit(&mut self, patience: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("process is running");
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = child.try_wait().expect("wait for cassette-rules") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "cassette-rules did not exit within {patience:?}\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RulesProcess {
    fn drop(&mut self) {
        self.kill_9();
        if std::thread::panicking() {
            eprintln!("--- cassette-rules log ---\n{}", self.log());
        }
    }
}

/// CreateFirewall for `instance` (idempotent); panics if it fails.
pub async fn create_firewall(client: &mut Client, instance: &str) -> pb::Firewall {
    client
        .create_firewall(pb::CreateFirewallRequest {
            instance_id: instance.into(),
            request_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("create firewall {instance}: {s:?}"))
        .into_inner()
}

/// Turns `rule` of `instance` on or off; the revision after. Panics if refused.
pub async fn set_enabled(client: &mut Client, instance: &str, rule: &str, enabled: bool) -> u64 {
    client
        .update_rule(pb::UpdateRuleRequest {
            instance_id: instance.into(),
            rule_id: rule.into(),
            enabled: Some(enabled),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("update rule {rule} of {instance}: {s:?}"))
        .into_inner()
        .revision
}

/// GetFirewall for `instance`; panics if it fails.
pub async fn get_firewall(client: &mut Client, instance: &str) -> pb::Firewall {
    client
        .get_firewall(pb::GetFirewallRequest {
            instance_id: instance.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("get firewall {instance}: {s:?}"))
        .into_inner()
}

pub type AuditClient = pb::audit_service_client::AuditServiceClient<Channel>;

/// Every event ListEvents streams for `request`; panics if it fails.
/// Starts the service on `data` once more and checks, half a second in,
/// that `instance` still has exactly `events` events: what the service does
/// by itself on time (expiry, revert) happened once, not again at start-up.
pub async fn assert_restart_appends_nothing(data: &Path, instance: &str, events: usize) {
    let rules = RulesProcess::start(data).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut audit = AuditClient::new(channel(&rules.target).await);
    let again = instance_events(&mut audit, instance).await;
    assert_eq!(again.len(), events, "{again:?}");
}

/// Every event of `instance`, through ListEvents.
pub async fn instance_events(audit: &mut AuditClient, instance: &str) -> Vec<pb::Event> {
    let request = pb::ListEventsRequest {
        instance_id: instance.into(),
        ..Default::default()
    };
    list_events(audit, request).await
}

pub async fn list_events(
    client: &mut AuditClient,
    request: pb::ListEventsRequest,
) -> Vec<pb::Event> {
    let mut stream = client
        .list_events(request)
        .await
        .expect("list events")
        .into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.message().await.expect("event stream") {
        events.push(event);
    }
    events
}

/// The text a `/metrics` endpoint on `addr` serves.
pub fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http(addr, "GET", "/metrics", &[], "");
    assert_eq!(status, 200, "{body}");
    body
}

/// A raw HTTP/1.1 request (the console, a `/metrics` endpoint); (status, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, PATIENCE)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    // The address it connects to is the Host, unless the caller names one.
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        request.push_str(&format!("host: {addr}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of an unlabelled metric in Prometheus text, if present.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// A loopback address with a port that was free a moment ago.
///
/// Below the kernel's ephemeral range, so that no outbound connection of a
/// test running beside (they take their local ports from that range, a
/// thousand at a time in the connection tests) can take it before the
/// process it is for binds it; and each port is handed out once per test
/// process, starting at an offset of its own.
pub fn free_port() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (first, span) = if low > 12_000 {
        (10_000, low - 10_000)
    } else {
        // An unusual range: take what the kernel gives.
        let listener = StdListener::bind("127.0.0.1:0").expect("bind loopback");
        return listener.local_addr().expect("local addr");
    };
    let offset = std::process::id() % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = first + (offset + n) % span;
        let addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
        if StdListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free loopback port below {low}");
}
