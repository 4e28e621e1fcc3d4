//! What the firewall blocked, with real traffic into a real kernel: attempts
//! to a closed port counted with their sources (IPv4 and IPv6, TCP and UDP),
//! the cause Diagnose names (no rule, the rule off, a source outside the
//! allowlist), `cassette blocked`, and a scan of every port that stays
//! bounded and cannot blind the record (root).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cassette_e2e::netns::{CLIENT_IP, CLIENT_IP6, OTHER_CLIENT_IP};
use cassette_e2e::{binary, pb, AuditClient};
use cassette_ruleset::BLOCKED_SETS;
use tokio::task::block_in_place;

use crate::kernel::{skip_unless_root, Fixture, INSTANCE, TCP};
use crate::sync::result_of;

/// Reads the firewall until `done` holds for its blocked list (the
/// enforcer reports every 300 ms here), or fails after 30 s.
async fn blocked_until(
    f: &mut Fixture,
    what: &str,
    done: impl Fn(&[pb::BlockedTraffic]) -> bool,
) -> Vec<pb::BlockedTraffic> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let blocked = f.firewall().await.blocked;
        if done(&blocked) {
            return blocked;
        }
        assert!(Instant::now() < deadline, "{what}: {blocked:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn find(
    blocked: &[pb::BlockedTraffic],
    protocol: pb::Protocol,
    port: u32,
) -> Option<&pb::BlockedTraffic> {
    blocked
        .iter()
        .find(|b| b.port == port && b.protocol == protocol as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_blocked_attempts_show_with_their_sources_and_diagnose_names_the_cause() {
    if skip_unless_root(
        "kernel_blocked_attempts_show_with_their_sources_and_diagnose_names_the_cause",
    ) {
        return;
    }
    let mut f = Fixture::start(&["--report-interval", "300ms"]).await;
    // Nothing was dropped yet: a working port's check passes.
    let clean = f.diagnose(22).await;
    let (result, why) = result_of(&clean, "blocked_traffic");
    assert_eq!(result, pb::CheckResult::Pass, "{why}");
    assert!(why.contains("no connection to 22/tcp was dropped"), "{why}");

    // 3000/tcp has no rule: 3 attempts from one address, 1 from another,
    // 2 over IPv6; 9999/udp: 2 datagrams.
    block_in_place(|| {
        f.lab.knock("tcp", CLIENT_IP, 3000, 3);
        f.lab.knock("tcp", OTHER_CLIENT_IP, 3000, 1);
        f.lab.knock("tcp", CLIENT_IP6, 3000, 2);
        f.lab.knock("udp", CLIENT_IP, 9999, 2);
    });
    let blocked = blocked_until(&mut f, "3000/tcp x6 and 9999/udp x2", |b| {
        find(b, TCP, 3000).is_some_and(|r| r.attempts == 6)
            && find(b, pb::Protocol::Udp, 9999).is_some_and(|r| r.attempts == 2)
    })
    .await;
    let tcp = find(&blocked, TCP, 3000).unwrap();
    assert_eq!(tcp.distinct_sources, 3, "{tcp:?}");
    let top: Vec<(&str, u64, bool)> = tcp
        .top_sources
        .iter()
        .map(|s| (s.address.as_str(), s.attempts, s.allowed))
        .collect();
    assert_eq!(
        top,
        [
            (CLIENT_IP, 3, false),
            (CLIENT_IP6, 2, false),
            (OTHER_CLIENT_IP, 1, false)
        ]
    );
    assert_eq!(tcp.reason, pb::BlockedReason::NoRule as i32);
    assert!(tcp.rule_id.is_empty());
    let last = std::time::SystemTime::try_from(tcp.last_time.unwrap()).unwrap();
    let age = std::time::SystemTime::now()
        .duration_since(last)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(30), "last attempt {age:?} ago");
    let udp = find(&blocked, pb::Protocol::Udp, 9999).unwrap();
    assert_eq!((udp.distinct_sources, udp.top_sources.len()), (1, 1));
    // Ports that accept are not in the record: the listeners' own rules.
    assert!(find(&blocked, TCP, 22).is_none());

    let no_rule = f.diagnose(3000).await;
    let (result, why) = result_of(&no_rule, "blocked_traffic");
    assert_eq!(result, pb::CheckResult::Fail);
    assert!(
        why.contains("connections to 3000/tcp arrive and are dropped: there is no rule (6 attempts from 3 sources"),
        "{why}"
    );

    // The CLI prints the same record.
    let output = block_in_place(|| {
        Command::new(binary("cassette"))
            .args(["--rules", &f.socket_target(), "blocked", INSTANCE])
            .env_remove("CASSETTE_OUTPUT")
            .stdin(Stdio::null())
            .output()
            .expect("run cassette")
    });
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    let row = table
        .lines()
        .find(|l| l.starts_with("3000 "))
        .unwrap_or_else(|| panic!("no 3000 row in\n{table}"));
    for part in ["tcp", " 6 ", " 3 ", "no rule", "198.51.100.2 (3)"] {
        assert!(row.contains(part), "{part:?} in {row:?}");
    }

    // The rule off: 6379 has a listener; its rule is added turned off.
    let (redis, _) = f.add(6379, TCP).await;
    let revision = f.set_enabled(&redis, false).await;
    f.wait(revision).await;
    block_in_place(|| f.lab.knock("tcp", CLIENT_IP, 6379, 1));
    blocked_until(&mut f, "6379 blocked", |b| find(b, TCP, 6379).is_some()).await;
    let off = f.diagnose(6379).await;
    let (result, why) = result_of(&off, "blocked_traffic");
    assert_eq!(result, pb::CheckResult::Fail);
    assert!(
        why.contains("connections to 6379/tcp arrive and are dropped: the rule is off"),
        "{why}"
    );

    // An allowlist that leaves the client out: 5432 from OTHER_CLIENT_IP only.
    f.add_for_other_client(5432).await;
    block_in_place(|| {
        f.lab.knock("tcp", CLIENT_IP, 5432, 2);
        assert!(
            f.lab.tcp_open_from(OTHER_CLIENT_IP, 5432),
            "the allowed source gets in"
        );
    });
    let blocked = blocked_until(&mut f, "5432 blocked", |b| {
        find(b, TCP, 5432).is_some_and(|r| r.attempts == 2)
    })
    .await;
    let postgres = find(&blocked, TCP, 5432).unwrap();
    assert_eq!(postgres.reason, pb::BlockedReason::SourceNotAllowed as i32);
    assert!(!postgres.rule_id.is_empty());
    assert_eq!(
        postgres.distinct_sources, 1,
        "the allowed source was not dropped"
    );
    let outside = f.diagnose(5432).await;
    let (result, why) = result_of(&outside, "blocked_traffic");
    assert_eq!(result, pb::CheckResult::Fail);
    assert!(
        why.contains("the source 198.51.100.2 is not in the rule's allowlist (2 attempts from it"),
        "{why}"
    );
    assert!(
        why.contains("add 198.51.100.2/32 to the rule's sources"),
        "{why}"
    );

    // Opening 3000 turns its record into one the rule accepts now.
    let (_, revision) = f.add(3000, TCP).await;
    f.wait(revision).await;
    let firewall = f.firewall().await;
    let opened = find(&firewall.blocked, TCP, 3000).expect("still in the record");
    assert_eq!(opened.reason, pb::BlockedReason::AcceptedNow as i32);
    // Never in the log: the record came from reports only.
    let mut audit = AuditClient::new(cassette_e2e::channel(&f.rules.target).await);
    let events = cassette_e2e::instance_events(&mut audit, INSTANCE).await;
    assert_eq!(events.len() as u64, firewall.revision);
}

/// Elements in one of the instance's sets (the kernel's own count).
fn element_count(f: &Fixture, set: &str) -> usize {
    let output = f.lab.nft(&["-j", "list", "set", "inet", "cassette", set]);
    let listing: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["set"]["elem"].as_array())
        .map(Vec::len)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_a_scan_of_every_port_stays_bounded_and_cannot_blind_the_record() {
    if skip_unless_root("kernel_a_scan_of_every_port_stays_bounded_and_cannot_blind_the_record") {
        return;
    }
    let mut f = Fixture::start(&["--report-interval", "300ms"]).await;
    let size = BLOCKED_SETS[0].size;
    let started = Instant::now();
    block_in_place(|| f.lab.scan(CLIENT_IP, 1, 65_535));
    let scanned = started.elapsed();
    let ports = element_count(&f, "blocked_ports");
    let sources = element_count(&f, "blocked4");
    eprintln!(
        "scan of 65,535 ports in {scanned:?}: {ports} port records, {sources} source records"
    );
    assert!(ports <= size && sources <= size, "{ports} {sources}");
    assert!(ports >= 1000, "the scan was recorded: {ports}");

    // The enforcer makes room; a later visitor's attempts are recorded.
    let deadline = Instant::now() + Duration::from_secs(30);
    while element_count(&f, "blocked_ports") > size * 3 / 4 {
        assert!(Instant::now() < deadline, "the enforcer never made room");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    block_in_place(|| f.lab.knock("tcp", OTHER_CLIENT_IP, 40_000, 2));
    let blocked = blocked_until(&mut f, "40000 from the other client", |b| {
        find(b, TCP, 40_000).is_some_and(|r| {
            r.top_sources
                .iter()
                .any(|s| s.address == OTHER_CLIENT_IP && s.attempts == 2)
        })
    })
    .await;
    assert!(
        blocked.len() <= 100,
        "a firewall lists at most 100: {}",
        blocked.len()
    );
    assert_eq!(blocked[0].port, 40_000, "most recent first");
    // The service still answers at once, and the kernel stayed bounded.
    assert!(element_count(&f, "blocked_ports") <= size);
    assert!(f.tcp_open(22));
}

/// The page's "Recently blocked": a port with no rule, opened from its row
/// through the prefilled Add Port form; a source outside an allowlist,
/// allowed with one click. Real kernel, real traffic, real browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_recently_blocked_opens_the_port_and_allows_the_source() {
    use cassette_e2e::browser::Browser;
    use fantoccini::Locator;

    use crate::console::{row, skip_without_browser};

    let test = "console_recently_blocked_opens_the_port_and_allows_the_source";
    if skip_unless_root(test) || skip_without_browser(test) {
        return;
    }
    let mut f = Fixture::start(&["--report-interval", "300ms"]).await;
    let console = f.rules.console.expect("the console listens");
    let browser = Browser::start(1280, 1200, &[]).await;
    browser
        .client
        .goto(&format!("http://{console}/instances/{INSTANCE}"))
        .await
        .expect("open the page");
    browser.wait_attr(&row(22), "data-status", "applied").await;
    browser
        .wait_text("#blocked", "Nothing was blocked in the last hour")
        .await;

    // Redis listens on 6379, which has no rule: its connections are dropped.
    block_in_place(|| f.lab.knock("tcp", CLIENT_IP, 6379, 2));
    let blocked_row = "#blocked tr[data-blocked-port=\"6379\"][data-protocol=\"tcp\"]";
    browser
        .wait_attr(blocked_row, "data-reason", "BLOCKED_REASON_NO_RULE")
        .await;
    browser
        .wait_text(blocked_row, "No rule for this port")
        .await;
    browser.screenshot("blocked-01-recently-blocked").await;
    browser
        .click(Locator::Css(&format!("{blocked_row} .open-port")))
        .await;
    let port = browser.client.find(Locator::Id("port")).await.unwrap();
    assert_eq!(port.prop("value").await.unwrap().as_deref(), Some("6379"));
    browser
        .wait_text("#port-advice", "Database ports should usually stay closed")
        .await;
    browser
        .click(Locator::XPath("//button[normalize-space()='Add Port']"))
        .await;
    browser
        .wait_attr(&row(6379), "data-status", "applied")
        .await;
    assert!(f.tcp_open(6379), "opened from its blocked row");
    browser
        .wait_attr(blocked_row, "data-reason", "BLOCKED_REASON_ACCEPTED_NOW")
        .await;

    // 5432 open to the other client only; this client is dropped.
    f.add_for_other_client(5432).await;
    block_in_place(|| f.lab.knock("tcp", CLIENT_IP, 5432, 1));
    let allow = format!(
        "#blocked tr[data-blocked-port=\"5432\"] .allow-source[data-source=\"{CLIENT_IP}\"]"
    );
    browser
        .wait_text(&allow, &format!("Allow {CLIENT_IP}"))
        .await;
    browser.screenshot("blocked-02-outside-the-allowlist").await;
    browser.click(Locator::Css(&allow)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let firewall = f.firewall().await;
        let rule = firewall.rules.iter().find(|r| r.port == 5432).unwrap();
        if rule.sources.contains(&format!("{CLIENT_IP}/32")) {
            assert!(rule.sources.contains(&format!("{OTHER_CLIENT_IP}/32")));
            f.wait(firewall.revision).await;
            break;
        }
        assert!(Instant::now() < deadline, "never allowed: {rule:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        block_in_place(|| f.lab.tcp_open_from(CLIENT_IP, 5432)),
        "allowed from its blocked row"
    );
    browser.close().await;
}
