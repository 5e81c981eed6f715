//! An app with costly initialisation that takes its own snapshot after it: every run restored
//! from `vmm snapshot warmup` starts with the table built. Prints what each run gets fresh:
//! arguments, random seed, wall-clock time.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use kernel::println;

kernel::main!(main, snapshot = manual);

/// The primes below `limit` (the "expensive" initialisation).
fn primes_below(limit: usize) -> Vec<u32> {
    let mut composite = alloc::vec![false; limit];
    let mut primes = Vec::new();
    for n in 2..limit {
        if !composite[n] {
            primes.push(n as u32);
            (n * n..limit).step_by(n).for_each(|m| composite[m] = true);
        }
    }
    primes
}

fn main(_args: kernel::Args) -> i32 {
    let primes = primes_below(200_000);
    println!("initialised {} primes", primes.len());
    kernel::snapshot_point();
    // Arguments are read after the snapshot point: each restored run has its own.
    let args: Vec<&str> = kernel::args().skip(1).collect();
    println!("largest prime {}", primes[primes.len() - 1]);
    println!("args {args:?}");
    println!("seed {:016x}", kernel::random_seed());
    println!("unix time {} s", kernel::time::unix_time().as_secs());
    0
}
