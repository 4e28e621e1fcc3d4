//! End-to-end tests, one binary (each test binary links everything).
//!
//! - `allowlist`: source allowlists: validation, replacement, audit, real traffic (root).
//! - `apply`: ApplyFirewall: the preview with its impact, a stale revision,
//!   one revision and one transaction under a stream of connections (root).
//! - `api`: every semantic rule of FirewallService through the generated client.
//! - `auth`: identity and authorization over real TLS: the attack table.
//! - `blocked`: what the firewall dropped, from real traffic: counts, sources,
//!   causes, a scan of every port (root).
//! - `cli`: the `cassette` command line: every command, its errors and exit codes.
//! - `connections`: bounded connections: silent ones by the thousand, idle ones, slow headers.
//! - `confirm`: changes that undo themselves unless confirmed: validation,
//!   one revert across kill -9, SSH opening again by itself (root).
//! - `console`: the Firewall page in a real browser (chromium), and its JSON API.
//! - `audit`: AuditService and the offline audit commands, tampering included.
//! - `durability`: the real binary, `kill -9` mid-write, restart, gapless log.
//! - `etcd`: the event log on a real three-member etcd cluster: races, member loss, no quorum.
//! - `expiry`: expiring rules: validation, RuleExpired once, across restarts, real traffic.
//! - `faults`: fsync per acknowledged batch (under strace), a log that cannot be written.
//! - `history`: a Jepsen-style history of concurrent changes through replicas in
//!   namespaces under nftables partitions, and its checker (root, etcd).
//! - `kernel`: the enforcer against real nftables in network namespaces (root).
//! - `state`: the enforcer's saved state: reboots without the control plane,
//!   untrusted state files, restarts that replay nothing (root), restored logs.
//! - `sync`: EnforcerService.Sync with raw streams: fan-out, backpressure, acks.
//! - `ranges`: port ranges: validation, overlaps, both ends open and nothing
//!   beyond in a real kernel, the CLI (root).
//! - `readme`: every grpcurl example of README.md, run against the real binary.
//! - `replicas`: several rules replicas on one etcd-backed log.

mod allowlist;
mod api;
mod apply;
mod audit;
mod auth;
mod blocked;
mod cli;
mod confirm;
mod connections;
mod console;
mod durability;
mod etcd;
mod expiry;
mod faults;
mod history;
mod kernel;
mod ranges;
mod readme;
mod replicas;
mod signed;
mod state;
mod sync;
mod tidy;
