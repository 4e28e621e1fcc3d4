//! A real etcd cluster for the tests: Debian's `etcd-server` (3.4), three
//! members on loopback ports with their own data directories, fast elections.
//! Members can be killed (SIGKILL) and started again on their data; every
//! process is killed on drop, also when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use crate::{free_port, PATIENCE};

/// Whether Debian's etcd is installed (scripts/test.sh installs `etcd-server`).
pub fn available() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True (and says so) when `test` cannot run here for want of etcd.
pub fn skip(test: &str) -> bool {
    if available() {
        return false;
    }
    eprintln!("{test}: skipped, needs Debian's etcd-server (scripts/test.sh installs it)");
    true
}

pub struct Member {
    pub name: String,
    pub client_url: String,
    peer_url: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub struct EtcdCluster {
    pub members: Vec<Member>,
    initial_cluster: String,
    token: String,
    /// More flags for every member (`--auth-token-ttl 1`).
    args: Vec<String>,
    _dir: Option<tempfile::TempDir>,
}

impl EtcdCluster {
    /// Starts `size` members and waits until the cluster has a leader.
    pub async fn start(size: usize) -> Self {
        Self::start_with(size, &[]).await
    }

    /// [`EtcdCluster::start`] with more flags for every member.
    pub async fn start_with(size: usize, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cluster = Self::launch(dir.path(), size, args).await;
        cluster._dir = Some(dir);
        cluster
    }

    /// [`EtcdCluster::start`] with the members' data in `dir` (kept after
    /// the cluster stops: started again on it, the cluster has its data back).
    pub async fn start_in(dir: &Path, size: usize) -> Self {
        Self::launch(dir, size, &[]).await
    }

    /// Ports are found free and then bound by etcd: another test can take
    /// one in between. A cluster that lost that race starts again on other
    /// ports (a member that failed to bind wrote nothing). A fresh cluster's
    /// members that did start recorded the old ports: their data goes first;
    /// data that was kept is never wiped.
    async fn launch(dir: &Path, size: usize, args: &[&str]) -> Self {
        std::fs::create_dir_all(dir).expect("etcd directory");
        let data = |i: usize| dir.join(format!("m{i}"));
        let fresh = (0..size).all(|i| !data(i).exists());
        for attempt in 1.. {
            let mut cluster = Self::configure(dir, size, args);
            // Where this attempt's lines start in each member's log.
            let logged: Vec<u64> = (cluster.members.iter())
                .map(|m| std::fs::metadata(&m.log).map_or(0, |l| l.len()))
                .collect();
            for i in 0..size {
                cluster.start_member(i);
            }
            if attempt < 5 && cluster.lost_a_port(&logged).await {
                drop(cluster);
                for i in 0..size {
                    if fresh {
                        let _ = std::fs::remove_dir_all(data(i));
                    }
                }
                continue;
            }
            cluster.wait_for_leader().await;
            return cluster;
        }
        unreachable!("the attempts above return")
    }

    /// Members (not started) on free loopback ports, their data in `dir`.
    fn configure(dir: &Path, size: usize, args: &[&str]) -> Self {
        let token = format!("cassette-test-{}", uuid::Uuid::now_v7());
        let members: Vec<Member> = (0..size)
            .map(|i| {
                let name = format!("m{i}");
                Member {
                    client_url: format!("http://{}", free_port()),
                    peer_url: format!("http://{}", free_port()),
                    data_dir: dir.join(&name),
                    log: dir.join(format!("{name}.log")),
                    name,
                    child: None,
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        Self {
            members,
            initial_cluster,
            token,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            _dir: None,
        }
    }

    /// Waits for a leader; true if a member exited instead, its port taken
    /// (said in its log after `logged`).
    async fn lost_a_port(&mut self, logged: &[u64]) -> bool {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            let elected = self.leader().await.is_some();
            // Members bind first thing, long before an election: a leader
            // with every member still running means every port was ours.
            for (member, &from) in self.members.iter_mut().zip(logged) {
                let exited = member
                    .child
                    .as_mut()
                    .is_some_and(|c| c.try_wait().ok().flatten().is_some());
                let log = std::fs::read(&member.log).unwrap_or_default();
                let this_attempt = log.get(from as usize..).unwrap_or_default();
                if exited
                    && String::from_utf8_lossy(this_attempt).contains("address already in use")
                {
                    eprintln!("etcd {}: its port was taken; starting again", member.name);
                    return true;
                }
            }
            if elected {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// The client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Starts member `i` (again, on its data directory if it ran before).
    pub fn start_member(&mut self, i: usize) {
        let member = &mut self.members[i];
        assert!(member.child.is_none(), "{} is running", member.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &member.client_url])
            .args(["--advertise-client-urls", &member.client_url])
            .args(["--listen-peer-urls", &member.peer_url])
            .args(["--initial-advertise-peer-urls", &member.peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            // Elections in about a second, not ten.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("run etcd (Debian package etcd-server)");
        member.child = Some(child);
    }

    /// SIGKILL of member `i`.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP of member `i`: its connections stay open and nothing
    /// answers (a paused VM, a stalled disk). [`EtcdCluster::thaw_member`]
    /// resumes it; killing it works either way.
    pub fn freeze_member(&mut self, i: usize) {
        self.signal(i, "-STOP");
    }

    pub fn thaw_member(&mut self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, signal: &str) {
        let child = self.members[i].child.as_ref().expect("a running member");
        let sent = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill {signal} {}", self.members[i].name);
    }

    /// The index of the current leader, by asking the running members.
    pub async fn leader(&self) -> Option<usize> {
        for member in self.members.iter().filter(|m| m.child.is_some()) {
            let Some(status) = status(&member.client_url).await else {
                continue;
            };
            let leader = status.get("leader").and_then(|v| v.as_u64());
            let id = status
                .get("header")
                .and_then(|h| h.get("member_id"))
                .and_then(|v| v.as_u64());
            if leader.is_some() && leader == id {
                return self.members.iter().position(|m| m.name == member.name);
            }
            // Ask the leader itself next: only it says it is the leader.
        }
        None
    }

    /// Waits until member `i` answers and knows a leader (after a restart:
    /// it has rejoined the cluster).
    pub async fn wait_for_member(&self, i: usize) {
        let deadline = Instant::now() + PATIENCE;
        while status(&self.members[i].client_url)
            .await
            .is_none_or(|s| s["leader"].as_u64().unwrap_or(0) == 0)
        {
            assert!(
                Instant::now() < deadline,
                "etcd {} did not rejoin\n{}",
                self.members[i].name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_for_leader(&self) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(leader) = self.leader().await {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "the etcd cluster elected no leader\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The first running member's client URL.
    fn running(&self) -> &str {
        &self
            .members
            .iter()
            .find(|m| m.child.is_some())
            .expect("a running member")
            .client_url
    }

    /// Compacts the cluster's history up to its current revision (what
    /// etcd's auto-compaction does on a schedule), through the JSON gateway.
    pub async fn compact(&self) {
        let url = self.running();
        let status = gateway(url, "/v3/maintenance/status", serde_json::json!({}))
            .await
            .expect("the cluster's status");
        let revision = status["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse::<u64>().ok())
            .expect("the cluster's revision");
        let body = serde_json::json!({ "revision": revision.to_string(), "physical": true });
        let compacted = gateway(url, "/v3/kv/compaction", body).await;
        assert!(
            compacted
                .as_ref()
                .is_some_and(|c| c.get("header").is_some()),
            "compaction: {compacted:?}"
        );
    }

    /// What an operator does when etcd's database is full (its quota's
    /// NOSPACE alarm): compacts the history, defragments every running
    /// member, and disarms the alarms.
    pub async fn free_space(&self) {
        self.compact().await;
        for member in self.members.iter().filter(|m| m.child.is_some()) {
            let answer = gateway(
                &member.client_url,
                "/v3/maintenance/defragment",
                serde_json::json!({}),
            )
            .await;
            // etcd 3.4 answers a defragmentation with `{}`.
            assert!(
                answer.as_ref().is_some_and(|a| a.get("error").is_none()),
                "defragment {}: {answer:?}",
                member.name
            );
        }
        for alarm in self.alarm_list().await {
            let body = serde_json::json!({
                "action": "DEACTIVATE",
                "memberID": alarm["memberID"],
                "alarm": alarm["alarm"],
            });
            let answer = gateway(self.running(), "/v3/maintenance/alarm", body).await;
            assert!(
                answer.as_ref().is_some_and(|a| a.get("error").is_none()),
                "disarm {alarm}: {answer:?}"
            );
        }
    }

    /// The keys under `prefix` (through the JSON gateway).
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let body = serde_json::json!({
            "key": BASE64.encode(prefix),
            "range_end": BASE64.encode(&end),
            "keys_only": true,
        });
        let answer = gateway(self.running(), "/v3/kv/range", body)
            .await
            .expect("a range through the gateway");
        answer["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .filter_map(|kv| kv["key"].as_str())
                    .map(|k| BASE64.decode(k).expect("etcd's keys are base64"))
                    .map(|k| String::from_utf8_lossy(&k).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The cluster's alarms (`NOSPACE` when its database is full).
    pub async fn alarms(&self) -> Vec<String> {
        self.alarm_list()
            .await
            .iter()
            .filter_map(|a| a["alarm"].as_str().map(str::to_owned))
            .collect()
    }

    /// The cluster's alarms as etcd lists them (`memberID`, `alarm`).
    async fn alarm_list(&self) -> Vec<serde_json::Value> {
        let listed = gateway(
            self.running(),
            "/v3/maintenance/alarm",
            serde_json::json!({ "action": "GET" }),
        )
        .await
        .expect("the cluster's alarms");
        listed["alarms"].as_array().cloned().unwrap_or_default()
    }

    /// Turns on etcd's authentication with `user` (given the root role) and
    /// `password`, through the JSON gateway of the first running member.
    pub async fn enable_auth(&self, user: &str, password: &str) {
        for (path, body) in [
            ("/v3/auth/role/add", serde_json::json!({ "name": "root" })),
            (
                "/v3/auth/user/add",
                serde_json::json!({ "name": user, "password": password }),
            ),
            (
                "/v3/auth/user/grant",
                serde_json::json!({ "user": user, "role": "root" }),
            ),
            ("/v3/auth/enable", serde_json::json!({})),
        ] {
            let answer = gateway(self.running(), path, body).await;
            assert!(
                answer.as_ref().is_some_and(|a| a.get("header").is_some()),
                "{path}: {answer:?}"
            );
        }
    }

    /// A token etcd gives for `user` and `password` (auth enabled).
    pub async fn authenticate(&self, user: &str, password: &str) -> String {
        let body = serde_json::json!({ "name": user, "password": password });
        let answer = gateway(self.running(), "/v3/auth/authenticate", body).await;
        answer
            .as_ref()
            .and_then(|a| a["token"].as_str())
            .unwrap_or_else(|| panic!("authenticate: {answer:?}"))
            .to_owned()
    }

    /// Turns authentication off and on again (as `user`), which makes etcd
    /// forget every token it gave.
    pub async fn revoke_tokens(&self, user: &str, password: &str) {
        let token = self.authenticate(user, password).await;
        let off = gateway_with(
            self.running(),
            "/v3/auth/disable",
            serde_json::json!({}),
            Some(&token),
        )
        .await;
        assert!(
            off.as_ref().is_some_and(|a| a.get("header").is_some()),
            "auth disable: {off:?}"
        );
        let on = gateway(self.running(), "/v3/auth/enable", serde_json::json!({})).await;
        assert!(
            on.as_ref().is_some_and(|a| a.get("header").is_some()),
            "auth enable: {on:?}"
        );
    }

    /// Whether etcd still takes `token` (it reads `/cassette` with it).
    pub async fn token_accepted(&self, token: &str) -> bool {
        let body = serde_json::json!({ "key": "L2Nhc3NldHRl" });
        let answer = gateway_with(self.running(), "/v3/kv/range", body, Some(token)).await;
        answer.is_some_and(|a| a.get("header").is_some())
    }

    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                format!(
                    "--- etcd {} ---\n{}",
                    m.name,
                    std::fs::read_to_string(&m.log).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// POSTs `body` to a member's JSON gateway (`path` under its client URL);
/// the answer, if it is JSON.
async fn gateway(
    client_url: &str,
    path: &str,
    body: serde_json::Value,
) -> Option<serde_json::Value> {
    gateway_with(client_url, path, body, None).await
}

/// [`gateway`] with etcd's auth `token`.
async fn gateway_with(
    client_url: &str,
    path: &str,
    body: serde_json::Value,
    token: Option<&str>,
) -> Option<serde_json::Value> {
    let mut curl = tokio::process::Command::new("curl");
    if let Some(token) = token {
        curl.args(["-H", &format!("Authorization: {token}")]);
    }
    let output = curl
        .args(["--silent", "--max-time", "5", "-X", "POST", "-d"])
        .arg(body.to_string())
        .arg(format!("{client_url}{path}"))
        .output()
        .await
        .ok()?;
    serde_json::from_slice(&output.stdout).ok()
}

/// A member's status (its `/v3/maintenance/status`, through etcd's JSON gateway).
async fn status(client_url: &str) -> Option<serde_json::Value> {
    let value = gateway(client_url, "/v3/maintenance/status", serde_json::json!({})).await?;
    // The gateway prints 64-bit numbers as strings.
    let number = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .or_else(|| v.as_u64())
    };
    let leader = value.get("leader").and_then(number)?;
    let id = value.get("header")?.get("member_id").and_then(number)?;
    Some(serde_json::json!({ "leader": leader, "header": { "member_id": id } }))
}
