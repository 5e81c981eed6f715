//! The decisions taken on each VM exit, as a pure function of the exit and the VMM's state, so
//! that unit tests can feed synthetic exits without KVM.
//!
//! The guest is hostile: an odd port access is counted, never a panic; a bad hypercall stops
//! the guest with a report.

use crate::devices::serial::Com1;
use crate::hypercall::{self, HypercallError};
use crate::memory::GuestRam;
use abi::hypercall::stream;
use abi::port;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

/// Milestones kept per guest (a guest may report any number; only these are kept).
pub const MAX_MILESTONES: usize = 64;

/// A VM exit, in the VMM's own terms (see [`crate::vm`] for the translation from KVM's).
#[derive(Debug)]
pub enum Exit<'a> {
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
        /// The address.
        addr: u64,
        /// Where the value goes.
        data: &'a mut [u8],
    },
    /// A write to unbacked guest-physical memory.
    MmioWrite {
        /// The address.
        addr: u64,
    },
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
pub enum Stop {
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
pub enum Action {
    /// Run the vCPU again.
    Continue,
    /// Stop the guest.
    Stop(Stop),
}

/// Counts of VM exits, for `--timeline` and the tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExitStats {
    /// `out` exits per port.
    pub io_out: BTreeMap<u16, u64>,
    /// `in` exits per port.
    pub io_in: BTreeMap<u16, u64>,
    /// MMIO exits.
    pub mmio: u64,
    /// Other exits.
    pub other: u64,
    /// Port accesses to no device.
    pub unknown_port_accesses: u64,
    /// Console bytes written by the guest.
    pub console_bytes: u64,
}

impl ExitStats {
    /// All exits counted.
    pub fn total(&self) -> u64 {
        self.io_out.values().sum::<u64>()
            + self.io_in.values().sum::<u64>()
            + self.mmio
            + self.other
    }
}

/// Where console output goes.
pub struct Console {
    /// The guest's stdout.
    pub stdout: Box<dyn Write + Send>,
    /// The guest's stderr.
    pub stderr: Box<dyn Write + Send>,
}

impl Console {
    /// The VMM process's own stdout and stderr.
    pub fn inherit() -> Self {
        Self {
            stdout: Box::new(std::io::stdout()),
            stderr: Box::new(std::io::stderr()),
        }
    }
}

/// The VMM's per-guest state that exits act on.
pub struct ExitHandler {
    console: Console,
    com1: Com1,
    scratch: Vec<u8>,
    /// Exit counts.
    pub stats: ExitStats,
    /// When each boot milestone arrived.
    pub milestones: Vec<(u32, Instant)>,
    /// When the first console output arrived.
    pub first_output: Option<Instant>,
    /// When `--timeout` stops the guest.
    pub deadline: Option<Instant>,
    /// Console bytes allowed in all (`--max-output`).
    pub max_output: u64,
    /// Stop at the snapshot hypercall (`vmm snapshot`).
    pub snapshot_mode: bool,
}

impl ExitHandler {
    /// A handler writing to `console`.
    pub fn new(console: Console) -> Self {
        Self {
            console,
            com1: Com1::default(),
            scratch: Vec::new(),
            stats: ExitStats::default(),
            milestones: Vec::new(),
            first_output: None,
            deadline: None,
            max_output: u64::MAX,
            snapshot_mode: false,
        }
    }

    /// Decides what to do about `exit`.
    pub fn handle(&mut self, ram: &GuestRam, exit: Exit<'_>) -> Action {
        match exit {
            Exit::IoOut { port, data } => {
                *self.stats.io_out.entry(port).or_default() += 1;
                self.port_write(ram, port, data)
            }
            Exit::IoIn { port, data } => {
                *self.stats.io_in.entry(port).or_default() += 1;
                self.port_read(port, data);
                Action::Continue
            }
            Exit::MmioRead { data, .. } => {
                self.stats.mmio += 1;
                data.fill(0xff);
                Action::Continue
            }
            Exit::MmioWrite { .. } => {
                self.stats.mmio += 1;
                Action::Continue
            }
            other => {
                self.stats.other += 1;
                Action::Stop(match other {
                    Exit::Hlt => Stop::Halted,
                    Exit::Shutdown => Stop::TripleFault,
                    Exit::InternalError => Stop::InternalError,
                    Exit::FailEntry { reason } => Stop::FailEntry { reason },
                    Exit::Other(name) => Stop::Unexpected(name),
                    _ => unreachable!("handled above"),
                })
            }
        }
    }

    fn port_write(&mut self, ram: &GuestRam, port: u16, data: &[u8]) -> Action {
        if let Some(offset) = com1_offset(port) {
            self.com1.write(offset, data.first().copied().unwrap_or(0));
            if let Some(lines) = self.com1.take_lines()
                && !self.emit(stream::STDOUT, &lines)
            {
                return self.output_limit_reached();
            }
            return Action::Continue;
        }
        match port {
            port::EXIT => {
                let mut value = [0u8; 4];
                let n = data.len().min(4);
                value[..n].copy_from_slice(&data[..n]);
                Action::Stop(Stop::Exited(i32::from_le_bytes(value)))
            }
            port::CONSOLE_WRITE => match self.console_write(ram, port, data) {
                Ok(true) => Action::Continue,
                Ok(false) => self.output_limit_reached(),
                Err(err) => Action::Stop(Stop::BadHypercall(err)),
            },
            port::CRASH => Action::Stop(Stop::Exception {
                vector: data.first().copied().unwrap_or(0xff),
            }),
            port::WAIT => Action::Stop(Stop::Parked),
            port::SNAPSHOT if self.snapshot_mode => Action::Stop(Stop::SnapshotPoint),
            port::SNAPSHOT => Action::Continue,
            port::SLEEP => match hypercall::port_value(port, data) {
                Ok(micros) => self.sleep(Duration::from_micros(u64::from(micros))),
                Err(err) => Action::Stop(Stop::BadHypercall(err)),
            },
            port::MILESTONE => {
                if let Ok(id) = hypercall::port_value(port, data)
                    && self.milestones.len() < MAX_MILESTONES
                {
                    self.milestones.push((id, Instant::now()));
                }
                Action::Continue
            }
            _ => {
                self.stats.unknown_port_accesses += 1;
                Action::Continue
            }
        }
    }

    /// Waits on the guest's behalf, never past the deadline.
    fn sleep(&mut self, wanted: Duration) -> Action {
        let now = Instant::now();
        match self.deadline {
            Some(deadline) if now + wanted >= deadline => {
                std::thread::sleep(deadline.saturating_duration_since(now));
                Action::Stop(Stop::TimedOut)
            }
            _ => {
                std::thread::sleep(wanted);
                Action::Continue
            }
        }
    }

    fn port_read(&mut self, port: u16, data: &mut [u8]) {
        if let Some(offset) = com1_offset(port) {
            let value = self.com1.read(offset);
            data.fill(0);
            if let Some(first) = data.first_mut() {
                *first = value;
            }
            return;
        }
        if !(port::FIRST..=port::LAST).contains(&port) {
            self.stats.unknown_port_accesses += 1;
        }
        data.fill(0xff);
    }

    fn console_write(
        &mut self,
        ram: &GuestRam,
        port: u16,
        data: &[u8],
    ) -> Result<bool, HypercallError> {
        let addr = hypercall::port_value(port, data)?;
        let request = hypercall::decode_console_write(ram, addr)?;
        let mut bytes = std::mem::take(&mut self.scratch);
        bytes.resize(request.len as usize, 0);
        // Validated by decode_console_write.
        let _ = ram.read(request.buf, &mut bytes);
        let fits = self.emit(request.stream, &bytes);
        self.scratch = bytes;
        Ok(fits)
    }

    /// Writes console output; `false` once `max_output` is exceeded (what fits is written).
    fn emit(&mut self, stream_id: u32, bytes: &[u8]) -> bool {
        self.first_output.get_or_insert_with(Instant::now);
        let room = self.max_output.saturating_sub(self.stats.console_bytes);
        let fits = bytes.len() as u64 <= room;
        let bytes = &bytes[..bytes.len().min(room as usize)];
        self.stats.console_bytes += bytes.len() as u64;
        let out = if stream_id == stream::STDERR {
            &mut self.console.stderr
        } else {
            &mut self.console.stdout
        };
        // A closed stdout (e.g. `| head`) must not stop the guest or the VMM.
        let _ = out.write_all(bytes).and_then(|()| out.flush());
        fits
    }

    fn output_limit_reached(&self) -> Action {
        Action::Stop(Stop::OutputLimit(self.max_output))
    }

    /// COM1 bytes not yet handed on (saved with a snapshot).
    pub fn com1_pending(&self) -> Vec<u8> {
        self.com1.pending().to_vec()
    }

    /// Puts back COM1 bytes saved with a snapshot.
    pub fn restore_com1_pending(&mut self, bytes: &[u8]) {
        self.com1.preload(bytes);
    }

    /// Hands on whatever the UART still holds; called once the guest has stopped.
    pub fn flush(&mut self) {
        let rest = self.com1.take_all();
        if !rest.is_empty() {
            let _ = self.emit(stream::STDOUT, &rest);
        }
        let _ = self.console.stdout.flush();
        let _ = self.console.stderr.flush();
    }
}

fn com1_offset(port: u16) -> Option<u8> {
    port.checked_sub(port::COM1)
        .filter(|&off| off < port::COM1_LEN)
        .map(|off| off as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn handler() -> (ExitHandler, Shared, Shared, GuestRam) {
        let (out, err) = (Shared::default(), Shared::default());
        let console = Console {
            stdout: Box::new(out.clone()),
            stderr: Box::new(err.clone()),
        };
        (
            ExitHandler::new(console),
            out,
            err,
            GuestRam::new(1 << 20).unwrap(),
        )
    }

    fn console_write_struct(ram: &GuestRam, at: u64, buf: u64, len: u32, stream: u32) {
        let mut raw = Vec::new();
        raw.extend_from_slice(&buf.to_le_bytes());
        raw.extend_from_slice(&len.to_le_bytes());
        raw.extend_from_slice(&stream.to_le_bytes());
        ram.write(at, &raw).unwrap();
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
                    port: 0x50e,
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
        let (mut h, out, _, ram) = handler();
        h.max_output = 8;
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
            h.handle(
                &ram,
                Exit::MmioRead {
                    addr: 1 << 40,
                    data: &mut data
                }
            ),
            Action::Continue
        );
        assert_eq!(data, [0xff; 8]);
        assert_eq!(
            h.handle(&ram, Exit::MmioWrite { addr: 1 << 40 }),
            Action::Continue
        );
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
        let (mut h, _, _, ram) = handler();
        h.deadline = Some(Instant::now() + Duration::from_millis(10));
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
