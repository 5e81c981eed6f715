//! The VM core: one microVM, from a created [`VmShell`] to a finished [`RunReport`].
//!
//! - [`shell`]: `/dev/kvm`, the VM, its RAM slot and vCPU, created before the target is known;
//! - [`Vm`]: a shell given its registers (a fresh boot at the image's entry, or a restored
//!   [`SavedVcpu`]), and the run loop, which translates each KVM exit into an [`exits::Exit`]
//!   and lets the [`exits::ExitHandler`] decide (over [`hypercall`] decoding and the device
//!   bus); registers are only fetched when the guest crashed;
//! - [`console`], [`watchdog`] (`--timeout`), [`teardown`] (off the user's path),
//!   [`vcpu_state`] (what a snapshot saves of the vCPU).
//!
//! The core knows nothing of files: images and snapshots are turned into RAM contents and a
//! [`Start`] by the launcher (`crate::launch`).

pub(crate) mod console;
pub(crate) mod debug;
pub(crate) mod exits;
pub(crate) mod hypercall;
pub(crate) mod recycle;
pub(crate) mod shell;
pub mod teardown;
pub(crate) mod vcpu_state;
pub(crate) mod watchdog;

pub use console::Console;
pub use hypercall::HypercallError;
use shell::Machine;
pub use shell::{VmShell, open_kvm};
pub use vcpu_state::SavedVcpu;
pub(crate) use watchdog::DeadlineService;
pub use watchdog::{Watchdog, WatchdogError};

use crate::arch::{self, HostClock, regs, stubs};
pub use crate::devices::DeviceConfig;
use crate::devices::{DeviceState, DeviceStateError, PortBus};
use crate::memory::GuestRam;
use crate::memory::image::Image;
use crate::report::crash::{self, CrashState};
use crate::report::{Outcome, RunReport, Timeline, lines::Lines, symbols::Symbols};
use exits::{Action, Exit, ExitHandler, Limits, Stop};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Errors that keep a guest from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm{hint}", hint = kvm_open_hint(source.errno()))]
    OpenKvm {
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A KVM ioctl failed.
    #[error("{what} failed")]
    Kvm {
        /// Which call.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    /// The boot structures could not be written.
    #[error(transparent)]
    Setup(#[from] arch::SetupError),
    /// The sandbox could not be installed.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// A restored device state is invalid.
    #[error(transparent)]
    DeviceState(#[from] DeviceStateError),
    /// The arguments or environment are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The `--timeout` watchdog could not start.
    #[error(transparent)]
    Watchdog(#[from] WatchdogError),
    /// A restored vCPU state cannot be loaded.
    #[error("the saved FPU/SSE state is invalid")]
    BadFpuState(#[source] Option<kvm_ioctls::Error>),
    /// A device holds host state that a snapshot cannot keep (open files).
    #[error("cannot snapshot the guest: {0}")]
    SnapshotRefused(String),
    /// The guest's output cannot be written where it goes.
    #[error("cannot write the guest's {0}")]
    Output(String),
}

fn kvm_open_hint(errno: i32) -> &'static str {
    match errno {
        libc::EACCES | libc::EPERM => " (add your user to the 'kvm' group, or run as root)",
        libc::ENOENT | libc::ENXIO | libc::ENODEV => {
            " (is KVM available? load kvm_intel or kvm_amd, or enable nested virtualization)"
        }
        _ => "",
    }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// What to boot and how: everything about one guest that is not in its image or snapshot.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest RAM in bytes (for an image; a snapshot brings its own).
    pub mem_size: u64,
    /// Stop the guest after this long.
    pub timeout: Option<Duration>,
    /// Arguments after the guest's name (which the launcher puts first, as `argv[0]`).
    pub args: Vec<String>,
    /// Environment, `KEY=VALUE` each.
    pub env: Vec<String>,
    /// Confine the run loop with seccomp.
    pub seccomp: bool,
    /// Make a blocked system call once sandboxed (to test the sandbox).
    pub debug_blocked_syscall: bool,
    /// Console bytes allowed before the guest is stopped.
    pub max_output: u64,
    /// Boot for `vmm snapshot`: the kernel stops at its snapshot point.
    pub stop_at_snapshot_point: bool,
    /// Ask the kernel for its boot milestones (`--timeline`; one VM exit each).
    pub milestones: bool,
    /// The guest's devices beyond the standard ones.
    pub devices: DeviceConfig,
}

impl Default for VmConfig {
    /// The command line's defaults: 16 MiB of RAM, no timeout, 64 MiB of console output,
    /// sandboxed, no arguments, no devices beyond the standard ones.
    fn default() -> Self {
        Self {
            mem_size: 16 << 20,
            timeout: None,
            args: Vec::new(),
            env: Vec::new(),
            seccomp: true,
            debug_blocked_syscall: false,
            max_output: 64 << 20,
            stop_at_snapshot_point: false,
            milestones: false,
            devices: DeviceConfig::default(),
        }
    }
}

/// Why a guest's arguments or environment cannot be handed to it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// An argument holds a NUL byte (it would split into two in the guest).
    #[error("argument {0:?} contains a NUL byte")]
    NulInArgument(String),
    /// An environment entry is not `KEY=VALUE` with a non-empty key and no NUL byte.
    #[error("invalid environment entry {0:?} (expected KEY=VALUE)")]
    BadEnvironment(String),
    /// Arguments and environment do not fit in the boot-info area.
    #[error("arguments and environment are too long ({len} bytes; at most {max})")]
    TooLong {
        /// Their packed size.
        len: usize,
        /// The room there is.
        max: usize,
    },
}

impl VmConfig {
    /// Checks what the guest will receive as arguments and environment: the same rules for
    /// the command line, a fleet manifest and a serve request.
    pub fn check_args_env(&self, name: &str) -> Result<(), ConfigError> {
        if let Some(arg) = self.args.iter().find(|a| a.contains('\0')) {
            return Err(ConfigError::NulInArgument(arg.clone()));
        }
        if let Some(entry) = self.env.iter().find(|e| !is_env_entry(e)) {
            return Err(ConfigError::BadEnvironment(entry.clone()));
        }
        let len: usize = std::iter::once(name)
            .chain(self.args.iter().map(String::as_str))
            .chain(self.env.iter().map(String::as_str))
            .map(|s| s.len() + 1)
            .sum();
        if len > arch::boot_info::ARGS_ROOM {
            return Err(ConfigError::TooLong {
                len,
                max: arch::boot_info::ARGS_ROOM,
            });
        }
        Ok(())
    }
}

/// Whether `entry` is `KEY=VALUE` with a non-empty key and no NUL byte.
pub fn is_env_entry(entry: &str) -> bool {
    matches!(entry.split_once('='), Some((key, _)) if !key.is_empty()) && !entry.contains('\0')
}

/// What the vCPU starts from.
pub enum Start<'a> {
    /// A fresh boot at the image's entry.
    Boot,
    /// A restored snapshot: its saved vCPU and devices.
    Restore {
        /// The saved vCPU.
        vcpu: &'a SavedVcpu,
        /// The saved devices.
        devices: &'a [DeviceState],
    },
}

/// Where a started guest is.
#[derive(Debug)]
pub enum Progress {
    /// It parked itself and waits for [`Vm::resume`].
    Parked,
    /// It stopped.
    Finished(Box<RunReport>),
    /// It reached its snapshot point (booted for `vmm snapshot`): see [`Vm::capture`].
    AtSnapshotPoint,
}

/// A created VM, ready to run.
pub struct Vm {
    /// First: dropped first (the VM before the RAM it maps; see `Machine`).
    machine: Machine,
    layout: Arc<Image>,
    config: VmConfig,
    timeline: Timeline,
    bus: Option<PortBus>,
    handler: Option<ExitHandler>,
    watchdog: Option<Watchdog>,
    /// The guest ended with its exit hypercall (only such a VM may be reused).
    exited: bool,
}

impl Vm {
    /// The instants of this VM's phases so far, for the launch path to add its own.
    pub(crate) fn timeline_mut(&mut self) -> &mut Timeline {
        &mut self.timeline
    }

    /// Gives `shell` (whose RAM already holds the image, or a snapshot's pages, with the
    /// privileged structures for `layout`) its boot info and registers; the guest's arguments
    /// are `name` and then `config.args`.
    pub fn assemble(
        shell: VmShell,
        start: Start<'_>,
        layout: Arc<Image>,
        name: &str,
        config: &VmConfig,
        mut timeline: Timeline,
    ) -> Result<Self, VmError> {
        let VmShell {
            mut machine,
            random_seed,
        } = shell;
        let args: Vec<&str> = std::iter::once(name)
            .chain(config.args.iter().map(String::as_str))
            .collect();
        let env: Vec<&str> = config.env.iter().map(String::as_str).collect();
        let milestones = if config.milestones {
            abi::boot_flags::MILESTONES
        } else {
            0
        };
        let mut params = arch::RunParams {
            args: &args,
            env: &env,
            clock: guest_clock(&machine.vcpu, machine.tsc_khz),
            flags: milestones
                | if config.stop_at_snapshot_point {
                    abi::boot_flags::SNAPSHOT
                } else {
                    0
                },
            random_seed,
        };
        let mut bus = PortBus::new(&config.devices);
        let regs = match start {
            Start::Boot => {
                arch::write_boot_info(&machine.ram, &layout, params)?;
                regs::initial_regs(layout.entry())
            }
            Start::Restore {
                vcpu: saved,
                devices,
            } => {
                params.flags = abi::boot_flags::SNAPSHOT | abi::boot_flags::RESTORED | milestones;
                arch::rewrite_boot_info(&machine.ram, &layout, params)?;
                bus.restore(devices)?;
                load_fpu_state(&machine.vcpu, saved)?;
                saved.restored_regs()
            }
        };
        // The special registers are always the VMM's own, never a snapshot's.
        let sregs = regs::initial_sregs();
        let vcpu = &mut machine.vcpu;
        if machine.sync_regs {
            // Hand the registers to the first KVM_RUN instead of two ioctls of their own.
            let sync = vcpu.sync_regs_mut();
            sync.regs = regs;
            sync.sregs = sregs;
            vcpu.set_sync_dirty_reg(SyncReg::Register);
            vcpu.set_sync_dirty_reg(SyncReg::SystemRegister);
        } else {
            vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
            vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
        }
        timeline.vcpu_ready = Some(Instant::now());
        Ok(Vm {
            machine,
            layout,
            config: config.clone(),
            timeline,
            bus: Some(bus),
            handler: None,
            watchdog: None,
            exited: false,
        })
    }

    /// Guest RAM.
    pub fn ram(&self) -> &GuestRam {
        &self.machine.ram
    }

    /// The image layout the guest runs (its segments, and its file bytes when booted from an
    /// image: a snapshot needs them to save the image's digest).
    pub fn layout(&self) -> &Arc<Image> {
        &self.layout
    }

    /// The state `vmm snapshot` saves, read from a guest stopped at its snapshot point.
    pub fn capture(&mut self) -> Result<(SavedVcpu, Vec<DeviceState>), VmError> {
        let bus = self
            .handler
            .as_ref()
            .map(ExitHandler::bus)
            .or(self.bus.as_ref());
        if let Some(why) = bus.and_then(PortBus::snapshot_refusal) {
            return Err(VmError::SnapshotRefused(why));
        }
        let regs = self
            .machine
            .vcpu
            .get_regs()
            .map_err(kvm_err("KVM_GET_REGS"))?;
        let sregs = self
            .machine
            .vcpu
            .get_sregs()
            .map_err(kvm_err("KVM_GET_SREGS"))?;
        let xsave = self
            .machine
            .vcpu
            .get_xsave()
            .map_err(kvm_err("KVM_GET_XSAVE"))?;
        let devices = match (&self.handler, &self.bus) {
            (Some(handler), _) => handler.bus().save(),
            (None, Some(bus)) => bus.save(),
            (None, None) => Vec::new(),
        };
        let vcpu = SavedVcpu {
            regs,
            sregs,
            xsave: xsave.region,
        };
        Ok((vcpu, devices))
    }

    /// Enforces a timeout on the thread that will resume the guest next (a released guest).
    pub fn arm_watchdog(&mut self, watchdog: Watchdog) {
        self.disarm_watchdog();
        self.watchdog = Some(watchdog);
    }

    /// Stops enforcing the timeout (a parked guest may be resumed on another thread).
    pub fn disarm_watchdog(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.finish();
        }
    }

    /// Runs the guest until it stops; console output goes to `console`. A guest that parks
    /// itself ([`abi::port::WAIT`]) is released at once.
    ///
    /// `watchdog` enforces `--timeout` on this thread; without one, and with a timeout, `run`
    /// starts its own (which must then happen before this thread is confined).
    pub fn run(
        &mut self,
        console: Console,
        watchdog: Option<Watchdog>,
    ) -> Result<RunReport, VmError> {
        let mut progress = self.start(console, watchdog)?;
        loop {
            match progress {
                Progress::Finished(report) => return Ok(*report),
                // Outside `vmm snapshot` the snapshot point does not stop the guest.
                Progress::Parked | Progress::AtSnapshotPoint => progress = self.resume()?,
            }
        }
    }

    /// Starts the guest: runs it until it stops or parks itself.
    pub fn start(
        &mut self,
        console: Console,
        watchdog: Option<Watchdog>,
    ) -> Result<Progress, VmError> {
        let started = Instant::now();
        let limits = Limits {
            deadline: self.config.timeout.and_then(|t| started.checked_add(t)),
            max_output: self.config.max_output,
            stop_at_snapshot_point: self.config.stop_at_snapshot_point,
        };
        let bus = self
            .bus
            .take()
            .unwrap_or_else(|| PortBus::new(&self.config.devices));
        self.handler = Some(ExitHandler::new(console, bus, limits));
        self.watchdog = match (watchdog, self.config.timeout) {
            (Some(watchdog), _) => Some(watchdog),
            (None, Some(timeout)) => {
                // SAFETY: pthread_self has no preconditions.
                let me = unsafe { libc::pthread_self() };
                Some(Watchdog::start(timeout, me, self.config.seccomp)?)
            }
            (None, None) => None,
        };
        if self.config.seccomp {
            // A restore's FPU state is loaded already (`assemble`): no KVM_SET_XSAVE here.
            let grants = crate::sandbox::Grants {
                timeout: self.config.timeout.is_some(),
                ..self.config.devices.grants()
            };
            crate::sandbox::confine_this_thread_as(&crate::sandbox::Profile::Runner(grants))?;
            if self.config.debug_blocked_syscall {
                // SAFETY: a harmless call that the filter blocks, to show the report.
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            }
        }
        self.resume()
    }

    /// Continues a parked guest until it stops or parks again.
    ///
    /// # Panics
    /// If called before [`Vm::start`] (a bug in the caller, not an input).
    pub fn resume(&mut self) -> Result<Progress, VmError> {
        let mut handler = self.handler.take().expect("resume() after start()");
        let watchdog = self.watchdog.take();
        let stop = self.run_loop(&mut handler, watchdog.as_ref(), None, false);
        self.watchdog = watchdog;
        match stop {
            Ok(Some(Stop::Parked)) => {
                self.handler = Some(handler);
                return Ok(Progress::Parked);
            }
            Ok(Some(Stop::SnapshotPoint)) => {
                self.handler = Some(handler);
                return Ok(Progress::AtSnapshotPoint);
            }
            Ok(Some(Stop::OutputFailed(why))) => {
                if let Some(watchdog) = self.watchdog.take() {
                    watchdog.finish();
                }
                return Err(VmError::Output(why));
            }
            _ => {}
        }
        let report = self.finish(handler, stop?, None);
        Ok(Progress::Finished(Box::new(report)))
    }

    /// The report of a guest that stopped for good (`None`: the watchdog fired). A crash is
    /// described now, unless the caller did already (`described`: the debugger, which
    /// describes a crash when it happens and lets gdb look before the guest ends).
    fn finish(
        &mut self,
        mut handler: ExitHandler,
        stop: Option<Stop>,
        described: Option<(String, CrashState)>,
    ) -> RunReport {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.finish();
        }
        self.timeline.guest_stopped = Some(Instant::now());
        handler.flush();
        let mut crash = None;
        let outcome = match stop {
            // Only the watchdog (None) or a sleep reaching the deadline end a run this way.
            None | Some(Stop::TimedOut) => {
                Outcome::TimedOut(self.config.timeout.unwrap_or_default())
            }
            Some(Stop::Exited(code)) => {
                self.exited = true;
                Outcome::Exited(code)
            }
            Some(Stop::BrokenPipe) => Outcome::BrokenPipe,
            Some(stop) => {
                let (text, state) = described.unwrap_or_else(|| self.crash_report(&stop));
                crash = Some(Box::new(state));
                Outcome::Crashed(text)
            }
        };
        RunReport {
            outcome,
            stats: handler.stats.clone(),
            timeline: self.timeline.clone(),
            milestones: std::mem::take(&mut handler.milestones),
            first_output: handler.first_output(),
            ram_pages_touched: None,
            crash,
        }
    }

    /// Runs until a stop; `None` means the watchdog fired, or `interrupt` was raised (by the
    /// debugger, which then interrupts `KVM_RUN` with the watchdog's signal), or, with
    /// `one_exit` (a debugger's single step), the guest made one exit it may continue from.
    fn run_loop(
        &mut self,
        handler: &mut ExitHandler,
        watchdog: Option<&Watchdog>,
        interrupt: Option<&AtomicBool>,
        one_exit: bool,
    ) -> Result<Option<Stop>, VmError> {
        loop {
            if watchdog.is_some_and(Watchdog::fired)
                || interrupt.is_some_and(|i| i.load(Ordering::SeqCst))
            {
                return Ok(None);
            }
            let exit = match self.machine.vcpu.run() {
                Ok(exit) => exit,
                Err(err) if err.errno() == libc::EINTR || err.errno() == libc::EAGAIN => continue,
                Err(source) => {
                    return Err(VmError::Kvm {
                        what: "KVM_RUN",
                        source,
                    });
                }
            };
            if self.timeline.first_exit.is_none() {
                self.timeline.first_exit = Some(Instant::now());
            }
            let exit = match exit {
                VcpuExit::IoOut(port, data) => Exit::IoOut { port, data },
                VcpuExit::IoIn(port, data) => Exit::IoIn { port, data },
                VcpuExit::MmioRead(_, data) => Exit::MmioRead { data },
                VcpuExit::MmioWrite(..) => Exit::MmioWrite,
                VcpuExit::Intr => continue,
                VcpuExit::Hlt => Exit::Hlt,
                VcpuExit::Shutdown => Exit::Shutdown,
                VcpuExit::InternalError => Exit::InternalError,
                VcpuExit::FailEntry(reason, _) => Exit::FailEntry { reason },
                VcpuExit::Exception => Exit::Other("exception"),
                VcpuExit::Debug(_) => Exit::Other("debug"),
                VcpuExit::SystemEvent(..) => Exit::Other("system event"),
                _ => Exit::Other("unexpected exit reason"),
            };
            if let Action::Stop(stop) = handler.handle(&self.machine.ram, exit) {
                return Ok(Some(stop));
            }
            if one_exit {
                return Ok(None);
            }
        }
    }

    /// What a crash report says about `stop`, and the state a core file keeps: the registers
    /// at the faulting instruction (for an exception, as they were before the stub ran).
    fn crash_report(&mut self, stop: &Stop) -> (String, CrashState) {
        let regs = self.machine.vcpu.get_regs().unwrap_or_default();
        let sregs = self.machine.vcpu.get_sregs().unwrap_or_default();
        self.describe_crash(stop, regs, sregs)
    }

    /// [`Vm::crash_report`] for the vCPU registers `regs` and `sregs` read when it stopped.
    fn describe_crash(
        &mut self,
        stop: &Stop,
        regs: kvm_bindings::kvm_regs,
        sregs: kvm_bindings::kvm_sregs,
    ) -> (String, CrashState) {
        let mut state = CrashState {
            signal: crash_signal(stop),
            regs,
            sregs,
            fxsave: self.machine.vcpu.get_xsave().ok().map(|xsave| {
                let mut area = Box::new([0u8; 512]);
                for (bytes, word) in area.chunks_exact_mut(4).zip(xsave.region) {
                    bytes.copy_from_slice(&word.to_le_bytes());
                }
                area
            }),
        };
        // Only a crash pays for parsing the symbol table and the line tables.
        let layout = Arc::clone(&self.layout);
        let symbols = Symbols::from_elf(layout.bytes());
        let lines = Lines::from_elf(layout.bytes());
        let symbolize = move |addr| {
            if stubs::contains(addr) {
                return Some("flick exception stub".to_owned());
            }
            let name = symbols.describe(addr);
            match (name, lines.describe(addr)) {
                (Some(name), Some(line)) => Some(format!("{name} at {line}")),
                (name, line) => name.or(line),
            }
        };
        let genuine_exception =
            matches!(stop, Stop::Exception { .. }) && from_exception_stub(&regs, &sregs);
        let mut report = match stop {
            Stop::Exception { .. } if !genuine_exception => {
                let err = HypercallError::ForgedCrash(if sregs.cs.dpl == 3 {
                    "ring 3"
                } else {
                    "outside the stub page"
                });
                format!("guest stopped: bad hypercall: {err}\n")
            }
            Stop::Exception { vector } => {
                let frame = crash::read_frame(&self.machine.ram, regs.rsp, *vector);
                let mut text = crash::exception_report(*vector, &regs, &sregs, frame, &symbolize);
                if let Some(frame) = frame {
                    text.push_str(&crash::backtrace(&self.machine.ram, frame.rip, regs.rbp, &symbolize));
                    state.regs = crash::regs_at_fault(&regs, &frame);
                    state.sregs.cs.selector = frame.cs as u16;
                    state.sregs.ss.selector = frame.ss as u16;
                }
                text
            }
            Stop::TripleFault => {
                "guest crashed: triple fault (KVM shutdown exit); the guest likely faulted while handling a fault\n".to_owned()
            }
            Stop::Halted => "guest crashed: the vCPU halted with interrupts off (hlt)\n".to_owned(),
            Stop::InternalError => self.internal_error_text(),
            Stop::FailEntry { reason } => {
                format!("guest crashed: VM entry failed (hardware reason {reason:#x})\n")
            }
            Stop::BadHypercall(err) => format!("guest stopped: bad hypercall: {err}\n"),
            Stop::Unexpected(what) => format!("guest crashed: unexpected VM exit ({what})\n"),
            Stop::OutputLimit(limit) => format!(
                "guest stopped: it wrote more than --max-output {} of console output\n",
                crate::size::Size(*limit)
            ),
            Stop::Exited(_)
            | Stop::TimedOut
            | Stop::Parked
            | Stop::SnapshotPoint
            | Stop::BrokenPipe
            | Stop::OutputFailed(_) => String::new(),
        };
        if !genuine_exception {
            let location = symbolize(regs.rip)
                .map(|s| format!(" <{s}>"))
                .unwrap_or_default();
            report.push_str(&format!(
                "  at rip {:#x}{location}\n  registers:\n",
                regs.rip
            ));
            crash::format_registers(&mut report, &regs);
        }
        (report, state)
    }

    fn internal_error_text(&mut self) -> String {
        let run = self.machine.vcpu.get_kvm_run();
        // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, so `internal` is the live member.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let ndata = (internal.ndata as usize).min(internal.data.len());
        let mut text = format!(
            "guest crashed: KVM internal error, suberror {}{}\n",
            internal.suberror,
            match internal.suberror {
                1 => " (emulation failure: the hypervisor could not emulate an instruction)",
                2 => " (simultaneous exceptions)",
                3 => " (delivery event)",
                _ => "",
            }
        );
        if ndata > 0 {
            let words: Vec<String> = internal.data[..ndata]
                .iter()
                .map(|d| format!("{d:#x}"))
                .collect();
            text.push_str(&format!("  data: {}\n", words.join(" ")));
        }
        if let Ok(regs) = self.machine.vcpu.get_regs() {
            let mut bytes = [0u8; 15];
            if self.machine.ram.read(regs.rip, &mut bytes).is_ok() {
                let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
                text.push_str(&format!(
                    "  instruction bytes at {:#x}: {}\n",
                    regs.rip,
                    hex.join(" ")
                ));
            }
        }
        text
    }
}

/// The signal a process would get for what stopped the guest (for gdb and core files).
fn crash_signal(stop: &Stop) -> i32 {
    match stop {
        Stop::Exception { vector } => crash::signal_for_vector(*vector),
        Stop::InternalError => libc::SIGILL,
        Stop::BadHypercall(_) | Stop::Unexpected(_) => libc::SIGSYS,
        Stop::OutputLimit(_) => libc::SIGXFSZ,
        _ => libc::SIGSEGV,
    }
}

/// Whether a crash-port write came from the VMM's own stubs: at ring 0, inside the stub page.
fn from_exception_stub(regs: &kvm_bindings::kvm_regs, sregs: &kvm_bindings::kvm_sregs) -> bool {
    sregs.cs.dpl == 0 && stubs::contains(regs.rip)
}

/// Loads a restored FPU/SSE state (a snapshot's XSAVE area).
fn load_fpu_state(vcpu: &VcpuFd, saved: &SavedVcpu) -> Result<(), VmError> {
    if !saved.xsave_is_loadable() {
        return Err(VmError::BadFpuState(None));
    }
    let xsave = saved.kvm_xsave();
    // SAFETY: KVM reads the guest's XSAVE buffer size from `xsave`, which is larger than 4096
    // bytes only for dynamically enabled features (AMX) that this process never asks for
    // (ARCH_REQ_XCOMP_GUEST_PERM); `kvm_xsave` is 4096 bytes.
    unsafe { vcpu.set_xsave(&xsave) }.map_err(|e| VmError::BadFpuState(Some(e)))
}

/// The wall clock now, and the guest's TSC at that moment as the guest will read it: the
/// vCPU's TSC as KVM keeps it. On hardware KVM that counts from the vCPU's creation (or from
/// where a reuse set it back to zero), far from the host's counter; on PVM it is the host's
/// counter. The host's counter stands in only if KVM cannot tell.
fn guest_clock(vcpu: &VcpuFd, tsc_khz: u64) -> HostClock {
    let unix_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let tsc = guest_tsc_now(vcpu, tsc_khz);
    HostClock {
        tsc_khz,
        unix_ns,
        tsc,
    }
}

/// The guest's TSC now. Where the first vCPU of this process showed that a vCPU's TSC is the
/// host's own counter (PVM, where KVM's offset changes nothing a guest reads), the host's
/// `rdtsc` is that value, read without a vCPU ioctl (~6 µs here, on every request of `vmm
/// serve`); elsewhere (hardware KVM: each vCPU's TSC counts from its creation) KVM is asked
/// each time.
fn guest_tsc_now(vcpu: &VcpuFd, tsc_khz: u64) -> u64 {
    static FOLLOWS_HOST: OnceLock<bool> = OnceLock::new();
    if FOLLOWS_HOST.get() == Some(&true) {
        return host_tsc();
    }
    match read_tsc_beside_host(vcpu, tsc_khz) {
        Ok(Some(reading)) => {
            let _ = FOLLOWS_HOST.set(reading.follows_host);
            reading.guest
        }
        _ => host_tsc(),
    }
}

/// The vCPU's TSC, and whether it is the host's own counter.
pub(super) struct TscReading {
    pub(super) guest: u64,
    pub(super) follows_host: bool,
}

/// Reads the vCPU's TSC between two reads of the host's: it is the host's counter if it lies
/// between them (give or take [`tsc_slack`]). A read held up longer than the slack (this
/// thread preempted between the two) is tried again, up to three times, so that a busy host
/// does not make PVM's TSC look like hardware KVM's. `None` if KVM reads no TSC.
pub(super) fn read_tsc_beside_host(
    vcpu: &VcpuFd,
    tsc_khz: u64,
) -> Result<Option<TscReading>, kvm_ioctls::Error> {
    let slack = tsc_slack(tsc_khz);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let before = host_tsc();
        let Some(guest) = guest_tsc(vcpu)? else {
            return Ok(None);
        };
        let after = host_tsc();
        if after.wrapping_sub(before) <= slack || attempts == 3 {
            return Ok(Some(TscReading {
                guest,
                follows_host: between(guest, before, after, slack),
            }));
        }
    }
}

/// Whether `guest` lies between the host's `before` and `after`, give or take `slack`.
fn between(guest: u64, before: u64, after: u64, slack: u64) -> bool {
    guest >= before.saturating_sub(slack) && guest <= after.saturating_add(slack)
}

/// How far a TSC read by KVM and the host's `rdtsc` may lie apart and still be one counter,
/// or how far a TSC set to zero may have run on: 10 ms of ticks at `tsc_khz`.
pub(super) fn tsc_slack(tsc_khz: u64) -> u64 {
    const TSC_SLACK_MS: u64 = 10;
    tsc_khz.max(1).saturating_mul(TSC_SLACK_MS)
}

/// The host's time-stamp counter.
pub(super) fn host_tsc() -> u64 {
    // SAFETY: rdtsc has no side effects; x86-64 always has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// `IA32_TSC`, the time-stamp counter's MSR.
pub(super) const MSR_IA32_TSC: u32 = 0x10;

/// The vCPU's TSC as KVM reads it (`KVM_GET_MSRS`); `None` if KVM reads no such MSR.
pub(super) fn guest_tsc(vcpu: &VcpuFd) -> Result<Option<u64>, kvm_ioctls::Error> {
    let entry = kvm_bindings::kvm_msr_entry {
        index: MSR_IA32_TSC,
        ..Default::default()
    };
    let Ok(mut msrs) = kvm_bindings::Msrs::from_entries(&[entry]) else {
        return Ok(None);
    };
    let read = vcpu.get_msrs(&mut msrs)?;
    Ok((read == 1).then(|| msrs.as_slice()[0].data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_a_tsc_between_two_host_reads_is_the_hosts() {
        let slack = tsc_slack(2_600_000);
        // PVM: the vCPU's TSC is the host's counter, read between the two.
        assert!(between(5_000_000_000, 4_999_999_000, 5_000_001_000, slack));
        // Hardware KVM: it counts from the vCPU's creation, far below the host's.
        assert!(!between(1_000_000, 5_000_000_000, 5_000_001_000, slack));
        // At the counter's limits nothing wraps.
        assert!(between(u64::MAX, u64::MAX - 5, u64::MAX, slack));
        assert!(between(0, 0, 10, slack));
    }

    #[test]
    fn test_tsc_slack_is_ten_ms_of_ticks_and_never_overflows() {
        assert_eq!(tsc_slack(2_600_000), 26_000_000);
        assert_eq!(tsc_slack(0), 10, "an unknown frequency still gives a slack");
        assert_eq!(tsc_slack(u64::MAX), u64::MAX);
    }
}
