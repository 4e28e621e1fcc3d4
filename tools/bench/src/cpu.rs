//! `cpu`: what the cores under the benchmarks charge for the three kinds of
//! work one change is made of, with no service at all: computing (encoding
//! and decoding a firewall's protobuf, as every answer and stream message
//! does), waking another thread (a task handed from one thread to another,
//! as every commit, stream message and ack is), and a loopback TCP round
//! trip (every call and every ack crosses the kernel's network path twice).
//!
//! On a shared VM these move with the hour, by half again or more, and the
//! fanout's CPU per change moves with them: printed beside the other
//! benchmarks (as `disk` is for the disk), they tell a slower run from a
//! slower machine.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cassette_proto::pb;
use prost::Message;
use serde_json::json;

use crate::plot::Series;
use crate::stats::percentile_ms;
use crate::Report;

/// The size of a message on the loopback: about one change's request.
const MESSAGE: usize = 128;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Samples per probe.
    #[arg(long, default_value_t = 20_000)]
    samples: u32,
}

pub async fn run(options: Options) -> anyhow::Result<Report> {
    let samples = options.samples.max(1);
    tokio::task::spawn_blocking(move || measure(samples)).await?
}

fn measure(samples: u32) -> anyhow::Result<Report> {
    let mut encode = protobuf(samples)?;
    let (mut wake, wake_cpu) = cpu_per_sample(samples, || wake_round_trips(samples))?;
    let (mut loopback, loopback_cpu) = cpu_per_sample(samples, || loopback_round_trips(samples))?;
    let summary = |samples: &mut Vec<Duration>, cpu: Option<f64>| {
        let mut summary = json!({
            "p50_us": micros(percentile_ms(samples, 50.0)),
            "p99_us": micros(percentile_ms(samples, 99.0)),
        });
        if let Some(cpu) = cpu {
            summary["cpu_us"] = micros(cpu * 1000.0).into();
        }
        summary
    };
    let json = json!({
        "bench": "cpu",
        "samples": samples,
        "protobuf_encode_decode": summary(&mut encode, None),
        "thread_wake_round_trip": summary(&mut wake, Some(wake_cpu)),
        "loopback_tcp_round_trip": summary(&mut loopback, Some(loopback_cpu)),
    });
    Ok(Report::new(json)
        .series(Series::new("encode + decode a firewall (protobuf)", encode))
        .series(Series::new("wake another thread and back", wake))
        .series(Series::new(
            "loopback TCP round trip (128 bytes each way)",
            loopback,
        )))
}

/// Milliseconds as microseconds, to two decimals.
fn micros(ms: f64) -> f64 {
    (ms * 100_000.0).round() / 100.0
}

/// Runs `probe` and returns its samples with the process's CPU seconds per
/// sample (both sides of a round trip are this process's threads).
fn cpu_per_sample(
    samples: u32,
    probe: impl FnOnce() -> anyhow::Result<Vec<Duration>>,
) -> anyhow::Result<(Vec<Duration>, f64)> {
    let before = process_cpu_seconds()?;
    let measured = probe()?;
    let used = process_cpu_seconds()? - before;
    Ok((measured, used / f64::from(samples)))
}

/// The CPU time of this process's threads, to the nanosecond (`/proc`'s
/// counts are in ticks of 10 ms).
fn process_cpu_seconds() -> anyhow::Result<f64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a plain system call writing into `now`, which outlives it.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    if ret != 0 {
        return Err(std::io::Error::last_os_error()).context("clock_gettime");
    }
    Ok(now.tv_sec as f64 + now.tv_nsec as f64 / 1e9)
}

/// Encodes and decodes an answer to a change: a firewall with the default
/// rules and a custom one, its sync state and times.
fn protobuf(samples: u32) -> anyhow::Result<Vec<Duration>> {
    let time = Some(prost_types::Timestamp {
        seconds: 1_796_000_000,
        nanos: 123_456_789,
    });
    let rule = |id: &str, port: u32, description: &str| pb::Rule {
        id: id.into(),
        port,
        protocol: pb::Protocol::Tcp as i32,
        description: description.into(),
        enabled: true,
        is_default: id.starts_with("default-"),
        revision: 7,
        create_time: time,
        update_time: time,
        status: pb::RuleStatus::Applied as i32,
        ..Default::default()
    };
    let firewall = pb::Firewall {
        instance_id: "fan-12345".into(),
        revision: 42,
        rules: vec![
            rule("default-ssh", 22, "SSH"),
            rule("default-http", 80, "HTTP"),
            rule("default-https", 443, "HTTPS"),
            rule("r-0192f3a4b5c6", 5432, "PostgreSQL"),
        ],
        create_time: time,
        update_time: time,
        sync: Some(pb::SyncStatus {
            enforcer_connected: true,
            applied_revision: 42,
            latest_revision: 42,
            last_ack_time: time,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut buffer = Vec::with_capacity(firewall.encoded_len());
    let mut measured = Vec::with_capacity(samples as usize);
    for _ in 0..samples {
        let started = Instant::now();
        buffer.clear();
        firewall.encode(&mut buffer)?;
        let decoded = pb::Firewall::decode(buffer.as_slice())?;
        measured.push(started.elapsed());
        anyhow::ensure!(
            decoded.revision == firewall.revision,
            "decoded a different firewall"
        );
    }
    Ok(measured)
}

/// One thread hands a token to another, which hands it back: two wake-ups
/// of a parked thread per sample.
///
/// Each side waits with `std::thread::park`, a futex wait with no spinning
/// first, as a tokio worker with nothing to do parks. (`std::sync::mpsc`'s
/// receiver spins and yields before it sleeps, and on a quiet host the
/// token comes back while it still spins: that measured a busy thread's
/// hand-off, not a wake-up.)
fn wake_round_trips(samples: u32) -> anyhow::Result<Vec<Duration>> {
    /// The peer is told to end with this token.
    const END: u32 = u32::MAX;
    // Tokens start at 1: 0 is "nothing handed yet".
    let ping = Arc::new(AtomicU32::new(0));
    let pong = Arc::new(AtomicU32::new(0));
    let here = std::thread::current();
    let peer = {
        let (ping, pong) = (ping.clone(), pong.clone());
        std::thread::Builder::new()
            .name("cpu-bench-wake".into())
            .spawn(move || {
                let mut last = 0;
                loop {
                    let token = wait_for_change(&ping, last);
                    if token == END {
                        return;
                    }
                    last = token;
                    pong.store(token, Ordering::Release);
                    here.unpark();
                }
            })?
    };
    let mut measured = Vec::with_capacity(samples as usize);
    for token in 1..=samples.min(END - 1) {
        let started = Instant::now();
        ping.store(token, Ordering::Release);
        peer.thread().unpark();
        let back = wait_for_change(&pong, token - 1);
        measured.push(started.elapsed());
        anyhow::ensure!(back == token, "a token came back out of order");
    }
    ping.store(END, Ordering::Release);
    peer.thread().unpark();
    peer.join()
        .map_err(|_| anyhow::anyhow!("the woken thread panicked"))?;
    Ok(measured)
}

/// Parks until `slot` holds something other than `last`, and returns it.
/// (`park` may return before an `unpark`; the loop looks again.)
fn wait_for_change(slot: &AtomicU32, last: u32) -> u32 {
    loop {
        let now = slot.load(Ordering::Acquire);
        if now != last {
            return now;
        }
        std::thread::park();
    }
}

/// A message to an echo thread over loopback TCP (no Nagle) and back.
fn loopback_round_trips(samples: u32) -> anyhow::Result<Vec<Duration>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let echo = std::thread::Builder::new()
        .name("cpu-bench-echo".into())
        .spawn(move || -> std::io::Result<()> {
            let (mut stream, _) = listener.accept()?;
            stream.set_nodelay(true)?;
            let mut message = [0u8; MESSAGE];
            loop {
                match stream.read_exact(&mut message) {
                    Ok(()) => stream.write_all(&message)?,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        })?;
    let mut stream = TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut message = [0x5au8; MESSAGE];
    let mut measured = Vec::with_capacity(samples as usize);
    for _ in 0..samples {
        let started = Instant::now();
        stream.write_all(&message)?;
        stream.read_exact(&mut message)?;
        measured.push(started.elapsed());
    }
    drop(stream);
    echo.join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    Ok(measured)
}
