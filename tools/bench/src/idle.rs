//! `--idle-poll`: the machine's CPU latency request, held at 0 for a run.
//!
//! On a VM an idle core halts, and waking a thread on it is an exit to the
//! hypervisor and an interrupt back: on this project's 2-core Firecracker
//! VM a thread woken on the other core and back costs about 40 us of CPU
//! and 60 us, where it costs 12 us with idle cores polling (`cassette-bench
//! cpu`). A request of 0 us (`/dev/cpu_dma_latency`, the kernel's PM QoS)
//! makes the idle governor poll instead, for as long as the file is held
//! open. It burns the idle cores' time, so it is the machine's choice,
//! never the services': the benchmarks take it only when asked, to show
//! what the machine's wake-ups cost a run.

use std::fs::File;
use std::io::Write;

use anyhow::Context;

const PM_QOS: &str = "/dev/cpu_dma_latency";

/// Idle cores poll while this is held.
pub struct IdlePoll {
    _request: File,
}

/// Asks for a CPU latency of 0 us until the returned guard is dropped.
pub fn poll() -> anyhow::Result<IdlePoll> {
    let mut file = File::options()
        .write(true)
        .open(PM_QOS)
        .with_context(|| format!("--idle-poll opens {PM_QOS} (as root)"))?;
    file.write_all(&0i32.to_ne_bytes())
        .with_context(|| format!("--idle-poll writes 0 to {PM_QOS}"))?;
    Ok(IdlePoll { _request: file })
}
