//! The public gRPC contract, package `cassette.firewall.v1`: generated
//! messages, clients and servers, the descriptor set for server reflection, and
//! the conversions between these wire types and the model's types.
//!
//! Prost types stop here: crates past this edge speak `cassette_model`.

mod codec;
mod convert;
mod describe;
mod flags;
#[cfg(feature = "json")]
mod json;
mod target;

/// Generated from `proto/cassette/firewall/v1/*.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("cassette.firewall.v1");
}

pub use codec::LeanCodec;
pub use convert::{
    event_from_pb, event_to_pb, event_to_record, firewall_from_pb, firewall_from_saved,
    firewall_to_pb, port_range_to_pb, protocol_from_pb, protocol_to_pb, rule_spec_to_pb,
    rule_to_pb, sources_to_pb, unconfirmed_to_saved, warning_to_pb, RecordEncoding,
    NOT_YET_ACKNOWLEDGED,
};

pub use describe::{describe_event, EVENT_COLUMNS};
pub use flags::parse_duration;
pub mod stdout;
#[cfg(feature = "json")]
pub use json::{JsonError, ProtoJson};
pub use target::{stays_private, Keepalive, Target, TargetError};

/// The encoded `FileDescriptorSet` of every proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cassette_descriptor.bin"));

/// The fully qualified service names, as health checks and reflection name them.
pub const FIREWALL_SERVICE: &str = "cassette.firewall.v1.FirewallService";
