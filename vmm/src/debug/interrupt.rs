//! gdb's Ctrl-C while the guest runs: a watcher thread polls the debugger's connection while
//! the vCPU thread is in `KVM_RUN`, and when gdb sends something (the interrupt byte, or the
//! connection closes), raises the run loop's interrupt flag and kicks the vCPU thread out of
//! `KVM_RUN` with the watchdog's signal, every [`RESEND`] until the vCPU thread has stopped
//! (the signal may land just before `KVM_RUN` is entered). While the guest is stopped, the
//! watcher waits: the connection is then gdbstub's alone.

use crate::vm::watchdog;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How often the watcher looks again, and kicks again.
const RESEND: Duration = Duration::from_millis(5);

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// The guest is stopped.
    Stopped,
    /// The guest runs on this thread.
    Running(libc::pthread_t),
    /// The session is over.
    Quit,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    flag: AtomicBool,
}

/// The watcher of one debugging session.
pub(crate) struct Interrupter {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Interrupter {
    /// Starts watching `connection` (which must stay open until this is dropped).
    pub(crate) fn start(connection: RawFd) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::Stopped),
            changed: Condvar::new(),
            flag: AtomicBool::new(false),
        });
        let watched = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("gdb-interrupt".into())
            .stack_size(64 * 1024)
            .spawn(move || watch(&watched, connection))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// The flag the run loop checks.
    pub(crate) fn flag(&self) -> &AtomicBool {
        &self.shared.flag
    }

    /// The guest is about to run on this thread.
    pub(crate) fn running(&self) {
        self.shared.flag.store(false, Ordering::SeqCst);
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.set(State::Running(me));
    }

    /// The guest stopped: no kick is sent after this returns.
    pub(crate) fn stopped(&self) {
        self.set(State::Stopped);
        self.shared.flag.store(false, Ordering::SeqCst);
    }

    fn set(&self, state: State) {
        *lock(&self.shared.state) = state;
        self.shared.changed.notify_all();
    }
}

impl Drop for Interrupter {
    fn drop(&mut self) {
        self.set(State::Quit);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn watch(shared: &Shared, connection: RawFd) {
    loop {
        {
            let mut state = lock(&shared.state);
            while *state == State::Stopped {
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
            if *state == State::Quit {
                return;
            }
        }
        if !readable(connection, RESEND) {
            continue;
        }
        let state = lock(&shared.state);
        if let State::Running(thread) = *state {
            shared.flag.store(true, Ordering::SeqCst);
            // Under the lock: the vCPU thread cannot have stopped (and gone on to other work)
            // in between.
            watchdog::kick(thread);
            drop(state);
            std::thread::sleep(RESEND);
        }
    }
}

/// Whether `fd` has something to read (or is closed) within `timeout`.
fn readable(fd: RawFd, timeout: Duration) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, owned by this frame.
    let ready = unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as libc::c_int) };
    ready > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn test_interrupter_raises_the_flag_only_while_running() {
        let (mut gdb, stub) = UnixStream::pair().unwrap();
        let interrupter = Interrupter::start(stub.as_raw_fd()).unwrap();
        gdb.write_all(&[3]).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            !interrupter.flag().load(Ordering::SeqCst),
            "stopped: no flag"
        );
        interrupter.running();
        let started = std::time::Instant::now();
        while !interrupter.flag().load(Ordering::SeqCst) {
            assert!(started.elapsed() < Duration::from_secs(5), "never raised");
            std::thread::sleep(Duration::from_millis(1));
        }
        interrupter.stopped();
        assert!(!interrupter.flag().load(Ordering::SeqCst));
        drop(interrupter);
    }
}
