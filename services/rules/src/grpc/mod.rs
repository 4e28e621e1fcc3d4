//! The gRPC doors: the services' handlers (firewall, enforcer, audit, and
//! what replicas share with each other), the interceptor that
//! authenticates every call, request validation into model commands
//! (`requests`), the one error mapping (`status`), the presentation of
//! model answers as protobuf (`present`), and the one wait for an enforcer's
//! acknowledgement (`waiting`). Protobuf types stop here.

pub mod audit;
pub mod caller;
mod diagnose;
pub mod enforcer;
pub mod firewall;
pub mod present;
pub mod replica;
pub mod requests;
pub mod status;
mod waiting;

pub use audit::AuditApi;
pub use enforcer::EnforcerApi;
pub use firewall::FirewallApi;
pub use replica::ReplicaApi;
