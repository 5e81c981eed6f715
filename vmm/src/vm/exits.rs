//! The decisions taken on each VM exit, as a function of the exit and the guest's devices and
//! limits, so that unit tests can feed synthetic exits without KVM.
//!
//! The guest is hostile: an odd port access is counted, never a panic; a bad hypercall stops
//! the guest with a report. Ports are decoded once: the hypercall range into a typed
//! [`Hypercall`](super::hypercall::Hypercall), everything else through the device bus.

use super::console::{Console, ConsoleOutput};
use super::hypercall::{self, ConsoleRequest, Hypercall, HypercallError};
use crate::devices::{ConsoleSink, DeviceContext, DeviceStop, PollSource, PortBus};
use crate::memory::GuestRam;
use crate::report::ExitStats;
use std::time::{Duration, Instant};

/// Milestones kept per guest (a guest may report any number; only these are kept).
pub(crate) const MAX_MILESTONES: usize = 64;

/// A VM exit, in the VMM's own terms (see [`super::Vm`] for the translation from KVM's).
#[derive(Debug)]
pub(crate) enum Exit<'a> {
    /// `out` to `port`.
    IoOut {
        /// The port.
        port: u16,
        /// The bytes written (1, 2 or 4).
        data: &'a [u8],
    },
    /// `in` from `port`; the handler fills `data`.
    IoIn {
        /// The port.
        port: u16,
        /// Where the value goes.
        data: &'a mut [u8],
    },
    /// A read of unbacked guest-physical memory.
    MmioRead {
        /// Where the value goes.
        data: &'a mut [u8],
    },
    /// A write to unbacked guest-physical memory.
    MmioWrite,
    /// `hlt` at ring 0 with interrupts off: nothing can wake the vCPU.
    Hlt,
    /// Triple fault.
    Shutdown,
    /// KVM could not handle the guest (an emulation failure on PVM, for one).
    InternalError,
    /// VM entry failed.
    FailEntry {
        /// Hardware reason.
        reason: u64,
    },
    /// Any other exit reason.
    Other(&'static str),
}

/// Why the guest stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The app exited with this code.
    Exited(i32),
    /// An exception stub reported `vector`.
    Exception {
        /// The vector.
        vector: u8,
    },
    /// Triple fault.
    TripleFault,
    /// KVM internal error; details are read from the vCPU.
    InternalError,
    /// VM entry failed.
    FailEntry {
        /// Hardware reason.
        reason: u64,
    },
    /// The vCPU halted with no way to wake.
    Halted,
    /// A hypercall was refused.
    BadHypercall(HypercallError),
    /// A sleep reached the `--timeout` deadline.
    TimedOut,
    /// The guest parked itself until the VMM releases it.
    Parked,
    /// The guest reached its snapshot point (while booting for `vmm snapshot`).
    SnapshotPoint,
    /// The guest wrote more console output than `--max-output` allows.
    OutputLimit(u64),
    /// Nobody reads the guest's stdout any more.
    BrokenPipe,
    /// The guest's stdout cannot be written: what failed (the VMM stops with an error).
    OutputFailed(String),
    /// An exit the VMM does not expect.
    Unexpected(&'static str),
}

/// What the run loop does next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Run the vCPU again.
    Continue,
    /// Stop the guest.
    Stop(Stop),
}

/// The limits a guest runs under, fixed when its handler is made.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// When `--timeout` stops the guest.
    pub deadline: Option<Instant>,
    /// Console bytes allowed in all (`--max-output`).
    pub max_output: u64,
    /// Stop at the snapshot hypercall (`vmm snapshot`).
    pub stop_at_snapshot_point: bool,
}

/// The VMM's per-guest state that exits act on: its devices, console and counters.
pub(crate) struct ExitHandler {
    console: ConsoleOutput,
    bus: PortBus,
    limits: Limits,
    scratch: Vec<u8>,
    /// Exit counts.
    pub stats: ExitStats,
    /// When each boot milestone arrived.
    pub milestones: Vec<(u32, Instant)>,
}

impl ExitHandler {
    /// A handler writing to `console`, with the guest's devices in `bus`.
    pub(crate) fn new(console: Console, bus: PortBus, limits: Limits) -> Self {
        Self {
            console: ConsoleOutput::new(console, limits.max_output, limits.deadline),
            bus,
            limits,
            scratch: Vec::new(),
            stats: ExitStats::default(),
            milestones: Vec::new(),
        }
    }

    /// When the first console output arrived.
    pub(crate) fn first_output(&self) -> Option<Instant> {
        self.console.first_output()
    }

    /// The guest's devices.
    pub(crate) fn bus(&self) -> &PortBus {
        &self.bus
    }

    /// Decides what to do about `exit`.
    pub(crate) fn handle(&mut self, ram: &GuestRam, exit: Exit<'_>) -> Action {
        let action = match exit {
            Exit::IoOut { port, data } => {
                *self.stats.io_out.entry(port).or_default() += 1;
                self.port_write(ram, port, data)
            }
            Exit::IoIn { port, data } => {
                *self.stats.io_in.entry(port).or_default() += 1;
                if self.bus.read(port, data).is_none() {
                    self.stats.unknown_port_accesses += 1;
                    data.fill(0xff);
                }
                Action::Continue
            }
            Exit::MmioRead { data } => {
                self.stats.mmio += 1;
                data.fill(0xff);
                Action::Continue
            }
            Exit::MmioWrite => {
                self.stats.mmio += 1;
                Action::Continue
            }
            Exit::Hlt => self.stop_other(Stop::Halted),
            Exit::Shutdown => self.stop_other(Stop::TripleFault),
            Exit::InternalError => self.stop_other(Stop::InternalError),
            Exit::FailEntry { reason } => self.stop_other(Stop::FailEntry { reason }),
            Exit::Other(name) => self.stop_other(Stop::Unexpected(name)),
        };
        self.stats.console_bytes = self.console.written();
        action
    }

    fn stop_other(&mut self, stop: Stop) -> Action {
        self.stats.other += 1;
        Action::Stop(stop)
    }

    fn port_write(&mut self, ram: &GuestRam, port: u16, data: &[u8]) -> Action {
        if let Some(call) = abi::port::Hypercall::from_port(port) {
            return match hypercall::decode(call, data, ram) {
                Ok(call) => self.hypercall(ram, call),
                Err(err) => Action::Stop(Stop::BadHypercall(err)),
            };
        }
        let mut ctx = DeviceContext {
            ram,
            console: &mut self.console,
            deadline: self.limits.deadline,
        };
        match self.bus.write(port, data, &mut ctx) {
            Some(Ok(())) => Action::Continue,
            Some(Err(stop)) => self.console_stop(stop),
            None => {
                self.stats.unknown_port_accesses += 1;
                Action::Continue
            }
        }
    }

    fn hypercall(&mut self, ram: &GuestRam, call: Hypercall) -> Action {
        match call {
            Hypercall::Exit(code) => Action::Stop(Stop::Exited(code)),
            Hypercall::ConsoleWrite(request) => self.console_write(ram, request),
            Hypercall::Crash(vector) => Action::Stop(Stop::Exception { vector }),
            Hypercall::Milestone(id) => {
                if self.milestones.len() < MAX_MILESTONES {
                    self.milestones.push((id, Instant::now()));
                }
                Action::Continue
            }
            Hypercall::Sleep(wanted) => self.sleep(wanted),
            Hypercall::Wait => Action::Stop(Stop::Parked),
            Hypercall::SnapshotPoint if self.limits.stop_at_snapshot_point => {
                Action::Stop(Stop::SnapshotPoint)
            }
            Hypercall::SnapshotPoint => Action::Continue,
            Hypercall::Poll {
                args,
                timeout,
                interest,
            } => self.poll(ram, args, timeout, interest),
        }
    }

    /// Waits until a source in `interest` has input, `timeout` passes, or the guest's
    /// deadline does (which stops it); writes the ready sources back to the guest's struct.
    fn poll(
        &mut self,
        ram: &GuestRam,
        args: u64,
        timeout: Option<Duration>,
        interest: u32,
    ) -> Action {
        let started = Instant::now();
        let give_up = timeout.and_then(|t| started.checked_add(t));
        let ready = loop {
            let sources = self.bus.poll_sources(interest);
            let ready = ready_mask(&sources);
            if ready != 0 {
                break ready;
            }
            let now = Instant::now();
            if self.limits.deadline.is_some_and(|d| now >= d) {
                return Action::Stop(Stop::TimedOut);
            }
            if give_up.is_some_and(|g| now >= g) {
                break 0;
            }
            let until = match (give_up, self.limits.deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match wait_for_input(&sources, until.map(|u| u.saturating_duration_since(now))) {
                Some(ready) if ready != 0 => break ready,
                // Woken by a signal (the watchdog) or by the time limit: look again.
                _ => {}
            }
        };
        let result = abi::hypercall::Poll {
            timeout_ns: timeout.map_or(u64::MAX, |t| t.as_nanos() as u64),
            interest,
            ready,
        };
        // The struct's range was validated when the call was decoded.
        let _ = ram.write_obj(args, result);
        Action::Continue
    }

    /// Waits on the guest's behalf, never past the deadline.
    ///
    /// (The `Sleep` hypercall; `Poll` without interest does the same through [`Self::poll`].)
    fn sleep(&mut self, wanted: Duration) -> Action {
        let now = Instant::now();
        match self.limits.deadline {
            Some(deadline) if now.checked_add(wanted).is_none_or(|end| end >= deadline) => {
                std::thread::sleep(deadline.saturating_duration_since(now));
                Action::Stop(Stop::TimedOut)
            }
            _ => {
                std::thread::sleep(wanted);
                Action::Continue
            }
        }
    }

    fn console_write(&mut self, ram: &GuestRam, request: ConsoleRequest) -> Action {
        let mut bytes = std::mem::take(&mut self.scratch);
        bytes.resize(request.len as usize, 0);
        // The range was validated when the hypercall was decoded.
        let _ = ram.read(request.buf, &mut bytes);
        let emitted = self.console.emit(request.stream, &bytes);
        self.scratch = bytes;
        match emitted {
            Ok(()) => Action::Continue,
            Err(stop) => self.console_stop(stop),
        }
    }

    fn console_stop(&self, stop: DeviceStop) -> Action {
        Action::Stop(match stop {
            DeviceStop::OutputLimit => Stop::OutputLimit(self.console.max_output()),
            DeviceStop::BrokenPipe => Stop::BrokenPipe,
            DeviceStop::OutputFailed(why) => Stop::OutputFailed(why),
            DeviceStop::TimedOut => Stop::TimedOut,
            DeviceStop::BadRequest { device, why } => {
                Stop::BadHypercall(HypercallError::Device { device, why })
            }
        })
    }

    /// Hands on whatever the devices still hold; called once the guest has stopped.
    pub(crate) fn flush(&mut self) {
        self.bus.flush(&mut self.console);
        self.console.flush();
        self.stats.console_bytes = self.console.written();
    }
}

/// The bits of the sources that have input now.
fn ready_mask(sources: &[PollSource]) -> u32 {
    sources
        .iter()
        .filter(|s| s.ready)
        .fold(0, |mask, s| mask | s.mask)
}

/// Waits (at most `wait`; without it, until a signal) for one of the sources' fds to become
/// readable; the bits of those that did, or `None` if interrupted.
fn wait_for_input(sources: &[PollSource], wait: Option<Duration>) -> Option<u32> {
    let mut fds: Vec<libc::pollfd> = sources
        .iter()
        .filter_map(|s| s.fd)
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let timeout = wait.map(|w| libc::timespec {
        tv_sec: w.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(w.subsec_nanos() as i32),
    });
    let timeout_ptr = timeout
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `fds` is a live array of `fds.len()` pollfd structs and the timeout (if any) a
    // live timespec; a signal (the watchdog's) returns EINTR.
    let n = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            timeout_ptr,
            std::ptr::null(),
        )
    };
    if n < 0 {
        return None;
    }
    let readable = |fd: i32| {
        fds.iter()
            .any(|p| p.fd == fd && p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0)
    };
    Some(
        sources
            .iter()
            .filter(|s| s.fd.is_some_and(readable))
            .fold(0, |mask, s| mask | s.mask),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::hypercall::stream;
    use abi::port;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const NO_LIMITS: Limits = Limits {
        deadline: None,
        max_output: u64::MAX,
        stop_at_snapshot_point: false,
    };

    fn handler_with(limits: Limits) -> (ExitHandler, Shared, Shared, GuestRam) {
        let (out, err) = (Shared::default(), Shared::default());
        let console = Console {
            stdout: Box::new(out.clone()),
            stderr: Box::new(err.clone()),
        };
        (
            ExitHandler::new(console, PortBus::standard(), limits),
            out,
            err,
            GuestRam::new(1 << 20).unwrap(),
        )
    }

    fn handler() -> (ExitHandler, Shared, Shared, GuestRam) {
        handler_with(NO_LIMITS)
    }

    fn console_write_struct(ram: &GuestRam, at: u64, buf: u64, len: u32, stream: u32) {
        ram.write_obj(at, abi::hypercall::ConsoleWrite { buf, len, stream })
            .unwrap();
    }

    #[test]
    fn test_handle_exit_port_stops_with_code() {
        let (mut h, ..) = handler();
        let ram = GuestRam::new(1 << 20).unwrap();
        let action = h.handle(
            &ram,
            Exit::IoOut {
                port: port::EXIT,
                data: &7u32.to_le_bytes(),
            },
        );
        assert_eq!(action, Action::Stop(Stop::Exited(7)));
    }

    #[test]
    fn test_handle_console_write_reaches_the_right_stream() {
        let (mut h, out, err, ram) = handler();
        ram.write(0x2000, b"hello\n").unwrap();
        console_write_struct(&ram, 0x1000, 0x2000, 6, stream::STDOUT);
        console_write_struct(&ram, 0x1100, 0x2000, 5, stream::STDERR);
        let a = h.handle(
            &ram,
            Exit::IoOut {
                port: port::CONSOLE_WRITE,
                data: &0x1000u32.to_le_bytes(),
            },
        );
        let b = h.handle(
            &ram,
            Exit::IoOut {
                port: port::CONSOLE_WRITE,
                data: &0x1100u32.to_le_bytes(),
            },
        );
        assert_eq!((a, b), (Action::Continue, Action::Continue));
        assert_eq!(&*out.0.lock().unwrap(), b"hello\n");
        assert_eq!(&*err.0.lock().unwrap(), b"hello");
        assert_eq!(h.stats.console_bytes, 11);
    }

    #[test]
    fn test_handle_console_write_bad_buffer_stops_guest() {
        let (mut h, out, _, ram) = handler();
        console_write_struct(&ram, 0x1000, u64::MAX - 1, 6, stream::STDOUT);
        let action = h.handle(
            &ram,
            Exit::IoOut {
                port: port::CONSOLE_WRITE,
                data: &0x1000u32.to_le_bytes(),
            },
        );
        assert!(
            matches!(action, Action::Stop(Stop::BadHypercall(_))),
            "{action:?}"
        );
        assert!(out.0.lock().unwrap().is_empty());
    }

    #[test]
    fn test_handle_console_write_narrow_access_stops_guest() {
        let (mut h, _, _, ram) = handler();
        let action = h.handle(
            &ram,
            Exit::IoOut {
                port: port::CONSOLE_WRITE,
                data: &[0x10],
            },
        );
        assert!(matches!(
            action,
            Action::Stop(Stop::BadHypercall(HypercallError::WrongWidth { .. }))
        ));
    }

    #[test]
    fn test_handle_narrow_exit_write_is_a_bad_hypercall() {
        let (mut h, ..) = handler();
        let ram = GuestRam::new(1 << 20).unwrap();
        for data in [&[7u8][..], &[7, 0]] {
            let action = h.handle(
                &ram,
                Exit::IoOut {
                    port: port::EXIT,
                    data,
                },
            );
            assert!(
                matches!(
                    action,
                    Action::Stop(Stop::BadHypercall(HypercallError::WrongWidth { .. }))
                ),
                "{action:?}"
            );
        }
    }

    #[test]
    fn test_handle_unknown_ports_read_all_ones_and_are_counted() {
        let (mut h, _, _, ram) = handler();
        let mut data = [0u8; 4];
        assert_eq!(
            h.handle(
                &ram,
                Exit::IoIn {
                    port: 0x80,
                    data: &mut data
                }
            ),
            Action::Continue
        );
        assert_eq!(data, [0xff; 4]);
        assert_eq!(
            h.handle(
                &ram,
                Exit::IoOut {
                    port: port::LAST,
                    data: &[1, 2]
                }
            ),
            Action::Continue
        );
        assert_eq!(h.stats.unknown_port_accesses, 2);
        assert_eq!(h.stats.total(), 2);
    }

    #[test]
    fn test_handle_com1_output_is_line_buffered() {
        let (mut h, out, _, ram) = handler();
        for &b in b"hi\nthere" {
            h.handle(
                &ram,
                Exit::IoOut {
                    port: port::COM1,
                    data: &[b],
                },
            );
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
        h.flush();
        assert_eq!(&*out.0.lock().unwrap(), b"hi\nthere");
    }

    #[test]
    fn test_handle_output_beyond_limit_stops_guest() {
        let (mut h, out, _, ram) = handler_with(Limits {
            max_output: 8,
            ..NO_LIMITS
        });
        ram.write(0x2000, b"hello\n").unwrap();
        console_write_struct(&ram, 0x1000, 0x2000, 6, stream::STDOUT);
        let call = 0x1000u32.to_le_bytes();
        let first = h.handle(
            &ram,
            Exit::IoOut {
                port: port::CONSOLE_WRITE,
                data: &call,
            },
        );
        let second = h.handle(
            &ram,
            Exit::IoOut {
                port: port::CONSOLE_WRITE,
                data: &call,
            },
        );
        assert_eq!(first, Action::Continue);
        assert_eq!(second, Action::Stop(Stop::OutputLimit(8)));
        assert_eq!(
            &*out.0.lock().unwrap(),
            b"hello\nhe",
            "output stops exactly at the limit"
        );
    }

    #[test]
    fn test_handle_crash_port_reports_vector() {
        let (mut h, _, _, ram) = handler();
        let action = h.handle(
            &ram,
            Exit::IoOut {
                port: port::CRASH,
                data: &14u32.to_le_bytes(),
            },
        );
        assert_eq!(action, Action::Stop(Stop::Exception { vector: 14 }));
    }

    #[test]
    fn test_handle_shutdown_is_triple_fault() {
        let (mut h, _, _, ram) = handler();
        assert_eq!(
            h.handle(&ram, Exit::Shutdown),
            Action::Stop(Stop::TripleFault)
        );
        assert_eq!(h.handle(&ram, Exit::Hlt), Action::Stop(Stop::Halted));
    }

    #[test]
    fn test_handle_mmio_reads_all_ones() {
        let (mut h, _, _, ram) = handler();
        let mut data = [0u8; 8];
        assert_eq!(
            h.handle(&ram, Exit::MmioRead { data: &mut data }),
            Action::Continue
        );
        assert_eq!(data, [0xff; 8]);
        assert_eq!(h.handle(&ram, Exit::MmioWrite), Action::Continue);
        assert_eq!(h.stats.mmio, 2);
    }

    #[test]
    fn test_handle_sleep_waits_then_continues() {
        let (mut h, _, _, ram) = handler();
        let started = Instant::now();
        let action = h.handle(
            &ram,
            Exit::IoOut {
                port: port::SLEEP,
                data: &20_000u32.to_le_bytes(),
            },
        );
        assert_eq!(action, Action::Continue);
        assert!(started.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn test_handle_sleep_past_deadline_times_out() {
        let (mut h, _, _, ram) = handler_with(Limits {
            deadline: Some(Instant::now() + Duration::from_millis(10)),
            ..NO_LIMITS
        });
        let started = Instant::now();
        let action = h.handle(
            &ram,
            Exit::IoOut {
                port: port::SLEEP,
                data: &u32::MAX.to_le_bytes(),
            },
        );
        assert_eq!(action, Action::Stop(Stop::TimedOut));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// A device whose input is a pipe: ready when the pipe has bytes.
    struct PipeInput(std::os::fd::OwnedFd);

    impl crate::devices::PortDevice for PipeInput {
        fn read(&mut self, _: u16, data: &mut [u8]) {
            data.fill(0);
        }
        fn write(
            &mut self,
            _: u16,
            _: &[u8],
            ctx: &mut DeviceContext<'_>,
        ) -> Result<(), DeviceStop> {
            let _ = ctx.ram.size();
            Ok(())
        }
        fn flush(&mut self, _: &mut dyn ConsoleSink) {}
        fn save(&self) -> Vec<u8> {
            Vec::new()
        }
        fn restore(&mut self, _: &[u8]) -> Result<(), crate::devices::DeviceStateError> {
            Ok(())
        }
        fn poll_source(&self) -> Option<PollSource> {
            use std::os::fd::AsRawFd;
            Some(PollSource {
                mask: abi::hypercall::poll_source::NET,
                ready: false,
                fd: Some(self.0.as_raw_fd()),
            })
        }
    }

    fn pipe() -> (std::os::fd::OwnedFd, std::fs::File) {
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        // SAFETY: pipe writes two new fds into our array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both fds are new and owned by nothing else.
        unsafe {
            (
                std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        }
    }

    fn poll_call(ram: &GuestRam, timeout_ns: u64, interest: u32) -> [u8; 4] {
        let poll = abi::hypercall::Poll {
            timeout_ns,
            interest,
            ready: 0,
        };
        ram.write_obj(0x1000, poll).unwrap();
        0x1000u32.to_le_bytes()
    }

    fn handler_with_pipe(limits: Limits) -> (ExitHandler, std::fs::File, GuestRam) {
        let (read_end, write_end) = pipe();
        let console = Console {
            stdout: Box::new(std::io::sink()),
            stderr: Box::new(std::io::sink()),
        };
        let bus = PortBus::standard().with(0x530..0x534, Box::new(PipeInput(read_end)));
        (
            ExitHandler::new(console, bus, limits),
            write_end,
            GuestRam::new(1 << 20).unwrap(),
        )
    }

    #[test]
    fn test_handle_poll_returns_when_input_arrives() {
        let (mut h, mut input, ram) = handler_with_pipe(NO_LIMITS);
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            input.write_all(b"x").unwrap();
            input
        });
        let call = poll_call(&ram, u64::MAX, abi::hypercall::poll_source::NET);
        let action = h.handle(
            &ram,
            Exit::IoOut {
                port: port::POLL,
                data: &call,
            },
        );
        assert_eq!(action, Action::Continue);
        let back: abi::hypercall::Poll = ram.read_obj(0x1000).unwrap();
        assert_eq!(back.ready, abi::hypercall::poll_source::NET);
        drop(writer.join());
    }

    #[test]
    fn test_handle_poll_without_input_times_out_with_nothing_ready() {
        let (mut h, _input, ram) = handler_with_pipe(NO_LIMITS);
        let started = Instant::now();
        let call = poll_call(&ram, 10_000_000, abi::hypercall::poll_source::ALL);
        let action = h.handle(
            &ram,
            Exit::IoOut {
                port: port::POLL,
                data: &call,
            },
        );
        assert_eq!(action, Action::Continue);
        assert!(started.elapsed() >= Duration::from_millis(10));
        let back: abi::hypercall::Poll = ram.read_obj(0x1000).unwrap();
        assert_eq!(back.ready, 0);
    }

    #[test]
    fn test_handle_poll_past_the_deadline_stops_the_guest() {
        let (mut h, _input, ram) = handler_with_pipe(Limits {
            deadline: Some(Instant::now() + Duration::from_millis(10)),
            ..NO_LIMITS
        });
        let call = poll_call(&ram, u64::MAX, abi::hypercall::poll_source::NET);
        let action = h.handle(
            &ram,
            Exit::IoOut {
                port: port::POLL,
                data: &call,
            },
        );
        assert_eq!(action, Action::Stop(Stop::TimedOut));
    }

    #[test]
    fn test_handle_milestone_is_recorded() {
        let (mut h, _, _, ram) = handler();
        let id = abi::milestone::ENTERED_MAIN.to_le_bytes();
        assert_eq!(
            h.handle(
                &ram,
                Exit::IoOut {
                    port: port::MILESTONE,
                    data: &id
                }
            ),
            Action::Continue
        );
        assert_eq!(h.milestones.len(), 1);
        assert_eq!(h.milestones[0].0, abi::milestone::ENTERED_MAIN);
    }
}
