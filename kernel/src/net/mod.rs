//! Networking (the `net` feature): a TCP/IP stack (smoltcp: ARP, IPv4, ICMP echo, TCP, UDP)
//! over the VMM's network device (`vmm run --net`), with a small blocking API.
//!
//! ```ignore
//! use kernel::net::TcpListener;
//! let mut listener = TcpListener::bind(7)?;
//! loop {
//!     let mut stream = listener.accept()?;
//!     let mut buf = [0u8; 1024];
//!     loop {
//!         let n = stream.read(&mut buf)?;
//!         if n == 0 { break; }
//!         stream.write_all(&buf[..n])?;
//!     }
//! }
//! ```
//!
//! The guest has one thread and no interrupts, so the stack runs when the app calls into it:
//! a blocking call ([`TcpListener::accept`], [`TcpStream::read`], [`UdpSocket::recv_from`],
//! [`wait`]) processes what has arrived and, while it cannot return, sends what is pending and
//! waits for a frame or the stack's next timer in one VM exit. Non-blocking calls
//! (`try_accept`, `try_read`, ...) only look at socket buffers and never exit; an app serving
//! many connections loops over them and calls [`wait`] when none can make progress (which is
//! also when the stack runs). Frames the app's writes produce leave at the
//! next blocking call, [`flush`], or when a batch fills.
//!
//! The address, gateway and MAC come from the VMM. Pings are answered by the stack itself, in
//! whatever call is running.

mod device;
pub mod tcp;
mod udp;

pub use device::DeviceStats;
pub use tcp::{TcpListener, TcpStream};
pub use udp::UdpSocket;

use crate::global::Global;
use crate::hypercall;
use abi::hypercall::{NetInfo, net_flags};
use alloc::vec;
use core::fmt;
use core::net::Ipv4Addr;
use device::FrameDevice;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Cidr};

/// Frames moved per exit each way.
const BATCH: usize = 32;
/// Sockets closed by the app that may still be finishing their goodbyes; beyond, the oldest
/// is aborted.
const MAX_CLOSING: usize = 256;

/// Why a network call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// The VMM gave this guest no network device (run it with `--net`).
    NoDevice,
    /// A non-blocking call could not make progress now.
    WouldBlock,
    /// The port is taken, or 0.
    AddressInUse,
    /// The connection was reset or closed by the peer for sending.
    ConnectionReset,
    /// The connection is not open any more for this operation.
    NotConnected,
    /// The destination is unusable (unspecified address or port 0).
    InvalidAddress,
    /// A datagram does not fit the socket's buffer.
    TooLarge,
    /// The stack is in use higher up the stack (a network call from a panic handler).
    Busy,
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NetError::NoDevice => "no network device (run the guest with --net)",
            NetError::WouldBlock => "the operation would block",
            NetError::AddressInUse => "address in use",
            NetError::ConnectionReset => "connection reset",
            NetError::NotConnected => "not connected",
            NetError::InvalidAddress => "invalid address",
            NetError::TooLarge => "datagram too large",
            NetError::Busy => "the network stack is busy",
        })
    }
}

/// The guest's network settings, as the VMM gave them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The MAC address.
    pub mac: [u8; 6],
    /// The IPv4 address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// The MTU.
    pub mtu: u32,
}

/// The stack: interface, sockets and device, made on first use.
pub(crate) struct Stack {
    iface: Interface,
    pub(crate) sockets: SocketSet<'static>,
    pub(crate) device: FrameDevice,
    config: NetConfig,
    closing: alloc::vec::Vec<SocketHandle>,
    /// The TCP listeners, by id (`None` once dropped).
    pub(crate) listeners: alloc::vec::Vec<Option<tcp::Listening>>,
}

static STACK: Global<Option<Stack>> = Global::new(None);

fn now() -> smoltcp::time::Instant {
    let micros = crate::time::monotonic().as_micros();
    smoltcp::time::Instant::from_micros(micros.min(i64::MAX as u128) as i64)
}

impl Stack {
    fn new() -> Result<Stack, NetError> {
        let mut info = NetInfo::default();
        hypercall::net_info(&mut info);
        if info.mtu == 0 {
            return Err(NetError::NoDevice);
        }
        let config = NetConfig {
            mac: info.mac,
            address: Ipv4Addr::from(info.ipv4),
            prefix_len: info.prefix_len.min(32),
            gateway: (info.flags & net_flags::GATEWAY != 0).then(|| Ipv4Addr::from(info.gateway)),
            mtu: info.mtu,
        };
        let mut device = FrameDevice::new((info.max_batch as usize).min(BATCH));
        let mut iface_config = Config::new(HardwareAddress::Ethernet(EthernetAddress(config.mac)));
        iface_config.random_seed = crate::random_seed();
        let mut iface = Interface::new(iface_config, &mut device, now());
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::Ipv4(Ipv4Cidr::new(
                config.address,
                config.prefix_len,
            )));
        });
        if let Some(gateway) = config.gateway {
            let _ = iface.routes_mut().add_default_ipv4_route(gateway);
        }
        Ok(Stack {
            iface,
            sockets: SocketSet::new(vec![]),
            device,
            config,
            closing: vec![],
            listeners: vec![],
        })
    }

    /// Processes every frame received, runs timers, and queues what the sockets have to send.
    pub(crate) fn poll(&mut self) {
        if self.device.has_received() {
            tcp::prepare_for_connections(self);
        }
        self.iface.poll(now(), &mut self.device, &mut self.sockets);
        self.reap_closed();
    }

    /// One exit: sends what is pending and, unless frames are waiting to be processed,
    /// receives, waiting up to `limit` (and never past the stack's next timer) for a frame.
    pub(crate) fn exchange(&mut self, limit: Option<core::time::Duration>) {
        let timer = self
            .iface
            .poll_delay(now(), &self.sockets)
            .map(|d| core::time::Duration::from_micros(d.total_micros()));
        let wait = match (limit, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let wait_ns = wait.map_or(u64::MAX, |w| {
            w.as_nanos().min(u128::from(u64::MAX - 1)) as u64
        });
        self.device.exchange(wait_ns);
        self.poll();
    }

    /// Sends pending frames now (one exit, only if there are any).
    pub(crate) fn flush(&mut self) {
        self.poll();
        if self.device.has_pending() {
            self.device.exchange(0);
            self.poll();
        }
    }

    /// Keeps a socket the app closed until its connection has said goodbye.
    pub(crate) fn retire(&mut self, handle: SocketHandle) {
        if self.closing.len() >= MAX_CLOSING {
            let oldest = self.closing.remove(0);
            self.sockets
                .get_mut::<smoltcp::socket::tcp::Socket>(oldest)
                .abort();
            self.poll();
            self.sockets.remove(oldest);
        }
        self.closing.push(handle);
    }

    fn reap_closed(&mut self) {
        let sockets = &mut self.sockets;
        self.closing.retain(|handle| {
            let socket = sockets.get_mut::<smoltcp::socket::tcp::Socket>(*handle);
            let done = matches!(
                socket.state(),
                smoltcp::socket::tcp::State::Closed | smoltcp::socket::tcp::State::TimeWait
            );
            if done {
                sockets.remove(*handle);
            }
            !done
        });
    }

    /// Runs the stack, exchanging frames (one exit per round), until `ready` returns a value.
    pub(crate) fn block_on<T>(&mut self, mut ready: impl FnMut(&mut Stack) -> Option<T>) -> T {
        loop {
            self.poll();
            if let Some(value) = ready(self) {
                return value;
            }
            self.exchange(None);
            if let Some(value) = ready(self) {
                return value;
            }
        }
    }
}

/// Runs `f` on the stack, making it on first use.
pub(crate) fn with_stack<T>(
    f: impl FnOnce(&mut Stack) -> Result<T, NetError>,
) -> Result<T, NetError> {
    STACK
        .with(|slot| {
            if slot.is_none() {
                *slot = Some(Stack::new()?);
            }
            match slot.as_mut() {
                Some(stack) => f(stack),
                None => Err(NetError::NoDevice),
            }
        })
        .unwrap_or(Err(NetError::Busy))
}

/// The guest's network settings (`NoDevice` without `--net`).
///
/// ```ignore
/// let config = kernel::net::config()?;
/// kernel::println!("listening on {}", config.address);
/// ```
pub fn config() -> Result<NetConfig, NetError> {
    with_stack(|stack| Ok(stack.config))
}

/// Sends pending frames, then waits until a frame arrives, the stack has a timer due, or
/// `timeout` passes (`None`: no limit but the guest's `--timeout`); processes what arrived.
/// One VM exit. An event loop calls it when none of its sockets can make progress.
///
/// ```ignore
/// kernel::net::wait(Some(core::time::Duration::from_millis(100)))?;
/// ```
pub fn wait(timeout: Option<core::time::Duration>) -> Result<(), NetError> {
    with_stack(|stack| {
        stack.poll();
        if !stack.device.has_received() {
            stack.exchange(timeout);
        }
        Ok(())
    })
}

/// Sends the frames the app's writes have produced so far (one exit, if there are any).
///
/// ```ignore
/// stream.write_all(b"bye\n")?;
/// kernel::net::flush()?;
/// ```
pub fn flush() -> Result<(), NetError> {
    with_stack(|stack| {
        stack.flush();
        Ok(())
    })
}

/// What the device has done so far: exits, frames sent, received and dropped.
///
/// ```ignore
/// let stats = kernel::net::stats()?;
/// kernel::println!("{} exits", stats.exchanges);
/// ```
pub fn stats() -> Result<DeviceStats, NetError> {
    with_stack(|stack| Ok(stack.device.stats()))
}
