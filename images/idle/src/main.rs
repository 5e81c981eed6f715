//! Boots, touches a little memory like a small service would, then waits in a hypercall until
//! the VMM releases it (`vmm fleet --resident` measures density this way), and exits 0.

#![no_std]
#![no_main]

extern crate alloc;

use kernel::println;

kernel::main!(main);

fn main(_args: kernel::Args) -> i32 {
    let state = alloc::vec![1u8; 4096];
    kernel::wait_for_release();
    println!("released after holding {} bytes", state.len());
    0
}
