//! Real kernels for tests: an "instance" network namespace and a "client"
//! namespace joined by a veth pair, created and always removed by the test.
//! Nothing here touches the root namespace's interfaces or firewall; traffic
//! goes only between the two namespaces, to TEST-NET-2 addresses (RFC 5737)
//! that exist nowhere else.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::{binary, PATIENCE};

pub const INSTANCE_IP: &str = "198.51.100.1";
/// The client namespace's address (where a test may run the rules service).
pub const CLIENT_IP: &str = "198.51.100.2";
/// A second client address, for allowlists: one source allowed, one not.
pub const OTHER_CLIENT_IP: &str = "198.51.100.3";
/// The same three over IPv6 (documentation prefix).
pub const INSTANCE_IP6: &str = "2001:db8:51::1";
pub const CLIENT_IP6: &str = "2001:db8:51::2";
pub const OTHER_CLIENT_IP6: &str = "2001:db8:51::3";

/// Echo servers, TCP and UDP, IPv4 and IPv6, on the ports given as
/// `tcp:PORT` / `udp:PORT`: every byte comes back.
const ECHO: &str = r#"
import socket, sys, threading
def tcp_conn(c):
    try:
        while True:
            d = c.recv(4096)
            if not d:
                break
            c.sendall(d)
    except OSError:
        pass
def tcp(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port)); s.listen(64)
    def serve():
        while True:
            c, _ = s.accept()
            threading.Thread(target=tcp_conn, args=(c,), daemon=True).start()
    return serve
def udp(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    def serve():
        while True:
            d, a = s.recvfrom(2048); s.sendto(d, a)
    return serve
# Bound before "ready"; served in threads.
servers = []
for spec in sys.argv[1:]:
    kind, port = spec.split(":")
    servers.append({"tcp": tcp, "udp": udp}[kind](int(port)))
for serve in servers:
    threading.Thread(target=serve, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

/// One long-lived session (a TCP connection, or a UDP flow from one source
/// port) to `host port`: each line on stdin sends a numbered token and says
/// whether its echo came back within 0.5 s (late echoes of earlier tokens,
/// which a TCP retransmission may still deliver, do not count).
const SESSION: &str = r#"
import socket, sys, time
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
if kind == "tcp":
    s = socket.create_connection((host, port), timeout=2)
else:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.connect((host, port))
print("ready", flush=True)
n, received = 0, b""
for line in sys.stdin:
    n += 1
    token = b"<%d>" % n
    ok = False
    try:
        s.send(token)
        deadline = time.time() + 0.5
        while not ok and time.time() < deadline:
            s.settimeout(max(0.01, deadline - time.time()))
            data = s.recv(4096)
            if not data and kind == "tcp":
                break
            received += data
            if token in received:
                ok = True
                received = received[received.index(token) + len(token):]
    except OSError:
        pass
    print("ok" if ok else "blocked", flush=True)
"#;

/// A UDP flow to `host port` from one source port, a datagram every
/// millisecond; each line on stdin is answered with the wall-clock time
/// (seconds) of the last echo received.
const FLOW: &str = r#"
import socket, sys, threading, time
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.connect((host, port))
last = [0.0]
def send():
    while True:
        try:
            s.send(b"f")
        except OSError:
            pass
        time.sleep(0.001)
def receive():
    while True:
        try:
            s.recv(64)
            last[0] = time.time()
        except OSError:
            pass
threading.Thread(target=send, daemon=True).start()
threading.Thread(target=receive, daemon=True).start()
print("ready", flush=True)
for line in sys.stdin:
    print(repr(last[0]), flush=True)
"#;

/// `count` attempts to `dst port` from `src`, each from a new socket: a TCP
/// SYN (the socket is given up after 50 ms, long before a retransmission)
/// or a UDP datagram. With `last`, one attempt to every port from `port` to
/// `last` instead, as fast as it goes (a scan).
const KNOCK: &str = r#"
import socket, sys, time
kind, src, dst, port, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
last = int(sys.argv[6]) if len(sys.argv) > 6 else None
family = socket.AF_INET6 if ":" in dst else socket.AF_INET
kind_ = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
def knock(p, wait):
    s = socket.socket(family, kind_)
    s.bind((src, 0))
    if kind == "tcp":
        s.setblocking(False)
        s.connect_ex((dst, p))
        time.sleep(wait)
    else:
        s.sendto(b"knock", (dst, p))
    s.close()
if last is None:
    for _ in range(count):
        knock(port, 0.05)
else:
    for p in range(port, last + 1):
        knock(p, 0)
"#;

/// Connects to `dst port` again and again for `seconds` (each connection
/// sends a byte and waits for its echo, 1 s at most) and prints how many
/// succeeded and how many failed.
const HAMMER: &str = r#"
import socket, sys, time
dst, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ok = failed = 0
end = time.time() + seconds
while time.time() < end:
    try:
        s = socket.create_connection((dst, port), timeout=1.0)
        s.sendall(b"x")
        ok += s.recv(1) == b"x"
        s.close()
    except OSError:
        failed += 1
    time.sleep(0.002)
print(ok, failed, flush=True)
"#;

const TCP_PROBE: &str = "import socket,sys\nsrc=(sys.argv[3], 0) if len(sys.argv) > 3 else None\nsocket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.0, source_address=src).close()";
const UDP_PROBE: &str = "import socket,sys\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.settimeout(1.0)\ns.sendto(b'ping',(sys.argv[1], int(sys.argv[2])))\nsys.exit(0 if s.recvfrom(64)[0]==b'ping' else 1)";

/// Whether this process may create namespaces and program nftables.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs `program` with `args`, and fails the test if it fails.
pub(crate) fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Two namespaces and a veth pair; removed on drop, with everything in them.
pub struct Lab {
    pub instance_ns: String,
    pub client_ns: String,
    /// Echo servers started in either namespace (the instance's listeners too).
    servers: Vec<Session>,
}

/// A flow [`Lab::flow`] started; ended on drop.
pub struct Flow(Session);

impl Flow {
    /// When the flow last got an echo (wall clock).
    pub fn last_echo(&mut self) -> std::time::SystemTime {
        use std::io::{BufRead, Write};
        let _ = writeln!(self.0.stdin, "last");
        let mut line = String::new();
        let _ = self.0.stdout.read_line(&mut line);
        let seconds: f64 = line.trim().parse().unwrap_or(0.0);
        std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(seconds)
    }
}

/// A session [`Lab::session`] opened; ended on drop.
pub struct Session {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Session {
    /// Whether one byte sent now comes back (within half a second).
    pub fn passes(&mut self) -> bool {
        use std::io::{BufRead, Write};
        if writeln!(self.stdin, "probe").is_err() {
            return false;
        }
        let mut line = String::new();
        self.stdout.read_line(&mut line).is_ok() && line.trim() == "ok"
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static LABS: AtomicU32 = AtomicU32::new(0);

impl Lab {
    pub fn new() -> Self {
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let tag = format!("cf{}x{n}", std::process::id());
        let lab = Lab {
            instance_ns: format!("{tag}i"),
            client_ns: format!("{tag}c"),
            servers: Vec::new(),
        };
        let (i, c) = (lab.instance_ns.as_str(), lab.client_ns.as_str());
        run("ip", &["netns", "add", i]);
        run("ip", &["netns", "add", c]);
        // Both ends are created directly inside the namespaces.
        run(
            "ip",
            &[
                "link", "add", "veth0", "netns", i, "type", "veth", "peer", "name", "veth0",
                "netns", c,
            ],
        );
        for (ns, ip) in [(i, INSTANCE_IP), (c, CLIENT_IP), (c, OTHER_CLIENT_IP)] {
            run(
                "ip",
                &["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", "veth0"],
            );
        }
        for (ns, ip) in [(i, INSTANCE_IP6), (c, CLIENT_IP6), (c, OTHER_CLIENT_IP6)] {
            // nodad: usable at once, not after duplicate address detection.
            run(
                "ip",
                &[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{ip}/64"),
                    "dev",
                    "veth0",
                    "nodad",
                ],
            );
        }
        for ns in [i, c] {
            run("ip", &["-n", ns, "link", "set", "veth0", "up"]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    /// `ip netns exec NS program args…`
    pub fn command(ns: &str, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]).arg(program);
        command
    }

    /// Starts the instance's listeners (TCP 22, 80, 443, 5432, 6379 and UDP
    /// 5353, each echoing) and waits until they are bound.
    pub fn start_listeners(&mut self) {
        let ns = self.instance_ns.clone();
        self.start_echo(
            &ns,
            &[
                "tcp:22", "tcp:80", "tcp:443", "tcp:5432", "tcp:6379", "udp:5353",
            ],
        );
    }

    /// Starts echo servers in `ns` on `specs` (`tcp:PORT`, `udp:PORT`) and
    /// waits until they are bound.
    pub fn start_echo(&mut self, ns: &str, specs: &[&str]) {
        self.servers.push(Self::interactive(ns, ECHO, specs));
    }

    /// Opens a `kind` (`tcp` or `udp`) session from `ns` to `host port`.
    pub fn session(&self, ns: &str, kind: &str, host: &str, port: u16) -> Session {
        Self::interactive(ns, SESSION, &[kind, host, &port.to_string()])
    }

    /// Runs python `script` with `args` in `ns` once it said "ready" (its
    /// sockets are bound), to talk to it line by line (servers just run).
    fn interactive(ns: &str, script: &str, args: &[&str]) -> Session {
        let mut child = Self::command(ns, Path::new("python3"))
            .args(["-u", "-c", script])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3");
        let stdin = child.stdin.take().expect("its stdin");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("its stdout"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).expect("its output");
        assert_eq!(line.trim(), "ready", "{args:?} did not start in {ns}");
        Session {
            child,
            stdin,
            stdout,
        }
    }

    /// Starts a UDP flow from the client namespace to the instance's `port`.
    pub fn flow(&self, port: u16) -> Flow {
        Flow(Self::interactive(
            &self.client_ns,
            FLOW,
            &[INSTANCE_IP, &port.to_string()],
        ))
    }

    /// Whether a TCP connection from the client namespace to the instance succeeds.
    pub fn tcp_open(&self, port: u16) -> bool {
        self.probe(TCP_PROBE, port)
    }

    /// Whether a TCP connection from `source` (one of the client namespace's
    /// addresses) to the instance's address of the same family succeeds.
    pub fn tcp_open_from(&self, source: &str, port: u16) -> bool {
        let target = Self::target_for(source);
        Self::command(&self.client_ns, Path::new("python3"))
            .args(["-c", TCP_PROBE, target, &port.to_string(), source])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Sends `count` attempts to open a connection (`kind`: `tcp`, one SYN
    /// each; `udp`, one datagram each) from `source`, one of the client
    /// namespace's addresses, to the instance's address of its family.
    pub fn knock(&self, kind: &str, source: &str, port: u16, count: u32) {
        self.knock_args(&[
            kind,
            source,
            Self::target_for(source),
            &port.to_string(),
            &count.to_string(),
        ]);
    }

    /// Connects to the instance's `port` again and again for `seconds`:
    /// (connections that got their echo, connections that failed).
    pub fn hammer(&self, port: u16, seconds: f64) -> (u64, u64) {
        let output = Self::command(&self.client_ns, Path::new("python3"))
            .args([
                "-c",
                HAMMER,
                INSTANCE_IP,
                &port.to_string(),
                &seconds.to_string(),
            ])
            .output()
            .expect("run python3");
        let text = String::from_utf8_lossy(&output.stdout);
        let mut counts = text.split_whitespace().map(|n| n.parse().unwrap_or(0));
        (counts.next().unwrap_or(0), counts.next().unwrap_or(0))
    }

    /// One TCP SYN from `source` to every port from `first` to `last`.
    pub fn scan(&self, source: &str, first: u16, last: u16) {
        self.knock_args(&[
            "tcp",
            source,
            Self::target_for(source),
            &first.to_string(),
            "1",
            &last.to_string(),
        ]);
    }

    fn knock_args(&self, args: &[&str]) {
        let status = Self::command(&self.client_ns, Path::new("python3"))
            .args(["-c", KNOCK])
            .args(args)
            .status()
            .expect("run python3");
        assert!(status.success(), "knock {args:?} failed");
    }

    /// The instance's address of `source`'s family.
    fn target_for(source: &str) -> &'static str {
        if source.contains(':') {
            INSTANCE_IP6
        } else {
            INSTANCE_IP
        }
    }

    /// Whether a UDP datagram to the instance comes back.
    pub fn udp_echo(&self, port: u16) -> bool {
        self.probe(UDP_PROBE, port)
    }

    fn probe(&self, script: &str, port: u16) -> bool {
        Self::command(&self.client_ns, Path::new("python3"))
            .args(["-c", script, INSTANCE_IP, &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Whether the instance answers a ping.
    pub fn ping(&self) -> bool {
        Self::command(&self.client_ns, Path::new("ping"))
            .args(["-c", "1", "-W", "2", INSTANCE_IP])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The body of `GET http://127.0.0.1:<port><path>` inside the instance
    /// namespace (an enforcer's metrics), or `None` if nothing answers.
    pub fn instance_http_get(&self, port: u16, path: &str) -> Option<String> {
        let output = Self::command(&self.instance_ns, Path::new("python3"))
            .args([
                "-c",
                "import sys, urllib.request\n\
                 print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode(), end='')",
                &format!("http://127.0.0.1:{port}{path}"),
            ])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs nft in the instance namespace.
    pub fn nft(&self, args: &[&str]) -> Output {
        Self::command(&self.instance_ns, Path::new("nft"))
            .args(args)
            .output()
            .expect("run nft")
    }

    /// The open ports of a set in the instance's table.
    pub fn set_elements(&self, set: &str) -> Vec<u16> {
        let output = self.nft(&["-j", "list", "set", "inet", "cassette", set]);
        let listing: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        let elements = listing["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|object| object["set"]["elem"].as_array())
            .flatten();
        // With per-element counters, each is {"elem": {"val": PORT, "counter": ...}}.
        let mut ports: Vec<u16> = elements
            .map(|element| element.get("elem").map_or(element, |e| &e["val"]))
            .filter_map(|port| port.as_u64().and_then(|p| u16::try_from(p).ok()))
            .collect();
        ports.sort_unstable();
        ports
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Sessions end their processes as they are dropped.
        self.servers.clear();
        for ns in [&self.instance_ns, &self.client_ns] {
            // Ends any process still in it and takes the veth end with it.
            let _ = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-9", pid]).status();
                    }
                });
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The real `cassette-enforcer` inside a namespace. Killed on drop; its log is
/// printed if the test is failing. Its state directory is beside its log
/// (`enforcer.log` -> `enforcer.state/`), so a restarted enforcer finds what
/// the previous one saved, and no test touches `/var/lib/cassette-enforcer`.
pub struct EnforcerProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl EnforcerProcess {
    /// The state directory of an enforcer logging to `log`.
    pub fn state_dir(log: &Path) -> PathBuf {
        log.with_extension("state")
    }

    pub fn start(ns: &str, rules: &str, instance: &str, log: PathBuf, extra: &[&str]) -> Self {
        let mut command = Lab::command(ns, &binary("cassette-enforcer"));
        command.args(Self::args(rules, instance, &log, extra));
        Self::spawn(command, log)
    }

    /// The enforcer's arguments: nft backend, and the state directory beside
    /// `log` unless `extra` names one.
    pub fn args(rules: &str, instance: &str, log: &Path, extra: &[&str]) -> Vec<OsString> {
        let mut args: Vec<OsString> =
            ["--rules", rules, "--instance", instance, "--backend", "nft"]
                .iter()
                .map(OsString::from)
                .collect();
        if !extra.contains(&"--state-dir") {
            args.push("--state-dir".into());
            args.push(Self::state_dir(log).into());
        }
        args.extend(extra.iter().map(OsString::from));
        args
    }

    /// Runs `command` (an enforcer, possibly wrapped) with its output in `log`.
    pub fn spawn(mut command: Command, log: PathBuf) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open enforcer log");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .expect("spawn cassette-enforcer");
        Self {
            child: Some(child),
            log,
        }
    }

    /// The pid, to signal it (SIGSTOP holds an apply back; SIGCONT lets it go).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for EnforcerProcess {
    fn drop(&mut self) {
        self.kill_9();
        if std::thread::panicking() {
            eprintln!("--- cassette-enforcer log ---\n{}", self.log());
        }
    }
}

/// Polls `check` until it holds or `PATIENCE` passes.
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
