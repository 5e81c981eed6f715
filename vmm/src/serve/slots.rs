//! Client slots: how a connection reaches the sandboxed runner that answers it, and cannot
//! reach any other; and [`Reply`], the runner's side of a connection.
//!
//! At start the server reserves one descriptor per runner: a duplicate of `/dev/null` at
//! whatever number the kernel gives, owned by [`Slots`] for the server's whole life and never
//! closed. A number that is never free is never handed out by `open`, `accept`, `memfd_create`,
//! `KVM_CREATE_VCPU` or anything else in the process, however many descriptors it holds: that
//! is what the fixed numbers of the first design (900 + runner index, closed between requests)
//! lacked. Runner `i`'s seccomp filter allows `sendto` on slot `i` only, so the number its
//! filter names is always its own slot.
//!
//! Only the dispatcher changes what a slot holds, and only while its runner is idle:
//! [`Slots::hand`] puts a connection there with `dup3`, which replaces what the slot held in
//! one step (the number is not free even for an instant), and [`Slots::release`] puts
//! `/dev/null` back once the runner has reported its reply done, which closes the connection.
//! The runner only sends, polls and (a request with `stdin`: the client's input follows its
//! request) reads on its slot, between receiving its job and reporting done.
//!
//! A server that gives guests network devices (`vmm serve --allow-tap`) reserves a second
//! number per runner the same way: its tap slot. The dispatcher attaches the tap a request
//! names, puts it in the runner's tap slot with `dup3` (its own descriptor then closes), and
//! [`Slots::release`] puts `/dev/null` back after the request, which detaches the tap. Runner
//! `i`'s filter allows `read` and `write` on tap slot `i` (and `ppoll`, as for any tap).
//!
//! [`Reply`] sends frames without ever blocking (`MSG_DONTWAIT`), and while the client's
//! buffer is full it waits with `poll` until the request's deadline; past it, or once the
//! client is gone, the rest of the reply is dropped (the guest still ends at its timeout).
//! So a client that never reads holds its runner for at most the request's timeout plus
//! [`REPLY_GRACE`].

use super::wire::{frame, send_frame};
use crate::sandbox::SERVE_SEND_FLAGS;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long after its guest's timeout a reply may still take (the last frames, a slow client).
pub(crate) const REPLY_GRACE: Duration = Duration::from_secs(1);

/// One reserved descriptor per runner. The slots are never closed, not even when this is
/// dropped: a runner may still hold its number, and that number must never be free.
pub(crate) struct Slots {
    null: OwnedFd,
    slots: Vec<RawFd>,
    /// One tap slot per runner, or none (the server gives guests no network devices).
    taps: Vec<RawFd>,
}

impl Slots {
    /// Reserves `count` client slots, and as many tap slots if `with_taps`, each holding
    /// `/dev/null`.
    pub(crate) fn reserve(count: usize, with_taps: bool) -> std::io::Result<Self> {
        let null: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")?
            .into();
        let reserve = |n: usize| {
            (0..n)
                .map(|_| null.try_clone().map(IntoRawFd::into_raw_fd))
                .collect::<std::io::Result<Vec<_>>>()
        };
        let slots = reserve(count)?;
        let taps = reserve(if with_taps { count } else { 0 })?;
        Ok(Self { null, slots, taps })
    }

    /// Runner `runner`'s slot number.
    pub(crate) fn fd(&self, runner: usize) -> RawFd {
        self.slots[runner]
    }

    /// Runner `runner`'s tap slot number, if the server has tap slots.
    pub(crate) fn tap_fd(&self, runner: usize) -> Option<RawFd> {
        self.taps.get(runner).copied()
    }

    /// Puts `connection` in `runner`'s slot (the slot keeps its own reference to it).
    pub(crate) fn hand(&self, runner: usize, connection: BorrowedFd<'_>) -> std::io::Result<()> {
        put(self.fd(runner), connection)
    }

    /// Puts an attached `tap` in `runner`'s tap slot (the slot keeps its own reference).
    pub(crate) fn hand_tap(&self, runner: usize, tap: BorrowedFd<'_>) -> std::io::Result<()> {
        let slot = self
            .tap_fd(runner)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::Unsupported))?;
        put(slot, tap)
    }

    /// Puts `/dev/null` back in `runner`'s slots, closing the connection and detaching the
    /// tap they held.
    pub(crate) fn release(&self, runner: usize) {
        // dup3 onto an open descriptor below the limit cannot fail for want of a number.
        let _ = put(self.fd(runner), self.null.as_fd());
        if let Some(tap) = self.tap_fd(runner) {
            let _ = put(tap, self.null.as_fd());
        }
    }
}

/// Makes reserved number `slot` refer to `what`'s file.
fn put(slot: RawFd, what: BorrowedFd<'_>) -> std::io::Result<()> {
    // SAFETY: dup3 replaces the file at a number that `Slots` reserves and that nothing ever
    // closes (it then refers to `what`'s file).
    let done = unsafe { libc::dup3(what.as_raw_fd(), slot, libc::O_CLOEXEC) };
    if done < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The runner's side of one connection: frames sent until a deadline, then dropped.
#[derive(Clone)]
pub(crate) struct Reply {
    state: Arc<ReplyState>,
}

struct ReplyState {
    slot: RawFd,
    deadline: Instant,
    gone: AtomicBool,
}

impl Reply {
    /// A reply on `slot` that gives up at `deadline`.
    pub(crate) fn new(slot: RawFd, deadline: Instant) -> Self {
        Self {
            state: Arc::new(ReplyState {
                slot,
                deadline,
                gone: AtomicBool::new(false),
            }),
        }
    }

    /// Sends one frame (or drops it, and every later one, if the client is gone or too slow).
    pub(crate) fn send(&self, kind: u8, payload: &[u8]) {
        if kind == frame::ERROR {
            // An error frame is one line, whatever text (a client's path) it quotes.
            let text = String::from_utf8_lossy(payload);
            let line = super::log::one_line(&text);
            let _ = send_frame(&mut &*self.state, kind, line.as_bytes());
            return;
        }
        let _ = send_frame(&mut &*self.state, kind, payload);
    }

    /// Guest output as frames of `kind`.
    pub(crate) fn writer(&self, kind: u8) -> ReplyWriter {
        ReplyWriter {
            reply: self.clone(),
            kind,
        }
    }

    /// Whether output was dropped: the client went away or did not read in time.
    pub(crate) fn dropped(&self) -> bool {
        self.state.gone.load(Ordering::Relaxed)
    }
}

impl Write for &ReplyState {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            if self.gone.load(Ordering::Relaxed) {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            // SAFETY: sends from our own buffer on the runner's slot; MSG_DONTWAIT never
            // blocks, MSG_NOSIGNAL never raises SIGPIPE.
            let sent =
                unsafe { libc::send(self.slot, buf.as_ptr().cast(), buf.len(), SERVE_SEND_FLAGS) };
            if let Ok(sent) = usize::try_from(sent) {
                return Ok(sent);
            }
            let err = std::io::Error::last_os_error();
            match err.kind() {
                std::io::ErrorKind::Interrupted => {}
                std::io::ErrorKind::WouldBlock if wait_writable(self.slot, self.deadline) => {}
                _ => {
                    self.gone.store(true, Ordering::Relaxed);
                    return Err(err);
                }
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits until `fd` can take more bytes (or has failed); false once `deadline` has passed.
fn wait_writable(fd: RawFd, deadline: Instant) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        // Rounded up: a wait of less than a millisecond must not become a busy loop.
        let millis = i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, millis) };
        if ready > 0 {
            return true;
        }
        // 0: timed out (the loop sees the deadline has passed); -1: EINTR (the watchdog's
        // signal) or a failure: try again until the deadline.
    }
}

/// Answers a connection that gets no runner with an `ERROR` frame, if its buffer takes it now
/// (a refusal never waits for a client).
pub(crate) fn refuse(connection: BorrowedFd<'_>, why: &str) {
    let why = super::log::clip(why, REFUSAL_MAX);
    Reply::new(connection.as_raw_fd(), Instant::now()).send(frame::ERROR, why.as_bytes());
}

/// Longest refusal sent (it names the client's own path, which may be long): it fits any
/// socket buffer, so that a refusal is sent whole or not at all.
const REFUSAL_MAX: usize = 4096;

/// Guest console output, as frames of one kind.
pub(crate) struct ReplyWriter {
    reply: Reply,
    kind: u8,
}

impl Write for ReplyWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A client that went away or stopped reading must not stop the guest: its output is
        // dropped.
        self.reply.send(self.kind, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    #[test]
    fn test_slot_numbers_stay_taken_across_hand_and_release() {
        let slots = Slots::reserve(2, false).unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        let before = slots.fd(0);
        slots.hand(0, a.as_fd()).unwrap();
        drop(a);
        let reply = Reply::new(slots.fd(0), Instant::now() + Duration::from_secs(1));
        reply.send(1, b"hi");
        slots.release(0);
        assert_eq!(slots.fd(0), before);
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        assert_eq!(got, [1, 2, 0, 0, 0, b'h', b'i']);
        // The number is still open (on /dev/null): a new descriptor never lands on it.
        let fresh = std::fs::File::open("/dev/null").unwrap();
        assert!(fresh.as_raw_fd() != slots.fd(0) && fresh.as_raw_fd() != slots.fd(1));
    }

    #[test]
    fn test_tap_slot_holds_what_is_handed_until_release() {
        let slots = Slots::reserve(1, true).unwrap();
        let tap_slot = slots.tap_fd(0).unwrap();
        assert_ne!(tap_slot, slots.fd(0));
        let (a, mut b) = UnixStream::pair().unwrap();
        slots.hand_tap(0, a.as_fd()).unwrap();
        drop(a);
        // SAFETY: writes our own bytes to the slot, which holds `a`'s socket now.
        let sent = unsafe { libc::write(tap_slot, b"frame".as_ptr().cast(), 5) };
        assert_eq!(sent, 5);
        slots.release(0);
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"frame", "release closed the slot's copy: end of file");
        assert_eq!(slots.tap_fd(0), Some(tap_slot), "the number stays reserved");
    }

    #[test]
    fn test_tap_slots_are_absent_unless_asked_for() {
        let slots = Slots::reserve(2, false).unwrap();
        assert_eq!(slots.tap_fd(0), None);
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(slots.hand_tap(0, a.as_fd()).is_err());
    }

    #[test]
    fn test_reply_to_a_client_that_never_reads_gives_up_at_the_deadline() {
        let (a, _b) = UnixStream::pair().unwrap();
        let started = Instant::now();
        let reply = Reply::new(a.as_raw_fd(), started + Duration::from_millis(100));
        let chunk = vec![0u8; 64 << 10];
        for _ in 0..64 {
            reply.send(1, &chunk);
        }
        assert!(reply.dropped());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn test_reply_to_a_closed_client_is_dropped_at_once() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let reply = Reply::new(a.as_raw_fd(), Instant::now() + Duration::from_secs(60));
        reply.send(1, b"x");
        assert!(reply.dropped());
    }
}
