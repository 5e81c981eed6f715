//! The default image: greets, then prints each argument, then each environment variable, one
//! per line.

#![no_std]
#![no_main]

use kernel::println;

kernel::main!(main);

fn main(args: kernel::Args) -> i32 {
    println!("Hello from a unikernel!");
    for arg in args.skip(1) {
        println!("{arg}");
    }
    for (key, value) in kernel::vars() {
        println!("{key}={value}");
    }
    0
}
