//! Every example in README.md's ```console blocks, run in order in one shell
//! against the real rules service on a fresh data directory with an enforcer
//! for `web-1` (file backend, as `scripts/run.sh` starts it without root), its
//! output compared to the README's (timestamps, durations and UUIDs normalised).
//! The secured section starts its own TLS service and enforcer in the
//! background; every process the examples leave is killed with their process group.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cassette_e2e::{binary, RulesProcess, PATIENCE};

const README_ADDR: &str = "127.0.0.1:50051";
/// Where the README's secured service listens.
const README_SECURE_ADDR: &str = "127.0.0.1:50443";
/// Where the README's consoles listen (development, and the secured one).
const README_CONSOLE: &str = "127.0.0.1:8080";
const README_SECURE_CONSOLE: &str = "127.0.0.1:8443";
const MARKER: &str = "@@@ example";

#[derive(Debug)]
struct Example {
    command: String,
    expected: String,
}

fn examples(readme: &str) -> Vec<Example> {
    let mut examples: Vec<Example> = Vec::new();
    let mut in_console = false;
    for line in readme.lines() {
        if !in_console {
            in_console = line.trim() == "```console";
            continue;
        }
        if line.trim() == "```" {
            in_console = false;
        } else if let Some(command) = line.strip_prefix("$ ") {
            examples.push(Example {
                command: command.to_owned(),
                expected: String::new(),
            });
        } else if let Some(example) = examples.last_mut() {
            example.expected.push_str(line);
            example.expected.push('\n');
        }
    }
    examples
}

fn require(tool: &str) {
    let found = Command::new("sh")
        .stdout(std::process::Stdio::null())
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{tool} is not installed: run scripts/test.sh, which installs it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpcurl_example_in_the_readme_works_as_shown() {
    require("grpcurl");
    require("jq");
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("read README.md");
    let examples = examples(&readme);
    assert!(
        examples
            .iter()
            .filter(|e| e.command.starts_with("grpcurl"))
            .count()
            >= 10,
        "README lost its grpcurl examples"
    );

    // The layout scripts/run.sh makes: the log and the ruleset file in ./cassette-data.
    let dir = tempfile::tempdir().unwrap();
    let workdir = dir.path().join("work");
    std::fs::create_dir_all(workdir.join("examples")).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::copy(
        repo.join("examples/policy.toml"),
        workdir.join("examples/policy.toml"),
    )
    .expect("copy examples/policy.toml");
    let secure_addr = cassette_e2e::free_port().to_string();
    let secure_console = cassette_e2e::free_port().to_string();
    let rules = RulesProcess::start(&workdir.join("cassette-data")).await;
    let addr = rules.listen.clone();
    let console = rules.console.expect("the console listens").to_string();
    let bin_dir = binary("cassette-rules")
        .parent()
        .expect("binary directory")
        .display()
        .to_string();
    let enforcer_log = dir.path().join("enforcer.log");
    let enforcer = Enforcer(
        Command::new(binary("cassette-enforcer"))
            .args(["--rules", &format!("http://{addr}"), "--instance", "web-1"])
            .args([
                "--backend",
                "file",
                "--ruleset-file",
                "cassette-data/ruleset.nft",
                "--state-dir",
                "cassette-data/enforcer-state",
            ])
            .current_dir(&workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&enforcer_log).unwrap())
            .spawn()
            .expect("spawn cassette-enforcer"),
    );
    // Connected before the first example, so every change is acked live.
    let deadline = Instant::now() + PATIENCE;
    while !std::fs::read_to_string(&enforcer_log)
        .unwrap_or_default()
        .contains("sync stream open")
    {
        assert!(Instant::now() < deadline, "the enforcer did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // `cassette` finds the service the way a user's shell would.
    let mut script = format!("set -o pipefail\nexport CASSETTE_RULES=http://{addr}\n");
    for (i, example) in examples.iter().enumerate() {
        script.push_str(&format!("echo '{MARKER} {i}'\n"));
        let command = example
            .command
            .replace(README_ADDR, &addr)
            .replace(README_SECURE_ADDR, &secure_addr)
            .replace(README_CONSOLE, &console)
            .replace(README_SECURE_CONSOLE, &secure_console)
            .replace("target/release/", &format!("{bin_dir}/"));
        script.push_str(&command);
        script.push_str(" 2>&1\n");
    }
    let output = tokio::task::spawn_blocking(move || {
        use std::os::unix::process::CommandExt;
        let child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(workdir)
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run bash");
        let group = ProcessGroup(child.id());
        let output = child.wait_with_output().expect("bash output");
        drop(group);
        output
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let separator = format!("{MARKER} ");
    let mut actual = stdout.split(separator.as_str()).skip(1);
    for (i, example) in examples.iter().enumerate() {
        let got = actual.next().unwrap_or_default();
        let got = got.split_once('\n').map_or("", |(_, rest)| rest);
        assert_eq!(
            normalize(got),
            normalize(&example.expected),
            "README example {i} printed something else:\n$ {}",
            example.command
        );
    }
    drop(enforcer);
}

/// Kills every process the examples started in the background (their process
/// group), pass or fail.
struct ProcessGroup(u32);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", "--", &format!("-{}", self.0)])
            .stderr(Stdio::null())
            .status();
    }
}

/// Kills the enforcer when the test ends, pass or fail.
struct Enforcer(std::process::Child);

impl Drop for Enforcer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Replaces RFC 3339 UTC timestamps with `<time>`, UUIDs with `<uuid>`,
/// SHA-256 hex with `<sha256>` and protobuf JSON durations (`"0.005s"`) with
/// `<duration>`.
fn normalize(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(n) = uuid_at(&bytes[i..]) {
            out.push_str("<uuid>");
            i += n;
        } else if bytes[i..].len() >= 64 && bytes[i..i + 64].iter().all(u8::is_ascii_hexdigit) {
            out.push_str("<sha256>");
            i += 64;
        } else if let Some(n) = timestamp_at(&bytes[i..]) {
            out.push_str("<time>");
            i += n;
        } else if let Some(n) = duration_at(&bytes[i..]) {
            out.push_str("\"<duration>\"");
            i += n;
        } else {
            let c = text[i..].chars().next().expect("in bounds");
            out.push(c);
            i += c.len_utf8();
        }
    }
    let lines: Vec<&str> = out.lines().map(str::trim_end).collect();
    lines.join("\n").trim_end().to_owned()
}

fn uuid_at(b: &[u8]) -> Option<usize> {
    let ok = b.len() >= 36
        && (0..36).all(|i| match i {
            8 | 13 | 18 | 23 => b[i] == b'-',
            _ => b[i].is_ascii_hexdigit(),
        });
    ok.then_some(36)
}

/// `"0.005441814s"`: a quoted number of seconds.
fn duration_at(b: &[u8]) -> Option<usize> {
    let digits = b
        .iter()
        .skip(1)
        .take_while(|c| c.is_ascii_digit() || **c == b'.')
        .count();
    let ok = b.first() == Some(&b'"')
        && digits > 0
        && b.get(1 + digits) == Some(&b's')
        && b.get(2 + digits) == Some(&b'"');
    ok.then_some(digits + 3)
}

fn timestamp_at(b: &[u8]) -> Option<usize> {
    let shape = b"dddd-dd-ddTdd:dd:dd";
    if b.len() < shape.len()
        || !shape.iter().zip(b).all(|(s, c)| match s {
            b'd' => c.is_ascii_digit(),
            s => s == c,
        })
    {
        return None;
    }
    let rest = &b[shape.len()..];
    let fraction = rest
        .iter()
        .take_while(|c| c.is_ascii_digit() || **c == b'.')
        .count();
    (rest.get(fraction) == Some(&b'Z')).then_some(shape.len() + fraction + 1)
}

#[test]
fn normalize_hides_only_timestamps_durations_and_uuids() {
    assert_eq!(
        normalize(
            "\"2026-11-25T11:43:28.988964372Z\" 01a21284-9782-7395-a6af-a6d4e9f5223e 5432  \n"
        ),
        "\"<time>\" <uuid> 5432"
    );
    assert_eq!(normalize("2026-11-25 x"), "2026-11-25 x");
    assert_eq!(
        normalize("\"0.0054s\", \"5\", \"s\""),
        "\"<duration>\", \"5\", \"s\""
    );
}
