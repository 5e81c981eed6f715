//! The launcher: the one way from a file to a running VM, which every product (`vmm run`,
//! `vmm snapshot`, `vmm fleet`, `vmm serve`) calls.
//!
//! - [`Target`]: an image or snapshot, opened and sniffed once and validated;
//! - [`build`]: fresh RAM with the target loaded (image copied, or snapshot pages mapped), the
//!   KVM side created, boot info and registers given: a [`Vm`] ready to run. [`load_ram`] and
//!   [`finish`] are its two halves, for products that create the KVM side ahead of time;
//! - [`run`] and [`snapshot`]: `vmm run` and `vmm snapshot` whole, the guest on a sandboxed
//!   thread.

pub mod target;

pub use target::{Target, TargetError, TargetFile, TargetKind, guest_name};

use crate::arch;
use crate::arch::layout::{LARGE_PAGE_SIZE, MAX_MEM_SIZE, MIN_MEM_SIZE};
use crate::memory::image::ImageError;
use crate::memory::reset::{Reference, ResetRefused};
use crate::memory::{GuestRam, MemoryError};
use crate::report::{Outcome, RunReport, Timeline};
use crate::size::Size;
use crate::snapshot::{self, SnapshotError};
use crate::vm::recycle::{FreshVcpu, RecycleRefused, Recycler};
use crate::vm::{self, Console, Progress, Start, Vm, VmConfig, VmError, VmShell};
use kvm_ioctls::Kvm;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Why a guest could not be launched: all of these mean it never ran (exit status 125).
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The target is unusable.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// `--mem` is out of range.
    #[error("--mem {given} is {why}")]
    BadMemSize {
        /// The requested size.
        given: Size,
        /// What is wrong.
        why: String,
    },
    /// The image does not fit the RAM asked for.
    #[error(transparent)]
    TooLittleMemory(ImageError),
    /// Guest RAM could not be mapped.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The VM could not be created.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A snapshot could not be mapped or written.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The guest's thread could not be started.
    #[error("cannot start the vCPU thread")]
    Spawn(#[source] std::io::Error),
    /// The guest's thread died without an answer (a bug).
    #[error("the vCPU thread failed unexpectedly")]
    RunnerFailed,
    /// The session that ran the guest failed (the debugger's).
    #[error(transparent)]
    Session(Box<dyn std::error::Error + Send + Sync>),
    /// The core file cannot be written where asked (`--core`).
    #[error("--core")]
    Core(#[source] crate::files::WriteError),
    /// A fresh vCPU's state could not be read (for reusing VMs).
    #[error(transparent)]
    Reuse(#[from] crate::vm::recycle::RecycleRefused),
}

/// Checks a guest RAM size against the documented bounds.
pub fn check_mem_size(mem_size: u64) -> Result<(), LaunchError> {
    let bad = |why: String| {
        Err(LaunchError::BadMemSize {
            given: Size(mem_size),
            why,
        })
    };
    if mem_size < MIN_MEM_SIZE {
        return bad(format!("below the minimum of {}", Size(MIN_MEM_SIZE)));
    }
    if mem_size > MAX_MEM_SIZE {
        return bad(format!("above the maximum of {}", Size(MAX_MEM_SIZE)));
    }
    if !mem_size.is_multiple_of(LARGE_PAGE_SIZE) {
        return bad("not a multiple of 2 MiB".to_owned());
    }
    Ok(())
}

/// Checks that `target` can run with `config`: its RAM size is valid, and an image fits it.
pub fn check(target: &Target, config: &VmConfig) -> Result<(), LaunchError> {
    config
        .check_args_env(target.name())
        .map_err(VmError::from)?;
    let mem_size = target.mem_size(config.mem_size);
    check_mem_size(mem_size)?;
    // A snapshot's own fit was checked when it was opened.
    if let TargetKind::Image(image) = target.kind() {
        image
            .check_fits(mem_size)
            .map_err(LaunchError::TooLittleMemory)?;
    }
    Ok(())
}

/// Fresh guest RAM for `target` with its contents in place: an image's segments copied in, or
/// a snapshot's pages mapped (with `populate`, copied in now), and the VMM's privileged
/// structures written. `config` must have passed [`check`].
pub fn load_ram(target: &Target, mem_size: u64, populate: bool) -> Result<GuestRam, LaunchError> {
    let ram = GuestRam::new(mem_size)?;
    load_into(&ram, target, populate)?;
    Ok(ram)
}

fn load_into(ram: &GuestRam, target: &Target, populate: bool) -> Result<(), LaunchError> {
    match target.kind() {
        TargetKind::Image(image) => arch::load_image(ram, image).map_err(VmError::from)?,
        TargetKind::Snapshot(snapshot) => snapshot.map_into(ram, populate)?,
    }
    Ok(())
}

/// Gives a shell whose RAM holds `target` (see [`load_ram`]) its boot info and registers.
pub fn finish(
    shell: VmShell,
    target: &Target,
    config: &VmConfig,
    timeline: Timeline,
) -> Result<Vm, LaunchError> {
    let start = match target.kind() {
        TargetKind::Image(_) => Start::Boot,
        TargetKind::Snapshot(snapshot) => Start::Restore {
            vcpu: snapshot.vcpu(),
            devices: snapshot.devices(),
        },
    };
    Ok(Vm::assemble(
        shell,
        start,
        Arc::clone(target.layout()),
        target.name(),
        config,
        timeline,
    )?)
}

/// A VM for `target`, ready to run, made through an open `/dev/kvm` (shared by many VMs).
pub fn build(
    kvm: &Arc<Kvm>,
    target: &Target,
    config: &VmConfig,
    timeline: Timeline,
) -> Result<Vm, LaunchError> {
    build_with(kvm, target, config, timeline, false)
}

/// [`build`], with RAM locked as it is populated (`GuestRam::lock_on_fault`) when `reusable`:
/// a VM that may be reused after its guest (`vm::recycle`).
pub(crate) fn build_with(
    kvm: &Arc<Kvm>,
    target: &Target,
    config: &VmConfig,
    mut timeline: Timeline,
    reusable: bool,
) -> Result<Vm, LaunchError> {
    check(target, config)?;
    let mut ram = load_ram(target, target.mem_size(config.mem_size), false)?;
    if reusable {
        ram.lock_on_fault();
    }
    timeline.image_loaded = Some(Instant::now());
    let shell = VmShell::create_with(Arc::clone(kvm), ram, &mut timeline)?;
    finish(shell, target, config, timeline)
}

/// A shell whose RAM holds `target` (`populate`: snapshot pages copied in now), locked as it
/// is populated, so that the VM may be reused after its guest (`vm::recycle`).
pub(crate) fn reusable_shell(
    kvm: &Arc<Kvm>,
    target: &Target,
    mem_size: u64,
    populate: bool,
) -> Result<VmShell, LaunchError> {
    let mut ram = load_ram(target, mem_size, populate)?;
    ram.lock_on_fault();
    Ok(VmShell::create_with(
        Arc::clone(kvm),
        ram,
        &mut Timeline::default(),
    )?)
}

/// What reusing the VMs of `target` (with `config`) needs: a fresh VM's RAM, loaded as every
/// VM's is, with the pages the image or snapshot says may not be zero, and a fresh vCPU's
/// state, read from a VM made for the purpose and returned too (`populate` as for
/// [`reusable_shell`]), never run.
pub(crate) fn recycler(
    kvm: &Arc<Kvm>,
    target: &Target,
    config: &VmConfig,
    populate: bool,
) -> Result<(Recycler, VmShell), LaunchError> {
    const PAGE: u64 = arch::layout::PAGE_SIZE;
    check(target, config)?;
    let mem_size = target.mem_size(config.mem_size);
    let pages: Vec<u64> = match target.kind() {
        TargetKind::Image(image) => image
            .segments()
            .iter()
            .flat_map(|s| s.first_page() / PAGE..s.page_end() / PAGE)
            .collect(),
        TargetKind::Snapshot(snapshot) => snapshot.page_numbers().to_vec(),
    };
    let reference = Reference::new(load_ram(target, mem_size, false)?, pages);
    let shell = reusable_shell(kvm, target, mem_size, populate)?;
    if let Some(why) = shell.ram().lock_failure() {
        return Err(RecycleRefused::from(ResetRefused::NotLocked(why.to_owned())).into());
    }
    let fresh = FreshVcpu::capture(kvm, &shell)?;
    Ok((
        Recycler {
            reference,
            fresh,
            max_extra_pages: MAX_KEPT_EXTRA_PAGES,
        },
        shell,
    ))
}

/// Pages a guest may leave populated beyond a fresh VM's and still have its VM reused (4 MiB):
/// a reused VM holds them until its next guest.
pub(crate) const MAX_KEPT_EXTRA_PAGES: usize = 1024;

/// What `vmm run` boots. `RunConfig::new(target)` gives the command line's defaults (a
/// detached teardown, no timeline, no core file), so that new fields do not break callers.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The image or snapshot file.
    pub target: PathBuf,
    /// Refuse anything but a snapshot (`vmm run --from`).
    pub snapshot_only: bool,
    /// The guest's settings.
    pub vm: VmConfig,
    /// Measure the run for `--timeline`: the guest reports its boot milestones (one VM exit
    /// each), and the guest RAM pages touched are counted (one `mincore` after the run).
    pub measure_ram: bool,
    /// Leave the VM's teardown to a helper process so the caller can exit at once.
    pub detach_teardown: bool,
    /// Write an ELF core file here if the guest crashes (`vmm run --core`).
    pub core: Option<PathBuf>,
}

impl RunConfig {
    /// `vmm run TARGET` with the command line's defaults.
    pub fn new(target: PathBuf) -> Self {
        Self {
            target,
            snapshot_only: false,
            vm: VmConfig::default(),
            measure_ram: false,
            detach_teardown: true,
            core: None,
        }
    }
}

/// Loads, boots and runs one image (or restores a snapshot) to completion, on the calling
/// thread, which the sandbox confines before the guest's first instruction and for good: call
/// it last (afterwards the thread may only print and exit). `timeline` carries the instants
/// measured before the call.
///
/// One thread does the work in order (open and read the target, map RAM and load it, create
/// the VM and vCPU, give registers, run): on this hypervisor a second thread bought no
/// parallelism (its scheduler packs threads onto one vCPU, and the loading thread then held
/// up the creating one) but cost its start, two wake-ups and its end. The teardown helper is
/// made before the sandbox closes (it copies the fd table, the VM's fds included), so that
/// the VM's destruction stays off the user's path. The guest runs on a thread of its own only
/// when a core file may have to be written after it, since writing one takes calls the
/// sandbox forbids.
pub fn run(
    config: &RunConfig,
    console: Console,
    timeline: Timeline,
) -> Result<RunReport, LaunchError> {
    run_with(
        config,
        console,
        timeline,
        Box::new(|vm, console, watchdog| Ok(vm.run(console, watchdog)?)),
    )
}

/// How the guest's thread runs an assembled VM to its end (`vm.run`, or a debugging session).
pub(crate) type Driver = Box<
    dyn FnOnce(&mut Vm, Console, Option<vm::Watchdog>) -> Result<RunReport, LaunchError> + Send,
>;

/// [`run`], with the guest run by `drive` (on a thread confined first only if
/// `config.vm.seccomp`).
pub(crate) fn run_with(
    config: &RunConfig,
    console: Console,
    mut timeline: Timeline,
    drive: Driver,
) -> Result<RunReport, LaunchError> {
    if let Some(core) = &config.core {
        crate::files::check_replaceable_by_output_of(core, &config.target)
            .map_err(LaunchError::Core)?;
    }
    let file = if config.snapshot_only {
        TargetFile::open_snapshot(&config.target)?
    } else {
        TargetFile::open(&config.target)?
    };
    let mem_size = file.mem_size(config.vm.mem_size);
    check_mem_size(mem_size)?;
    let ram = GuestRam::new(mem_size)?;
    timeline.ram_mapped = Some(Instant::now());
    let vm_config = VmConfig {
        milestones: config.vm.milestones || config.measure_ram,
        ..config.vm.clone()
    };
    let target = file.load_for_one_vm()?;
    check(&target, &vm_config)?;
    load_into(&ram, &target, false)?;
    timeline.image_loaded = Some(Instant::now());
    let shell = VmShell::create(ram, &mut timeline)?;
    let vm = finish(shell, &target, &vm_config, timeline)?;
    let helper = config
        .detach_teardown
        .then(|| vm::teardown::Helper::start(&config.vm.devices.host_fds()));
    // A restore's FPU state is loaded already (`finish`): no KVM_SET_XSAVE for the runner.
    let grants = crate::sandbox::Grants {
        timeout: vm_config.timeout.is_some(),
        timeline: config.measure_ram && config.core.is_none(),
        ..vm_config.devices.grants()
    };
    if config.measure_ram {
        // Looked up now: the report that names it is printed from a confined thread.
        crate::report::timeline::hypervisor();
    }
    let confined = vm_config.seccomp.then_some(grants);
    let timeout = vm_config.timeout;
    let (vm, mut report) = if config.core.is_some() {
        std::thread::Builder::new()
            .name("vcpu".into())
            .spawn(move || run_here(vm, timeout, confined, console, drive))
            .map_err(LaunchError::Spawn)?
            .join()
            .unwrap_or(Err(LaunchError::RunnerFailed))?
    } else {
        run_here(vm, timeout, confined, console, drive)?
    };
    if config.measure_ram {
        report.ram_pages_touched = vm.ram().resident_pages();
    }
    if let Some(path) = &config.core {
        dump_core(&mut report, path, vm.ram(), &guest_name(&config.target));
    }
    match helper {
        Some(helper) => helper.hand_over(vm),
        None => drop(vm),
    }
    report.timeline.torn_down = Some(Instant::now());
    Ok(report)
}

/// Runs `vm` to its end on this thread: starts the watchdog of its `timeout`, confines the
/// thread with `confined` grants (if any), and lets `drive` run the guest.
fn run_here(
    mut vm: Vm,
    timeout: Option<std::time::Duration>,
    confined: Option<crate::sandbox::Grants>,
    console: Console,
    drive: Driver,
) -> Result<(Vm, RunReport), LaunchError> {
    let watchdog = timeout
        .map(|timeout| {
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() };
            vm::Watchdog::start(timeout, me, confined.is_some())
        })
        .transpose()
        .map_err(VmError::from)?;
    if let Some(grants) = confined {
        crate::sandbox::confine_this_thread_as(&crate::sandbox::Profile::Runner(grants))
            .map_err(VmError::from)?;
    }
    vm.timeline_mut().confined = Some(Instant::now());
    let report = drive(&mut vm, console, watchdog)?;
    Ok((vm, report))
}

/// Writes the core file of a crashed guest to `path` (nothing when it did not crash), and says
/// so at the end of its crash report.
pub(crate) fn dump_core(report: &mut RunReport, path: &Path, ram: &GuestRam, name: &str) {
    let (Outcome::Crashed(text), Some(crash)) = (&mut report.outcome, &report.crash) else {
        return;
    };
    match crate::report::core_dump::write(path, ram, crash, name) {
        Ok(summary) => text.push_str(&format!(
            "  core dumped to {} ({} guest pages, {} bytes)\n",
            path.display(),
            summary.pages,
            summary.file_size
        )),
        Err(err) => text.push_str(&format!("  no core file: {}\n", crate::error_chain(&err))),
    }
}

/// Boots the image `config.target` until its kernel's snapshot point and writes the snapshot
/// to `out`.
///
/// The guest runs sandboxed on its own thread (it is untrusted from its first instruction);
/// this thread then writes the file.
pub fn snapshot(
    config: &RunConfig,
    console: Console,
    out: &Path,
) -> Result<snapshot::Summary, LaunchError> {
    crate::files::check_replaceable_by_output_of(out, &config.target)
        .map_err(SnapshotError::from)?;
    let target = Target::open(&config.target)?;
    let TargetKind::Image(image) = target.kind().clone() else {
        return Err(SnapshotError::Foreign(format!(
            "{} is a snapshot already; snapshots are taken of images",
            config.target.display()
        ))
        .into());
    };
    let vm_config = VmConfig {
        stop_at_snapshot_point: true,
        ..config.vm.clone()
    };
    check(&target, &vm_config)?;
    let kvm = vm::open_kvm()?;
    let booted = std::thread::Builder::new()
        .name("vcpu".into())
        .spawn(move || {
            let mut vm = build(&kvm, &target, &vm_config, Timeline::default())?;
            match vm.start(console, None)? {
                Progress::AtSnapshotPoint => {
                    let state = vm.capture()?;
                    Ok((vm, state))
                }
                Progress::Finished(report) => Err(LaunchError::from(
                    SnapshotError::NoSnapshotPoint(match report.outcome {
                        Outcome::Exited(code) => format!("it exited with {code}"),
                        Outcome::TimedOut(_) => "it timed out".into(),
                        Outcome::BrokenPipe => "its stdout was closed".into(),
                        Outcome::Killed => "it was killed".into(),
                        Outcome::Crashed(text) => {
                            text.lines().next().unwrap_or("it crashed").to_owned()
                        }
                    }),
                )),
                Progress::Parked => Err(LaunchError::from(SnapshotError::NoSnapshotPoint(
                    "it parked itself first".into(),
                ))),
            }
        })
        .map_err(LaunchError::Spawn)?;
    let (vm, (vcpu, devices)) = booted.join().unwrap_or(Err(LaunchError::RunnerFailed))?;
    Ok(snapshot::write(out, &image, vm.ram(), &vcpu, &devices)?)
}
