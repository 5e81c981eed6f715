//! TCP and UDP echo on one port (default 7): every byte a TCP client sends comes back, every
//! UDP datagram goes back to its sender. Many connections at once, in one event loop.
//!
//! `echo [--port N]`. Pings are answered by the network stack itself.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use kernel::net::{self, NetError, TcpListener, TcpStream, UdpSocket};
use kernel::{eprintln, println};

kernel::main!(main);

/// Most connections served at once.
const MAX_CONNECTIONS: usize = 128;
/// Bytes read but not yet sent back, per connection, before reading pauses.
const MAX_PENDING: usize = 16 * 1024;

fn main(args: kernel::Args) -> i32 {
    let mut port = 7u16;
    let mut args = args.skip(1);
    while let Some(flag) = args.next() {
        match (flag, args.next().map(str::parse::<u16>)) {
            ("--port", Some(Ok(p))) if p > 0 => port = p,
            _ => {
                eprintln!("usage: echo [--port N]");
                return 2;
            }
        }
    }
    match serve(port) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("echo: {err}");
            1
        }
    }
}

struct Connection {
    stream: TcpStream,
    pending: Vec<u8>,
    ended: bool,
}

fn serve(port: u16) -> Result<(), NetError> {
    let mut listener = TcpListener::bind_with_backlog(port, 16)?;
    let udp = UdpSocket::bind(port)?;
    println!(
        "echo: listening on {}:{port} (tcp and udp)",
        net::config()?.address
    );
    let mut connections: Vec<Connection> = Vec::new();
    let mut datagram = [0u8; 2048];
    loop {
        let mut progress = false;
        while connections.len() < MAX_CONNECTIONS {
            match listener.try_accept() {
                Ok(stream) => {
                    connections.push(Connection {
                        stream,
                        pending: Vec::new(),
                        ended: false,
                    });
                    progress = true;
                }
                Err(NetError::WouldBlock) => break,
                Err(err) => return Err(err),
            }
        }
        loop {
            match udp.try_recv_from(&mut datagram) {
                Ok((n, from)) => {
                    udp.send_to(&datagram[..n], from)?;
                    progress = true;
                }
                Err(NetError::WouldBlock) => break,
                // A datagram too large for the buffer was dropped: go on.
                Err(_) => progress = true,
            }
        }
        connections.retain_mut(|conn| {
            let (moved, finished) = step(conn);
            progress |= moved;
            !finished
        });
        if !progress {
            net::wait(None)?;
        }
    }
}

/// Moves one connection on; returns (progress, finished).
fn step(conn: &mut Connection) -> (bool, bool) {
    let mut progress = false;
    let mut buf = [0u8; 2048];
    while !conn.ended && conn.pending.len() < MAX_PENDING {
        match conn.stream.try_read(&mut buf) {
            Ok(0) => conn.ended = true,
            Ok(n) => {
                conn.pending.extend_from_slice(&buf[..n]);
                progress = true;
            }
            Err(NetError::WouldBlock) => break,
            Err(_) => return (true, true),
        }
    }
    while !conn.pending.is_empty() {
        match conn.stream.try_write(&conn.pending) {
            Ok(0) | Err(NetError::WouldBlock) => break,
            Ok(n) => {
                conn.pending.drain(..n);
                progress = true;
            }
            Err(_) => return (true, true),
        }
    }
    (progress, conn.ended && conn.pending.is_empty())
}
