//! COM1: a 16550 UART modelled by vm-superio, for guests that print byte by byte.
//!
//! The UART writes each byte to a [`LineCollector`]; the device hands whole lines to the
//! console (or everything, when the guest stops), so the host sees one write per line, not
//! per byte. Its saved state is the UART's registers, its receive FIFO and the bytes not yet
//! handed on, in the layout of [`Com1Record`].

use super::{ConsoleSink, DeviceContext, DeviceStateError, DeviceStop, PortDevice, Stream};
use std::convert::Infallible;
use std::io::{self, Write};
use std::ops::Range;
use vm_memory::ByteValued;
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};

/// The ports of COM1.
pub(crate) const PORTS: Range<u16> = abi::port::COM1..abi::port::COM1 + abi::port::COM1_LEN;

/// The UART raises no interrupts: there is no interrupt controller.
#[derive(Debug, Default)]
pub(crate) struct NoInterrupt;

impl Trigger for NoInterrupt {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        Ok(())
    }
}

/// Collects the UART's output bytes until the device hands them on.
#[derive(Debug, Default)]
pub(crate) struct LineCollector {
    bytes: Vec<u8>,
}

impl Write for LineCollector {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // vm-superio flushes after every byte; the device decides when bytes leave.
        Ok(())
    }
}

/// Bytes collected beyond which they are handed on even without a newline.
const MAX_PENDING: usize = 4096;
/// The UART's receive FIFO size (vm-superio's).
const FIFO_SIZE: usize = 64;

/// The COM1 UART.
pub(crate) struct Com1 {
    uart: Serial<NoInterrupt, NoEvents, LineCollector>,
}

impl Default for Com1 {
    fn default() -> Self {
        Self {
            uart: Serial::new(NoInterrupt, LineCollector::default()),
        }
    }
}

/// The fixed part of COM1's saved state; the pending output bytes follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Com1Record {
    /// DLL, DLM, IER, IIR, LCR, LSR, MCR, MSR, SCR.
    registers: [u8; 9],
    /// Bytes used in `fifo`.
    fifo_len: u8,
    /// Pending output bytes after this record.
    pending_len: u16,
    /// The receive FIFO.
    fifo: [u8; FIFO_SIZE],
}

impl Default for Com1Record {
    fn default() -> Self {
        Self {
            registers: [0; 9],
            fifo_len: 0,
            pending_len: 0,
            fifo: [0; FIFO_SIZE],
        }
    }
}

// SAFETY: `#[repr(C)]` of byte arrays and integers laid out without padding (9 + 1 + 2 + 64
// bytes, alignment 2): every bit pattern is valid.
unsafe impl ByteValued for Com1Record {}
const _: () = assert!(size_of::<Com1Record>() == 76);

impl Com1 {
    /// Takes the complete lines written so far (all bytes if more than 4 KiB are pending).
    fn take_lines(&mut self) -> Option<Vec<u8>> {
        let bytes = &mut self.uart.writer_mut().bytes;
        let cut = if bytes.len() >= MAX_PENDING {
            bytes.len()
        } else {
            bytes.iter().rposition(|&b| b == b'\n')? + 1
        };
        let rest = bytes.split_off(cut);
        Some(std::mem::replace(bytes, rest))
    }

    /// Takes every byte written so far.
    fn take_all(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.uart.writer_mut().bytes)
    }
}

impl PortDevice for Com1 {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let value = self.uart.read(offset as u8);
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(
        &mut self,
        offset: u16,
        data: &[u8],
        ctx: &mut DeviceContext<'_>,
    ) -> Result<(), DeviceStop> {
        // The collector never fails and the trigger is infallible.
        let _ = self
            .uart
            .write(offset as u8, data.first().copied().unwrap_or(0));
        match self.take_lines() {
            Some(lines) => ctx.console.emit(Stream::Stdout, &lines),
            None => Ok(()),
        }
    }

    fn flush(&mut self, console: &mut dyn ConsoleSink) {
        let rest = self.take_all();
        if !rest.is_empty() {
            let _ = console.emit(Stream::Stdout, &rest);
        }
    }

    fn save(&self) -> Vec<u8> {
        let state = self.uart.state();
        let pending = &self.uart.writer().bytes;
        let pending = &pending[..pending.len().min(MAX_PENDING)];
        let mut record = Com1Record {
            registers: [
                state.baud_divisor_low,
                state.baud_divisor_high,
                state.interrupt_enable,
                state.interrupt_identification,
                state.line_control,
                state.line_status,
                state.modem_control,
                state.modem_status,
                state.scratch,
            ],
            fifo_len: state.in_buffer.len().min(FIFO_SIZE) as u8,
            pending_len: pending.len() as u16,
            fifo: [0; FIFO_SIZE],
        };
        record.fifo[..usize::from(record.fifo_len)]
            .copy_from_slice(&state.in_buffer[..usize::from(record.fifo_len)]);
        [record.as_slice(), pending].concat()
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), DeviceStateError> {
        let invalid = |why| DeviceStateError::Invalid {
            device: "COM1",
            why,
        };
        let (head, pending) = bytes
            .split_at_checked(size_of::<Com1Record>())
            .ok_or(invalid("truncated"))?;
        let record: Com1Record =
            crate::memory::value_from_bytes(head).ok_or(invalid("truncated"))?;
        if usize::from(record.fifo_len) > FIFO_SIZE {
            return Err(invalid("receive FIFO overflows"));
        }
        if usize::from(record.pending_len) != pending.len() || pending.len() > MAX_PENDING {
            return Err(invalid("pending output length"));
        }
        let [dll, dlm, ier, iir, lcr, lsr, mcr, msr, scr] = record.registers;
        let state = SerialState {
            baud_divisor_low: dll,
            baud_divisor_high: dlm,
            interrupt_enable: ier,
            interrupt_identification: iir,
            line_control: lcr,
            line_status: lsr,
            modem_control: mcr,
            modem_status: msr,
            scratch: scr,
            in_buffer: record.fifo[..usize::from(record.fifo_len)].to_vec(),
        };
        let collector = LineCollector {
            bytes: pending.to_vec(),
        };
        self.uart = Serial::from_state(&state, NoInterrupt, NoEvents, collector)
            .map_err(|_| invalid("rejected by the UART model"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::Collected;

    fn write_all(com1: &mut Com1, offset: u16, bytes: &[u8]) -> Vec<u8> {
        let mut out = Collected::default();
        let ram = crate::memory::GuestRam::new(1 << 20).unwrap();
        for &b in bytes {
            let mut ctx = DeviceContext {
                ram: &ram,
                console: &mut out,
                deadline: None,
            };
            com1.write(offset, &[b], &mut ctx).unwrap();
        }
        out.0
    }

    fn read(com1: &mut Com1, offset: u16) -> u8 {
        let mut data = [0u8; 1];
        com1.read(offset, &mut data);
        data[0]
    }

    const THR: u16 = 0;
    const LCR: u16 = 3;
    const MCR: u16 = 4;
    const LSR: u16 = 5;
    const SCR: u16 = 7;

    #[test]
    fn test_com1_bytes_are_held_until_newline() {
        let mut com1 = Com1::default();
        assert!(write_all(&mut com1, THR, b"hel").is_empty());
        assert_eq!(write_all(&mut com1, THR, b"lo\nwor"), b"hello\n");
        assert_eq!(com1.take_all(), b"wor");
    }

    #[test]
    fn test_com1_long_output_without_newline_is_handed_on() {
        let mut com1 = Com1::default();
        let out = write_all(&mut com1, THR, &[b'x'; MAX_PENDING]);
        assert_eq!(out.len(), MAX_PENDING);
    }

    #[test]
    fn test_com1_scratch_register_round_trips() {
        let mut com1 = Com1::default();
        write_all(&mut com1, SCR, &[0x5a]);
        assert_eq!(read(&mut com1, SCR), 0x5a);
    }

    #[test]
    fn test_com1_transmitter_reads_empty() {
        let mut com1 = Com1::default();
        write_all(&mut com1, LCR, &[0x03]);
        // THR empty and line idle: what a driver polls before each byte.
        assert_eq!(read(&mut com1, LSR) & 0x60, 0x60);
    }

    #[test]
    fn test_com1_loopback_echoes_bytes() {
        let mut com1 = Com1::default();
        write_all(&mut com1, MCR, &[0x1e]); // loopback, as drivers do to self-test
        write_all(&mut com1, THR, &[0xae]);
        assert_eq!(read(&mut com1, THR), 0xae);
        assert!(
            com1.take_all().is_empty(),
            "loopback bytes must not reach the console"
        );
    }

    #[test]
    fn test_com1_registers_survive_save_and_restore() {
        let mut com1 = Com1::default();
        write_all(&mut com1, LCR, &[0x83]); // DLAB on
        write_all(&mut com1, THR, &[0x01]); // divisor low
        write_all(&mut com1, LCR, &[0x03]);
        write_all(&mut com1, SCR, &[0x77]);
        write_all(&mut com1, THR, b"half a line");
        let saved = com1.save();
        let mut restored = Com1::default();
        restored.restore(&saved).unwrap();
        assert_eq!(read(&mut restored, SCR), 0x77);
        assert_eq!(read(&mut restored, LCR), 0x03);
        assert_eq!(restored.take_all(), b"half a line");
    }

    #[test]
    fn test_com1_restore_refuses_bad_lengths() {
        let mut com1 = Com1::default();
        let mut saved = com1.save();
        saved.push(b'x'); // one byte more than pending_len says
        assert!(com1.restore(&saved).is_err());
        assert!(com1.restore(&saved[..10]).is_err());
        let mut record = Com1Record {
            fifo_len: 200,
            ..Default::default()
        };
        assert!(com1.restore(record.as_slice()).is_err());
        record.fifo_len = 0;
        assert!(com1.restore(record.as_slice()).is_ok());
    }
}
