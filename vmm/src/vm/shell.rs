//! The KVM side of a guest, created before its image or snapshot is known: `/dev/kvm`, the VM
//! with its RAM registered as slot 0, and the vCPU with its CPUID. `vmm run` creates it on
//! one thread while another loads the target into the same RAM; `vmm serve` keeps shells ready
//! with a snapshot already mapped.

use super::{VmError, kvm_err};
use crate::arch;
use crate::memory::GuestRam;
use crate::report::Timeline;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Opens `/dev/kvm`.
pub fn open_kvm() -> Result<Arc<Kvm>, VmError> {
    Kvm::new()
        .map(Arc::new)
        .map_err(|source| VmError::OpenKvm { source })
}

/// The KVM side of a VM, the same whether it waits as a shell or runs (`Vm` owns it whole,
/// and `Vm::recycle` hands it back whole): its fields are in drop order, vCPU, then VM, then
/// RAM, then `/dev/kvm`.
pub(crate) struct Machine {
    pub(super) vcpu: VcpuFd,
    /// Held, never read: the VM lives as long as its vCPU is used.
    _vm: VmFd,
    pub(super) ram: GuestRam,
    /// Held, never read: `/dev/kvm` outlives the VMs made through it.
    _kvm: Arc<Kvm>,
    pub(super) tsc_khz: u64,
    pub(super) sync_regs: bool,
}

/// A created VM and vCPU around guest RAM, not yet given registers.
pub struct VmShell {
    pub(super) machine: Machine,
    /// Drawn afresh for every shell, a reused VM's included.
    pub(super) random_seed: u64,
}

impl VmShell {
    /// Creates the VM around `ram`, opening `/dev/kvm` for it.
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
        // outlives the VM (field order in `Machine` drops the VM first).
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
        Ok(VmShell::around(Machine {
            vcpu,
            _vm: vm,
            ram,
            _kvm: kvm,
            tsc_khz,
            sync_regs,
        }))
    }

    /// A shell around `machine` (a new one, or a reused VM's), with a fresh random seed.
    pub(super) fn around(machine: Machine) -> Self {
        VmShell {
            machine,
            random_seed: random_seed(),
        }
    }

    /// Guest RAM.
    pub fn ram(&self) -> &GuestRam {
        &self.machine.ram
    }
}

/// 64 fresh random bits from the kernel (zero if it cannot give them).
fn random_seed() -> u64 {
    let mut seed = [0u8; 8];
    // SAFETY: getrandom writes at most 8 bytes into our buffer.
    unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), libc::GRND_NONBLOCK) };
    u64::from_le_bytes(seed)
}

/// Measures the TSC against the host's monotonic clock (when KVM cannot tell its frequency).
fn calibrate_tsc_khz() -> u64 {
    let start = Instant::now();
    // SAFETY: rdtsc has no side effects.
    let tsc0 = unsafe { core::arch::x86_64::_rdtsc() };
    std::thread::sleep(Duration::from_millis(2));
    // SAFETY: as above.
    let tsc1 = unsafe { core::arch::x86_64::_rdtsc() };
    let ns = start.elapsed().as_nanos().max(1);
    // In u128: ticks × 10⁶ overflows u64 for a counter that went backwards (wrapping) or far.
    let khz = u128::from(tsc1.wrapping_sub(tsc0)) * 1_000_000 / ns;
    u64::try_from(khz).unwrap_or(u64::MAX)
}
