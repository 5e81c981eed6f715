//! The acceptor: one thread that accepts connections and reads their requests, and never waits
//! on any one client.
//!
//! Every connection is non-blocking, and one `poll` watches the listener and all connections
//! still sending. Each connection has [`ServeConfig::request_timeout`](super::ServeConfig) in
//! all to send its whole request, counted from its acceptance (not per read: a client dripping
//! a byte at a time gets no more); then it is refused. At most [`MAX_PENDING`] connections are
//! read at once: a new one takes the place of the one that has been sending longest (refused),
//! so that idle connections, however many, cannot keep a client that sends its request at once
//! from being read. A request that came with its connection is read as it is accepted. At most
//! [`MAX_QUEUED`] complete requests wait for a runner (more are refused as busy), so memory (a
//! request is at most [`wire::MAX_REQUEST`] bytes) and descriptors stay bounded whatever
//! clients do. A complete request goes to the dispatcher, which opens its target: no file is
//! touched on this thread.

use super::log::Log;
use super::server::Event;
use super::slots;
use super::wire::{self, Request};
use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Connections read at once.
pub(crate) const MAX_PENDING: usize = 128;
/// Complete requests waiting for a runner.
pub(crate) const MAX_QUEUED: usize = 128;
/// How long to stop accepting after `accept` failed (out of descriptors or memory).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// A complete request and its connection.
pub(crate) struct Received {
    pub(crate) connection: UnixStream,
    pub(crate) request: Request,
}

/// The acceptor's state.
pub(crate) struct Acceptor {
    pub(crate) listener: UnixListener,
    pub(crate) request_timeout: Duration,
    pub(crate) dispatcher: mpsc::Sender<Event>,
    /// Requests sent to the dispatcher and not yet handed to a runner or refused.
    pub(crate) queued: Arc<AtomicUsize>,
    pub(crate) log: Log,
}

/// A connection still sending its request.
struct Pending {
    connection: UnixStream,
    bytes: Vec<u8>,
    deadline: Instant,
}

/// What reading from a connection gave.
enum Progress {
    /// The request is not complete yet.
    More(Pending),
    /// A whole request.
    Complete(Received),
    /// The client hung up before sending anything (e.g. a probe): nothing to answer.
    Gone,
    /// A bad request: refuse with this reason.
    Bad(UnixStream, String),
}

impl Acceptor {
    /// Accepts and reads until the process ends.
    pub(crate) fn run(self) {
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut paused_until: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if paused_until.is_some_and(|until| now >= until) {
                paused_until = None;
            }
            let listening = paused_until.is_none();
            let mut fds = Vec::with_capacity(pending.len() + 1);
            // A negative fd is skipped by poll: the listener is not watched while paused.
            let listener = if listening {
                self.listener.as_raw_fd()
            } else {
                -1
            };
            fds.push(pollfd(listener));
            fds.extend(pending.iter().map(|p| pollfd(p.connection.as_raw_fd())));
            let wake = pending.iter().map(|p| p.deadline).chain(paused_until).min();
            let timeout = wake.map_or(-1, |at| millis_until(at, now));
            let count = libc::nfds_t::try_from(fds.len()).unwrap_or(libc::nfds_t::MAX);
            // SAFETY: `fds` holds `count` valid pollfds for the duration of the call.
            if unsafe { libc::poll(fds.as_mut_ptr(), count, timeout) } < 0 {
                // EINTR, or out of memory for a moment: look again (the timeout bounds it).
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let now = Instant::now();
            let mut still = VecDeque::with_capacity(pending.len());
            for (connection, polled) in pending.drain(..).zip(&fds[1..]) {
                let progress = if polled.revents != 0 {
                    connection.read_some()
                } else {
                    Progress::More(connection)
                };
                self.settle(progress, now, &mut still);
            }
            pending = still;
            if fds[0].revents != 0 {
                paused_until = self.accept(&mut pending, now);
            }
        }
    }

    /// Accepts what is waiting (at most [`MAX_PENDING`] connections per call, so that a flood
    /// of connections cannot keep this thread from the others) and reads what each has sent;
    /// returns until when to stop accepting if `accept` failed.
    fn accept(&self, pending: &mut VecDeque<Pending>, now: Instant) -> Option<Instant> {
        let mut displaced = 0usize;
        let mut paused = None;
        for _ in 0..MAX_PENDING {
            match self.listener.accept() {
                Ok((connection, _)) => {
                    if connection.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let fresh = Pending {
                        connection,
                        bytes: Vec::new(),
                        deadline: now + self.request_timeout,
                    };
                    let progress = fresh.read_some();
                    // Only a connection still sending needs a place: one whose request came
                    // with it takes none, and displaces nobody.
                    if matches!(progress, Progress::More(_)) && pending.len() >= MAX_PENDING {
                        // In order of acceptance: the first has sent for longest. It gets a
                        // last read, in case its request arrived since the poll.
                        if let Some(oldest) = pending.pop_front() {
                            match oldest.read_some() {
                                Progress::More(oldest) => {
                                    displaced += 1;
                                    slots::refuse(
                                        oldest.connection.as_fd(),
                                        &format!(
                                            "bad request: not sent in full before {MAX_PENDING} newer connections came"
                                        ),
                                    );
                                }
                                done => self.settle(done, now, pending),
                            }
                        }
                    }
                    self.settle(progress, now, pending);
                }
                Err(err) => match err.kind() {
                    std::io::ErrorKind::WouldBlock => break,
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::ConnectionAborted => {}
                    _ => {
                        self.log.line(format!(
                            "serve: cannot accept a connection ({err}); pausing for {ACCEPT_PAUSE:?}"
                        ));
                        paused = Some(now + ACCEPT_PAUSE);
                        break;
                    }
                },
            }
        }
        // One line for a flood, not one per connection.
        if displaced > 0 {
            self.log.line(format!(
                "refused {displaced} connections that had not sent their request when newer ones came ({MAX_PENDING} are read at once)"
            ));
        }
        paused
    }

    /// Acts on what reading a connection gave at `now`: keeps it in `still` while its request
    /// is incomplete and its time not up, forwards a complete request, refuses a bad one.
    fn settle(&self, progress: Progress, now: Instant, still: &mut VecDeque<Pending>) {
        match progress {
            Progress::More(connection) if now >= connection.deadline => self.refuse(
                &connection.connection,
                format!(
                    "bad request: not sent in full within {:?}",
                    self.request_timeout
                ),
            ),
            Progress::More(connection) => still.push_back(connection),
            Progress::Complete(received) => self.forward(received),
            Progress::Gone => {}
            Progress::Bad(connection, why) => self.refuse(&connection, why),
        }
    }

    /// Hands a request to the dispatcher, or refuses it when too many wait already.
    fn forward(&self, received: Received) {
        let waiting = self.queued.load(Ordering::SeqCst);
        if waiting >= MAX_QUEUED {
            return self.refuse(
                &received.connection,
                format!("the server is busy ({waiting} requests are waiting); try again later"),
            );
        }
        self.queued.fetch_add(1, Ordering::SeqCst);
        if let Err(mpsc::SendError(Event::Request(received))) =
            self.dispatcher.send(Event::Request(received))
        {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            self.refuse(&received.connection, "the server is stopping".into());
        }
    }

    fn refuse(&self, connection: &UnixStream, why: String) {
        slots::refuse(connection.as_fd(), &why);
        self.log.line(format!("refused a request: {why}"));
    }
}

impl Pending {
    /// Reads what has arrived, never more than the request.
    fn read_some(mut self) -> Progress {
        let mut chunk = [0u8; 16 << 10];
        loop {
            let wanted = match self.announced() {
                Ok(wanted) => wanted,
                Err(why) => return Progress::Bad(self.connection, why),
            };
            let missing = wanted - self.bytes.len();
            if missing == 0 {
                return self.parse();
            }
            let room = missing.min(chunk.len());
            match (&self.connection).read(&mut chunk[..room]) {
                Ok(0) if self.bytes.is_empty() => return Progress::Gone,
                Ok(0) => {
                    return Progress::Bad(
                        self.connection,
                        "bad request: the connection ended mid-request".into(),
                    );
                }
                Ok(n) => self.bytes.extend_from_slice(&chunk[..n]),
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    return Progress::More(self);
                }
                Err(_) => return Progress::Gone,
            }
        }
    }

    /// Bytes of the whole message: the length prefix, then what it announces.
    fn announced(&self) -> Result<usize, String> {
        let Some(prefix) = self.bytes.first_chunk::<4>() else {
            return Ok(4);
        };
        let len = u32::from_le_bytes(*prefix);
        if len > wire::MAX_REQUEST {
            return Err(format!(
                "request of {len} bytes is too large (at most {})",
                wire::MAX_REQUEST
            ));
        }
        usize::try_from(len)
            .ok()
            .and_then(|len| len.checked_add(4))
            .ok_or_else(|| format!("request of {len} bytes is too large"))
    }

    fn parse(self) -> Progress {
        match serde_json::from_slice(&self.bytes[4..]) {
            Ok(request) => Progress::Complete(Received {
                connection: self.connection,
                request,
            }),
            Err(err) => Progress::Bad(self.connection, format!("bad request: {err}")),
        }
    }
}

fn pollfd(fd: i32) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Milliseconds from `now` until `at`, rounded up (never a busy loop on a sub-millisecond wait).
fn millis_until(at: Instant, now: Instant) -> i32 {
    let left = at.saturating_duration_since(now);
    i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
}
