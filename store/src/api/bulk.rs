//! Large request bodies are parsed on one thread of their own, at the
//! lowest CPU priority.
//!
//! Parsing a 1.4 MiB JSON txn takes milliseconds, and any client can send
//! them back to back: auth looks at a request only once it is decoded. On a
//! request worker that work stalls the small requests queued behind it; on
//! tokio's blocking pool it still competes with the workers as an equal for
//! the CPU. Here it runs on one thread at the lowest priority (`SCHED_IDLE`,
//! else nice 19), so it gets what the request workers leave: a flood of
//! large bodies slows itself (they queue for this one thread, each bounded
//! by the request limit), not the rest.

use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

/// The low-priority thread; it ends when the last handle is dropped.
#[derive(Clone)]
pub struct Bulk {
    tx: mpsc::Sender<Job>,
}

impl Bulk {
    /// Starts the thread. Should that fail, [`Bulk::run`] answers `None` and
    /// callers do the work themselves.
    pub fn start() -> Bulk {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("cairn-bulk".into())
            .spawn(move || {
                lower_priority();
                while let Ok(job) = rx.recv() {
                    job();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("no thread for large request bodies: {e}");
        }
        Bulk { tx }
    }

    /// Runs `f` on the thread, or here if the thread is gone; `None` if `f`
    /// panicked.
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        if let Err(mpsc::SendError(job)) = self.tx.send(job) {
            job();
        }
        rx.await.ok()
    }
}

/// The lowest CPU priority for the calling thread: Linux's `SCHED_IDLE`
/// (it runs only when nothing else wants the CPU, and never preempts a
/// thread that does), else nice 19. On Linux each thread has its own
/// policy and nice value, and 0 names the caller.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param for the call's duration.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0 {
            return;
        }
    }
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS as _, 0, 19) };
    if rc != 0 {
        tracing::debug!(
            "large request bodies parsed at normal priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_work_off_the_caller_and_answers() {
        let bulk = Bulk::start();
        let here = std::thread::current().id();
        let (there, sum) = bulk
            .run(|| (std::thread::current().id(), (1..=10u32).sum::<u32>()))
            .await
            .expect("bulk thread");
        assert_ne!(there, here);
        assert_eq!(sum, 55);
    }
}
