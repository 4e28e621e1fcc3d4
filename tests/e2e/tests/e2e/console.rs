//! The console: the Firewall page in a real browser (Debian's chromium over
//! WebDriver) against the real rules service and a real enforcer on real
//! nftables, and the JSON API behind it. Screenshots of each state land in
//! `target/console-screenshots/` for people to look at.

use std::process::Command;
use std::time::{Duration, Instant};

use cassette_e2e::browser::{self, Browser};
use cassette_e2e::{get_firewall, http};
use cassette_proto::pb;
use fantoccini::Locator;
use tokio::task::block_in_place;

use crate::kernel::{skip_unless_root, Fixture, INSTANCE};

pub(crate) fn skip_without_browser(test: &str) -> bool {
    if browser::available() {
        return false;
    }
    eprintln!("{test}: skipped, needs Debian's chromium and chromium-driver (scripts/test.sh installs them)");
    true
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid}");
}

/// `[data-rule-id]` row of the rule on `port` (TCP).
pub(crate) fn row(port: u32) -> String {
    format!("tr[data-port=\"{port}\"][data-protocol=\"tcp\"]")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_adds_toggles_and_deletes_a_rule_in_a_real_browser_and_the_kernel_follows() {
    let test = "console_adds_toggles_and_deletes_a_rule_in_a_real_browser_and_the_kernel_follows";
    if skip_unless_root(test) || skip_without_browser(test) {
        return;
    }
    let mut fixture = Fixture::start(&[]).await;
    let console = fixture.rules.console.expect("the console listens");
    let browser = Browser::start(1280, 1000, &[]).await;
    let page = format!("http://{console}/instances/{INSTANCE}");

    // The page, its rules applied, and the stream live.
    let loading = Instant::now();
    browser.client.goto(&page).await.expect("open the page");
    browser.wait_attr(&row(22), "data-status", "applied").await;
    let loaded = loading.elapsed();
    browser.wait_attr("#live", "data-live", "true").await;
    eprintln!("page load to the rules shown as applied: {loaded:?}");
    browser.screenshot("01-firewall").await;

    // The markup contract.
    for (id, label) in [
        ("port", "Port"),
        ("protocol", "Protocol"),
        ("description", "Description"),
    ] {
        let text = browser
            .client
            .find(Locator::Css(&format!("label[for=\"{id}\"]")))
            .await
            .expect("label")
            .text()
            .await
            .expect("label text");
        assert_eq!(text, label);
    }
    let ssh = browser
        .client
        .find(Locator::Css(&row(22)))
        .await
        .expect("SSH row");
    assert_eq!(
        ssh.attr("data-rule-id").await.unwrap().as_deref(),
        Some("default-ssh")
    );
    let ssh_switch = ssh
        .find(Locator::Css("[role=\"switch\"]"))
        .await
        .expect("switch");
    assert_eq!(
        ssh_switch.attr("aria-checked").await.unwrap().as_deref(),
        Some("true")
    );
    assert!(
        ssh.find_all(Locator::Css("[aria-label=\"Delete rule\"]"))
            .await
            .unwrap()
            .is_empty(),
        "a default rule has no delete"
    );

    // Typing a database port shows the seed's advice.
    let port = browser
        .client
        .find(Locator::Id("port"))
        .await
        .expect("port field");
    port.send_keys("5432").await.expect("type the port");
    browser
        .wait_text("#port-advice", "Database ports should usually stay closed")
        .await;
    let description = browser
        .client
        .find(Locator::Id("description"))
        .await
        .unwrap();
    description.send_keys("PostgreSQL").await.unwrap();
    browser.screenshot("02-database-advice").await;

    // Add Port with the enforcer held back: pending, then applied when it runs.
    let enforcer_pid = fixture.enforcer.as_ref().expect("enforcer").pid();
    signal(enforcer_pid, "-STOP");
    let add = browser
        .client
        .find(Locator::XPath("//button[normalize-space()='Add Port']"))
        .await
        .expect("the Add Port button");
    add.click().await.expect("click Add Port");
    browser
        .wait_attr(&row(5432), "data-status", "pending")
        .await;
    browser
        .wait_text("#add-notice", "Database ports should usually stay closed")
        .await;
    browser.screenshot("03-pending").await;
    assert!(
        !block_in_place(|| fixture.lab.tcp_open(5432)),
        "not open while pending"
    );
    signal(enforcer_pid, "-CONT");
    browser
        .wait_attr(&row(5432), "data-status", "applied")
        .await;
    assert!(
        block_in_place(|| fixture.lab.tcp_open(5432)),
        "5432 open once applied"
    );
    browser.screenshot("04-applied").await;

    // A quick pick, with the enforcer running: click to applied.
    browser
        .click(Locator::Css("button.chip[data-port=\"3000\"]"))
        .await;
    let clicked = Instant::now();
    add.click().await.unwrap();
    browser
        .wait_attr(&row(3000), "data-status", "applied")
        .await;
    eprintln!(
        "click on Add Port to the row showing applied: {:?}",
        clicked.elapsed()
    );

    // Toggle 5432 off: gray, applied, and closed in the kernel.
    let switch = format!("{} [role=\"switch\"]", row(5432));
    let clicked = Instant::now();
    browser.click(Locator::Css(&switch)).await;
    browser.wait_attr(&switch, "aria-checked", "false").await;
    browser
        .wait_attr(&row(5432), "data-status", "applied")
        .await;
    eprintln!(
        "click on the toggle to the row showing applied: {:?}",
        clicked.elapsed()
    );
    assert!(
        !block_in_place(|| fixture.lab.tcp_open(5432)),
        "5432 blocked when gray"
    );
    browser.screenshot("05-blocking").await;

    // Delete 5432 through the trash icon, after the confirmation.
    let row_5432 = browser.client.find(Locator::Css(&row(5432))).await.unwrap();
    let trash = row_5432
        .find(Locator::Css("button[aria-label=\"Delete rule\"]"))
        .await
        .expect("a custom rule has a delete button");
    use fantoccini::actions::InputSource;
    let hover = fantoccini::actions::MouseActions::new("mouse".to_owned()).then(
        fantoccini::actions::PointerAction::MoveToElement {
            element: row_5432.clone(),
            duration: None,
            x: 0.0,
            y: 0.0,
        },
    );
    browser
        .client
        .perform_actions(hover)
        .await
        .expect("hover the row");
    trash.click().await.expect("click the trash icon");
    browser
        .wait_text("#confirm-title", "Delete the rule for port 5432/TCP?")
        .await;
    browser.screenshot("06-delete-confirm").await;
    browser.click(Locator::Id("confirm-ok")).await;
    browser.wait_gone(&row(5432)).await;
    let firewall = get_firewall(&mut fixture.client, INSTANCE).await;
    assert!(
        !firewall.rules.iter().any(|r| r.port == 5432),
        "deleted in the service"
    );

    // The server's validation, at the field it names; nothing appended.
    let before = firewall.revision;
    port.clear().await.unwrap();
    port.send_keys("70000").await.unwrap();
    add.click().await.unwrap();
    let message = browser
        .wait_text("#port-error", "between 1 and 65535")
        .await;
    assert_eq!(
        browser
            .client
            .find(Locator::Id("port-error"))
            .await
            .unwrap()
            .attr("role")
            .await
            .unwrap()
            .as_deref(),
        Some("alert")
    );
    assert_eq!(
        port.attr("aria-invalid").await.unwrap().as_deref(),
        Some("true")
    );
    eprintln!("70000 answered at the field: {message:?}");
    browser.screenshot("07-invalid-port").await;

    // A duplicate port+protocol is named as such.
    port.clear().await.unwrap();
    port.send_keys("3000").await.unwrap();
    add.click().await.unwrap();
    browser.wait_text("#add-error", "already exists").await;
    browser
        .wait_text(
            "#add-error",
            "Each port+protocol combination can only have one rule",
        )
        .await;
    browser.screenshot("08-duplicate").await;
    assert_eq!(
        get_firewall(&mut fixture.client, INSTANCE).await.revision,
        before
    );

    // Disabling SSH asks first, with the seed's warning; cancel changes nothing.
    let ssh_switch_css = format!("{} [role=\"switch\"]", row(22));
    browser.click(Locator::Css(&ssh_switch_css)).await;
    browser
        .wait_text("#confirm-message", "you'll only have web console access")
        .await;
    browser
        .wait_text("#confirm-message", "sessions already open are cut too")
        .await;
    browser.screenshot("09-ssh-confirm").await;
    browser.click(Locator::Id("confirm-cancel")).await;
    browser
        .wait_attr(&ssh_switch_css, "aria-checked", "true")
        .await;
    assert_eq!(
        get_firewall(&mut fixture.client, INSTANCE).await.revision,
        before
    );

    // Disabling SSH offers "Undo in 2 minutes unless I confirm", ticked: a
    // banner counts down until "Keep this change" keeps it.
    browser.click(Locator::Css(&ssh_switch_css)).await;
    browser
        .wait_text("#confirm-undo", "Undo in 2 minutes")
        .await;
    let undo_box = browser
        .client
        .find(Locator::Id("confirm-undo-box"))
        .await
        .unwrap();
    assert_eq!(
        undo_box.prop("checked").await.unwrap().as_deref(),
        Some("true"),
        "the undo is on by default"
    );
    browser.click(Locator::Id("confirm-ok")).await;
    browser
        .wait_attr(&ssh_switch_css, "aria-checked", "false")
        .await;
    let banner = browser
        .wait_text("#unconfirmed .banner", "turned 22/tcp off")
        .await;
    assert!(
        banner.contains("Undone in 1:5") || banner.contains("Undone in 2:00"),
        "{banner}"
    );
    let unconfirmed = get_firewall(&mut fixture.client, INSTANCE)
        .await
        .unconfirmed;
    assert_eq!(unconfirmed.len(), 1, "{unconfirmed:?}");
    browser.screenshot("09b-ssh-undo-banner").await;
    browser
        .click(Locator::Css("#unconfirmed .banner button"))
        .await;
    browser.wait_gone("#unconfirmed .banner").await;
    let kept = get_firewall(&mut fixture.client, INSTANCE).await;
    assert!(kept.unconfirmed.is_empty(), "{kept:?}");
    assert!(!kept.rules.iter().find(|r| r.port == 22).unwrap().enabled);
    browser.click(Locator::Css(&ssh_switch_css)).await;
    browser
        .wait_attr(&ssh_switch_css, "aria-checked", "true")
        .await;

    // A change made elsewhere with a short window, not kept: the page says
    // what was undone, and the switch goes back.
    let http_switch_css = format!("{} [role=\"switch\"]", row(80));
    fixture
        .client
        .update_rule(crate::confirm::toggle_within(
            INSTANCE,
            "default-http",
            false,
            Duration::from_secs(2),
        ))
        .await
        .expect("HTTP off with a window");
    browser
        .wait_text("#unconfirmed .banner", "turned 80/tcp off")
        .await;
    browser
        .wait_text("#reverted", "Undone: turned 80/tcp off")
        .await;
    browser
        .wait_attr(&http_switch_css, "aria-checked", "true")
        .await;
    browser.screenshot("09c-undone").await;

    // A change by another client (grpcurl) shows up without a reload.
    let socket = fixture.dir.path().join("rules.sock");
    let output = Command::new("grpcurl")
        .args(["-plaintext", "-unix", "-authority", "localhost", "-d"])
        .arg(format!(
            r#"{{"instance_id": "{INSTANCE}", "port": 6379, "description": "Redis"}}"#
        ))
        .arg(socket)
        .arg("cassette.firewall.v1.FirewallService/AddRule")
        .output()
        .expect("run grpcurl (scripts/test.sh installs it)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    browser
        .wait_attr(&row(6379), "data-status", "applied")
        .await;
    browser.screenshot("10-changed-elsewhere").await;

    // Troubleshooting, the seed's checklist: 3000 has a rule, nothing listens.
    browser
        .click(Locator::Css(&format!("{} button.check", row(3000))))
        .await;
    browser
        .wait_attr("#diagnosis", "data-state", "problems")
        .await;
    for (check, result) in [
        ("rule_exists", "pass"),
        ("rule_enabled", "pass"),
        ("rule_applied", "pass"),
        ("rule_in_kernel", "pass"),
        ("service_listening", "fail"),
    ] {
        let item = format!("#diagnosis li[data-check=\"{check}\"]");
        browser.wait_attr(&item, "data-result", result).await;
    }
    browser
        .wait_text(
            "#diagnosis li[data-check=\"service_listening\"] .next",
            "Verify the service is actually running",
        )
        .await;
    browser
        .wait_text("#diagnosis .summary", "5 of 7 checks pass")
        .await;
    browser
        .client
        .execute(
            "document.getElementById('diagnosis').scrollIntoView()",
            vec![],
        )
        .await
        .expect("scroll to the checklist");
    browser.screenshot("10b-troubleshoot-nothing-listens").await;
    // 6379 listens in the instance: after a real connection, every check passes.
    assert!(fixture.tcp_open(6379), "6379 is open in the kernel");
    browser
        .click(Locator::Css(&format!("{} button.check", row(6379))))
        .await;
    browser.wait_attr("#diagnosis", "data-state", "ok").await;
    let passed = browser
        .client
        .find_all(Locator::Css("#diagnosis li[data-result=\"pass\"]"))
        .await
        .unwrap();
    assert_eq!(passed.len(), 7, "every check passes for 6379");
    browser.screenshot("10c-troubleshoot-all-pass").await;

    // A phone's width, and the instance list.
    browser
        .client
        .set_window_size(390, 844)
        .await
        .expect("resize");
    browser.screenshot("11-phone").await;
    browser.client.set_window_size(1280, 1000).await.unwrap();
    browser
        .client
        .goto(&format!("http://{console}/"))
        .await
        .unwrap();
    browser
        .wait_text(&format!("tr[data-instance-id=\"{INSTANCE}\"]"), "6379/TCP")
        .await;
    browser.screenshot("12-instances").await;
    // A port only some networks may reach says so in the list.
    fixture
        .client
        .add_rule(pb::AddRuleRequest {
            instance_id: INSTANCE.into(),
            port: 8443,
            sources: vec!["203.0.113.0/24".into(), "2001:db8::/32".into()],
            ..Default::default()
        })
        .await
        .expect("an allowlisted rule");
    browser.client.refresh().await.unwrap();
    browser
        .wait_text(
            &format!("tr[data-instance-id=\"{INSTANCE}\"]"),
            "8443/TCP from 2 networks",
        )
        .await;
    assert!(
        browser
            .client
            .find_all(Locator::Css("tr.loading-row"))
            .await
            .unwrap()
            .is_empty(),
        "the loading row is gone once the list is there"
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_is_the_grpc_api_with_its_validation_and_error_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let rules = cassette_e2e::RulesProcess::start(&dir.path().join("data")).await;
    let console = rules.console.expect("console");
    let mut client = rules.client().await;
    cassette_e2e::create_firewall(&mut client, "web-1").await;
    let json = |text: &str| -> serde_json::Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    let call = |method: &str, path: &str, body: &str| {
        block_in_place(|| {
            http(
                console,
                method,
                path,
                &[("content-type", "application/json")],
                body,
            )
        })
    };

    let (status, body) = call(
        "POST",
        "/api/v1/firewalls/web-1/rules",
        r#"{"port": 70000}"#,
    );
    assert_eq!(status, 400, "{body}");
    let error = &json(&body)["error"];
    assert_eq!(error["code"], "INVALID_ARGUMENT");
    assert_eq!(error["fieldViolations"][0]["field"], "port");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("between 1 and 65535"),
        "{body}"
    );

    let (status, body) = call(
        "POST",
        "/api/v1/firewalls/web-1/rules",
        r#"{"port": "ssh"}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        json(&body)["error"]["fieldViolations"][0]["field"],
        "port",
        "{body}"
    );

    let (status, body) = call(
        "POST",
        "/api/v1/firewalls/web-1/rules",
        r#"{"port": 5432, "colour": "red"}"#,
    );
    assert_eq!(status, 400, "an unknown field is refused: {body}");
    let (status, body) = call("POST", "/api/v1/firewalls/web-1/rules", "[1]");
    assert_eq!(status, 400, "{body}");
    assert_eq!(json(&body)["error"]["fieldViolations"][0]["field"], "body");
    assert_eq!(
        get_firewall(&mut client, "web-1").await.revision,
        1,
        "nothing appended"
    );

    let (status, body) = call(
        "POST",
        "/api/v1/firewalls/web-1/rules",
        r#"{"port": 5432, "description": "PostgreSQL", "requestId": "add-pg"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let firewall = json(&body);
    assert_eq!(firewall["revision"], "2");
    assert_eq!(
        firewall["warnings"][0]["code"], "DATABASE_PORT_OPEN",
        "{body}"
    );
    let (status, again) = call(
        "POST",
        "/api/v1/firewalls/web-1/rules",
        r#"{"port": 5432, "description": "PostgreSQL", "requestId": "add-pg"}"#,
    );
    assert_eq!(
        (status, json(&again)["revision"].clone()),
        (200, "2".into()),
        "a retry is idempotent"
    );
    let (status, body) = call("POST", "/api/v1/firewalls/web-1/rules", r#"{"port": 5432}"#);
    assert_eq!(status, 409, "{body}");
    assert_eq!(json(&body)["error"]["code"], "ALREADY_EXISTS");
    let rule_id = firewall["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["port"] == 5432)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let (status, body) = call(
        "PATCH",
        &format!("/api/v1/firewalls/web-1/rules/{rule_id}"),
        r#"{"enabled": false}"#,
    );
    assert_eq!(status, 200, "{body}");
    let grpc = get_firewall(&mut client, "web-1").await;
    let rule = grpc.rules.iter().find(|r| r.id == rule_id).unwrap();
    assert!(!rule.enabled, "the JSON API changed what gRPC reads");
    let (status, body) = call("DELETE", "/api/v1/firewalls/web-1/rules/default-ssh", "");
    assert_eq!(
        (status, json(&body)["error"]["code"].clone()),
        (400, "FAILED_PRECONDITION".into()),
        "{body}"
    );
    let (status, _) = call("GET", "/api/v1/firewalls/nope", "");
    assert_eq!(status, 404);
    let (status, body) = call("GET", "/api/v1/firewalls?pageSize=1", "");
    assert_eq!(status, 200);
    assert_eq!(json(&body)["firewalls"][0]["instanceId"], "web-1");
    let (status, body) = call("GET", "/api/v1/firewalls?pageSize=ten", "");
    assert_eq!(
        (
            status,
            json(&body)["error"]["fieldViolations"][0]["field"].clone()
        ),
        (400, "pageSize".into()),
        "{body}"
    );

    // Health, metrics, the page and its policy.
    assert_eq!(call("GET", "/healthz", ""), (200, "SERVING\n".to_owned()));
    let (status, metrics) = call("GET", "/metrics", "");
    assert_eq!(status, 200);
    assert!(
        cassette_e2e::metric_value(&metrics, "cassette_rules_events_appended_total")
            .is_some_and(|v| v >= 3.0),
        "{metrics}"
    );
    let (status, page) = call("GET", "/instances/web-1", "");
    assert_eq!(status, 200);
    assert!(page.contains("/assets/console.js"), "{page}");
}

const WEB_TOKEN: &str = "web-team-console-token";
const VIEWER_TOKEN: &str = "viewer-console-token";

/// A secured rules service (TLS, a policy with a scoped editor and a viewer
/// that have bearer tokens) with firewalls for web-1 and db-1, its console on HTTPS.
struct SecuredConsole {
    secured: cassette_e2e::secured::Secured,
    rules: cassette_e2e::RulesProcess,
    client: cassette_e2e::Client,
    console: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl SecuredConsole {
    async fn start() -> Self {
        use cassette_e2e::secured::{token_sha256, Secured};
        let secured = Secured::new(&format!(
            r#"
[[principal]]
name = "console"
role = "admin"
instances = ["*"]

[[principal]]
name = "web-team"
role = "editor"
instances = ["web-*"]
token_sha256 = "{}"

[[principal]]
name = "viewer"
role = "viewer"
instances = ["*"]
token_sha256 = "{}"
"#,
            token_sha256(WEB_TOKEN),
            token_sha256(VIEWER_TOKEN)
        ));
        let dir = tempfile::tempdir().unwrap();
        let addr = cassette_e2e::free_port();
        let args = secured.server_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let rules = cassette_e2e::RulesProcess::spawn_with_tls(
            &dir.path().join("data"),
            &addr.to_string(),
            cassette_e2e::Target::Http(format!("https://{addr}")),
            &args,
            Some(secured.principal("console")),
        )
        .await;
        let mut client = rules.client().await;
        for instance in ["web-1", "db-1"] {
            cassette_e2e::create_firewall(&mut client, instance).await;
        }
        let console = rules.console.expect("console");
        Self {
            secured,
            rules,
            client,
            console,
            _dir: dir,
        }
    }

    /// Who the log says made `instance`'s last change.
    async fn last_actor(&self, instance: &str) -> Option<String> {
        let events = cassette_e2e::list_events(
            &mut cassette_proto::pb::audit_service_client::AuditServiceClient::new(
                cassette_e2e::channel_with(&self.rules.target, self.rules.tls.as_ref()).await,
            ),
            pb::ListEventsRequest {
                instance_id: instance.into(),
                ..Default::default()
            },
        )
        .await;
        events.last().map(|e| e.actor.clone())
    }
}

/// `curl` over HTTPS checking the development CA: (status, body).
fn curl(
    ca: &std::path::Path,
    url: &str,
    method: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut command = Command::new("curl");
    command
        .args(["--silent", "--show-error", "--max-time", "30", "--cacert"])
        .arg(ca)
        .args([
            "-X",
            method,
            "-H",
            "content-type: application/json",
            "-w",
            "\n%{http_code}",
        ]);
    if let Some(token) = token {
        command.args(["-H", &format!("authorization: Bearer {token}")]);
    }
    if !body.is_empty() {
        command.args(["--data", body]);
    }
    let output = command.arg(url).output().expect("run curl");
    assert!(
        output.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status"), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secured_console_is_https_and_authorizes_each_call_like_grpc() {
    let mut fixture = SecuredConsole::start().await;
    let console = fixture.console;
    let ca = fixture.secured.pki.ca_cert_path();
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", console.port());
    let call = |method: &str, path: &str, token: Option<&str>, body: &str| {
        block_in_place(|| curl(&ca, &url(path), method, token, body))
    };

    // Plain HTTP is not served: the console is HTTPS with the service's certificate.
    let plain = Command::new("curl")
        .args([
            "--silent",
            "--max-time",
            "10",
            &format!("http://{console}/healthz"),
        ])
        .output()
        .expect("run curl");
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("SERVING"));
    // The page and health are public; the API is not.
    assert_eq!(
        call("GET", "/healthz", None, ""),
        (200, "SERVING\n".to_owned())
    );
    assert_eq!(call("GET", "/instances/web-1", None, "").0, 200);
    // Metrics are for principals (Prometheus sends a bearer token).
    let (status, body) = call("GET", "/metrics", None, "");
    assert_eq!(status, 401, "{body}");
    let (status, body) = call("GET", "/metrics", Some(VIEWER_TOKEN), "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("cassette_rules_"), "{body}");
    let (status, body) = call("GET", "/api/v1/firewalls", None, "");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("UNAUTHENTICATED"), "{body}");
    assert_eq!(
        call("GET", "/api/v1/firewalls", Some("not-a-token"), "").0,
        401
    );

    // A scoped editor sees and changes only its instances.
    let (status, body) = call("GET", "/api/v1/whoami", Some(WEB_TOKEN), "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"actor\":\"web-team\""), "{body}");
    let (status, body) = call("GET", "/api/v1/firewalls", Some(WEB_TOKEN), "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("web-1") && !body.contains("db-1"), "{body}");
    let (status, body) = call(
        "POST",
        "/api/v1/firewalls/db-1/rules",
        Some(WEB_TOKEN),
        r#"{"port": 3000}"#,
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("PERMISSION_DENIED") && body.contains("web-team"),
        "{body}"
    );
    let (status, body) = call("GET", "/api/v1/firewalls/db-1/live", Some(WEB_TOKEN), "");
    assert_eq!(status, 403, "no live stream of another's instance: {body}");
    let (status, body) = call(
        "POST",
        "/api/v1/firewalls/web-1/rules",
        Some(VIEWER_TOKEN),
        r#"{"port": 3000}"#,
    );
    assert_eq!(status, 403, "a viewer changes nothing: {body}");
    assert_eq!(get_firewall(&mut fixture.client, "db-1").await.revision, 1);
    assert_eq!(get_firewall(&mut fixture.client, "web-1").await.revision, 1);

    // Its change is recorded as its own, not the console's.
    let (status, body) = call(
        "POST",
        "/api/v1/firewalls/web-1/rules",
        Some(WEB_TOKEN),
        r#"{"port": 3000}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        fixture.last_actor("web-1").await.as_deref(),
        Some("web-team")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_signs_in_with_a_token_over_https_and_shows_only_what_it_may_see() {
    let test = "console_signs_in_with_a_token_over_https_and_shows_only_what_it_may_see";
    if skip_without_browser(test) {
        return;
    }
    let mut fixture = SecuredConsole::start().await;
    let console = fixture.console;
    // The development CA is not in the browser's store.
    let browser = Browser::start(1280, 900, &["--ignore-certificate-errors"]).await;
    let base = format!("https://127.0.0.1:{}", console.port());

    browser.client.goto(&format!("{base}/")).await.unwrap();
    // A first visit is asked to sign in, not told that it failed.
    browser.wait_text("h1", "Sign in").await;
    assert_eq!(
        login_error(&browser).await,
        "",
        "quiet until something fails"
    );
    let token = browser
        .client
        .find(Locator::Id("token"))
        .await
        .expect("token field");
    token.send_keys("guessed").await.unwrap();
    let sign_in = browser
        .client
        .find(Locator::XPath("//button[normalize-space()='Sign in']"))
        .await
        .expect("Sign in");
    sign_in.click().await.unwrap();
    browser
        .wait_text("#login-error", "unknown bearer token")
        .await;
    let html = browser
        .client
        .find(Locator::Id("login-error"))
        .await
        .unwrap()
        .html(true)
        .await
        .unwrap();
    assert!(!html.contains('`'), "no literal backticks: {html}");
    browser.screenshot("13-sign-in-refused").await;
    token.clear().await.unwrap();
    token.send_keys(WEB_TOKEN).await.unwrap();
    sign_in.click().await.unwrap();
    browser
        .wait_text("tr[data-instance-id=\"web-1\"]", "22/TCP")
        .await;
    assert!(
        browser
            .client
            .find_all(Locator::Css("tr[data-instance-id=\"db-1\"]"))
            .await
            .unwrap()
            .is_empty(),
        "db-1 is not web-team's"
    );
    browser.wait_text("#who", "web-team").await;
    browser.screenshot("14-signed-in").await;

    // The token stays in the tab: its instance's page works, the change is web-team's.
    browser
        .client
        .goto(&format!("{base}/instances/web-1"))
        .await
        .unwrap();
    browser.wait_attr("#live", "data-live", "true").await;
    let port = browser.client.find(Locator::Id("port")).await.unwrap();
    port.send_keys("3000").await.unwrap();
    browser
        .click(Locator::XPath("//button[normalize-space()='Add Port']"))
        .await;
    // No enforcer runs here: saved, and honestly pending.
    browser
        .wait_attr(&row(3000), "data-status", "pending")
        .await;
    browser.wait_text(&row(3000), "no enforcer").await;
    assert_eq!(
        fixture.last_actor("web-1").await.as_deref(),
        Some("web-team")
    );

    // Another team's instance says why not, and changes nothing.
    browser
        .client
        .goto(&format!("{base}/instances/db-1"))
        .await
        .unwrap();
    browser
        .wait_text("#page-error", "may not call GetFirewall")
        .await;
    browser.screenshot("15-not-yours").await;
    assert_eq!(get_firewall(&mut fixture.client, "db-1").await.revision, 1);

    // Signing out forgets the token.
    browser
        .click(Locator::XPath("//button[normalize-space()='Sign out']"))
        .await;
    browser.client.goto(&format!("{base}/")).await.unwrap();
    browser.wait_text("h1", "Sign in").await;
    assert_eq!(login_error(&browser).await, "");
    browser.close().await;
}

/// The sign-in form's error line, once the form is there.
async fn login_error(browser: &Browser) -> String {
    browser
        .client
        .find(Locator::Id("login-error"))
        .await
        .expect("the sign-in form")
        .text()
        .await
        .unwrap()
}

/// A page of another site, served on `localhost` (the console is on
/// `127.0.0.1`: another origin and another site) for `connections`
/// requests at most, or until the test ends.
fn serve_foreign_page(html: String) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the foreign page");
    let addr = listener.local_addr().expect("its address");
    let server = std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}",
                html.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
    (addr, server)
}

/// What a browser sends without asking the console first: a page of another
/// site posting `text/plain` (a "simple" request), a `no-cors` fetch of the
/// API, and a name rebound to 127.0.0.1 (chromium's resolver maps it, as an
/// attacker's DNS would). The console refuses each, the firewall is
/// unchanged, and its own page works under a name --http-allowed-hosts gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_another_site_in_the_same_browser_changes_nothing() {
    let test = "console_another_site_in_the_same_browser_changes_nothing";
    if skip_without_browser(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let addr = cassette_e2e::free_port();
    let console_addr = cassette_e2e::free_port();
    let console_listen = console_addr.to_string();
    let rules = cassette_e2e::RulesProcess::spawn(
        &dir.path().join("data"),
        &addr.to_string(),
        cassette_e2e::tcp_target(addr),
        &[
            "--http-listen",
            &console_listen,
            "--http-allowed-hosts",
            "console.test",
        ],
    )
    .await;
    let mut client = rules.client().await;
    let created = cassette_e2e::create_firewall(&mut client, "web-1").await;
    let api = format!("http://{console_addr}/api/v1/firewalls/web-1");
    let html = format!(
        r#"<!doctype html><title>elsewhere</title><p id="done"></p><script>
        const tries = [
          fetch("{api}/rules", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body: '{{"port": 3306}}'}}),
          fetch("{api}/rules", {{method: "POST", mode: "no-cors", body: '{{"port": 3307}}'}}),
          fetch("{api}", {{method: "DELETE", mode: "no-cors"}}),
          fetch("{api}/rules", {{method: "POST", headers: {{"Content-Type": "application/json"}}, body: '{{"port": 3308}}'}}),
        ];
        Promise.allSettled(tries).then(() => {{ document.getElementById("done").textContent = "tried"; }});
        </script>"#
    );
    let (foreign, _server) = serve_foreign_page(html);
    let browser = Browser::start(
        1280,
        900,
        &["--host-resolver-rules=MAP evil.test 127.0.0.1, MAP console.test 127.0.0.1"],
    )
    .await;
    browser
        .client
        .goto(&format!("http://localhost:{}/", foreign.port()))
        .await
        .expect("open the other site's page");
    browser.wait_text("#done", "tried").await;
    let after = get_firewall(&mut client, "web-1").await;
    assert_eq!(
        after.revision, created.revision,
        "another site changed nothing: {after:?}"
    );

    // A name rebound to the console's address is not the console's.
    browser
        .client
        .goto(&format!(
            "http://evil.test:{}/instances/web-1",
            console_addr.port()
        ))
        .await
        .expect("open the rebound name");
    browser.wait_text("body", "is not this console's").await;

    // Its own page, under a name it was given, works: it adds a rule.
    browser
        .client
        .goto(&format!(
            "http://console.test:{}/instances/web-1",
            console_addr.port()
        ))
        .await
        .expect("open the console");
    browser.wait_attr("#live", "data-live", "true").await;
    browser
        .client
        .find(Locator::Id("port"))
        .await
        .expect("port field")
        .send_keys("8443")
        .await
        .expect("type the port");
    browser
        .click(Locator::XPath("//button[normalize-space()='Add Port']"))
        .await;
    browser
        .wait_attr(&row(8443), "data-status", "pending")
        .await;
    let after = get_firewall(&mut client, "web-1").await;
    assert!(after.rules.iter().any(|r| r.port == 8443), "{after:?}");
    browser.close().await;
}

/// The same refusals as a tool sees them (curl, no browser headers but the
/// ones it is told to send).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_refuses_simple_cross_site_and_rebound_requests() {
    let dir = tempfile::tempdir().unwrap();
    let rules = cassette_e2e::RulesProcess::start(&dir.path().join("data")).await;
    let console = rules.console.expect("console");
    let mut client = rules.client().await;
    let created = cassette_e2e::create_firewall(&mut client, "web-1").await;
    let own = format!("http://{console}");
    let call = |method: &str, path: &str, headers: &[(&str, &str)], body: &str| {
        block_in_place(|| http(console, method, path, headers, body))
    };
    let json = ("content-type", "application/json");
    let rules_path = "/api/v1/firewalls/web-1/rules";

    let (status, body) = call(
        "POST",
        rules_path,
        &[
            ("content-type", "text/plain"),
            ("origin", "http://evil.example"),
        ],
        r#"{"port": 3306}"#,
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = call(
        "POST",
        rules_path,
        &[("content-type", "text/plain")],
        r#"{"port": 3306}"#,
    );
    assert_eq!(status, 415, "{body}");
    assert!(body.contains("application/json"), "{body}");
    let (status, body) = call("DELETE", "/api/v1/firewalls/web-1", &[], "");
    assert_eq!(status, 415, "a DELETE is a change too: {body}");
    let (status, body) = call(
        "DELETE",
        "/api/v1/firewalls/web-1",
        &[json, ("sec-fetch-site", "cross-site")],
        "",
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("PERMISSION_DENIED"), "{body}");
    let (status, body) = call(
        "POST",
        rules_path,
        &[json, ("origin", "http://127.0.0.1:1")],
        r#"{"port": 3306}"#,
    );
    assert_eq!(status, 403, "another port is another origin: {body}");
    let (status, body) = call(
        "GET",
        "/api/v1/firewalls/web-1",
        &[("sec-fetch-site", "cross-site")],
        "",
    );
    assert_eq!(status, 403, "the API's reads too: {body}");
    assert_eq!(
        get_firewall(&mut client, "web-1").await.revision,
        created.revision
    );

    // DNS rebinding: every route, reads included.
    for path in [
        "/",
        "/instances/web-1",
        "/api/v1/firewalls",
        "/healthz",
        "/metrics",
    ] {
        let (status, body) = call("GET", path, &[("host", "evil.example")], "");
        assert_eq!(status, 421, "{path}: {body}");
    }

    // The console's own page, and tools.
    let (status, body) = call(
        "POST",
        rules_path,
        &[json, ("origin", &own), ("sec-fetch-site", "same-origin")],
        r#"{"port": 3306}"#,
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = call("POST", rules_path, &[json], r#"{"port": 3307}"#);
    assert_eq!(status, 200, "{body}");
    let localhost = format!("localhost:{}", console.port());
    let (status, body) = call("GET", "/api/v1/firewalls", &[("host", &localhost)], "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        get_firewall(&mut client, "web-1").await.revision,
        created.revision + 2
    );
}
