//! The process's command line: the serving flags, and the offline commands
//! (`audit` over a stopped service's log, `log` to repair it, `pki` for a
//! development PKI, `health` for scripts).

pub mod audit;
pub mod flags;
pub mod health;
pub mod log;
pub mod pki;
