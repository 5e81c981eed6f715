//! Emulated devices and the port bus that routes guest port accesses to them.
//!
//! A device owns a range of I/O ports, its registers, and its own save/restore (its state
//! travels in a snapshot as bytes it encodes and checks itself). The bus decodes a port once
//! into (device, offset), so the run loop never compares port numbers. The devices: the 16550
//! UART on COM1 ([`serial`]), standard input ([`stdin`]) and the shared host directories
//! ([`volumes`]). The TSS I/O bitmap opens exactly [`port_ranges`] (plus the hypercall ports)
//! to ring 3.
//!
//! Devices write console output through a [`ConsoleSink`], which the VM core implements (it
//! also enforces `--max-output`), so this room depends on nothing of the VM's. A device that
//! gives the guest input (stdin, a network interface) is also a poll source: it owns one
//! `abi::hypercall::poll_source` bit and says whether input is ready or which fd to wait on,
//! and the VM core's `Poll` hypercall waits on all of them at once.
//!
//! Adding a device: a module here implementing [`PortDevice`], its port range as constants in
//! `abi::port` (and in [`port_ranges`], which opens it to ring 3), its settings in
//! [`DeviceConfig`], and its construction in [`PortBus::new`].

pub mod net;
pub(crate) mod serial;
pub(crate) mod stdin;
pub mod volumes;

pub use stdin::StdinSource;
pub use volumes::{SharedFd, Volume, VolumeError, VolumeRoots, VolumeSpec};

use crate::memory::GuestRam;
use std::ops::Range;
use std::os::fd::RawFd;

/// A console stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stream {
    /// The guest's standard output.
    Stdout,
    /// The guest's standard error.
    Stderr,
}

/// Where devices put console output.
pub(crate) trait ConsoleSink {
    /// Writes `bytes` (what fits in the output budget); an error says why the guest must stop.
    fn emit(&mut self, stream: Stream, bytes: &[u8]) -> Result<(), DeviceStop>;
}

/// Why a device stops the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeviceStop {
    /// The guest's console output went past `--max-output`.
    OutputLimit,
    /// Nobody reads the guest's stdout any more (a closed pipe, as in `| head -1`).
    BrokenPipe,
    /// The guest's stdout cannot be written (a full disk, `/dev/full`): what failed.
    OutputFailed(String),
    /// The guest's `--timeout` passed while the device waited for input.
    TimedOut,
    /// The guest made a request the device refuses (a bad address, length or value): the
    /// guest is stopped with a report, like a bad hypercall.
    BadRequest {
        /// The device.
        device: &'static str,
        /// What was wrong.
        why: String,
    },
}

/// What a device may use while it handles a guest access.
pub(crate) struct DeviceContext<'a> {
    /// Guest RAM, for buffers the guest names (validated by the device before use).
    pub ram: &'a GuestRam,
    /// The console.
    pub console: &'a mut dyn ConsoleSink,
    /// When `--timeout` stops the guest: a device that waits for input waits no longer.
    pub deadline: Option<std::time::Instant>,
}

/// A device's answer to the `Poll` hypercall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PollSource {
    /// Its `abi::hypercall::poll_source` bit.
    pub mask: u32,
    /// Input is ready now (buffered in the device, or end of input).
    pub ready: bool,
    /// Otherwise, the host fd whose readability means input (none: it never gets input).
    pub fd: Option<RawFd>,
}

/// The settings of a guest's devices beyond the standard ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Where its standard input comes from (default: none).
    pub stdin: StdinSource,
    /// The host directories it may use, opened (default: none).
    pub volumes: Vec<Volume>,
    /// A network device over a tap (`--net`).
    pub net: Option<net::NetConfig>,
}

impl DeviceConfig {
    /// The taps the devices read and write while the guest runs (the sandbox allows `read`
    /// and `write` on these alone).
    pub fn host_fds(&self) -> Vec<RawFd> {
        self.net.iter().map(|n| n.tap.raw_fd()).collect()
    }

    /// What the sandbox of the guest's thread must allow for these devices.
    pub fn grants(&self) -> crate::sandbox::Grants {
        crate::sandbox::Grants {
            stdin_stream: match self.stdin {
                StdinSource::Stream(fd) => Some(fd),
                _ => None,
            },
            stdin_file: matches!(self.stdin, StdinSource::File(_)),
            volumes: !self.volumes.is_empty(),
            taps: self.host_fds(),
            ..crate::sandbox::Grants::default()
        }
    }
}

/// Why a device's saved state cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceStateError {
    /// The state names a port range no device owns.
    #[error("saved state for an unknown device at port {0:#x}")]
    UnknownDevice(u16),
    /// The bytes are not a valid state of this device.
    #[error("saved state of {device} is invalid: {why}")]
    Invalid {
        /// The device.
        device: &'static str,
        /// What is wrong.
        why: &'static str,
    },
}

/// [`PortDevice::restore`] of a device that saves nothing (stdin, volumes, net): only the
/// empty state is its own.
pub(crate) fn restore_stateless(
    device: &'static str,
    bytes: &[u8],
) -> Result<(), DeviceStateError> {
    if bytes.is_empty() {
        Ok(())
    } else {
        Err(DeviceStateError::Invalid {
            device,
            why: "it saves no state",
        })
    }
}

/// A device on the port bus.
pub(crate) trait PortDevice: Send {
    /// A guest `in` at `offset` within the device's range; fill `data`.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// A guest `out` at `offset` within the device's range.
    fn write(
        &mut self,
        offset: u16,
        data: &[u8],
        ctx: &mut DeviceContext<'_>,
    ) -> Result<(), DeviceStop>;
    /// The guest stopped: hand on whatever is buffered.
    fn flush(&mut self, console: &mut dyn ConsoleSink);
    /// The device's state, for a snapshot.
    fn save(&self) -> Vec<u8>;
    /// Loads a state that [`PortDevice::save`] produced (or a hostile file claims it did).
    fn restore(&mut self, bytes: &[u8]) -> Result<(), DeviceStateError>;
    /// Its input, for the `Poll` hypercall (none for output-only devices).
    fn poll_source(&self) -> Option<PollSource> {
        None
    }
    /// Why the guest cannot be snapshotted now (host state a snapshot cannot hold, such as
    /// open files), if it cannot.
    fn snapshot_refusal(&self) -> Option<String> {
        None
    }
}

/// The guest-physical address a device request carries: a 32-bit write to the device's first
/// port (any other width or port is a malformed request).
pub(crate) fn request_address(
    device: &'static str,
    offset: u16,
    data: &[u8],
) -> Result<u64, DeviceStop> {
    let bytes: [u8; 4] = data.try_into().map_err(|_| DeviceStop::BadRequest {
        device,
        why: format!("takes a 32-bit write, got {} bytes", data.len()),
    })?;
    if offset != 0 {
        return Err(DeviceStop::BadRequest {
            device,
            why: format!("write at port offset {offset}, not 0"),
        });
    }
    Ok(u64::from(u32::from_le_bytes(bytes)))
}

/// One device's saved state: the first port of its range and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceState {
    /// First port of the device's range.
    pub port: u16,
    /// What the device saved.
    pub bytes: Vec<u8>,
}

/// The port ranges the devices own (opened to ring 3 by the TSS I/O bitmap).
pub(crate) fn port_ranges() -> [Range<u16>; 4] {
    [
        serial::PORTS,
        stdin::PORTS,
        volumes::device::PORTS,
        net::PORTS,
    ]
}

/// The devices of a guest, by port range.
pub(crate) struct PortBus {
    devices: Vec<(Range<u16>, Box<dyn PortDevice>)>,
}

impl PortBus {
    /// The standard set of devices (every flick guest gets the same).
    pub(crate) fn standard() -> Self {
        Self {
            devices: vec![(serial::PORTS, Box::new(serial::Com1::default()))],
        }
    }

    /// The standard devices and those `config` asks for. Every guest has a stdin and a
    /// volume device (without input or volumes they answer "end of input" and "not found").
    pub(crate) fn new(config: &DeviceConfig) -> Self {
        let DeviceConfig {
            stdin,
            volumes,
            net,
        } = config;
        let mut bus = Self::standard();
        bus.devices.push((
            stdin::PORTS,
            Box::new(stdin::StdinDevice::new(stdin.clone())),
        ));
        bus.devices.push((
            volumes::device::PORTS,
            Box::new(volumes::device::FsDevice::new(volumes.clone())),
        ));
        if let Some(net) = net {
            bus.devices
                .push((net::PORTS, Box::new(net::NetDevice::new(net.clone()))));
        }
        bus
    }

    /// Why the guest cannot be snapshotted now, if a device says so.
    pub(crate) fn snapshot_refusal(&self) -> Option<String> {
        self.devices
            .iter()
            .find_map(|(_, device)| device.snapshot_refusal())
    }

    /// Adds a device (tests plug fakes in this way).
    #[cfg(test)]
    pub(crate) fn with(mut self, ports: Range<u16>, device: Box<dyn PortDevice>) -> Self {
        self.devices.push((ports, device));
        self
    }

    /// The poll sources among the devices whose bits are in `interest`.
    pub(crate) fn poll_sources(&self, interest: u32) -> Vec<PollSource> {
        self.devices
            .iter()
            .filter_map(|(_, device)| device.poll_source())
            .filter(|source| source.mask & interest != 0)
            .collect()
    }

    fn find(&mut self, port: u16) -> Option<(u16, &mut Box<dyn PortDevice>)> {
        self.devices
            .iter_mut()
            .find(|(range, _)| range.contains(&port))
            .map(|(range, device)| (port - range.start, device))
    }

    /// A guest `in`; `None` when no device owns `port`.
    pub(crate) fn read(&mut self, port: u16, data: &mut [u8]) -> Option<()> {
        let (offset, device) = self.find(port)?;
        device.read(offset, data);
        Some(())
    }

    /// A guest `out`; `None` when no device owns `port`.
    pub(crate) fn write(
        &mut self,
        port: u16,
        data: &[u8],
        ctx: &mut DeviceContext<'_>,
    ) -> Option<Result<(), DeviceStop>> {
        let (offset, device) = self.find(port)?;
        Some(device.write(offset, data, ctx))
    }

    /// Hands on every device's buffered output.
    pub(crate) fn flush(&mut self, console: &mut dyn ConsoleSink) {
        for (_, device) in &mut self.devices {
            device.flush(console);
        }
    }

    /// Every device's state.
    pub(crate) fn save(&self) -> Vec<DeviceState> {
        self.devices
            .iter()
            .map(|(range, device)| DeviceState {
                port: range.start,
                bytes: device.save(),
            })
            .collect()
    }

    /// Loads saved states (each must name a device of this bus).
    pub(crate) fn restore(&mut self, states: &[DeviceState]) -> Result<(), DeviceStateError> {
        for state in states {
            let (_, device) = self
                .devices
                .iter_mut()
                .find(|(range, _)| range.start == state.port)
                .ok_or(DeviceStateError::UnknownDevice(state.port))?;
            device.restore(&state.bytes)?;
        }
        Ok(())
    }
}

/// A console sink that keeps everything, for device tests.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Collected(pub Vec<u8>);

#[cfg(test)]
impl ConsoleSink for Collected {
    fn emit(&mut self, _: Stream, bytes: &[u8]) -> Result<(), DeviceStop> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_stateless_device_refuses_a_state_a_file_claims_for_it() {
        assert_eq!(restore_stateless("stdin", &[]), Ok(()));
        assert!(restore_stateless("stdin", &[0]).is_err());
    }

    #[test]
    fn test_bus_routes_com1_and_ignores_other_ports() {
        let mut bus = PortBus::standard();
        let mut out = Collected::default();
        let ram = GuestRam::new(1 << 20).unwrap();
        let mut ctx = DeviceContext {
            ram: &ram,
            console: &mut out,
            deadline: None,
        };
        assert!(bus.write(abi::port::COM1, b"x", &mut ctx).is_some());
        assert!(bus.write(0x80, b"x", &mut ctx).is_none());
        assert!(bus.poll_sources(u32::MAX).is_empty(), "COM1 gives no input");
        let mut data = [0u8; 1];
        assert!(bus.read(0x80, &mut data).is_none());
    }

    #[test]
    fn test_bus_restore_refuses_unknown_device() {
        let mut bus = PortBus::standard();
        let states = [DeviceState {
            port: 0x80,
            bytes: Vec::new(),
        }];
        assert_eq!(
            bus.restore(&states),
            Err(DeviceStateError::UnknownDevice(0x80))
        );
    }

    #[test]
    fn test_bus_save_then_restore_round_trips() {
        let mut bus = PortBus::standard();
        let mut out = Collected::default();
        let ram = GuestRam::new(1 << 20).unwrap();
        for &b in b"pending" {
            let mut ctx = DeviceContext {
                ram: &ram,
                console: &mut out,
                deadline: None,
            };
            bus.write(abi::port::COM1, &[b], &mut ctx);
        }
        let saved = bus.save();
        let mut other = PortBus::standard();
        other.restore(&saved).unwrap();
        other.flush(&mut out);
        assert_eq!(out.0, b"pending");
    }
}
