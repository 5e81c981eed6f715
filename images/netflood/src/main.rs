//! A misbehaving guest for the tests: sends UDP datagrams of 1400 bytes to its gateway's
//! discard port as fast as it can, forever. The VMM's `tx-rate` must bound what reaches the
//! host, and `--timeout` must still stop it.

#![no_std]
#![no_main]

use kernel::net::{self, UdpSocket};
use kernel::{eprintln, println};

kernel::main!(main);

fn main(_args: kernel::Args) -> i32 {
    let result: Result<(), net::NetError> = (|| {
        let config = net::config()?;
        let gateway = config.gateway.unwrap_or(config.address);
        let socket = UdpSocket::bind(9999)?;
        println!("netflood: flooding {gateway}:9");
        let payload = [0x5au8; 1400];
        loop {
            socket.send_to(&payload, (gateway, 9))?;
        }
    })();
    if let Err(err) = result {
        eprintln!("netflood: {err}");
    }
    1
}
