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
/// Sockets a listener keeps listening by default: one batch of frames can bring that many
/// connection requests at once.
pub const DEFAULT_BACKLOG: usize = 32;
/// Connections opening or waiting for `accept` per listening socket kept; beyond, new ones
/// are refused (a full accept queue).
const PENDING_PER_LISTENER: usize = 4;
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

/// A TCP port accepting connections.
///
/// ```ignore
/// let mut listener = kernel::net::TcpListener::bind(8080)?;
/// let stream = listener.accept()?;
/// ```
pub struct TcpListener {
    port: u16,
    backlog: usize,
    /// Sockets listening, opening, or connected but not yet accepted, oldest first.
    waiting: Vec<SocketHandle>,
}

impl TcpListener {
    /// Listens on `port` with [`DEFAULT_BACKLOG`] connections held before they are accepted.
    pub fn bind(port: u16) -> Result<TcpListener, NetError> {
        Self::bind_with_backlog(port, DEFAULT_BACKLOG)
    }

    /// Listens on `port` with `backlog` sockets listening: that many connection requests can
    /// arrive at once; each is replaced as it opens, and up to four times as many connections
    /// can be opening or waiting for [`accept`](Self::accept) (more are refused, as a full
    /// accept queue refuses them).
    pub fn bind_with_backlog(port: u16, backlog: usize) -> Result<TcpListener, NetError> {
        if port == 0 {
            return Err(NetError::InvalidAddress);
        }
        with_stack(|stack| {
            let taken = stack.sockets.iter().any(|(_, s)| match s {
                smoltcp::socket::Socket::Tcp(tcp) => {
                    tcp.is_listening() && tcp.listen_endpoint().port == port
                }
                _ => false,
            });
            if taken {
                return Err(NetError::AddressInUse);
            }
            let mut listener = TcpListener {
                port,
                backlog: backlog.max(1),
                waiting: Vec::new(),
            };
            listener.refill(stack)?;
            Ok(listener)
        })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits for a connection.
    pub fn accept(&mut self) -> Result<TcpStream, NetError> {
        with_stack(|stack| stack.block_on(|stack| self.take_connected(stack).transpose()))
    }

    /// A connection if one is ready, else [`NetError::WouldBlock`]. It runs no part of the
    /// stack (no VM exit): an event loop calls [`super::wait`] when nothing is ready.
    pub fn try_accept(&mut self) -> Result<TcpStream, NetError> {
        with_stack(|stack| self.take_connected(stack)?.ok_or(NetError::WouldBlock))
    }

    /// Takes the oldest connection past its handshake; keeps `backlog` sockets listening.
    fn take_connected(&mut self, stack: &mut Stack) -> Result<Option<TcpStream>, NetError> {
        let index = self.waiting.iter().position(|h| {
            !matches!(
                stack.sockets.get::<Socket>(*h).state(),
                State::Listen | State::SynReceived
            )
        });
        let taken = index.map(|i| TcpStream {
            handle: self.waiting.remove(i),
        });
        self.refill(stack)?;
        Ok(taken)
    }

    /// Listens anew in place of the sockets that have left `Listen`, within the bound on
    /// connections waiting.
    fn refill(&mut self, stack: &mut Stack) -> Result<(), NetError> {
        let listening = self
            .waiting
            .iter()
            .filter(|h| stack.sockets.get::<Socket>(**h).state() == State::Listen)
            .count();
        let room = (self.backlog * PENDING_PER_LISTENER).saturating_sub(self.waiting.len());
        for _ in 0..self.backlog.saturating_sub(listening).min(room) {
            self.waiting.push(listen(stack, self.port)?);
        }
        Ok(())
    }
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
        let waiting = core::mem::take(&mut self.waiting);
        let _ = with_stack(|stack| {
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
