//! Shows the clock: sleeps 50 ms (the VMM waits) and prints how long that took on the
//! monotonic clock and on the wall clock, and the wall-clock time.

#![no_std]
#![no_main]

use kernel::println;
use kernel::time::{self, Duration, Instant};

kernel::main!(main);

fn main(_args: kernel::Args) -> i32 {
    let start = Instant::now();
    let wall_start = time::unix_time();
    time::sleep(Duration::from_millis(50));
    let slept = start.elapsed();
    let wall_slept = time::unix_time().saturating_sub(wall_start);
    println!("slept {} us", slept.as_micros());
    println!("wall clock advanced {} us", wall_slept.as_micros());
    println!("unix time {} s", time::unix_time().as_secs());
    println!("tsc {} kHz", kernel::boot_info().tsc_khz);
    0
}
