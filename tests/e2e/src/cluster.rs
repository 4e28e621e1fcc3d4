//! A cluster in network namespaces, for history tests: one namespace per
//! node (etcd members, rules replicas), each with a veth to a bridge inside a
//! hub namespace of its own, on 10.77.0.0/24 (addresses that exist nowhere
//! else). Partitions are nftables drop rules inside the nodes' namespaces;
//! nothing touches the root namespace's interfaces or firewall. Replicas
//! serve their API on Unix sockets, which the test reaches from the root
//! namespace whatever the partitions. Every process and namespace is removed
//! on drop, also when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::netns::{run, Lab};
use crate::{binary, RulesProcess, Target, PATIENCE};

static NETS: AtomicU32 = AtomicU32::new(0);

/// Runs `nft -f -` with `script` in namespace `ns`.
fn nft(ns: &str, script: &str) -> bool {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run nft");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    child.wait().is_ok_and(|s| s.success())
}

/// Nodes in namespaces on one bridge.
pub struct Net {
    hub: String,
    pub nodes: Vec<String>,
}

impl Net {
    /// `n` nodes: node `i` is namespace `nodes[i]` at [`Net::ip`]`(i)`.
    pub fn new(n: usize) -> Self {
        let tag = format!(
            "cj{}x{}",
            std::process::id(),
            NETS.fetch_add(1, Ordering::Relaxed)
        );
        let net = Net {
            hub: format!("{tag}h"),
            nodes: (0..n).map(|i| format!("{tag}n{i}")).collect(),
        };
        run("ip", &["netns", "add", &net.hub]);
        run(
            "ip",
            &["-n", &net.hub, "link", "add", "br0", "type", "bridge"],
        );
        run("ip", &["-n", &net.hub, "link", "set", "br0", "up"]);
        for (i, ns) in net.nodes.iter().enumerate() {
            run("ip", &["netns", "add", ns]);
            let port = format!("p{i}");
            run(
                "ip",
                &[
                    "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", &port,
                    "netns", &net.hub,
                ],
            );
            run(
                "ip",
                &["-n", &net.hub, "link", "set", &port, "master", "br0", "up"],
            );
            run(
                "ip",
                &[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{}/24", Self::ip(i)),
                    "dev",
                    "eth0",
                ],
            );
            run("ip", &["-n", ns, "link", "set", "eth0", "up"]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        net
    }

    pub fn ip(i: usize) -> String {
        format!("10.77.0.{}", i + 1)
    }

    /// `ip netns exec <node i> program`
    pub fn command(&self, i: usize, program: &Path) -> Command {
        Lab::command(&self.nodes[i], program)
    }

    /// Node `i` drops every packet to and from the nodes `from` (both
    /// directions are cut at `i`; what `i` had with others stays).
    pub fn cut(&self, i: usize, from: &[usize]) {
        if from.is_empty() {
            return;
        }
        let peers = from
            .iter()
            .map(|&j| Self::ip(j))
            .collect::<Vec<_>>()
            .join(", ");
        let script = format!(
            "table inet jepsen {{\n\
             chain input {{ type filter hook input priority 0; ip saddr {{ {peers} }} drop; }}\n\
             chain output {{ type filter hook output priority 0; ip daddr {{ {peers} }} drop; }}\n\
             }}\n"
        );
        assert!(nft(&self.nodes[i], &script), "cut {i} from {from:?}");
    }

    /// Splits the nodes into groups that do not reach one another.
    pub fn split(&self, groups: &[&[usize]]) {
        for (g, group) in groups.iter().enumerate() {
            let others: Vec<usize> = groups
                .iter()
                .enumerate()
                .filter(|(h, _)| *h != g)
                .flat_map(|(_, other)| other.iter().copied())
                .collect();
            for &i in *group {
                self.cut(i, &others);
            }
        }
    }

    /// Every partition healed.
    pub fn heal(&self) {
        for ns in &self.nodes {
            nft(ns, "delete table inet jepsen\n");
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain(std::iter::once(&self.hub)) {
            let _ = Command::new("ip")
                .args(["netns", "delete", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Three etcd members and rules replicas, each in a node of its own.
pub struct Cluster {
    pub replicas: Vec<RulesProcess>,
    members: Vec<Child>,
    pub dir: tempfile::TempDir,
    /// Dropped last: the namespaces outlive the processes in them.
    pub net: Net,
}

impl Cluster {
    pub const MEMBERS: usize = 3;

    /// Node index of etcd member `m`.
    pub fn member_node(m: usize) -> usize {
        m
    }

    /// Node index of replica `r`.
    pub fn replica_node(r: usize) -> usize {
        Self::MEMBERS + r
    }

    pub async fn start(replicas: usize) -> Self {
        let net = Net::new(Self::MEMBERS + replicas);
        let dir = tempfile::tempdir().expect("temp dir");
        let peer = |m: usize| format!("http://{}:2380", Net::ip(m));
        let client = |m: usize| format!("http://{}:2379", Net::ip(m));
        let initial = (0..Self::MEMBERS)
            .map(|m| format!("m{m}={}", peer(m)))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for m in 0..Self::MEMBERS {
            let log = std::fs::File::create(dir.path().join(format!("m{m}.log"))).expect("log");
            let child = net
                .command(Self::member_node(m), Path::new("etcd"))
                .args(["--name", &format!("m{m}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("m{m}")))
                .args(["--listen-client-urls", &client(m)])
                .args(["--advertise-client-urls", &client(m)])
                .args(["--listen-peer-urls", &peer(m)])
                .args(["--initial-advertise-peer-urls", &peer(m)])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .args(["--logger", "zap", "--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log handle"))
                .stderr(log)
                .spawn()
                .expect("run etcd (Debian package etcd-server)");
            members.push(child);
        }
        let mut cluster = Cluster {
            replicas: Vec::new(),
            members,
            dir,
            net,
        };
        cluster.wait_for_leader().await;
        let endpoints = (0..Self::MEMBERS).map(client).collect::<Vec<_>>().join(",");
        for r in 0..replicas {
            let socket = cluster.dir.path().join(format!("replica-{r}.sock"));
            let command = cluster
                .net
                .command(Self::replica_node(r), &binary("cassette-rules"));
            let replica = RulesProcess::spawn_command(
                command,
                &cluster.dir.path().join(format!("replica-{r}")),
                &format!("unix:{}", socket.display()),
                Target::Unix(socket.clone()),
                &[
                    "--http-listen",
                    "off",
                    "--store",
                    "etcd",
                    "--etcd-endpoints",
                    &endpoints,
                    "--etcd-append-deadline",
                    "2s",
                ],
                None,
            )
            .await;
            cluster.replicas.push(replica);
        }
        cluster
    }

    /// Member `m`'s view of the leader: its member id and the leader's.
    fn status(&self, m: usize) -> Option<(String, String)> {
        let output = self
            .net
            .command(Self::member_node(m), Path::new("curl"))
            .args(["-s", "--max-time", "1", "-X", "POST", "-d", "{}"])
            .arg(format!("http://{}:2379/v3/maintenance/status", Net::ip(m)))
            .output()
            .ok()?;
        let status: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        let me = status["header"]["member_id"].as_str()?.to_owned();
        let leader = status["leader"].as_str()?.to_owned();
        Some((me, leader))
    }

    /// The member that leads now, as its members see it.
    pub fn leader(&self) -> Option<usize> {
        let views: Vec<Option<(String, String)>> =
            (0..Self::MEMBERS).map(|m| self.status(m)).collect();
        views
            .iter()
            .position(|v| v.as_ref().is_some_and(|(me, leader)| me == leader))
    }

    pub async fn wait_for_leader(&self) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(leader) = tokio::task::block_in_place(|| self.leader()) {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "no etcd leader in the namespaces; logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.replicas.clear();
        for child in &mut self.members {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
