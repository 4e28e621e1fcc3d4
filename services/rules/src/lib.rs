//! The rules service's doors and process: `cassette.firewall.v1`'s
//! FirewallService, EnforcerService and AuditService over gRPC (with server
//! reflection, v1 and v1alpha, and `grpc.health.v1.Health`), and the
//! console (the Firewall page and its JSON API), onto the application in
//! `cassette-service`.
//!
//! The binary only parses flags, sets up tracing, binds and calls
//! [`RulesService::serve`]; tests and benchmarks call the same code on
//! `127.0.0.1:0`.

pub mod connections;
pub mod console;
pub mod grpc;
pub mod replicas;
mod server;
pub mod tls;

pub use cassette_service::{
    Limits, LogConfig, LogStore, OpenStats, RulesMetrics, SnapshotPolicy, Store, StoreError,
};
pub use grpc::requests;
pub use grpc::status::Violations;
pub use grpc::{AuditApi, EnforcerApi, FirewallApi};
pub use server::{
    ConnectionFlags, Listener, RulesService, Security, ServeError, DEFAULT_SHUTDOWN_GRACE,
};
pub use tls::{ServerTls, TlsError, TlsFiles};
