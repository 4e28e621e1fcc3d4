//! Compiles proto/ with protox (pure Rust: no system protoc needed) and
//! generates messages, clients and servers with tonic-prost-build. The encoded
//! descriptor set is kept for gRPC server reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "cassette/firewall/v1/firewall.proto",
    "cassette/firewall/v1/events.proto",
    "cassette/firewall/v1/enforcer.proto",
    "cassette/firewall/v1/audit.proto",
    "cassette/firewall/v1/snapshot.proto",
    "cassette/firewall/v1/replica.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let descriptors = protox::compile(PROTOS, [&root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("cassette_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Small first buffers for every call (see `codec.rs`).
        .codec_path("crate::LeanCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
