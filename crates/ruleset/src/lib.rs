//! The one renderer: an instance's desired kernel ruleset (which ports are
//! open), derived from its folded firewall, and its nftables text.
//!
//! Static chains, dynamic sets: a rule change is a set-element change. A first
//! sync or a repair replaces the whole table in one transaction; later changes
//! are element additions and deletions. A rule open to anywhere is a port in
//! `tcp_open`/`udp_open`; a rule with an allowlist is `source . port`
//! elements of an interval set per protocol and address family
//! (`tcp4_allow`, `tcp6_allow`, `udp4_allow`, `udp6_allow`). What the
//! chain drops, it first records: a new connection's protocol and port in
//! `blocked_ports`, with its source in `blocked4`/`blocked6` (dynamic sets
//! the kernel fills itself, with a counter per element and a timeout of an
//! hour, bounded in size: see [`BLOCKED_SETS`]). This crate is pure (no I/O),
//! so the enforcer, the audit view and the tests all render the same text.

use std::collections::BTreeSet;
use std::fmt::{self, Write};

use cassette_model::{default_rules, Cidr, Firewall, PortRange, Protocol};
use sha2::{Digest, Sha256};

/// The name of the nftables table (family `inet`) the enforcer owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("table name {0:?} must be 1-64 characters of a-z, 0-9 and '_', starting with a letter")]
pub struct InvalidTableName(String);

impl TableName {
    pub fn parse(name: &str) -> Result<Self, InvalidTableName> {
        let mut chars = name.chars();
        let ok = name.len() <= 64
            && chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(InvalidTableName(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TableName {
    fn default() -> Self {
        Self("cassette".to_owned())
    }
}

/// The ports an instance's kernel accepts, per protocol. Everything else
/// inbound is dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    tcp: BTreeSet<PortRange>,
    udp: BTreeSet<PortRange>,
    /// Ports open only to some networks: (protocol, network, ports).
    allowed: BTreeSet<(Protocol, Cidr, PortRange)>,
}

/// What the input chain accepts before the port checks: loopback, and
/// packets of connections this instance opened (the reply direction) or
/// related to one (ICMP errors). A connection someone opened to the
/// instance is checked against the ports in every packet, not only its
/// first: when a rule is turned off, deleted, expires or its allowlist
/// narrows, the traffic of connections it let in stops with the change.
/// (Accepting `ct state established` in both directions, as before, let
/// them go on through a rule shown as blocking.)
const INPUT_ACCEPTS: &str = concat!(
    "    iif \"lo\" accept\n",
    "    ct state invalid drop\n",
    "    ct direction reply ct state established accept\n",
    "    ct state related accept\n",
);

/// [`INPUT_ACCEPTS`] before open connections were checked per packet.
const ACCEPTS_ESTABLISHED: &str = concat!(
    "    iif \"lo\" accept\n",
    "    ct state established,related accept\n",
    "    ct state invalid drop\n",
);

/// How a version of this renderer drew the table: what its chain accepted
/// first, and whether it recorded what it dropped.
#[derive(Debug, Clone, Copy)]
struct Rendering {
    input_accepts: &'static str,
    records_blocked: bool,
    /// Whether the open-port sets hold ranges (`flags interval`).
    open_ranges: bool,
}

const CURRENT: Rendering = Rendering {
    input_accepts: INPUT_ACCEPTS,
    records_blocked: true,
    open_ranges: true,
};

/// What earlier versions rendered, for state files they saved (see
/// [`Ruleset::hash_matches`]).
const EARLIER: [Rendering; 3] = [
    Rendering {
        input_accepts: ACCEPTS_ESTABLISHED,
        records_blocked: false,
        open_ranges: false,
    },
    Rendering {
        input_accepts: INPUT_ACCEPTS,
        records_blocked: false,
        open_ranges: false,
    },
    Rendering {
        input_accepts: INPUT_ACCEPTS,
        records_blocked: true,
        open_ranges: false,
    },
];

/// How long the kernel keeps a record of dropped attempts after its last one.
pub const BLOCKED_TIMEOUT_SECS: u64 = 3600;

/// One of the sets the kernel records dropped attempts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockedSet {
    pub name: &'static str,
    /// The most elements it holds: a full set records nothing more (the
    /// packet is dropped all the same) until elements time out or the
    /// enforcer evicts some.
    pub size: usize,
    /// `None`: protocol and port only; else the source's family (IPv4?).
    pub source_ipv4: Option<bool>,
}

impl BlockedSet {
    fn key_type(&self) -> &'static str {
        match self.source_ipv4 {
            None => "inet_proto . inet_service",
            Some(true) => "inet_proto . inet_service . ipv4_addr",
            Some(false) => "inet_proto . inet_service . ipv6_addr",
        }
    }

    /// The rule that records a new TCP or UDP connection the chain is about
    /// to drop (protocols by number, as for ICMP below).
    fn record_rule(&self, out: &mut impl Write) -> fmt::Result {
        let (family, key) = match self.source_ipv4 {
            None => ("", "meta l4proto . th dport"),
            Some(true) => ("meta nfproto ipv4 ", "meta l4proto . th dport . ip saddr"),
            Some(false) => ("meta nfproto ipv6 ", "meta l4proto . th dport . ip6 saddr"),
        };
        writeln!(
            out,
            "    meta l4proto {{ 6, 17 }} ct state new {family}update @{} {{ {key} }}",
            self.name
        )
    }
}

/// The sets that record dropped attempts: per protocol and port, and per
/// protocol, port and source for each address family. Bounded, so a scan of
/// every port (or a flood from many sources) costs the kernel at most these
/// elements, and reading them back stays cheap.
pub const BLOCKED_SETS: [BlockedSet; 3] = [
    BlockedSet {
        name: "blocked_ports",
        size: 4096,
        source_ipv4: None,
    },
    BlockedSet {
        name: "blocked4",
        size: 4096,
        source_ipv4: Some(true),
    },
    BlockedSet {
        name: "blocked6",
        size: 4096,
        source_ipv4: Some(false),
    },
];

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    hex
}

/// Text written into it is hashed as it comes (the table is never held).
struct Sha256Writer(Sha256);

impl Write for Sha256Writer {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.0.update(text.as_bytes());
        Ok(())
    }
}

/// One of the allowlist sets: `source . port` for a protocol and a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowSet {
    pub name: &'static str,
    pub protocol: Protocol,
    pub ipv4: bool,
}

impl AllowSet {
    fn address_type(&self) -> &'static str {
        if self.ipv4 {
            "ipv4_addr"
        } else {
            "ipv6_addr"
        }
    }

    /// The match on the packet's source address.
    fn source_match(&self) -> &'static str {
        if self.ipv4 {
            "ip saddr"
        } else {
            "ip6 saddr"
        }
    }
}

/// Every allowlist set, in the order the table defines them.
pub const ALLOW_SETS: [AllowSet; 4] = [
    AllowSet {
        name: "tcp4_allow",
        protocol: Protocol::Tcp,
        ipv4: true,
    },
    AllowSet {
        name: "tcp6_allow",
        protocol: Protocol::Tcp,
        ipv4: false,
    },
    AllowSet {
        name: "udp4_allow",
        protocol: Protocol::Udp,
        ipv4: true,
    },
    AllowSet {
        name: "udp6_allow",
        protocol: Protocol::Udp,
        ipv4: false,
    },
];

impl Ruleset {
    /// The ruleset of a folded firewall: its enabled rules. No firewall, or a
    /// deleted one, opens nothing.
    pub fn of(firewall: Option<&Firewall>) -> Self {
        let mut ruleset = Self::default();
        for rule in firewall
            .filter(|f| f.is_live())
            .into_iter()
            .flat_map(|f| f.rules())
            .filter(|r| r.spec.enabled)
        {
            ruleset.open(
                rule.spec.protocol,
                rule.spec.ports,
                rule.spec.sources.networks(),
            );
        }
        ruleset
    }

    /// This ruleset with `ports` also open to `networks` (to anywhere when
    /// empty), as an enabled rule opens them: a ruleset without a firewall,
    /// for tests and tools.
    pub fn opening(mut self, protocol: Protocol, ports: PortRange, networks: &[Cidr]) -> Self {
        self.open(protocol, ports, networks);
        self
    }

    fn open(&mut self, protocol: Protocol, ports: PortRange, networks: &[Cidr]) {
        if networks.is_empty() {
            self.ports_mut(protocol).insert(ports);
            return;
        }
        // The kernel refuses overlapping intervals: a network inside
        // another of the same list adds nothing and is left out.
        for network in networks {
            let covered = networks
                .iter()
                .any(|other| other != network && other.contains(network));
            if !covered {
                self.allowed.insert((protocol, *network, ports));
            }
        }
    }

    /// The `(network, ports)` elements of an allowlist set.
    pub fn allowed(&self, set: &AllowSet) -> BTreeSet<(Cidr, PortRange)> {
        self.allowed_in(set).collect()
    }

    /// [`Ruleset::allowed`] in its order, without collecting: the elements
    /// are sorted by protocol first, so one protocol's are in set order.
    fn allowed_in<'a>(&'a self, set: &'a AllowSet) -> impl Iterator<Item = (Cidr, PortRange)> + 'a {
        self.allowed
            .iter()
            .filter(|(protocol, network, _)| {
                *protocol == set.protocol && network.is_ipv4() == set.ipv4
            })
            .map(|(_, network, port)| (*network, *port))
    }

    /// What an instance holds before its first sync: the product's defaults
    /// (SSH, HTTP, HTTPS open), because every instance has a firewall on by default.
    pub fn defaults() -> Self {
        let mut ruleset = Self::default();
        for rule in default_rules().into_iter().filter(|r| r.enabled) {
            ruleset.ports_mut(rule.protocol).insert(rule.ports);
        }
        ruleset
    }

    /// The ports (and ranges) open to anywhere.
    pub fn ports(&self, protocol: Protocol) -> &BTreeSet<PortRange> {
        match protocol {
            Protocol::Tcp => &self.tcp,
            Protocol::Udp => &self.udp,
        }
    }

    fn ports_mut(&mut self, protocol: Protocol) -> &mut BTreeSet<PortRange> {
        match protocol {
            Protocol::Tcp => &mut self.tcp,
            Protocol::Udp => &mut self.udp,
        }
    }

    /// The table's full definition.
    pub fn render(&self, table: &TableName) -> String {
        let mut out = String::with_capacity(2048);
        // Writing into a String cannot fail.
        let _ = self.write_table(&mut out, table.as_str(), CURRENT);
        out
    }

    /// The table's text under `rendering`, written into `out`: the one
    /// renderer, whether the text is kept ([`Ruleset::render`]) or only
    /// hashed ([`Ruleset::hash`], which streams it into SHA-256 and keeps
    /// nothing).
    fn write_table(&self, out: &mut impl Write, table: &str, rendering: Rendering) -> fmt::Result {
        writeln!(out, "table inet {table} {{")?;
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            // Every element counts the packets it accepted (hit counts).
            write!(
                out,
                "  set {} {{\n    type inet_service;\n{}    counter;\n",
                set_name(protocol),
                if rendering.open_ranges {
                    "    flags interval;\n"
                } else {
                    ""
                }
            )?;
            write_elements(out, self.ports(protocol).iter())?;
            out.write_str("  }\n")?;
        }
        for set in &ALLOW_SETS {
            write!(
                out,
                "  set {} {{\n    type {} . inet_service;\n    flags interval;\n    counter;\n",
                set.name,
                set.address_type()
            )?;
            let elements = self
                .allowed_in(set)
                .map(|(network, ports)| Allowed(network, ports));
            write_elements(out, elements)?;
            out.write_str("  }\n")?;
        }
        for set in BLOCKED_SETS.iter().filter(|_| rendering.records_blocked) {
            write!(
                out,
                "  set {} {{\n    type {};\n    flags dynamic,timeout;\n    timeout {BLOCKED_TIMEOUT_SECS}s;\n    size {};\n    counter;\n  }}\n",
                set.name,
                set.key_type(),
                set.size
            )?;
        }
        out.write_str(concat!(
            "  chain input {\n",
            "    type filter hook input priority filter; policy drop;\n",
        ))?;
        out.write_str(rendering.input_accepts)?;
        out.write_str(concat!(
            // ICMP (1) and ICMPv6 (58) by number: names need /etc/protocols,
            // which minimal container images lack.
            "    meta l4proto { 1, 58 } accept\n",
            "    tcp dport @tcp_open accept\n",
            "    udp dport @udp_open accept\n",
        ))?;
        for set in &ALLOW_SETS {
            writeln!(
                out,
                "    {} . {} dport @{} accept",
                set.source_match(),
                set.protocol.name(),
                set.name
            )?;
        }
        // What reaches here is dropped by the policy: record it first.
        for set in BLOCKED_SETS.iter().filter(|_| rendering.records_blocked) {
            set.record_rule(out)?;
        }
        out.write_str("  }\n}\n")
    }

    /// SHA-256 (hex) of the table under its default name, as `rendering` drew it.
    fn hash_as(&self, rendering: Rendering) -> String {
        let mut sha = Sha256Writer(Sha256::new());
        // Writing into a hasher cannot fail.
        let _ = self.write_table(&mut sha, TableName::default().as_str(), rendering);
        hex(&sha.0.finalize())
    }

    /// One `nft -f` transaction that replaces the table, whether or not it
    /// exists (`flush table` would keep set elements, so the table is deleted).
    pub fn replace_script(&self, table: &TableName) -> String {
        let name = table.as_str();
        format!(
            "table inet {name}\ndelete table inet {name}\n{}",
            self.render(table)
        )
    }

    /// What changes from `from` to this ruleset, set by set (open ports
    /// first, then the allowlists, in the table's order), each set's
    /// removals before its additions: the one diff that both encodings of
    /// an update use (nft's text here, the enforcer's netlink batch).
    pub fn delta(&self, from: &Ruleset) -> Vec<SetDelta> {
        let mut deltas = Vec::new();
        let mut push = |set: &'static str, removed: Vec<Element>, added: Vec<Element>| {
            if !removed.is_empty() || !added.is_empty() {
                deltas.push(SetDelta {
                    set,
                    removed,
                    added,
                });
            }
        };
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let (old, new) = (from.ports(protocol), self.ports(protocol));
            push(
                set_name(protocol),
                old.difference(new).map(|p| Element::Ports(*p)).collect(),
                new.difference(old).map(|p| Element::Ports(*p)).collect(),
            );
        }
        for set in &ALLOW_SETS {
            let (old, new) = (from.allowed(set), self.allowed(set));
            let allowed = |(network, ports): &(Cidr, PortRange)| Element::Allowed(*network, *ports);
            push(
                set.name,
                old.difference(&new).map(allowed).collect(),
                new.difference(&old).map(allowed).collect(),
            );
        }
        deltas
    }

    /// [`Ruleset::delta`] as nft commands (`delete element`, `add element`),
    /// one transaction; `None` when nothing changes.
    pub fn delta_script(&self, from: &Ruleset, table: &TableName) -> Option<String> {
        let name = table.as_str();
        let mut out = String::new();
        for delta in self.delta(from) {
            for (verb, elements) in [("delete", &delta.removed), ("add", &delta.added)] {
                if !elements.is_empty() {
                    let elements: Vec<String> = elements.iter().map(Element::to_string).collect();
                    let _ = writeln!(
                        out,
                        "{verb} element inet {name} {} {{ {} }}",
                        delta.set,
                        elements.join(", ")
                    );
                }
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// Whether `hash` is this ruleset's [`Ruleset::hash`], or what an
    /// earlier version of this renderer made of it (a state file saved
    /// before an upgrade: its firewall is still good, and the next apply
    /// puts the current rendering in force).
    pub fn hash_matches(&self, hash: &str) -> bool {
        hash == self.hash()
            || EARLIER
                .iter()
                .any(|rendering| hash == self.hash_as(*rendering))
    }

    /// SHA-256 (hex) of the table rendered under its default name
    /// (`cassette`): what an ack reports the kernel holds. The name is fixed so
    /// that the rules service, which does not know an enforcer's `--table`,
    /// computes the same hash for the same revision.
    pub fn hash(&self) -> String {
        self.hash_as(CURRENT)
    }
}

/// The nftables set holding a protocol's open ports.
pub fn set_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp_open",
        Protocol::Udp => "udp_open",
    }
}

/// The element changes of one set (see [`Ruleset::delta`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDelta {
    pub set: &'static str,
    pub removed: Vec<Element>,
    pub added: Vec<Element>,
}

/// An element of one of the table's sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Element {
    /// A port or range of an open-port set (`inet_service`, intervals).
    Ports(PortRange),
    /// A `network . ports` element of an allowlist set (concatenated
    /// intervals).
    Allowed(Cidr, PortRange),
}

impl std::fmt::Display for Element {
    /// As nft writes it: `80`, `1000-2000`, `10.0.0.0/8 . 5432`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Element::Ports(ports) => write!(f, "{ports}"),
            Element::Allowed(network, ports) => write!(f, "{network} . {ports}"),
        }
    }
}

/// A set's `elements = { .. }` line, comma-separated; none for no elements.
fn write_elements<T: fmt::Display>(
    out: &mut impl Write,
    elements: impl Iterator<Item = T>,
) -> fmt::Result {
    let mut any = false;
    for element in elements {
        let before = if any { ", " } else { "    elements = { " };
        write!(out, "{before}{element}")?;
        any = true;
    }
    if any {
        out.write_str(" }\n")?;
    }
    Ok(())
}

/// An allowlist element as the table spells it: `network . ports`.
struct Allowed(Cidr, PortRange);

impl fmt::Display for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} . {}", self.0, self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash streams the text into SHA-256 without keeping it: it must
    /// be the hash of exactly the text `render` keeps.
    #[test]
    fn the_hash_is_the_sha256_of_the_rendered_table() {
        let network = |text| Cidr::parse(text).unwrap();
        let range = |first, last| PortRange::new(first, last).unwrap();
        let rulesets = [
            Ruleset::default(),
            Ruleset::defaults(),
            Ruleset::defaults()
                .opening(Protocol::Udp, range(27015, 27030), &[])
                .opening(Protocol::Tcp, range(8080, 8080), &[]),
            Ruleset::default()
                .opening(
                    Protocol::Tcp,
                    range(5432, 5432),
                    &[network("10.0.0.0/8"), network("2001:db8::/32")],
                )
                .opening(Protocol::Udp, range(53, 53), &[network("192.168.1.7")])
                .opening(Protocol::Udp, range(60000, 61000), &[network("fd00::/8")]),
        ];
        for ruleset in rulesets {
            let text = ruleset.render(&TableName::default());
            assert_eq!(
                ruleset.hash(),
                hex(&Sha256::digest(text.as_bytes())),
                "{text}"
            );
        }
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }

    #[test]
    fn a_hash_an_earlier_renderer_made_still_matches() {
        let defaults = Ruleset::defaults();
        // The defaults' hash before open connections were checked per packet.
        let earlier = "cac72fa77a1e98156cb1ab00d49964033a8df9d8f9cd42c39aa33c4a2d4d3feb";
        assert_ne!(defaults.hash(), earlier);
        assert!(defaults.hash_matches(earlier));
        // Before the table recorded what it dropped, and before it held ranges.
        for earlier in [
            "4a32d6287fd351da34129be8f0e2e27ffe7fcc688ee64b37fde55d2ef05b5baa",
            "a3aad04ce79c7555ad23a8516ae84674c71583fceeace540b8d1badc231ba04f",
        ] {
            assert_ne!(defaults.hash(), earlier);
            assert!(defaults.hash_matches(earlier));
        }
        assert!(defaults.hash_matches(&defaults.hash()));
        assert!(!defaults.hash_matches(&"0".repeat(64)));
        assert!(
            !Ruleset::default().hash_matches(earlier),
            "another ruleset's"
        );
    }

    #[test]
    fn what_the_chain_drops_it_records_first_in_bounded_sets() {
        let text = Ruleset::defaults().render(&TableName::default());
        assert!(text.contains("  set blocked_ports {\n    type inet_proto . inet_service;\n    flags dynamic,timeout;\n    timeout 3600s;\n    size 4096;\n    counter;\n  }\n"), "{text}");
        assert!(text.contains("    meta l4proto { 6, 17 } ct state new meta nfproto ipv6 update @blocked6 { meta l4proto . th dport . ip6 saddr }\n  }\n}\n"), "{text}");
        let accepts = text.rfind(" accept\n").unwrap();
        let records = text.find("update @blocked_ports").unwrap();
        assert!(accepts < records, "records only what no rule accepted");
    }

    #[test]
    fn only_replies_to_the_instances_own_connections_skip_the_port_checks() {
        let text = Ruleset::defaults().render(&TableName::default());
        assert!(text.contains("ct direction reply ct state established accept"));
        assert!(!text.contains("ct state established,related accept"));
    }

    fn port(port: u16) -> PortRange {
        PortRange::single(cassette_model::Port::new(u32::from(port)).unwrap())
    }

    fn ruleset(tcp: &[u16], udp: &[u16]) -> Ruleset {
        Ruleset {
            tcp: tcp.iter().map(|p| port(*p)).collect(),
            udp: udp.iter().map(|p| port(*p)).collect(),
            allowed: BTreeSet::new(),
        }
    }

    #[test]
    fn defaults_open_ssh_http_https() {
        assert_eq!(Ruleset::defaults(), ruleset(&[22, 80, 443], &[]));
        assert_eq!(Ruleset::of(None), ruleset(&[], &[]));
    }

    #[test]
    fn render_is_the_designed_table() {
        let text = ruleset(&[22, 5432], &[]).render(&TableName::default());
        assert!(text.starts_with("table inet cassette {\n  set tcp_open {\n    type inet_service;\n    flags interval;\n    counter;\n    elements = { 22, 5432 }\n  }\n  set udp_open {\n    type inet_service;\n    flags interval;\n    counter;\n  }\n"), "{text}");
        assert!(text.contains("policy drop;"));
        assert!(text.contains("udp dport @udp_open accept"));
    }

    #[test]
    fn ranges_are_interval_elements_open_or_allowlisted() {
        let range = PortRange::new(27015, 27030).unwrap();
        let mut to = ruleset(&[22], &[]);
        to.udp.insert(range);
        to.allowed
            .insert((Protocol::Tcp, Cidr::parse("10.0.0.0/8").unwrap(), range));
        let text = to.render(&TableName::default());
        assert!(text.contains("elements = { 27015-27030 }"), "{text}");
        assert!(
            text.contains("elements = { 10.0.0.0/8 . 27015-27030 }"),
            "{text}"
        );
        assert_eq!(
            ruleset(&[22], &[])
                .delta_script(&to, &TableName::default())
                .unwrap(),
            "delete element inet cassette udp_open { 27015-27030 }\n\
             delete element inet cassette tcp4_allow { 10.0.0.0/8 . 27015-27030 }\n"
        );
    }

    #[test]
    fn delta_adds_and_deletes_elements_only() {
        let table = TableName::default();
        let from = ruleset(&[22, 80], &[53]);
        let to = ruleset(&[22, 5432], &[]);
        assert_eq!(
            to.delta_script(&from, &table).unwrap(),
            "delete element inet cassette tcp_open { 80 }\n\
             add element inet cassette tcp_open { 5432 }\n\
             delete element inet cassette udp_open { 53 }\n"
        );
        assert_eq!(to.delta_script(&to, &table), None);
    }

    #[test]
    fn replace_script_creates_deletes_and_defines() {
        let script = Ruleset::defaults().replace_script(&TableName::parse("fw").unwrap());
        assert!(script.starts_with("table inet fw\ndelete table inet fw\ntable inet fw {\n"));
    }

    #[test]
    fn table_names_are_identifiers() {
        assert!(TableName::parse("cassette_2").is_ok());
        for bad in ["", "2x", "Cassette", "a-b", "a b"] {
            assert!(TableName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hash_tracks_content() {
        assert_eq!(Ruleset::defaults().hash(), Ruleset::defaults().hash());
        assert_ne!(Ruleset::defaults().hash(), Ruleset::of(None).hash());
        assert_eq!(Ruleset::defaults().hash().len(), 64);
    }

    #[test]
    fn allowlists_are_source_port_elements_per_family() {
        let net = |s: &str| Cidr::parse(s).unwrap();
        let mut to = ruleset(&[22], &[]);
        to.allowed
            .insert((Protocol::Tcp, net("203.0.113.0/24"), port(5432)));
        to.allowed
            .insert((Protocol::Tcp, net("2001:db8::/32"), port(5432)));
        to.allowed
            .insert((Protocol::Udp, net("192.0.2.7"), port(53)));
        let text = to.render(&TableName::default());
        assert!(text.contains("  set tcp4_allow {\n    type ipv4_addr . inet_service;\n    flags interval;\n    counter;\n    elements = { 203.0.113.0/24 . 5432 }\n  }\n"), "{text}");
        assert!(
            text.contains("elements = { 2001:db8::/32 . 5432 }"),
            "{text}"
        );
        assert!(text.contains("elements = { 192.0.2.7/32 . 53 }"), "{text}");
        assert!(
            text.contains("    ip6 saddr . tcp dport @tcp6_allow accept\n"),
            "{text}"
        );
        assert!(
            text.contains("    ip saddr . udp dport @udp4_allow accept\n"),
            "{text}"
        );

        let from = ruleset(&[22, 5432], &[]);
        assert_eq!(
            to.delta_script(&from, &TableName::default()).unwrap(),
            "delete element inet cassette tcp_open { 5432 }\n\
             add element inet cassette tcp4_allow { 203.0.113.0/24 . 5432 }\n\
             add element inet cassette tcp6_allow { 2001:db8::/32 . 5432 }\n\
             add element inet cassette udp4_allow { 192.0.2.7/32 . 53 }\n"
        );
        assert_ne!(to.hash(), from.hash());
    }
}
