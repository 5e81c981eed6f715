//! COM1: a 16550 UART modelled by vm-superio, for guests that print byte by byte.
//!
//! The UART writes each byte to a [`LineCollector`]; the VMM takes whole lines out of it (or
//! everything, when the guest stops), so the host sees one write per line, not per byte.

use std::convert::Infallible;
use std::io::{self, Write};
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};

/// The UART raises no interrupts: there is no interrupt controller.
#[derive(Debug, Default)]
pub struct NoInterrupt;

impl Trigger for NoInterrupt {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        Ok(())
    }
}

/// Collects the UART's output bytes until the VMM takes them.
#[derive(Debug, Default)]
pub struct LineCollector {
    bytes: Vec<u8>,
}

impl Write for LineCollector {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // vm-superio flushes after every byte; the VMM decides when bytes leave.
        Ok(())
    }
}

/// Bytes collected beyond which they are handed on even without a newline.
const MAX_PENDING: usize = 4096;

/// The COM1 UART.
pub struct Com1 {
    uart: Serial<NoInterrupt, NoEvents, LineCollector>,
}

impl Default for Com1 {
    fn default() -> Self {
        Self {
            uart: Serial::new(NoInterrupt, LineCollector::default()),
        }
    }
}

impl Com1 {
    /// A register write from the guest.
    pub fn write(&mut self, offset: u8, value: u8) {
        // The collector never fails and the trigger is infallible.
        let _ = self.uart.write(offset, value);
    }

    /// A register read from the guest.
    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }

    /// Takes the complete lines written so far (all bytes if more than 4 KiB are pending).
    pub fn take_lines(&mut self) -> Option<Vec<u8>> {
        let bytes = &mut self.uart.writer_mut().bytes;
        let cut = if bytes.len() >= MAX_PENDING {
            bytes.len()
        } else {
            bytes.iter().rposition(|&b| b == b'\n')? + 1
        };
        let rest = bytes.split_off(cut);
        Some(std::mem::replace(bytes, rest))
    }

    /// Bytes written but not yet taken.
    pub fn pending(&self) -> &[u8] {
        &self.uart.writer().bytes
    }

    /// Puts bytes back as if written (a restored snapshot's).
    pub fn preload(&mut self, bytes: &[u8]) {
        self.uart.writer_mut().bytes.extend_from_slice(bytes);
    }

    /// Takes every byte written so far.
    pub fn take_all(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.uart.writer_mut().bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THR: u8 = 0;
    const LCR: u8 = 3;
    const MCR: u8 = 4;
    const LSR: u8 = 5;
    const SCR: u8 = 7;

    #[test]
    fn test_com1_bytes_are_held_until_newline() {
        let mut com1 = Com1::default();
        for &b in b"hel" {
            com1.write(THR, b);
        }
        assert_eq!(com1.take_lines(), None);
        for &b in b"lo\nwor" {
            com1.write(THR, b);
        }
        assert_eq!(com1.take_lines().as_deref(), Some(&b"hello\n"[..]));
        assert_eq!(com1.take_all(), b"wor");
    }

    #[test]
    fn test_com1_long_output_without_newline_is_handed_on() {
        let mut com1 = Com1::default();
        for _ in 0..MAX_PENDING {
            com1.write(THR, b'x');
        }
        assert_eq!(com1.take_lines().map(|v| v.len()), Some(MAX_PENDING));
    }

    #[test]
    fn test_com1_scratch_register_round_trips() {
        let mut com1 = Com1::default();
        com1.write(SCR, 0x5a);
        assert_eq!(com1.read(SCR), 0x5a);
    }

    #[test]
    fn test_com1_transmitter_reads_empty() {
        let mut com1 = Com1::default();
        com1.write(LCR, 0x03);
        // THR empty and line idle: what a driver polls before each byte.
        assert_eq!(com1.read(LSR) & 0x60, 0x60);
    }

    #[test]
    fn test_com1_loopback_echoes_bytes() {
        let mut com1 = Com1::default();
        com1.write(MCR, 0x1e); // loopback, as drivers do to self-test
        com1.write(THR, 0xae);
        assert_eq!(com1.read(THR), 0xae);
        assert!(
            com1.take_all().is_empty(),
            "loopback bytes must not reach the console"
        );
    }
}
