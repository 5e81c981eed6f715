//! Reusing a VM for the next guest of the same image or snapshot (`vmm serve`, `vmm fleet`):
//! instead of destroying the VM a guest ran in and creating another, its state is returned to
//! a fresh VM's, and checked to be there, or the VM is destroyed as before.
//!
//! What a guest can see, and how each part comes back:
//! - RAM: every page the host populated is compared with a fresh VM's and rewritten where it
//!   differs (`memory::reset`); pages of the VMM's own structures must be unchanged. A reusable
//!   VM's RAM is locked in memory as it is populated (`GuestRam::lock_on_fault`), so that no
//!   page can leave for swap, where the comparison would not see it;
//! - general registers and special registers (segments, descriptor tables, control registers,
//!   EFER, FS/GS base): set by `Vm::assemble`, as for a fresh VM;
//! - the FPU, SSE and AVX state: set back to a fresh vCPU's here (`assemble` then loads a
//!   snapshot's);
//! - boot info (arguments, environment, clock) and the random seed: rewritten by `assemble`;
//!   the seed is drawn afresh here;
//! - devices (console, stdin, files, network): the port bus is built anew by `assemble`;
//! - what `assemble` does not set: pending events (exceptions, interrupts, NMIs, the interrupt
//!   shadow), debug registers, extended control registers and every MSR KVM saves for
//!   migration are read back and compared with the values of a vCPU that never ran
//!   ([`FreshVcpu`]); any difference refuses the reuse. Pending port I/O is completed first
//!   (`KVM_RUN` with `immediate_exit`), so that nothing of the last exit is left for the next
//!   entry;
//! - the TSC: where a new vCPU's counts from its creation (hardware KVM), it is set back to
//!   zero through the vCPU's TSC offset (`KVM_VCPU_TSC_OFFSET`; a write of the TSC MSR would
//!   be taken as a request to stay in step with the VM) and read back; where a new vCPU reads
//!   the host's own counter (PVM, whose guests run `rdtsc` natively), it is checked to still
//!   do so.
//!
//! What stays: the host's mappings and the hypervisor's translations of the pages the last
//! guest touched, which is the point (no page faults, no shadow page-table building on the
//! next guest's first touches). A guest can time its first touch of a page and so tell which
//! pages of the image or snapshot the guest before it touched, though not what it wrote there;
//! `--no-reuse` gives every guest a new VM where that matters.
//!
//! Only a guest that ended with its exit hypercall is reused: a crash, a timeout, a kill or a
//! closed pipe leave the vCPU mid-instruction, and such VMs are destroyed.

use super::{
    MSR_IA32_TSC, TscReading, Vm, VmShell, guest_tsc, host_tsc, read_tsc_beside_host, tsc_slack,
};
use crate::memory::reset::{Reference, ResetRefused, ResetStats};
use kvm_bindings::{
    KVM_MAX_MSR_ENTRIES, Msrs, kvm_debugregs, kvm_device_attr, kvm_msr_entry, kvm_vcpu_events,
    kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Kvm, VcpuFd};
use std::os::fd::AsRawFd;
use zerocopy::IntoBytes;

/// `KVM_VCPU_TSC_CTRL`, the vCPU attribute group of the TSC.
const KVM_VCPU_TSC_CTRL: u32 = 0;
/// `KVM_VCPU_TSC_OFFSET`, its offset.
const KVM_VCPU_TSC_OFFSET: u64 = 0;

/// Why a used VM is destroyed rather than reused.
#[derive(Debug, thiserror::Error)]
pub enum RecycleRefused {
    /// Its guest did not end with its exit hypercall.
    #[error("its guest did not exit cleanly")]
    NotExited,
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

/// How a fresh vCPU's TSC relates to the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FreshTsc {
    /// It reads the host's counter (PVM).
    FollowsHost,
    /// It counts from the vCPU's creation (hardware KVM), through an offset KVM keeps.
    Offset,
}

/// The vCPU state a fresh VM has beyond what `Vm::assemble` sets.
pub struct FreshVcpu {
    /// Loaded back (`assemble` loads only a snapshot's).
    xsave: kvm_xsave,
    events: kvm_vcpu_events,
    debug_regs: kvm_debugregs,
    xcrs: kvm_xcrs,
    /// Every MSR KVM lists for migration that a fresh vCPU can read, but the TSC.
    msrs: Vec<kvm_msr_entry>,
    tsc: FreshTsc,
    /// TSC ticks in 10 ms ([`tsc_slack`]).
    tsc_slack: u64,
    /// The TSC's frequency, kHz.
    tsc_khz: u64,
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RecycleRefused {
    move |err| RecycleRefused::Kvm(what, err)
}

impl FreshVcpu {
    /// Reads it from `shell`, whose vCPU has never run.
    pub fn capture(kvm_fd: &Kvm, shell: &VmShell) -> Result<Self, RecycleRefused> {
        let vcpu = &shell.machine.vcpu;
        let indices = kvm_fd
            .get_msr_index_list()
            .map_err(kvm("KVM_GET_MSR_INDEX_LIST"))?;
        // One at a time: KVM stops a batch at the first MSR it cannot read, and the ones after
        // it would go unchecked.
        let mut msrs = Vec::new();
        for index in indices.as_slice() {
            // The TSC counts on by itself: it is reset, not compared.
            if *index == MSR_IA32_TSC {
                continue;
            }
            let entry = kvm_msr_entry {
                index: *index,
                ..Default::default()
            };
            msrs.extend(read_msrs(vcpu, &[entry])?);
        }
        let tsc_slack = tsc_slack(shell.machine.tsc_khz);
        let tsc = if tsc_reading(vcpu, shell.machine.tsc_khz)?.follows_host {
            FreshTsc::FollowsHost
        } else {
            FreshTsc::Offset
        };
        Ok(Self {
            xsave: vcpu.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?,
            events: vcpu.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?,
            debug_regs: vcpu.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?,
            xcrs: vcpu.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?,
            msrs,
            tsc,
            tsc_slack,
            tsc_khz: shell.machine.tsc_khz,
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

    /// Gives `vcpu` a fresh vCPU's TSC (see the module documentation).
    fn reset_tsc(&self, vcpu: &VcpuFd) -> Result<(), RecycleRefused> {
        if self.tsc == FreshTsc::Offset {
            // The offset that makes the guest's TSC read zero now (KVM adds it to the host's
            // counter; a scaled TSC would not read back near zero, and is refused below).
            let offset = 0u64.wrapping_sub(host_tsc());
            let attr = kvm_device_attr {
                group: KVM_VCPU_TSC_CTRL,
                attr: KVM_VCPU_TSC_OFFSET,
                addr: std::ptr::from_ref(&offset) as u64,
                flags: 0,
            };
            // SAFETY: KVM_SET_DEVICE_ATTR reads one `kvm_device_attr` from `attr`, and through
            // it the 8-byte `offset`, both alive for the call. (kvm-ioctls offers this call on
            // aarch64 only.)
            let rc = unsafe {
                libc::ioctl(
                    vcpu.as_raw_fd(),
                    crate::sandbox::KVM_SET_DEVICE_ATTR as _,
                    &attr,
                )
            };
            if rc != 0 {
                return Err(RecycleRefused::Kvm(
                    "KVM_SET_DEVICE_ATTR (TSC offset)",
                    kvm_ioctls::Error::last(),
                ));
            }
            if read_tsc(vcpu)? >= self.tsc_slack {
                return Err(RecycleRefused::VcpuState("TSC"));
            }
        } else if !tsc_reading(vcpu, self.tsc_khz)?.follows_host {
            return Err(RecycleRefused::VcpuState("TSC"));
        }
        Ok(())
    }
}

/// The vCPU's TSC as KVM reads it.
fn read_tsc(vcpu: &VcpuFd) -> Result<u64, RecycleRefused> {
    guest_tsc(vcpu)
        .map_err(kvm("KVM_GET_MSRS"))?
        .ok_or(RecycleRefused::VcpuState("TSC (unreadable)"))
}

/// The vCPU's TSC beside the host's (see `read_tsc_beside_host`).
fn tsc_reading(vcpu: &VcpuFd, tsc_khz: u64) -> Result<TscReading, RecycleRefused> {
    read_tsc_beside_host(vcpu, tsc_khz)
        .map_err(kvm("KVM_GET_MSRS"))?
        .ok_or(RecycleRefused::VcpuState("TSC (unreadable)"))
}

/// Reads the MSRs `entries` name, in batches KVM takes; the ones read, in order (KVM stops a
/// batch at the first it cannot read).
fn read_msrs(
    vcpu: &VcpuFd,
    entries: &[kvm_msr_entry],
) -> Result<Vec<kvm_msr_entry>, RecycleRefused> {
    let mut read = Vec::with_capacity(entries.len());
    for batch in entries.chunks(KVM_MAX_MSR_ENTRIES) {
        let Ok(mut msrs) = Msrs::from_entries(batch) else {
            return Err(RecycleRefused::VcpuState("MSR batch"));
        };
        let count = vcpu.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        read.extend_from_slice(&msrs.as_slice()[..count.min(batch.len())]);
        if count < batch.len() {
            break;
        }
    }
    Ok(read)
}

/// What a reuse needs of one image or snapshot: a fresh VM's RAM and vCPU state.
pub struct Recycler {
    /// A fresh VM's RAM.
    pub reference: Reference,
    /// A fresh vCPU's state.
    pub fresh: FreshVcpu,
    /// Pages a guest may leave populated beyond a fresh VM's and still have its VM kept.
    pub max_extra_pages: usize,
}

impl Vm {
    /// Returns this VM to the state of a fresh VM of `recycler`'s image or snapshot (see the
    /// module documentation), as a shell ready for [`Vm::assemble`]; or gives it back with why
    /// it is not reused (to be destroyed). Only a VM whose guest ended with its exit hypercall
    /// is reused.
    pub fn recycle(self, recycler: &Recycler) -> Result<(VmShell, ResetStats), Box<Refusal>> {
        let mut vm = self;
        match vm.reset(recycler) {
            Ok(stats) => Ok((vm.into_shell(), stats)),
            Err(why) => Err(Box::new(Refusal { vm, why })),
        }
    }

    fn reset(&mut self, recycler: &Recycler) -> Result<ResetStats, RecycleRefused> {
        if !self.exited {
            return Err(RecycleRefused::NotExited);
        }
        // The cheap refusals first (size, lock, too many pages): before a dozen vCPU ioctls.
        let populated = recycler
            .reference
            .populated_within_bounds(&self.machine.ram, recycler.max_extra_pages)?;
        // Complete what the last exit left pending, without entering the guest.
        self.machine.vcpu.set_kvm_immediate_exit(1);
        let flushed = self.machine.vcpu.run().map(|_| ());
        self.machine.vcpu.set_kvm_immediate_exit(0);
        match flushed {
            Err(err) if err.errno() == libc::EINTR => {}
            Err(err) => return Err(RecycleRefused::Kvm("KVM_RUN (immediate exit)", err)),
            Ok(()) => return Err(RecycleRefused::VcpuState("KVM_RUN with immediate_exit")),
        }
        if let Some(what) = recycler.fresh.difference(&self.machine.vcpu)? {
            return Err(RecycleRefused::VcpuState(what));
        }
        recycler.fresh.reset_tsc(&self.machine.vcpu)?;
        let xsave = &recycler.fresh.xsave;
        // SAFETY: a 4096-byte area a fresh vCPU of this process gave (KVM_GET_XSAVE); KVM reads
        // no more (no dynamically enabled features: see `load_fpu_state`).
        unsafe { self.machine.vcpu.set_xsave(xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
        Ok(recycler.reference.rewrite(&self.machine.ram, populated)?)
    }

    fn into_shell(self) -> VmShell {
        VmShell::around(self.machine)
    }
}

/// A VM that is not reused, and why.
pub struct Refusal {
    /// The VM, to be destroyed.
    pub vm: Vm,
    /// Why.
    pub why: RecycleRefused,
}
