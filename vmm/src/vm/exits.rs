//! The decisions taken on each VM exit, as a function of the exit and the guest's devices and
//! limits, so that unit tests can feed synthetic exits without KVM.
//!
//! The guest is hostile: an odd port access is counted, never a panic; a bad hypercall stops
//! the guest with a report. Ports are decoded once: the hypercall range into a typed
//! [`Hypercall`](super::hypercall::Hypercall), everything else through the device bus.

use super::console::{Console, ConsoleOutput};
use super::hypercall::{self, ConsoleRequest, Hypercall, HypercallError};
use crate::devices::{ConsoleSink, DeviceStop, PortBus};
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
            console: ConsoleOutput::new(console, limits.max_output),
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
        match self.bus.write(port, data, &mut self.console) {
            Some(Ok(())) => Action::Continue,
            Some(Err(DeviceStop::OutputLimit)) => self.output_limit_reached(),
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
        }
    }

    /// Waits on the guest's behalf, never past the deadline.
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
        let fits = self.console.emit(request.stream, &bytes);
        self.scratch = bytes;
        if fits {
            Action::Continue
        } else {
            self.output_limit_reached()
        }
    }

    fn output_limit_reached(&self) -> Action {
        Action::Stop(Stop::OutputLimit(self.console.max_output()))
    }

    /// Hands on whatever the devices still hold; called once the guest has stopped.
    pub(crate) fn flush(&mut self) {
        self.bus.flush(&mut self.console);
        self.console.flush();
        self.stats.console_bytes = self.console.written();
    }
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
