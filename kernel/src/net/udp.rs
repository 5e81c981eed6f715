//! UDP: [`UdpSocket`], datagrams to and from one local port.

use super::{NetError, with_stack};
use alloc::vec;
use core::net::Ipv4Addr;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::udp::{PacketBuffer, PacketMetadata, RecvError, SendError, Socket};
use smoltcp::wire::{IpAddress, IpEndpoint};

/// A datagram's length and sender.
type Received = (usize, (Ipv4Addr, u16));

/// Datagrams each direction can hold.
const PACKETS: usize = 32;
/// Payload bytes each direction can hold.
const PAYLOAD: usize = 32 * 1024;

/// A UDP socket bound to a local port.
///
/// ```ignore
/// let socket = kernel::net::UdpSocket::bind(5353)?;
/// let mut buf = [0u8; 1500];
/// let (n, from) = socket.recv_from(&mut buf)?;
/// socket.send_to(&buf[..n], from)?;
/// ```
pub struct UdpSocket {
    handle: SocketHandle,
}

impl UdpSocket {
    /// Binds to `port`.
    pub fn bind(port: u16) -> Result<UdpSocket, NetError> {
        if port == 0 {
            return Err(NetError::InvalidAddress);
        }
        with_stack(|stack| {
            let buffer =
                || PacketBuffer::new(vec![PacketMetadata::EMPTY; PACKETS], vec![0u8; PAYLOAD]);
            let mut socket = Socket::new(buffer(), buffer());
            socket.bind(port).map_err(|_| NetError::AddressInUse)?;
            Ok(UdpSocket {
                handle: stack.sockets.add(socket),
            })
        })
    }

    /// Queues one datagram to `to` (waiting for room); it leaves at the next blocking call,
    /// [`super::flush`], or when a batch fills.
    pub fn send_to(&self, buf: &[u8], to: (Ipv4Addr, u16)) -> Result<(), NetError> {
        if buf.len() > PAYLOAD {
            return Err(NetError::TooLarge);
        }
        let endpoint = IpEndpoint::new(IpAddress::Ipv4(to.0), to.1);
        let handle = self.handle;
        with_stack(|stack| {
            stack.block_on(|stack| {
                match stack
                    .sockets
                    .get_mut::<Socket>(handle)
                    .send_slice(buf, endpoint)
                {
                    Ok(()) => Some(Ok(())),
                    Err(SendError::BufferFull) => None,
                    Err(SendError::Unaddressable) => Some(Err(NetError::InvalidAddress)),
                }
            })
        })
    }

    /// Waits for a datagram; its length and sender. A datagram longer than `buf` is dropped
    /// with [`NetError::TooLarge`].
    pub fn recv_from(&self, buf: &mut [u8]) -> Result<Received, NetError> {
        let handle = self.handle;
        with_stack(|stack| {
            stack.block_on(|stack| recv_step(stack.sockets.get_mut::<Socket>(handle), buf))
        })
    }

    /// A datagram if one has arrived, else [`NetError::WouldBlock`] (runs no part of the
    /// stack, no VM exit: see [`super::wait`]).
    pub fn try_recv_from(&self, buf: &mut [u8]) -> Result<Received, NetError> {
        let handle = self.handle;
        with_stack(|stack| {
            recv_step(stack.sockets.get_mut::<Socket>(handle), buf)
                .unwrap_or(Err(NetError::WouldBlock))
        })
    }
}

fn recv_step(socket: &mut Socket<'static>, buf: &mut [u8]) -> Option<Result<Received, NetError>> {
    match socket.recv_slice(buf) {
        Ok((n, meta)) => {
            let IpAddress::Ipv4(address) = meta.endpoint.addr;
            Some(Ok((n, (address, meta.endpoint.port))))
        }
        Err(RecvError::Truncated) => Some(Err(NetError::TooLarge)),
        Err(RecvError::Exhausted) => None,
    }
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        let handle = self.handle;
        let _ = with_stack(|stack| {
            stack.sockets.remove(handle);
            Ok(())
        });
    }
}
