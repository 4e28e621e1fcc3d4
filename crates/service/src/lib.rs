//! The rules service's application, without any transport: what the gRPC
//! handlers and the console call, in model types.
//!
//! - [`Store`]: the log opened from one [`LogConfig`] (sled or etcd), replayed
//!   into the projection; the single writer that decides, appends and
//!   publishes; reads from memory.
//! - [`replay`]: history by replay (an instance's firewall at a revision or a
//!   time, diffs, filtered reads of the log), with the one fold and renderer.
//! - [`sync`]: what each instance's enforcers acknowledged, and the
//!   per-instance wake-ups behind sync streams and WaitForSync; `peers`
//!   shares it between replicas of one shared log.
//! - `deadlines`: what the service does on time by itself, through the
//!   writer: rules expired, unconfirmed changes reverted.
//! - `traffic`: unconfirmed changes that accepted traffic proves (`confirm_on_traffic`).
//! - `snapshots`: the projection written now and then as a snapshot of the
//!   sled log's directory, so that start-up replays only the log after it.
//! - [`limits`]: caps on what one caller may hold; [`RulesMetrics`].
//!
//! Cargo keeps the doors out: this crate depends on no gRPC, HTTP or
//! protobuf crate, so protobuf types cannot leak in.

pub mod blocked;
mod deadlines;
mod error;
pub mod limits;
pub mod metrics;
mod mutation;
pub mod peers;
mod projection;
pub mod replay;
mod snapshots;
pub mod store;
pub mod sync;
mod traffic;
mod writer;

pub use deadlines::run as run_deadlines;
pub use error::{Halt, StoreError};
pub use limits::{LimitReached, Limits, Slot, Slots};
pub use metrics::RulesMetrics;
pub use mutation::{ConfirmWithin, Mutation};
pub use projection::Deadline;
pub use snapshots::SnapshotPolicy;
pub use store::{LogConfig, LogStore, OpenStats, Store};
pub use traffic::record_report;

#[cfg(test)]
mod tests;
