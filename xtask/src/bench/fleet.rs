//! `cargo xtask bench --fleet N`: one N-way workload (N hellos, [`CONCURRENCY`] at a time) run
//! by our `vmm fleet` in one VMM process, and as native processes, namespace sandboxes and crun
//! containers spawned by the bench; launch rate, latency percentiles and memory per instance.
//! Then a density run, `vmm fleet idle --resident` (every VM alive at once): host memory per
//! resident VM and whether all were held. Report in `target/bench/fleet.{md,json,svg}`.

use super::machine::Machine;
use super::measure::{self, Watchdog};
use super::peers::{self, Peer, Setup};
use super::report::Part;
use super::stats::{median, percentile};
use super::{bench_dir, hostmem, native, svg};
use crate::{build_vmm, guest, vmm_path};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Instances per peer by default.
pub const DEFAULT_COUNT: usize = 200;
/// Instances per peer with `--quick`.
pub const QUICK_COUNT: usize = 50;
/// Resident VMs in the density run.
const DENSITY_COUNT: usize = 1000;
/// Resident VMs in the density run with `--quick`.
const QUICK_DENSITY_COUNT: usize = 100;
/// Instances in flight at once, for every peer.
const CONCURRENCY: usize = 2;
/// What `--only` accepts with `--fleet`.
pub const NAMES: [&str; 5] = ["ours", "native", "unshare", "crun", "density"];
/// The process peers, in report order after ours.
const PROCESS_PEERS: [&str; 3] = ["native", "unshare", "crun"];
/// Rounds of every peer's fleet, interleaved; each peer's median round is reported.
const ROUNDS: usize = 3;
/// Untimed instances of each peer before its timed fleet.
const WARMUP: usize = 4;
/// A pause between peers (the density run waits for a quiet host instead, see `hostmem`).
const SETTLE: Duration = Duration::from_millis(200);
/// The image whose instances park until released.
const IDLE: &str = "idle";
/// The targets (issue 5).
const RATE_TARGET_PER_CORE: f64 = 300.0;
const MEMORY_TARGET_KIB: f64 = 256.0;
const RESIDENT_TARGET: usize = 1000;
/// Ours' whole stdout.
const OURS_HELLO: &str = "Hello from a unikernel!\n";

/// Latency percentiles, µs.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

/// `vmm fleet`'s host memory figures, KiB.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Memory {
    /// `MemAvailable` before the fleet.
    pub mem_available_before_kib: u64,
    /// `MemAvailable` at the peak.
    pub mem_available_at_peak_kib: u64,
    /// `MemAvailable` after.
    pub mem_available_after_kib: u64,
    /// The VMM's RSS before.
    pub rss_before_kib: u64,
    /// Its RSS at the peak.
    pub rss_at_peak_kib: u64,
    /// Its VmHWM.
    pub rss_high_water_kib: u64,
    /// Its PSS at the peak.
    pub pss_at_peak_kib: u64,
}

/// One instance of `vmm fleet --json` (the parts the bench checks).
#[derive(Clone, Debug, Deserialize)]
pub struct Instance {
    /// Exit status.
    pub status: i32,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    #[serde(default)]
    pub stderr: String,
}

/// `vmm fleet --json`, the parts the bench reads.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct VmmFleet {
    /// Instances.
    pub count: usize,
    /// Worker threads.
    pub concurrency: usize,
    /// All held at once.
    pub resident: bool,
    /// First creation to last exit (or last parked).
    pub wall_s: f64,
    /// Instances per second.
    pub launch_rate: f64,
    /// Most alive at once.
    pub peak_concurrent: usize,
    /// Creation to exit (or parked), µs.
    pub latency_us: Latency,
    /// Instances by outcome (`exit 0`, ...).
    pub outcomes: BTreeMap<String, usize>,
    /// Host memory.
    pub memory: Memory,
    /// `MemAvailable` drop per instance, KiB.
    pub mem_available_per_vm_kib: f64,
    /// VMM RSS growth per instance, KiB.
    pub rss_per_vm_kib: f64,
    /// Every instance (not repeated in the bench's JSON).
    #[serde(default, skip_serializing)]
    pub instances: Vec<Instance>,
}

impl VmmFleet {
    /// Whether every instance exited 0.
    pub fn all_exit_0(&self) -> bool {
        self.outcomes.get("exit 0") == Some(&self.count) && self.instances.len() == self.count
    }
}

/// Runs `vmm fleet TARGET --count COUNT --concurrency 2 --json EXTRA...` and parses its report.
pub fn vmm_fleet(target: &Path, count: usize, extra: &[&str]) -> Result<VmmFleet> {
    let out = Command::new(vmm_path())
        .arg("fleet")
        .arg(target)
        .args(["--count", &count.to_string()])
        .args(["--concurrency", &CONCURRENCY.to_string(), "--json"])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .context("cannot start vmm fleet")?;
    if !out.status.success() {
        bail!(
            "vmm fleet {} failed ({}): {}",
            target.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("vmm fleet --json printed no report")
}

/// One peer's fleet.
#[derive(Serialize)]
pub struct Row {
    /// Short name.
    pub name: &'static str,
    /// What it is.
    pub what: String,
    /// What one instance runs (or the fleet command, for ours).
    pub command: String,
    /// `ok`, `failed` or `not installed`.
    pub status: &'static str,
    /// The install command, or why it failed.
    pub note: Option<String>,
    /// Instances launched.
    pub count: usize,
    /// First start to last exit, s.
    pub wall_s: f64,
    /// Instances per second.
    pub launch_rate: f64,
    /// Instances per second per core.
    pub launch_rate_per_core: f64,
    /// Start → exit, µs.
    pub latency_us: Option<Latency>,
    /// Memory per instance, KiB (see `memory_how`).
    pub memory_kib: Option<f64>,
    /// How `memory_kib` was measured.
    pub memory_how: String,
    /// The launch rate of every round (the row is the round with the median rate).
    pub rounds_launch_rate: Vec<f64>,
    /// Ours: the whole `vmm fleet` report.
    pub vmm_fleet: Option<VmmFleet>,
}

impl Row {
    fn missing(name: &'static str, status: &'static str, note: String) -> Row {
        Row {
            name,
            what: String::new(),
            command: String::new(),
            status,
            note: Some(note),
            count: 0,
            wall_s: 0.0,
            launch_rate: 0.0,
            launch_rate_per_core: 0.0,
            latency_us: None,
            memory_kib: None,
            memory_how: String::new(),
            rounds_launch_rate: Vec::new(),
            vmm_fleet: None,
        }
    }
}

/// Each peer's round with the median launch rate (or its first failed round), with every
/// round's rate; `rounds` holds the peers in the same order in every round.
fn median_rounds(rounds: Vec<Vec<Row>>) -> Vec<Row> {
    let mut per_peer: Vec<Vec<Row>> = Vec::new();
    for round in rounds {
        for (i, row) in round.into_iter().enumerate() {
            match per_peer.get_mut(i) {
                Some(rows) => rows.push(row),
                None => per_peer.push(vec![row]),
            }
        }
    }
    per_peer
        .into_iter()
        .filter_map(|mut rows| {
            if let Some(failed) = rows.iter().position(|r| r.status != "ok") {
                return Some(rows.swap_remove(failed));
            }
            let rates: Vec<f64> = rows.iter().map(|r| r.launch_rate).collect();
            rows.sort_by(|a, b| a.launch_rate.total_cmp(&b.launch_rate));
            let mut row = rows.swap_remove(rows.len().checked_sub(1)? / 2);
            row.rounds_launch_rate = rates;
            Some(row)
        })
        .collect()
}

/// The density run.
#[derive(Serialize)]
pub struct Density {
    /// Resident VMs asked for.
    pub asked: usize,
    /// Whether every one was alive at once and exited 0 when released.
    pub held: bool,
    /// The wait for the kernel to finish freeing earlier VMs.
    pub settled: hostmem::Settled,
    /// `/proc/meminfo` fields at the lowest `MemAvailable` of the run, grown per VM, KiB.
    pub meminfo_per_vm_kib: BTreeMap<String, f64>,
    /// `vmm fleet`'s report.
    pub fleet: VmmFleet,
}

/// A target and whether it was met (`None`: not measured).
#[derive(Serialize)]
pub struct Target {
    /// The target.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Met or not.
    pub met: Option<bool>,
}

/// The whole fleet report.
#[derive(Serialize)]
pub struct FleetBench {
    /// Where and when (load average at the end).
    pub machine: Machine,
    /// The load average at the start.
    pub loadavg_at_start: String,
    /// Instances per peer.
    pub count: usize,
    /// In flight at once.
    pub concurrency: usize,
    /// The peers, ours first.
    pub rows: Vec<Row>,
    /// The density run, or why it is missing.
    pub density: Option<Part<Density>>,
    /// The targets of issue 5.
    pub targets: Vec<Target>,
}

/// Runs the fleet bench with `count` instances per peer; `selected` filters [`NAMES`].
pub fn run(count: usize, quick: bool, selected: &dyn Fn(&str) -> bool) -> Result<ExitCode> {
    let dir = bench_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let loadavg_at_start = Machine::detect().loadavg;
    build_vmm()?;
    let images = guest::build(&["hello".to_owned(), IDLE.to_owned()])?;
    let (hello, idle) = (&images[0], &images[1]);

    let no_args: Vec<String> = Vec::new();
    let ours = peers::Ours {
        image: hello,
        args: &no_args,
        is_hello: true,
        expect_status: 0,
    };
    let only_processes = |n: &str| PROCESS_PEERS.contains(&n) && selected(n);
    let setups = peers::prepare(&dir, &ours, &only_processes);
    let probe = native::build_rss_probe(&dir);
    let mut rounds: Vec<Vec<Row>> = Vec::new();
    for _ in 0..ROUNDS {
        let mut round = Vec::new();
        if selected("ours") {
            round.push(ours_row(hello, count));
        }
        for setup in &setups {
            std::thread::sleep(SETTLE);
            round.push(match setup {
                Setup::Ready(peer) => process_row(peer, count, probe.as_ref().ok()),
                Setup::NotInstalled { name, install } => {
                    Row::missing(name, "not installed", install.clone())
                }
                Setup::Failed { name, reason } => Row::missing(name, "failed", reason.clone()),
            });
        }
        rounds.push(round);
    }
    let rows = median_rounds(rounds);
    drop(setups);
    let density = selected("density").then(|| {
        let asked = if quick {
            QUICK_DENSITY_COUNT
        } else {
            DENSITY_COUNT
        };
        Part::from_result(density(idle, asked).map_err(|e| format!("{e:#}")))
    });

    let targets = targets(&rows, density.as_ref());
    let bench = FleetBench {
        machine: Machine::detect(),
        loadavg_at_start,
        count,
        concurrency: CONCURRENCY,
        rows,
        density,
        targets,
    };
    bench.write(&dir)?;
    print!("{}", bench.markdown());
    println!("\nReport: {}", dir.join("fleet.md").display());
    let ours_failed = bench
        .rows
        .iter()
        .any(|r| r.name == "ours" && r.status != "ok");
    Ok(if ours_failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// Ours: `vmm fleet hello` after a small untimed warm-up fleet.
fn ours_row(hello: &Path, count: usize) -> Row {
    let measured = vmm_fleet(hello, WARMUP, &[])
        .and_then(|_| vmm_fleet(hello, count, &[]))
        .and_then(|fleet| {
            let bad = fleet
                .instances
                .iter()
                .find(|i| i.status != 0 || i.stdout != OURS_HELLO);
            match bad {
                Some(i) => bail!(
                    "an instance ended with status {}, stdout {:?}, stderr {:?}",
                    i.status,
                    i.stdout,
                    i.stderr
                ),
                None if !fleet.all_exit_0() => bail!("outcomes {:?}", fleet.outcomes),
                None => Ok(fleet),
            }
        });
    let fleet = match measured {
        Ok(fleet) => fleet,
        Err(err) => return Row::missing("ours", "failed", format!("{err:#}")),
    };
    let memory = &fleet.memory;
    let grown = memory
        .rss_high_water_kib
        .saturating_sub(memory.rss_before_kib);
    Row {
        name: "ours",
        what: format!("vmm fleet: {count} hello VMs in one VMM process"),
        command: format!(
            "{} fleet {} --count {count} --concurrency {CONCURRENCY} --json",
            vmm_path().display(),
            hello.display()
        ),
        status: "ok",
        note: None,
        count,
        wall_s: fleet.wall_s,
        launch_rate: fleet.launch_rate,
        launch_rate_per_core: fleet.launch_rate / cores(),
        latency_us: Some(fleet.latency_us),
        memory_kib: Some(grown as f64 / fleet.peak_concurrent.max(1) as f64),
        memory_how: format!(
            "growth of the VMM's peak RSS over VMs alive at once ({}); the VMM's own {} KiB \
             are shared by all",
            fleet.peak_concurrent, memory.rss_before_kib
        ),
        rounds_launch_rate: Vec::new(),
        vmm_fleet: Some(fleet),
    }
}

/// A process peer: `count` instances, [`CONCURRENCY`] at a time, each spawned and reaped by a
/// worker thread of the bench and verified; peak RSS of one instance under `rss-probe`.
fn process_row(peer: &Peer, count: usize, probe: Option<&std::path::PathBuf>) -> Row {
    let fail = |why: String| Row::missing(peer.name, "failed", why);
    if let Err(err) = process_fleet(peer, WARMUP, "warm") {
        return fail(format!("{err:#}"));
    }
    let (wall, latencies) = match process_fleet(peer, count, "fleet") {
        Ok(measured) => measured,
        Err(err) => return fail(format!("{err:#}")),
    };
    let mut sorted = latencies;
    sorted.sort_by(f64::total_cmp);
    let rss: Vec<f64> = probe
        .into_iter()
        .flat_map(|probe| {
            (0..super::RSS_PROBE_RUNS).filter_map(move |i| {
                let cmd = peer.command(&format!("rss{i}"));
                measure::probe_rss(probe, &cmd, &peer.output_file).ok()
            })
        })
        .map(|kib| kib as f64)
        .collect();
    let wall_s = wall.as_secs_f64();
    Row {
        name: peer.name,
        what: peer.what.clone(),
        command: peer.command_line(),
        status: "ok",
        note: None,
        count,
        wall_s,
        launch_rate: count as f64 / wall_s,
        launch_rate_per_core: count as f64 / wall_s / cores(),
        latency_us: Some(Latency {
            p50: percentile(&sorted, 50.0),
            p90: percentile(&sorted, 90.0),
            p99: percentile(&sorted, 99.0),
            max: *sorted.last().unwrap_or(&0.0),
        }),
        memory_kib: median(&rss),
        memory_how: "peak RSS of one instance's process tree (median of 3 under rss-probe)".into(),
        rounds_launch_rate: Vec::new(),
        vmm_fleet: None,
    }
}

/// Runs `count` instances of `peer`, [`CONCURRENCY`] at a time; returns the wall time from the
/// first spawn to the last reaping and each instance's start → exit latency, µs. Fails on the
/// first instance that fails verification.
fn process_fleet(peer: &Peer, count: usize, tag: &str) -> Result<(Duration, Vec<f64>)> {
    let next = AtomicUsize::new(0);
    let latencies = Mutex::new(Vec::with_capacity(count));
    let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let watchdogs: Vec<Watchdog> = (0..CONCURRENCY)
        .map(|_| Watchdog::start(measure::RUN_TIMEOUT))
        .collect();
    let start = Instant::now();
    std::thread::scope(|scope| {
        for (worker, watchdog) in watchdogs.iter().enumerate() {
            let (next, latencies, failure) = (&next, &latencies, &failure);
            scope.spawn(move || {
                let output = peer
                    .output_file
                    .with_extension(format!("{tag}{worker}.out"));
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count || failure.lock().is_ok_and(|f| f.is_some()) {
                        break;
                    }
                    let mut cmd = peer.command(&format!("{tag}{i}"));
                    match measure::run_once(&mut cmd, &output, watchdog)
                        .and_then(|s| peer.verify(&s).map(|()| s))
                    {
                        Ok(sample) => lock(latencies).push(sample.wall.as_secs_f64() * 1e6),
                        Err(err) => *lock(failure) = Some(err),
                    }
                }
            });
        }
    });
    let wall = start.elapsed();
    if let Some(err) = lock(&failure).take() {
        return Err(err.context(format!("{} instance failed", peer.name)));
    }
    Ok((wall, std::mem::take(&mut *lock(&latencies))))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `asked` resident `idle` VMs, once the host's memory is steady, with `/proc/meminfo`
/// sampled throughout.
fn density(idle: &Path, asked: usize) -> Result<Density> {
    let settled = hostmem::settle();
    let sampler = hostmem::Sampler::start();
    let fleet = vmm_fleet(idle, asked, &["--resident"]);
    let meminfo_per_vm_kib = sampler.per_vm(asked);
    let fleet = fleet?;
    Ok(Density {
        asked,
        held: fleet.peak_concurrent == asked && fleet.all_exit_0(),
        settled,
        meminfo_per_vm_kib,
        fleet,
    })
}

/// The targets of issue 5, judged on what was measured.
fn targets(rows: &[Row], density: Option<&Part<Density>>) -> Vec<Target> {
    let ours = rows.iter().find(|r| r.name == "ours" && r.status == "ok");
    let density = match density {
        Some(Part::Done(d)) => Some(d),
        _ => None,
    };
    let rate = Target {
        target: format!("≥ {RATE_TARGET_PER_CORE:.0} VMs/s per core"),
        measured: ours.map_or("not measured".into(), |r| {
            format!(
                "{:.0} VMs/s per core ({:.0}/s on {:.0} cores)",
                r.launch_rate_per_core,
                r.launch_rate,
                cores()
            )
        }),
        met: ours.map(|r| r.launch_rate_per_core >= RATE_TARGET_PER_CORE),
    };
    let memory = Target {
        target: format!("≤ {MEMORY_TARGET_KIB:.0} KiB host memory per resident VM"),
        measured: density.map_or("not measured".into(), |d| {
            format!(
                "{:.0} KiB from MemAvailable (kernel included), {:.0} KiB from the VMM's RSS, \
                 {} resident",
                d.fleet.mem_available_per_vm_kib, d.fleet.rss_per_vm_kib, d.asked
            )
        }),
        met: density.map(|d| d.fleet.mem_available_per_vm_kib <= MEMORY_TARGET_KIB),
    };
    let resident = Target {
        target: format!("{RESIDENT_TARGET} resident VMs on this machine"),
        measured: density.map_or("not measured".into(), |d| {
            format!(
                "{} of {} alive at once{}",
                d.fleet.peak_concurrent,
                d.asked,
                if d.held { ", all exited 0" } else { "" }
            )
        }),
        met: density
            .filter(|d| d.asked >= RESIDENT_TARGET)
            .map(|d| d.held),
    };
    vec![rate, memory, resident]
}

impl FleetBench {
    /// Writes fleet.json, fleet.md and fleet.svg into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
        };
        write("fleet.json", serde_json::to_string_pretty(self)? + "\n")?;
        write("fleet.md", self.markdown())?;
        let bars: Vec<svg::RateBar> = self
            .rows
            .iter()
            .filter(|r| r.status == "ok")
            .map(|r| svg::RateBar {
                label: r.name.to_owned(),
                rate: r.launch_rate,
                highlight: r.name == "ours",
            })
            .collect();
        let title = format!(
            "Launch rate, {} instances {} at a time (per second, higher is better)",
            self.count, self.concurrency
        );
        let cores = self.machine.cores;
        let target = RATE_TARGET_PER_CORE * cores as f64;
        let label = format!("target: {RATE_TARGET_PER_CORE:.0}/s per core × {cores}");
        write(
            "fleet.svg",
            svg::rate_chart(&title, &bars, Some((target, &label))),
        )
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut md = format!("# flick fleet bench, {}\n\n", m.date);
        let _ = writeln!(
            md,
            "Machine: Linux {}, {} ({} cores), /dev/kvm: {}; load average at the start {}, at \
             the end {}.\n",
            m.kernel, m.cpu, m.cores, m.kvm, self.loadavg_at_start, m.loadavg
        );
        let _ = writeln!(
            md,
            "{} instances per peer, {} in flight at once, after {WARMUP} untimed ones; {ROUNDS} \
             rounds of all peers interleaved, each peer's round with the median launch rate \
             shown (every round's rate is in fleet.json). Ours: one \
             `vmm fleet` process booting a VM per instance on {} worker threads; launch rate \
             and latency (creation → exit) as it reports them. The others: the bench spawns \
             and reaps each instance from {} threads; launch rate = instances / (first spawn → \
             last exit), latency = spawn → `wait4`. Every instance's output and status is \
             checked.\n",
            self.count, self.concurrency, self.concurrency, self.concurrency
        );
        md.push_str(
            "| peer | launch rate | per core | p50 | p90 | p99 | memory / instance | what |\n\
             |---|---:|---:|---:|---:|---:|---:|---|\n",
        );
        for row in &self.rows {
            md.push_str(&row_line(row));
        }
        let notes: Vec<String> = self
            .rows
            .iter()
            .filter(|r| r.status == "ok")
            .map(|r| format!("- {}: {}.", r.name, r.memory_how))
            .collect();
        if !notes.is_empty() {
            let _ = writeln!(md, "\nMemory / instance:\n{}", notes.join("\n"));
        }
        let rounds: Vec<String> = self
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
        md.push_str(&density_section(self.density.as_ref()));
        md.push_str("\n## Targets\n\n| target | measured | met |\n|---|---|---|\n");
        for t in &self.targets {
            let met = match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not measured",
            };
            let _ = writeln!(md, "| {} | {} | {met} |", t.target, t.measured);
        }
        md
    }
}

fn row_line(row: &Row) -> String {
    let name = if row.name == "ours" {
        "**ours**".to_owned()
    } else {
        row.name.to_owned()
    };
    let Some(l) = row.latency_us else {
        let note = row.note.as_deref().unwrap_or("").replace(['|', '\n'], " ");
        return format!("| {name} | {} | – | – | – | – | – | {note} |\n", row.status);
    };
    format!(
        "| {name} | {:.0}/s | {:.0}/s | {} | {} | {} | {} | {} |\n",
        row.launch_rate,
        row.launch_rate_per_core,
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        row.memory_kib.map_or("–".into(), kib),
        row.what.replace('|', "\\|")
    )
}

fn density_section(density: Option<&Part<Density>>) -> String {
    let mut md = String::from("\n## Density: resident VMs\n\n");
    match density {
        None => return String::new(),
        Some(Part::Missing { unavailable }) => {
            let _ = writeln!(md, "Failed: {}.", unavailable.replace('\n', " "));
        }
        Some(Part::Done(d)) => {
            let f = &d.fleet;
            let _ = writeln!(
                md,
                "`vmm fleet idle --count {} --resident`: every VM boots and parks, all are alive \
                 at once, then all are released. Run once the host's MemAvailable was steady \
                 (after {:.0} s{}; the kernel frees the memory of destroyed VMs lazily, for \
                 seconds).\n\n\
                 | resident VMs | held | MemAvailable / VM | RSS / VM | VMM PSS at peak | \
                 launch rate | p99 to parked |\n|---:|---|---:|---:|---:|---:|---:|\n\
                 | {} of {} | {} | {} | {} | {} | {:.0}/s | {} |\n\n\
                 MemAvailable / VM is the drop of the host's MemAvailable over the VMs (guest \
                 pages, page tables, KVM's structures: the kernel included); RSS / VM the \
                 growth of the VMM process's RSS.\n\n{}",
                d.asked,
                d.settled.waited_s,
                if d.settled.steady {
                    ""
                } else {
                    ", still moving"
                },
                f.peak_concurrent,
                d.asked,
                if d.held { "yes" } else { "**no**" },
                kib(f.mem_available_per_vm_kib),
                kib(f.rss_per_vm_kib),
                kib(f.memory.pss_at_peak_kib as f64),
                f.launch_rate,
                ms(f.latency_us.p99),
                meminfo_line(&d.meminfo_per_vm_kib)
            );
        }
    }
    md
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
        "Where it goes, per VM (`/proc/meminfo` sampled every few ms during the run, at its \
         lowest MemAvailable, minus before): {}.",
        parts.join(", ")
    )
}

fn ms(us: f64) -> String {
    match us / 1000.0 {
        x if x < 10.0 => format!("{x:.2} ms"),
        x if x < 100.0 => format!("{x:.1} ms"),
        x => format!("{x:.0} ms"),
    }
}

fn kib(kib: f64) -> String {
    if kib >= 10240.0 {
        format!("{:.1} MiB", kib / 1024.0)
    } else {
        format!("{kib:.0} KiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLEET_JSON: &str = r#"{"count":2,"concurrency":2,"resident":false,"wall_s":0.01,
        "launch_rate":200.0,"peak_concurrent":2,
        "memory":{"mem_available_before_kib":1000,"mem_available_at_peak_kib":900,
          "mem_available_after_kib":990,"rss_before_kib":2000,"rss_at_peak_kib":2100,
          "rss_high_water_kib":2200,"pss_at_peak_kib":2050},
        "instances":[{"group":"hello","index":0,"status":0,"kind":"exited","latency_us":1.0,
          "stdout":"Hello from a unikernel!\n","stderr":""},
          {"group":"hello","index":1,"status":0,"kind":"exited","latency_us":2.0,
          "stdout":"Hello from a unikernel!\n","stderr":""}],
        "latency_us":{"max":2.0,"p50":1.0,"p90":2.0,"p99":2.0},
        "outcomes":{"exit 0":2},"mem_available_per_vm_kib":50.0,"rss_per_vm_kib":50.0}"#;

    fn row(name: &'static str, per_core: f64) -> Row {
        let mut row = Row::missing(name, "ok", String::new());
        row.launch_rate_per_core = per_core;
        row
    }

    #[test]
    fn test_median_rounds_picks_each_peers_median_rate() {
        let rounds = [[100.0, 10.0], [300.0, 30.0], [200.0, 20.0]]
            .map(|rates| vec![row("ours", rates[0]), row("native", rates[1])])
            .map(|mut round| {
                for r in &mut round {
                    r.launch_rate = r.launch_rate_per_core;
                }
                round
            });
        let rows = median_rounds(rounds.into_iter().collect());
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].name, rows[0].launch_rate), ("ours", 200.0));
        assert_eq!(rows[1].launch_rate, 20.0);
        assert_eq!(rows[0].rounds_launch_rate, [100.0, 300.0, 200.0]);
    }

    #[test]
    fn test_median_rounds_reports_a_failed_round() {
        let failed = Row::missing("ours", "failed", "boom".into());
        let rows = median_rounds(vec![vec![row("ours", 1.0)], vec![failed]]);
        assert_eq!(rows[0].status, "failed");
    }

    #[test]
    fn test_vmm_fleet_json_parses_and_all_exit_0() {
        let fleet: VmmFleet = serde_json::from_str(FLEET_JSON).unwrap();
        assert_eq!(fleet.latency_us.p50, 1.0);
        assert_eq!(fleet.memory.pss_at_peak_kib, 2050);
        assert!(fleet.all_exit_0());
    }

    #[test]
    fn test_vmm_fleet_with_a_crash_is_not_all_exit_0() {
        let json = FLEET_JSON.replace(r#"{"exit 0":2}"#, r#"{"exit 0":1,"crashed":1}"#);
        let fleet: VmmFleet = serde_json::from_str(&json).unwrap();
        assert!(!fleet.all_exit_0());
    }

    #[test]
    fn test_targets_rate_met_only_at_300_per_core() {
        let met = |per_core| targets(&[row("ours", per_core)], None)[0].met;
        assert_eq!(met(300.0), Some(true));
        assert_eq!(met(299.0), Some(false));
    }

    #[test]
    fn test_targets_without_density_are_not_measured() {
        let t = targets(&[], None);
        assert!(t.iter().all(|t| t.met.is_none()));
    }

    #[test]
    fn test_targets_resident_needs_1000_asked() {
        let fleet: VmmFleet = serde_json::from_str(FLEET_JSON).unwrap();
        let density = Part::Done(Density {
            asked: 100,
            held: true,
            settled: hostmem::Settled {
                waited_s: 2.0,
                steady: true,
            },
            meminfo_per_vm_kib: BTreeMap::new(),
            fleet,
        });
        let t = targets(&[], Some(&density));
        assert_eq!(t[1].met, Some(true)); // 50 KiB per VM
        assert_eq!(t[2].met, None); // only 100 tried
    }
}
