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
    ticks_at_khz_to_duration(ticks, tsc_khz())
}

/// `ticks` of a clock running at `khz` kHz (at least 1), saturating at `u64::MAX` nanoseconds.
fn ticks_at_khz_to_duration(ticks: u64, khz: u64) -> Duration {
    let nanos = u128::from(ticks) * 1_000_000 / u128::from(khz);
    Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64)
}

/// The ticks of a clock running at `khz` kHz in `duration`, saturating at `u64::MAX`.
fn duration_to_ticks_at_khz(duration: Duration, khz: u64) -> u64 {
    let ticks = duration.as_nanos() * u128::from(khz) / 1_000_000;
    ticks.min(u128::from(u64::MAX)) as u64
}

/// Time on the monotonic clock since its origin (the TSC's zero), for clocks built on it.
#[cfg_attr(not(feature = "net"), allow(dead_code))]
pub(crate) fn monotonic() -> Duration {
    ticks_to_duration(rdtsc())
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
        Instant(
            self.0
                .saturating_add(duration_to_ticks_at_khz(d, tsc_khz())),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[kernel::test]
    fn test_time_ticks_convert_at_the_given_frequency() {
        // 3 GHz: 3 million ticks are a millisecond.
        assert_eq!(
            ticks_at_khz_to_duration(3_000_000, 3_000_000),
            Duration::from_millis(1)
        );
        assert_eq!(
            duration_to_ticks_at_khz(Duration::from_millis(1), 3_000_000),
            3_000_000
        );
    }

    #[kernel::test]
    fn test_time_conversions_saturate_instead_of_overflowing() {
        assert_eq!(
            ticks_at_khz_to_duration(u64::MAX, 1),
            Duration::from_nanos(u64::MAX)
        );
        assert_eq!(duration_to_ticks_at_khz(Duration::MAX, 3_000_000), u64::MAX);
        assert_eq!(
            Instant(u64::MAX - 1) + Duration::from_secs(1),
            Instant(u64::MAX)
        );
    }

    #[kernel::test]
    fn test_time_duration_since_a_later_instant_is_zero() {
        let (early, late) = (Instant(100), Instant(200));
        assert_eq!(early.duration_since(late), Duration::ZERO);
        assert!(late - early > Duration::ZERO);
    }

    #[kernel::test]
    fn test_time_instant_plus_duration_minus_instant_round_trips() {
        let start = Instant::now();
        let later = start + Duration::from_millis(250);
        let back = later - start;
        let error = back.abs_diff(Duration::from_millis(250));
        assert!(error < Duration::from_micros(1), "{back:?}");
    }

    #[kernel::test]
    fn test_time_frequency_comes_from_the_vmm() {
        assert!(crate::boot_info().tsc_khz > 0);
    }

    #[kernel::test]
    fn test_time_sleep_waits_at_least_the_duration() {
        let start = Instant::now();
        sleep(Duration::from_millis(20));
        let slept = start.elapsed();
        assert!(slept >= Duration::from_millis(20), "{slept:?}");
    }

    #[kernel::test]
    fn test_time_wall_clock_starts_at_boot_and_moves_forward() {
        // 2020-01-01T00:00:00Z: any host clock of this project's lifetime is later.
        assert!(
            boot_time() > Duration::from_secs(1_577_836_800),
            "{:?}",
            boot_time()
        );
        let first = unix_time();
        assert!(first >= boot_time());
        sleep(Duration::from_millis(1));
        assert!(unix_time() > first);
    }
}
