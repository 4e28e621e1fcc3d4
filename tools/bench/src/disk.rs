//! `disk`: what the disk under the benchmarks' temp directories charges for
//! the durable writes every change makes, with no service at all. One change
//! costs the rules service a sled append (sled writes its batch manifest's
//! buffer and the data's, each `pwrite` then `sync_file_range`, and the log
//! then `fdatasync`s the file) and the enforcer a journal append (`pwrite`,
//! `fdatasync`). Those two are the floor under `e2e`'s latency, and they
//! move with the hour on a shared VM: printed beside the other benchmarks,
//! they tell a slower run from a slower disk.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::plot::Series;
use crate::stats::{percentile_ms, round3};
use crate::Report;

/// The size of one write: a sled I/O buffer of one small append, a journal
/// record padded to its page.
const WRITE: usize = 4096;
/// The file the writes cycle through, preallocated with zeros (as the
/// enforcer's journal is, so that a write changes no file metadata).
const FILE: usize = 8 << 20;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Writes per pattern.
    #[arg(long, default_value_t = 1000)]
    writes: u32,
    /// Where the file goes (default: the system's temp directory, where the
    /// other benchmarks keep their logs).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

pub async fn run(options: Options) -> anyhow::Result<Report> {
    let dir = match &options.dir {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let path = dir.path().join("disk-bench");
    let writes = options.writes.max(1);
    tokio::task::spawn_blocking(move || measure(&path, writes)).await?
}

fn measure(path: &std::path::Path, writes: u32) -> anyhow::Result<Report> {
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all_at(&vec![0u8; FILE], 0)?;
    file.sync_all()?;
    let block = vec![0x5au8; WRITE];
    let slots = (FILE / WRITE) as u64;
    let mut slot = 0u64;
    let mut next = || {
        slot = (slot + 2) % slots;
        slot * WRITE as u64
    };
    let mut journal = Vec::new();
    let mut ranged = Vec::new();
    let mut sled_append = Vec::new();
    // Interleaved, so that the hour's changes fall on all three alike.
    for _ in 0..writes {
        let at = next();
        let started = Instant::now();
        file.write_all_at(&block, at)?;
        file.sync_data()?;
        journal.push(started.elapsed());

        let at = next();
        let started = Instant::now();
        file.write_all_at(&block, at)?;
        sync_range(&file, at)?;
        ranged.push(started.elapsed());

        let at = next();
        let started = Instant::now();
        file.write_all_at(&block, at)?;
        sync_range(&file, at)?;
        file.write_all_at(&block, at + WRITE as u64)?;
        sync_range(&file, at + WRITE as u64)?;
        file.sync_data()?;
        sled_append.push(started.elapsed());
    }
    let summary = |samples: &mut Vec<Duration>| {
        json!({
            "p50_ms": round3(percentile_ms(samples, 50.0)),
            "p99_ms": round3(percentile_ms(samples, 99.0)),
        })
    };
    let json = json!({
        "bench": "disk",
        "writes": writes,
        "write_bytes": WRITE,
        "pwrite_fdatasync": summary(&mut journal),
        "pwrite_sync_file_range": summary(&mut ranged),
        "sled_append_pattern": summary(&mut sled_append),
    });
    Ok(Report::new(json)
        .series(Series::new(
            "pwrite + fdatasync (enforcer journal)",
            journal,
        ))
        .series(Series::new("pwrite + sync_file_range", ranged))
        .series(Series::new(
            "2 x (pwrite + sync_file_range) + fdatasync (sled append)",
            sled_append,
        )))
}

/// sled's wait for one buffer's write: start it, and wait until it is done.
fn sync_range(file: &File, at: u64) -> anyhow::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    let offset = i64::try_from(at)?;
    // SAFETY: a plain system call on a descriptor `file` keeps open.
    let ret = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, WRITE as i64, flags) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error()).context("sync_file_range");
    }
    Ok(())
}
