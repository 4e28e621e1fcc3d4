//! `cassette-bench`: measures the system and prints numbers, ending each run
//! with one JSON line of results. Nothing here asserts a target: targets are
//! compared by people, on the machine at hand.

// Measured: the same allocator as the services use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod append;
mod replay;
mod stats;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "cassette-firewall benchmarks (one JSON line of results per run)"
)]
struct Args {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Durable AddRule/UpdateRule throughput and latency through the real gRPC service.
    Append(append::Options),
    /// Time from start to serving for a log of a given size.
    Replay(replay::Options),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let results = match Args::parse().bench {
        Bench::Append(options) => append::run(options).await?,
        Bench::Replay(options) => replay::run(options).await?,
    };
    println!("{results}");
    Ok(())
}
