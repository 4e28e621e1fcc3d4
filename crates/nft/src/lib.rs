//! The nftables backend: puts a [`Ruleset`] in force as `table inet <name>`,
//! one transaction per call, and reads it back to detect drift.
//!
//! How to talk to nftables was chosen by measuring (see the README's
//! performance section): a process per change (`nft -f`) costs 20-38 ms on a
//! throttled VM, libnftables in-process a fraction of a millisecond. So the
//! backend loads `libnftables.so.1` at run time and feeds it the same text
//! `nft -f` would read; it falls back to the `nft` command when the library is
//! missing, and `--nft-path` forces the command (tests point it at a failing
//! nft). Licence: libnftables is GPL-2.0-only, hence this crate's licence; the
//! rules service and the client crates never depend on it.

mod libnftables;
mod netlink;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use cassette_enforcement::{Counters, Dropped, Hits, Kernel, KernelError};
use cassette_model::{Cidr, PortRange, Protocol};
use cassette_ruleset::{
    set_name, BlockedSet, Ruleset, TableName, ALLOW_SETS, BLOCKED_SETS, BLOCKED_TIMEOUT_SECS,
};
use serde_json::Value;

use libnftables::Libnftables;
use netlink::Netlink;

/// How nft commands are run.
enum Runner {
    Library(Libnftables),
    Command(PathBuf),
}

impl Runner {
    /// Runs `script` as one transaction; returns nft's output.
    fn run(&mut self, script: &str, json: bool) -> Result<String, KernelError> {
        match self {
            Runner::Library(lib) => lib.run(script, json).map_err(KernelError),
            Runner::Command(path) => run_command(path, script, json),
        }
    }
}

fn run_command(path: &PathBuf, script: &str, json: bool) -> Result<String, KernelError> {
    let mut command = Command::new(path);
    let mut child = if json {
        // `nft -j -f -` prints nothing for a listing: pass the command as arguments.
        command
            .arg("-j")
            .args(script.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    } else {
        command
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    }
    .map_err(|e| KernelError(format!("cannot run {}: {e}", path.display())))?;
    // nft may exit before reading everything (a rejected script): its own
    // message says more than the broken pipe, so the write error waits.
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(script.as_bytes()),
        None => Ok(()),
    };
    let output = child
        .wait_with_output()
        .map_err(|e| KernelError(format!("{} failed: {e}", path.display())))?;
    if output.status.success() {
        written.map_err(|e| KernelError(format!("cannot write to {}: {e}", path.display())))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        Err(KernelError(if stderr.is_empty() {
            format!("{} exited with {}", path.display(), output.status)
        } else {
            stderr
        }))
    }
}

/// `table inet <name>` in the network namespace the process runs in.
pub struct NftKernel {
    table: TableName,
    runner: Runner,
    /// The table's chains and rules as read back after our last full replace
    /// (handles removed); set elements are compared with the ruleset instead.
    reference: Option<Vec<Value>>,
    /// Element changes as one netlink batch (see `netlink`), beside
    /// libnftables; `None` with the nft command, or when the socket could
    /// not be opened.
    netlink: Option<Netlink>,
}

impl NftKernel {
    /// libnftables when it loads (and netlink batches for element changes),
    /// else the `nft` command; `nft_path` forces the command for everything.
    pub fn new(table: TableName, nft_path: Option<PathBuf>) -> Self {
        let runner = match nft_path {
            Some(path) => Runner::Command(path),
            None => match Libnftables::load() {
                Ok(lib) => Runner::Library(lib),
                Err(error) => {
                    tracing::warn!(%error, "libnftables unavailable; running the nft command per change");
                    Runner::Command(PathBuf::from("nft"))
                }
            },
        };
        let netlink = match &runner {
            Runner::Library(_) => Netlink::open()
                .inspect_err(|error| {
                    tracing::warn!(%error, "no netlink socket; element changes go through libnftables")
                })
                .ok(),
            Runner::Command(_) => None,
        };
        Self {
            table,
            runner,
            reference: None,
            netlink,
        }
    }

    /// Which way this backend talks to nftables, for logs.
    pub fn mode(&self) -> String {
        match &self.runner {
            Runner::Library(_) if self.netlink.is_some() => {
                "libnftables, element changes by netlink".to_owned()
            }
            Runner::Library(_) => "libnftables".to_owned(),
            Runner::Command(path) => format!("command {}", path.display()),
        }
    }

    /// The table as nft's JSON objects, or `None` when it does not exist.
    fn read_back(&mut self) -> Result<Option<Vec<Value>>, KernelError> {
        let listed = self
            .runner
            .run(&format!("list table inet {}", self.table.as_str()), true);
        let text = match listed {
            Ok(text) => text,
            // nft's own answer for a missing table; "cannot run nft: No such
            // file or directory" (no nft at all) is an error, not an absent table.
            Err(KernelError(message)) if message.contains("Error: No such file or directory") => {
                return Ok(None)
            }
            Err(error) => return Err(error),
        };
        let parsed: Value = serde_json::from_str(&text)
            .map_err(|e| KernelError(format!("unreadable nft JSON: {e}")))?;
        let objects = parsed
            .get("nftables")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        Ok(Some(
            objects
                .into_iter()
                .filter(|o| o.get("metainfo").is_none())
                .collect(),
        ))
    }
}

/// The structure of the table without handles and set elements, which is what
/// stays the same across element updates.
fn structure(objects: &[Value]) -> Vec<Value> {
    objects
        .iter()
        .map(|object| {
            let mut object = object.clone();
            if let Some(inner) = object.as_object_mut().and_then(|o| o.values_mut().next()) {
                if let Some(fields) = inner.as_object_mut() {
                    fields.remove("handle");
                    fields.remove("elem");
                }
            }
            object
        })
        .collect()
}

/// A set's elements as nft lists them: each value, with the packets its
/// counter has seen (`{"elem": {"val": V, "counter": {...}}}`; a bare `V`
/// when the set keeps no counters). `None` if the set is missing.
fn set_entries<'a>(objects: &'a [Value], name: &str) -> Option<Vec<(&'a Value, Option<u64>)>> {
    let set = objects
        .iter()
        .filter_map(|o| o.get("set"))
        .find(|s| s.get("name").and_then(Value::as_str) == Some(name))?;
    let Some(elems) = set.get("elem").and_then(Value::as_array) else {
        return Some(Vec::new());
    };
    Some(
        elems
            .iter()
            .map(|e| match e.get("elem") {
                Some(inner) => (
                    inner.get("val").unwrap_or(&Value::Null),
                    inner
                        .get("counter")
                        .and_then(|c| c.get("packets"))
                        .and_then(Value::as_u64),
                ),
                None => (e, None),
            })
            .collect(),
    )
}

fn port_of(value: &Value) -> Option<u16> {
    value.as_u64().and_then(|p| u16::try_from(p).ok())
}

/// An element of an interval set of ports: `22`, or `{"range": [27015, 27030]}`.
fn ports_of(value: &Value) -> Option<PortRange> {
    let (first, last) = match value.get("range").and_then(Value::as_array) {
        Some(ends) => match ends.as_slice() {
            [first, last] => (first.as_u64()?, last.as_u64()?),
            _ => return None,
        },
        None => {
            let port = value.as_u64()?;
            (port, port)
        }
    };
    PortRange::new(u32::try_from(first).ok()?, u32::try_from(last).ok()?).ok()
}

/// An allowlist element's value: a `concat` of a prefix (or a bare address,
/// for one host) and a port or range.
fn network_port_of(value: &Value) -> Option<(Cidr, PortRange)> {
    let parts = value.get("concat")?.as_array()?;
    let [source, port] = parts.as_slice() else {
        return None;
    };
    let network = match source {
        Value::String(addr) => Cidr::parse(addr).ok()?,
        other => {
            let prefix = other.get("prefix")?;
            let addr = prefix.get("addr")?.as_str()?;
            let len = prefix.get("len")?.as_u64()?;
            Cidr::parse(&format!("{addr}/{len}")).ok()?
        }
    };
    Some((network, ports_of(port)?))
}

/// The `network . port` elements of an allowlist set.
fn allowed_elements(objects: &[Value], name: &str) -> Option<BTreeSet<(Cidr, PortRange)>> {
    set_entries(objects, name)?
        .into_iter()
        .map(|(value, _)| network_port_of(value))
        .collect()
}

/// The ports and ranges in a set (absent `elem` = empty).
fn set_elements(objects: &[Value], name: &str) -> Option<Vec<PortRange>> {
    let mut ports: Vec<PortRange> = set_entries(objects, name)?
        .into_iter()
        .map(|(value, _)| ports_of(value))
        .collect::<Option<_>>()?;
    ports.sort_unstable();
    Some(ports)
}

/// Every element's packet counter, open ports and allowlists alike.
fn hit_counts(objects: &[Value]) -> Vec<Hits> {
    let mut hits = Vec::new();
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        for (value, packets) in set_entries(objects, set_name(protocol)).unwrap_or_default() {
            if let (Some(ports), Some(packets)) = (ports_of(value), packets) {
                hits.push(Hits {
                    protocol,
                    ports,
                    source: None,
                    packets,
                });
            }
        }
    }
    for set in &ALLOW_SETS {
        for (value, packets) in set_entries(objects, set.name).unwrap_or_default() {
            if let (Some((network, ports)), Some(packets)) = (network_port_of(value), packets) {
                hits.push(Hits {
                    protocol: set.protocol,
                    ports,
                    source: Some(network),
                    packets,
                });
            }
        }
    }
    hits
}

/// A protocol as nft lists an `inet_proto`: by name, or by number where
/// `/etc/protocols` is missing.
fn protocol_of(value: &Value) -> Option<Protocol> {
    match value {
        Value::String(name) if name == "tcp" || name == "6" => Some(Protocol::Tcp),
        Value::String(name) if name == "udp" || name == "17" => Some(Protocol::Udp),
        Value::Number(n) if n.as_u64() == Some(6) => Some(Protocol::Tcp),
        Value::Number(n) if n.as_u64() == Some(17) => Some(Protocol::Udp),
        _ => None,
    }
}

/// The records of a set of dropped attempts, read at `now`: each element's
/// `protocol . port [. source]`, its counter, and its last attempt (its
/// timeout less what remains of it ago).
fn dropped_records(objects: &[Value], set: &BlockedSet, now: SystemTime) -> Vec<Dropped> {
    let Some(listed) = objects
        .iter()
        .filter_map(|o| o.get("set"))
        .find(|s| s.get("name").and_then(Value::as_str) == Some(set.name))
    else {
        return Vec::new();
    };
    let timeout = listed
        .get("timeout")
        .and_then(Value::as_u64)
        .unwrap_or(BLOCKED_TIMEOUT_SECS);
    let Some(elems) = listed.get("elem").and_then(Value::as_array) else {
        return Vec::new();
    };
    let now_secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    elems
        .iter()
        .filter_map(|e| {
            let inner = e.get("elem")?;
            let parts = inner.get("val")?.get("concat")?.as_array()?;
            let (protocol, port, source) = match parts.as_slice() {
                [protocol, port] => (protocol, port, None),
                [protocol, port, source] => (
                    protocol,
                    port,
                    Some(source.as_str()?.parse::<IpAddr>().ok()?),
                ),
                _ => return None,
            };
            let expires = inner
                .get("expires")
                .and_then(Value::as_u64)
                .unwrap_or(timeout);
            // nft says what remains in whole seconds: so is the time.
            let since = timeout.saturating_sub(expires);
            Some(Dropped {
                protocol: protocol_of(protocol)?,
                port: port_of(port)?,
                source,
                attempts: inner
                    .get("counter")
                    .and_then(|c| c.get("packets"))
                    .and_then(Value::as_u64)?,
                last: SystemTime::UNIX_EPOCH + Duration::from_secs(now_secs.saturating_sub(since)),
            })
        })
        .collect()
}

/// The records to forget so that a set past three quarters of its size
/// has room again (down to half): those tried least, then longest ago. A
/// full set records nothing new, so without this one scan would blind the
/// record for an hour.
fn to_evict(records: &[Dropped], set: &BlockedSet) -> Vec<Dropped> {
    if records.len() <= set.size * 3 / 4 {
        return Vec::new();
    }
    let mut ranked = records.to_vec();
    ranked.sort_unstable_by(|a, b| a.attempts.cmp(&b.attempts).then(a.last.cmp(&b.last)));
    ranked.truncate(records.len() - set.size / 2);
    ranked
}

/// `delete element` for `records` of `set`, one line.
fn evict_script(table: &TableName, set: &BlockedSet, records: &[Dropped]) -> String {
    let elements: Vec<String> = records
        .iter()
        .map(|r| {
            let protocol = r.protocol.name();
            match r.source {
                None => format!("{protocol} . {}", r.port),
                Some(source) => format!("{protocol} . {} . {source}", r.port),
            }
        })
        .collect();
    format!(
        "delete element inet {} {} {{ {} }}\n",
        table.as_str(),
        set.name,
        elements.join(", ")
    )
}

impl Kernel for NftKernel {
    fn exists(&mut self) -> Result<bool, KernelError> {
        Ok(self.read_back()?.is_some())
    }

    fn replace(&mut self, ruleset: &Ruleset) -> Result<(), KernelError> {
        self.runner
            .run(&ruleset.replace_script(&self.table), false)?;
        // The transaction succeeded: that is what counts. A read-back failing
        // now only costs the chain/rule reference, taken again at the next repair.
        self.reference = match self.read_back() {
            Ok(objects) => objects.as_deref().map(structure),
            Err(error) => {
                tracing::warn!(%error, "applied, but cannot read the table back");
                None
            }
        };
        Ok(())
    }

    fn update(&mut self, from: &Ruleset, to: &Ruleset) -> Result<(), KernelError> {
        let delta = to.delta(from);
        if delta.is_empty() {
            return Ok(());
        }
        if let Some(netlink) = &mut self.netlink {
            match netlink.apply(self.table.as_str(), &delta) {
                Ok(()) => return Ok(()),
                // Nothing of it is in force (the batch is atomic): nft
                // tries, and says what is wrong if it fails too.
                Err(error) => {
                    tracing::warn!(%error, "netlink batch refused; applying the change through libnftables")
                }
            }
        }
        match to.delta_script(from, &self.table) {
            Some(script) => self.runner.run(&script, false).map(drop),
            None => Ok(()),
        }
    }

    /// With the netlink socket, an update is one batch the kernel answers at
    /// once (a batch it refuses falls back to libnftables, once, in place).
    fn quick_updates(&self) -> bool {
        self.netlink.is_some()
    }

    fn holds(&mut self, ruleset: &Ruleset) -> Result<bool, KernelError> {
        let Some(objects) = self.read_back()? else {
            return Ok(false);
        };
        let sets_match = [Protocol::Tcp, Protocol::Udp].into_iter().all(|protocol| {
            set_elements(&objects, set_name(protocol)).is_some_and(|ports| {
                ports
                    .iter()
                    .copied()
                    .eq(ruleset.ports(protocol).iter().copied())
            })
        });
        let allowlists_match = ALLOW_SETS
            .iter()
            .all(|set| allowed_elements(&objects, set.name) == Some(ruleset.allowed(set)));
        let structure_matches = self.reference.as_deref() == Some(&structure(&objects)[..]);
        Ok(sets_match && allowlists_match && structure_matches)
    }

    fn counters(&mut self) -> Result<Option<Counters>, KernelError> {
        let Some(objects) = self.read_back()? else {
            return Ok(None);
        };
        let now = SystemTime::now();
        let mut dropped = Vec::new();
        let mut evictions = String::new();
        let mut records_kept = false;
        for set in &BLOCKED_SETS {
            records_kept |= set_entries(&objects, set.name).is_some();
            let records = dropped_records(&objects, set, now);
            let evicted = to_evict(&records, set);
            if !evicted.is_empty() {
                evictions.push_str(&evict_script(&self.table, set, &evicted));
            }
            let evicted: HashSet<Dropped> = evicted.into_iter().collect();
            dropped.extend(records.into_iter().filter(|r| !evicted.contains(r)));
        }
        if !evictions.is_empty() {
            // A record that timed out since the read fails the transaction:
            // the next reading tries again.
            if let Err(error) = self.runner.run(&evictions, false) {
                tracing::debug!(%error, "cannot forget dropped-attempt records");
            }
        }
        Ok(Some(Counters {
            hits: hit_counts(&objects),
            dropped: records_kept.then_some(dropped),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(port: u16) -> PortRange {
        PortRange::single(cassette_model::Port::new(u32::from(port)).unwrap())
    }

    fn ports(ports: &[u16]) -> Option<Vec<PortRange>> {
        Some(ports.iter().map(|p| port(*p)).collect())
    }

    fn listing() -> Vec<Value> {
        let text = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "cassette", "handle": 2}},
            {"set": {"family": "inet", "name": "tcp_open", "table": "cassette", "type": "inet_service", "handle": 2, "elem": [443, 22, 80]}},
            {"set": {"family": "inet", "name": "udp_open", "table": "cassette", "type": "inet_service", "handle": 3}},
            {"chain": {"family": "inet", "table": "cassette", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}]}"#;
        let parsed: Value = serde_json::from_str(text).unwrap();
        parsed["nftables"].as_array().unwrap()[1..].to_vec()
    }

    #[test]
    fn set_elements_reads_ports_and_empty_sets() {
        let objects = listing();
        assert_eq!(set_elements(&objects, "tcp_open"), ports(&[22, 80, 443]));
        assert_eq!(set_elements(&objects, "udp_open"), Some(vec![]));
        assert_eq!(set_elements(&objects, "missing"), None);
    }

    #[test]
    fn no_nft_to_run_is_an_error_not_an_absent_table() {
        let mut kernel = NftKernel::new(
            TableName::default(),
            Some(PathBuf::from("/nonexistent/cassette-test/nft")),
        );
        let error = kernel.exists().unwrap_err();
        assert!(error.0.contains("cannot run"), "{error:?}");
        assert!(kernel.holds(&Ruleset::defaults()).is_err());
    }

    #[test]
    fn structure_ignores_handles_and_elements_only() {
        let objects = listing();
        let mut renumbered = objects.clone();
        renumbered[1]["set"]["handle"] = Value::from(9);
        renumbered[1]["set"]["elem"] = Value::from(vec![5432]);
        assert_eq!(structure(&objects), structure(&renumbered));
        let mut accepting = objects.clone();
        accepting[3]["chain"]["policy"] = Value::from("accept");
        assert_ne!(structure(&objects), structure(&accepting));
    }

    #[test]
    fn allowlist_elements_read_prefixes_and_hosts() {
        let text = r#"[{"set": {"family": "inet", "name": "tcp4_allow", "table": "cassette", "type": ["ipv4_addr", "inet_service"], "handle": 4, "flags": ["interval"],
            "elem": [{"concat": [{"prefix": {"addr": "10.0.0.0", "len": 8}}, 5432]}, {"concat": ["192.0.2.7", 22]}]}},
            {"set": {"family": "inet", "name": "tcp6_allow", "table": "cassette", "type": ["ipv6_addr", "inet_service"], "handle": 5, "flags": ["interval"]}}]"#;
        let objects: Vec<Value> = serde_json::from_str(text).unwrap();
        let net = |s: &str| Cidr::parse(s).unwrap();
        assert_eq!(
            allowed_elements(&objects, "tcp4_allow"),
            Some(
                [
                    (net("10.0.0.0/8"), port(5432)),
                    (net("192.0.2.7/32"), port(22))
                ]
                .into_iter()
                .collect()
            )
        );
        assert_eq!(
            allowed_elements(&objects, "tcp6_allow"),
            Some(BTreeSet::new())
        );
        assert_eq!(allowed_elements(&objects, "udp4_allow"), None);
    }

    #[test]
    fn ranges_are_read_as_one_element_each() {
        let text = r#"[{"set": {"family": "inet", "name": "udp_open", "table": "cassette", "type": "inet_service", "handle": 3, "flags": ["interval"],
              "elem": [{"elem": {"val": 53, "counter": {"packets": 1, "bytes": 60}}}, {"elem": {"val": {"range": [27015, 27030]}, "counter": {"packets": 9, "bytes": 540}}}]}},
            {"set": {"family": "inet", "name": "udp4_allow", "table": "cassette", "type": ["ipv4_addr", "inet_service"], "handle": 6, "flags": ["interval"],
              "elem": [{"elem": {"val": {"concat": [{"prefix": {"addr": "10.0.0.0", "len": 8}}, {"range": [40000, 40100]}]}, "counter": {"packets": 2, "bytes": 120}}}]}}]"#;
        let objects: Vec<Value> = serde_json::from_str(text).unwrap();
        let range = |first, last| PortRange::new(first, last).unwrap();
        assert_eq!(
            set_elements(&objects, "udp_open"),
            Some(vec![port(53), range(27015, 27030)])
        );
        assert_eq!(
            allowed_elements(&objects, "udp4_allow"),
            Some(
                [(Cidr::parse("10.0.0.0/8").unwrap(), range(40000, 40100))]
                    .into_iter()
                    .collect()
            )
        );
        let hits = hit_counts(&objects);
        assert!(hits.contains(&Hits {
            protocol: Protocol::Udp,
            ports: range(27015, 27030),
            source: None,
            packets: 9
        }));
    }

    #[test]
    fn counters_are_read_per_element() {
        let text = r#"[{"set": {"family": "inet", "name": "tcp_open", "table": "cassette", "type": "inet_service", "handle": 2,
              "elem": [{"elem": {"val": 22, "counter": {"packets": 7, "bytes": 420}}}, {"elem": {"val": 80, "counter": {"packets": 0, "bytes": 0}}}], "stmt": [{"counter": null}]}},
            {"set": {"family": "inet", "name": "udp_open", "table": "cassette", "type": "inet_service", "handle": 3, "stmt": [{"counter": null}]}},
            {"set": {"family": "inet", "name": "tcp4_allow", "table": "cassette", "type": ["ipv4_addr", "inet_service"], "handle": 4, "flags": ["interval"],
              "elem": [{"elem": {"val": {"concat": [{"prefix": {"addr": "10.0.0.0", "len": 8}}, 5432]}, "counter": {"packets": 3, "bytes": 180}}}]}}]"#;
        let objects: Vec<Value> = serde_json::from_str(text).unwrap();
        assert_eq!(set_elements(&objects, "tcp_open"), ports(&[22, 80]));
        assert_eq!(set_elements(&objects, "udp_open"), Some(vec![]));
        let hits = hit_counts(&objects);
        assert_eq!(hits.len(), 3, "{hits:?}");
        assert!(hits.contains(&Hits {
            protocol: Protocol::Tcp,
            ports: port(22),
            source: None,
            packets: 7
        }));
        assert!(hits.contains(&Hits {
            protocol: Protocol::Tcp,
            ports: port(5432),
            source: Some(Cidr::parse("10.0.0.0/8").unwrap()),
            packets: 3
        }));
    }

    #[test]
    fn dropped_attempts_are_read_with_their_last_time_and_evicted_least_tried_first() {
        let text = r#"[{"set": {"family": "inet", "name": "blocked_ports", "table": "cassette", "type": ["inet_proto", "inet_service"], "handle": 8, "size": 4096, "flags": ["timeout"], "timeout": 3600,
              "elem": [{"elem": {"val": {"concat": ["tcp", 3000]}, "expires": 3590, "counter": {"packets": 4, "bytes": 240}}},
                       {"elem": {"val": {"concat": [17, 53]}, "expires": 600, "counter": {"packets": 1, "bytes": 60}}}], "stmt": [{"counter": null}]}},
            {"set": {"family": "inet", "name": "blocked6", "table": "cassette", "type": ["inet_proto", "inet_service", "ipv6_addr"], "handle": 10, "size": 4096, "flags": ["timeout"], "timeout": 3600,
              "elem": [{"elem": {"val": {"concat": ["tcp", 3000, "2001:db8::7"]}, "expires": 3599, "counter": {"packets": 2, "bytes": 120}}}]}}]"#;
        let objects: Vec<Value> = serde_json::from_str(text).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ago = |s| now - Duration::from_secs(s);
        let ports = dropped_records(&objects, &BLOCKED_SETS[0], now);
        assert_eq!(
            ports,
            [
                Dropped {
                    protocol: Protocol::Tcp,
                    port: 3000,
                    source: None,
                    attempts: 4,
                    last: ago(10)
                },
                Dropped {
                    protocol: Protocol::Udp,
                    port: 53,
                    source: None,
                    attempts: 1,
                    last: ago(3000)
                }
            ]
        );
        let v6 = dropped_records(&objects, &BLOCKED_SETS[2], now);
        assert_eq!(v6.len(), 1);
        assert_eq!(v6[0].source, Some("2001:db8::7".parse().unwrap()));
        assert_eq!(v6[0].last, ago(1));
        assert!(dropped_records(&objects, &BLOCKED_SETS[1], now).is_empty());

        let set = BlockedSet {
            name: "blocked_ports",
            size: 8,
            source_ipv4: None,
        };
        let record = |port, attempts, last| Dropped {
            protocol: Protocol::Tcp,
            port,
            source: None,
            attempts,
            last: ago(last),
        };
        let six: Vec<Dropped> = (1..=6).map(|p| record(p, 1, 100)).collect();
        assert!(to_evict(&six, &set).is_empty(), "at three quarters");
        let mut seven = six.clone();
        seven[0].attempts = 5;
        seven.push(record(7, 1, 1));
        let evicted = to_evict(&seven, &set);
        let ports: Vec<u16> = evicted.iter().map(|r| r.port).collect();
        assert_eq!(ports.len(), 3, "down to half");
        assert!(!ports.contains(&1) && !ports.contains(&7), "{ports:?}");
        assert_eq!(
            evict_script(&TableName::default(), &set, &evicted[..1]),
            format!(
                "delete element inet cassette blocked_ports {{ tcp . {} }}\n",
                ports[0]
            )
        );
        let from = Dropped {
            source: Some("192.0.2.1".parse().unwrap()),
            ..record(22, 1, 1)
        };
        assert_eq!(
            evict_script(&TableName::default(), &BLOCKED_SETS[1], &[from]),
            "delete element inet cassette blocked4 { tcp . 22 . 192.0.2.1 }\n"
        );
    }

    /// A network namespace of the test's own (`ip netns`), deleted on drop.
    struct Namespace(String);

    impl Namespace {
        /// `None` where the test cannot make one (not root, no `ip`).
        fn create(name: &str) -> Option<Self> {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                return None;
            }
            let name = format!("{name}-{}", std::process::id());
            let made = Command::new("ip").args(["netns", "add", &name]).status();
            made.ok()?.success().then(|| Self(name))
        }

        /// Moves the calling thread into the namespace.
        fn enter(&self) {
            let file = std::fs::File::open(format!("/run/netns/{}", self.0)).unwrap();
            // SAFETY: the descriptor is open for the call.
            let entered =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0, "{}", std::io::Error::last_os_error());
        }
    }

    impl Drop for Namespace {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "delete", &self.0])
                .status();
        }
    }

    /// Each kind of element change as a netlink batch against the real
    /// kernel, read back through libnftables after each step (as the
    /// enforcer's drift check reads it): open ports, ranges, a range open to
    /// 65535 (no end element), IPv4 and IPv6 allowlists, everything removed.
    #[test]
    fn netlink_batches_put_in_force_what_libnftables_reads_back() {
        let Some(namespace) = Namespace::create("cassette-nft-netlink") else {
            eprintln!("skipped: needs root and ip(8) for a network namespace");
            return;
        };
        std::thread::spawn(move || {
            namespace.enter();
            let mut kernel = NftKernel::new(TableName::default(), None);
            assert!(kernel.netlink.is_some(), "{}", kernel.mode());
            let range = |first, last| PortRange::new(first, last).unwrap();
            let net = |s: &str| Cidr::parse(s).unwrap();
            let (tcp, udp) = (Protocol::Tcp, Protocol::Udp);
            let defaults = Ruleset::defaults();
            let wide = defaults
                .clone()
                .opening(tcp, range(1000, 2000), &[])
                .opening(tcp, range(65535, 65535), &[])
                .opening(udp, port(53), &[])
                .opening(tcp, port(5432), &[net("10.0.0.0/8"), net("2001:db8::/32")])
                .opening(udp, range(40000, 40100), &[net("192.0.2.7")]);
            let changed = Ruleset::default()
                .opening(tcp, port(22), &[])
                .opening(tcp, range(60000, 65535), &[])
                .opening(udp, range(1, 65535), &[])
                .opening(tcp, port(5432), &[net("0.0.0.0/0"), net("::/0")])
                .opening(udp, range(40000, 40100), &[net("192.0.2.7")]);
            let steps = [
                defaults.clone(),
                wide.clone(),
                changed,
                Ruleset::default(),
                wide,
                defaults,
            ];
            kernel.replace(&steps[0]).unwrap();
            assert!(kernel.holds(&steps[0]).unwrap());
            for pair in steps.windows(2) {
                let (from, to) = (&pair[0], &pair[1]);
                let netlink = kernel.netlink.as_mut().unwrap();
                netlink.apply("cassette", &to.delta(from)).unwrap();
                assert!(kernel.holds(to).unwrap(), "after {:?}", to.delta(from));
            }

            // One batch, all or nothing: a change to a set that does not
            // exist fails it, named, and the change beside it is not made.
            let mut delta = steps[1].delta(&steps[0]);
            delta.push(cassette_ruleset::SetDelta {
                set: "no_such_set",
                removed: vec![],
                added: vec![cassette_ruleset::Element::Ports(port(7))],
            });
            let netlink = kernel.netlink.as_mut().unwrap();
            let error = netlink.apply("cassette", &delta).unwrap_err();
            assert!(error.contains("no_such_set"), "{error}");
            assert!(kernel.holds(&steps[0]).unwrap());

            // No process of the namespace can answer in the kernel's name:
            // a datagram to the socket from another one is refused.
            let ours = kernel.netlink.as_ref().unwrap().port_id();
            assert_ne!(ours, 0);
            // SAFETY: plain syscalls on a descriptor closed below; the
            // pointers are to live locals of the sizes given.
            let refused = unsafe {
                let forger = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 12);
                assert!(forger >= 0);
                let mut to: libc::sockaddr_nl = std::mem::zeroed();
                to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
                to.nl_pid = ours;
                let ack = [0u8; 36];
                let sent = libc::sendto(
                    forger,
                    ack.as_ptr().cast(),
                    ack.len(),
                    0,
                    (&to as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                );
                let error = std::io::Error::last_os_error();
                libc::close(forger);
                (sent, error.raw_os_error())
            };
            assert_eq!(refused, (-1, Some(libc::ECONNREFUSED)));

            // The backend's update takes the same path.
            kernel.update(&steps[0], &steps[1]).unwrap();
            assert!(kernel.holds(&steps[1]).unwrap());

            // A whole firewall's worth at once: 1,000 ports and 64 networks
            // on each of 20 rules (messages of at most 512 elements).
            let networks: Vec<Cidr> = (0..64).map(|i| net(&format!("10.{i}.0.0/16"))).collect();
            let large = (0..1000).fold(steps[1].clone(), |r, i| {
                r.opening(udp, port(20000 + 2 * i), &[])
            });
            let large = (0..20).fold(large, |r, i| r.opening(tcp, port(30000 + i), &networks));
            let netlink = kernel.netlink.as_mut().unwrap();
            netlink.apply("cassette", &large.delta(&steps[1])).unwrap();
            assert!(kernel.holds(&large).unwrap());
            let netlink = kernel.netlink.as_mut().unwrap();
            netlink.apply("cassette", &steps[0].delta(&large)).unwrap();
            assert!(kernel.holds(&steps[0]).unwrap());
        })
        .join()
        .unwrap();
    }
}
