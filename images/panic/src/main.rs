//! Panics on purpose, with a message built from its arguments, after printing a line that must
//! not be lost.

#![no_std]
#![no_main]

use kernel::println;

kernel::main!(main);

fn main(args: kernel::Args) -> i32 {
    println!("about to panic");
    let count = args.len();
    panic!("deliberate panic with {count} argument(s)");
}
