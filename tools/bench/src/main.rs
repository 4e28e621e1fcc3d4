//! `cassette-bench`: measures the system and prints numbers, ending each run
//! with one JSON line of results. Nothing here asserts a target: targets are
//! compared by people, on the machine at hand.

// Measured: the same allocator as the services use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod append;
mod cpu;
mod disk;
mod e2e;
mod fanout;
mod idle;
mod lag;
mod plot;
mod procs;
mod replay;
mod signing;
mod stats;
mod tls;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "cassette-firewall benchmarks (one JSON line of results per run, and an SVG of its latency distribution)"
)]
struct Args {
    #[command(subcommand)]
    bench: Bench,
    /// Where the run's latency plot goes (default: `<plot-dir>/<bench>-<unix time>.svg`).
    #[arg(long, global = true)]
    plot: Option<PathBuf>,
    #[arg(long, global = true, default_value = "target/bench")]
    plot_dir: PathBuf,
    /// Draw no plot.
    #[arg(long, global = true, conflicts_with = "plot")]
    no_plot: bool,
    /// (root) Hold the machine's CPU latency request at 0 for the run
    /// (`/dev/cpu_dma_latency`): idle cores poll instead of halting, so a
    /// thread woken on one is not first a hypervisor exit. A machine setting
    /// (tuned's latency-performance profile makes it), for comparison; the
    /// services never make it.
    #[arg(long, global = true)]
    idle_poll: bool,
}

/// What a run measured: its JSON line, and the latency samples it plots.
pub struct Report {
    json: serde_json::Value,
    series: Vec<plot::Series>,
}

impl Report {
    pub fn new(json: serde_json::Value) -> Self {
        Self {
            json,
            series: Vec::new(),
        }
    }

    pub fn series(mut self, series: plot::Series) -> Self {
        self.series.push(series);
        self
    }
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
    /// The disk's cost of the durable writes one change makes (no service).
    Disk(disk::Options),
    /// The cores' cost of the work one change is made of: computing, waking
    /// a thread, a loopback round trip (no service).
    Cpu(cpu::Options),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let idle_poll = if args.idle_poll {
        Some(idle::poll()?)
    } else {
        None
    };
    let mut report = match args.bench {
        Bench::Append(options) => append::run(options).await?,
        Bench::Replay(options) => replay::run(options).await?,
        Bench::E2e(options) => e2e::run(options).await?,
        Bench::Fanout(options) => fanout::run(options).await?,
        Bench::Lag(options) => lag::run(options).await?,
        Bench::Disk(options) => disk::run(options).await?,
        Bench::Cpu(options) => cpu::run(options).await?,
    };
    drop(idle_poll);
    if args.idle_poll {
        report.json["idle_poll"] = true.into();
    }
    let name = report.json["bench"].as_str().unwrap_or("bench").to_owned();
    if !args.no_plot && !report.series.is_empty() {
        let path = args.plot.unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            args.plot_dir.join(format!("{name}-{}.svg", now.as_secs()))
        });
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        plot::latency_svg(&path, &format!("cassette-bench {name}"), &mut report.series)?;
        report.json["plot"] = path.display().to_string().into();
    }
    println!("{}", report.json);
    Ok(())
}
