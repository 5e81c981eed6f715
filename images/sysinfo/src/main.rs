//! Prints what the VM was given: its RAM size and how much of it is free for the heap; with the argument `spin` it then
//! spins at ring 3 until it is stopped (the tests of `docker stop` and `docker kill` use it).

#![no_std]
#![no_main]

use kernel::println;

kernel::main!(main);

fn main(mut args: kernel::Args) -> i32 {
    let info = kernel::boot_info();
    println!("mem {} MiB", info.mem_size >> 20);
    println!("free {} KiB", (info.heap_end - info.heap_start) >> 10);
    if args.nth(1) == Some("spin") {
        println!("spinning");
        kernel::console::flush();
        loop {
            core::hint::spin_loop();
        }
    }
    0
}
