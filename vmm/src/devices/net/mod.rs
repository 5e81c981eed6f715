//! The network device: whole Ethernet frames between the guest and a host tap, Solo5 hvt
//! style, on ports `abi::port::NET`.. (`vmm run --net`).
//!
//! Two requests, each one `out` of a guest-physical address:
//! - `NET_INFO`: the VMM fills an `abi::hypercall::NetInfo` (MAC, address, gateway, MTU);
//! - `NET_EXCHANGE`: the VMM sends the guest's frames, then fills its receive buffers with the
//!   frames that have arrived and, if none had, waits for one (up to the guest's wait and its
//!   `--timeout`). One exit moves up to `NET_BATCH_MAX` frames each way and, when idle, is
//!   also the wait: a request-response round trip costs one exit.
//!
//! The guest is hostile. Every count, length and buffer range is checked before anything is
//! sent (a bad one stops the guest with a report); frames the guest sends must carry its own
//! MAC address as their source and stay within a token-bucket rate (`tx-rate`), or they are
//! dropped, as a full NIC queue drops them. The VMM holds no queue of its own: frames wait in
//! the tap's kernel queue (bounded by its `txqueuelen`, dropped beyond), and one 64 KiB scratch
//! buffer carries each frame across, so the VMM's memory stays flat whatever arrives. The tap
//! fd is non-blocking; the only wait is a `ppoll` bounded by the deadline.
//!
//! - [`spec`]: the `--net` text; [`tap`]: attaching to a tap.

pub mod spec;
pub mod tap;

pub use spec::{NetSpec, TapSource};
pub use tap::Tap;

use super::{ConsoleSink, DeviceContext, DeviceStateError, DeviceStop, PollSource, PortDevice};
use crate::memory::GuestRam;
use abi::hypercall::{
    NET_BATCH_MAX, NET_FRAME_MAX, NET_FRAME_MIN, NetExchange, NetFrame, NetInfo, net_flags,
};
use std::net::Ipv4Addr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The device's ports.
pub(crate) const PORTS: Range<u16> = abi::port::NET..abi::port::NET + abi::port::NET_LEN;

/// The MTU the guest is given (frames carry at most this plus a 14-byte header).
pub const MTU: u32 = NET_FRAME_MAX - 14;

/// Largest frame the VMM reads from the tap at once (a longer one is truncated and dropped).
const SCRATCH_SIZE: usize = 64 * 1024;

/// Errors setting up a network device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The `--net` text is invalid.
    #[error("--net: {0}")]
    BadSpec(String),
    /// No interface has that name.
    #[error(
        "--net: no interface named '{0}' (create it first: ip tuntap add dev NAME mode tap; ip link set NAME up)"
    )]
    NoSuchTap(String),
    /// `/dev/net/tun` could not be opened.
    #[error("--net: cannot open /dev/net/tun")]
    OpenTun(#[source] std::io::Error),
    /// The tap could not be attached.
    #[error("--net: cannot attach to tap '{name}'{hint}")]
    Attach {
        /// The interface.
        name: String,
        /// What may help.
        hint: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A tap could not be made.
    #[error("cannot make the tap {name}{hint}")]
    Create {
        /// The interface.
        name: String,
        /// What may help.
        hint: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The fd given is not a usable tap.
    #[error("--net: the fd is not a tap")]
    NotATap(#[source] std::io::Error),
}

/// A network device's settings with its tap attached: what [`super::DeviceConfig`] holds.
///
/// Clones share the tap (one device per guest uses it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The attached tap.
    pub tap: Arc<Tap>,
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// The guest's IPv4 address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Bytes per second the guest may send.
    pub tx_rate: u64,
}

impl NetSpec {
    /// Attaches the tap the spec names (a random MAC unless the spec has one).
    pub fn open(&self) -> Result<NetConfig, NetError> {
        let tap = match &self.tap {
            TapSource::Name(name) => Tap::open(name)?,
            // SAFETY: `fd=N` names an fd the parent handed this process for the VMM's use;
            // nothing else in the VMM owns inherited fds above 2.
            TapSource::Fd(fd) => unsafe { Tap::from_inherited_fd(*fd)? },
        };
        Ok(self.with_tap(tap))
    }

    /// These settings over an already attached tap (from [`Tap::open`] or [`Tap::from_fd`]):
    /// how a program that makes taps itself, such as an OCI runtime, gives one to a guest.
    pub fn with_tap(&self, tap: Tap) -> NetConfig {
        NetConfig {
            tap: Arc::new(tap),
            mac: self.mac.unwrap_or_else(spec::random_mac),
            ip: self.ip,
            prefix_len: self.prefix_len,
            gateway: self.gateway,
            tx_rate: self.tx_rate,
        }
    }
}

/// Frame counts of one device.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NetCounters {
    /// Frames sent to the tap.
    pub tx_frames: u64,
    /// Frames of the guest dropped (rate, source address, tap errors).
    pub tx_dropped: u64,
    /// Frames handed to the guest.
    pub rx_frames: u64,
    /// Frames from the tap dropped (longer than the guest's buffer).
    pub rx_dropped: u64,
}

/// A token bucket over bytes: `rate` per second, at most `burst` saved up.
#[derive(Debug)]
struct TokenBucket {
    rate: u64,
    burst: u64,
    tokens: u64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u64, now: Instant) -> Self {
        let burst = (rate / 10).max(2 * u64::from(NET_FRAME_MAX));
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `cost` bytes if there are enough.
    fn take(&mut self, cost: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let earned = elapsed * u128::from(self.rate) / 1_000_000_000;
        if earned > 0 {
            self.tokens = (u128::from(self.tokens) + earned).min(u128::from(self.burst)) as u64;
            self.last = now;
        }
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// The network device of one guest.
pub(crate) struct NetDevice {
    config: NetConfig,
    bucket: TokenBucket,
    scratch: Vec<u8>,
    descriptors: Vec<NetFrame>,
    counters: NetCounters,
}

impl NetDevice {
    /// A device over `config`'s tap.
    pub(crate) fn new(config: NetConfig) -> Self {
        Self {
            bucket: TokenBucket::new(config.tx_rate, Instant::now()),
            config,
            scratch: vec![0; SCRATCH_SIZE],
            descriptors: Vec::with_capacity(2 * NET_BATCH_MAX as usize),
            counters: NetCounters::default(),
        }
    }

    #[cfg(test)]
    fn counters(&self) -> NetCounters {
        self.counters
    }

    fn info(&self) -> NetInfo {
        NetInfo {
            mac: self.config.mac,
            prefix_len: self.config.prefix_len,
            flags: if self.config.gateway.is_some() {
                net_flags::GATEWAY
            } else {
                0
            },
            ipv4: self.config.ip.octets(),
            gateway: self.config.gateway.map_or([0; 4], |g| g.octets()),
            mtu: MTU,
            max_batch: NET_BATCH_MAX,
        }
    }

    /// Reads and checks the request at `addr`: counts, descriptor arrays and every buffer.
    fn read_request(&mut self, ram: &GuestRam, addr: u64) -> Result<NetExchange, DeviceStop> {
        let request: NetExchange = ram
            .read_obj(addr)
            .map_err(|e| bad(format!("exchange struct: {e}")))?;
        for (what, count) in [("send", request.tx_count), ("receive", request.rx_count)] {
            if count > NET_BATCH_MAX {
                return Err(bad(format!(
                    "{what} count {count} exceeds the limit of {NET_BATCH_MAX}"
                )));
            }
        }
        self.descriptors.clear();
        for (base, count) in [
            (request.tx, request.tx_count),
            (request.rx, request.rx_count),
        ] {
            for i in 0..u64::from(count) {
                let at = base
                    .checked_add(i * size_of::<NetFrame>() as u64)
                    .ok_or_else(|| bad("descriptor address wraps around".into()))?;
                let frame: NetFrame = ram
                    .read_obj(at)
                    .map_err(|e| bad(format!("frame descriptor: {e}")))?;
                self.descriptors.push(frame);
            }
        }
        let (tx, rx) = self.descriptors.split_at(request.tx_count as usize);
        for frame in tx {
            if !(NET_FRAME_MIN..=NET_FRAME_MAX).contains(&frame.len) {
                return Err(bad(format!(
                    "frame length {} outside {NET_FRAME_MIN}..={NET_FRAME_MAX}",
                    frame.len
                )));
            }
            ram.check_range(frame.buf, u64::from(frame.len))
                .map_err(|e| bad(format!("frame to send: {e}")))?;
        }
        for frame in rx {
            ram.check_range(frame.buf, u64::from(frame.cap))
                .map_err(|e| bad(format!("receive buffer: {e}")))?;
        }
        Ok(request)
    }

    /// Sends the checked frames; returns how many were dropped.
    fn send(&mut self, ram: &GuestRam, count: usize) -> u32 {
        let mut dropped = 0;
        let now = Instant::now();
        for i in 0..count {
            let frame = self.descriptors[i];
            let bytes = &mut self.scratch[..frame.len as usize];
            let sent = ram.read(frame.buf, bytes).is_ok()
                && bytes[6..12] == self.config.mac
                && self.bucket.take(u64::from(frame.len.max(64)), now)
                && write_frame(self.config.tap.raw_fd(), bytes);
            if sent {
                self.counters.tx_frames += 1;
            } else {
                dropped += 1;
            }
        }
        self.counters.tx_dropped += u64::from(dropped);
        dropped
    }

    /// Fills receive buffers `first..first + count` of the descriptors with frames waiting
    /// in the tap; returns how many.
    fn receive(&mut self, ram: &GuestRam, first: usize, count: usize) -> usize {
        let mut filled = 0;
        // Bounded even if every frame is too long for the guest's buffers.
        for _ in 0..count * 4 {
            if filled == count {
                break;
            }
            let Some(len) = read_frame(self.config.tap.raw_fd(), &mut self.scratch) else {
                break;
            };
            let slot = &mut self.descriptors[first + filled];
            if len > slot.cap as usize || len >= SCRATCH_SIZE || len == 0 {
                self.counters.rx_dropped += 1;
                continue;
            }
            if ram.write(slot.buf, &self.scratch[..len]).is_err() {
                self.counters.rx_dropped += 1;
                continue;
            }
            slot.len = len as u32;
            filled += 1;
        }
        self.counters.rx_frames += filled as u64;
        filled
    }

    fn exchange(&mut self, addr: u64, ctx: &mut DeviceContext<'_>) -> Result<(), DeviceStop> {
        let ram = ctx.ram;
        let mut request = self.read_request(ram, addr)?;
        let (tx_count, rx_count) = (request.tx_count as usize, request.rx_count as usize);
        request.dropped = self.send(ram, tx_count);
        let mut received = self.receive(ram, tx_count, rx_count);
        if received == 0 && rx_count > 0 && request.wait_ns > 0 {
            let wait = Duration::from_nanos(request.wait_ns);
            if wait_readable(self.config.tap.raw_fd(), wait, ctx.deadline)? {
                received = self.receive(ram, tx_count, rx_count);
            }
        }
        for i in 0..received {
            let at = request.rx + (i * size_of::<NetFrame>()) as u64;
            // Checked when the request was read.
            let _ = ram.write_obj(at, self.descriptors[tx_count + i]);
        }
        request.received = received as u32;
        let _ = ram.write_obj(addr, request);
        Ok(())
    }
}

fn bad(why: String) -> DeviceStop {
    DeviceStop::BadRequest {
        device: "network device",
        why,
    }
}

/// Writes one frame to the tap; false if the host dropped it.
fn write_frame(fd: i32, frame: &[u8]) -> bool {
    // SAFETY: writes our own buffer to an fd we own.
    let n = unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
    n == frame.len() as isize
}

/// Reads one frame from the non-blocking tap; `None` when none is waiting (or on error).
fn read_frame(fd: i32, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: reads into our own buffer of `buf.len()` bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).ok()
}

/// Waits until `fd` is readable, `wait` passes, or the guest's deadline does (which stops the
/// guest). True if it is readable; false after the wait or a signal (the watchdog's).
fn wait_readable(fd: i32, wait: Duration, deadline: Option<Instant>) -> Result<bool, DeviceStop> {
    let now = Instant::now();
    let mut limit = wait;
    if let Some(deadline) = deadline {
        if now >= deadline {
            return Err(DeviceStop::TimedOut);
        }
        limit = limit.min(deadline - now);
    }
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = libc::timespec {
        tv_sec: limit.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(limit.subsec_nanos() as i32),
    };
    // SAFETY: one live pollfd and a live timespec; a signal returns EINTR.
    let n = unsafe { libc::ppoll(&mut pollfd, 1, &timeout, std::ptr::null()) };
    if n > 0 && pollfd.revents & libc::POLLIN != 0 {
        return Ok(true);
    }
    if n > 0 {
        // An error condition on the tap without input: wait out the limit rather than let
        // the guest spin on a call that returns at once.
        std::thread::sleep(limit);
    }
    if deadline.is_some_and(|d| Instant::now() >= d) {
        return Err(DeviceStop::TimedOut);
    }
    Ok(false)
}

impl PortDevice for NetDevice {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(
        &mut self,
        offset: u16,
        data: &[u8],
        ctx: &mut DeviceContext<'_>,
    ) -> Result<(), DeviceStop> {
        let value: [u8; 4] = data.try_into().map_err(|_| {
            bad(format!(
                "port {:#x} takes a 32-bit write, got {} bytes",
                PORTS.start + offset,
                data.len()
            ))
        })?;
        let addr = u64::from(u32::from_le_bytes(value));
        match PORTS.start + offset {
            abi::port::NET_INFO => ctx
                .ram
                .check_range(addr, size_of::<NetInfo>() as u64)
                .map_err(|e| bad(format!("info struct: {e}")))
                .map(|()| {
                    let _ = ctx.ram.write_obj(addr, self.info());
                }),
            abi::port::NET_EXCHANGE => self.exchange(addr, ctx),
            // Unassigned ports of the range ignore writes, as the hypercall range does.
            _ => Ok(()),
        }
    }

    fn flush(&mut self, _console: &mut dyn ConsoleSink) {}

    fn save(&self) -> Vec<u8> {
        // Nothing survives a snapshot: frames in flight are lost, as on a real link.
        Vec::new()
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), DeviceStateError> {
        super::restore_stateless("network device", bytes)
    }

    fn poll_source(&self) -> Option<PollSource> {
        Some(PollSource {
            mask: abi::hypercall::poll_source::NET,
            ready: false,
            fd: Some(self.config.tap.raw_fd()),
        })
    }
}

#[cfg(test)]
mod tests;
