//! Exits with the code given as its first argument (0 without one).

#![no_std]
#![no_main]

use kernel::eprintln;

kernel::main!(main);

fn main(mut args: kernel::Args) -> i32 {
    match args.nth(1).map(str::parse::<i32>) {
        None => 0,
        Some(Ok(code)) => code,
        Some(Err(err)) => {
            eprintln!("exitcode: the argument must be an integer: {err}");
            2
        }
    }
}
