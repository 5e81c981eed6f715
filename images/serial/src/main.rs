//! Prints through the 16550 UART on COM1, byte by byte, with the `uart_16550` driver a
//! bare-metal kernel would use: the VMM's UART model must pass the driver's `init` (scratch
//! register and loopback checks included) and hand the bytes on a line at a time.

#![no_std]
#![no_main]

use uart_16550::{Config, Uart16550};

kernel::main!(main);

fn main(args: kernel::Args) -> i32 {
    // SAFETY: COM1 is the VMM's UART, the only user of these ports in this guest.
    let uart = unsafe { Uart16550::new_port(0x3f8) };
    let Ok(mut uart) = uart else {
        kernel::eprintln!("serial: COM1 is not a valid port base");
        return 2;
    };
    if let Err(err) = uart.init(Config::DEFAULT) {
        kernel::eprintln!("serial: init failed: {err:?}");
        return 3;
    }
    uart.send_bytes_exact(b"hello over COM1\n");
    for arg in args.skip(1) {
        uart.send_bytes_exact(arg.as_bytes());
        uart.send_bytes_exact(b"\n");
    }
    // No newline: the VMM must still hand these bytes on when the guest exits.
    uart.send_bytes_exact(b"last line without newline");
    0
}
