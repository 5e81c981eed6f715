//! The vCPU state that a snapshot carries: general registers, the special registers (kept only
//! to check that a snapshot came from a flick guest; never loaded), and the FPU/SSE state (the
//! legacy 4 KiB XSAVE area: x87, SSE, AVX and AVX-512 registers and MXCSR).
//!
//! What a restored guest may resume with is decided here too: only the RFLAGS bits a ring-3
//! guest can hold survive, and the special registers are always the VMM's own.

use crate::arch::regs;
use kvm_bindings::{kvm_regs, kvm_sregs};
use vm_memory::ByteValued;

/// Words in the legacy XSAVE area (`kvm_xsave.region`).
pub(crate) const XSAVE_WORDS: usize = 1024;

/// The saved vCPU, as one fixed-size record.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SavedVcpu {
    /// General registers at the snapshot point.
    pub regs: kvm_regs,
    /// Special registers at the snapshot point (checked, never loaded).
    pub sregs: kvm_sregs,
    /// FPU/SSE/AVX state in the standard XSAVE layout.
    pub xsave: [u32; XSAVE_WORDS],
}

// The record has no padding: ByteValued hands out every byte of it.
const _: () = assert!(
    size_of::<SavedVcpu>()
        == size_of::<kvm_regs>() + size_of::<kvm_sregs>() + XSAVE_WORDS * size_of::<u32>()
);

/// Compile-time proof that the kvm register structs are plain bytes (kvm-bindings derives
/// zerocopy's `FromBytes` and `IntoBytes`, which rule out padding and invalid bit patterns).
fn _kvm_structs_are_plain_bytes() {
    fn plain<T: zerocopy::FromBytes + zerocopy::IntoBytes>() {}
    plain::<kvm_regs>();
    plain::<kvm_sregs>();
}

// SAFETY: `#[repr(C)]`, no padding (asserted above), and every field is plain bytes (proven
// above for the kvm structs; `[u32; N]` trivially): every bit pattern is a valid value.
unsafe impl ByteValued for SavedVcpu {}

impl Default for SavedVcpu {
    fn default() -> Self {
        Self {
            regs: kvm_regs::default(),
            sregs: kvm_sregs::default(),
            xsave: [0; XSAVE_WORDS],
        }
    }
}

impl std::fmt::Debug for SavedVcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavedVcpu")
            .field("rip", &self.regs.rip)
            .field("rsp", &self.regs.rsp)
            .finish_non_exhaustive()
    }
}

/// RFLAGS bits a ring-3 guest may hold: the arithmetic flags, TF, DF, and the fixed bit 1.
/// IOPL, NT, RF, VM, AC, VIF, VIP, ID and IF are never taken from a file.
pub(crate) const GUEST_RFLAGS: u64 = 0x0cd5 | 0x2 | 0x100;

/// Offset of MXCSR in the XSAVE area, and the bits a valid MXCSR may have set.
const MXCSR_OFFSET_WORDS: usize = 6;
const MXCSR_VALID_BITS: u32 = 0xffff;

impl SavedVcpu {
    /// The registers a restored guest resumes with: the saved ones, with RFLAGS masked and
    /// `rax` set to 1 ("restored") as the snapshot hypercall's result.
    pub(crate) fn restored_regs(&self) -> kvm_regs {
        kvm_regs {
            rax: 1,
            rflags: (self.regs.rflags & GUEST_RFLAGS) | 0x2,
            ..self.regs
        }
    }

    /// Whether the saved special registers are a flick guest's (a ring-3 guest cannot change
    /// them; a snapshot whose saved ones differ was not taken by this VMM).
    pub(crate) fn is_flick_guest(&self) -> bool {
        let ours = regs::initial_sregs();
        let saved = &self.sregs;
        saved.cr0 == ours.cr0
            && saved.cr3 == ours.cr3
            && saved.cr4 == ours.cr4
            && saved.efer == ours.efer
            && saved.cs.selector == ours.cs.selector
            && saved.gdt.base == ours.gdt.base
            && saved.idt.base == ours.idt.base
            && saved.tr.base == ours.tr.base
    }

    /// Whether the XSAVE area could be loaded: MXCSR without reserved bits (the CPU would
    /// fault on them). KVM checks the rest of the header itself.
    pub(crate) fn xsave_is_loadable(&self) -> bool {
        self.xsave[MXCSR_OFFSET_WORDS] & !MXCSR_VALID_BITS == 0
    }

    /// The XSAVE area in the form `KVM_SET_XSAVE` takes.
    pub(crate) fn kvm_xsave(&self) -> kvm_bindings::kvm_xsave {
        kvm_bindings::kvm_xsave {
            region: self.xsave,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_restored_regs_drop_iopl_and_mark_restore() {
        let saved = SavedVcpu {
            regs: kvm_regs {
                rax: 0,
                rflags: 0x3202 | 0x4000 | 0x40_0000,
                rip: 0x20_1000,
                ..Default::default()
            },
            ..Default::default()
        };
        let regs = saved.restored_regs();
        assert_eq!(regs.rax, 1);
        assert_eq!(regs.rip, 0x20_1000);
        assert_eq!(regs.rflags & 0x3000, 0, "IOPL");
        assert_eq!(regs.rflags & 0x200, 0, "IF");
        assert_eq!(regs.rflags & 0x4000, 0, "NT");
        assert_ne!(regs.rflags & 0x2, 0);
    }

    #[test]
    fn test_is_flick_guest_refuses_foreign_control_registers() {
        let mut saved = SavedVcpu {
            sregs: regs::initial_sregs(),
            ..Default::default()
        };
        assert!(saved.is_flick_guest());
        saved.sregs.cr0 &= !(1 << 16); // WP off
        assert!(!saved.is_flick_guest());
    }

    #[test]
    fn test_xsave_with_reserved_mxcsr_bits_is_not_loadable() {
        let mut saved = SavedVcpu::default();
        saved.xsave[MXCSR_OFFSET_WORDS] = 0x1f80;
        assert!(saved.xsave_is_loadable());
        saved.xsave[MXCSR_OFFSET_WORDS] = 0x1_1f80;
        assert!(!saved.xsave_is_loadable());
    }

    #[test]
    fn test_saved_vcpu_round_trips_as_bytes() {
        let mut saved = SavedVcpu::default();
        saved.regs.rip = 0x1234;
        saved.xsave[8] = 0xdead_beef;
        let copy: SavedVcpu = crate::memory::value_from_bytes(saved.as_slice()).unwrap();
        assert_eq!(copy.regs.rip, 0x1234);
        assert_eq!(copy.xsave[8], 0xdead_beef);
    }
}
