//! The fleet's threads, all sandboxed: creators make each instance's VM ahead through the
//! launcher (or from a warm VM of its group: one whose instance exited cleanly, returned to a
//! fresh VM's state by its worker), `concurrency` workers take the ready VMs and run them,
//! collecting each result or (with `--resident`) keeping the VM parked, and reapers destroy
//! the finished VMs that are not reused; a second
//! round of workers and reapers then releases every parked instance to its end.
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
use crate::vm::recycle::Recycler;
use crate::vm::{self, Console, DeadlineService, Progress, Vm, VmConfig, VmError, VmShell};
use std::collections::BTreeMap;
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
    create: Duration,
    stdout: Captured,
    stderr: Captured,
}

enum Boot {
    Parked(Box<Running>),
    /// The result, and the VM to destroy.
    Done(InstanceResult, Option<Box<Vm>>),
}

/// Threads that destroy finished VMs. Closing a VM waits for SRCU grace periods in the host
/// kernel (0.3-2.5 ms here, asleep nearly all of it); on reaper threads those waits overlap
/// one another and the workers' boots instead of holding a worker.
const REAPERS: usize = 2;
/// Workers per creator thread. Creating a VM here takes about as long as running a small
/// guest, but creators share the cores with the workers: one creator for two workers measured
/// the same launch rate as one each, with half the launch latency's tail.
const WORKERS_PER_CREATOR: usize = 2;
/// The niceness of creators and reapers: a worker about to launch a guest preempts them, so
/// that preparing the next VMs and destroying the last ones do not hold up a launch.
const BACKGROUND_NICE: i32 = 5;
/// Finished VMs waiting for a reaper, at most: a worker that finds the queue full waits, so
/// that a slow teardown bounds memory instead of letting dead VMs pile up.
const REAP_QUEUE: usize = 64;

/// The shared state of one round of workers.
struct Shared<'a> {
    spec: &'a FleetSpec,
    prepared: &'a [Prepared],
    kvm: &'a Arc<kvm_ioctls::Kvm>,
    deadlines: &'a DeadlineService,
    cores: &'a CoreKeeper,
    grants: &'a Grants,
    live: AtomicUsize,
    peak: AtomicUsize,
    results: Mutex<Vec<InstanceResult>>,
    parked: Mutex<Vec<Running>>,
    /// Per group: what reusing its VMs needs (`None`: every instance gets a new VM).
    recyclers: Vec<Option<Recycler>>,
    /// Instances that ran in a reused VM.
    reused: AtomicUsize,
    /// Per group: VMs in a fresh VM's state waiting for a creator to give them the group's
    /// next job (at most [`Shared::warm_limit`] each; the last ones are destroyed with the
    /// fleet), each with whether an instance ran in it before (the group's first, made for its
    /// recycler, never ran: an instance in it does not count as reused).
    warm: Mutex<Vec<Vec<WarmVm>>>,
    /// Per group and reason: VMs whose reuse was refused (they were destroyed).
    refusals: Mutex<BTreeMap<(usize, String), usize>>,
    /// The first thread that could not confine itself: the fleet fails with it.
    confine_failure: Mutex<Option<sandbox::SandboxError>>,
}

/// A VM in a fresh VM's state for its group's next job, and whether an instance ran in it.
type WarmVm = (VmShell, bool);

impl Shared<'_> {
    /// VMs kept warm per group: as many as can be in flight (running, and ready or being made
    /// ahead).
    fn warm_limit(&self) -> usize {
        self.spec.concurrency.saturating_mul(2).saturating_add(1)
    }

    /// Whether `group` has room for another warm VM (checked before a VM is reset for it).
    fn wants_warm(&self, group: usize) -> bool {
        lock(&self.warm)[group].len() < self.warm_limit()
    }

    /// Keeps `shell`, a VM of `group` returned to a fresh VM's state, for the group's next job
    /// (destroys it if enough are kept meanwhile).
    fn keep_warm(&self, group: usize, shell: VmShell) {
        let surplus = {
            let mut warm = lock(&self.warm);
            if warm[group].len() < self.warm_limit() {
                warm[group].push((shell, true));
                None
            } else {
                Some(shell)
            }
        };
        drop(surplus);
    }
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
    let mut not_reused = Vec::new();
    let (recyclers, warm): (Vec<Option<Recycler>>, Vec<Vec<WarmVm>>) = prepared
        .iter()
        .map(
            |p| match (spec.reuse && !spec.resident).then(|| recycler_for(&kvm, p)) {
                Some(Ok(Some((recycler, shell)))) => (Some(recycler), vec![(shell, false)]),
                Some(Err(err)) => {
                    not_reused.push(format!("{}: {}", p.group.name, crate::error_chain(&err)));
                    (None, Vec::new())
                }
                _ => (None, Vec::new()),
            },
        )
        .unzip();
    // What the workers' sandbox allows: what any group's guests use, the taps, and reuse.
    let grants = prepared.iter().fold(
        Grants {
            taps,
            reuse: recyclers.iter().any(Option::is_some),
            ..Grants::default()
        },
        |grants, p| grants.union(&p.group.vm.devices.grants()),
    );
    let deadlines = DeadlineService::start(spec.seccomp).map_err(VmError::from)?;
    let cores = CoreKeeper {
        wanted: spec.cores.is_some(),
        pending: Mutex::new(Vec::new()),
    };
    let shared = Shared {
        spec,
        prepared,
        kvm: &kvm,
        deadlines: &deadlines,
        cores: &cores,
        grants: &grants,
        live: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
        results: Mutex::new(Vec::with_capacity(total)),
        parked: Mutex::new(Vec::new()),
        recyclers,
        reused: AtomicUsize::new(0),
        warm: Mutex::new(warm),
        refusals: Mutex::new(BTreeMap::new()),
        confine_failure: Mutex::new(None),
    };
    let keeper = KeyKeeper::hold(&kvm);
    let started = Instant::now();
    let cpu_before = hostmem::own_cpu_s();
    launch_all(&shared, jobs)?;
    if let Some(failure) = lock(&shared.confine_failure).take() {
        // Its share of the instances never ran: no report would be whole.
        return Err(VmError::from(failure).into());
    }
    let wall = started.elapsed();
    let cpu_s = hostmem::own_cpu_s() - cpu_before;
    memory.mem_available_at_peak_kib = hostmem::mem_available_kib();
    memory.rss_at_peak_kib = hostmem::own_kib("VmRSS");
    memory.pss_at_peak_kib = hostmem::own_pss_kib();
    let parked = std::mem::take(&mut *lock(&shared.parked));
    let never_parked = if spec.resident {
        never_parked(prepared, &parked)
    } else {
        Vec::new()
    };
    release(parked, &shared)?;
    drop(keeper);
    // The warm VMs go before the "after" figure, which must not count them.
    drop(std::mem::take(&mut *lock(&shared.warm)));
    memory.mem_available_after_kib = hostmem::mem_available_kib();
    memory.rss_high_water_kib = hostmem::own_kib("VmHWM");
    let mut instances = std::mem::take(&mut *lock(&shared.results));
    let peak_concurrent = shared.peak.load(Ordering::SeqCst);
    let reused_vms = shared.reused.load(Ordering::SeqCst);
    let refused_reuse = std::mem::take(&mut *lock(&shared.refusals))
        .into_iter()
        .map(|((group, why), count)| format!("{}: {count} VMs: {why}", prepared[group].group.name))
        .collect();
    drop(shared);
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
        cpu_s,
        peak_concurrent,
        reused_vms,
        memory,
        instances,
        never_parked,
        not_reused,
        refused_reuse,
    })
}

/// What reusing the VMs of group `p` needs, and the fresh VM it was read from (the group's
/// first warm VM); `None` if the group has one instance (nothing to reuse for); an error if it
/// cannot be had (its instances then get a new VM each).
fn recycler_for(
    kvm: &Arc<kvm_ioctls::Kvm>,
    p: &Prepared,
) -> Result<Option<(Recycler, VmShell)>, crate::launch::LaunchError> {
    if p.group.count < 2 {
        return Ok(None);
    }
    crate::launch::recycler(kvm, &p.target, &p.group.vm, false).map(Some)
}

/// One VM and vCPU kept alive for the fleet's whole run, never run. Creating the first VM or
/// vCPU (and destroying the last) flips static keys in the host kernel, which patches kernel
/// text and interrupts every CPU; with this one alive the count never returns to zero between
/// instances. Without it (it could not be created) the fleet runs all the same.
struct KeyKeeper {
    _vcpu: kvm_ioctls::VcpuFd,
    _vm: kvm_ioctls::VmFd,
}

impl KeyKeeper {
    fn hold(kvm: &kvm_ioctls::Kvm) -> Option<KeyKeeper> {
        let vm = kvm.create_vm().ok()?;
        let vcpu = vm.create_vcpu(0).ok()?;
        Some(KeyKeeper {
            _vcpu: vcpu,
            _vm: vm,
        })
    }
}

/// A VM created ahead for its job, and how long creating it took.
struct Built {
    job: Job,
    vm: Result<Vm, crate::launch::LaunchError>,
    create: Duration,
}

/// Boots every job in three stages on sandboxed threads: creators make each job's VM ahead
/// (a warm VM of its group given the job's boot info and registers, or a new one: RAM, image,
/// VM, vCPU, registers, `launch::build_with`) into a queue as deep as the workers are many;
/// workers take a ready VM, run it to its end (or until it parks, with `--resident`), keep
/// its result, and return its VM to a fresh VM's state for the warm VMs of its group (or, when
/// that is refused or not wanted, hand it to the reapers, which destroy it). Returns when every VM has been run and
/// every finished one destroyed.
fn launch_all(shared: &Shared<'_>, jobs: Vec<Job>) -> Result<(), FleetError> {
    let workers = shared.spec.concurrency.min(jobs.len()).max(1);
    let queue = Mutex::new(jobs.into_iter());
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Built>(workers);
    let ready_rx = Arc::new(Mutex::new(ready_rx));
    std::thread::scope(|scope| {
        let reap = start_reapers(scope, shared);
        let mut started_workers = 0;
        let mut last_error = None;
        for i in 0..workers {
            let (ready_rx, reap) = (Arc::clone(&ready_rx), reap.clone());
            let spawned = spawn_confined(scope, format!("fleet-{i}"), false, shared, move || {
                while let Some(built) = receive(&ready_rx) {
                    // Running from here until the guest ends (a parked one stays counted).
                    let count = shared.live.fetch_add(1, Ordering::SeqCst) + 1;
                    shared.peak.fetch_max(count, Ordering::SeqCst);
                    let group = built.job.group;
                    let (result, vm) = match start(shared, built) {
                        Boot::Parked(running) => {
                            lock(&shared.parked).push(*running);
                            continue;
                        }
                        Boot::Done(result, vm) => (result, vm),
                    };
                    shared.live.fetch_sub(1, Ordering::SeqCst);
                    lock(&shared.results).push(result);
                    let Some(vm) = vm else { continue };
                    // Returned to a fresh VM's state, for a creator to give its group's next job.
                    match &shared.recyclers[group] {
                        Some(recycler) if shared.wants_warm(group) => match vm.recycle(recycler) {
                            Ok((shell, _)) => shared.keep_warm(group, shell),
                            Err(refusal) => {
                                *lock(&shared.refusals)
                                    .entry((group, refusal.why.to_string()))
                                    .or_default() += 1;
                                reap_later(&reap, refusal.vm);
                            }
                        },
                        _ => reap_later(&reap, *vm),
                    }
                }
            });
            match spawned {
                Ok(()) => started_workers += 1,
                Err(err) => last_error = Some(err),
            }
        }
        drop((ready_rx, reap));
        let mut started_creators = 0;
        if started_workers > 0 {
            for i in 0..workers.div_ceil(WORKERS_PER_CREATOR) {
                let ready_tx = ready_tx.clone();
                let queue = &queue;
                let spawned =
                    spawn_confined(scope, format!("create-{i}"), true, shared, move || {
                        // The queue's lock is taken for `next` alone.
                        while let Some(job) = next(queue) {
                            if ready_tx.send(create(shared, job)).is_err() {
                                break;
                            }
                        }
                    });
                match spawned {
                    Ok(()) => started_creators += 1,
                    Err(err) => last_error = Some(err),
                }
            }
        }
        drop(ready_tx);
        match (started_workers.min(started_creators), last_error) {
            (0, Some(err)) => Err(FleetError::Spawn(err)),
            _ => Ok(()),
        }
    })
}

/// The next VM from the creators, or `None` once they are all done.
fn receive<T>(queue: &Mutex<std::sync::mpsc::Receiver<T>>) -> Option<T> {
    lock(queue).recv().ok()
}

/// Starts up to [`REAPERS`] threads that destroy the VMs sent to the returned queue, until
/// every sender is gone. Without any (none could be started), whoever holds a VM destroys it.
fn start_reapers<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    shared: &'scope Shared<'_>,
) -> Option<std::sync::mpsc::SyncSender<Vm>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vm>(REAP_QUEUE);
    let rx = Arc::new(Mutex::new(rx));
    let mut started = 0;
    for i in 0..REAPERS {
        let rx = Arc::clone(&rx);
        let spawned = spawn_confined(scope, format!("reap-{i}"), true, shared, move || {
            while let Some(vm) = receive(&rx) {
                drop(vm);
            }
        });
        started += usize::from(spawned.is_ok());
    }
    (started > 0).then_some(tx)
}

/// Hands `vm` to a reaper (destroys it here if there is none).
fn reap_later(reap: &Option<std::sync::mpsc::SyncSender<Vm>>, vm: Vm) {
    match reap {
        Some(reap) => {
            // A failed send hands the VM back, which is then dropped here.
            let _ = reap.send(vm);
        }
        None => drop(vm),
    }
}

/// Spawns `work` on a thread of `scope` named `name`, sandboxed with the fleet workers'
/// filter (it creates, runs and destroys VMs) when the fleet is; a `background` thread (a
/// creator or a reaper) runs at [`BACKGROUND_NICE`].
fn spawn_confined<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    name: String,
    background: bool,
    shared: &'scope Shared<'_>,
    work: impl FnOnce() + Send + 'scope,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name)
        .spawn_scoped(scope, move || {
            if background {
                // SAFETY: setpriority on the calling thread (who = 0) takes no pointers. A
                // failure leaves the thread at normal priority, which only costs latency.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, BACKGROUND_NICE) };
            }
            if shared.spec.seccomp
                && let Err(failure) =
                    sandbox::confine_this_thread_as(&Profile::FleetWorker(shared.grants.clone()))
            {
                lock(&shared.confine_failure).get_or_insert(failure);
                return;
            }
            work();
        })
        .map(drop)
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
        let group = &prepared[job.group].group;
        // Named as the template that failed numbers it, so that the message points at the tap
        // and address the user can work out.
        let (instance, which) = match (&group.net, &spec.net) {
            (Some(own), _) => (
                own.for_instance(job.index),
                format!("[[vm]] {} instance {}", group.name, job.index),
            ),
            (None, Some(fleet_wide)) => (fleet_wide.for_instance(n), format!("instance {n}")),
            (None, None) => continue,
        };
        let net = instance
            .and_then(|spec| spec.open())
            .map_err(|source| FleetError::Net {
                instance: which,
                source,
            })?;
        fds.push(net.tap.raw_fd());
        job.net = Some(net);
    }
    Ok(fds)
}

fn group_order(prepared: &[Prepared], name: &str) -> usize {
    prepared
        .iter()
        .position(|p| p.group.name == name)
        .unwrap_or(usize::MAX)
}

/// Resumes every parked instance to its end, on the same number of workers, with reapers
/// destroying the finished ones.
fn release(parked: Vec<Running>, shared: &Shared<'_>) -> Result<(), FleetError> {
    if parked.is_empty() {
        return Ok(());
    }
    let workers = shared.spec.concurrency.min(parked.len());
    let queue = Mutex::new(parked.into_iter());
    std::thread::scope(|scope| {
        let reap = start_reapers(scope, shared);
        let mut started = 0;
        let mut last_error = None;
        for i in 0..workers {
            let (queue, reap) = (&queue, reap.clone());
            let spawned = spawn_confined(scope, format!("fleet-{i}"), false, shared, move || {
                while let Some(mut running) = next(queue) {
                    let timeout = shared.prepared[running.job.group]
                        .group
                        .vm
                        .timeout
                        .unwrap_or(RELEASE_TIMEOUT);
                    // SAFETY: pthread_self has no preconditions.
                    let me = unsafe { libc::pthread_self() };
                    running.vm.arm_watchdog(shared.deadlines.watch(timeout, me));
                    let progress = finish(&mut running.vm);
                    let result = result_of(shared.prepared, &running, progress, shared.cores);
                    lock(&shared.results).push(result);
                    reap_later(&reap, running.vm);
                }
            });
            match spawned {
                Ok(()) => started += 1,
                Err(err) => last_error = Some(err),
            }
        }
        drop(reap);
        match (started, last_error) {
            (0, Some(err)) => Err(FleetError::Spawn(err)),
            _ => Ok(()),
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

/// Makes `job`'s VM: a VM of its group that an earlier instance left, returned to a fresh VM's
/// state, given the job's boot info and registers; else a new one (RAM with the image or
/// snapshot in it, VM, vCPU, registers).
fn create(shared: &Shared<'_>, job: Job) -> Built {
    let p = &shared.prepared[job.group];
    let started = Instant::now();
    let config = job_config(p, &job);
    let warm = lock(&shared.warm)[job.group].pop();
    if let Some((shell, ran_before)) = warm {
        let vm = crate::launch::finish(shell, &p.target, &config, Timeline::default());
        if vm.is_ok() && ran_before {
            shared.reused.fetch_add(1, Ordering::SeqCst);
        }
        return Built {
            job,
            vm,
            create: started.elapsed(),
        };
    }
    let reusable = shared.recyclers[job.group].is_some();
    let vm = crate::launch::build_with(
        shared.kvm,
        &p.target,
        &config,
        Timeline::default(),
        reusable,
    );
    Built {
        job,
        vm,
        create: started.elapsed(),
    }
}

/// The VM settings of `job`: its group's, with its own network device.
fn job_config<'a>(p: &'a Prepared, job: &Job) -> std::borrow::Cow<'a, VmConfig> {
    match &job.net {
        Some(net) => {
            let mut config = p.group.vm.clone();
            config.devices.net = Some(net.clone());
            std::borrow::Cow::Owned(config)
        }
        None => std::borrow::Cow::Borrowed(&p.group.vm),
    }
}

/// Runs a created VM until it ends, or until it parks with `--resident`.
fn start(shared: &Shared<'_>, built: Built) -> Boot {
    let Built { job, vm, create } = built;
    let p = &shared.prepared[job.group];
    let started = Instant::now();
    let mut vm = match vm {
        Ok(vm) => vm,
        Err(err) => {
            return Boot::Done(
                InstanceResult {
                    group: p.group.name.clone(),
                    index: job.index,
                    status: abi::exit_status::VMM_ERROR,
                    kind: "vmm error".into(),
                    latency_us: 0.0,
                    create_us: create.as_secs_f64() * 1e6,
                    stdout: String::new(),
                    stderr: format!("error: {}", crate::error_chain(&err)),
                },
                None,
            );
        }
    };
    let (stdout, stderr) = (Captured::default(), Captured::default());
    let console = Console {
        stdout: Box::new(stdout.clone()),
        stderr: Box::new(stderr.clone()),
    };
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    let watchdog = p.group.vm.timeout.map(|t| shared.deadlines.watch(t, me));
    let mut progress = vm.start(console, watchdog);
    let parked = matches!(progress, Ok(Progress::Parked));
    let resident = shared.spec.resident;
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
        create,
        stdout,
        stderr,
    };
    if parked && resident {
        Boot::Parked(Box::new(running))
    } else {
        let result = result_of(shared.prepared, &running, progress, shared.cores);
        Boot::Done(result, Some(Box::new(running.vm)))
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
        create_us: running.create.as_secs_f64() * 1e6,
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
