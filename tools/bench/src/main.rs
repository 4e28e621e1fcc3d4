//! `cassette-bench`: measures the system and prints numbers, ending each run
//! with one JSON line of results. Nothing here asserts a target: targets are
//! compared by people, on the machine at hand.

// Measured: the same allocator as the services use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod append;
mod e2e;
mod fanout;
mod lag;
mod procs;
mod replay;
mod signing;
mod stats;
mod tls;

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
    /// (root) Call -> nftables in a network namespace -> ack, and one nft process call.
    E2e(e2e::Options),
    /// Many simulated enforcers on one rules service: ack latency and memory.
    Fanout(fanout::Options),
    /// Two replicas on one etcd log: commit through A -> visible on B.
    Lag(lag::Options),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let results = match Args::parse().bench {
        Bench::Append(options) => append::run(options).await?,
        Bench::Replay(options) => replay::run(options).await?,
        Bench::E2e(options) => e2e::run(options).await?,
        Bench::Fanout(options) => fanout::run(options).await?,
        Bench::Lag(options) => lag::run(options).await?,
    };
    println!("{results}");
    Ok(())
}
