//! The enforcer against real nftables: an instance namespace with listeners,
//! a client namespace that probes it over a veth pair, the real binaries.
//! Needs root (namespaces, nftables); elsewhere each test says so and returns.

use std::path::PathBuf;
use std::time::Duration;

use cassette_e2e::netns::{eventually, is_root, EnforcerProcess, Lab};
use cassette_e2e::secured::Secured;
use cassette_e2e::{pb, Client, RulesProcess, Target};
use tempfile::TempDir;
use tokio::task::block_in_place;

pub(crate) const INSTANCE: &str = "web-1";
pub(crate) const TCP: pb::Protocol = pb::Protocol::Tcp;

pub(crate) struct Fixture {
    pub(crate) dir: TempDir,
    /// The rules service's /metrics endpoint.
    pub(crate) rules_metrics: std::net::SocketAddr,
    pub(crate) lab: Lab,
    pub(crate) rules: RulesProcess,
    pub(crate) enforcer: Option<EnforcerProcess>,
    pub(crate) client: Client,
    /// TLS flags every enforcer gets (empty in development mode).
    pub(crate) enforcer_tls: Vec<String>,
}

pub(crate) fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("{test}: skipped, needs root for network namespaces and nftables");
    true
}

impl Fixture {
    /// A running rules service, an instance with listeners, its firewall
    /// created, and an enforcer that has applied it.
    pub(crate) async fn start(enforcer_args: &[&str]) -> Self {
        Self::start_with(enforcer_args, None).await
    }

    /// [`Fixture::start`]; with `secured`, the service runs TLS with its
    /// policy, the harness calls as the admin principal `console`, and the
    /// enforcer presents the certificate of `spiffe://cassette.local/enforcer/web-1`.
    pub(crate) async fn start_with(enforcer_args: &[&str], secured: Option<&Secured>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut lab = block_in_place(Lab::new);
        block_in_place(|| lab.start_listeners());
        let rules_metrics = cassette_e2e::free_port();
        let socket = dir.path().join("rules.sock");
        let mut args = vec!["--metrics-listen".to_owned(), rules_metrics.to_string()];
        let mut enforcer_tls = Vec::new();
        if let Some(secured) = secured {
            args.extend(secured.server_args());
            let (cert, key) = secured.enforcer_files(INSTANCE);
            for (flag, path) in [
                ("--tls-ca", secured.pki.ca_cert_path()),
                ("--tls-cert", cert),
                ("--tls-key", key),
            ] {
                enforcer_tls.extend([flag.to_owned(), path.display().to_string()]);
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let rules = RulesProcess::spawn_with_tls(
            &dir.path().join("data"),
            &format!("unix:{}", socket.display()),
            Target::Unix(socket.clone()),
            &args,
            secured.map(|s| s.principal("console")),
        )
        .await;
        let mut client = rules.client().await;
        cassette_e2e::create_firewall(&mut client, INSTANCE).await;
        let mut fixture = Self {
            dir,
            rules_metrics,
            lab,
            rules,
            enforcer: None,
            client,
            enforcer_tls,
        };
        fixture.start_enforcer(enforcer_args);
        fixture.wait(0).await;
        fixture
    }

    pub(crate) fn socket_target(&self) -> String {
        format!("unix:{}", self.dir.path().join("rules.sock").display())
    }

    pub(crate) fn start_enforcer(&mut self, extra: &[&str]) {
        let mut args = vec!["--refresh-interval", "1s"];
        args.extend(self.enforcer_tls.iter().map(String::as_str));
        args.extend_from_slice(extra);
        self.enforcer = Some(EnforcerProcess::start(
            &self.lab.instance_ns,
            &self.socket_target(),
            INSTANCE,
            self.dir.path().join("enforcer.log"),
            &args,
        ));
    }

    /// WaitForSync on `revision` (0: latest).
    pub(crate) async fn wait(&mut self, revision: u64) -> pb::SyncStatus {
        self.client
            .wait_for_sync(pb::WaitForSyncRequest {
                instance_id: INSTANCE.into(),
                revision,
                timeout: Some(Duration::from_secs(30).try_into().unwrap()),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("WaitForSync: {s:?}"))
            .into_inner()
    }

    pub(crate) async fn add(&mut self, port: u32, protocol: pb::Protocol) -> (String, u64) {
        let firewall = self
            .client
            .add_rule(pb::AddRuleRequest {
                instance_id: INSTANCE.into(),
                port,
                protocol: protocol.into(),
                ..Default::default()
            })
            .await
            .expect("add rule")
            .into_inner();
        let rule = firewall
            .rules
            .iter()
            .find(|r| r.port == port && r.protocol == protocol as i32)
            .expect("added rule");
        (rule.id.clone(), firewall.revision)
    }

    pub(crate) async fn set_enabled(&mut self, rule_id: &str, enabled: bool) -> u64 {
        cassette_e2e::set_enabled(&mut self.client, INSTANCE, rule_id, enabled).await
    }

    /// Diagnose on `port` (TCP).
    pub(crate) async fn diagnose(&mut self, port: u32) -> pb::Diagnosis {
        self.client
            .diagnose(pb::DiagnoseRequest {
                instance_id: INSTANCE.into(),
                port,
                ..Default::default()
            })
            .await
            .expect("diagnose")
            .into_inner()
    }

    /// Adds a rule for `port` (TCP) that accepts only the client
    /// namespace's other address, and waits until it is applied.
    pub(crate) async fn add_for_other_client(&mut self, port: u32) -> pb::Firewall {
        use cassette_e2e::netns::OTHER_CLIENT_IP;
        let firewall = self
            .client
            .add_rule(pb::AddRuleRequest {
                instance_id: INSTANCE.into(),
                port,
                sources: vec![format!("{OTHER_CLIENT_IP}/32")],
                ..Default::default()
            })
            .await
            .expect("add a rule for one source")
            .into_inner();
        self.wait(firewall.revision).await;
        firewall
    }

    pub(crate) async fn firewall(&mut self) -> pb::Firewall {
        cassette_e2e::get_firewall(&mut self.client, INSTANCE).await
    }

    pub(crate) fn tcp_open(&self, port: u16) -> bool {
        block_in_place(|| self.lab.tcp_open(port))
    }

    pub(crate) fn assert_tcp(&self, open: &[u16], closed: &[u16]) {
        for port in open {
            assert!(self.tcp_open(*port), "TCP {port} should accept connections");
        }
        for port in closed {
            assert!(!self.tcp_open(*port), "TCP {port} should be blocked");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_fresh_instance_opens_only_ssh_http_https_and_a_deleted_one_nothing() {
    if skip_unless_root("kernel_fresh_instance_opens_only_ssh_http_https_and_a_deleted_one_nothing")
    {
        return;
    }
    let mut f = Fixture::start(&[]).await;
    f.assert_tcp(&[22, 80, 443], &[5432]);
    assert!(
        !block_in_place(|| f.lab.udp_echo(5353)),
        "UDP 5353 should be blocked"
    );
    assert!(block_in_place(|| f.lab.ping()), "ping is answered");
    assert_eq!(
        block_in_place(|| f.lab.set_elements("tcp_open")),
        [22, 80, 443]
    );

    // A deleted firewall opens nothing (removing the table would open everything).
    f.client
        .delete_firewall(pb::DeleteFirewallRequest {
            instance_id: INSTANCE.into(),
            ..Default::default()
        })
        .await
        .expect("delete firewall");
    f.wait(0).await;
    f.assert_tcp(&[], &[22, 80, 443]);
    assert!(block_in_place(|| f.lab.ping()), "ping is still answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_rules_open_close_and_report_applied_with_latency() {
    if skip_unless_root("kernel_rules_open_close_and_report_applied_with_latency") {
        return;
    }
    let mut f = Fixture::start(&[]).await;
    let (postgres, revision) = f.add(5432, TCP).await;
    let status = f.wait(revision).await;
    assert_eq!(status.state, pb::SyncState::InSync as i32, "{status:?}");
    assert!(status.enforcer_connected);
    assert_eq!(status.applied_revision, revision);
    assert!(status.last_ack_latency.is_some(), "ack latency reported");
    f.assert_tcp(&[5432], &[]);
    let firewall = f.firewall().await;
    let rule = firewall.rules.iter().find(|r| r.id == postgres).unwrap();
    assert_eq!(rule.status, pb::RuleStatus::Applied as i32);

    let metrics = block_in_place(|| cassette_e2e::scrape(f.rules_metrics));
    assert!(
        metrics.contains("cassette_rules_connected_enforcers 1\n"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("cassette_rules_ack_latency_seconds_count 0\n"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("cassette_rules_events_appended_total 0\n"),
        "{metrics}"
    );

    let revision = f.set_enabled(&postgres, false).await;
    f.wait(revision).await;
    f.assert_tcp(&[22], &[5432]);
    let revision = f.set_enabled(&postgres, true).await;
    f.wait(revision).await;
    f.assert_tcp(&[5432], &[]);
    let revision = f
        .client
        .delete_rule(pb::DeleteRuleRequest {
            instance_id: INSTANCE.into(),
            rule_id: postgres,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    f.wait(revision).await;
    f.assert_tcp(&[22, 80, 443], &[5432]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_udp_rule_and_disabling_ssh() {
    if skip_unless_root("kernel_udp_rule_and_disabling_ssh") {
        return;
    }
    let mut f = Fixture::start(&[]).await;
    let (_, revision) = f.add(5353, pb::Protocol::Udp).await;
    f.wait(revision).await;
    assert!(block_in_place(|| f.lab.udp_echo(5353)), "UDP 5353 echoes");

    let revision = f.set_enabled("default-ssh", false).await;
    f.wait(revision).await;
    f.assert_tcp(&[80], &[22]);
    assert!(block_in_place(|| f.lab.ping()), "ping is still answered");
    let revision = f.set_enabled("default-ssh", true).await;
    f.wait(revision).await;
    f.assert_tcp(&[22], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_enforcer_restart_replays_and_rebuilds_the_table() {
    if skip_unless_root("kernel_enforcer_restart_replays_and_rebuilds_the_table") {
        return;
    }
    let mut f = Fixture::start(&[]).await;
    if let Some(enforcer) = f.enforcer.as_mut() {
        enforcer.kill_9();
    }
    let (_, _) = f.add(5432, TCP).await;
    f.set_enabled("default-http", false).await;
    // Fail-static: with no enforcer nothing changes in the kernel.
    f.assert_tcp(&[22, 80], &[5432]);
    assert_eq!(
        f.firewall().await.sync.unwrap().state,
        pb::SyncState::NoEnforcer as i32
    );

    f.start_enforcer(&[]);
    let status = f.wait(0).await;
    assert_eq!(status.state, pb::SyncState::InSync as i32, "{status:?}");
    f.assert_tcp(&[22, 443, 5432], &[80]);
    assert_eq!(
        block_in_place(|| f.lab.set_elements("tcp_open")),
        [22, 443, 5432]
    );
}

/// The table's first line with its handle: a replaced table gets a new one.
pub(crate) fn table_handle(lab: &Lab) -> String {
    let listing = lab.nft(&["-a", "list", "table", "inet", "cassette"]);
    let text = String::from_utf8_lossy(&listing.stdout);
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_rules_service_kill_9_changes_nothing_and_the_enforcer_resumes() {
    if skip_unless_root("kernel_rules_service_kill_9_changes_nothing_and_the_enforcer_resumes") {
        return;
    }
    let mut f = Fixture::start(&[]).await;
    let (_, revision) = f.add(5432, TCP).await;
    f.wait(revision).await;
    let before = block_in_place(|| table_handle(&f.lab));

    f.rules.kill_9();
    f.assert_tcp(&[22, 5432], &[6379]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.assert_tcp(&[22, 5432], &[6379]);

    let data = f.dir.path().join("data");
    let socket = f.dir.path().join("rules.sock");
    f.rules = RulesProcess::start_unix(&data, &socket, &[]).await;
    f.client = f.rules.client().await;
    let (_, revision) = f.add(6379, TCP).await;
    let status = f.wait(revision).await;
    assert_eq!(status.state, pb::SyncState::InSync as i32, "{status:?}");
    f.assert_tcp(&[22, 5432, 6379], &[]);
    assert_eq!(
        block_in_place(|| table_handle(&f.lab)),
        before,
        "the enforcer resumed with element changes, without replacing the table"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_flushed_table_is_repaired_within_the_refresh_interval() {
    if skip_unless_root("kernel_flushed_table_is_repaired_within_the_refresh_interval") {
        return;
    }
    let metrics = cassette_e2e::free_port();
    let metrics_arg = metrics.to_string();
    let f = Fixture::start(&["--metrics-listen", &metrics_arg]).await;
    let flushed = block_in_place(|| f.lab.nft(&["flush", "table", "inet", "cassette"]));
    assert!(flushed.status.success());
    block_in_place(|| {
        eventually("the table is repaired", || {
            f.lab.set_elements("tcp_open") == [22, 80, 443] && f.lab.tcp_open(22)
        })
    });
    f.assert_tcp(&[22, 80, 443], &[5432]);
    // The enforcer's metrics live in its namespace: read them from there.
    let scrape = format!(
        "import urllib.request; print(urllib.request.urlopen('http://{metrics}/metrics').read().decode())"
    );
    let output = block_in_place(|| {
        Lab::command(&f.lab.instance_ns, &PathBuf::from("python3"))
            .args(["-c", &scrape])
            .output()
            .expect("scrape metrics")
    });
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("cassette_enforcer_drift_repairs_total 1"),
        "metrics: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_rejected_transaction_keeps_the_previous_ruleset_and_reports_nfts_error() {
    if skip_unless_root(
        "kernel_rejected_transaction_keeps_the_previous_ruleset_and_reports_nfts_error",
    ) {
        return;
    }
    let scripts = tempfile::tempdir().unwrap();
    let flag = scripts.path().join("reject");
    let nft = scripts.path().join("nft");
    std::fs::write(
        &nft,
        format!(
            "#!/bin/sh\nif [ -e '{}' ]; then echo 'Error: Could not process rule: simulated rejection' >&2; exit 1; fi\nexec nft \"$@\"\n",
            flag.display()
        ),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&nft).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&nft, perms).unwrap();
    let nft_arg = nft.display().to_string();
    let mut f = Fixture::start(&["--nft-path", &nft_arg]).await;

    std::fs::write(&flag, "").unwrap();
    let (postgres, revision) = f.add(5432, TCP).await;
    let status = f.wait(revision).await;
    assert_eq!(status.state, pb::SyncState::Error as i32, "{status:?}");
    assert!(
        status.last_error.contains("simulated rejection"),
        "{status:?}"
    );
    assert_eq!(status.failed_revision, revision);
    let rule = f
        .firewall()
        .await
        .rules
        .into_iter()
        .find(|r| r.id == postgres)
        .unwrap();
    assert_eq!(rule.status, pb::RuleStatus::Failed as i32);
    f.assert_tcp(&[22, 80, 443], &[5432]);

    std::fs::remove_file(&flag).unwrap();
    let (_, revision) = f.add(6379, TCP).await;
    let status = f.wait(revision).await;
    assert_eq!(status.state, pb::SyncState::InSync as i32, "{status:?}");
    assert!(status.last_error.is_empty());
    f.assert_tcp(&[22, 5432, 6379], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_secured_enforcer_applies_over_mutual_tls_and_acks_the_right_hash() {
    if skip_unless_root("kernel_secured_enforcer_applies_over_mutual_tls_and_acks_the_right_hash") {
        return;
    }
    let secured =
        Secured::new("[[principal]]\nname = \"console\"\nrole = \"admin\"\ninstances = [\"*\"]\n");
    let mut f = Fixture::start_with(&["--table", "cassette_tls"], Some(&secured)).await;
    let (_, revision) = f.add(5432, TCP).await;
    let status = f.wait(revision).await;
    // IN_SYNC means the ack's ruleset hash matched the service's (with another
    // table name than the default, which the hash does not depend on).
    assert_eq!(status.state, pb::SyncState::InSync as i32, "{status:?}");
    assert!(status.last_error.is_empty(), "{status:?}");
    f.assert_tcp(&[22, 5432], &[3306]);
    // The service has only its TLS listener: the enforcer's stream used it.
    let firewall = f.firewall().await;
    assert!(firewall.sync.unwrap().enforcer_connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_a_flushed_ruleset_is_restored_while_the_rules_service_is_down() {
    if skip_unless_root("kernel_a_flushed_ruleset_is_restored_while_the_rules_service_is_down") {
        return;
    }
    let mut f = Fixture::start(&[]).await;
    let (_, revision) = f.add(5432, TCP).await;
    f.wait(revision).await;
    f.rules.kill_9();
    let flushed = block_in_place(|| f.lab.nft(&["flush", "ruleset"]));
    assert!(flushed.status.success());
    // Fail-static includes putting the last ruleset back, with no service to ask.
    block_in_place(|| {
        eventually("the ruleset is restored without the rules service", || {
            f.lab.set_elements("tcp_open") == [22, 80, 443, 5432]
        })
    });
    f.assert_tcp(&[22, 5432], &[6379]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_a_rebooted_instance_shows_pending_until_it_has_reapplied() {
    if skip_unless_root("kernel_a_rebooted_instance_shows_pending_until_it_has_reapplied") {
        return;
    }
    let mut f = Fixture::start(&[]).await;
    let (postgres, revision) = f.add(5432, TCP).await;
    f.wait(revision).await;
    // The instance reboots: its enforcer dies, its kernel comes back empty.
    if let Some(mut enforcer) = f.enforcer.take() {
        enforcer.kill_9();
    }
    let deleted = block_in_place(|| f.lab.nft(&["delete", "table", "inet", "cassette"]));
    assert!(deleted.status.success());
    // Its first Hello says it holds nothing: nothing may be shown as applied.
    let channel = cassette_e2e::channel(&f.rules.target).await;
    let hello = crate::sync::open_on(channel, INSTANCE, 0).await.unwrap();
    let mut firewall = f.firewall().await;
    for _ in 0..100 {
        if firewall
            .sync
            .as_ref()
            .is_some_and(|s| s.applied_revision == 0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        firewall = f.firewall().await;
    }
    let sync = firewall.sync.clone().unwrap();
    assert_eq!(
        (sync.applied_revision, sync.state),
        (0, pb::SyncState::Pending as i32),
        "{sync:?}"
    );
    let rule = firewall.rules.iter().find(|r| r.id == postgres).unwrap();
    assert_eq!(
        rule.status,
        pb::RuleStatus::Pending as i32,
        "never APPLIED while not in the kernel"
    );
    drop(hello);

    // The restarted enforcer re-applies; then it is applied again, for real.
    f.start_enforcer(&[]);
    let status = f.wait(revision).await;
    assert_eq!(status.state, pb::SyncState::InSync as i32, "{status:?}");
    f.assert_tcp(&[22, 5432], &[6379]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_n_connections_show_at_least_n_hits_on_the_rule() {
    if skip_unless_root("kernel_n_connections_show_at_least_n_hits_on_the_rule") {
        return;
    }
    const CONNECTIONS: u64 = 5;
    let mut f = Fixture::start(&["--report-interval", "300ms"]).await;
    let (postgres, revision) = f.add(5432, TCP).await;
    f.wait(revision).await;
    for _ in 0..CONNECTIONS {
        assert!(f.tcp_open(5432));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let rule = loop {
        let firewall = f.firewall().await;
        let rule = firewall
            .rules
            .into_iter()
            .find(|r| r.id == postgres)
            .unwrap();
        if rule.hits >= CONNECTIONS && rule.last_hit_time.is_some() {
            break rule;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{CONNECTIONS} connections, reported: {rule:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("{CONNECTIONS} connections: {} hits reported", rule.hits);
    // A rule nobody connected to has none.
    let firewall = f.firewall().await;
    let https = firewall.rules.iter().find(|r| r.port == 443).unwrap();
    assert_eq!((https.hits, https.last_hit_time), (0, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_diagnose_passes_for_a_working_port_and_names_what_is_missing() {
    if skip_unless_root("kernel_diagnose_passes_for_a_working_port_and_names_what_is_missing") {
        return;
    }
    let mut f = Fixture::start(&[]).await;
    let (_, revision) = f.add(5432, TCP).await;
    f.wait(revision).await;
    assert!(f.tcp_open(5432));
    // The enforcer's fresh report: the kernel's element, the listener, the packet.
    let working = f.diagnose(5432).await;
    assert!(working.ok, "{working:#?}");

    // 3000: a rule, applied, but no service behind it.
    let (_, revision) = f.add(3000, TCP).await;
    f.wait(revision).await;
    let broken = f.diagnose(3000).await;
    assert!(!broken.ok);
    let listening = broken
        .checks
        .iter()
        .find(|c| c.name == "service_listening")
        .unwrap();
    assert_eq!(
        listening.result,
        pb::CheckResult::Fail as i32,
        "{broken:#?}"
    );
    assert!(
        listening
            .next_step
            .contains("sudo netstat -tlnp | grep 3000"),
        "{listening:?}"
    );
    let in_kernel = broken
        .checks
        .iter()
        .find(|c| c.name == "rule_in_kernel")
        .unwrap();
    assert_eq!(
        in_kernel.result,
        pb::CheckResult::Pass as i32,
        "{broken:#?}"
    );
}

/// Off means blocked, for connections already open too: a TCP session over
/// IPv4 and over IPv6 and a UDP flow, opened while their rules were on,
/// stop passing traffic once the rules are turned off (and the change is
/// applied), pass again once they are back on, and stop for good when the
/// rules are deleted. A connection the instance opened itself keeps working
/// throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_open_connections_stop_when_their_rule_is_turned_off_or_deleted() {
    use cassette_e2e::netns::{Session, CLIENT_IP, INSTANCE_IP, INSTANCE_IP6};
    if skip_unless_root("kernel_open_connections_stop_when_their_rule_is_turned_off_or_deleted") {
        return;
    }
    let mut f = Fixture::start(&[]).await;
    let (instance_ns, client_ns) = (f.lab.instance_ns.clone(), f.lab.client_ns.clone());
    block_in_place(|| {
        f.lab.start_echo(&instance_ns, &["tcp:7000", "udp:7001"]);
        f.lab.start_echo(&client_ns, &["tcp:9000"]);
    });
    let (tcp_rule, _) = f.add(7000, TCP).await;
    let (udp_rule, revision) = f.add(7001, pb::Protocol::Udp).await;
    f.wait(revision).await;
    let lab = &f.lab;
    let mut inbound: Vec<(&str, Session)> = block_in_place(|| {
        vec![
            (
                "TCP over IPv4",
                lab.session(&client_ns, "tcp", INSTANCE_IP, 7000),
            ),
            (
                "TCP over IPv6",
                lab.session(&client_ns, "tcp", INSTANCE_IP6, 7000),
            ),
            (
                "UDP over IPv4",
                lab.session(&client_ns, "udp", INSTANCE_IP, 7001),
            ),
            (
                "UDP over IPv6",
                lab.session(&client_ns, "udp", INSTANCE_IP6, 7001),
            ),
        ]
    });
    let mut outbound = block_in_place(|| lab.session(&instance_ns, "tcp", CLIENT_IP, 9000));
    let all_pass = |sessions: &mut Vec<(&str, Session)>, outbound: &mut Session, want: bool| {
        block_in_place(|| {
            for (name, session) in sessions.iter_mut() {
                // TCP retransmits with backoff: a session let through again
                // may take a few seconds to get its bytes across.
                let deadline = std::time::Instant::now() + Duration::from_secs(15);
                let mut passes = session.passes();
                while want && !passes && std::time::Instant::now() < deadline {
                    passes = session.passes();
                }
                assert_eq!(passes, want, "{name}: passes traffic");
            }
            assert!(
                outbound.passes(),
                "the instance's own connection keeps working"
            );
        })
    };
    all_pass(&mut inbound, &mut outbound, true);

    let set = |f: &mut Fixture, rule: String, enabled| {
        let mut client = f.client.clone();
        async move { cassette_e2e::set_enabled(&mut client, INSTANCE, &rule, enabled).await }
    };
    set(&mut f, tcp_rule.clone(), false).await;
    let revision = set(&mut f, udp_rule.clone(), false).await;
    f.wait(revision).await;
    all_pass(&mut inbound, &mut outbound, false);

    set(&mut f, tcp_rule.clone(), true).await;
    let revision = set(&mut f, udp_rule.clone(), true).await;
    f.wait(revision).await;
    all_pass(&mut inbound, &mut outbound, true);

    let mut revision = 0;
    for rule in [tcp_rule, udp_rule] {
        revision = f
            .client
            .delete_rule(pb::DeleteRuleRequest {
                instance_id: INSTANCE.into(),
                rule_id: rule,
                ..Default::default()
            })
            .await
            .expect("delete")
            .into_inner()
            .revision;
    }
    f.wait(revision).await;
    all_pass(&mut inbound, &mut outbound, false);
}

/// A benchmark, not a test (run it by name with `--ignored`): how long after
/// a toggle an open connection stops passing traffic. A UDP flow sends a
/// datagram every millisecond; each toggle off is timed from the call to the
/// flow's last echo, and the rule is turned on again before the next.
/// Prints p50 and max over 100 toggles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: cargo test -p cassette-e2e --test e2e -- --ignored kernel_bench_toggle_off_to_traffic_cut --nocapture"]
async fn kernel_bench_toggle_off_to_traffic_cut() {
    if skip_unless_root("kernel_bench_toggle_off_to_traffic_cut") {
        return;
    }
    let mut f = Fixture::start(&[]).await;
    let instance_ns = f.lab.instance_ns.clone();
    block_in_place(|| f.lab.start_echo(&instance_ns, &["udp:7001"]));
    let (rule, revision) = f.add(7001, pb::Protocol::Udp).await;
    f.wait(revision).await;
    let mut flow = block_in_place(|| f.lab.flow(7001));
    let mut cuts = Vec::new();
    for _ in 0..100 {
        // Flowing again before each toggle.
        let on = std::time::SystemTime::now();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while block_in_place(|| flow.last_echo()) <= on {
            assert!(std::time::Instant::now() < deadline, "the flow resumed");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let called = std::time::SystemTime::now();
        f.set_enabled(&rule, false).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let last = block_in_place(|| flow.last_echo());
        cuts.push(last.duration_since(called).unwrap_or_default());
        f.set_enabled(&rule, true).await;
    }
    cuts.sort();
    eprintln!(
        "toggle off -> open flow's traffic cut, over {} toggles: p50 {:?}, p90 {:?}, max {:?}",
        cuts.len(),
        cuts[cuts.len() / 2],
        cuts[cuts.len() * 9 / 10],
        cuts[cuts.len() - 1]
    );
}
