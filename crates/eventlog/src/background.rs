//! Work that must not take CPU from answers: index checkpoints and
//! projection snapshots encode and write megabytes (for 100,000 instances,
//! 70 ms and more of one core). On the tokio blocking pool, at the same
//! priority as the service's own threads, a checkpoint on a busy machine
//! held back every change behind it for a few hundred milliseconds. Here it
//! runs on a thread of its own whose priority is lowered (nice 19) once it
//! holds no lock the service waits for: it takes what the service leaves
//! idle, and little else.

use tokio::sync::oneshot;

/// A background job: whether it ended, and its result.
pub struct Background<T> {
    thread: std::thread::JoinHandle<()>,
    done: oneshot::Receiver<T>,
}

/// Runs `copy` (at normal priority: it may take locks the service waits
/// for, and a thread at the lowest priority holding one would hold everyone
/// up) and then `work` on its result, at the lowest priority, on a thread
/// named `name`.
pub fn spawn<C, T>(
    name: &str,
    copy: impl FnOnce() -> C + Send + 'static,
    work: impl FnOnce(C) -> T + Send + 'static,
) -> std::io::Result<Background<T>>
where
    T: Send + 'static,
{
    let (finished, done) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let copied = copy();
            lower_priority();
            let _ = finished.send(work(copied));
        })?;
    Ok(Background { thread, done })
}

impl<T> Background<T> {
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the job to end; its result, unless it panicked.
    pub async fn wait(self) -> Option<T> {
        self.done.await.ok()
    }

    /// Blocks until the job ends (for shutdown and drops, in or out of
    /// the runtime); its result, unless it panicked.
    pub fn join(mut self) -> Option<T> {
        let _ = self.thread.join();
        self.done.try_recv().ok()
    }
}

/// Lowers the calling thread's CPU priority to nice 19 (on Linux,
/// `setpriority` with a thread id applies to that thread alone). Best
/// effort: where it fails, the work runs at normal priority.
fn lower_priority() {
    // SAFETY: plain system calls on the calling thread, no memory shared.
    let result = unsafe {
        let thread = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, 19)
    };
    if result != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "could not lower a background thread's priority"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_nice() -> i32 {
        // SAFETY: a plain system call on the calling thread.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[test]
    fn the_copy_runs_at_the_callers_priority_and_the_work_at_the_lowest() {
        let before = own_nice();
        let job = spawn("test-background", own_nice, |copied| (copied, own_nice())).unwrap();
        let (copying, working) = job.join().expect("the job ran");
        assert_eq!(copying, before, "the copy may hold locks: normal priority");
        assert_eq!(working, 19);
        assert_eq!(own_nice(), before, "the caller's thread is left alone");
    }
}
