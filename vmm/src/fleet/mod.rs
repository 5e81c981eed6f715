//! `vmm fleet`: many microVMs from one VMM process, each its own VM with its own memory and
//! vCPU, booted C at a time on a pool of worker threads; with `--resident`, all kept alive at
//! once to measure density.
//!
//! Instances share nothing but the read-only image and the open `/dev/kvm`: each has its own
//! guest RAM, vCPU, console buffers and exit status. Worker threads are sandboxed with the
//! [`Profile::FleetWorker`] seccomp filter (the run loop's, plus the ioctls that create a VM).

use crate::exit::Console;
use crate::image::{Image, ImageError};
use crate::sandbox::{self, Profile};
use crate::size::{parse_duration, parse_size};
use crate::snapshot::Snapshot;
use crate::timeline::Timeline;
use crate::vm::{self, Outcome, Progress, Vm, VmConfig, VmError};
use crate::watchdog::DeadlineService;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Errors before any instance runs.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// An image is unusable.
    #[error("{path}")]
    Image {
        /// Which image.
        path: PathBuf,
        /// Why.
        #[source]
        source: ImageError,
    },
    /// The manifest is unreadable or invalid.
    #[error("manifest {path}: {why}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// `/dev/kvm` could not be opened.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A flag is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// One kind of instance: an image with its arguments and limits, `count` times.
#[derive(Debug, Clone)]
pub struct Group {
    /// A short name for reports (the image's file name by default).
    pub name: String,
    /// The image.
    pub image: PathBuf,
    /// How many instances.
    pub count: usize,
    /// Arguments after the image name.
    pub args: Vec<String>,
    /// Environment, `KEY=VALUE` each.
    pub env: Vec<String>,
    /// Guest RAM per instance.
    pub mem_size: u64,
    /// Per-instance timeout.
    pub timeout: Option<Duration>,
    /// Console bytes allowed per instance.
    pub max_output: u64,
}

/// A whole fleet.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// The kinds of instance, run interleaved.
    pub groups: Vec<Group>,
    /// Worker threads.
    pub concurrency: usize,
    /// Keep every instance alive at once (the guests park in [`abi::port::WAIT`]).
    pub resident: bool,
    /// Sandbox the workers.
    pub seccomp: bool,
}

/// Console bytes kept per instance and stream for the report.
pub const KEPT_OUTPUT: usize = 64 * 1024;

/// What one instance did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceResult {
    /// Its group's name.
    pub group: String,
    /// Its index in the group.
    pub index: usize,
    /// The status `vmm run` would exit with.
    pub status: i32,
    /// `exited`, `crashed`, `timed out` or `vmm error`.
    pub kind: &'static str,
    /// Start (creation) to exit, or to parking with `--resident`, in µs.
    pub latency_us: f64,
    /// Its stdout (up to [`KEPT_OUTPUT`] bytes, lossy UTF-8).
    pub stdout: String,
    /// Its stderr, then the VMM's report about it.
    pub stderr: String,
}

/// Host memory figures in KiB.
#[derive(Debug, Clone, Default, serde::Serialize)]
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
#[derive(Debug, Clone, serde::Serialize)]
pub struct FleetReport {
    /// Instances in all.
    pub count: usize,
    /// Worker threads.
    pub concurrency: usize,
    /// Whether all were held resident.
    pub resident: bool,
    /// From the first creation to the last start (resident) or exit.
    pub wall_s: f64,
    /// Instances per second over `wall_s`.
    pub launch_rate: f64,
    /// Most instances that existed at once.
    pub peak_concurrent: usize,
    /// Host memory.
    pub memory: MemoryFigures,
    /// Every instance, in group order.
    pub instances: Vec<InstanceResult>,
}

impl FleetReport {
    /// Latency percentile `p` (0..=100) in µs.
    pub fn latency_percentile(&self, p: f64) -> f64 {
        let mut all: Vec<f64> = self.instances.iter().map(|i| i.latency_us).collect();
        all.sort_by(f64::total_cmp);
        percentile(&all, p)
    }

    /// Instance counts by outcome (`exit 0`, `crashed`, ...).
    pub fn outcomes(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for i in &self.instances {
            let key = match i.kind {
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// A job: one instance to boot.
struct Job {
    group: usize,
    index: usize,
}

struct Prepared {
    group: Group,
    image: Arc<Image>,
    /// Set when the group's "image" is a snapshot: instances are restored from it.
    snapshot: Option<Arc<Snapshot>>,
    config: VmConfig,
}

/// A `Write` whose bytes a fleet keeps (bounded) after the instance ends.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
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
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

struct Running {
    group: String,
    vm: Vm,
    job: Job,
    latency: Duration,
    stdout: Captured,
    stderr: Captured,
}

/// Runs the fleet.
pub fn run_fleet(spec: &FleetSpec) -> Result<FleetReport, FleetError> {
    if spec.concurrency == 0 {
        return Err(FleetError::Invalid(
            "--concurrency must be at least 1".into(),
        ));
    }
    let prepared = prepare(spec)?;
    let total: usize = prepared.iter().map(|p| p.group.count).sum();
    raise_fd_limit(total);
    let kvm = vm::open_kvm()?;
    let mut memory = MemoryFigures {
        mem_available_before_kib: mem_available_kib(),
        rss_before_kib: rss_kib("VmRSS"),
        ..Default::default()
    };
    // Interleave the groups so that a mix runs side by side.
    let mut jobs = Vec::with_capacity(total);
    let longest = prepared.iter().map(|p| p.group.count).max().unwrap_or(0);
    for index in 0..longest {
        for (group, p) in prepared.iter().enumerate() {
            if index < p.group.count {
                jobs.push(Job { group, index });
            }
        }
    }
    let queue = Mutex::new(jobs.into_iter());
    let live = AtomicUsize::new(0);
    let peak = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(total));
    let parked = Mutex::new(Vec::new());
    let deadlines = DeadlineService::start(spec.seccomp);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..spec.concurrency.min(total.max(1)) {
            scope.spawn(|| {
                if spec.seccomp {
                    let _ = sandbox::confine_this_thread_as(Profile::FleetWorker);
                }
                loop {
                    let job = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                    let Some(job) = job else { break };
                    let count = live.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(count, Ordering::SeqCst);
                    match boot(&kvm, &prepared[job.group], job, &deadlines, spec.resident) {
                        Boot::Parked(running) => parked
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(*running),
                        Boot::Done(result) => {
                            live.fetch_sub(1, Ordering::SeqCst);
                            results
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(result);
                        }
                    }
                }
            });
        }
    });
    let wall = started.elapsed();
    memory.mem_available_at_peak_kib = mem_available_kib();
    memory.rss_at_peak_kib = rss_kib("VmRSS");
    memory.pss_at_peak_kib =
        std::fs::read_to_string("/proc/self/smaps_rollup").map_or(0, |t| meminfo_field(&t, "Pss:"));
    let mut parked = parked.into_inner().unwrap_or_else(|e| e.into_inner());
    release(&mut parked, spec, &results);
    memory.mem_available_after_kib = mem_available_kib();
    memory.rss_high_water_kib = rss_kib("VmHWM");
    let mut instances = results.into_inner().unwrap_or_else(|e| e.into_inner());
    instances.sort_by(|a, b| {
        (group_order(&prepared, &a.group), a.index)
            .cmp(&(group_order(&prepared, &b.group), b.index))
    });
    Ok(FleetReport {
        count: total,
        concurrency: spec.concurrency,
        resident: spec.resident,
        wall_s: wall.as_secs_f64(),
        launch_rate: total as f64 / wall.as_secs_f64().max(1e-9),
        peak_concurrent: peak.load(Ordering::SeqCst),
        memory,
        instances,
    })
}

fn group_order(prepared: &[Prepared], name: &str) -> usize {
    prepared
        .iter()
        .position(|p| p.group.name == name)
        .unwrap_or(usize::MAX)
}

/// Resumes every parked instance to its end, on the same number of workers.
fn release(parked: &mut Vec<Running>, spec: &FleetSpec, results: &Mutex<Vec<InstanceResult>>) {
    let queue = Mutex::new(std::mem::take(parked).into_iter());
    std::thread::scope(|scope| {
        for _ in 0..spec.concurrency {
            scope.spawn(|| {
                if spec.seccomp {
                    let _ = sandbox::confine_this_thread_as(Profile::FleetWorker);
                }
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                    let Some(mut running) = next else { break };
                    let latency = running.latency;
                    let progress = finish(&mut running.vm);
                    let result = result_of(&running, progress, latency);
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(result);
                }
            });
        }
    });
}

/// Resumes until the guest stops (a guest that parks again is released again).
///
/// A released guest that parks again is released again, up to [`MAX_PARKS`] times: a guest
/// that parks forever must not hang the fleet (its timeout no longer runs once released).
fn finish(vm: &mut Vm) -> Result<Progress, VmError> {
    for _ in 0..MAX_PARKS {
        match vm.resume()? {
            Progress::Parked => continue,
            done => return Ok(done),
        }
    }
    Ok(Progress::Parked)
}

/// Times a guest may park again after its release before it counts as crashed.
pub const MAX_PARKS: usize = 1000;

enum Boot {
    Parked(Box<Running>),
    Done(InstanceResult),
}

fn boot(
    kvm: &Arc<kvm_ioctls::Kvm>,
    p: &Prepared,
    job: Job,
    deadlines: &DeadlineService,
    resident: bool,
) -> Boot {
    let started = Instant::now();
    let (stdout, stderr) = (Captured::default(), Captured::default());
    let error = |job: Job, err: String| {
        Boot::Done(InstanceResult {
            group: p.group.name.clone(),
            index: job.index,
            status: abi::exit_status::VMM_ERROR,
            kind: "vmm error",
            latency_us: started.elapsed().as_secs_f64() * 1e6,
            stdout: String::new(),
            stderr: format!("error: {err}"),
        })
    };
    let created = match &p.snapshot {
        Some(snapshot) => restore(kvm, snapshot, &p.image, &p.config),
        None => Vm::new_with(
            Arc::clone(kvm),
            Arc::clone(&p.image),
            &p.config,
            Timeline::default(),
        )
        .map_err(|e| crate::error_chain(&e)),
    };
    let mut vm = match created {
        Ok(vm) => vm,
        Err(err) => return error(job, err),
    };
    let console = Console {
        stdout: Box::new(stdout.clone()),
        stderr: Box::new(stderr.clone()),
    };
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    let watchdog = p.group.timeout.map(|t| deadlines.watch(t, me));
    let mut progress = vm.start(console, watchdog);
    let parked = matches!(progress, Ok(Progress::Parked));
    if parked && resident {
        // The guest may be resumed on another thread: its timeout ends here.
        vm.disarm_watchdog();
    } else if parked {
        progress = finish(&mut vm);
    }
    let latency = started.elapsed();
    let running = Running {
        group: p.group.name.clone(),
        vm,
        job,
        latency,
        stdout,
        stderr,
    };
    if parked && resident {
        Boot::Parked(Box::new(running))
    } else {
        Boot::Done(result_of(&running, progress, latency))
    }
}

/// A VM restored from `snapshot`: its pages mapped copy-on-write, shared with every other
/// instance restored from it.
fn restore(
    kvm: &Arc<kvm_ioctls::Kvm>,
    snapshot: &Snapshot,
    layout: &Arc<Image>,
    config: &VmConfig,
) -> Result<Vm, String> {
    let ram =
        crate::memory::GuestRam::new(snapshot.mem_size).map_err(|e| crate::error_chain(&e))?;
    snapshot
        .map_into(&ram)
        .map_err(|e| crate::error_chain(&e))?;
    let mut timeline = Timeline::default();
    let shell = vm::VmShell::create_with(Arc::clone(kvm), ram, &mut timeline)
        .map_err(|e| crate::error_chain(&e))?;
    Vm::from_snapshot(shell, snapshot, Arc::clone(layout), config, timeline)
        .map_err(|e| crate::error_chain(&e))
}

fn result_of(
    running: &Running,
    progress: Result<Progress, VmError>,
    latency: Duration,
) -> InstanceResult {
    let group = running.group.clone();
    let mut stderr = running.stderr.text();
    let (status, kind) = match progress {
        Ok(Progress::Finished(report)) => {
            let status = report.outcome.exit_status();
            match &report.outcome {
                Outcome::Exited(_) => (status, "exited"),
                Outcome::TimedOut(_) => (status, "timed out"),
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
        group,
        index: running.job.index,
        status,
        kind,
        latency_us: latency.as_secs_f64() * 1e6,
        stdout: running.stdout.text(),
        stderr,
    }
}

/// The VM configuration of each instance of `group`.
fn instance_config(group: &Group, spec: &FleetSpec, mem_size: u64) -> VmConfig {
    VmConfig {
        mem_size,
        timeout: group.timeout,
        args: std::iter::once(group.name.clone())
            .chain(group.args.iter().cloned())
            .collect(),
        env: group.env.clone(),
        seccomp: spec.seccomp,
        debug_blocked_syscall: false,
        max_output: group.max_output,
        snapshot: false,
    }
}

fn prepare(spec: &FleetSpec) -> Result<Vec<Prepared>, FleetError> {
    let mut images: BTreeMap<PathBuf, Arc<Image>> = BTreeMap::new();
    let mut prepared = Vec::new();
    for group in &spec.groups {
        if Snapshot::peek_mem_size(&group.image).is_ok() {
            let snapshot = Snapshot::open(&group.image).map_err(|e| {
                FleetError::Invalid(format!(
                    "{}: {}",
                    group.image.display(),
                    crate::error_chain(&e)
                ))
            })?;
            let config = instance_config(group, spec, snapshot.mem_size);
            let image = Arc::new(snapshot.layout());
            prepared.push(Prepared {
                group: group.clone(),
                image,
                snapshot: Some(Arc::new(snapshot)),
                config,
            });
            continue;
        }
        crate::check_mem_size(group.mem_size).map_err(|e| FleetError::Invalid(e.to_string()))?;
        let image = match images.get(&group.image) {
            Some(image) => Arc::clone(image),
            None => {
                let image = Image::from_file(&group.image).map_err(|source| FleetError::Image {
                    path: group.image.clone(),
                    source,
                })?;
                let image = Arc::new(image);
                images.insert(group.image.clone(), Arc::clone(&image));
                image
            }
        };
        image
            .check_fits(group.mem_size)
            .map_err(|source| FleetError::Image {
                path: group.image.clone(),
                source,
            })?;
        let config = instance_config(group, spec, group.mem_size);
        prepared.push(Prepared {
            group: group.clone(),
            image,
            snapshot: None,
            config,
        });
    }
    Ok(prepared)
}

/// Each VM holds two file descriptors: lift the soft limit as far as the hard one allows.
fn raise_fd_limit(instances: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            let wanted = (instances as u64 * 2 + 64).min(limit.rlim_max);
            if wanted > limit.rlim_cur {
                limit.rlim_cur = wanted;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}

fn meminfo_field(text: &str, field: &str) -> u64 {
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

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo").map_or(0, |t| meminfo_field(&t, "MemAvailable:"))
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .map_or(0, |t| meminfo_field(&t, &format!("{field}:")))
}

/// A `--manifest` file: `[[vm]]` tables of `image`, `count`, `args`, `env`, `mem`, `timeout`,
/// `max_output`, `name`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    vm: Vec<ManifestEntry>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestEntry {
    image: PathBuf,
    #[serde(default = "one")]
    count: usize,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    mem: Option<String>,
    timeout: Option<String>,
    max_output: Option<String>,
    name: Option<String>,
}

fn one() -> usize {
    1
}

/// Defaults a manifest entry falls back on (the command line's flags).
#[derive(Debug, Clone)]
pub struct GroupDefaults {
    /// Guest RAM.
    pub mem_size: u64,
    /// Timeout.
    pub timeout: Option<Duration>,
    /// Console bytes allowed.
    pub max_output: u64,
}

/// Reads a manifest; relative image paths are relative to the manifest's folder.
pub fn read_manifest(path: &Path, defaults: &GroupDefaults) -> Result<Vec<Group>, FleetError> {
    let bad = |why: String| FleetError::Manifest {
        path: path.to_owned(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let manifest: Manifest = toml::from_str(&text).map_err(|e| bad(e.message().to_owned()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut groups = Vec::new();
    for (i, entry) in manifest.vm.into_iter().enumerate() {
        let field = |what: &str, e: String| bad(format!("vm #{}: {what}: {e}", i + 1));
        let image = if entry.image.is_absolute() {
            entry.image.clone()
        } else {
            base.join(&entry.image)
        };
        let name = entry.name.clone().unwrap_or_else(|| group_name(&image));
        groups.push(Group {
            name,
            image,
            count: entry.count,
            args: entry.args,
            env: entry.env,
            mem_size: entry
                .mem
                .map_or(Ok(defaults.mem_size), |m| parse_size(&m))
                .map_err(|e| field("mem", e))?,
            timeout: match entry.timeout {
                Some(t) => Some(parse_duration(&t).map_err(|e| field("timeout", e))?),
                None => defaults.timeout,
            },
            max_output: entry
                .max_output
                .map_or(Ok(defaults.max_output), |m| parse_size(&m))
                .map_err(|e| field("max_output", e))?,
        });
    }
    if groups.is_empty() {
        return Err(bad("no [[vm]] entries".into()));
    }
    let mut names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(bad(
            "two entries have the same name: give each a distinct `name`".into(),
        ));
    }
    Ok(groups)
}

/// The report name of an image.
pub fn group_name(image: &Path) -> String {
    image
        .file_name()
        .map_or_else(|| "image".to_owned(), |n| n.to_string_lossy().into_owned())
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
    let outcomes: Vec<String> = report
        .outcomes()
        .iter()
        .map(|(k, n)| format!("{n} × {k}"))
        .collect();
    let _ = writeln!(out, "  outcomes       {}", outcomes.join(", "));
    let _ = writeln!(out, "  peak VMs       {} at once", report.peak_concurrent);
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
    out
}

/// The report as JSON.
pub fn format_json(report: &FleetReport) -> String {
    #[derive(serde::Serialize)]
    struct Summary<'a> {
        #[serde(flatten)]
        report: &'a FleetReport,
        latency_us: BTreeMap<&'static str, f64>,
        outcomes: BTreeMap<String, usize>,
        mem_available_per_vm_kib: f64,
        rss_per_vm_kib: f64,
    }
    let latency_us = [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("max", 100.0)]
        .into_iter()
        .map(|(name, p)| (name, report.latency_percentile(p)))
        .collect();
    let summary = Summary {
        report,
        latency_us,
        outcomes: report.outcomes(),
        mem_available_per_vm_kib: report.mem_available_per_instance_kib(),
        rss_per_vm_kib: report.rss_per_instance_kib(),
    };
    serde_json::to_string(&summary).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_percentile_picks_nearest_rank() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 50.0), 3.0);
        assert_eq!(percentile(&v, 100.0), 5.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn test_meminfo_field_parses_kib() {
        let text = "MemTotal:       24000000 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(meminfo_field(text, "MemAvailable:"), 22_000_000);
        assert_eq!(meminfo_field(text, "Nope:"), 0);
    }

    #[test]
    fn test_manifest_is_read_with_defaults_and_relative_paths() {
        let dir = std::env::temp_dir().join(format!("flick-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fleet.toml");
        std::fs::write(
            &path,
            "[[vm]]\nimage = \"hello\"\ncount = 3\nargs = [\"a\"]\n\n[[vm]]\nimage = \"/abs/spin\"\nname = \"spinner\"\nmem = \"32M\"\ntimeout = \"1s\"\n",
        )
        .unwrap();
        let defaults = GroupDefaults {
            mem_size: 16 << 20,
            timeout: None,
            max_output: 1 << 20,
        };
        let groups = read_manifest(&path, &defaults).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].image, dir.join("hello"));
        assert_eq!((groups[0].count, groups[0].mem_size), (3, 16 << 20));
        assert_eq!(groups[1].name, "spinner");
        assert_eq!(groups[1].mem_size, 32 << 20);
        assert_eq!(groups[1].timeout, Some(Duration::from_secs(1)));
        std::fs::write(&path, "[[vm]]\nimage = \"x\"\ncolour = \"red\"\n").unwrap();
        assert!(
            read_manifest(&path, &defaults).is_err(),
            "unknown keys are refused"
        );
    }
}
