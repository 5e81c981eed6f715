//! Decoding and validation of hypercall arguments. Everything here comes from the guest and is
//! checked once, where it enters: struct address, buffer address and length, stream number.

use crate::memory::{GuestRam, RangeError};
use abi::hypercall::{CONSOLE_WRITE_MAX, ConsoleWrite, stream};

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
}

/// The 32-bit value of a port write, which must be exactly 4 bytes wide.
pub fn port_value(port: u16, data: &[u8]) -> Result<u32, HypercallError> {
    let bytes: [u8; 4] = data.try_into().map_err(|_| HypercallError::WrongWidth {
        port,
        size: data.len(),
    })?;
    Ok(u32::from_le_bytes(bytes))
}

/// A validated console write: `len` bytes at `buf` lie in guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleRequest {
    /// [`stream::STDOUT`] or [`stream::STDERR`].
    pub stream: u32,
    /// Start of the bytes.
    pub buf: u64,
    /// Number of bytes.
    pub len: u32,
}

/// Reads and validates a [`ConsoleWrite`] at guest-physical `addr`.
pub fn decode_console_write(ram: &GuestRam, addr: u32) -> Result<ConsoleRequest, HypercallError> {
    const CALL: &str = "console write";
    let mut raw = [0u8; size_of::<ConsoleWrite>()];
    ram.read(u64::from(addr), &mut raw)
        .map_err(|source| HypercallError::Struct { call: CALL, source })?;
    let args = ConsoleWrite {
        buf: u64::from_le_bytes(raw[0..8].try_into().unwrap()),
        len: u32::from_le_bytes(raw[8..12].try_into().unwrap()),
        stream: u32::from_le_bytes(raw[12..16].try_into().unwrap()),
    };
    if args.stream != stream::STDOUT && args.stream != stream::STDERR {
        return Err(HypercallError::UnknownStream(args.stream));
    }
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
        stream: args.stream,
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
        let mut raw = Vec::new();
        raw.extend_from_slice(&buf.to_le_bytes());
        raw.extend_from_slice(&len.to_le_bytes());
        raw.extend_from_slice(&stream.to_le_bytes());
        ram.write(at, &raw).unwrap();
        ram
    }

    #[test]
    fn test_decode_console_write_valid_request_is_accepted() {
        let ram = ram_with_struct(0x1000, 0x2000, 5, stream::STDOUT);
        let req = decode_console_write(&ram, 0x1000).unwrap();
        assert_eq!(
            req,
            ConsoleRequest {
                stream: stream::STDOUT,
                buf: 0x2000,
                len: 5
            }
        );
    }

    #[test]
    fn test_decode_console_write_struct_past_ram_is_refused() {
        let ram = GuestRam::new(MEM).unwrap();
        let err = decode_console_write(&ram, (MEM - 8) as u32).unwrap_err();
        assert!(matches!(err, HypercallError::Struct { .. }), "{err}");
        let err = decode_console_write(&ram, u32::MAX).unwrap_err();
        assert!(matches!(err, HypercallError::Struct { .. }), "{err}");
    }

    #[test]
    fn test_decode_console_write_wrapping_buffer_is_refused() {
        let ram = ram_with_struct(0x1000, u64::MAX - 2, 16, stream::STDOUT);
        let err = decode_console_write(&ram, 0x1000).unwrap_err();
        assert!(matches!(
            err,
            HypercallError::Buffer {
                source: RangeError::Overflow { .. },
                ..
            }
        ));
    }

    #[test]
    fn test_decode_console_write_buffer_past_ram_is_refused() {
        let ram = ram_with_struct(0x1000, MEM - 4, 16, stream::STDOUT);
        let err = decode_console_write(&ram, 0x1000).unwrap_err();
        assert!(matches!(
            err,
            HypercallError::Buffer {
                source: RangeError::OutOfRam { .. },
                ..
            }
        ));
    }

    #[test]
    fn test_decode_console_write_overlong_is_refused() {
        let ram = ram_with_struct(0x1000, 0x2000, CONSOLE_WRITE_MAX + 1, stream::STDOUT);
        assert!(matches!(
            decode_console_write(&ram, 0x1000),
            Err(HypercallError::TooLong { .. })
        ));
    }

    #[test]
    fn test_decode_console_write_unknown_stream_is_refused() {
        let ram = ram_with_struct(0x1000, 0x2000, 1, 7);
        assert_eq!(
            decode_console_write(&ram, 0x1000),
            Err(HypercallError::UnknownStream(7))
        );
    }

    #[test]
    fn test_decode_console_write_struct_overlapping_buffer_is_fine() {
        // The buffer may overlap its own struct: the VMM copies both out before using them.
        let ram = ram_with_struct(0x1000, 0x1000, 16, stream::STDERR);
        assert!(decode_console_write(&ram, 0x1000).is_ok());
    }

    #[test]
    fn test_port_value_requires_four_bytes() {
        assert_eq!(port_value(0x500, &[7, 0, 0, 0]), Ok(7));
        assert!(port_value(0x500, &[7]).is_err());
        assert!(port_value(0x500, &[7, 0]).is_err());
    }
}
