//! What the debugger (`crate::debug`) needs of a VM: running it until the guest stops at an
//! exception or is interrupted, the guest's registers as the guest sees them, and resuming it.
//!
//! No `KVM_SET_GUEST_DEBUG`: every exception the guest raises at ring 3, `#BP` from a
//! breakpoint's `int3` and `#DB` from a single step (RFLAGS.TF) included, already reaches the
//! VMM through its ring-0 stubs (`arch::stubs`), on PVM and on hardware KVM alike. When one
//! does, the guest's registers are read back from the stub's frame (the CPU's interrupt frame
//! and the `rax`/`rdx` the stub saved); the guest resumes through the stub page's `iretq`, with
//! an interrupt frame the VMM writes, so that the CPU itself returns to ring 3 with the
//! guest's registers as they were (or as gdb changed them), and nothing of the stub remains.

use super::exits::{ExitHandler, Limits, Stop};
use super::vcpu_state::GUEST_RFLAGS;
use super::{Console, PortBus, Vm, VmError, from_exception_stub, kvm_err};
use crate::arch::layout::RING0_STACK_TOP;
use crate::arch::stubs;
use crate::arch::tables::{USER_CS, USER_DS};
use crate::report::Outcome;
use crate::report::RunReport;
use crate::report::crash;
use kvm_bindings::{kvm_regs, kvm_sregs, kvm_xsave};
use kvm_ioctls::SyncReg;
use std::sync::atomic::AtomicBool;

/// The trap flag: one instruction, then `#DB`.
pub(crate) const RFLAGS_TF: u64 = 1 << 8;

/// Where the guest is when it stopped.
#[derive(Debug, Clone)]
pub(crate) enum Place {
    /// At ring 3, where the vCPU itself is (before the first instruction, or interrupted).
    Ring3,
    /// In a stub, after the guest raised an exception at ring 3: the vCPU's registers are the
    /// stub's (`regs`, `sregs`, kept for a crash report); the guest's came from its frame.
    Stub {
        /// The vector.
        vector: u8,
        /// The vCPU's registers in the stub.
        regs: Box<kvm_regs>,
        /// The vCPU's special registers in the stub.
        sregs: Box<kvm_sregs>,
    },
}

/// Why [`Vm::debug_run`] returned.
#[derive(Debug)]
pub(crate) enum DebugStop {
    /// The guest raised exception `vector` at ring 3 (see [`Place::Stub`]).
    Exception {
        /// The vector.
        vector: u8,
    },
    /// The debugger interrupted it.
    Interrupted,
    /// A single step ended with an exit to the VMM (port I/O): the instruction is done.
    Stepped,
    /// It is gone (exited, crashed beyond a stub's report, or stopped by a limit).
    Finished(Box<RunReport>),
}

/// A guest under a debugger: its registers as it sees them, and where it stopped.
#[derive(Debug)]
pub(crate) struct Stopped {
    /// The guest's general registers.
    pub regs: kvm_regs,
    /// Where the vCPU is.
    pub place: Place,
}

impl Vm {
    /// Prepares the guest for a debugger: its exit handler, with no watchdog and no sandbox
    /// (the debugger's connection needs what the sandbox denies), and its registers loaded
    /// into the vCPU (a fresh VM hands them to its first `KVM_RUN` instead). The guest has not
    /// run an instruction yet.
    pub(crate) fn debug_start(&mut self, console: Console) -> Result<Stopped, VmError> {
        let limits = Limits {
            deadline: None,
            max_output: self.config.max_output,
            stop_at_snapshot_point: false,
        };
        let bus = self
            .bus
            .take()
            .unwrap_or_else(|| PortBus::new(&self.config.devices));
        self.handler = Some(ExitHandler::new(console, bus, limits));
        let dirty = self.machine.vcpu.get_kvm_run().kvm_dirty_regs;
        if dirty != 0 {
            let sync = self.machine.vcpu.sync_regs();
            self.machine
                .vcpu
                .set_sregs(&sync.sregs)
                .map_err(kvm_err("KVM_SET_SREGS"))?;
            self.machine
                .vcpu
                .set_regs(&sync.regs)
                .map_err(kvm_err("KVM_SET_REGS"))?;
            self.machine.vcpu.clear_sync_dirty_reg(SyncReg::Register);
            self.machine
                .vcpu
                .clear_sync_dirty_reg(SyncReg::SystemRegister);
        }
        Ok(Stopped {
            regs: self
                .machine
                .vcpu
                .get_regs()
                .map_err(kvm_err("KVM_GET_REGS"))?,
            place: Place::Ring3,
        })
    }

    /// Runs the guest from `stopped` (its registers possibly changed by the debugger; with
    /// `step`, for one instruction) until it raises an exception, `interrupt` is raised, or it
    /// ends. A guest that parks itself is released at once, as `vmm run` does.
    ///
    /// # Panics
    /// If called before [`Vm::debug_start`] (a bug in the caller).
    pub(crate) fn debug_run(
        &mut self,
        stopped: &Stopped,
        step: bool,
        interrupt: &AtomicBool,
    ) -> Result<(DebugStop, Option<Stopped>), VmError> {
        self.debug_resume_from(stopped, step)?;
        let mut handler = self
            .handler
            .take()
            .expect("debug_run() after debug_start()");
        let mut in_stub = false;
        loop {
            // Interrupted inside a stub, the guest runs on (with the interrupt still pending)
            // to the stub's report, one instruction away.
            let interrupt_now = (!in_stub).then_some(interrupt);
            in_stub = false;
            let stop = match self.run_loop(&mut handler, None, interrupt_now, step) {
                Ok(stop) => stop,
                Err(err) => {
                    self.handler = Some(handler);
                    return Err(err);
                }
            };
            match stop {
                Some(Stop::Parked | Stop::SnapshotPoint) => continue,
                None => {
                    let sregs = self
                        .machine
                        .vcpu
                        .get_sregs()
                        .map_err(kvm_err("KVM_GET_SREGS"))?;
                    if sregs.cs.dpl == 0 {
                        in_stub = true;
                        continue;
                    }
                    let regs = self.complete_exit()?;
                    self.handler = Some(handler);
                    let stopped = Stopped {
                        regs,
                        place: Place::Ring3,
                    };
                    let why = if step {
                        DebugStop::Stepped
                    } else {
                        DebugStop::Interrupted
                    };
                    return Ok((why, Some(stopped)));
                }
                Some(Stop::Exception { vector }) => {
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
                    let frame = from_exception_stub(&regs, &sregs)
                        .then(|| crash::read_frame(&self.machine.ram, regs.rsp, vector))
                        .flatten()
                        .filter(|frame| frame.cs & 3 == 3);
                    let Some(frame) = frame else {
                        // Forged, or from ring 0: not the guest's to debug.
                        let report = self.finish(handler, Some(Stop::Exception { vector }), None);
                        return Ok((DebugStop::Finished(Box::new(report)), None));
                    };
                    self.handler = Some(handler);
                    let stopped = Stopped {
                        regs: crash::regs_at_fault(&regs, &frame),
                        place: Place::Stub {
                            vector,
                            regs: Box::new(regs),
                            sregs: Box::new(sregs),
                        },
                    };
                    return Ok((DebugStop::Exception { vector }, Some(stopped)));
                }
                other => {
                    let report = self.finish(handler, other, None);
                    return Ok((DebugStop::Finished(Box::new(report)), None));
                }
            }
        }
    }

    /// Finishes the instruction of the last exit, if one is pending (KVM advances `rip` past
    /// an `out` when it next enters the guest), without running anything else: one `KVM_RUN`
    /// with `immediate_exit`, with the trap flag cleared first. KVM would raise the single
    /// step's `#DB` on completing the instruction on hardware (not on PVM), which would then
    /// stop the guest again before it runs anything. Returns the guest's registers.
    fn complete_exit(&mut self) -> Result<kvm_regs, VmError> {
        let mut regs = self
            .machine
            .vcpu
            .get_regs()
            .map_err(kvm_err("KVM_GET_REGS"))?;
        if regs.rflags & RFLAGS_TF != 0 {
            regs.rflags &= !RFLAGS_TF;
            self.machine
                .vcpu
                .set_regs(&regs)
                .map_err(kvm_err("KVM_SET_REGS"))?;
        }
        self.machine.vcpu.set_kvm_immediate_exit(1);
        let ran = self.machine.vcpu.run().map(|_| ());
        self.machine.vcpu.set_kvm_immediate_exit(0);
        match ran {
            Err(err) if err.errno() != libc::EINTR => {
                return Err(VmError::Kvm {
                    what: "KVM_RUN",
                    source: err,
                });
            }
            _ => {}
        }
        self.machine
            .vcpu
            .get_regs()
            .map_err(kvm_err("KVM_GET_REGS"))
    }

    /// Puts the guest's registers back into the vCPU: directly at ring 3, or, from a stub,
    /// through the stub page's `iretq` and an interrupt frame written on the ring-0 stack.
    fn debug_resume_from(&mut self, stopped: &Stopped, step: bool) -> Result<(), VmError> {
        let mut guest = stopped.regs;
        guest.rflags = (guest.rflags & GUEST_RFLAGS & !RFLAGS_TF) | 0x2;
        if step {
            guest.rflags |= RFLAGS_TF;
        }
        let regs = match stopped.place {
            Place::Ring3 => guest,
            Place::Stub { .. } => {
                let frame = RING0_STACK_TOP - 5 * 8;
                let words = [
                    guest.rip,
                    u64::from(USER_CS),
                    guest.rflags,
                    guest.rsp,
                    u64::from(USER_DS),
                ];
                let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
                self.machine.ram.write(frame, &bytes)?;
                kvm_regs {
                    rip: stubs::resume_address(),
                    rsp: frame,
                    rflags: 0x2,
                    ..guest
                }
            }
        };
        self.machine
            .vcpu
            .set_regs(&regs)
            .map_err(kvm_err("KVM_SET_REGS"))
    }

    /// Ends a guest that stopped in a stub as a crash (gdb let the signal through): the report
    /// and core file say what they would have said without a debugger.
    ///
    /// # Panics
    /// If called before [`Vm::debug_start`].
    pub(crate) fn debug_crash(&mut self, stopped: &Stopped) -> RunReport {
        let handler = self
            .handler
            .take()
            .expect("debug_crash() after debug_start()");
        let Place::Stub {
            vector,
            ref regs,
            ref sregs,
        } = stopped.place
        else {
            return self.finish(handler, Some(Stop::Unexpected("debugger")), None);
        };
        let stop = Stop::Exception { vector };
        let described = self.describe_crash(&stop, **regs, **sregs);
        self.finish(handler, Some(stop), Some(described))
    }

    /// Ends a guest the debugger killed.
    ///
    /// # Panics
    /// If called before [`Vm::debug_start`].
    pub(crate) fn debug_kill(&mut self) -> RunReport {
        let handler = self
            .handler
            .take()
            .expect("debug_kill() after debug_start()");
        let mut report = self.finish(handler, Some(Stop::Exited(0)), None);
        report.outcome = Outcome::Killed;
        report
    }

    /// The guest's x87/SSE/AVX state (the stubs never touch it).
    pub(crate) fn debug_xsave(&self) -> Result<kvm_xsave, VmError> {
        self.machine
            .vcpu
            .get_xsave()
            .map_err(kvm_err("KVM_GET_XSAVE"))
    }

    /// Loads a changed x87/SSE state.
    pub(crate) fn debug_set_xsave(&self, xsave: &kvm_xsave) -> Result<(), VmError> {
        // SAFETY: `kvm_xsave` is the legacy 4 KiB area, which is what KVM reads without
        // dynamically enabled features (AMX), which this process never asks for.
        unsafe { self.machine.vcpu.set_xsave(xsave) }.map_err(|e| VmError::BadFpuState(Some(e)))
    }
}
