//! The flick VMM: boots a flick image in a KVM microVM whose vCPU starts at ring 3.
//!
//! - [`image`]: reads and validates image files.
//! - [`arch`]: the guest memory layout and the one-time setup (page tables, GDT, TSS, IDT,
//!   boot info, registers) that the VMM does in the guest kernel's place.
//! - [`vm`]: KVM setup and the run loop; [`exit`]: what each VM exit means;
//!   [`hypercall`]: validation of guest-given arguments; [`devices`]: the COM1 UART;
//!   [`crash`]: crash reports.
//! - [`run`]: all of the above for one image, as `vmm run` does it.

pub mod arch;
pub mod crash;
pub mod devices;
pub mod exit;
pub mod fleet;
pub mod hypercall;
pub mod image;
pub mod memory;
pub mod sandbox;
pub mod serve;
pub mod size;
pub mod snapshot;
pub mod symbols;
pub mod teardown;
pub mod timeline;
pub mod vm;
pub mod watchdog;

pub use exit::Console;
pub use image::{Image, ImageError};
pub use vm::{Outcome, RunReport, Vm, VmConfig, VmError};

use std::path::PathBuf;
use std::time::Duration;

/// Errors of [`run`]: all of them mean the guest never ran (exit status 125).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The image is unusable.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// `--mem` is out of range.
    #[error("--mem {given} is {why}")]
    BadMemSize {
        /// The requested size.
        given: size::Size,
        /// What is wrong.
        why: String,
    },
    /// The VM could not be created.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A snapshot is unusable or could not be written.
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    /// The runner thread could not be started or died (a bug).
    #[error("the vCPU thread failed unexpectedly")]
    RunnerFailed,
}

/// An error and its causes on one line, `outer: inner: innermost`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What `vmm run` boots.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The image file.
    pub image: PathBuf,
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Stop the guest after this long.
    pub timeout: Option<Duration>,
    /// Arguments after the image name.
    pub args: Vec<String>,
    /// Environment for the app, `KEY=VALUE` each.
    pub env: Vec<String>,
    /// Count the guest RAM pages touched (one `mincore` after the run).
    pub measure_ram: bool,
    /// Leave the VM's teardown to a helper process so the caller can exit at once.
    pub detach_teardown: bool,
    /// Confine the run loop with seccomp (see [`sandbox`]).
    pub seccomp: bool,
    /// Make a blocked system call once sandboxed (to test the sandbox).
    pub debug_blocked_syscall: bool,
    /// Console bytes allowed before the guest is stopped (status 134).
    pub max_output: u64,
    /// `image` is a snapshot to restore (`vmm run --from`); its RAM size overrides `mem_size`.
    pub restore: bool,
}

/// Checks a guest RAM size against the documented bounds.
pub fn check_mem_size(mem_size: u64) -> Result<(), RunError> {
    use arch::layout::{LARGE_PAGE_SIZE, MAX_MEM_SIZE, MIN_MEM_SIZE};
    let bad = |why: String| {
        Err(RunError::BadMemSize {
            given: size::Size(mem_size),
            why,
        })
    };
    if mem_size < MIN_MEM_SIZE {
        return bad(format!("below the minimum of {}", size::Size(MIN_MEM_SIZE)));
    }
    if mem_size > MAX_MEM_SIZE {
        return bad(format!("above the maximum of {}", size::Size(MAX_MEM_SIZE)));
    }
    if !mem_size.is_multiple_of(LARGE_PAGE_SIZE) {
        return bad("not a multiple of 2 MiB".to_owned());
    }
    Ok(())
}

/// Loads, boots and runs one image (or, with [`RunConfig::restore`], a snapshot) to completion.
///
/// Two threads share the work before the first `KVM_RUN`: this one creates the VM and vCPU
/// (about 0.3 ms of kernel work here) while a runner thread reads, validates and copies the
/// image into guest RAM (or maps the snapshot's pages) and confines itself with seccomp; the
/// runner then receives the VM and runs the guest. `timeline` carries the instants measured
/// before the call.
pub fn run(
    config: &RunConfig,
    console: Console,
    mut timeline: timeline::Timeline,
) -> Result<RunReport, RunError> {
    use std::time::Instant;
    let mem_size = if config.restore {
        snapshot::Snapshot::peek_mem_size(&config.image)?
    } else {
        config.mem_size
    };
    check_mem_size(mem_size)?;
    let ram = memory::GuestRam::new(mem_size).map_err(VmError::from)?;
    timeline.ram_mapped = Some(Instant::now());
    let vm_config = VmConfig {
        mem_size,
        ..vm_config(config)
    };
    type Handoff = (
        Result<vm::VmShell, VmError>,
        timeline::Timeline,
        Option<vm::Watchdog>,
    );
    let (to_runner, from_main) = std::sync::mpsc::channel::<Handoff>();
    let runner = {
        let (ram, path, seccomp, restore) = (
            ram.clone(),
            config.image.clone(),
            config.seccomp,
            config.restore,
        );
        std::thread::Builder::new()
            .name("vcpu".into())
            .spawn(move || {
                let loaded = if restore {
                    let snapshot = snapshot::Snapshot::open(&path)?;
                    snapshot.map_into(&ram)?;
                    Loaded::Snapshot(Box::new(snapshot))
                } else {
                    Loaded::Image(load(&ram, &path, mem_size)?)
                };
                let loaded_at = Instant::now();
                if seccomp {
                    sandbox::confine_this_thread().map_err(VmError::from)?;
                }
                let (shell, mut timeline, watchdog) =
                    from_main.recv().map_err(|_| RunError::RunnerFailed)?;
                timeline.image_loaded = Some(loaded_at);
                let mut vm = match loaded {
                    Loaded::Image(image) => {
                        Vm::from_shell(shell?, std::sync::Arc::new(image), &vm_config, timeline)?
                    }
                    Loaded::Snapshot(snapshot) => {
                        let layout = std::sync::Arc::new(snapshot.layout());
                        Vm::from_snapshot(shell?, &snapshot, layout, &vm_config, timeline)?
                    }
                };
                let report = vm.run(console, watchdog)?;
                Ok::<_, RunError>((vm, report))
            })
    };
    let runner = runner.map_err(|_| RunError::RunnerFailed)?;
    let shell = vm::VmShell::create(ram, &mut timeline);
    // The runner is confined: this thread starts its watchdog for it.
    let watchdog = config.timeout.map(|t| {
        use std::os::unix::thread::JoinHandleExt;
        vm::Watchdog::start(t, runner.as_pthread_t(), config.seccomp)
    });
    // The runner may have failed already (bad image): then nobody listens, and its error wins.
    let _ = to_runner.send((shell, timeline, watchdog));
    let (vm, mut report) = runner.join().unwrap_or(Err(RunError::RunnerFailed))?;
    if config.measure_ram {
        report.ram_pages_touched = vm.ram().resident_pages();
    }
    if config.detach_teardown {
        teardown::detach(vm);
    } else {
        drop(vm);
    }
    report.timeline.torn_down = Some(Instant::now());
    Ok(report)
}

/// What the runner thread prepared in guest RAM.
enum Loaded {
    Image(Image),
    Snapshot(Box<snapshot::Snapshot>),
}

/// Boots `config.image` until its kernel's snapshot point and writes the snapshot to `out`.
///
/// The guest runs sandboxed on its own thread (it is untrusted from its first instruction);
/// this thread then writes the file.
pub fn snapshot(
    config: &RunConfig,
    console: Console,
    out: &std::path::Path,
) -> Result<snapshot::Summary, RunError> {
    check_mem_size(config.mem_size)?;
    let image = std::sync::Arc::new(Image::from_file(&config.image)?);
    image.check_fits(config.mem_size)?;
    let vm_config = VmConfig {
        snapshot: true,
        ..vm_config(config)
    };
    let guest_image = std::sync::Arc::clone(&image);
    let booted = std::thread::Builder::new()
        .name("vcpu".into())
        .spawn(move || {
            let mut vm = Vm::new(guest_image, &vm_config, timeline::Timeline::default())?;
            match vm.start(console, None)? {
                vm::Progress::AtSnapshotPoint => {
                    let state = vm.capture()?;
                    Ok((vm, state))
                }
                vm::Progress::Finished(report) => Err(RunError::from(
                    snapshot::SnapshotError::NoSnapshotPoint(match report.outcome {
                        Outcome::Exited(code) => format!("it exited with {code}"),
                        Outcome::TimedOut(_) => "it timed out".into(),
                        Outcome::Crashed(text) => {
                            text.lines().next().unwrap_or("it crashed").to_owned()
                        }
                    }),
                )),
                vm::Progress::Parked => Err(RunError::from(
                    snapshot::SnapshotError::NoSnapshotPoint("it parked itself first".into()),
                )),
            }
        })
        .map_err(|_| RunError::RunnerFailed)?;
    let (vm, state) = booted.join().unwrap_or(Err(RunError::RunnerFailed))?;
    Ok(snapshot::write(out, &image, vm.ram(), &state)?)
}

fn vm_config(config: &RunConfig) -> VmConfig {
    let name = config
        .image
        .file_name()
        .map_or_else(|| "image".to_owned(), |n| n.to_string_lossy().into_owned());
    VmConfig {
        mem_size: config.mem_size,
        timeout: config.timeout,
        args: std::iter::once(name)
            .chain(config.args.iter().cloned())
            .collect(),
        env: config.env.clone(),
        seccomp: config.seccomp,
        debug_blocked_syscall: config.debug_blocked_syscall,
        max_output: config.max_output,
        snapshot: false,
    }
}

/// Reads and validates the image, then copies it into `ram` with its page tables.
fn load(ram: &memory::GuestRam, path: &std::path::Path, mem_size: u64) -> Result<Image, RunError> {
    let image = Image::from_file(path)?;
    image.check_fits(mem_size)?;
    arch::load_image(ram, &image).map_err(VmError::from)?;
    Ok(image)
}
