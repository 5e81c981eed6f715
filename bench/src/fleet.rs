//! `--fleet N`: one N-way workload (N hellos, [`CONCURRENCY`] at a time) run by our `vmm fleet`
//! in one VMM process, and as native processes, namespace sandboxes and crun containers spawned
//! by the bench; launch rate and latency percentiles per peer. Then the memory of resident
//! instances, measured alike for every peer: the drop of the host's `MemAvailable` (kernel
//! included) while N instances are alive at once, per instance. Ours: `vmm fleet idle
//! --resident` (every VM parked); the others: N instances of the static `idle` program, each
//! alive until the bench closes its stdin.

use crate::contracts::{Latency, VmmFleet};
use crate::error::{Error, Result, chain};
use crate::measure::Part;
use crate::measure::hostmem::{self, Settled};
use crate::measure::machine::Machine;
use crate::measure::run::{self, Reap, Watchdog};
use crate::peers::native::{self, Payload};
use crate::peers::ours::{self, HELLO_LINE};
use crate::peers::peer::{Peer, Setup};
use crate::peers::{self, HELLO_PRINTS, IDLE_PRINTS};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Instances per peer by default.
pub(crate) const DEFAULT_COUNT: usize = 200;
/// Instances per peer with `--quick`.
pub(crate) const QUICK_COUNT: usize = 50;
/// Resident instances per peer in the memory run.
pub(crate) const RESIDENT_COUNT: usize = 1000;
/// Resident instances per peer with `--quick`.
pub(crate) const QUICK_RESIDENT_COUNT: usize = 100;
/// Instances in flight at once, for every peer.
pub(crate) const CONCURRENCY: usize = 2;
/// What `--only` accepts with `--fleet` (`density`: the resident-memory runs).
pub(crate) const NAMES: [&str; 6] = ["ours", "ours-fresh", "native", "unshare", "crun", "density"];
/// Rounds of every peer's fleet, interleaved; each peer's median round is reported.
pub(crate) const ROUNDS: usize = 3;
/// Untimed instances of each peer before its timed fleet.
pub(crate) const WARMUP: usize = 4;
/// A pause between peers (the resident runs wait for a quiet host instead, see `hostmem`).
const SETTLE: Duration = Duration::from_millis(200);
/// The image whose instances park until released.
pub(crate) const IDLE: &str = "idle";
/// How long a resident process instance may take to say "ready" once the bench waits for it.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One peer's fleet.
#[derive(Serialize)]
pub(crate) struct Row {
    /// Short name.
    pub(crate) name: &'static str,
    /// What it is.
    pub(crate) what: String,
    /// What one instance runs (or the fleet command, for ours).
    pub(crate) command: String,
    /// `ok`, `failed` or `not installed`.
    pub(crate) status: &'static str,
    /// The install command, or why it failed.
    pub(crate) note: Option<String>,
    /// Instances launched.
    pub(crate) count: usize,
    /// First start to last exit, s.
    pub(crate) wall_s: f64,
    /// Instances per second.
    pub(crate) launch_rate: f64,
    /// Instances per second per core.
    pub(crate) launch_rate_per_core: f64,
    /// Start → exit, µs (the bench's percentile method for every row).
    pub(crate) latency_us: Option<Latency>,
    /// The launch rate of every round (the row is the round with the median rate).
    pub(crate) rounds_launch_rate: Vec<f64>,
    /// The memory of resident instances (process peers; ours': [`FleetBench::density`]).
    pub(crate) resident: Option<Part<Resident>>,
    /// Ours: the whole `vmm fleet` report.
    pub(crate) vmm_fleet: Option<VmmFleet>,
}

impl Row {
    pub(crate) fn missing(name: &'static str, status: &'static str, note: String) -> Row {
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
            rounds_launch_rate: Vec::new(),
            resident: None,
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

/// One memory round of one peer: instances held alive at once, and what they cost the host.
#[derive(Serialize)]
pub(crate) struct ResidentRound {
    /// Whether every one was alive at once and exited 0 when released.
    pub(crate) held: bool,
    /// The wait for a steady `MemAvailable` before the round.
    pub(crate) settled: Settled,
    /// The drop of `MemAvailable` from right before the first instance to the moment all were
    /// alive, per instance, KiB (ours: as `vmm fleet` reads it, the same two moments).
    pub(crate) mem_available_kib: f64,
    /// `/proc/meminfo` fields at the peak minus before, per instance, KiB (`MemAvailable` as a
    /// drop, the others as growth); ours: at the lowest `MemAvailable` the bench sampled.
    pub(crate) meminfo_per_instance_kib: BTreeMap<String, f64>,
    /// Ours: `vmm fleet`'s report.
    pub(crate) fleet: Option<VmmFleet>,
}

/// A peer's memory rounds: the round with the median figure, and every round's figure.
#[derive(Serialize)]
pub(crate) struct Resident {
    /// Instances held at once in each round.
    pub(crate) asked: usize,
    /// Whether every round held them all.
    pub(crate) held: bool,
    /// Each round's `MemAvailable` drop per instance, KiB.
    pub(crate) rounds_kib: Vec<f64>,
    /// The round with the median figure.
    pub(crate) median_round: ResidentRound,
}

impl Resident {
    /// The median round's `MemAvailable` drop per instance, KiB.
    pub(crate) fn mem_available_kib(&self) -> f64 {
        self.median_round.mem_available_kib
    }

    /// The median of `rounds` (the first failure, if one failed).
    fn of(asked: usize, rounds: Vec<Result<ResidentRound>>) -> Result<Resident> {
        let mut rounds = rounds.into_iter().collect::<Result<Vec<_>>>()?;
        let held = rounds.iter().all(|r| r.held);
        let rounds_kib: Vec<f64> = rounds.iter().map(|r| r.mem_available_kib).collect();
        rounds.sort_by(|a, b| a.mem_available_kib.total_cmp(&b.mem_available_kib));
        let middle = rounds.len().checked_sub(1).map(|n| n / 2);
        let median_round = middle
            .map(|i| rounds.swap_remove(i))
            .ok_or_else(|| Error::Check("no memory rounds".to_owned()))?;
        Ok(Resident {
            asked,
            held,
            rounds_kib,
            median_round,
        })
    }
}

/// The whole fleet report.
#[derive(Serialize)]
pub(crate) struct FleetBench {
    /// Where and when (load average at the end).
    pub(crate) machine: Machine,
    /// The load average at the start.
    pub(crate) loadavg_at_start: String,
    /// Instances per peer.
    pub(crate) count: usize,
    /// In flight at once.
    pub(crate) concurrency: usize,
    /// Instances held at once per peer in the memory runs.
    pub(crate) resident: usize,
    /// The peers, ours first.
    pub(crate) rows: Vec<Row>,
    /// Ours' resident VMs (the density run), or why it is missing.
    pub(crate) density: Option<Part<Resident>>,
    /// The platform's part: as many minimal VMs held at once by the floor program (`floor
    /// --hold N`: the host kernel's and the hypervisor's memory per VM, and the floor guest's
    /// few pages), in the same rounds.
    pub(crate) platform: Option<Part<Resident>>,
}

/// What the fleet bench runs: the VMM, the `hello` and `idle` images, `count` instances per
/// peer, `resident` instances in the memory runs, in `dir`.
pub(crate) struct Plan<'a> {
    /// The VMM.
    pub(crate) vmm: &'a Path,
    /// The `hello` image.
    pub(crate) hello: &'a Path,
    /// The `idle` image.
    pub(crate) idle: &'a Path,
    /// Where scratch files go.
    pub(crate) dir: &'a Path,
    /// Instances per peer and round.
    pub(crate) count: usize,
    /// Instances held at once in the memory runs.
    pub(crate) resident: usize,
}

/// Runs the fleet bench; `selected` filters [`NAMES`].
pub(crate) fn run(plan: &Plan<'_>, selected: &dyn Fn(&str) -> bool) -> FleetBench {
    let loadavg_at_start = Machine::detect().loadavg;
    let dir = plan.dir;
    let hello = native::build_hello(dir);
    let hello = hello.as_deref().map(|path| Payload {
        path,
        name: "hello",
        prints: HELLO_PRINTS,
    });
    let setups = peers::prepare_processes(dir, hello, selected);
    let mut rounds: Vec<Vec<Row>> = Vec::new();
    for _ in 0..ROUNDS {
        let mut round = Vec::new();
        if selected("ours") {
            round.push(ours_row(plan, true));
        }
        if selected("ours-fresh") {
            std::thread::sleep(SETTLE);
            round.push(ours_row(plan, false));
        }
        for setup in &setups {
            std::thread::sleep(SETTLE);
            round.push(match setup {
                Setup::Ready(peer) => process_row(peer, plan.count),
                Setup::NotInstalled { name, install } => {
                    Row::missing(name, "not installed", install.clone())
                }
                Setup::Failed { name, reason } => Row::missing(name, "failed", reason.clone()),
            });
        }
        rounds.push(round);
    }
    let mut rows = median_rounds(rounds);
    drop(setups);
    let (density, platform) =
        match selected("density").then(|| memory_runs(plan, &mut rows, selected)) {
            Some((ours, platform)) => (Some(ours), Some(platform)),
            None => (None, None),
        };
    FleetBench {
        machine: Machine::detect(),
        loadavg_at_start,
        count: plan.count,
        concurrency: CONCURRENCY,
        resident: plan.resident,
        rows,
        density,
        platform,
    }
}

pub(crate) fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// Ours: `vmm fleet hello` after a small untimed warm-up fleet; `reuse`: as it runs by
/// default (a worker reuses the VM of an instance that exited cleanly), else `--no-reuse`
/// (row `ours-fresh`: a new VM per instance).
fn ours_row(plan: &Plan<'_>, reuse: bool) -> Row {
    let (vmm, hello, count) = (plan.vmm, plan.hello, plan.count);
    let (name, extra): (&'static str, &[&str]) = if reuse {
        ("ours", &[])
    } else {
        ("ours-fresh", &["--no-reuse"])
    };
    let measured = ours::vmm_fleet(vmm, hello, WARMUP, CONCURRENCY, extra)
        .and_then(|_| ours::vmm_fleet(vmm, hello, count, CONCURRENCY, extra))
        .and_then(|fleet| {
            let bad = fleet
                .instances
                .iter()
                .find(|i| i.status != 0 || i.stdout != HELLO_LINE);
            match bad {
                Some(i) => Err(Error::Check(format!(
                    "an instance ended with status {}, stdout {:?}, stderr {:?}",
                    i.status, i.stdout, i.stderr
                ))),
                None if !fleet.all_exit_0() => {
                    Err(Error::Check(format!("outcomes {:?}", fleet.outcomes)))
                }
                None => Ok(fleet),
            }
        });
    let fleet = match measured {
        Ok(fleet) => fleet,
        Err(err) => return Row::missing(name, "failed", chain(&err)),
    };
    let flags = extra.iter().map(|f| format!(" {f}")).collect::<String>();
    Row {
        name,
        what: format!(
            "vmm fleet: {count} hello instances in one VMM process, {} of them in a reused VM",
            fleet.reused_vms
        ),
        command: format!(
            "{} fleet {} --count {count} --concurrency {CONCURRENCY} --json{flags}",
            vmm.display(),
            hello.display()
        ),
        status: "ok",
        note: None,
        count,
        wall_s: fleet.wall_s,
        launch_rate: fleet.launch_rate,
        launch_rate_per_core: fleet.launch_rate / cores(),
        latency_us: fleet.latency(),
        rounds_launch_rate: Vec::new(),
        resident: None,
        vmm_fleet: Some(fleet),
    }
}

/// A process peer: `count` instances, [`CONCURRENCY`] at a time, each spawned and reaped by a
/// worker thread of the bench and verified.
fn process_row(peer: &Peer, count: usize) -> Row {
    let fail = |err: Error| Row::missing(peer.name, "failed", chain(&err));
    if let Err(err) = process_fleet(peer, WARMUP, "warm") {
        return fail(err);
    }
    let (wall, latencies) = match process_fleet(peer, count, "fleet") {
        Ok(measured) => measured,
        Err(err) => return fail(err),
    };
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
        latency_us: Latency::of(&latencies),
        rounds_launch_rate: Vec::new(),
        resident: None,
        vmm_fleet: None,
    }
}

/// Runs `count` instances of `peer`, [`CONCURRENCY`] at a time; returns the wall time from the
/// first spawn to the last reaping and each instance's start → exit latency, µs. Fails on the
/// first instance that fails verification.
fn process_fleet(peer: &Peer, count: usize, tag: &str) -> Result<(Duration, Vec<f64>)> {
    let next = AtomicUsize::new(0);
    let latencies = Mutex::new(Vec::with_capacity(count));
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let watchdogs: Vec<Watchdog> = (0..CONCURRENCY)
        .map(|_| Watchdog::start(run::RUN_TIMEOUT))
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
                    if i >= count || lock(failure).is_some() {
                        break;
                    }
                    let mut cmd = peer.command(&format!("{tag}{i}"));
                    match run::run_once(&mut cmd, &output, watchdog, Reap::Child)
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
        return Err(err);
    }
    Ok((wall, std::mem::take(&mut *lock(&latencies))))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Rounds of the memory runs, interleaved across peers; each peer's median round is reported.
pub(crate) const MEMORY_ROUNDS: usize = 3;

/// The memory runs: [`MEMORY_ROUNDS`] rounds of ours (`vmm fleet idle --resident`), of the
/// floor's minimal VMs (`floor --hold N`) and of every process row that ran (N `idle`
/// processes), each round once the host's memory is steady. Returns ours and the floor's; the
/// process rows get theirs.
fn memory_runs(
    plan: &Plan<'_>,
    rows: &mut [Row],
    selected: &dyn Fn(&str) -> bool,
) -> (Part<Resident>, Part<Resident>) {
    let floor = crate::peers::floor::build(plan.dir);
    let idle = native::build_idle(plan.dir);
    let idle = idle.as_deref().map(|path| Payload {
        path,
        name: "idle",
        prints: IDLE_PRINTS,
    });
    let ran = |name: &str| rows.iter().any(|r| r.name == name && r.status == "ok");
    let setups = peers::prepare_processes(plan.dir, idle, &|n| selected(n) && ran(n));
    let mut ours = Vec::new();
    let mut theirs: Vec<Vec<Result<ResidentRound>>> = setups.iter().map(|_| Vec::new()).collect();
    let mut platform = Vec::new();
    for _ in 0..MEMORY_ROUNDS {
        ours.push(density_round(plan));
        platform.push(match &floor {
            Ok(program) => floor_round(program, plan.resident),
            Err(err) => Err(Error::Check(chain(err))),
        });
        for (setup, rounds) in setups.iter().zip(&mut theirs) {
            rounds.push(match setup {
                Setup::Ready(peer) => resident_round(plan.dir, peer, plan.resident),
                Setup::NotInstalled { install, .. } => {
                    Err(Error::Check(format!("not installed: {install}")))
                }
                Setup::Failed { reason, .. } => Err(Error::Check(reason.clone())),
            });
        }
    }
    for (setup, rounds) in setups.iter().zip(theirs) {
        if let Some(row) = rows.iter_mut().find(|r| r.name == setup.name()) {
            row.resident = Some(Part::from_result(Resident::of(plan.resident, rounds)));
        }
    }
    (
        Part::from_result(Resident::of(plan.resident, ours)),
        Part::from_result(Resident::of(plan.resident, platform)),
    )
}

/// One round of the floor holding `count` minimal VMs, once the host's memory is steady.
fn floor_round(program: &Path, count: usize) -> Result<ResidentRound> {
    let settled = hostmem::settle();
    let sampler = hostmem::Sampler::start();
    let held = crate::peers::floor::hold(program, count);
    let meminfo_per_instance_kib = sampler.per_vm(count);
    let held = held?;
    Ok(ResidentRound {
        held: held.held == count,
        settled,
        mem_available_kib: held.mem_available_per_vm_kib,
        meminfo_per_instance_kib,
        fleet: None,
    })
}

/// One round of ours' resident VMs: `vmm fleet idle --resident`, once the host's memory is
/// steady, with `/proc/meminfo` sampled throughout for where the memory went.
fn density_round(plan: &Plan<'_>) -> Result<ResidentRound> {
    let settled = hostmem::settle();
    let sampler = hostmem::Sampler::start();
    let fleet = ours::vmm_fleet(
        plan.vmm,
        plan.idle,
        plan.resident,
        CONCURRENCY,
        &["--resident"],
    );
    let meminfo_per_instance_kib = sampler.per_vm(plan.resident);
    let fleet = fleet?;
    Ok(ResidentRound {
        held: fleet.peak_concurrent == plan.resident && fleet.all_exit_0(),
        settled,
        mem_available_kib: fleet.mem_available_per_vm_kib,
        meminfo_per_instance_kib,
        fleet: Some(fleet),
    })
}

/// One round of `count` instances of `peer` alive at once, once the host's memory is steady.
fn resident_round(dir: &Path, peer: &Peer, count: usize) -> Result<ResidentRound> {
    let settled = hostmem::settle();
    let (held, meminfo_per_instance_kib) = hold_resident(dir, peer, count)?;
    let mem_available_kib = meminfo_per_instance_kib
        .get("MemAvailable")
        .copied()
        .ok_or_else(|| Error::Check("/proc/meminfo has no MemAvailable".to_owned()))?;
    Ok(ResidentRound {
        held,
        settled,
        mem_available_kib,
        meminfo_per_instance_kib,
        fleet: None,
    })
}

/// Instances of `peer` (running `idle`) that the bench keeps alive and releases.
struct Instances {
    children: Vec<Child>,
}

impl Drop for Instances {
    fn drop(&mut self) {
        for child in &mut self.children {
            if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill(2) takes no pointers; the group leader is our unreaped child.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
            let _ = child.wait();
        }
    }
}

/// `count` instances of `peer` alive at once (all started, then each waited for until it says
/// what it prints, so that the window in which the rest of the host can move `MemAvailable`
/// stays short), then released by closing their stdin; returns whether all exited 0 and the
/// `/proc/meminfo` fields per instance from right before the first to the moment all were
/// alive.
fn hold_resident(dir: &Path, peer: &Peer, count: usize) -> Result<(bool, BTreeMap<String, f64>)> {
    let outputs = dir.join("resident");
    std::fs::create_dir_all(&outputs)
        .map_err(Error::io(format!("cannot create {}", outputs.display())))?;
    let before = hostmem::meminfo();
    let mut instances = Instances {
        children: Vec::with_capacity(count),
    };
    let output = |i: usize| outputs.join(format!("{}-{i}.out", peer.name));
    for i in 0..count {
        instances
            .children
            .push(start_resident(peer, &output(i), i)?);
    }
    for (i, child) in instances.children.iter_mut().enumerate() {
        wait_until_ready(child, &output(i), peer)?;
    }
    let meminfo_per_instance_kib = hostmem::per_instance(&before, &hostmem::meminfo(), count);
    for child in &mut instances.children {
        drop(child.stdin.take()); // end of stdin: the instance exits
    }
    let mut held = true;
    for (i, mut child) in std::mem::take(&mut instances.children)
        .into_iter()
        .enumerate()
    {
        let status = child.wait().map_err(Error::io(format!(
            "cannot wait for {} instance {i}",
            peer.name
        )))?;
        held &= status.success();
    }
    Ok((held, meminfo_per_instance_kib))
}

fn start_resident(peer: &Peer, output: &Path, i: usize) -> Result<Child> {
    let out =
        File::create(output).map_err(Error::io(format!("cannot create {}", output.display())))?;
    let err = out
        .try_clone()
        .map_err(Error::io("cannot duplicate the output file"))?;
    peer.command(&format!("resident{i}"))
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(Error::io(format!(
            "cannot start {} instance {i}",
            peer.name
        )))
}

/// Waits until `output` holds what `peer` prints once it runs ([`READY_TIMEOUT`] at most).
fn wait_until_ready(child: &mut Child, output: &Path, peer: &Peer) -> Result<()> {
    let expected = peer.expect_output.as_deref().unwrap_or("");
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(output).unwrap_or_default();
        if text.contains(expected) {
            return Ok(());
        }
        let exited = child
            .try_wait()
            .map_err(Error::io(format!("cannot wait for {}", peer.name)))?;
        if let Some(status) = exited {
            return Err(Error::Check(format!(
                "a resident instance exited ({status}): {}",
                text.trim()
            )));
        }
        if start.elapsed() > READY_TIMEOUT {
            return Err(Error::TimedOut(READY_TIMEOUT));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &'static str, rate: f64) -> Row {
        let mut row = Row::missing(name, "ok", String::new());
        row.launch_rate = rate;
        row
    }

    #[test]
    fn test_median_rounds_picks_each_peers_median_rate() {
        let rounds = [[100.0, 10.0], [300.0, 30.0], [200.0, 20.0]]
            .map(|rates| vec![row("ours", rates[0]), row("native", rates[1])]);
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

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("flick-bench-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn sh_peer(dir: &Path, script: &str) -> Peer {
        let args = vec!["-c".to_owned(), script.to_owned()];
        Peer::new(
            dir,
            "native",
            String::new(),
            "/bin/sh".into(),
            args,
            "ready",
        )
    }

    #[test]
    fn test_hold_resident_holds_all_then_releases_them() {
        let dir = scratch("resident");
        let peer = sh_peer(&dir, "echo ready; cat >/dev/null");
        let (held, per_instance) = hold_resident(&dir, &peer, 3).unwrap();
        assert!(held);
        assert!(per_instance.contains_key("MemAvailable"));
    }

    fn round(kib: f64) -> Result<ResidentRound> {
        Ok(ResidentRound {
            held: true,
            settled: Settled {
                waited_s: 2.0,
                steady: true,
                last_move_kib: 0,
            },
            mem_available_kib: kib,
            meminfo_per_instance_kib: BTreeMap::new(),
            fleet: None,
        })
    }

    #[test]
    fn test_resident_of_rounds_reports_the_median_round() {
        let resident = Resident::of(10, vec![round(0.0), round(300.0), round(120.0)]).unwrap();
        assert_eq!(resident.mem_available_kib(), 120.0);
        assert_eq!(resident.rounds_kib, [0.0, 300.0, 120.0]);
    }

    #[test]
    fn test_resident_of_a_failed_round_fails() {
        let failed = Err(Error::Check("boom".to_owned()));
        assert!(Resident::of(10, vec![round(1.0), failed]).is_err());
    }

    #[test]
    fn test_hold_resident_instance_that_dies_early_fails() {
        let dir = scratch("resident-dies");
        let peer = sh_peer(&dir, "exit 3");
        let err = hold_resident(&dir, &peer, 2).unwrap_err();
        assert!(err.to_string().contains("exited"), "{err}");
    }
}
