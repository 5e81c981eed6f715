//! The fleet report: the targets judged on the fleet bench, and its Markdown (launch rate and
//! latency per peer, memory per resident instance measured alike for every peer, our density
//! run, the targets, and a README-ready block).

use super::format::{cell, kib, ms};
use crate::fleet::{CONCURRENCY, FleetBench, MEMORY_ROUNDS, ROUNDS, Resident, Row, WARMUP, cores};
use crate::measure::Part;
use crate::measure::hostmem;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Launch rate per core, issue 5.
pub(crate) const RATE_TARGET_PER_CORE: f64 = 300.0;
/// Launch rate per core, issue 15.
const RATE_GOAL_PER_CORE: f64 = 1000.0;
/// Host memory per resident VM by `MemAvailable`.
const MEMORY_TARGET_KIB: f64 = 256.0;
/// Resident VMs held at once.
const RESIDENT_TARGET: usize = 1000;

/// A target and whether it was met (`None`: not measured).
#[derive(Serialize)]
pub(crate) struct Target {
    /// The target, and the issue that set it.
    pub(crate) target: String,
    /// What was measured.
    pub(crate) measured: String,
    /// Met or not.
    pub(crate) met: Option<bool>,
}

/// The fleet bench with its targets, as written.
#[derive(Serialize)]
pub(crate) struct FleetReport<'a> {
    /// What was measured.
    #[serde(flatten)]
    pub(crate) bench: &'a FleetBench,
    /// The targets judged on it.
    pub(crate) targets: Vec<Target>,
}

impl FleetReport<'_> {
    /// The report of `bench`, with its targets.
    pub(crate) fn new(bench: &FleetBench) -> FleetReport<'_> {
        FleetReport {
            bench,
            targets: targets(bench),
        }
    }
}

/// The memory per resident instance of `row` (ours': the density run's).
fn resident_of<'a>(bench: &'a FleetBench, row: &'a Row) -> Option<&'a Part<Resident>> {
    if row.name == "ours" {
        bench.density.as_ref()
    } else {
        row.resident.as_ref()
    }
}

/// The targets, judged on what was measured.
fn targets(bench: &FleetBench) -> Vec<Target> {
    let ours = bench
        .rows
        .iter()
        .find(|r| r.name == "ours" && r.status == "ok");
    let density = bench.density.as_ref().and_then(Part::done);
    let rate = |goal: f64, issue: &str| Target {
        target: format!("≥ {goal:.0} VMs/s per core ({issue})"),
        measured: ours.map_or("not measured".into(), |r| {
            let cpu = r
                .vmm_fleet
                .as_ref()
                .filter(|f| f.launches_per_cpu_s > 0.0)
                .map_or(String::new(), |f| {
                    format!(
                        "; {:.0} VMs per CPU-second of the VMM's own (user and system) time",
                        f.launches_per_cpu_s
                    )
                });
            format!(
                "{:.0} VMs/s per core ({:.0}/s on {:.0} cores){cpu}",
                r.launch_rate_per_core,
                r.launch_rate,
                cores()
            )
        }),
        met: ours.map(|r| r.launch_rate_per_core >= goal),
    };
    let fresh = bench
        .rows
        .iter()
        .find(|r| r.name == "ours-fresh" && r.status == "ok");
    let rate = |goal: f64, issue: &str| {
        let mut target = rate(goal, issue);
        if let Some(fresh) = fresh {
            target.measured.push_str(&format!(
                "; with a new VM per instance (`--no-reuse`) {:.0} VMs/s per core",
                fresh.launch_rate_per_core
            ));
        }
        target
    };
    let per_vm = density.map(Resident::mem_available_kib);
    let memory = Target {
        target: format!(
            "≤ {MEMORY_TARGET_KIB:.0} KiB host memory per resident VM, by MemAvailable \
             (issues 5 and 15)"
        ),
        measured: density.map_or("not measured".into(), |d| {
            format!(
                "{:.0} KiB from MemAvailable (kernel included), {:.0} KiB from the VMM's RSS, {} \
                 resident (median of {} rounds)",
                d.mem_available_kib(),
                d.median_round
                    .fleet
                    .as_ref()
                    .map_or(0.0, |f| f.rss_per_vm_kib),
                d.asked,
                d.rounds_kib.len()
            )
        }),
        met: per_vm.map(|kib| kib <= MEMORY_TARGET_KIB),
    };
    let memory = Target {
        measured: match bench.platform.as_ref().and_then(Part::done) {
            Some(floor) => format!(
                "{}; the platform's part, the floor program holding as many minimal VMs: {:.0} \
                 KiB",
                memory.measured,
                floor.mem_available_kib()
            ),
            None => memory.measured,
        },
        ..memory
    };
    let resident = Target {
        target: format!("{RESIDENT_TARGET} resident VMs on this machine (issue 5)"),
        measured: density.map_or("not measured".into(), |d| {
            let alive = d
                .median_round
                .fleet
                .as_ref()
                .map_or(0, |f| f.peak_concurrent);
            let exited = if d.held { ", all exited 0" } else { "" };
            format!("{alive} of {} alive at once{exited}", d.asked)
        }),
        met: density
            .filter(|d| d.asked >= RESIDENT_TARGET)
            .map(|d| d.held),
    };
    let latency = Target {
        target: format!(
            "p50 and p99 launch latency reported at {RESIDENT_TARGET} resident VMs (issue 15)"
        ),
        measured: density
            .and_then(|d| Some((d, d.median_round.fleet.as_ref()?)))
            .map_or("not measured".into(), |(d, f)| resident_latency(d.asked, f)),
        met: density
            .filter(|d| d.asked >= RESIDENT_TARGET)
            .map(|d| d.held),
    };
    vec![
        rate(RATE_TARGET_PER_CORE, "issue 5"),
        rate(RATE_GOAL_PER_CORE, "issue 15"),
        memory,
        resident,
        latency,
    ]
}

/// The launch latency of the resident VMs of `fleet`: a worker taking a VM created ahead to
/// the guest parked, and creating it.
fn resident_latency(asked: usize, fleet: &crate::contracts::VmmFleet) -> String {
    let l = fleet.latency().unwrap_or(fleet.latency_us);
    let create = |p: &str| fleet.create_us.get(p).copied().unwrap_or(0.0);
    format!(
        "at {asked} resident: p50 {}, p99 {} (launch → parked; creating each VM ahead: p50 {}, \
         p99 {})",
        ms(l.p50),
        ms(l.p99),
        ms(create("p50")),
        ms(create("p99"))
    )
}

/// The fleet report as Markdown.
pub(crate) fn markdown(report: &FleetReport<'_>) -> String {
    let bench = report.bench;
    let m = &bench.machine;
    let mut md = format!("# flick fleet bench, {}\n\n", m.date);
    let _ = writeln!(md, "{}.\n", machine_line(bench));
    let _ = writeln!(
        md,
        "{} instances per peer, {CONCURRENCY} in flight at once, after {WARMUP} untimed ones; \
         {ROUNDS} rounds of all peers interleaved, each peer's round with the median launch rate \
         shown (every round's rate is in fleet.json). Ours: one `vmm fleet` process booting a \
         VM per instance on {CONCURRENCY} worker threads, each VM created ahead by a creator \
         thread and destroyed after by a reaper thread; launch rate as it reports it (first \
         creation → last VM destroyed), latency (a worker taking a VM created ahead → exit) \
         from its instances. The others: the bench spawns and reaps each \
         instance from {CONCURRENCY} threads; launch rate = instances / (first spawn → last \
         exit), latency = spawn → `wait4`. Percentiles interpolated alike for every row. Every \
         instance's output and status is checked.\n\n\
         Memory / resident instance: the drop of the host's MemAvailable (kernel included) \
         from right before the first instance to the moment all N are alive, over N, for every \
         peer alike, once MemAvailable was steady; {MEMORY_ROUNDS} rounds interleaved across \
         peers, the median shown. Ours: `vmm fleet idle --resident` (the VMM process included; \
         the two moments as `vmm fleet` reads them); the others: N instances of a static \
         program that prints \"ready\" and waits for the end of its stdin, all started, then \
         each waited for until it is ready.",
        bench.count
    );
    md.push_str(&table(bench));
    let rounds: Vec<String> = bench
        .rows
        .iter()
        .filter(|r| !r.rounds_launch_rate.is_empty())
        .map(|r| {
            let rates: Vec<String> = r
                .rounds_launch_rate
                .iter()
                .map(|x| format!("{x:.0}"))
                .collect();
            format!("{} {}/s", r.name, rates.join(", "))
        })
        .collect();
    if !rounds.is_empty() {
        let _ = writeln!(md, "\nLaunch rate of each round: {}.", rounds.join("; "));
    }
    md.push_str(&resident_notes(bench));
    md.push_str(&density_section(bench.density.as_ref()));
    md.push_str(&platform_line(bench.platform.as_ref()));
    md.push_str(&targets_table(&report.targets));
    md.push_str(
        "\n## For README (paste as it is)\n\n<!-- from the bench report; do not edit by hand -->\n",
    );
    let _ = writeln!(
        md,
        "`cargo xtask bench --fleet {}`, {}: {}; {} instances, {CONCURRENCY} at a time, median \
         of {ROUNDS} interleaved rounds; memory: {} resident instances per peer.",
        bench.count,
        m.date,
        machine_line(bench),
        bench.count,
        bench.resident
    );
    md.push_str(&table(bench));
    md.push_str(&memory_rounds_line(bench));
    md.push_str(&platform_line(bench.platform.as_ref()));
    if let Some(Part::Done(d)) = &bench.density
        && let Some(f) = &d.median_round.fleet
    {
        let _ = writeln!(
            md,
            "\nOurs, launch latency {}.",
            resident_latency(d.asked, f)
        );
    }
    md.push_str(&targets_table(&report.targets).replace("\n## ", "\n#### "));
    md
}

fn machine_line(bench: &FleetBench) -> String {
    let m = &bench.machine;
    format!(
        "Linux {}, {} ({} cores), /dev/kvm: {}; load average at the start {}, at the end {}",
        m.kernel, m.cpu, m.cores, m.kvm, bench.loadavg_at_start, m.loadavg
    )
}

fn table(bench: &FleetBench) -> String {
    let mut md = String::from(
        "\n| peer | launch rate | per core | p50 | p90 | p99 | memory / resident instance |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in &bench.rows {
        let name = if row.name == "ours" {
            "**ours** (`vmm fleet`: a fresh VM's state per instance, VMs reused)"
        } else {
            match row.name {
                "ours-fresh" => "ours, new VMs (`vmm fleet --no-reuse`: a new VM per instance)",
                "native" => "native processes (static hello)",
                "unshare" => "unshare sandboxes",
                "crun" => "crun containers",
                other => other,
            }
        };
        let Some(l) = row.latency_us else {
            let note = cell(row.note.as_deref().unwrap_or(""));
            let _ = writeln!(md, "| {name} | {} | – | – | – | – | {note} |", row.status);
            continue;
        };
        let memory = match resident_of(bench, row) {
            Some(Part::Done(r)) => {
                let held = if r.held { "" } else { " (not all held)" };
                format!("{}{held}", kib(r.mem_available_kib()))
            }
            Some(Part::Missing { .. }) => "failed".into(),
            None => "not measured".into(),
        };
        let _ = writeln!(
            md,
            "| {name} | {:.0}/s | {:.0}/s | {} | {} | {} | {memory} |",
            row.launch_rate,
            row.launch_rate_per_core,
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
        );
    }
    md
}

/// How many instances each memory figure held, and why a figure is missing.
fn resident_notes(bench: &FleetBench) -> String {
    let notes: Vec<String> = bench
        .rows
        .iter()
        .filter_map(|row| match resident_of(bench, row)? {
            Part::Done(r) => {
                let settled = &r.median_round.settled;
                let rounds: Vec<String> = r.rounds_kib.iter().map(|k| kib(*k)).collect();
                Some(format!(
                    "{}: {} resident, rounds {} (median shown); before the median round, a wait \
                     of {:.0} s for a steady MemAvailable{} (it moved {} in the last second: \
                     about ±{} per instance of the host's own noise)",
                    row.name,
                    r.asked,
                    rounds.join(", "),
                    settled.waited_s,
                    if settled.steady {
                        ""
                    } else {
                        ", which never came"
                    },
                    kib(settled.last_move_kib as f64),
                    kib(settled.last_move_kib as f64 / r.asked.max(1) as f64)
                ))
            }
            Part::Missing { unavailable } => {
                Some(format!("{}: failed: {}", row.name, cell(unavailable)))
            }
        })
        .collect();
    if notes.is_empty() {
        return String::new();
    }
    format!("\nMemory runs: {}.\n", notes.join("; "))
}

/// Every memory round's figure per peer, on one line (the spread is the host's noise).
fn memory_rounds_line(bench: &FleetBench) -> String {
    let rounds: Vec<String> = bench
        .rows
        .iter()
        .filter_map(|row| {
            let r = resident_of(bench, row)?.done()?;
            let figures: Vec<String> = r.rounds_kib.iter().map(|k| format!("{k:.0}")).collect();
            Some(format!("{} {} KiB", row.name, figures.join(", ")))
        })
        .collect();
    if rounds.is_empty() {
        return String::new();
    }
    format!(
        "\nMemory / resident instance in each round (the median is shown above): {}.\n",
        rounds.join("; ")
    )
}

fn density_section(density: Option<&Part<Resident>>) -> String {
    let mut md = String::from("\n## Density: our resident VMs\n\n");
    match density {
        None => return String::new(),
        Some(Part::Missing { unavailable }) => {
            let _ = writeln!(md, "Failed: {}.", cell(unavailable));
        }
        Some(Part::Done(d)) => {
            let Some(f) = &d.median_round.fleet else {
                return String::new();
            };
            let latency = f.latency().unwrap_or(f.latency_us);
            let _ = writeln!(
                md,
                "`vmm fleet idle --count {} --resident`: every VM boots and parks, all are alive \
                 at once, then all are released.\n\n\
                 | resident VMs | held | MemAvailable / VM | RSS / VM | VMM PSS at peak | \
                 launch rate | p50 to parked | p99 to parked |\n\
                 |---:|---|---:|---:|---:|---:|---:|---:|\n\
                 | {} of {} | {} | {} | {} | {} | {:.0}/s | {} | {} |\n\n\
                 The round with the median MemAvailable figure of {}. MemAvailable / VM: the drop \
                 of the host's MemAvailable from before the fleet to all VMs parked, as `vmm \
                 fleet` reads it (guest pages, page tables, KVM's structures: the kernel \
                 included); RSS / VM: the growth of the VMM process's RSS, what is ours \
                 alone.\n\n{}",
                d.asked,
                f.peak_concurrent,
                d.asked,
                if d.held { "yes" } else { "**no**" },
                kib(d.mem_available_kib()),
                kib(f.rss_per_vm_kib),
                kib(f.memory.pss_at_peak_kib as f64),
                f.launch_rate,
                ms(latency.p50),
                ms(latency.p99),
                d.rounds_kib.len(),
                meminfo_line(&d.median_round.meminfo_per_instance_kib)
            );
        }
    }
    md
}

/// The platform's part of a resident VM's memory: the floor program holding minimal VMs.
fn platform_line(platform: Option<&Part<Resident>>) -> String {
    match platform {
        None => String::new(),
        Some(Part::Missing { unavailable }) => {
            format!(
                "\nThe platform's part: not measured ({}).\n",
                cell(unavailable)
            )
        }
        Some(Part::Done(floor)) => {
            let rounds: Vec<String> = floor.rounds_kib.iter().map(|k| format!("{k:.0}")).collect();
            format!(
                "\nThe platform's part: `floor --hold {}` (the floor program: {} minimal VMs, one \
                 2 MiB slot and one vCPU each, booted to their one exit, alive at once in one \
                 process) takes {} of MemAvailable per VM{} (rounds {} KiB): what the host \
                 kernel and the hypervisor hold for any VM, and the floor guest's few pages. {}\n",
                floor.asked,
                floor.asked,
                kib(floor.mem_available_kib()),
                if floor.held { "" } else { " (not all held)" },
                rounds.join(", "),
                meminfo_line(&floor.median_round.meminfo_per_instance_kib)
            )
        }
    }
}

/// Where the memory went, per VM, from the `/proc/meminfo` sample at the peak.
fn meminfo_line(per_vm: &BTreeMap<String, f64>) -> String {
    let mut parts: Vec<String> = hostmem::FIELDS
        .iter()
        .filter_map(|f| Some(format!("{f} {}", kib(*per_vm.get(*f)?))))
        .collect();
    if let Some(unaccounted) = hostmem::unaccounted(per_vm) {
        parts.push(format!("in none of these {}", kib(unaccounted)));
    }
    if parts.is_empty() {
        return String::new();
    }
    format!(
        "Where it goes, per VM (`/proc/meminfo` sampled by the bench at the lowest MemAvailable, \
         minus before): {}.",
        parts.join(", ")
    )
}

fn targets_table(targets: &[Target]) -> String {
    let mut md = String::from("\n## Targets\n\n| target | measured | met |\n|---|---|---|\n");
    for t in targets {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        let _ = writeln!(md, "| {} | {} | {met} |", t.target, t.measured);
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::{FLEET_JSON_EXAMPLE, VmmFleet};
    use crate::fleet::ResidentRound;
    use crate::measure::hostmem::Settled;
    use crate::measure::machine::Machine;

    fn bench(rows: Vec<Row>, density: Option<Part<Resident>>) -> FleetBench {
        FleetBench {
            machine: Machine::detect(),
            loadavg_at_start: String::new(),
            count: 2,
            concurrency: 2,
            resident: 100,
            rows,
            density,
            platform: None,
        }
    }

    fn ours(per_core: f64) -> Row {
        let mut row = Row::missing("ours", "ok", String::new());
        row.launch_rate_per_core = per_core;
        row
    }

    fn resident(asked: usize, mem_available_kib: f64) -> Resident {
        let fleet: VmmFleet = serde_json::from_str(FLEET_JSON_EXAMPLE).unwrap();
        Resident {
            asked,
            held: true,
            rounds_kib: vec![mem_available_kib],
            median_round: ResidentRound {
                held: true,
                settled: Settled {
                    waited_s: 2.0,
                    steady: true,
                    last_move_kib: 100,
                },
                mem_available_kib,
                meminfo_per_instance_kib: BTreeMap::new(),
                fleet: Some(fleet),
            },
        }
    }

    #[test]
    fn test_targets_rate_met_only_at_300_per_core() {
        let met = |per_core| targets(&bench(vec![ours(per_core)], None))[0].met;
        assert_eq!(met(300.0), Some(true));
        assert_eq!(met(299.0), Some(false));
    }

    #[test]
    fn test_targets_without_density_are_not_measured() {
        let t = targets(&bench(Vec::new(), None));
        assert!(t.iter().all(|t| t.met.is_none()));
    }

    #[test]
    fn test_targets_memory_over_256_kib_per_vm_is_not_met() {
        let t = targets(&bench(Vec::new(), Some(Part::Done(resident(100, 300.0)))));
        assert_eq!(t[2].met, Some(false)); // 300 KiB per VM
        assert_eq!(t[3].met, None); // only 100 tried
    }

    #[test]
    fn test_targets_resident_latency_is_judged_at_1000_only() {
        let at = |asked| targets(&bench(Vec::new(), Some(Part::Done(resident(asked, 500.0)))));
        let t = at(1000);
        assert_eq!(t[4].met, Some(true));
        assert!(t[4].measured.contains("p50 "), "{}", t[4].measured);
        assert!(t[4].measured.contains("p99 "), "{}", t[4].measured);
        assert_eq!(at(100)[4].met, None);
    }

    #[test]
    fn test_targets_memory_names_the_platforms_part() {
        let mut bench = bench(Vec::new(), Some(Part::Done(resident(1000, 500.0))));
        bench.platform = Some(Part::Done(resident(1000, 320.0)));
        let t = targets(&bench);
        assert!(
            t[2].measured.contains("platform's part"),
            "{}",
            t[2].measured
        );
        assert!(t[2].measured.contains("320 KiB"), "{}", t[2].measured);
        assert!(platform_line(bench.platform.as_ref()).contains("floor --hold 1000"));
    }

    #[test]
    fn test_table_memory_column_is_mem_available_for_every_peer() {
        let mut native = Row::missing("native", "ok", String::new());
        native.latency_us = crate::contracts::Latency::of(&[300.0]);
        native.resident = Some(Part::Done(resident(100, 150.0)));
        let mut ours = ours(500.0);
        ours.latency_us = crate::contracts::Latency::of(&[600.0]);
        let bench = bench(vec![ours, native], Some(Part::Done(resident(100, 600.0))));
        let md = table(&bench);
        assert!(md.contains("| 600 KiB |"), "{md}");
        assert!(md.contains("| 150 KiB |"), "{md}");
    }
}
