//! Exercises the heap: allocates and frees many objects of many sizes, builds a `BTreeMap`, and
//! prints a checksum that the tests recompute on the host. `alloc oom` runs out of memory.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use kernel::println;

kernel::main!(main);

/// The workload; `tests/tests/runtime.rs` runs the same code natively.
fn checksum(rounds: u64) -> (u64, usize) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut kept: Vec<Vec<u8>> = Vec::new();
    let mut map = BTreeMap::new();
    let mut sum = 0u64;
    for i in 0..rounds {
        let size = (next() % 2000 + 1) as usize;
        let block = vec![(i & 0xff) as u8; size];
        sum = sum
            .wrapping_mul(31)
            .wrapping_add(block.iter().map(|&b| u64::from(b)).sum::<u64>());
        if next() % 3 == 0 {
            kept.push(block);
        }
        if kept.len() > 100 {
            let victim = (next() % kept.len() as u64) as usize;
            kept.swap_remove(victim);
        }
        map.insert(next() % 5000, i);
    }
    for (key, value) in &map {
        sum = sum.wrapping_mul(1_000_003) ^ (key * 31 + value);
    }
    (sum, map.len())
}

fn main(mut args: kernel::Args) -> i32 {
    if args.nth(1) == Some("oom") {
        let mut hog: Vec<String> = Vec::new();
        loop {
            hog.push(String::from_utf8(vec![b'x'; 1 << 20]).unwrap_or_default());
        }
    }
    let (sum, entries) = checksum(20_000);
    let stats = kernel::heap::stats();
    println!("checksum {sum}");
    println!("entries {entries}");
    println!("heap {} bytes, {} in use", stats.size, stats.allocated);
    0
}
