//! The enforcer's core: keep one instance's kernel in step with its event
//! stream, and acknowledge what is really in force.
//!
//! The kernel is behind [`Kernel`], so the same loop drives nftables (the
//! `cassette-nft` crate, GPL because it loads libnftables), a file (dry runs),
//! or memory (load tests of many simulated enforcers).

mod backends;
mod enforcer;
mod listening;
mod metrics;
mod report;
mod state;

pub use backends::{FileKernel, MemoryKernel};
pub use enforcer::{ClientTls, Config, Enforcer};
pub use listening::{instance_sockets, Listening, Sockets};
pub use metrics::EnforcerMetrics;
pub use state::{Saved, Saving, StateError, StateFile, StatePaths};

use cassette_model::{Cidr, Protocol};
use cassette_ruleset::Ruleset;

/// Why a kernel operation failed: the backend's own message (nft's, verbatim).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KernelError(pub String);

/// A place a ruleset can be put in force. Calls may block; the enforcer runs
/// them off the async runtime.
pub trait Kernel: Send + 'static {
    /// Whether a call may block (a netlink round trip, a file's fsync): the
    /// enforcer then runs it on the blocking pool, off its one runtime
    /// thread. A table in memory answers at once and is called in place.
    const BLOCKS: bool = true;

    /// Whether the table exists at all.
    fn exists(&mut self) -> Result<bool, KernelError>;

    /// Replaces the whole table with `ruleset` in one transaction.
    fn replace(&mut self, ruleset: &Ruleset) -> Result<(), KernelError>;

    /// Turns the table from `from` (what it holds) into `to` in one transaction.
    fn update(&mut self, from: &Ruleset, to: &Ruleset) -> Result<(), KernelError> {
        let _ = from;
        self.replace(to)
    }

    /// Whether [`Kernel::update`] is, as the backend stands, one short
    /// transaction the kernel answers while the call waits (no disk, no
    /// process to start). The enforcer then makes updates in place on its
    /// runtime thread: handing one to the blocking pool and back costs more
    /// than the update itself (0.14 ms against 0.04 ms for one netlink
    /// element change on the project's VM). Replaces, reads and counters
    /// stay off the runtime when [`Kernel::BLOCKS`].
    fn quick_updates(&self) -> bool {
        !Self::BLOCKS
    }

    /// Reads the table back: does it hold exactly `ruleset`, and nothing else?
    fn holds(&mut self, ruleset: &Ruleset) -> Result<bool, KernelError>;

    /// What the table counts: the packets each open port (and each
    /// allowlist element) has accepted since it was put in the table, and
    /// the attempts it recorded dropping; `None` when the backend counts
    /// nothing (or there is no table).
    fn counters(&mut self) -> Result<Option<Counters>, KernelError> {
        Ok(None)
    }
}

/// One reading of a table's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub hits: Vec<Hits>,
    /// The kernel's record of dropped attempts; `None` when the table keeps
    /// none.
    pub dropped: Option<Vec<Dropped>>,
}

/// A record the kernel keeps of new connections it dropped (for an hour
/// after the last): to a protocol and port from anywhere (`source: None`),
/// or from one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dropped {
    pub protocol: Protocol,
    pub port: u16,
    pub source: Option<std::net::IpAddr>,
    pub attempts: u64,
    /// The latest attempt (to the second: the kernel says when the record
    /// expires).
    pub last: std::time::SystemTime,
}

/// One element's packet counter: a port open to anywhere (`source: None`) or
/// an allowlist entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hits {
    pub protocol: Protocol,
    /// One port, or a range.
    pub ports: cassette_model::PortRange,
    pub source: Option<Cidr>,
    pub packets: u64,
}
