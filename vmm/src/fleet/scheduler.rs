//! The fleet's worker pool: `concurrency` sandboxed threads take instances off one queue,
//! boot each through the launcher, and either collect its result or (with `--resident`) keep
//! it parked; a second round of workers then releases every parked instance to its end.
//!
//! Every instance runs under its group's timeout, also after its release (timed anew from the
//! release; without a timeout, [`RELEASE_TIMEOUT`]), so that no guest can hang the fleet.

use super::hostmem;
use super::report::{FleetReport, InstanceResult, KEPT_OUTPUT, MemoryFigures};
use super::{FleetError, FleetSpec, Prepared};
use crate::memory::GuestRam;
use crate::report::crash::CrashState;
use crate::report::{Outcome, Timeline};
use crate::sandbox::{self, Grants, Profile};
use crate::vm::{self, Console, DeadlineService, Progress, Vm, VmError};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Times a released guest may park again before it counts as crashed.
pub const MAX_PARKS: usize = 1000;
/// How long a released guest may run when its group has no timeout.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most core files one fleet writes (`--cores`): the first crashes' (each keeps its guest's RAM
/// until the fleet ends).
pub const MAX_CORES: usize = 16;

/// A crashed instance whose core file is written when the fleet ends (the workers are
/// sandboxed and cannot create files).
struct PendingCore {
    group: usize,
    index: usize,
    ram: GuestRam,
    crash: Box<CrashState>,
}

/// The crashes kept for `--cores`.
struct CoreKeeper {
    wanted: bool,
    pending: Mutex<Vec<PendingCore>>,
}

impl CoreKeeper {
    /// Keeps `vm`'s RAM and crash state if cores are wanted and there is room.
    fn keep(&self, job: &Job, vm: &Vm, crash: Option<Box<CrashState>>) {
        let Some(crash) = crash.filter(|_| self.wanted) else {
            return;
        };
        let mut pending = lock(&self.pending);
        if pending.len() < MAX_CORES {
            pending.push(PendingCore {
                group: job.group,
                index: job.index,
                ram: vm.ram().clone(),
                crash,
            });
        }
    }
}

/// A job: one instance to boot.
struct Job {
    group: usize,
    index: usize,
    /// Its network device, attached before any instance boots.
    net: Option<crate::net::NetConfig>,
}

/// A `Write` whose bytes a fleet keeps (bounded) after the instance ends.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut kept = lock(&self.0);
        let room = KEPT_OUTPUT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..buf.len().min(room)]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.0)).into_owned()
    }
}

/// The next item of a shared queue, with its lock held only while taking it.
fn next<I: Iterator>(queue: &Mutex<I>) -> Option<I::Item> {
    lock(queue).next()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

struct Running {
    vm: Vm,
    job: Job,
    latency: Duration,
    stdout: Captured,
    stderr: Captured,
}

enum Boot {
    Parked(Box<Running>),
    Done(InstanceResult),
}

/// Runs the prepared fleet of `total` instances.
pub(super) fn run(
    spec: &FleetSpec,
    prepared: &[Prepared],
    total: usize,
) -> Result<FleetReport, FleetError> {
    raise_fd_limit(total);
    let kvm = vm::open_kvm()?;
    let mut memory = MemoryFigures {
        mem_available_before_kib: hostmem::mem_available_kib(),
        rss_before_kib: hostmem::own_kib("VmRSS"),
        ..Default::default()
    };
    // Interleave the groups so that a mix runs side by side.
    let mut jobs = Vec::with_capacity(total);
    let longest = prepared.iter().map(|p| p.group.count).max().unwrap_or(0);
    for index in 0..longest {
        for (group, p) in prepared.iter().enumerate() {
            if index < p.group.count {
                jobs.push(Job {
                    group,
                    index,
                    net: None,
                });
            }
        }
    }
    let taps = attach_taps(spec, prepared, &mut jobs)?;
    // What the workers' sandbox allows: what any group's guests use, and the taps.
    let grants = prepared.iter().fold(
        Grants {
            taps,
            ..Grants::default()
        },
        |grants, p| grants.union(&p.group.vm.devices.grants()),
    );
    let queue = Mutex::new(jobs.into_iter());
    let live = AtomicUsize::new(0);
    let peak = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(total));
    let parked = Mutex::new(Vec::new());
    let deadlines = DeadlineService::start(spec.seccomp).map_err(VmError::from)?;
    let cores = CoreKeeper {
        wanted: spec.cores.is_some(),
        pending: Mutex::new(Vec::new()),
    };
    let started = Instant::now();
    let workers = spec.concurrency.min(total);
    in_workers(workers, spec.seccomp, &grants, || {
        // The queue's lock is taken for `next` alone (a `while let` would hold it for the
        // whole body, one boot at a time).
        while let Some(job) = next(&queue) {
            let count = live.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(count, Ordering::SeqCst);
            match boot(&kvm, prepared, job, &deadlines, spec.resident, &cores) {
                Boot::Parked(running) => lock(&parked).push(*running),
                Boot::Done(result) => {
                    live.fetch_sub(1, Ordering::SeqCst);
                    lock(&results).push(result);
                }
            }
        }
    })?;
    let wall = started.elapsed();
    memory.mem_available_at_peak_kib = hostmem::mem_available_kib();
    memory.rss_at_peak_kib = hostmem::own_kib("VmRSS");
    memory.pss_at_peak_kib = hostmem::own_pss_kib();
    let parked = parked.into_inner().unwrap_or_else(|e| e.into_inner());
    let never_parked = if spec.resident {
        never_parked(prepared, &parked)
    } else {
        Vec::new()
    };
    release(
        parked, spec, prepared, &deadlines, &results, &grants, &cores,
    )?;
    memory.mem_available_after_kib = hostmem::mem_available_kib();
    memory.rss_high_water_kib = hostmem::own_kib("VmHWM");
    let mut instances = results.into_inner().unwrap_or_else(|e| e.into_inner());
    instances.sort_by_key(|i| (group_order(prepared, &i.group), i.index));
    if let Some(dir) = &spec.cores {
        write_cores(dir, prepared, cores, &mut instances);
    }
    Ok(FleetReport {
        count: total,
        concurrency: spec.concurrency,
        resident: spec.resident,
        wall_s: wall.as_secs_f64(),
        launch_rate: total as f64 / wall.as_secs_f64().max(1e-9),
        peak_concurrent: peak.load(Ordering::SeqCst),
        memory,
        instances,
        never_parked,
    })
}

/// The groups none of whose instances parked (with `--resident`: their image does not park,
/// so they ran to their end one after another instead of being held at once).
fn never_parked(prepared: &[Prepared], parked: &[Running]) -> Vec<String> {
    prepared
        .iter()
        .enumerate()
        .filter(|(group, _)| !parked.iter().any(|r| r.job.group == *group))
        .map(|(_, p)| p.group.name.clone())
        .collect()
}

/// Writes the kept cores to `dir` as `GROUP.INDEX.core` and says so in each instance's report.
fn write_cores(
    dir: &std::path::Path,
    prepared: &[Prepared],
    cores: CoreKeeper,
    instances: &mut [InstanceResult],
) {
    let pending = cores
        .pending
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    for core in pending {
        let group = &prepared[core.group].group.name;
        let path = dir.join(format!("{group}.{}.core", core.index));
        let name = prepared[core.group].target.name();
        let note = match crate::report::core_dump::write(&path, &core.ram, &core.crash, name) {
            Ok(summary) => format!(
                "  core dumped to {} ({} guest pages, {} bytes)\n",
                path.display(),
                summary.pages,
                summary.file_size
            ),
            Err(err) => format!("  no core file: {}\n", crate::error_chain(&err)),
        };
        if let Some(instance) = instances
            .iter_mut()
            .find(|i| &i.group == group && i.index == core.index)
        {
            instance.stderr.push_str(&note);
        }
    }
}

/// Gives every job its network device, in job order: its group's `net` (numbered within the
/// group) or else the fleet's `--net` (numbered across the fleet); the taps' fds, which the
/// workers' sandbox lets them read and write.
fn attach_taps(
    spec: &FleetSpec,
    prepared: &[Prepared],
    jobs: &mut [Job],
) -> Result<Vec<i32>, FleetError> {
    let mut fds = Vec::new();
    for (n, job) in jobs.iter_mut().enumerate() {
        let instance = match (&prepared[job.group].group.net, &spec.net) {
            (Some(own), _) => own.for_instance(job.index),
            (None, Some(fleet_wide)) => fleet_wide.for_instance(n),
            (None, None) => continue,
        };
        let net = instance
            .and_then(|spec| spec.open())
            .map_err(|source| FleetError::Net { index: n, source })?;
        fds.push(net.tap.raw_fd());
        job.net = Some(net);
    }
    Ok(fds)
}

/// Runs `work` on `count` worker threads sandboxed with `grants` and waits for them. Threads that cannot be started are fewer workers, not a crash; not
/// even one is an error.
fn in_workers(
    count: usize,
    seccomp: bool,
    grants: &Grants,
    work: impl Fn() + Sync,
) -> Result<(), FleetError> {
    std::thread::scope(|scope| {
        let mut started = 0;
        let mut last_error = None;
        for i in 0..count {
            let spawned = std::thread::Builder::new()
                .name(format!("fleet-{i}"))
                .spawn_scoped(scope, || {
                    if seccomp
                        && sandbox::confine_this_thread_as(&Profile::FleetWorker(grants.clone()))
                            .is_err()
                    {
                        return;
                    }
                    work();
                });
            match spawned {
                Ok(_) => started += 1,
                Err(err) => last_error = Some(err),
            }
        }
        match (started, last_error) {
            (0, Some(err)) => Err(FleetError::Spawn(err)),
            _ => Ok(()),
        }
    })
}

fn group_order(prepared: &[Prepared], name: &str) -> usize {
    prepared
        .iter()
        .position(|p| p.group.name == name)
        .unwrap_or(usize::MAX)
}

/// Resumes every parked instance to its end, on the same number of workers.
fn release(
    parked: Vec<Running>,
    spec: &FleetSpec,
    prepared: &[Prepared],
    deadlines: &DeadlineService,
    results: &Mutex<Vec<InstanceResult>>,
    grants: &Grants,
    cores: &CoreKeeper,
) -> Result<(), FleetError> {
    if parked.is_empty() {
        return Ok(());
    }
    let workers = spec.concurrency.min(parked.len());
    let queue = Mutex::new(parked.into_iter());
    in_workers(workers, spec.seccomp, grants, || {
        while let Some(mut running) = next(&queue) {
            let timeout = prepared[running.job.group]
                .group
                .vm
                .timeout
                .unwrap_or(RELEASE_TIMEOUT);
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() };
            running.vm.arm_watchdog(deadlines.watch(timeout, me));
            let progress = finish(&mut running.vm);
            let result = result_of(prepared, &running, progress, cores);
            lock(results).push(result);
        }
    })
}

/// Resumes until the guest stops (a guest that parks again is released again, up to
/// [`MAX_PARKS`] times).
fn finish(vm: &mut Vm) -> Result<Progress, VmError> {
    for _ in 0..MAX_PARKS {
        match vm.resume()? {
            Progress::Parked => continue,
            done => return Ok(done),
        }
    }
    Ok(Progress::Parked)
}

fn boot(
    kvm: &Arc<kvm_ioctls::Kvm>,
    prepared: &[Prepared],
    job: Job,
    deadlines: &DeadlineService,
    resident: bool,
    cores: &CoreKeeper,
) -> Boot {
    let p = &prepared[job.group];
    let started = Instant::now();
    let (stdout, stderr) = (Captured::default(), Captured::default());
    let config = match &job.net {
        Some(net) => {
            let mut config = p.group.vm.clone();
            config.devices.net = Some(net.clone());
            std::borrow::Cow::Owned(config)
        }
        None => std::borrow::Cow::Borrowed(&p.group.vm),
    };
    let mut vm = match crate::launch::build(kvm, &p.target, &config, Timeline::default()) {
        Ok(vm) => vm,
        Err(err) => {
            return Boot::Done(InstanceResult {
                group: p.group.name.clone(),
                index: job.index,
                status: abi::exit_status::VMM_ERROR,
                kind: "vmm error".into(),
                latency_us: started.elapsed().as_secs_f64() * 1e6,
                stdout: String::new(),
                stderr: format!("error: {}", crate::error_chain(&err)),
            });
        }
    };
    let console = Console {
        stdout: Box::new(stdout.clone()),
        stderr: Box::new(stderr.clone()),
    };
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    let watchdog = p.group.vm.timeout.map(|t| deadlines.watch(t, me));
    let mut progress = vm.start(console, watchdog);
    let parked = matches!(progress, Ok(Progress::Parked));
    if parked && resident {
        // The guest may be resumed on another thread: its timeout is armed anew there.
        vm.disarm_watchdog();
    } else if parked {
        progress = finish(&mut vm);
    }
    let running = Running {
        vm,
        job,
        latency: started.elapsed(),
        stdout,
        stderr,
    };
    if parked && resident {
        Boot::Parked(Box::new(running))
    } else {
        Boot::Done(result_of(prepared, &running, progress, cores))
    }
}

fn result_of(
    prepared: &[Prepared],
    running: &Running,
    progress: Result<Progress, VmError>,
    cores: &CoreKeeper,
) -> InstanceResult {
    let mut stderr = running.stderr.text();
    let (status, kind) = match progress {
        Ok(Progress::Finished(mut report)) => {
            cores.keep(&running.job, &running.vm, report.crash.take());
            let status = report.outcome.exit_status();
            match &report.outcome {
                Outcome::Exited(_) => (status, "exited"),
                Outcome::TimedOut(_) => (status, "timed out"),
                Outcome::BrokenPipe => (status, "broken pipe"),
                Outcome::Killed => (status, "killed"),
                Outcome::Crashed(text) => {
                    stderr.push_str(text);
                    (status, "crashed")
                }
            }
        }
        Ok(Progress::Parked) => {
            stderr.push_str(&format!(
                "guest stopped: it parked again {MAX_PARKS} times after its release\n"
            ));
            (abi::exit_status::CRASH, "crashed")
        }
        Ok(Progress::AtSnapshotPoint) => (abi::exit_status::VMM_ERROR, "vmm error"),
        Err(err) => {
            stderr.push_str(&format!("error: {}", crate::error_chain(&err)));
            (abi::exit_status::VMM_ERROR, "vmm error")
        }
    };
    InstanceResult {
        group: prepared[running.job.group].group.name.clone(),
        index: running.job.index,
        status,
        kind: kind.to_owned(),
        latency_us: running.latency.as_secs_f64() * 1e6,
        stdout: running.stdout.text(),
        stderr,
    }
}

/// Each VM holds two file descriptors (three with a tap): lift the soft limit as far as the
/// hard one allows.
fn raise_fd_limit(instances: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            let wanted = (instances as u64 * 3 + 64).min(limit.rlim_max);
            if wanted > limit.rlim_cur {
                limit.rlim_cur = wanted;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}
