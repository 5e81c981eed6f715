//! The guest's console as the VMM sees it: where its stdout and stderr bytes go ([`Console`]),
//! and the rules they are written under ([`ConsoleOutput`]): the `--max-output` budget, the
//! `--timeout` deadline (a reader that never reads cannot hold the VMM past it), and a closed
//! stdout, which ends the guest as SIGPIPE ends a process.

use crate::devices::{ConsoleSink, DeviceStop, Stream};
use std::io::{ErrorKind, Write};
use std::time::{Duration, Instant};

/// How long a write to a full non-blocking stdout waits before it tries again.
const FULL_OUTPUT_RETRY: Duration = Duration::from_millis(1);

/// Where console output goes.
pub struct Console {
    /// The guest's stdout.
    pub stdout: Box<dyn Write + Send>,
    /// The guest's stderr.
    pub stderr: Box<dyn Write + Send>,
}

impl Console {
    /// The VMM process's own stdout and stderr, written with one `write(2)` per call (no
    /// buffering, no retry on `EINTR`: [`ConsoleOutput`] decides).
    pub fn inherit() -> Self {
        Self {
            stdout: Box::new(RawFd(libc::STDOUT_FILENO)),
            stderr: Box::new(RawFd(libc::STDERR_FILENO)),
        }
    }
}

/// One of the process's standard streams, written directly.
struct RawFd(libc::c_int);

impl Write for RawFd {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // SAFETY: writes our own buffer to a standard stream; the fd outlives the process.
        let n = unsafe { libc::write(self.0, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A console with an output budget and a deadline: what hypercalls and devices write through.
pub(crate) struct ConsoleOutput {
    console: Console,
    max_output: u64,
    deadline: Option<Instant>,
    written: u64,
    first_output: Option<Instant>,
}

impl ConsoleOutput {
    /// `console`, allowing `max_output` bytes in all, none of them waited on past `deadline`.
    pub(crate) fn new(console: Console, max_output: u64, deadline: Option<Instant>) -> Self {
        Self {
            console,
            max_output,
            deadline,
            written: 0,
            first_output: None,
        }
    }

    /// Bytes written so far.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// When the first byte came.
    pub(crate) fn first_output(&self) -> Option<Instant> {
        self.first_output
    }

    /// The budget.
    pub(crate) fn max_output(&self) -> u64 {
        self.max_output
    }

    /// Flushes both streams.
    pub(crate) fn flush(&mut self) {
        let _ = self.console.stdout.flush();
        let _ = self.console.stderr.flush();
    }

    fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

impl ConsoleSink for ConsoleOutput {
    fn emit(&mut self, stream: Stream, bytes: &[u8]) -> Result<(), DeviceStop> {
        self.first_output.get_or_insert_with(Instant::now);
        let room = self.max_output.saturating_sub(self.written);
        let fits = bytes.len() as u64 <= room;
        let mut rest = &bytes[..bytes.len().min(room as usize)];
        self.written += rest.len() as u64;
        while !rest.is_empty() {
            let out = match stream {
                Stream::Stdout => &mut self.console.stdout,
                Stream::Stderr => &mut self.console.stderr,
            };
            let stdout = stream == Stream::Stdout;
            match out.write(rest) {
                Ok(0) if stdout => {
                    return Err(DeviceStop::OutputFailed(
                        "stdout: it took no bytes".to_owned(),
                    ));
                }
                Ok(0) => break,
                Ok(n) => rest = &rest[n..],
                // The watchdog's signal interrupts a write that a reader holds up: give up on
                // this output once the deadline has passed, so that `--timeout` holds.
                Err(err) if err.kind() == ErrorKind::Interrupted && !self.past_deadline() => {}
                // A non-blocking stdout (shared with a parent that set O_NONBLOCK) that is
                // full: wait for its reader as a blocking one would, until the deadline.
                Err(err) if err.kind() == ErrorKind::WouldBlock && !self.past_deadline() => {
                    std::thread::sleep(FULL_OUTPUT_RETRY);
                }
                // The reader went away (a pipe, or a socket whose peer closed).
                Err(err)
                    if stdout
                        && matches!(
                            err.kind(),
                            ErrorKind::BrokenPipe
                                | ErrorKind::ConnectionReset
                                | ErrorKind::NotConnected
                        ) =>
                {
                    return Err(DeviceStop::BrokenPipe);
                }
                // Output lost without a word would make a run look whole: the VMM stops, as
                // a program whose `write` fails does (past the deadline, a write held up
                // gives up instead, and the timeout ends the run).
                Err(err)
                    if stdout
                        && !matches!(
                            err.kind(),
                            ErrorKind::Interrupted | ErrorKind::WouldBlock
                        ) =>
                {
                    return Err(DeviceStop::OutputFailed(format!("stdout: {err}")));
                }
                // A stderr that cannot be written drops this output; the guest goes on.
                Err(_) => break,
            }
        }
        let _ = match stream {
            Stream::Stdout => self.console.stdout.flush(),
            Stream::Stderr => self.console.stderr.flush(),
        };
        if fits {
            Ok(())
        } else {
            Err(DeviceStop::OutputLimit)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Failing(ErrorKind);

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(self.0.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn output(stdout: ErrorKind, deadline: Option<Instant>) -> ConsoleOutput {
        let console = Console {
            stdout: Box::new(Failing(stdout)),
            stderr: Box::new(Failing(ErrorKind::BrokenPipe)),
        };
        ConsoleOutput::new(console, 1 << 20, deadline)
    }

    #[test]
    fn test_emit_closed_stdout_stops_the_guest() {
        let mut out = output(ErrorKind::BrokenPipe, None);
        assert_eq!(out.emit(Stream::Stdout, b"x"), Err(DeviceStop::BrokenPipe));
        assert_eq!(
            out.emit(Stream::Stderr, b"x"),
            Ok(()),
            "stderr is not stdout"
        );
    }

    #[test]
    fn test_emit_interrupted_past_the_deadline_gives_up() {
        let mut out = output(ErrorKind::Interrupted, Some(Instant::now()));
        assert_eq!(out.emit(Stream::Stdout, b"held up"), Ok(()));
    }

    /// Fails with `kind` `times` times, then takes everything.
    struct FailingFirst(ErrorKind, usize, Vec<u8>);

    impl Write for FailingFirst {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.1 > 0 {
                self.1 -= 1;
                return Err(self.0.into());
            }
            self.2.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn test_emit_to_a_full_nonblocking_stdout_waits_for_room() {
        let console = Console {
            stdout: Box::new(FailingFirst(ErrorKind::WouldBlock, 3, Vec::new())),
            stderr: Box::new(Failing(ErrorKind::BrokenPipe)),
        };
        let mut out = ConsoleOutput::new(console, 1 << 20, None);
        assert_eq!(out.emit(Stream::Stdout, b"later"), Ok(()));
        let mut full = output(ErrorKind::WouldBlock, Some(Instant::now()));
        assert_eq!(
            full.emit(Stream::Stdout, b"held up"),
            Ok(()),
            "past the deadline it gives up, and the timeout ends the run"
        );
    }

    #[test]
    fn test_emit_to_a_stdout_whose_reader_left_is_a_broken_pipe() {
        for kind in [ErrorKind::ConnectionReset, ErrorKind::NotConnected] {
            let mut out = output(kind, None);
            assert_eq!(
                out.emit(Stream::Stdout, b"x"),
                Err(DeviceStop::BrokenPipe),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn test_emit_to_a_stdout_that_fails_stops_the_guest() {
        let mut out = output(ErrorKind::StorageFull, None);
        assert!(matches!(
            out.emit(Stream::Stdout, b"lost"),
            Err(DeviceStop::OutputFailed(why)) if why.starts_with("stdout: ")
        ));
    }
}
