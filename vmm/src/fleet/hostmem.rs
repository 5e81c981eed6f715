//! Readings of host memory for the fleet's density figures: `MemAvailable` (kernel memory
//! included) from `/proc/meminfo`, and this process's RSS, high-water mark and PSS; and its
//! CPU time, for the launch rate per CPU-second.

/// A `Field:   123 kB` value from a `/proc` text, in KiB (0 when missing).
pub(crate) fn field_kib(text: &str, field: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(field)?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The host's `MemAvailable`, in KiB.
pub(crate) fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo").map_or(0, |t| field_kib(&t, "MemAvailable:"))
}

/// A field of `/proc/self/status` (`VmRSS`, `VmHWM`), in KiB.
pub(crate) fn own_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status").map_or(0, |t| field_kib(&t, &format!("{field}:")))
}

/// This process's PSS, in KiB: pages shared with other processes counted once among them.
pub(crate) fn own_pss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/smaps_rollup").map_or(0, |t| field_kib(&t, "Pss:"))
}

/// CPU time (user and system) of this whole process so far, in seconds (0 if unknown).
pub(crate) fn own_cpu_s() -> f64 {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_field_kib_parses_kib() {
        let text = "MemTotal:       24000000 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(field_kib(text, "MemAvailable:"), 22_000_000);
        assert_eq!(field_kib(text, "Nope:"), 0);
    }
}
