//! Hypercall decoding: an `out` to a hypercall port becomes one typed [`Hypercall`] here, with
//! every guest-given value checked once, where it enters (port width, struct address, buffer
//! address and length, stream number). The exit handler then acts on values it can trust.

use crate::devices::Stream;
use crate::memory::{GuestRam, RangeError};
use abi::hypercall::{CONSOLE_WRITE_MAX, ConsoleWrite, poll_source, stream};
use abi::port::Hypercall as Port;
use std::time::Duration;

/// A hypercall the VMM refuses; the guest is stopped with a crash report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HypercallError {
    /// The port value was not a 32-bit write.
    #[error("port {port:#x} takes a 32-bit write, got {size} bytes")]
    WrongWidth {
        /// The port.
        port: u16,
        /// The access size.
        size: usize,
    },
    /// The argument struct is not in RAM.
    #[error("{call}: argument struct: {source}")]
    Struct {
        /// The hypercall.
        call: &'static str,
        /// Why.
        #[source]
        source: RangeError,
    },
    /// A buffer is not in RAM.
    #[error("{call}: buffer: {source}")]
    Buffer {
        /// The hypercall.
        call: &'static str,
        /// Why.
        #[source]
        source: RangeError,
    },
    /// A length over the limit.
    #[error("{call}: length {len} exceeds the limit of {max}")]
    TooLong {
        /// The hypercall.
        call: &'static str,
        /// The length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// An unknown console stream.
    #[error("console write: unknown stream {0}")]
    UnknownStream(u32),
    /// The poll request names sources this ABI does not define.
    #[error("poll: unknown sources {0:#x}")]
    UnknownPollSources(u32),
    /// A device refused a request.
    #[error("{device}: {why}")]
    Device {
        /// The device.
        device: &'static str,
        /// What was wrong.
        why: String,
    },
    /// The crash port was written from outside the VMM's exception stubs.
    #[error(
        "crash port written from {0}, not from the VMM's exception stubs (a forged crash report)"
    )]
    ForgedCrash(&'static str),
}

/// A validated console write: `len` bytes at `buf` lie in guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConsoleRequest {
    /// Which stream.
    pub stream: Stream,
    /// Start of the bytes.
    pub buf: u64,
    /// Number of bytes.
    pub len: u32,
}

/// A decoded hypercall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hypercall {
    /// The app exited with this code.
    Exit(i32),
    /// Write console bytes.
    ConsoleWrite(ConsoleRequest),
    /// An exception stub reported this vector (where it came from is checked on the crash
    /// path, which reads the registers anyway).
    Crash(u8),
    /// A boot milestone.
    Milestone(u32),
    /// Wait this long.
    Sleep(Duration),
    /// Park until released.
    Wait,
    /// The snapshot point.
    SnapshotPoint,
    /// Wait for input or a timeout; the ready sources go back to the struct at `args`.
    Poll {
        /// Guest-physical address of the `abi::hypercall::Poll` (validated to lie in RAM).
        args: u64,
        /// The longest wait (`None`: only the guest's own timeout).
        timeout: Option<Duration>,
        /// `poll_source` bits to wait for.
        interest: u32,
    },
}

/// Decodes an `out` of `data` to hypercall `port`.
pub(crate) fn decode(port: Port, data: &[u8], ram: &GuestRam) -> Result<Hypercall, HypercallError> {
    let value = port_value(port.port(), data)?;
    Ok(match port {
        Port::Exit => Hypercall::Exit(value as i32),
        Port::ConsoleWrite => Hypercall::ConsoleWrite(decode_console_write(ram, value)?),
        Port::Crash => Hypercall::Crash(value as u8),
        Port::Milestone => Hypercall::Milestone(value),
        Port::Sleep => Hypercall::Sleep(Duration::from_micros(u64::from(value))),
        Port::Wait => Hypercall::Wait,
        Port::Snapshot => Hypercall::SnapshotPoint,
        Port::Poll => decode_poll(ram, value)?,
    })
}

/// Reads and validates an `abi::hypercall::Poll` at guest-physical `addr`.
fn decode_poll(ram: &GuestRam, addr: u32) -> Result<Hypercall, HypercallError> {
    let args: abi::hypercall::Poll =
        ram.read_obj(u64::from(addr))
            .map_err(|source| HypercallError::Struct {
                call: "poll",
                source,
            })?;
    if args.interest & !poll_source::ALL != 0 {
        return Err(HypercallError::UnknownPollSources(
            args.interest & !poll_source::ALL,
        ));
    }
    Ok(Hypercall::Poll {
        args: u64::from(addr),
        timeout: (args.timeout_ns != u64::MAX).then(|| Duration::from_nanos(args.timeout_ns)),
        interest: args.interest,
    })
}

/// The 32-bit value of a port write, which must be exactly 4 bytes wide (one rule for every
/// hypercall port).
fn port_value(port: u16, data: &[u8]) -> Result<u32, HypercallError> {
    let bytes: [u8; 4] = data.try_into().map_err(|_| HypercallError::WrongWidth {
        port,
        size: data.len(),
    })?;
    Ok(u32::from_le_bytes(bytes))
}

/// Reads and validates a [`ConsoleWrite`] at guest-physical `addr`.
fn decode_console_write(ram: &GuestRam, addr: u32) -> Result<ConsoleRequest, HypercallError> {
    const CALL: &str = "console write";
    let args: ConsoleWrite = ram
        .read_obj(u64::from(addr))
        .map_err(|source| HypercallError::Struct { call: CALL, source })?;
    let stream = match args.stream {
        stream::STDOUT => Stream::Stdout,
        stream::STDERR => Stream::Stderr,
        other => return Err(HypercallError::UnknownStream(other)),
    };
    if args.len > CONSOLE_WRITE_MAX {
        return Err(HypercallError::TooLong {
            call: CALL,
            len: u64::from(args.len),
            max: u64::from(CONSOLE_WRITE_MAX),
        });
    }
    ram.check_range(args.buf, u64::from(args.len))
        .map_err(|source| HypercallError::Buffer { call: CALL, source })?;
    Ok(ConsoleRequest {
        stream,
        buf: args.buf,
        len: args.len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEM: u64 = 1 << 20;

    fn ram_with_struct(at: u64, buf: u64, len: u32, stream: u32) -> GuestRam {
        let ram = GuestRam::new(MEM).unwrap();
        ram.write_obj(at, ConsoleWrite { buf, len, stream })
            .unwrap();
        ram
    }

    fn console_write(ram: &GuestRam, addr: u32) -> Result<Hypercall, HypercallError> {
        decode(Port::ConsoleWrite, &addr.to_le_bytes(), ram)
    }

    #[test]
    fn test_decode_console_write_valid_request_is_accepted() {
        let ram = ram_with_struct(0x1000, 0x2000, 5, stream::STDOUT);
        assert_eq!(
            console_write(&ram, 0x1000),
            Ok(Hypercall::ConsoleWrite(ConsoleRequest {
                stream: Stream::Stdout,
                buf: 0x2000,
                len: 5
            }))
        );
    }

    #[test]
    fn test_decode_console_write_struct_past_ram_is_refused() {
        let ram = GuestRam::new(MEM).unwrap();
        let err = console_write(&ram, (MEM - 8) as u32).unwrap_err();
        assert!(matches!(err, HypercallError::Struct { .. }), "{err}");
        let err = console_write(&ram, u32::MAX).unwrap_err();
        assert!(matches!(err, HypercallError::Struct { .. }), "{err}");
    }

    #[test]
    fn test_decode_console_write_wrapping_buffer_is_refused() {
        let ram = ram_with_struct(0x1000, u64::MAX - 2, 16, stream::STDOUT);
        assert!(matches!(
            console_write(&ram, 0x1000),
            Err(HypercallError::Buffer {
                source: RangeError::Overflow { .. },
                ..
            })
        ));
    }

    #[test]
    fn test_decode_console_write_buffer_past_ram_is_refused() {
        let ram = ram_with_struct(0x1000, MEM - 4, 16, stream::STDOUT);
        assert!(matches!(
            console_write(&ram, 0x1000),
            Err(HypercallError::Buffer {
                source: RangeError::OutOfRam { .. },
                ..
            })
        ));
    }

    #[test]
    fn test_decode_console_write_overlong_is_refused() {
        let ram = ram_with_struct(0x1000, 0x2000, CONSOLE_WRITE_MAX + 1, stream::STDOUT);
        assert!(matches!(
            console_write(&ram, 0x1000),
            Err(HypercallError::TooLong { .. })
        ));
    }

    #[test]
    fn test_decode_console_write_unknown_stream_is_refused() {
        let ram = ram_with_struct(0x1000, 0x2000, 1, 7);
        assert_eq!(
            console_write(&ram, 0x1000),
            Err(HypercallError::UnknownStream(7))
        );
    }

    #[test]
    fn test_decode_console_write_struct_overlapping_buffer_is_fine() {
        // The buffer may overlap its own struct: the VMM copies both out before using them.
        let ram = ram_with_struct(0x1000, 0x1000, 16, stream::STDERR);
        assert!(console_write(&ram, 0x1000).is_ok());
    }

    #[test]
    fn test_decode_every_port_refuses_narrow_writes() {
        let ram = GuestRam::new(MEM).unwrap();
        for port in Port::ALL {
            for data in [&[7u8][..], &[7, 0], &[7, 0, 0, 0, 0, 0, 0, 0]] {
                assert_eq!(
                    decode(port, data, &ram),
                    Err(HypercallError::WrongWidth {
                        port: port.port(),
                        size: data.len()
                    }),
                    "{port:?} with {} bytes",
                    data.len()
                );
            }
        }
    }

    #[test]
    fn test_decode_poll_reads_its_struct() {
        let ram = GuestRam::new(MEM).unwrap();
        let poll = abi::hypercall::Poll {
            timeout_ns: 5_000,
            interest: poll_source::STDIN,
            ready: 0,
        };
        ram.write_obj(0x1000, poll).unwrap();
        assert_eq!(
            decode(Port::Poll, &0x1000u32.to_le_bytes(), &ram),
            Ok(Hypercall::Poll {
                args: 0x1000,
                timeout: Some(Duration::from_micros(5)),
                interest: poll_source::STDIN
            })
        );
        ram.write_obj(
            0x1000,
            abi::hypercall::Poll {
                interest: 1 << 31,
                ..poll
            },
        )
        .unwrap();
        assert!(matches!(
            decode(Port::Poll, &0x1000u32.to_le_bytes(), &ram),
            Err(HypercallError::UnknownPollSources(_))
        ));
        assert!(matches!(
            decode(Port::Poll, &((MEM - 8) as u32).to_le_bytes(), &ram),
            Err(HypercallError::Struct { .. })
        ));
    }

    #[test]
    fn test_decode_exit_takes_the_whole_value() {
        let ram = GuestRam::new(MEM).unwrap();
        assert_eq!(
            decode(Port::Exit, &0x1_0007u32.to_le_bytes(), &ram),
            Ok(Hypercall::Exit(0x1_0007))
        );
    }
}
