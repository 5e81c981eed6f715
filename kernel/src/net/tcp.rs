//! TCP: [`TcpListener`] (a backlog of listening sockets on one port) and [`TcpStream`].

use super::{NetError, Stack, with_stack};
use alloc::vec;
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{Socket, SocketBuffer, State};
use smoltcp::wire::{IpAddress, IpEndpoint};

/// Receive buffer of each connection (its advertised window). Every socket's buffers are
/// touched when it is made (a first touch of a page costs a few µs here): kept small.
const RX_BUFFER: usize = 4 * 1024;
/// Send buffer of each connection.
const TX_BUFFER: usize = 8 * 1024;
/// Connections a listener holds opening or waiting for `accept` by default.
pub const DEFAULT_BACKLOG: usize = 128;
/// Sockets a listener keeps listening while no connection request is in sight; a batch of
/// frames bringing more requests gets one listening socket each before the stack sees it.
const MIN_LISTENING: usize = 2;
/// How long a closed connection may take to say goodbye.
const CLOSE_TIMEOUT_S: u64 = 10;
/// First local port for outgoing connections.
const EPHEMERAL_FIRST: u16 = 49152;

fn new_socket(stack: &mut Stack) -> SocketHandle {
    let mut socket = Socket::new(
        SocketBuffer::new(vec![0u8; RX_BUFFER]),
        SocketBuffer::new(vec![0u8; TX_BUFFER]),
    );
    // Requests and responses are written whole before the stack runs: send them at once.
    socket.set_nagle_enabled(false);
    stack.sockets.add(socket)
}

fn socket(stack: &mut Stack, handle: SocketHandle) -> &mut Socket<'static> {
    stack.sockets.get_mut::<Socket>(handle)
}

/// A port's listening state, kept in the stack so that it can listen more as connection
/// requests arrive (see [`prepare_for_connections`]).
pub(crate) struct Listening {
    port: u16,
    /// Most sockets listening, opening, or connected but not yet accepted.
    backlog: usize,
    /// Those sockets, oldest first.
    waiting: Vec<SocketHandle>,
}

/// A TCP port accepting connections.
///
/// ```ignore
/// let mut listener = kernel::net::TcpListener::bind(8080)?;
/// let stream = listener.accept()?;
/// ```
pub struct TcpListener {
    port: u16,
    /// Its entry in the stack's listeners.
    id: usize,
}

impl TcpListener {
    /// Listens on `port`, holding up to [`DEFAULT_BACKLOG`] connections before they are
    /// accepted.
    pub fn bind(port: u16) -> Result<TcpListener, NetError> {
        Self::bind_with_backlog(port, DEFAULT_BACKLOG)
    }

    /// Listens on `port`; up to `backlog` connections can be opening or waiting for
    /// [`accept`](Self::accept) at once (more are refused, as a full accept queue refuses
    /// them). A few sockets listen while nothing happens; a burst of connection requests gets
    /// one each as its frames arrive, so that none is refused while there is room.
    pub fn bind_with_backlog(port: u16, backlog: usize) -> Result<TcpListener, NetError> {
        if port == 0 {
            return Err(NetError::InvalidAddress);
        }
        with_stack(|stack| {
            let taken = stack.listeners.iter().flatten().any(|l| l.port == port);
            if taken {
                return Err(NetError::AddressInUse);
            }
            let id = stack.listeners.len();
            stack.listeners.push(Some(Listening {
                port,
                backlog: backlog.max(1),
                waiting: Vec::new(),
            }));
            refill(stack, id, MIN_LISTENING)?;
            Ok(TcpListener { port, id })
        })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits for a connection.
    pub fn accept(&mut self) -> Result<TcpStream, NetError> {
        let id = self.id;
        with_stack(|stack| stack.block_on(|stack| take_connected(stack, id).transpose()))
    }

    /// A connection if one is ready, else [`NetError::WouldBlock`]. It runs no part of the
    /// stack (no VM exit): an event loop calls [`super::wait`] when nothing is ready.
    pub fn try_accept(&mut self) -> Result<TcpStream, NetError> {
        let id = self.id;
        with_stack(|stack| take_connected(stack, id)?.ok_or(NetError::WouldBlock))
    }
}

/// Takes listener `id`'s oldest connection past its handshake; keeps a few sockets listening.
fn take_connected(stack: &mut Stack, id: usize) -> Result<Option<TcpStream>, NetError> {
    let Some(Some(listening)) = stack.listeners.get_mut(id) else {
        return Err(NetError::NotConnected);
    };
    let sockets = &stack.sockets;
    let index = listening.waiting.iter().position(|h| {
        !matches!(
            sockets.get::<Socket>(*h).state(),
            State::Listen | State::SynReceived
        )
    });
    let taken = index.map(|i| TcpStream {
        handle: listening.waiting.remove(i),
    });
    refill(stack, id, MIN_LISTENING)?;
    Ok(taken)
}

/// Makes listener `id` have `wanted` sockets listening, within its backlog.
fn refill(stack: &mut Stack, id: usize, wanted: usize) -> Result<(), NetError> {
    let Some(Some(listening)) = stack.listeners.get(id) else {
        return Ok(());
    };
    let port = listening.port;
    let sockets = &stack.sockets;
    let listening_now = listening
        .waiting
        .iter()
        .filter(|h| sockets.get::<Socket>(**h).state() == State::Listen)
        .count();
    let room = listening.backlog.saturating_sub(listening.waiting.len());
    for _ in 0..wanted.saturating_sub(listening_now).min(room) {
        let handle = listen(stack, port)?;
        if let Some(Some(listening)) = stack.listeners.get_mut(id) {
            listening.waiting.push(handle);
        }
    }
    Ok(())
}

/// Before the stack processes a batch of received frames: every listener gets a listening
/// socket for each connection request (TCP SYN) in the batch addressed to its port.
pub(crate) fn prepare_for_connections(stack: &mut Stack) {
    let mut requests: Vec<(u16, usize)> = Vec::new();
    for port in stack.device.received().filter_map(syn_port) {
        match requests.iter_mut().find(|(p, _)| *p == port) {
            Some((_, n)) => *n += 1,
            None => requests.push((port, 1)),
        }
    }
    for (port, count) in requests {
        let id = stack
            .listeners
            .iter()
            .position(|l| l.as_ref().is_some_and(|l| l.port == port));
        if let Some(id) = id {
            let _ = refill(stack, id, count.max(MIN_LISTENING));
        }
    }
}

/// The destination port of a frame that is a TCP connection request (SYN without ACK) in an
/// unfragmented IPv4 packet.
fn syn_port(frame: &[u8]) -> Option<u16> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(14..)?;
    let header_len = usize::from(ip.first()? & 0x0f) * 4;
    let fragment = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x1fff;
    if *ip.get(9)? != 6 || header_len < 20 || fragment != 0 {
        return None;
    }
    let tcp = ip.get(header_len..)?;
    let flags = *tcp.get(13)?;
    (flags & 0x12 == 0x02).then(|| u16::from_be_bytes([tcp[2], tcp[3]]))
}

fn listen(stack: &mut Stack, port: u16) -> Result<SocketHandle, NetError> {
    let handle = new_socket(stack);
    socket(stack, handle)
        .listen(port)
        .map_err(|_| NetError::AddressInUse)?;
    Ok(handle)
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        let id = self.id;
        let _ = with_stack(|stack| {
            let waiting = stack
                .listeners
                .get_mut(id)
                .and_then(Option::take)
                .map(|l| l.waiting)
                .unwrap_or_default();
            for handle in waiting {
                socket(stack, handle).abort();
                stack.retire(handle);
            }
            Ok(())
        });
    }
}

/// A TCP connection.
///
/// ```ignore
/// let mut buf = [0u8; 512];
/// let n = stream.read(&mut buf)?;
/// stream.write_all(&buf[..n])?;
/// ```
pub struct TcpStream {
    handle: SocketHandle,
}

impl TcpStream {
    /// Connects to `address:port`, waiting until the connection is open.
    pub fn connect(address: Ipv4Addr, port: u16) -> Result<TcpStream, NetError> {
        if port == 0 || address.is_unspecified() {
            return Err(NetError::InvalidAddress);
        }
        with_stack(|stack| {
            let handle = new_socket(stack);
            let local = ephemeral_port(stack);
            let remote = IpEndpoint::new(IpAddress::Ipv4(address), port);
            let cx = stack.iface.context();
            stack
                .sockets
                .get_mut::<Socket>(handle)
                .connect(cx, remote, local)
                .map_err(|_| NetError::InvalidAddress)?;
            let open = stack.block_on(|stack| match socket(stack, handle).state() {
                State::SynSent | State::SynReceived => None,
                State::Established => Some(true),
                _ => Some(false),
            });
            if open {
                Ok(TcpStream { handle })
            } else {
                stack.sockets.remove(handle);
                Err(NetError::ConnectionReset)
            }
        })
    }

    /// Reads what has arrived (waiting for at least one byte); 0 at the end of the stream.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, NetError> {
        let handle = self.handle;
        with_stack(|stack| stack.block_on(|stack| recv_step(stack, handle, buf)))
    }

    /// Reads what has arrived, or [`NetError::WouldBlock`] (runs no part of the stack, no VM
    /// exit: see [`super::wait`]).
    pub fn try_read(&mut self, buf: &mut [u8]) -> Result<usize, NetError> {
        let handle = self.handle;
        with_stack(|stack| recv_step(stack, handle, buf).unwrap_or(Err(NetError::WouldBlock)))
    }

    /// Queues what fits of `buf` (waiting for room for at least one byte); the bytes leave at
    /// the next blocking call, [`flush`](Self::flush), or when a batch of frames fills.
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, NetError> {
        let handle = self.handle;
        with_stack(|stack| stack.block_on(|stack| send_step(stack, handle, buf)))
    }

    /// Queues what fits of `buf` now, or [`NetError::WouldBlock`] (runs no part of the stack,
    /// no VM exit: the bytes leave at the next [`super::wait`] or blocking call).
    pub fn try_write(&mut self, buf: &[u8]) -> Result<usize, NetError> {
        let handle = self.handle;
        with_stack(|stack| send_step(stack, handle, buf).unwrap_or(Err(NetError::WouldBlock)))
    }

    /// Queues all of `buf`, waiting for room as needed.
    pub fn write_all(&mut self, mut buf: &[u8]) -> Result<(), NetError> {
        while !buf.is_empty() {
            let n = self.write(buf)?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Sends what is queued now (one exit, if anything is).
    pub fn flush(&mut self) -> Result<(), NetError> {
        super::flush()
    }

    /// Ends the sending half: the peer reads the end of the stream after the queued bytes.
    pub fn shutdown(&mut self) -> Result<(), NetError> {
        let handle = self.handle;
        with_stack(|stack| {
            socket(stack, handle).close();
            stack.poll();
            Ok(())
        })
    }

    /// Bytes that have arrived and wait to be read.
    pub fn available(&self) -> usize {
        let handle = self.handle;
        with_stack(|stack| Ok(stack.sockets.get::<Socket>(handle).recv_queue())).unwrap_or(0)
    }

    /// The connection can still receive (the peer has not ended its half).
    pub fn is_open(&self) -> bool {
        let handle = self.handle;
        with_stack(|stack| Ok(stack.sockets.get::<Socket>(handle).may_recv())).unwrap_or(false)
    }

    /// The peer's address and port.
    pub fn peer_addr(&self) -> Option<(Ipv4Addr, u16)> {
        let handle = self.handle;
        with_stack(|stack| Ok(stack.sockets.get::<Socket>(handle).remote_endpoint()))
            .ok()
            .flatten()
            .map(|endpoint| match endpoint.addr {
                IpAddress::Ipv4(address) => (address, endpoint.port),
            })
    }
}

impl Drop for TcpStream {
    /// Closes the connection; the goodbye (FIN) leaves with the next exchange.
    fn drop(&mut self) {
        let handle = self.handle;
        let _ = with_stack(|stack| {
            let socket = socket(stack, handle);
            socket.close();
            socket.set_timeout(Some(smoltcp::time::Duration::from_secs(CLOSE_TIMEOUT_S)));
            stack.retire(handle);
            stack.poll();
            Ok(())
        });
    }
}

fn recv_step(
    stack: &mut Stack,
    handle: SocketHandle,
    buf: &mut [u8],
) -> Option<Result<usize, NetError>> {
    let socket = socket(stack, handle);
    if buf.is_empty() {
        return Some(Ok(0));
    }
    if socket.can_recv() {
        return Some(
            socket
                .recv_slice(buf)
                .map_err(|_| NetError::ConnectionReset),
        );
    }
    if !socket.may_recv() {
        return Some(Ok(0));
    }
    None
}

fn send_step(
    stack: &mut Stack,
    handle: SocketHandle,
    buf: &[u8],
) -> Option<Result<usize, NetError>> {
    let socket = socket(stack, handle);
    if !socket.may_send() {
        return Some(Err(if socket.state() == State::Closed {
            NetError::ConnectionReset
        } else {
            NetError::NotConnected
        }));
    }
    if buf.is_empty() {
        return Some(Ok(0));
    }
    if socket.can_send() {
        return Some(socket.send_slice(buf).map_err(|_| NetError::NotConnected));
    }
    None
}

/// A local port no open socket uses, from the ephemeral range.
fn ephemeral_port(stack: &mut Stack) -> u16 {
    let used: Vec<u16> = stack
        .sockets
        .iter()
        .filter_map(|(_, s)| match s {
            smoltcp::socket::Socket::Tcp(tcp) => tcp.local_endpoint().map(|e| e.port),
            _ => None,
        })
        .collect();
    let span = u16::MAX - EPHEMERAL_FIRST;
    let start = (crate::random_seed() ^ crate::time::monotonic().as_nanos() as u64) as u16 % span;
    (0..span)
        .map(|i| EPHEMERAL_FIRST + (start + i) % span)
        .find(|p| !used.contains(p))
        .unwrap_or(EPHEMERAL_FIRST)
}

#[cfg(test)]
mod tests {
    use super::syn_port;

    fn frame(ethertype: u16, protocol: u8, fragment: u16, flags: u8) -> alloc::vec::Vec<u8> {
        let mut frame = alloc::vec![0u8; 14 + 20 + 20];
        frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
        frame[14] = 0x45;
        frame[20..22].copy_from_slice(&fragment.to_be_bytes());
        frame[23] = protocol;
        frame[34 + 2..34 + 4].copy_from_slice(&8080u16.to_be_bytes());
        frame[34 + 13] = flags;
        frame
    }

    #[kernel::test]
    fn test_syn_port_finds_connection_requests_only() {
        assert_eq!(syn_port(&frame(0x0800, 6, 0, 0x02)), Some(8080));
        assert_eq!(syn_port(&frame(0x0800, 6, 0, 0x12)), None, "SYN-ACK");
        assert_eq!(syn_port(&frame(0x0800, 6, 0, 0x10)), None, "ACK");
        assert_eq!(syn_port(&frame(0x0800, 17, 0, 0x02)), None, "UDP");
        assert_eq!(syn_port(&frame(0x0806, 6, 0, 0x02)), None, "ARP");
        assert_eq!(
            syn_port(&frame(0x0800, 6, 0x0010, 0x02)),
            None,
            "a fragment"
        );
        assert_eq!(
            syn_port(&frame(0x0800, 6, 0, 0x02)[..40]),
            None,
            "truncated"
        );
        let mut short_header = frame(0x0800, 6, 0, 0x02);
        short_header[14] = 0x44;
        assert_eq!(syn_port(&short_header), None, "IHL below 5");
    }
}
