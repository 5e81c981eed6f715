//! The host's memory as `/proc/meminfo` tells it, for the density runs: waiting until the
//! kernel has finished freeing the VMs of earlier runs (here it returns their memory lazily, at
//! about 16 MiB/s, for many seconds), and sampling `/proc/meminfo` during a run to find where
//! the memory of the VMs went at the peak (slab, vmalloc, page tables, ...).

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The `/proc/meminfo` fields reported per VM, in report order.
pub(crate) const FIELDS: [&str; 8] = [
    "AnonPages",
    "Slab",
    "SUnreclaim",
    "VmallocUsed",
    "KernelStack",
    "PageTables",
    "SecPageTables",
    "MemAvailable",
];
/// Always wait at least this long.
const MIN_SETTLE: Duration = Duration::from_secs(2);
/// Never wait longer than this.
const MAX_SETTLE: Duration = Duration::from_secs(30);
/// `MemAvailable` is settled once it moved less than this over [`QUIET_WINDOW`].
const QUIET_KIB: u64 = 4096;
const QUIET_WINDOW: Duration = Duration::from_secs(1);
/// How often the sampler reads `/proc/meminfo` during a run.
const SAMPLE_EVERY: Duration = Duration::from_millis(2);

/// Parses `/proc/meminfo` text into KiB per field.
pub(crate) fn parse(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let kib = rest.split_whitespace().next()?.parse().ok()?;
            Some((key.trim().to_owned(), kib))
        })
        .collect()
}

/// `/proc/meminfo` now (empty when unreadable).
pub(crate) fn meminfo() -> BTreeMap<String, u64> {
    parse(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default())
}

fn mem_available() -> u64 {
    meminfo().get("MemAvailable").copied().unwrap_or(0)
}

/// How the wait for a quiet host went.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Settled {
    /// Seconds waited.
    pub(crate) waited_s: f64,
    /// Whether `MemAvailable` became steady (else the wait hit its limit).
    pub(crate) steady: bool,
    /// How far `MemAvailable` moved in the last second of the wait, KiB: the host's own noise,
    /// which a run over N instances carries at about this / N per instance.
    #[serde(default)]
    pub(crate) last_move_kib: u64,
}

/// Waits until `MemAvailable` stops moving (the kernel done freeing earlier VMs): at least
/// [`MIN_SETTLE`], at most [`MAX_SETTLE`].
pub(crate) fn settle() -> Settled {
    let start = Instant::now();
    std::thread::sleep(MIN_SETTLE);
    let mut last = mem_available();
    loop {
        std::thread::sleep(QUIET_WINDOW);
        let now = mem_available();
        let moved = now.abs_diff(last);
        let steady = moved < QUIET_KIB;
        if steady || start.elapsed() >= MAX_SETTLE {
            return Settled {
                waited_s: start.elapsed().as_secs_f64(),
                steady,
                last_move_kib: moved,
            };
        }
        last = now;
    }
}

/// Reads `/proc/meminfo` in a thread until stopped, keeping the sample with the lowest
/// `MemAvailable`.
pub(crate) struct Sampler {
    before: BTreeMap<String, u64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<BTreeMap<String, u64>>>,
}

impl Sampler {
    /// Takes the "before" sample and starts sampling.
    pub(crate) fn start() -> Sampler {
        let before = meminfo();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, first) = (Arc::clone(&stop), before.clone());
            std::thread::spawn(move || {
                let mut lowest = first;
                while !stop.load(Ordering::Relaxed) {
                    let now = meminfo();
                    if now.get("MemAvailable") < lowest.get("MemAvailable") {
                        lowest = now;
                    }
                    std::thread::sleep(SAMPLE_EVERY);
                }
                lowest
            })
        };
        Sampler {
            before,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; returns each of [`FIELDS`] at the lowest `MemAvailable` minus before,
    /// divided by `count` (KiB per VM; `MemAvailable` as a drop, the others as growth).
    pub(crate) fn per_vm(mut self, count: usize) -> BTreeMap<String, f64> {
        self.stop.store(true, Ordering::Relaxed);
        let lowest = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        per_instance(&self.before, &lowest, count)
    }
}

/// Each of [`FIELDS`] from `before` to `peak`, per instance (`MemAvailable` as a drop, the
/// others as growth).
pub(crate) fn per_instance(
    before: &BTreeMap<String, u64>,
    peak: &BTreeMap<String, u64>,
    count: usize,
) -> BTreeMap<String, f64> {
    FIELDS
        .iter()
        .filter_map(|&field| {
            let (b, p) = (*before.get(field)? as f64, *peak.get(field)? as f64);
            let grown = if field == "MemAvailable" {
                b - p
            } else {
                p - b
            };
            Some((field.to_owned(), grown / count.max(1) as f64))
        })
        .collect()
}

/// The part of the `MemAvailable` drop that none of the counted fields explains (memory the
/// hypervisor allocates page by page, for one), or `None` when a field is missing.
pub(crate) fn unaccounted(per_vm: &BTreeMap<String, f64>) -> Option<f64> {
    let counted = [
        "AnonPages",
        "Slab",
        "VmallocUsed",
        "KernelStack",
        "PageTables",
        "SecPageTables",
    ];
    let mut sum = 0.0;
    for field in counted {
        sum += per_vm.get(field)?;
    }
    Some(per_vm.get("MemAvailable")? - sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       24000000 kB\nMemAvailable:   20000000 kB\n\
                           Slab:             100000 kB\nHugePages_Total:       0\n";

    #[test]
    fn test_parse_reads_kib_and_plain_counts() {
        let info = parse(MEMINFO);
        assert_eq!(info["MemAvailable"], 20_000_000);
        assert_eq!(info["Slab"], 100_000);
        assert_eq!(info["HugePages_Total"], 0);
    }

    #[test]
    fn test_per_vm_counts_available_as_a_drop_and_the_rest_as_growth() {
        let before = parse(MEMINFO);
        let peak = parse(
            &MEMINFO
                .replace("20000000", "19900000")
                .replace("100000", "150000"),
        );
        let per_vm = per_instance(&before, &peak, 100);
        assert_eq!(per_vm["MemAvailable"], 1000.0);
        assert_eq!(per_vm["Slab"], 500.0);
        assert!(!per_vm.contains_key("KernelStack"));
        assert_eq!(unaccounted(&per_vm), None);
    }

    #[test]
    fn test_unaccounted_is_the_drop_minus_the_counted_fields() {
        let fields = [
            ("MemAvailable", 500.0),
            ("AnonPages", 50.0),
            ("Slab", 100.0),
            ("SUnreclaim", 60.0),
            ("VmallocUsed", 40.0),
            ("KernelStack", 10.0),
            ("PageTables", 0.0),
            ("SecPageTables", 0.0),
        ];
        let per_vm = fields.map(|(k, v)| (k.to_owned(), v)).into_iter().collect();
        assert_eq!(unaccounted(&per_vm), Some(300.0));
    }
}
