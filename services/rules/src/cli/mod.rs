//! The process's command line: the serving flags, and the offline commands
//! (`audit` over a stopped service's log, `log` to repair it, `pki` for a
//! development PKI, `health` for scripts).

pub mod audit;
pub mod flags;
pub mod health;
pub mod log;
pub mod pki;

use std::path::Path;

use anyhow::{bail, Context};
use cassette_eventlog::EventLog;

/// The sled log in `dir`, for an offline command: refused where there is
/// none (opening would create one, and these commands never write a log
/// into being), and when a running service holds it (`held` says what to do).
pub fn open_existing(dir: &Path, held: &str) -> anyhow::Result<EventLog> {
    if !EventLog::exists(dir) {
        bail!("{} holds no event log", dir.display());
    }
    EventLog::open(dir).with_context(|| format!("cannot open {} ({held})", dir.display()))
}
