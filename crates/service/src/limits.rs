//! Server limits: message size, streams per connection, and per-principal
//! caps on long-lived calls (ListEvents follow streams, WaitForSync waiters),
//! so one caller cannot exhaust the service for everyone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A per-principal cap (follow streams, WaitForSync waiters) is reached.
#[derive(Debug, thiserror::Error)]
#[error("{principal} already has {limit} open {what}: close one first (RESOURCE_EXHAUSTED)")]
pub struct LimitReached {
    pub what: &'static str,
    pub limit: usize,
    pub principal: String,
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request message decoded, in bytes.
    pub max_message_bytes: usize,
    /// HTTP/2 streams one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// ListEvents streams with `follow` one principal may hold open.
    pub max_follow_streams_per_principal: usize,
    /// WaitForSync calls one principal may have waiting.
    pub max_waiters_per_principal: usize,
    /// A ListFirewalls page stops before it grows past this many bytes
    /// (always with at least one firewall, so a reader makes progress).
    pub max_list_page_bytes: usize,
    /// HTTP/2 pings to every client, and how long one may go unanswered
    /// before the connection (and its sync streams) is dropped as dead.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 1 << 20,
            max_concurrent_streams: 1024,
            max_follow_streams_per_principal: 64,
            max_waiters_per_principal: 1024,
            // Well under the 4 MiB most gRPC clients accept by default.
            max_list_page_bytes: 2 << 20,
            // A dead enforcer is noticed within 15 s.
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

/// Counts what each principal holds of one kind of resource.
pub struct Slots {
    what: &'static str,
    limit: usize,
    held: Mutex<HashMap<String, usize>>,
}

/// One held slot, released on drop.
pub struct Slot {
    slots: Arc<Slots>,
    principal: String,
}

impl Slots {
    pub fn new(what: &'static str, limit: usize) -> Arc<Self> {
        Arc::new(Self {
            what,
            limit,
            held: Mutex::default(),
        })
    }

    pub fn acquire(self: &Arc<Self>, principal: &str) -> Result<Slot, LimitReached> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(principal.to_owned()).or_default();
        if *count >= self.limit {
            return Err(LimitReached {
                what: self.what,
                limit: self.limit,
                principal: principal.to_owned(),
            });
        }
        *count += 1;
        Ok(Slot {
            slots: self.clone(),
            principal: principal.to_owned(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.principal) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.principal);
            }
        }
    }
}
