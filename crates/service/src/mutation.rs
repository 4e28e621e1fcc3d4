//! A change someone asked for, as the writer takes it.

use std::time::Duration;

use cassette_model::{ActorId, Command, InstanceId, RequestDigest, RequestId};

/// A change someone asked for.
#[derive(Debug, Clone)]
pub struct Mutation {
    pub instance_id: InstanceId,
    pub command: Command,
    pub request_id: Option<RequestId>,
    /// What the request with `request_id` asked for (see [`RequestDigest`]).
    pub request_digest: Option<RequestDigest>,
    pub expected_revision: Option<u64>,
    pub actor: ActorId,
    /// The end user a delegate actor acts for.
    pub on_behalf_of: Option<ActorId>,
    /// Undo the change unless it is confirmed within this window.
    pub confirm: Option<ConfirmWithin>,
}

/// A change's confirmation window (checked: 1 s to 24 h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfirmWithin {
    pub within: Duration,
    /// A new connection accepted through a rule it touched confirms it.
    pub on_traffic: bool,
}
