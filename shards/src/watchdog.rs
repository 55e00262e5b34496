//! Wakes an executor that sleeps through its own timers.
//!
//! glommio 0.9 sleeps in `io_uring_enter` on its main ring, linked to the ring that carries the
//! timer for its next deadline. Under CPU contention that wake-up is sometimes lost: the timer
//! fires while the executor is between arming it and linking the rings, and the executor then
//! sleeps until some other completion arrives. On a core whose tasks wait only on timers and on
//! other threads, nothing else comes: the transfers workload (tests/src/bin/transfers.rs) was
//! seen with both executors asleep and every writer idle for seconds, its reader (which retries
//! every 20 us on a timer) included, and it went on as soon as a debugger's attach interrupted
//! the system call. glommio's own heartbeat timer ([`crate::cores`]) cannot catch this, as it
//! is a timer too.
//!
//! So each executor counts its heartbeats, and one watchdog thread per process sends a signal
//! (with a handler that does nothing) to an executor whose count has not moved for
//! [`PATIENCE`]: the signal ends `io_uring_enter` with `EINTR`, which glommio takes as a normal
//! wake-up, and the executor runs its expired timers. An executor that is merely busy gets the
//! signal too, which costs it the empty handler.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

/// How long an executor's heartbeat may stand still before the watchdog signals it (several
/// heartbeats).
const PATIENCE: Duration = Duration::from_millis(50);

/// One executor as the watchdog sees it.
#[derive(Default)]
pub(crate) struct Pulse {
    /// Heartbeats so far.
    beats: AtomicU64,
    thread: Mutex<Thread>,
}

/// Where an executor's thread is.
#[derive(Default, Clone, Copy)]
enum Thread {
    #[default]
    Starting,
    Running(libc::pthread_t),
    /// Never signalled again.
    Ended,
}

impl Pulse {
    /// Called by the executor's heartbeat task on each beat.
    pub(crate) fn beat(&self) {
        self.beats.fetch_add(1, Ordering::Relaxed);
    }

    /// Registers the calling thread as the executor's; the returned guard unregisters it when
    /// the executor's future ends or unwinds.
    pub(crate) fn enter(self: &Arc<Self>) -> Leave {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Thread::Running(me);
        Leave(self.clone())
    }
}

/// Unregisters an executor thread from the watchdog (see [`Pulse::enter`]).
pub(crate) struct Leave(Arc<Pulse>);

impl Drop for Leave {
    fn drop(&mut self) {
        *self.0.thread.lock().unwrap_or_else(|e| e.into_inner()) = Thread::Ended;
    }
}

extern "C" fn nothing(_: libc::c_int) {}

/// The signal the watchdog sends, with its empty handler installed once (without `SA_RESTART`,
/// so that a sleeping `io_uring_enter` returns).
fn wake_signal() -> libc::c_int {
    static INSTALL: Once = Once::new();
    let signal = libc::SIGRTMIN();
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; the handler is an `extern "C"` function that
        // touches nothing, so it is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = nothing as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    });
    signal
}

/// Starts the watchdog thread over `pulses`; it ends when every executor has ended.
pub(crate) fn watch(pulses: Vec<Arc<Pulse>>) -> std::io::Result<()> {
    let signal = wake_signal();
    std::thread::Builder::new()
        .name("tessera-watchdog".into())
        .spawn(move || {
            let mut seen = vec![0u64; pulses.len()];
            loop {
                std::thread::sleep(PATIENCE);
                let mut ended = 0;
                for (pulse, seen) in pulses.iter().zip(&mut seen) {
                    // Held while signalling: the thread cannot end and be joined meanwhile.
                    let thread = pulse.thread.lock().unwrap_or_else(|e| e.into_inner());
                    let beats = pulse.beats.load(Ordering::Relaxed);
                    match *thread {
                        Thread::Running(t) if beats == *seen => {
                            // SAFETY: `t` is a live thread: it unregisters (under this lock)
                            // before it ends.
                            unsafe { libc::pthread_kill(t, signal) };
                        }
                        Thread::Ended => ended += 1,
                        _ => {}
                    }
                    *seen = beats;
                }
                if ended == pulses.len() {
                    return;
                }
            }
        })?;
    Ok(())
}
