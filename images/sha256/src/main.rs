//! Hashes N MiB (first argument, default 64) of generated data with the `sha2` crate and
//! prints the digest and the time the guest measured. Byte `i` of the data is `i % 251`.

#![no_std]
#![no_main]

use kernel::println;
use kernel::time::Instant;
use sha2::{Digest, Sha256};

kernel::main!(main);

/// A block of the data that is a whole number of 251-byte periods.
const BLOCK: usize = 251 * 256;

fn main(mut args: kernel::Args) -> i32 {
    let mib: u64 = match args.nth(1).map(str::parse) {
        None => 64,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            kernel::eprintln!("sha256: the argument is a number of MiB");
            return 2;
        }
    };
    let mut block = [0u8; BLOCK];
    for (i, byte) in block.iter_mut().enumerate() {
        *byte = (i % 251) as u8;
    }
    let start = Instant::now();
    let mut hasher = Sha256::new();
    let mut left = mib * 1024 * 1024;
    while left > 0 {
        let n = left.min(BLOCK as u64) as usize;
        hasher.update(&block[..n]);
        left -= n as u64;
    }
    let digest = hasher.finalize();
    let elapsed = start.elapsed();
    for byte in digest {
        kernel::print!("{byte:02x}");
    }
    println!();
    println!("{mib} MiB in {} ns", elapsed.as_nanos());
    0
}
