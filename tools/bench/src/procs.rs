//! Processes and namespaces a benchmark starts, and removes when it ends.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// A binary built next to this one (`cargo build --release --bins`).
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .context("cassette-bench has no directory")?
        .join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is not built: run `cargo build --release --bins`",
        path.display()
    );
    Ok(path)
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A child process killed on drop.
pub struct Guarded(pub Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A network namespace removed on drop, with every process in it.
pub struct Netns(pub String);

impl Netns {
    pub fn create(name: String) -> anyhow::Result<Self> {
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()?
            .success();
        anyhow::ensure!(ok, "cannot create network namespace {name}");
        let ns = Netns(name);
        let ok = Command::new("ip")
            .args(["-n", &ns.0, "link", "set", "lo", "up"])
            .status()?
            .success();
        anyhow::ensure!(ok, "cannot bring up lo in {}", ns.0);
        Ok(ns)
    }

    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.0, program])
            .stdin(Stdio::null());
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.0]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// The CPU time process `pid` has used (user + system), from
/// `/proc/<pid>/stat` in clock ticks of 1/100 s (Linux's USER_HZ).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command name, which may hold spaces, in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("no command name")?
        .1
        .split_whitespace()
        .collect();
    // utime and stime: the 14th and 15th fields, the 12th and 13th after the name.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields.get(i).context("short /proc stat")?.parse()?)
    };
    Ok((ticks(11)? + ticks(12)?) as f64 / 100.0)
}
