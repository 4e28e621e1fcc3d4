//! The `cassette` command line against the real rules service (and a real
//! file-backend enforcer): every command, its output, its errors on stderr
//! with the field named, and its exit codes.

use std::process::{Command, Stdio};

use cassette_e2e::{binary, RulesProcess};

/// Runs `cassette` against `rules`; (exit code, stdout, stderr).
fn cassette(rules: &str, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(binary("cassette"))
        .args(["--rules", rules])
        .args(args)
        .env_remove("CASSETTE_RULES")
        .env_remove("CASSETTE_OUTPUT")
        .stdin(Stdio::null())
        .output()
        .expect("run cassette");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn ok(rules: &str, args: &[&str]) -> String {
    let (code, stdout, stderr) = cassette(rules, args);
    assert_eq!(code, 0, "cassette {args:?}: {stderr}");
    stdout
}

/// The rule id in the table row for `port`.
fn rule_id(table: &str, port: u16) -> String {
    table
        .lines()
        .find(|l| l.starts_with(&format!("{port} ")))
        .and_then(|l| l.split_whitespace().nth(6))
        .unwrap_or_else(|| panic!("no row for {port} in\n{table}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_every_command_with_its_output_errors_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let service = RulesProcess::start(&dir.path().join("data")).await;
    let rules = format!("http://{}", service.listen);
    let rules = rules.as_str();

    let created = ok(rules, &["firewall", "create", "web-1"]);
    assert!(
        created.starts_with("web-1  revision 1  no enforcer (applied revision 0 of 1)"),
        "{created}"
    );
    assert!(created.contains("22    tcp    on  pending"), "{created}");

    // An enforcer, so that wait and the applied states are real.
    let mut enforcer = Command::new(binary("cassette-enforcer"))
        .args(["--rules", rules, "--instance", "web-1", "--backend", "file"])
        .arg("--ruleset-file")
        .arg(dir.path().join("ruleset.nft"))
        .arg("--state-dir")
        .arg(dir.path().join("enforcer-state"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the enforcer");

    let added = ok(
        rules,
        &[
            "rule",
            "add",
            "web-1",
            "5432",
            "--description",
            "PostgreSQL",
        ],
    );
    assert!(
        added.contains("warning: 5432/tcp (PostgreSQL) is open to anywhere"),
        "{added}"
    );
    let postgres = rule_id(&added, 5432);
    let waited = ok(rules, &["wait", "web-1", "--timeout", "30s"]);
    assert!(
        waited.starts_with("in sync: applied revision 2 of 2"),
        "{waited}"
    );
    let shown = ok(rules, &["firewall", "get", "web-1"]);
    assert!(shown.contains("5432  tcp    on  applied"), "{shown}");

    let udp = ok(
        rules,
        &[
            "rule",
            "add",
            "web-1",
            "53",
            "--udp",
            "--disabled",
            "--source",
            "10.0.0.0/8",
            "--ttl",
            "2h",
        ],
    );
    assert!(udp.contains("53    udp    off"), "{udp}");
    assert!(udp.contains("10.0.0.0/8"), "{udp}");
    assert!(udp.contains("(expires "), "{udp}");
    // A rule is named by its port, with its protocol when both exist, or its id.
    let dns = rule_id(&udp, 53);
    assert!(ok(rules, &["rule", "enable", "web-1", "53"]).contains("53    udp    on"));
    ok(rules, &["rule", "disable", "web-1", &dns]);
    ok(rules, &["rule", "add", "web-1", "53"]);
    let (code, _, stderr) = cassette(rules, &["rule", "enable", "web-1", "53"]);
    assert_eq!(code, 2, "ambiguous: {stderr}");
    assert!(
        stderr.contains("53/tcp (")
            && stderr.contains("53/udp (")
            && stderr.contains("say 53/tcp or 53/udp"),
        "{stderr}"
    );
    assert!(ok(rules, &["rule", "enable", "web-1", "53/UDP"]).contains("53    udp    on"));
    let (code, _, stderr) = cassette(rules, &["rule", "enable", "web-1", "8080"]);
    assert_eq!(code, 3, "no such port: {stderr}");
    assert!(
        stderr.contains("no rule for port 8080 on instance web-1"),
        "{stderr}"
    );
    // SSH goes off only when asked twice (a script says --yes).
    let (code, _, stderr) = cassette(rules, &["rule", "disable", "web-1", "22"]);
    assert_eq!(code, 2, "SSH off needs --yes without a terminal: {stderr}");
    assert!(
        stderr.contains("you'll only have web console access"),
        "{stderr}"
    );
    assert!(ok(rules, &["firewall", "get", "web-1"]).contains("22    tcp    on"));
    assert!(
        stderr.contains("--confirm-within 2m"),
        "the prompt names the safe way: {stderr}"
    );
    // With a window SSH goes off without asking, and comes back unless kept.
    let windowed = ok(
        rules,
        &["rule", "disable", "web-1", "22", "--confirm-within", "2m"],
    );
    assert!(windowed.contains("22    tcp    off"), "{windowed}");
    assert!(
        windowed.contains("unconfirmed: revision")
            && windowed.contains("(turned 22/tcp off)")
            && windowed.contains("cassette confirm web-1 --revision"),
        "{windowed}"
    );
    let (code, _, stderr) = cassette(
        rules,
        &["rule", "enable", "web-1", "22", "--confirm-on-traffic"],
    );
    assert_eq!(code, 2, "--confirm-on-traffic needs a window: {stderr}");
    let kept = ok(rules, &["confirm", "web-1"]);
    assert!(
        kept.contains("22    tcp    off") && !kept.contains("unconfirmed"),
        "{kept}"
    );
    assert_eq!(
        ok(rules, &["confirm", "web-1"]).trim(),
        "web-1 has no unconfirmed change"
    );
    let (code, _, stderr) = cassette(rules, &["confirm", "web-1", "--revision", "1"]);
    assert_eq!(code, 5, "not an unconfirmed change: {stderr}");
    assert!(stderr.contains("not an unconfirmed change"), "{stderr}");
    ok(rules, &["rule", "enable", "web-1", "22"]);
    assert!(ok(rules, &["rule", "disable", "web-1", "22", "--yes"]).contains("22    tcp    off"));
    let described = ok(
        rules,
        &["rule", "describe", "web-1", "5432/tcp", "orders database"],
    );
    assert!(described.contains("orders database"), "{described}");
    let deleted = ok(rules, &["rule", "delete", "web-1", "53/udp"]);
    assert!(
        !deleted.lines().any(|l| l.starts_with("53    udp")),
        "{deleted}"
    );
    ok(rules, &["rule", "delete", "web-1", "53"]);

    let json = ok(rules, &["--output", "json", "firewall", "get", "web-1"]);
    assert!(json.starts_with("{\"instanceId\":\"web-1\""), "{json}");
    let listed = ok(rules, &["firewall", "list"]);
    assert!(listed.starts_with("web-1  revision"), "{listed}");
    ok(rules, &["firewall", "list", "--unused-for", "7d"]);
    // The offline audit's words, under a header.
    let events = ok(rules, &["events", "--instance", "web-1"]);
    assert!(
        events.starts_with("SEQUENCE TIME INSTANCE#REVISION ACTOR: CHANGE\n"),
        "{events}"
    );
    assert!(
        events.contains(&format!(" web-1#2 anonymous: added 5432/tcp {postgres}")),
        "{events}"
    );
    // Nothing listens on 5432 here: a check fails, and the exit code says so.
    let (code, diagnosis, stderr) = cassette(rules, &["diagnose", "web-1", "5432"]);
    assert!(diagnosis.starts_with("PASS    rule_exists"), "{diagnosis}");
    let failed = diagnosis.lines().any(|l| l.starts_with("FAIL"));
    assert_eq!(code, if failed { 8 } else { 0 }, "{diagnosis}{stderr}");

    // Errors: the server's message and field on stderr, one exit code a kind.
    let (code, _, stderr) = cassette(rules, &["firewall", "get", "db-1"]);
    assert_eq!(code, 3, "not found: {stderr}");
    assert!(
        stderr.contains("firewall for instance db-1 not found"),
        "{stderr}"
    );
    let (code, _, stderr) = cassette(rules, &["rule", "add", "web-1", "70000"]);
    assert_eq!(code, 4, "invalid: {stderr}");
    assert_eq!(
        stderr
            .matches("port: must be between 1 and 65535, got 70000")
            .count(),
        1,
        "said once: {stderr}"
    );
    let (code, _, stderr) = cassette(
        rules,
        &["rule", "add", "web-1", "9000", "--source", "10.0.0.1/8"],
    );
    assert_eq!(code, 4, "invalid: {stderr}");
    assert_eq!(
        stderr.matches("sources[0]:").count(),
        1,
        "said once: {stderr}"
    );
    let (code, _, stderr) = cassette(rules, &["rule", "add", "web-1", "5432"]);
    assert_eq!(code, 5, "conflict: {stderr}");
    assert!(
        stderr.contains(&postgres),
        "names the existing rule: {stderr}"
    );
    let (code, _, stderr) = cassette(rules, &["rule", "delete", "web-1", "default-ssh"]);
    assert_eq!(code, 5, "a default rule: {stderr}");
    let (code, _, _) = cassette(rules, &["firewall", "delete", "web-1"]);
    assert_eq!(code, 0);
    let (code, _, stderr) = cassette("http://127.0.0.1:1", &["firewall", "list"]);
    assert_eq!(code, 6, "unavailable: {stderr}");
    assert!(stderr.contains("(connection refused)"), "{stderr}");
    // Address mistakes in the user's words, as usage errors.
    let console = format!("http://{}", service.console.expect("the console"));
    let (code, _, stderr) = cassette(&console, &["firewall", "list"]);
    assert_eq!(code, 2, "the console's port: {stderr}");
    assert!(stderr.contains("probably the console's port"), "{stderr}");
    let https = rules.replace("http://", "https://");
    let (code, _, stderr) = cassette(&https, &["firewall", "list"]);
    assert_eq!(code, 2, "https:// without --ca: {stderr}");
    assert!(stderr.contains("give --ca"), "{stderr}");
    let (code, _, _) = cassette(rules, &["frobnicate"]);
    assert_eq!(code, 2, "usage");

    // A change with --wait answers once the kernel has it.
    ok(rules, &["firewall", "create", "web-1"]);
    let waited = ok(rules, &["rule", "add", "web-1", "8443", "--wait", "30s"]);
    assert!(waited.contains("8443  tcp    on  applied"), "{waited}");

    // Waiting on an instance whose enforcer is gone times out: unavailable.
    let _ = enforcer.kill();
    let _ = enforcer.wait();
    ok(rules, &["firewall", "create", "web-2"]);
    let (code, _, stderr) = cassette(rules, &["wait", "web-2", "--timeout", "1s"]);
    assert_eq!(code, 6, "timed out: {stderr}");
    // So does a change's --wait; the change is kept, and printed.
    let (code, stdout, stderr) = cassette(rules, &["rule", "add", "web-2", "8443", "--wait", "1s"]);
    assert_eq!(code, 6, "timed out: {stderr}");
    assert!(stderr.contains("saved as revision 2"), "{stderr}");
    assert!(stdout.contains("8443  tcp    on  pending"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_speaks_tls_with_a_token_or_a_certificate_and_says_when_it_may_not() {
    use cassette_e2e::secured::{token_sha256, Secured};
    const TOKEN: &str = "ops-bot-secret-token";
    let secured = Secured::new(&format!(
        r#"
[[principal]]
name = "ops-bot"
role = "editor"
instances = ["*"]
token_sha256 = "{}"

[[principal]]
name = "viewer"
role = "viewer"
instances = ["*"]
"#,
        token_sha256(TOKEN)
    ));
    let dir = tempfile::tempdir().unwrap();
    let addr = cassette_e2e::free_port();
    let args = secured.server_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _service = RulesProcess::spawn_with_tls(
        &dir.path().join("data"),
        &addr.to_string(),
        cassette_e2e::Target::Http(format!("https://{addr}")),
        &args,
        Some(secured.principal("viewer")),
    )
    .await;
    let rules = format!("https://{addr}");
    let ca = secured.pki.ca_cert_path().display().to_string();
    let (code, _, stderr) = cassette(&format!("http://{addr}"), &["firewall", "list"]);
    assert_eq!(code, 2, "plaintext to TLS: {stderr}");
    assert!(stderr.contains("did not answer plaintext gRPC"), "{stderr}");
    let other_ca = tempfile::tempdir().unwrap();
    let other = cassette_pki::Pki::init(other_ca.path(), "cassette.local", &[]).unwrap();
    let other = other.ca_cert_path().display().to_string();
    let (code, _, stderr) = cassette(&rules, &["--ca", &other, "firewall", "list"]);
    assert_eq!(code, 2, "another CA: {stderr}");
    assert!(
        stderr.contains("certificate: it does not chain to the CA given with --ca"),
        "{stderr}"
    );

    let with_token = ok(
        &rules,
        &["--ca", &ca, "--token", TOKEN, "firewall", "create", "web-1"],
    );
    assert!(with_token.starts_with("web-1  revision 1"), "{with_token}");
    let (code, _, stderr) = cassette(
        &rules,
        &["--ca", &ca, "--token", "wrong", "firewall", "get", "web-1"],
    );
    assert_eq!(code, 7, "an unknown token: {stderr}");

    // The viewer's certificate reads, and may not change anything.
    let issued = secured
        .pki
        .issue("spiffe://cassette.local/principal/viewer", "cli-viewer")
        .expect("issue the viewer's certificate");
    let cert = issued.cert_path.display().to_string();
    let key = issued.key_path.display().to_string();
    let viewer = [
        "--ca",
        ca.as_str(),
        "--cert",
        cert.as_str(),
        "--key",
        key.as_str(),
    ];
    let read = ok(
        &rules,
        &[&viewer[..], &["firewall", "get", "web-1"]].concat(),
    );
    assert!(read.contains("default-ssh"), "{read}");
    let (code, _, stderr) = cassette(
        &rules,
        &[&viewer[..], &["rule", "add", "web-1", "5432"]].concat(),
    );
    assert_eq!(code, 7, "a viewer adding a rule: {stderr}");
    assert!(stderr.contains("PermissionDenied"), "{stderr}");
}

/// `cassette events | head -1` and `cassette-rules audit events | head -1`: the
/// reader leaves after one line, and each command ends quietly with status 0
/// (it used to panic in `println!` with "Broken pipe" and exit 101).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_output_piped_into_a_reader_that_leaves_early_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut service = RulesProcess::start(&data).await;
    let rules = format!("http://{}", service.listen);
    ok(&rules, &["firewall", "create", "web-1"]);
    // Enough events that the output outgrows the pipe's buffer.
    for port in 1000..1400u16 {
        let (code, _, stderr) = cassette(&rules, &["rule", "add", "web-1", &port.to_string()]);
        assert_eq!(code, 0, "{stderr}");
    }
    let piped = |command: String| {
        let output = Command::new("bash")
            .args(["-o", "pipefail", "-c", &format!("{command} | head -1")])
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .output()
            .expect("run bash");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success() && stderr.is_empty(),
            "{command} | head -1: {:?}, stderr: {stderr}",
            output.status
        );
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        stdout
    };
    let cassette = binary("cassette").display().to_string();
    let first = piped(format!("{cassette} --rules {rules} events"));
    assert!(first.starts_with("SEQUENCE "), "the header: {first}");
    piped(format!("{cassette} --rules {rules} --output json events"));
    service.terminate();
    let audit = format!(
        "{} --data-dir {} audit",
        binary("cassette-rules").display(),
        data.display()
    );
    let first = piped(format!("{audit} events"));
    assert!(first.starts_with("1 "), "{first}");
    piped(format!("{audit} export"));
}

/// A second `./scripts/run.sh` on a data directory a service is using says so
/// before it builds or starts anything (it used to start an enforcer that
/// fought the first one's stream, then end on sled's "could not acquire
/// lock"); and the service itself names the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_a_second_run_on_the_same_data_says_so_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _service = RulesProcess::start(&data).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new("bash")
        .arg(root.join("scripts/run.sh"))
        .env("CASSETTE_DATA_DIR", &data)
        .stdin(Stdio::null())
        .output()
        .expect("run run.sh");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cassette-firewall is already running on"),
        "{stderr}"
    );
    let second = Command::new(binary("cassette-rules"))
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0", "--http-listen", "off"])
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run a second cassette-rules");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(
        stderr.contains("another process is using the event log in"),
        "{stderr}"
    );
}

/// `firewall get -o yaml` writes a document that `diff -f` and `apply -f`
/// read back: unchanged, it changes nothing (YAML, or the JSON answer);
/// edited, diff says what would change and apply does it in one revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_a_firewall_document_round_trips_through_diff_and_apply() {
    let dir = tempfile::tempdir().unwrap();
    let service = RulesProcess::start(&dir.path().join("data")).await;
    let rules = format!("http://{}", service.listen);
    let rules = rules.as_str();
    ok(rules, &["firewall", "create", "web-1"]);
    ok(
        rules,
        &[
            "rule",
            "add",
            "web-1",
            "5432",
            "--description",
            "PostgreSQL",
            "--source",
            "10.0.0.0/8",
            "--ttl",
            "7d",
        ],
    );
    ok(
        rules,
        &[
            "rule",
            "add",
            "web-1",
            "27015-27030",
            "--udp",
            "--description",
            "games",
        ],
    );
    ok(rules, &["rule", "disable", "web-1", "443"]);

    let yaml = ok(rules, &["firewall", "get", "web-1", "-o", "yaml"]);
    for line in [
        "instance: web-1\nrevision: 4\nrules:\n- id: default-ssh\n  port: 22\n  protocol: tcp\n  description: SSH\n  enabled: true\n",
        "- id: default-https\n  port: 443\n  protocol: tcp\n  description: HTTPS\n  enabled: false\n",
        "  port: 5432\n  protocol: tcp\n  description: PostgreSQL\n  enabled: true\n  sources:\n  - 10.0.0.0/8\n  expires: ",
        "  port: 27015-27030\n  protocol: udp\n  description: games\n  enabled: true\n",
    ] {
        assert!(yaml.contains(line), "{line:?} in\n{yaml}");
    }
    let file = dir.path().join("web-1.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let path = file.to_str().unwrap();
    assert_eq!(
        ok(rules, &["diff", "-f", path]),
        "web-1: no changes (revision 4)\n"
    );
    assert_eq!(
        ok(rules, &["apply", "-f", path]),
        "web-1: no changes (revision 4)\n"
    );
    // The JSON answer reads back the same (a disabled rule's `enabled` is left out there).
    let json = ok(rules, &["firewall", "get", "web-1", "--output", "json"]);
    let json_file = dir.path().join("web-1.json");
    std::fs::write(&json_file, &json).unwrap();
    assert_eq!(
        ok(rules, &["diff", "-f", json_file.to_str().unwrap()]),
        "web-1: no changes (revision 4)\n"
    );

    // Edited: 5432 gone, HTTP off, 8080 added.
    let start = yaml.find("- id: 0").expect("the 5432 rule's block");
    let end = start + yaml[start..].find("expires: ").unwrap();
    let end = end + yaml[end..].find('\n').unwrap() + 1;
    let mut edited = format!("{}{}", &yaml[..start], &yaml[end..]);
    edited = edited.replacen(
        "  port: 80\n  protocol: tcp\n  description: HTTP\n  enabled: true\n",
        "  port: 80\n  protocol: tcp\n  description: HTTP\n  enabled: false\n",
        1,
    );
    edited.push_str("- port: 8080\n  description: Alternative HTTP\n");
    std::fs::write(&file, &edited).unwrap();
    let diff = ok(rules, &["diff", "-f", path]);
    let lines: Vec<&str> = diff.lines().collect();
    assert_eq!(lines.len(), 4, "{diff}");
    assert!(
        lines[0].starts_with("- 5432/tcp ") && lines[0].contains(": removed (closes traffic"),
        "{diff}"
    );
    assert!(
        lines[1].starts_with("~ 80/tcp default-http: on -> off"),
        "{diff}"
    );
    assert!(
        lines[2].starts_with("+ 8080/tcp ") && lines[2].ends_with(": added"),
        "{diff}"
    );
    assert_eq!(lines[3], "web-1: 3 changes (dry run: nothing applied)");
    let applied = ok(rules, &["apply", "-f", path]);
    assert!(
        applied.ends_with("web-1: 3 changes applied as revision 5\n"),
        "{applied}"
    );
    assert_eq!(
        ok(rules, &["diff", "-f", path]),
        "web-1: no changes (revision 5)\n"
    );

    // The original document, written at revision 4: refused with --if-unchanged.
    std::fs::write(&file, &yaml).unwrap();
    let (code, _, stderr) = cassette(rules, &["apply", "-f", path, "--if-unchanged"]);
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains("Aborted"), "{stderr}");
    // A field nobody knows, a port out of range: named, nothing changed.
    std::fs::write(
        &file,
        "instance: web-1\nrules:\n- port: 22\n  enabel: false\n",
    )
    .unwrap();
    let (code, _, stderr) = cassette(rules, &["apply", "-f", path]);
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains("rules[0] has no field \"enabel\""),
        "{stderr}"
    );
    std::fs::write(&file, "instance: web-1\nrules:\n- port: 70000\n").unwrap();
    let (code, _, stderr) = cassette(rules, &["apply", "-f", path]);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("rules[0].port"), "{stderr}");
    let (code, _, stderr) = cassette(rules, &["diff", "-f", "-"]);
    assert_eq!(code, 4, "an empty standard input is no document: {stderr}");
}
