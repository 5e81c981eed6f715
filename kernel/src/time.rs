//! Time: a monotonic [`Instant`] from the TSC (whose frequency the VMM puts in boot info), the
//! wall-clock time, and [`sleep`], which asks the VMM to wait (one exit, no busy loop).
//!
//! ```ignore
//! use core::time::Duration;
//! let start = kernel::time::Instant::now();
//! kernel::time::sleep(Duration::from_millis(50));
//! kernel::println!("slept {:?}", start.elapsed());
//! ```

pub use core::time::Duration;

use crate::hypercall;
use core::ops::{Add, Sub};

fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects; it runs natively at ring 3.
    unsafe { core::arch::x86_64::_rdtsc() }
}

fn tsc_khz() -> u64 {
    crate::boot_info().tsc_khz.max(1)
}

fn ticks_to_duration(ticks: u64) -> Duration {
    let nanos = u128::from(ticks) * 1_000_000 / u128::from(tsc_khz());
    Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64)
}

/// A point on the monotonic clock.
///
/// ```ignore
/// let t = kernel::time::Instant::now();
/// let spent = t.elapsed();
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// Now.
    pub fn now() -> Self {
        Instant(rdtsc())
    }

    /// Time since `earlier` (zero if `earlier` is later).
    pub fn duration_since(&self, earlier: Instant) -> Duration {
        ticks_to_duration(self.0.saturating_sub(earlier.0))
    }

    /// Time since this instant.
    pub fn elapsed(&self) -> Duration {
        Instant::now().duration_since(*self)
    }
}

impl Sub for Instant {
    type Output = Duration;

    fn sub(self, earlier: Instant) -> Duration {
        self.duration_since(earlier)
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    fn add(self, d: Duration) -> Instant {
        let ticks = d.as_nanos() * u128::from(tsc_khz()) / 1_000_000;
        Instant(
            self.0
                .saturating_add(ticks.min(u128::from(u64::MAX)) as u64),
        )
    }
}

/// Wall-clock time at boot, as a duration since the Unix epoch (from the VMM).
///
/// ```ignore
/// let secs = kernel::time::boot_time().as_secs();
/// ```
pub fn boot_time() -> Duration {
    Duration::from_nanos(crate::boot_info().boot_unix_ns)
}

/// Wall-clock time now, as a duration since the Unix epoch.
///
/// ```ignore
/// let now = kernel::time::unix_time();
/// ```
pub fn unix_time() -> Duration {
    let info = crate::boot_info();
    boot_time() + ticks_to_duration(rdtsc().saturating_sub(info.boot_tsc))
}

/// Sleeps for at least `duration`: the VMM waits, the guest does not spin.
///
/// ```ignore
/// kernel::time::sleep(core::time::Duration::from_millis(50));
/// ```
pub fn sleep(duration: Duration) {
    crate::console::flush();
    let mut left = duration.as_micros();
    while left > 0 {
        let chunk = left.min(u128::from(u32::MAX)) as u32;
        hypercall::sleep_micros(chunk);
        left -= u128::from(chunk);
    }
}
