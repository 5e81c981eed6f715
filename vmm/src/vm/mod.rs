//! One microVM: KVM setup, the vCPU run loop, and the watchdog behind `--timeout`.
//!
//! The run loop translates each KVM exit into an [`Exit`] and lets the [`ExitHandler`]
//! decide; it only fetches registers (two vCPU ioctls) when the guest crashed.

use crate::arch::{self, HostClock, regs};
use crate::crash;
use crate::exit::{Action, Console, Exit, ExitHandler, ExitStats, Stop};
use crate::image::Image;
use crate::memory::GuestRam;
use crate::timeline::Timeline;
pub use crate::watchdog::Watchdog;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Cap, Kvm, SyncReg, VcpuExit, VcpuFd, VmFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Errors that keep a guest from starting.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {source}{hint}", hint = kvm_open_hint(source.errno()))]
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

/// How the guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The app exited with this code.
    Exited(i32),
    /// `--timeout` stopped it.
    TimedOut(Duration),
    /// It crashed; the report says how.
    Crashed(String),
}

impl Outcome {
    /// The `vmm` process exit status for this outcome.
    pub fn exit_status(&self) -> i32 {
        match self {
            Outcome::Exited(code) => code & 0xff,
            Outcome::TimedOut(_) => abi::exit_status::TIMEOUT,
            Outcome::Crashed(_) => abi::exit_status::CRASH,
        }
    }
}

/// Everything a finished run reports.
#[derive(Debug)]
pub struct RunReport {
    /// How the guest ended.
    pub outcome: Outcome,
    /// Exit counts.
    pub stats: ExitStats,
    /// Phase instants.
    pub timeline: Timeline,
    /// Boot milestones reported by the guest.
    pub milestones: Vec<(u32, Instant)>,
    /// First console output.
    pub first_output: Option<Instant>,
    /// Guest RAM pages resident after the run (when measured).
    pub ram_pages_touched: Option<u64>,
}

/// What the vCPU starts from.
enum Start<'a> {
    /// A fresh boot at the image's entry.
    Boot,
    /// The saved state of a snapshot.
    Snapshot(&'a crate::snapshot::Snapshot),
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

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest RAM in bytes (validated by the caller against the image).
    pub mem_size: u64,
    /// Stop the guest after this long.
    pub timeout: Option<Duration>,
    /// Arguments; the first is the image's name.
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
    pub snapshot: bool,
}

/// A created VM, ready to run.
pub struct Vm {
    // Field order is drop order: vCPU, then VM, then RAM, then /dev/kvm.
    vcpu: VcpuFd,
    _vm: VmFd,
    ram: GuestRam,
    _kvm: Arc<Kvm>,
    image: Arc<Image>,
    timeout: Option<Duration>,
    seccomp: bool,
    debug_blocked_syscall: bool,
    max_output: u64,
    timeline: Timeline,
    handler: Option<ExitHandler>,
    watchdog: Option<Watchdog>,
    snapshot_mode: bool,
    com1_pending: Vec<u8>,
}

/// Opens `/dev/kvm`.
pub fn open_kvm() -> Result<Arc<Kvm>, VmError> {
    Kvm::new()
        .map(Arc::new)
        .map_err(|source| VmError::OpenKvm { source })
}

/// The KVM side of a guest, created before its image is known: `/dev/kvm`, the VM with its RAM
/// registered, and the vCPU with its CPUID. [`crate::run`] creates it while another thread
/// loads the image into the same RAM.
pub struct VmShell {
    vcpu: VcpuFd,
    vm: VmFd,
    ram: GuestRam,
    kvm: Arc<Kvm>,
    tsc_khz: u64,
    sync_regs: bool,
    random_seed: u64,
}

impl VmShell {
    /// Creates the VM around `ram`.
    pub fn create(ram: GuestRam, timeline: &mut Timeline) -> Result<Self, VmError> {
        let kvm = open_kvm()?;
        timeline.kvm_opened = Some(Instant::now());
        Self::create_with(kvm, ram, timeline)
    }

    /// Creates the VM around `ram` through an open `/dev/kvm` (shared by many VMs).
    pub fn create_with(
        kvm: Arc<Kvm>,
        ram: GuestRam,
        timeline: &mut Timeline,
    ) -> Result<Self, VmError> {
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        timeline.vm_created = Some(Instant::now());
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: ram.size(),
            userspace_addr: ram.host_address(),
        };
        // SAFETY: the region is a live anonymous mapping of exactly `memory_size` bytes that
        // outlives the VM (field order in `Vm` drops the VM first).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        timeline.ram_ready = Some(Instant::now());
        let vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        vcpu.set_cpuid2(arch::cpuid::guest_cpuid())
            .map_err(kvm_err("KVM_SET_CPUID2"))?;
        let tsc_khz = vcpu
            .get_tsc_khz()
            .map_or_else(|_| calibrate_tsc_khz(), u64::from);
        let sync_regs = kvm.check_extension(Cap::SyncRegs);
        timeline.vcpu_created = Some(Instant::now());
        Ok(VmShell {
            vcpu,
            vm,
            ram,
            kvm,
            tsc_khz,
            sync_regs,
            random_seed: random_seed(),
        })
    }
}

impl Vm {
    /// Creates the VM for `image`: loads it into fresh RAM, then creates the KVM side.
    pub fn new(image: Arc<Image>, config: &VmConfig, timeline: Timeline) -> Result<Self, VmError> {
        Self::new_with(open_kvm()?, image, config, timeline)
    }

    /// Like [`Vm::new`], through an open `/dev/kvm` (shared by many VMs).
    pub fn new_with(
        kvm: Arc<Kvm>,
        image: Arc<Image>,
        config: &VmConfig,
        mut timeline: Timeline,
    ) -> Result<Self, VmError> {
        let ram = GuestRam::new(config.mem_size)?;
        arch::load_image(&ram, &image)?;
        timeline.image_loaded = Some(Instant::now());
        let shell = VmShell::create_with(kvm, ram, &mut timeline)?;
        Self::from_shell(shell, image, config, timeline)
    }

    /// The state `vmm snapshot` saves, read from a guest stopped at its snapshot point.
    pub fn capture(&mut self) -> Result<crate::snapshot::SavedState, VmError> {
        let regs = self.vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
        let sregs = self.vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        let xsave = self.vcpu.get_xsave().map_err(kvm_err("KVM_GET_XSAVE"))?;
        let xsave_bytes = xsave.region.iter().flat_map(|w| w.to_le_bytes()).collect();
        let com1_pending = self
            .handler
            .as_ref()
            .map(ExitHandler::com1_pending)
            .unwrap_or_default();
        Ok(crate::snapshot::SavedState {
            regs,
            sregs,
            xsave: xsave_bytes,
            com1_pending,
        })
    }

    /// Finishes a VM whose RAM holds `snapshot` (see [`crate::snapshot::Snapshot::map_into`]):
    /// rewrites boot info for this run and resumes the saved registers after the snapshot
    /// hypercall, with `rax` = 1.
    pub fn from_snapshot(
        shell: VmShell,
        snapshot: &crate::snapshot::Snapshot,
        layout: Arc<Image>,
        config: &VmConfig,
        timeline: Timeline,
    ) -> Result<Self, VmError> {
        Self::assemble(shell, Start::Snapshot(snapshot), layout, config, timeline)
    }

    /// Stops enforcing the timeout (a parked guest may be resumed on another thread).
    pub fn disarm_watchdog(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.finish();
        }
    }

    /// Finishes a VM whose RAM already holds `image` (see [`arch::load_image`]): writes the
    /// boot info and hands the initial registers to the vCPU.
    pub fn from_shell(
        shell: VmShell,
        image: Arc<Image>,
        config: &VmConfig,
        timeline: Timeline,
    ) -> Result<Self, VmError> {
        Self::assemble(shell, Start::Boot, image, config, timeline)
    }

    fn assemble(
        shell: VmShell,
        start: Start<'_>,
        image: Arc<Image>,
        config: &VmConfig,
        mut timeline: Timeline,
    ) -> Result<Self, VmError> {
        let VmShell {
            mut vcpu,
            vm,
            ram,
            kvm,
            tsc_khz,
            sync_regs,
            random_seed,
        } = shell;
        let args: Vec<&str> = config.args.iter().map(String::as_str).collect();
        let env: Vec<&str> = config.env.iter().map(String::as_str).collect();
        let mut params = arch::RunParams {
            args: &args,
            env: &env,
            clock: host_clock(tsc_khz),
            flags: if config.snapshot {
                abi::boot_flags::SNAPSHOT
            } else {
                0
            },
            random_seed,
        };
        let (regs, com1_pending) = match start {
            Start::Boot => {
                arch::write_boot_info(&ram, &image, params)?;
                (regs::initial_regs(image.entry()), Vec::new())
            }
            Start::Snapshot(snapshot) => {
                params.flags = abi::boot_flags::SNAPSHOT | abi::boot_flags::RESTORED;
                arch::rewrite_boot_info(&ram, params)?;
                let saved = snapshot.state();
                (
                    crate::snapshot::restored_regs(&saved.regs),
                    saved.com1_pending.clone(),
                )
            }
        };
        // The special registers are always the VMM's own, never a snapshot's.
        let sregs = regs::initial_sregs();
        if sync_regs {
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
            vcpu,
            _vm: vm,
            ram,
            _kvm: kvm,
            image,
            timeout: config.timeout,
            seccomp: config.seccomp,
            debug_blocked_syscall: config.debug_blocked_syscall,
            max_output: config.max_output,
            timeline,
            handler: None,
            watchdog: None,
            snapshot_mode: config.snapshot,
            com1_pending,
        })
    }

    /// Guest RAM.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
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
        let mut handler = ExitHandler::new(console);
        handler.deadline = self.timeout.map(|t| Instant::now() + t);
        handler.max_output = self.max_output;
        handler.snapshot_mode = self.snapshot_mode;
        handler.restore_com1_pending(&std::mem::take(&mut self.com1_pending));
        self.handler = Some(handler);
        self.watchdog = watchdog.or_else(|| {
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() };
            self.timeout.map(|t| Watchdog::start(t, me, self.seccomp))
        });
        if self.seccomp {
            crate::sandbox::confine_this_thread()?;
            if self.debug_blocked_syscall {
                // SAFETY: a harmless call that the filter blocks, to show the report.
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            }
        }
        self.resume()
    }

    /// Continues a parked guest until it stops or parks again.
    pub fn resume(&mut self) -> Result<Progress, VmError> {
        let mut handler = self.handler.take().expect("resume() after start()");
        let watchdog = self.watchdog.take();
        let stop = self.run_loop(&mut handler, watchdog.as_ref());
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
            _ => {}
        }
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.finish();
        }
        self.timeline.guest_stopped = Some(Instant::now());
        handler.flush();
        let outcome = match stop? {
            // Only the watchdog (None) or a sleep reaching the deadline end a run this way.
            None | Some(Stop::TimedOut) => Outcome::TimedOut(self.timeout.unwrap_or_default()),
            Some(Stop::Exited(code)) => Outcome::Exited(code),
            Some(stop) => Outcome::Crashed(self.crash_report(&stop)),
        };
        Ok(Progress::Finished(Box::new(RunReport {
            outcome,
            stats: handler.stats.clone(),
            timeline: self.timeline.clone(),
            milestones: std::mem::take(&mut handler.milestones),
            first_output: handler.first_output,
            ram_pages_touched: None,
        })))
    }

    /// Runs until a stop; `None` means the watchdog fired.
    fn run_loop(
        &mut self,
        handler: &mut ExitHandler,
        watchdog: Option<&Watchdog>,
    ) -> Result<Option<Stop>, VmError> {
        loop {
            if watchdog.is_some_and(Watchdog::fired) {
                return Ok(None);
            }
            let exit = match self.vcpu.run() {
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
            let action = match exit {
                VcpuExit::IoOut(port, data) => {
                    handler.handle(&self.ram, Exit::IoOut { port, data })
                }
                VcpuExit::IoIn(port, data) => handler.handle(&self.ram, Exit::IoIn { port, data }),
                VcpuExit::MmioRead(addr, data) => {
                    handler.handle(&self.ram, Exit::MmioRead { addr, data })
                }
                VcpuExit::MmioWrite(addr, _) => handler.handle(&self.ram, Exit::MmioWrite { addr }),
                VcpuExit::Intr => continue,
                VcpuExit::Hlt => handler.handle(&self.ram, Exit::Hlt),
                VcpuExit::Shutdown => handler.handle(&self.ram, Exit::Shutdown),
                VcpuExit::InternalError => handler.handle(&self.ram, Exit::InternalError),
                VcpuExit::FailEntry(reason, _) => {
                    handler.handle(&self.ram, Exit::FailEntry { reason })
                }
                VcpuExit::Exception => handler.handle(&self.ram, Exit::Other("exception")),
                VcpuExit::Debug(_) => handler.handle(&self.ram, Exit::Other("debug")),
                VcpuExit::SystemEvent(..) => handler.handle(&self.ram, Exit::Other("system event")),
                _ => handler.handle(&self.ram, Exit::Other("unexpected exit reason")),
            };
            if let Action::Stop(stop) = action {
                return Ok(Some(stop));
            }
        }
    }

    fn crash_report(&mut self, stop: &Stop) -> String {
        let regs = self.vcpu.get_regs().unwrap_or_default();
        let sregs = self.vcpu.get_sregs().unwrap_or_default();
        // Only a crash pays for parsing the symbol table.
        let symbols = crate::symbols::Symbols::from_image(&self.image);
        let symbolize = move |addr| symbols.describe(addr);
        let mut report = match stop {
            Stop::Exception { vector } => {
                let frame = crash::read_frame(&self.ram, regs.rsp, *vector);
                let mut text = crash::exception_report(*vector, &regs, &sregs, frame, &symbolize);
                if let Some(frame) = frame {
                    text.push_str(&crash::backtrace(&self.ram, frame.rip, regs.rbp, &symbolize));
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
            Stop::Exited(_) | Stop::TimedOut | Stop::Parked | Stop::SnapshotPoint => String::new(),
        };
        if !matches!(stop, Stop::Exception { .. }) {
            let location = symbolize(regs.rip)
                .map(|s| format!(" <{s}>"))
                .unwrap_or_default();
            report.push_str(&format!(
                "  at rip {:#x}{location}\n  registers:\n",
                regs.rip
            ));
            crash::format_registers(&mut report, &regs);
        }
        report
    }

    fn internal_error_text(&mut self) -> String {
        let run = self.vcpu.get_kvm_run();
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
        if let Ok(regs) = self.vcpu.get_regs() {
            let mut bytes = [0u8; 15];
            if self.ram.read(regs.rip, &mut bytes).is_ok() {
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

/// 64 fresh random bits from the kernel (zero if it cannot give them).
pub fn random_seed() -> u64 {
    let mut seed = [0u8; 8];
    // SAFETY: getrandom writes at most 8 bytes into our buffer.
    unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), libc::GRND_NONBLOCK) };
    u64::from_le_bytes(seed)
}

/// The host clock as the guest will see it.
fn host_clock(tsc_khz: u64) -> HostClock {
    let unix_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // SAFETY: rdtsc has no side effects; x86-64 always has it.
    let tsc = unsafe { core::arch::x86_64::_rdtsc() };
    HostClock {
        tsc_khz,
        unix_ns,
        tsc,
    }
}

/// Measures the TSC against the host's monotonic clock (when KVM cannot tell its frequency).
fn calibrate_tsc_khz() -> u64 {
    let start = Instant::now();
    // SAFETY: rdtsc has no side effects.
    let tsc0 = unsafe { core::arch::x86_64::_rdtsc() };
    std::thread::sleep(Duration::from_millis(2));
    // SAFETY: as above.
    let tsc1 = unsafe { core::arch::x86_64::_rdtsc() };
    let ns = start.elapsed().as_nanos().max(1) as u64;
    tsc1.wrapping_sub(tsc0) * 1_000_000 / ns
}
