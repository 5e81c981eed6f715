//! `vmm run --timeline`: when each boot phase ended, how many VM exits of which kind, how much
//! output and guest RAM, and which hypervisor this is (PVM changes what the numbers mean).

use super::RunReport;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, Instant};

/// Environment variable a launcher may set to the `CLOCK_MONOTONIC` time (ns) at which it
/// spawned the VMM, for an exact "process start" phase.
pub const SPAWN_TIME_ENV: &str = "FLICK_SPAWN_NS";

/// Instants at which the boot phases ended.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// The process started (exact with [`SPAWN_TIME_ENV`], else estimated from CPU time).
    pub process_start: Option<Instant>,
    /// `main` was entered.
    pub main_entered: Option<Instant>,
    /// The command line was parsed.
    pub args_parsed: Option<Instant>,
    /// Guest RAM was mapped.
    pub ram_mapped: Option<Instant>,
    /// The image was read, validated and copied into RAM with its page tables.
    pub image_loaded: Option<Instant>,
    /// `/dev/kvm` was opened.
    pub kvm_opened: Option<Instant>,
    /// The VM was created.
    pub vm_created: Option<Instant>,
    /// Guest RAM was mapped and registered.
    pub ram_ready: Option<Instant>,
    /// The vCPU was created and its CPUID set.
    pub vcpu_created: Option<Instant>,
    /// Boot info was written and the vCPU's registers set.
    pub vcpu_ready: Option<Instant>,
    /// The guest's thread was confined (`vmm run`: its teardown helper made, its watchdog
    /// started, its seccomp filter installed).
    pub confined: Option<Instant>,
    /// The first `KVM_RUN` returned.
    pub first_exit: Option<Instant>,
    /// The guest stopped.
    pub guest_stopped: Option<Instant>,
    /// The VM was torn down (or its teardown handed off).
    pub torn_down: Option<Instant>,
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Timeline {
    /// A timeline starting now, at the top of `main`.
    pub fn at_main() -> Self {
        let now = Instant::now();
        let since_spawn = std::env::var(SPAWN_TIME_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(|spawn| Duration::from_nanos(monotonic_ns().saturating_sub(spawn)))
            .unwrap_or_else(process_cpu_time);
        Timeline {
            process_start: now.checked_sub(since_spawn),
            main_entered: Some(now),
            ..Default::default()
        }
    }
}

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// What ended.
    pub name: &'static str,
    /// Time the boot spent on it: since the previous phase ended, in µs.
    pub duration_us: f64,
    /// Time since process start, in µs.
    pub since_start_us: f64,
}

/// The phases of `report` in the order they ended (phases that did not happen are left out).
pub fn phases(report: &RunReport) -> Vec<Phase> {
    let t = &report.timeline;
    let entered_main = report
        .milestones
        .iter()
        .find(|(id, _)| *id == abi::milestone::ENTERED_MAIN)
        .map(|(_, at)| *at);
    let points = [
        ("process start → main", t.main_entered),
        ("argument parsing", t.args_parsed),
        ("guest RAM mapped", t.ram_mapped),
        ("image load, page tables", t.image_loaded),
        ("open /dev/kvm", t.kvm_opened),
        ("create VM", t.vm_created),
        ("register guest RAM", t.ram_ready),
        ("create vCPU, set CPUID", t.vcpu_created),
        ("boot info, registers", t.vcpu_ready),
        ("teardown helper, watchdog, sandbox", t.confined),
        ("first KVM_RUN → first exit", t.first_exit),
        ("guest entered main", entered_main),
        ("first console output", report.first_output),
        ("guest exit", t.guest_stopped),
        ("VM teardown", t.torn_down),
    ];
    let Some(origin) = t.process_start.or(t.main_entered) else {
        return Vec::new();
    };
    let mut previous = origin;
    let mut out = Vec::new();
    for (name, at) in points {
        let Some(at) = at else { continue };
        out.push(Phase {
            name,
            duration_us: micros(at.saturating_duration_since(previous)),
            since_start_us: micros(at.saturating_duration_since(origin)),
        });
        previous = previous.max(at);
    }
    // Durations follow the boot's path (above); the table reads in the order phases ended.
    out.sort_by(|a, b| a.since_start_us.total_cmp(&b.since_start_us));
    out
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Which hypervisor backs `/dev/kvm` (looked up once per process, before the thread that
/// prints the report is confined: `launch::run_with` asks for it early).
pub fn hypervisor() -> (&'static str, &'static str) {
    static FLAVOUR: std::sync::OnceLock<(&'static str, &'static str)> = std::sync::OnceLock::new();
    *FLAVOUR.get_or_init(detect_hypervisor)
}

fn detect_hypervisor() -> (&'static str, &'static str) {
    let loaded = |module: &str| std::path::Path::new("/sys/module").join(module).exists();
    if loaded("kvm_pvm") {
        (
            "pvm",
            "PVM, a software hypervisor: guest ring 0 is emulated, ring 3 runs natively, a VM exit costs 7-25 µs",
        )
    } else if loaded("kvm_intel") {
        ("kvm-intel", "hardware KVM (Intel VT-x)")
    } else if loaded("kvm_amd") {
        ("kvm-amd", "hardware KVM (AMD-V)")
    } else {
        ("unknown", "unknown KVM provider")
    }
}

/// The human-readable timeline.
pub fn format_text(report: &RunReport, exit_status: i32) -> String {
    let mut out = String::from("timeline (µs)                          phase    since start\n");
    for phase in phases(report) {
        let _ = writeln!(
            out,
            "  {:<34} {:>9.1} {:>12.1}",
            phase.name, phase.duration_us, phase.since_start_us
        );
    }
    let stats = &report.stats;
    let ports: Vec<String> = stats
        .io_out
        .iter()
        .map(|(p, n)| format!("out {p:#x}: {n}"))
        .chain(stats.io_in.iter().map(|(p, n)| format!("in {p:#x}: {n}")))
        .collect();
    let _ = writeln!(
        out,
        "VM exits: {} (port I/O: {}; MMIO: {}; other: {})",
        stats.total(),
        if ports.is_empty() {
            "none".to_owned()
        } else {
            ports.join(", ")
        },
        stats.mmio,
        stats.other
    );
    let _ = writeln!(out, "console output: {} bytes", stats.console_bytes);
    if let Some(pages) = report.ram_pages_touched {
        let _ = writeln!(out, "guest RAM touched: {pages} pages ({} KiB)", pages * 4);
    }
    let _ = writeln!(out, "hypervisor: {}", hypervisor().1);
    let _ = writeln!(out, "exit status: {exit_status}");
    out
}

/// One phase as `--timeline=json` writes it (and the bench reads it).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PhaseRecord {
    /// What ended.
    pub phase: String,
    /// Time since the previous phase ended, µs.
    pub duration_us: f64,
    /// Time since process start, µs.
    #[serde(default)]
    pub since_start_us: f64,
}

/// VM exit counts as `--timeline=json` writes them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExitsRecord {
    /// All exits.
    pub total: u64,
    /// `out` exits per port (`"0x501"`).
    pub io_out: BTreeMap<String, u64>,
    /// `in` exits per port.
    pub io_in: BTreeMap<String, u64>,
    /// MMIO exits.
    pub mmio: u64,
    /// Other exits.
    pub other: u64,
}

/// The schema of `vmm run --timeline=json`: one line of JSON on stderr after the run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TimelineRecord {
    /// The phases, in the order they ended.
    pub phases: Vec<PhaseRecord>,
    /// VM exits.
    pub exits: ExitsRecord,
    /// Console bytes the guest wrote.
    pub console_bytes: u64,
    /// Guest RAM pages resident after the run.
    pub ram_pages_touched: Option<u64>,
    /// `pvm`, `kvm-intel`, `kvm-amd` or `unknown`.
    pub hypervisor: String,
    /// The VMM's exit status.
    pub exit_status: i32,
}

impl TimelineRecord {
    /// The record of `report`.
    pub fn of(report: &RunReport, exit_status: i32) -> Self {
        let ports = |map: &BTreeMap<u16, u64>| {
            map.iter()
                .map(|(port, n)| (format!("{port:#x}"), *n))
                .collect()
        };
        let stats = &report.stats;
        Self {
            phases: phases(report)
                .into_iter()
                .map(|p| PhaseRecord {
                    phase: p.name.to_owned(),
                    duration_us: (p.duration_us * 10.0).round() / 10.0,
                    since_start_us: (p.since_start_us * 10.0).round() / 10.0,
                })
                .collect(),
            exits: ExitsRecord {
                total: stats.total(),
                io_out: ports(&stats.io_out),
                io_in: ports(&stats.io_in),
                mmio: stats.mmio,
                other: stats.other,
            },
            console_bytes: stats.console_bytes,
            ram_pages_touched: report.ram_pages_touched,
            hypervisor: hypervisor().0.to_owned(),
            exit_status,
        }
    }
}

/// The same as one line of JSON ([`TimelineRecord`]).
pub fn format_json(report: &RunReport, exit_status: i32) -> String {
    serde_json::to_string(&TimelineRecord::of(report, exit_status))
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{ExitStats, Outcome};

    fn report(timeline: Timeline) -> RunReport {
        RunReport {
            outcome: Outcome::Exited(0),
            stats: ExitStats::default(),
            timeline,
            milestones: Vec::new(),
            first_output: None,
            ram_pages_touched: None,
            crash: None,
        }
    }

    #[test]
    fn test_timeline_rows_follow_the_boot_in_order() {
        let start = Instant::now();
        let at = |us: u64| Some(start + Duration::from_micros(us));
        let timeline = Timeline {
            process_start: at(0),
            main_entered: at(500),
            args_parsed: at(600),
            ram_mapped: at(650),
            image_loaded: at(800),
            kvm_opened: at(820),
            vm_created: at(1000),
            ram_ready: at(1100),
            vcpu_created: at(1300),
            vcpu_ready: at(1350),
            ..Default::default()
        };
        let rows = phases(&report(timeline.clone()));
        let ends: Vec<f64> = rows.iter().map(|p| p.since_start_us).collect();
        assert!(ends.is_sorted(), "{rows:?}");
        let image = rows
            .iter()
            .find(|p| p.name.starts_with("image load"))
            .unwrap();
        assert_eq!(image.duration_us, 150.0, "from guest RAM mapped to loaded");
        let ram = rows
            .iter()
            .find(|p| p.name == "register guest RAM")
            .unwrap();
        assert_eq!(ram.duration_us, 100.0, "measured from the VM's creation");
        let text = format_text(&report(timeline), 0);
        let image_line = text.lines().position(|l| l.contains("image load")).unwrap();
        let vm_line = text.lines().position(|l| l.contains("create VM")).unwrap();
        assert!(image_line < vm_line, "{text}");
    }
}
