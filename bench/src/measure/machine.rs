//! The facts of the machine a report was measured on: date, kernel, CPU, cores, and what
//! `/dev/kvm` is (PVM, the software hypervisor, or hardware KVM).

use serde::Serialize;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// The machine, as the report names it.
#[derive(Debug, Serialize)]
pub(crate) struct Machine {
    /// When the bench ran, UTC, `YYYY-MM-DD HH:MM UTC`.
    pub(crate) date: String,
    /// `uname -r`.
    pub(crate) kernel: String,
    /// The CPU's model name.
    pub(crate) cpu: String,
    /// Online CPUs.
    pub(crate) cores: usize,
    /// What `/dev/kvm` is.
    pub(crate) kvm: String,
    /// `/proc/loadavg` when the report was made (the bench shares the machine).
    pub(crate) loadavg: String,
}

impl Machine {
    /// Reads the facts of this machine.
    pub(crate) fn detect() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|x| x.1))
            .unwrap_or("unknown")
            .trim()
            .to_owned();
        let kvm = if !Path::new("/dev/kvm").exists() {
            "none (/dev/kvm is missing)"
        } else if Path::new("/sys/module/kvm_pvm").exists() {
            "PVM (kvm_pvm, software hypervisor)"
        } else {
            "hardware KVM"
        };
        Machine {
            date: utc_now(),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kvm: kvm.to_owned(),
            loadavg: read("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

/// The proleptic Gregorian date of `days` since 1970-01-01, counted in 400-year eras of
/// 146097 days whose years start on March 1st (so that the leap day ends a year).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn test_civil_from_days_epoch_is_1970_01_01() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }

    #[test]
    fn test_civil_from_days_leap_day_2024() {
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn test_civil_from_days_new_year_2026() {
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }
}
