//! Bounded connections, as an attacker holds them: thousands of TCP
//! connections that never send a byte, against a service whose descriptor
//! limit is 1024, and connections that stop talking.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use cassette_e2e::secured::Secured;
use cassette_e2e::{binary, free_port, metric_value, pb, scrape, RulesProcess, Target};

/// Holds `n` connections to `addrs` (in turn) that send nothing, until told
/// to count how many the other end closed.
const HOLDER: &str = r#"
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(hard, 8192), max(hard, 8192)))
except (ValueError, OSError):
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
n = int(sys.argv[1])
addrs = [(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in sys.argv[2:]]
held = [socket.create_connection(addrs[i % len(addrs)], timeout=10) for i in range(n)]
print("open", len(held), flush=True)
for line in sys.stdin:
    closed = 0
    for s in held:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    print("closed", closed, flush=True)
"#;

struct Holder {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Holder {
    fn open(n: usize, addrs: &[String]) -> Self {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(HOLDER)
            .arg(n.to_string())
            .args(addrs)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("the holder says");
        assert_eq!(
            line.trim(),
            format!("open {n}"),
            "the holder opened them all"
        );
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// How many of its connections the service has closed.
    fn closed(&mut self) -> usize {
        writeln!(self.stdin, "count").expect("ask the holder");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("the holder counts");
        line.trim()
            .strip_prefix("closed ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("the holder said {line:?}"))
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn counter(text: &str, name: &str) -> f64 {
    metric_value(text, name).unwrap_or_else(|| panic!("{name} in {text}"))
}

/// The finding: with the service's descriptor limit at 1024 (TLS on),
/// 1,227 connections that never send a byte to the gRPC and console
/// listeners left a fresh grpcurl unanswered. Now each listener holds at
/// most its share (384 here), the oldest silent connection makes room for a
/// new one, a fresh client is served at once, and every silent one is
/// closed by its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_speak_starve_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let secured = Secured::new(
        r#"
[[principal]]
name = "admin"
role = "admin"
instances = ["*"]
"#,
    );
    let addr = free_port();
    let console = free_port();
    let metrics = free_port();
    let mut command = Command::new("sh");
    command.args([
        "-c",
        r#"ulimit -n 1024 && exec "$0" "$@""#,
        &binary("cassette-rules").display().to_string(),
    ]);
    let mut extra = secured.server_args();
    extra.extend(
        [
            "--http-listen",
            &console.to_string(),
            "--metrics-listen",
            &metrics.to_string(),
            "--first-request-timeout",
            "5s",
        ]
        .map(String::from),
    );
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let rules = RulesProcess::spawn_command(
        command,
        &dir.path().join("data"),
        &addr.to_string(),
        Target::Http(format!("https://{addr}")),
        &extra,
        Some(secured.principal("admin")),
    )
    .await;
    let log = rules.log();
    assert!(log.contains("descriptors=1024"), "{log}");
    assert!(log.contains("max_per_listener=384"), "{log}");

    let n = 1227;
    let mut holder =
        tokio::task::block_in_place(|| Holder::open(n, &[addr.to_string(), console.to_string()]));
    // The service accepts what the kernel queued for it: the caps are
    // reached, and each connection beyond makes room.
    let beyond = (n - 2 * 384) as f64;
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut evicted = 0.0;
    while evicted < beyond && Instant::now() < deadline {
        let text = tokio::task::block_in_place(|| scrape(metrics));
        evicted = counter(&text, "cassette_rules_connections_evicted_total");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{evicted} silent connections made room for newer ones");
    assert!(evicted > 0.0, "the caps were reached and made room");

    // A fresh client is served within 3 s: gRPC and the console.
    let started = Instant::now();
    let mut client = rules.client().await;
    let created = tokio::time::timeout(
        Duration::from_secs(3),
        client.create_firewall(pb::CreateFirewallRequest {
            instance_id: "web-1".into(),
            ..Default::default()
        }),
    )
    .await
    .expect("answered within 3 s")
    .expect("created");
    assert_eq!(created.into_inner().revision, 1);
    let health = tokio::task::block_in_place(|| {
        Command::new("curl")
            .args(["--silent", "--max-time", "3", "--cacert"])
            .arg(secured.pki.ca_cert_path())
            .arg(format!("https://127.0.0.1:{}/healthz", console.port()))
            .output()
            .expect("curl")
    });
    assert_eq!(String::from_utf8_lossy(&health.stdout), "SERVING\n");
    eprintln!(
        "a fresh client served {:?} after {n} silent connections",
        started.elapsed()
    );

    // Every silent connection is closed by its deadline.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut closed = 0;
    while Instant::now() < deadline {
        closed = tokio::task::block_in_place(|| holder.closed());
        if closed == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(closed, n, "every silent connection was closed");
    let text = tokio::task::block_in_place(|| scrape(metrics));
    assert!(counter(&text, "cassette_rules_connections_timed_out_total") > 0.0);
    // The fresh client's own connection, busy, was kept.
    let firewall = client
        .get_firewall(pb::GetFirewallRequest {
            instance_id: "web-1".into(),
            ..Default::default()
        })
        .await
        .expect("the fresh client goes on");
    assert_eq!(firewall.into_inner().revision, 1);
}

/// A connection that stops talking is closed after --idle-timeout, unless a
/// request is open on it (a sync stream lasts as long as it likes); an
/// HTTP/1 request whose headers never finish is closed after
/// --first-request-timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_idle_ones_close_open_streams_stay() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let console = free_port();
    let rules = RulesProcess::spawn(
        &dir.path().join("data"),
        &addr.to_string(),
        cassette_e2e::tcp_target(addr),
        &[
            "--http-listen",
            &console.to_string(),
            "--idle-timeout",
            "1s",
            "--first-request-timeout",
            "1s",
        ],
    )
    .await;
    let mut client = rules.client().await;
    cassette_e2e::create_firewall(&mut client, "web-1").await;
    let channel = cassette_e2e::channel(&rules.target).await;
    let mut stream = crate::sync::open_on(channel, "web-1", 0)
        .await
        .expect("a sync stream");
    assert_eq!(stream.next(Duration::from_secs(10)).await, Some(vec![1]));

    // A slow request: its headers never end.
    let slow = tokio::task::block_in_place(|| {
        use std::io::Read;
        let mut slow = std::net::TcpStream::connect(console).expect("connect");
        slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            .expect("a first request");
        slow.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = [0u8; 512];
        let read = slow.read(&mut answer).expect("its answer");
        assert!(String::from_utf8_lossy(&answer[..read]).contains("SERVING"));
        slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n")
            .expect("half a second request");
        let started = Instant::now();
        let read = slow.read(&mut answer);
        assert!(
            matches!(read, Ok(0) | Err(_)) || String::from_utf8_lossy(&answer).contains("408"),
            "closed, not answered: {read:?}"
        );
        started.elapsed()
    });
    assert!(slow < Duration::from_secs(8), "closed after {slow:?}");

    tokio::time::sleep(Duration::from_secs(3)).await;
    // The stream outlived the idle timeout: it still delivers.
    let revision = cassette_e2e::set_enabled(&mut client, "web-1", "default-ssh", false).await;
    assert_eq!(
        stream.next(Duration::from_secs(10)).await,
        Some(vec![revision])
    );
    let text = tokio::task::block_in_place(|| scrape(console));
    assert!(
        counter(&text, "cassette_rules_connections_timed_out_total") >= 1.0,
        "idle connections were closed: {text}"
    );
}
