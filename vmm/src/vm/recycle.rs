//! Reusing a VM for the next request of the same snapshot (`vmm serve`): instead of destroying
//! the VM a request ran in and creating another, its state is returned to a fresh VM's, and
//! proven to be there, or the VM is destroyed as before.
//!
//! What a guest can see, and how each part comes back:
//! - RAM: every page the host populated is compared with a fresh VM's and rewritten where it
//!   differs (`memory::reset`); pages of the VMM's own structures must be unchanged;
//! - general registers and special registers (segments, descriptor tables, control registers,
//!   EFER, FS/GS base): set by `Vm::assemble`, as for a fresh VM;
//! - the FPU/SSE state: set back to a fresh vCPU's here (`assemble` then loads a snapshot's);
//! - boot info (arguments, environment, clock) and the random seed: rewritten by `assemble`;
//!   the seed is drawn afresh here;
//! - devices (console, stdin, files, network): the port bus is built anew by `assemble`;
//! - what `assemble` does not set: pending events (exceptions, interrupts, NMIs, the interrupt
//!   shadow), debug registers, extended control registers and every MSR KVM saves for
//!   migration are read back and compared with the values of a vCPU that never ran
//!   ([`FreshVcpu`]); any difference refuses the reuse. Pending port I/O is completed first
//!   (`KVM_RUN` with `immediate_exit`), so that nothing of the last exit is left for the next
//!   entry. The TSC, which counts on by itself, is set back to zero, where a new vCPU's starts.
//!
//! Only a guest that ended with its exit hypercall is reused (the caller checks): a crash, a
//! timeout, a kill or a closed pipe leave the vCPU mid-instruction, and such VMs are destroyed.

use super::{Vm, VmShell, shell};
use crate::memory::reset::{Reference, ResetRefused, ResetStats};
use kvm_bindings::{Msrs, kvm_debugregs, kvm_msr_entry, kvm_vcpu_events, kvm_xcrs, kvm_xsave};
use kvm_ioctls::{Kvm, VcpuFd};
use zerocopy::IntoBytes;

/// The time-stamp counter's MSR: it counts on by itself, so it is reset, not compared.
const MSR_IA32_TSC: u32 = 0x10;

/// Why a used VM is destroyed rather than reused.
#[derive(Debug, thiserror::Error)]
pub enum RecycleRefused {
    /// Its RAM cannot be (or is not worth being) returned to a fresh VM's.
    #[error(transparent)]
    Memory(#[from] ResetRefused),
    /// A part of the vCPU's state differs from a fresh vCPU's.
    #[error("its vCPU's {0} differ from a fresh vCPU's")]
    VcpuState(&'static str),
    /// A KVM call failed.
    #[error("{0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
}

/// The vCPU state a fresh VM has beyond what `Vm::assemble` sets.
pub struct FreshVcpu {
    /// Loaded back (`assemble` loads only a snapshot's).
    xsave: kvm_xsave,
    events: kvm_vcpu_events,
    debug_regs: kvm_debugregs,
    xcrs: kvm_xcrs,
    /// Every MSR KVM lists for migration that this vCPU could read, but the TSC.
    msrs: Vec<kvm_msr_entry>,
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RecycleRefused {
    move |err| RecycleRefused::Kvm(what, err)
}

impl FreshVcpu {
    /// Reads it from `shell`, whose vCPU has never run.
    pub fn capture(kvm_fd: &Kvm, shell: &VmShell) -> Result<Self, RecycleRefused> {
        let indices = kvm_fd
            .get_msr_index_list()
            .map_err(kvm("KVM_GET_MSR_INDEX_LIST"))?;
        let entries: Vec<kvm_msr_entry> = indices
            .as_slice()
            .iter()
            .filter(|index| **index != MSR_IA32_TSC)
            .map(|index| kvm_msr_entry {
                index: *index,
                ..Default::default()
            })
            .collect();
        let msrs = read_msrs(&shell.vcpu, &entries)?;
        Ok(Self {
            xsave: shell.vcpu.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?,
            events: shell
                .vcpu
                .get_vcpu_events()
                .map_err(kvm("KVM_GET_VCPU_EVENTS"))?,
            debug_regs: shell
                .vcpu
                .get_debug_regs()
                .map_err(kvm("KVM_GET_DEBUGREGS"))?,
            xcrs: shell.vcpu.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?,
            msrs,
        })
    }

    /// What of `vcpu`'s state differs from this fresh one's, if anything.
    fn difference(&self, vcpu: &VcpuFd) -> Result<Option<&'static str>, RecycleRefused> {
        let events = vcpu.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?;
        if events.as_bytes() != self.events.as_bytes() {
            return Ok(Some("pending events"));
        }
        let debug_regs = vcpu.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?;
        if debug_regs.as_bytes() != self.debug_regs.as_bytes() {
            return Ok(Some("debug registers"));
        }
        let xcrs = vcpu.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?;
        if xcrs.as_bytes() != self.xcrs.as_bytes() {
            return Ok(Some("extended control registers"));
        }
        let msrs = read_msrs(vcpu, &self.msrs)?;
        let same = msrs.len() == self.msrs.len()
            && msrs
                .iter()
                .zip(&self.msrs)
                .all(|(now, fresh)| now.index == fresh.index && now.data == fresh.data);
        if !same {
            return Ok(Some("MSRs"));
        }
        Ok(None)
    }
}

/// Reads the MSRs `entries` name; the ones read, in order (KVM stops at the first it cannot).
fn read_msrs(
    vcpu: &VcpuFd,
    entries: &[kvm_msr_entry],
) -> Result<Vec<kvm_msr_entry>, RecycleRefused> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let mut msrs = Msrs::from_entries(entries)
        .map_err(|_| RecycleRefused::VcpuState("MSR list (too long)"))?;
    let read = vcpu.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
    Ok(msrs.as_slice()[..read.min(entries.len())].to_vec())
}

/// What a reuse needs of one snapshot: a fresh VM's RAM and vCPU state.
pub struct Recycler {
    /// A fresh VM's RAM.
    pub reference: Reference,
    /// A fresh vCPU's state.
    pub fresh: FreshVcpu,
    /// Pages a request may leave populated beyond the snapshot's and still have its VM kept.
    pub max_extra_pages: usize,
}

impl Vm {
    /// Returns this VM, whose guest ended with its exit hypercall, to the state of a fresh VM
    /// of `recycler`'s image or snapshot (see the module documentation), as a shell ready for
    /// [`Vm::assemble`]; or gives it back with why it is not reused (to be destroyed).
    pub fn recycle(self, recycler: &Recycler) -> Result<(VmShell, ResetStats), Box<Refusal>> {
        let mut vm = self;
        match vm.reset(recycler) {
            Ok(stats) => Ok((vm.into_shell(), stats)),
            Err(why) => Err(Box::new(Refusal { vm, why })),
        }
    }

    fn reset(&mut self, recycler: &Recycler) -> Result<ResetStats, RecycleRefused> {
        // Complete what the last exit left pending, without entering the guest.
        self.vcpu.set_kvm_immediate_exit(1);
        let flushed = self.vcpu.run().map(|_| ());
        self.vcpu.set_kvm_immediate_exit(0);
        match flushed {
            Err(err) if err.errno() == libc::EINTR => {}
            Err(err) => return Err(RecycleRefused::Kvm("KVM_RUN (immediate exit)", err)),
            Ok(()) => return Err(RecycleRefused::VcpuState("KVM_RUN with immediate_exit")),
        }
        if let Some(what) = recycler.fresh.difference(&self.vcpu)? {
            return Err(RecycleRefused::VcpuState(what));
        }
        let tsc = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_IA32_TSC,
            ..Default::default()
        }])
        .map_err(|_| RecycleRefused::VcpuState("TSC"))?;
        if self.vcpu.set_msrs(&tsc).map_err(kvm("KVM_SET_MSRS"))? != 1 {
            return Err(RecycleRefused::VcpuState("TSC"));
        }
        let xsave = &recycler.fresh.xsave;
        // SAFETY: a 4096-byte area a fresh vCPU of this process gave (KVM_GET_XSAVE); KVM reads
        // no more (no dynamically enabled features: see `load_fpu_state`).
        unsafe { self.vcpu.set_xsave(xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
        Ok(recycler
            .reference
            .restore(&self.ram, recycler.max_extra_pages)?)
    }

    fn into_shell(self) -> VmShell {
        let Vm {
            vcpu,
            _vm: vm,
            ram,
            _kvm: kvm,
            tsc_khz,
            sync_regs,
            ..
        } = self;
        VmShell {
            vcpu,
            vm,
            ram,
            kvm,
            tsc_khz,
            sync_regs,
            random_seed: shell::random_seed(),
        }
    }
}

/// A VM that is not reused, and why.
pub struct Refusal {
    /// The VM, to be destroyed.
    pub vm: Vm,
    /// Why.
    pub why: RecycleRefused,
}
