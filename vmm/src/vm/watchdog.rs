//! `--timeout`: interrupting a vCPU thread in `KVM_RUN` with a signal once its deadline passes.
//!
//! [`Watchdog::start`] gives one guest a thread of its own (`vmm run`); a [`DeadlineService`]
//! serves many guests from one thread (`vmm fleet`, whose worker threads are sandboxed and
//! cannot start threads). Either way the signal's handler does nothing: its only effect is that
//! `KVM_RUN` returns `EINTR`, and the run loop then sees [`Watchdog::fired`]. The signal is
//! resent every 5 ms until the guest's thread acknowledges, since it may land just before
//! `KVM_RUN` is entered.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

const RESEND: Duration = Duration::from_millis(5);

/// The signal that interrupts `KVM_RUN`.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn ignore_signal(_: libc::c_int) {}

fn install_kick_handler() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        // SAFETY: a zeroed sigaction is valid; the handler does nothing, and without
        // SA_RESTART KVM_RUN returns EINTR.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore_signal as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(kick_signal(), &action, std::ptr::null_mut());
        }
    });
}

/// Interrupts `KVM_RUN` on `thread` (the debugger's Ctrl-C); like the watchdog's signal, it
/// may land before `KVM_RUN` is entered, so the caller resends until acknowledged.
pub(crate) fn kick(thread: libc::pthread_t) {
    install_kick_handler();
    // SAFETY: the caller keeps `thread` alive while it kicks it; the handler does nothing.
    unsafe { libc::pthread_kill(thread, kick_signal()) };
}

struct Entry {
    id: u64,
    thread: libc::pthread_t,
    deadline: Instant,
    fired: Arc<AtomicBool>,
}

/// The watched deadlines, and when the service's thread will next look at them.
struct Watched {
    entries: Vec<Entry>,
    /// When the thread wakes by itself (`None` while it is not waiting): a new deadline after
    /// that needs no wake-up, which spares the thread (and a CPU) one per guest.
    wakes_at: Option<Instant>,
}

struct Shared {
    watched: Mutex<Watched>,
    wake: Condvar,
    stopping: AtomicBool,
    next_id: AtomicU64,
}

/// One thread that watches the deadlines of many guests.
pub(crate) struct DeadlineService {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Why a watchdog could not start: without one, a timeout would silently never fire.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// Its thread could not be started.
    #[error("cannot start the watchdog thread")]
    Spawn(#[source] std::io::Error),
    /// Its thread could not be confined.
    #[error("cannot confine the watchdog thread")]
    Sandbox(#[source] crate::sandbox::SandboxError),
}

impl DeadlineService {
    /// Starts the service's thread (confined by seccomp when `seccomp` is set), and waits
    /// until it runs confined.
    pub fn start(seccomp: bool) -> Result<Self, WatchdogError> {
        install_kick_handler();
        let shared = Arc::new(Shared {
            watched: Mutex::new(Watched {
                entries: Vec::new(),
                wakes_at: None,
            }),
            wake: Condvar::new(),
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
        });
        let thread_shared = Arc::clone(&shared);
        let (confined_tx, confined_rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let confined = if seccomp {
                    crate::sandbox::confine_this_thread_as(&crate::sandbox::Profile::Watchdog)
                } else {
                    Ok(())
                };
                let ok = confined.is_ok();
                let _ = confined_tx.send(confined);
                if ok {
                    serve(&thread_shared);
                }
            })
            .map_err(WatchdogError::Spawn)?;
        match confined_rx.recv() {
            Ok(Ok(())) => Ok(DeadlineService {
                shared,
                thread: Some(thread),
            }),
            Ok(Err(err)) => Err(WatchdogError::Sandbox(err)),
            // The thread died before answering (it cannot, short of a bug): no watchdog.
            Err(_) => Err(WatchdogError::Spawn(std::io::Error::other(
                "the watchdog thread ended at start",
            ))),
        }
    }

    /// Watches `vcpu_thread` until `timeout` from now.
    pub fn watch(&self, timeout: Duration, vcpu_thread: libc::pthread_t) -> Watchdog {
        let fired = Arc::new(AtomicBool::new(false));
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let entry = Entry {
            id,
            thread: vcpu_thread,
            // A deadline beyond what `Instant` can hold is never reached.
            deadline: now
                .checked_add(timeout)
                .unwrap_or(now + crate::size::MAX_DURATION),
            fired: Arc::clone(&fired),
        };
        let deadline = entry.deadline;
        let mut watched = lock(&self.shared.watched);
        watched.entries.push(entry);
        if watched.wakes_at.is_none_or(|at| deadline < at) {
            self.shared.wake.notify_all();
        }
        drop(watched);
        let shared = Arc::clone(&self.shared);
        Watchdog {
            fired,
            release: Some(Box::new(move || {
                lock(&shared.watched).entries.retain(|e| e.id != id);
            })),
        }
    }
}

impl Drop for DeadlineService {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn serve(shared: &Shared) {
    let mut watched = lock(&shared.watched);
    while !shared.stopping.load(Ordering::SeqCst) {
        let now = Instant::now();
        let mut next_wake = now + Duration::from_secs(3600);
        for entry in &watched.entries {
            if now >= entry.deadline {
                entry.fired.store(true, Ordering::SeqCst);
                // SAFETY: a watched thread removes its entry (under this lock) before it can
                // exit, so it is alive; the signal's handler does nothing.
                unsafe { libc::pthread_kill(entry.thread, kick_signal()) };
                next_wake = next_wake.min(now + RESEND);
            } else {
                next_wake = next_wake.min(entry.deadline);
            }
        }
        watched.wakes_at = Some(next_wake);
        watched = shared
            .wake
            // From now, not from the loop's start: the scan and the signals took time.
            .wait_timeout(watched, next_wake.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|e| e.into_inner())
            .0;
        watched.wakes_at = None;
    }
}

/// The deadline of one guest.
pub struct Watchdog {
    fired: Arc<AtomicBool>,
    release: Option<Box<dyn FnOnce() + Send>>,
}

impl Watchdog {
    /// A watchdog with a thread of its own that interrupts `vcpu_thread` after `timeout`.
    pub fn start(
        timeout: Duration,
        vcpu_thread: libc::pthread_t,
        seccomp: bool,
    ) -> Result<Self, WatchdogError> {
        let service = DeadlineService::start(seccomp)?;
        let mut watchdog = service.watch(timeout, vcpu_thread);
        let release = watchdog.release.take();
        watchdog.release = Some(Box::new(move || {
            if let Some(release) = release {
                release();
            }
            drop(service);
        }));
        Ok(watchdog)
    }

    /// Whether the deadline has passed.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Stops watching; the guest's thread is no longer signalled after this returns.
    pub fn finish(mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_deadline_service_fires_only_after_the_deadline() {
        let service = DeadlineService::start(false).unwrap();
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let early = service.watch(Duration::from_secs(60), me);
        let late = service.watch(Duration::from_millis(20), me);
        std::thread::sleep(Duration::from_millis(100));
        assert!(late.fired());
        assert!(!early.fired());
        late.finish();
        early.finish();
    }

    #[test]
    fn test_deadline_service_sleeping_past_a_deadline_is_woken_for_an_earlier_one() {
        let service = DeadlineService::start(false).unwrap();
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let first = service.watch(Duration::from_secs(60), me);
        // The service is asleep until the first deadline: a later one does not wake it, an
        // earlier one must.
        std::thread::sleep(Duration::from_millis(20));
        let later = service.watch(Duration::from_secs(120), me);
        let sooner = service.watch(Duration::from_millis(30), me);
        let started = Instant::now();
        while !sooner.fired() && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(sooner.fired(), "the earlier deadline was missed");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(!first.fired() && !later.fired());
        sooner.finish();
        later.finish();
        first.finish();
    }
}
