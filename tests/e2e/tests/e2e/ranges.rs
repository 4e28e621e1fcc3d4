//! Port ranges: validated and refused when they overlap (naming the rule in
//! the way), and in a real kernel open from their first to their last port
//! and not one port beyond, over TCP and UDP, with toggles, allowlists, hit
//! counts, blocked traffic, the CLI and the page (root; the page needs
//! chromium too).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cassette_e2e::netns::{CLIENT_IP, OTHER_CLIENT_IP};
use cassette_e2e::{binary, pb};
use tokio::task::block_in_place;
use tonic::Code;
use tonic_types::StatusExt;

use crate::kernel::{skip_unless_root, Fixture, INSTANCE, TCP};

const UDP: pb::Protocol = pb::Protocol::Udp;

async fn add_range(
    f: &mut Fixture,
    first: u32,
    last: u32,
    protocol: pb::Protocol,
) -> Result<pb::Firewall, tonic::Status> {
    f.client
        .add_rule(pb::AddRuleRequest {
            instance_id: INSTANCE.into(),
            port_range: Some(pb::PortRange { first, last }),
            protocol: protocol.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

fn range_rule(firewall: &pb::Firewall, first: u32, protocol: pb::Protocol) -> pb::Rule {
    firewall
        .rules
        .iter()
        .find(|r| r.port == first && r.protocol == protocol as i32)
        .cloned()
        .unwrap_or_else(|| panic!("no rule at {first}: {firewall:?}"))
}

fn assert_field(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let fields: Vec<String> = status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    assert!(
        fields.iter().any(|f| f == field),
        "{field} in {fields:?}: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_a_port_range_opens_both_ends_and_nothing_beyond() {
    if skip_unless_root("kernel_a_port_range_opens_both_ends_and_nothing_beyond") {
        return;
    }
    let mut f = Fixture::start(&["--report-interval", "300ms"]).await;
    let instance_ns = f.lab.instance_ns.clone();
    block_in_place(|| {
        f.lab.start_echo(
            &instance_ns,
            &[
                "tcp:27014",
                "tcp:27015",
                "tcp:27030",
                "tcp:27031",
                "udp:27014",
                "udp:27015",
                "udp:27030",
                "udp:27031",
            ],
        )
    });

    // Refused, naming the field, and nothing appended.
    let before = f.firewall().await.revision;
    let backwards = add_range(&mut f, 27030, 27015, TCP).await.unwrap_err();
    assert_field(&backwards, "port_range");
    assert!(
        backwards
            .message()
            .contains("first (27030) must not be greater than last (27015)"),
        "{backwards:?}"
    );
    assert_field(
        &add_range(&mut f, 0, 10, TCP).await.unwrap_err(),
        "port_range.first",
    );
    assert_field(
        &add_range(&mut f, 10, 65_536, TCP).await.unwrap_err(),
        "port_range.last",
    );
    let both = f
        .client
        .add_rule(pb::AddRuleRequest {
            instance_id: INSTANCE.into(),
            port: 8080,
            port_range: Some(pb::PortRange {
                first: 8080,
                last: 8090,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_field(&both, "port_range");
    assert_eq!(f.firewall().await.revision, before);

    let tcp = add_range(&mut f, 27015, 27030, TCP)
        .await
        .expect("a TCP range");
    let games = range_rule(&tcp, 27015, TCP);
    assert_eq!(
        games.port_range,
        Some(pb::PortRange {
            first: 27015,
            last: 27030
        })
    );
    let udp = add_range(&mut f, 27015, 27030, UDP)
        .await
        .expect("the same range, UDP");
    f.wait(udp.revision).await;
    f.assert_tcp(&[27015, 27030], &[27014, 27031]);
    block_in_place(|| {
        for (port, open) in [(27015, true), (27030, true), (27014, false), (27031, false)] {
            assert_eq!(f.lab.udp_echo(port), open, "UDP {port}");
        }
    });

    // Overlaps are refused with the rule in the way; a neighbour is fine.
    let overlap = add_range(&mut f, 27020, 27040, TCP).await.unwrap_err();
    assert_eq!(overlap.code(), Code::AlreadyExists, "{overlap:?}");
    assert!(
        overlap
            .message()
            .contains("a rule for 27020-27040/tcp would overlap the rule for 27015-27030/tcp"),
        "{overlap:?}"
    );
    let in_the_way = overlap
        .get_error_details()
        .resource_info()
        .map(|r| r.resource_name.clone());
    assert_eq!(in_the_way.as_deref(), Some(games.id.as_str()));
    let single = f
        .client
        .add_rule(pb::AddRuleRequest {
            instance_id: INSTANCE.into(),
            port: 27022,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(single.code(), Code::AlreadyExists, "{single:?}");
    let (_, revision) = f.add(27031, TCP).await;
    f.wait(revision).await;
    f.assert_tcp(&[27015, 27030, 27031], &[27014]);

    // Off closes the whole range; on opens it again.
    let revision = f.set_enabled(&games.id, false).await;
    f.wait(revision).await;
    f.assert_tcp(&[27031], &[27015, 27030]);
    // What the firewall dropped names the range's rule, turned off.
    block_in_place(|| f.lab.knock("tcp", CLIENT_IP, 27025, 1));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let firewall = f.firewall().await;
        if let Some(blocked) = firewall.blocked.iter().find(|b| b.port == 27025) {
            assert_eq!(blocked.reason, pb::BlockedReason::RuleOff as i32);
            assert_eq!(blocked.rule_id, games.id);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "27025 never reported: {firewall:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let revision = f.set_enabled(&games.id, true).await;
    f.wait(revision).await;
    f.assert_tcp(&[27015, 27030], &[27014]);

    // An allowlist on a range: the allowed source at both ends, no other.
    let narrowed = f
        .client
        .update_rule(pb::UpdateRuleRequest {
            instance_id: INSTANCE.into(),
            rule_id: games.id.clone(),
            sources: Some(pb::SourceList {
                cidrs: vec![format!("{OTHER_CLIENT_IP}/32")],
            }),
            ..Default::default()
        })
        .await
        .expect("narrow the range")
        .into_inner();
    f.wait(narrowed.revision).await;
    block_in_place(|| {
        for port in [27015, 27030] {
            assert!(
                f.lab.tcp_open_from(OTHER_CLIENT_IP, port),
                "allowed at {port}"
            );
            assert!(
                !f.lab.tcp_open_from(CLIENT_IP, port),
                "not allowed at {port}"
            );
        }
    });

    // Hits are the range's, and Diagnose finds the rule for a port inside it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rule = range_rule(&f.firewall().await, 27015, TCP);
        if rule.hits > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no hits on the range: {rule:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let diagnosis = f
        .client
        .diagnose(pb::DiagnoseRequest {
            instance_id: INSTANCE.into(),
            port: 27020,
            ..Default::default()
        })
        .await
        .expect("diagnose")
        .into_inner();
    let (exists, why) = crate::sync::result_of(&diagnosis, "rule_exists");
    assert_eq!(exists, pb::CheckResult::Pass, "{why}");
    assert!(why.contains(&games.id), "{why}");

    // The command line: a range in, a range out, named by a port inside it.
    let cassette = |args: &[&str]| {
        let output = Command::new(binary("cassette"))
            .args(["--rules", &f.socket_target()])
            .args(args)
            .env_remove("CASSETTE_OUTPUT")
            .stdin(Stdio::null())
            .output()
            .expect("run cassette");
        assert!(output.status.success(), "cassette {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    block_in_place(|| {
        let added = cassette(&[
            "rule",
            "add",
            INSTANCE,
            "40000-40100",
            "--udp",
            "--description",
            "voice",
        ]);
        assert!(
            added.lines().any(|l| l.starts_with("40000-40100  udp ")),
            "{added}"
        );
        let disabled = cassette(&["rule", "disable", INSTANCE, "40050/udp"]);
        assert!(
            disabled
                .lines()
                .any(|l| l.starts_with("40000-40100  udp    off")),
            "{disabled}"
        );
    });
}

/// The page's Port field takes a range: refused backwards at the field, and
/// added, shown and applied as one rule that opens both ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_a_range_typed_into_the_port_field_is_one_rule_for_every_port() {
    use cassette_e2e::browser::Browser;
    use fantoccini::Locator;

    use crate::console::skip_without_browser;

    let test = "console_a_range_typed_into_the_port_field_is_one_rule_for_every_port";
    if skip_unless_root(test) || skip_without_browser(test) {
        return;
    }
    let mut f = Fixture::start(&[]).await;
    let instance_ns = f.lab.instance_ns.clone();
    block_in_place(|| {
        f.lab
            .start_echo(&instance_ns, &["tcp:27015", "tcp:27030", "tcp:27031"])
    });
    let console = f.rules.console.expect("the console listens");
    let browser = Browser::start(1280, 1000, &[]).await;
    browser
        .client
        .goto(&format!("http://{console}/instances/{INSTANCE}"))
        .await
        .expect("open the page");
    browser
        .wait_attr("tr[data-port=\"22\"]", "data-status", "applied")
        .await;
    let port = browser.client.find(Locator::Id("port")).await.unwrap();
    let add = Locator::XPath("//button[normalize-space()='Add Port']");

    port.send_keys("27030-27015").await.unwrap();
    browser.click(add).await;
    browser
        .wait_text("#port-error", "must not be greater than last")
        .await;
    assert_eq!(
        port.attr("aria-invalid").await.unwrap().as_deref(),
        Some("true")
    );

    port.clear().await.unwrap();
    port.send_keys("27015-27030").await.unwrap();
    browser.click(add).await;
    let row = "tr[data-ports=\"27015-27030\"][data-protocol=\"tcp\"]";
    browser.wait_attr(row, "data-status", "applied").await;
    browser
        .wait_text(&format!("{row} td.port"), "27015-27030")
        .await;
    browser.screenshot("ranges-01-a-range").await;
    f.assert_tcp(&[27015, 27030], &[27031]);
    browser.close().await;
}
