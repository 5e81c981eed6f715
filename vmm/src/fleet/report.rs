//! What a fleet reports: one [`InstanceResult`] per VM, the [`FleetReport`] over all of them,
//! as a table for people ([`format_table`]) or JSON for programs ([`format_json`], whose
//! schema is [`FleetSummary`]: the bench reads it back with the same types).

use crate::report::stats::percentile;
use std::collections::BTreeMap;

/// Console bytes kept per instance and stream for the report.
pub const KEPT_OUTPUT: usize = 64 * 1024;

/// What one instance did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct InstanceResult {
    /// Its group's name.
    pub group: String,
    /// Its index in the group.
    pub index: usize,
    /// The status `vmm run` would exit with.
    pub status: i32,
    /// `exited`, `crashed`, `timed out` or `vmm error`.
    pub kind: String,
    /// Launch latency: from a worker taking the instance's VM, created ahead, to the guest's
    /// exit (or to its parking with `--resident`), in µs.
    pub latency_us: f64,
    /// Creating its VM ahead (RAM, image, VM, vCPU, registers), in µs: off the launch path,
    /// but paid by the fleet's CPUs all the same (the launch rate counts it).
    #[serde(default)]
    pub create_us: f64,
    /// Its stdout (up to [`KEPT_OUTPUT`] bytes, lossy UTF-8).
    pub stdout: String,
    /// Its stderr, then the VMM's report about it.
    pub stderr: String,
}

/// Host memory figures in KiB.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct MemoryFigures {
    /// `MemAvailable` before the fleet.
    pub mem_available_before_kib: u64,
    /// `MemAvailable` with every instance resident (or at the end).
    pub mem_available_at_peak_kib: u64,
    /// `MemAvailable` after every instance is gone.
    pub mem_available_after_kib: u64,
    /// This process's RSS before the fleet.
    pub rss_before_kib: u64,
    /// This process's RSS at the peak.
    pub rss_at_peak_kib: u64,
    /// This process's peak RSS (VmHWM).
    pub rss_high_water_kib: u64,
    /// This process's PSS at the peak: pages shared with other processes (a snapshot's, in
    /// the page cache) counted once among their sharers.
    pub pss_at_peak_kib: u64,
}

/// What the fleet did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FleetReport {
    /// Instances in all.
    pub count: usize,
    /// Worker threads.
    pub concurrency: usize,
    /// Whether all were held resident.
    pub resident: bool,
    /// From the first creation to the last VM parked (resident), or to the last VM exited and
    /// destroyed.
    pub wall_s: f64,
    /// Instances per second over `wall_s`.
    pub launch_rate: f64,
    /// CPU time (user and system) the VMM process spent over `wall_s`, in seconds: what the
    /// fleet cost the machine, whatever else ran on it (the kernel's own threads excluded).
    #[serde(default)]
    pub cpu_s: f64,
    /// Most instances running at once (started by a worker and not yet ended; a parked one
    /// counts): at most the workers, or all of them with `--resident`. VMs created ahead and
    /// finished VMs waiting for their teardown are not counted.
    pub peak_concurrent: usize,
    /// Instances that ran in a reused VM (one whose last instance exited cleanly, returned to
    /// a fresh VM's state); the others each had a new VM.
    #[serde(default)]
    pub reused_vms: usize,
    /// Host memory.
    pub memory: MemoryFigures,
    /// Every instance, in group order.
    pub instances: Vec<InstanceResult>,
    /// With `--resident`: the groups none of whose instances parked (their image never
    /// parks, so they were not held at once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub never_parked: Vec<String>,
    /// The groups whose VMs could not be reused, and why (`GROUP: reason`): each of their
    /// instances had a new VM.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_reused: Vec<String>,
    /// VMs of groups that are reused but that were destroyed instead, counted by group and
    /// reason (`GROUP: N VMs: reason`), e.g. RAM that could not be locked in memory once
    /// RLIMIT_MEMLOCK was used up, or a guest that populated too many pages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_reuse: Vec<String>,
}

impl FleetReport {
    /// Latency percentile `p` (0..=100) in µs.
    pub fn latency_percentile(&self, p: f64) -> f64 {
        let mut all: Vec<f64> = self.instances.iter().map(|i| i.latency_us).collect();
        all.sort_by(f64::total_cmp);
        percentile(&all, p)
    }

    /// Percentile `p` (0..=100) of the time to create a VM ahead, in µs.
    pub fn create_percentile(&self, p: f64) -> f64 {
        let mut all: Vec<f64> = self.instances.iter().map(|i| i.create_us).collect();
        all.sort_by(f64::total_cmp);
        percentile(&all, p)
    }

    /// Instances per second of the VMM's CPU time: the launch rate one fully used core would
    /// give, measured even on a busy machine (0 when not measured).
    pub fn launches_per_cpu_s(&self) -> f64 {
        if self.cpu_s > 0.0 {
            self.count as f64 / self.cpu_s
        } else {
            0.0
        }
    }

    /// Instance counts by outcome (`exit 0`, `crashed`, ...).
    pub fn outcomes(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for i in &self.instances {
            let key = match i.kind.as_str() {
                "exited" => format!("exit {}", i.status),
                other => other.to_owned(),
            };
            *counts.entry(key).or_default() += 1;
        }
        counts
    }

    /// Host memory per instance, from `MemAvailable` (kernel memory included), in KiB.
    pub fn mem_available_per_instance_kib(&self) -> f64 {
        let used = self
            .memory
            .mem_available_before_kib
            .saturating_sub(self.memory.mem_available_at_peak_kib);
        used as f64 / self.count.max(1) as f64
    }

    /// This process's RSS growth per instance at the peak, in KiB.
    pub fn rss_per_instance_kib(&self) -> f64 {
        let grown = self
            .memory
            .rss_at_peak_kib
            .saturating_sub(self.memory.rss_before_kib);
        grown as f64 / self.count.max(1) as f64
    }
}

/// The human-readable report.
pub fn format_table(report: &FleetReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let _ = writeln!(
        out,
        "fleet: {} VMs, {} at a time{}",
        report.count,
        report.concurrency,
        if report.resident {
            ", all resident at once"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "  launch rate    {:.0} VMs/s ({:.0} per core) over {:.3} s",
        report.launch_rate,
        report.launch_rate / cores as f64,
        report.wall_s
    );
    let _ = writeln!(
        out,
        "  CPU            {:.3} s of the VMM's ({:.0} VMs per CPU-second)",
        report.cpu_s,
        report.launches_per_cpu_s()
    );
    let what = if report.resident {
        "start→parked"
    } else {
        "start→exit"
    };
    let _ = writeln!(
        out,
        "  {what:<14} p50 {:.0} µs  p90 {:.0} µs  p99 {:.0} µs  max {:.0} µs",
        report.latency_percentile(50.0),
        report.latency_percentile(90.0),
        report.latency_percentile(99.0),
        report.latency_percentile(100.0)
    );
    let _ = writeln!(
        out,
        "  created ahead  p50 {:.0} µs  p99 {:.0} µs (RAM, image, VM, vCPU: before the launch)",
        report.create_percentile(50.0),
        report.create_percentile(99.0),
    );
    let outcomes: Vec<String> = report
        .outcomes()
        .iter()
        .map(|(k, n)| format!("{n} × {k}"))
        .collect();
    let _ = writeln!(out, "  outcomes       {}", outcomes.join(", "));
    let _ = writeln!(
        out,
        "  peak VMs       {} running at once",
        report.peak_concurrent
    );
    let _ = writeln!(
        out,
        "  VMs            {} new, {} instances in a reused VM (returned to a fresh VM's state)",
        report.count.saturating_sub(report.reused_vms),
        report.reused_vms
    );
    let m = &report.memory;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let _ = writeln!(
        out,
        "  host memory    MemAvailable {:.1} → {:.1} → {:.1} MiB ({:.0} KiB per VM, kernel included)",
        mib(m.mem_available_before_kib),
        mib(m.mem_available_at_peak_kib),
        mib(m.mem_available_after_kib),
        report.mem_available_per_instance_kib()
    );
    let _ = writeln!(
        out,
        "                 VMM RSS {:.1} → {:.1} MiB ({:.0} KiB per VM), high-water {:.1} MiB",
        mib(m.rss_before_kib),
        mib(m.rss_at_peak_kib),
        report.rss_per_instance_kib(),
        mib(m.rss_high_water_kib)
    );
    let _ = writeln!(
        out,
        "                 VMM PSS at the peak {:.1} MiB ({:.0} KiB per VM, shared pages split among their sharers)",
        mib(m.pss_at_peak_kib),
        m.pss_at_peak_kib as f64 / report.count.max(1) as f64
    );
    out
}

/// The report as JSON.
pub fn format_json(report: &FleetReport) -> String {
    let summary = FleetSummary::of(report.clone());
    serde_json::to_string(&summary).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// The schema of `vmm fleet --json`: the report, and the figures derived from it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FleetSummary {
    /// The report itself.
    #[serde(flatten)]
    pub report: FleetReport,
    /// Launch latency percentiles in µs: `p50`, `p90`, `p99`, `max`.
    pub latency_us: BTreeMap<String, f64>,
    /// Percentiles of creating a VM ahead in µs: `p50`, `p99`.
    #[serde(default)]
    pub create_us: BTreeMap<String, f64>,
    /// Instance counts by outcome.
    pub outcomes: BTreeMap<String, usize>,
    /// Host memory per VM from `MemAvailable`, KiB.
    pub mem_available_per_vm_kib: f64,
    /// VMM RSS growth per VM, KiB.
    pub rss_per_vm_kib: f64,
}

impl FleetSummary {
    /// The summary of `report`.
    pub fn of(report: FleetReport) -> Self {
        let latency_us = [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("max", 100.0)]
            .into_iter()
            .map(|(name, p)| (name.to_owned(), report.latency_percentile(p)))
            .collect();
        let create_us = [("p50", 50.0), ("p99", 99.0)]
            .into_iter()
            .map(|(name, p)| (name.to_owned(), report.create_percentile(p)))
            .collect();
        Self {
            latency_us,
            create_us,
            outcomes: report.outcomes(),
            mem_available_per_vm_kib: report.mem_available_per_instance_kib(),
            rss_per_vm_kib: report.rss_per_instance_kib(),
            report,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_json_summary_reads_back() {
        let report = FleetReport {
            count: 1,
            concurrency: 1,
            resident: false,
            wall_s: 0.5,
            launch_rate: 2.0,
            cpu_s: 0.25,
            peak_concurrent: 1,
            reused_vms: 0,
            memory: MemoryFigures::default(),
            instances: vec![InstanceResult {
                group: "hello".into(),
                index: 0,
                status: 0,
                kind: "exited".into(),
                latency_us: 1500.0,
                create_us: 400.0,
                stdout: "hi\n".into(),
                stderr: String::new(),
            }],
            never_parked: Vec::new(),
            not_reused: Vec::new(),
            refused_reuse: Vec::new(),
        };
        let text = format_json(&report);
        let back: FleetSummary = serde_json::from_str(&text).unwrap();
        assert_eq!(back.report.instances[0].stdout, "hi\n");
        assert_eq!(back.latency_us["p50"], 1500.0);
        assert_eq!(back.outcomes["exit 0"], 1);
        assert_eq!(back.create_us["p50"], 400.0);
        assert_eq!(back.report.launches_per_cpu_s(), 4.0);
    }

    #[test]
    fn test_table_shows_pss_per_vm() {
        let report = FleetReport {
            count: 2,
            concurrency: 1,
            resident: true,
            wall_s: 1.0,
            launch_rate: 2.0,
            cpu_s: 0.25,
            peak_concurrent: 2,
            reused_vms: 0,
            memory: MemoryFigures {
                pss_at_peak_kib: 200,
                ..Default::default()
            },
            instances: Vec::new(),
            never_parked: Vec::new(),
            not_reused: Vec::new(),
            refused_reuse: Vec::new(),
        };
        assert!(format_table(&report).contains("100 KiB per VM, shared pages"));
    }
}
