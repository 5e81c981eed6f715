//! The vCPU's initial state: long mode, paging, NX, SSE, CPL 3 at the image's entry.

use super::layout::*;
use super::tables::*;
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// Segment type: execute/read, accessed.
const CODE_TYPE: u8 = 0xb;
/// Segment type: read/write, accessed.
const DATA_TYPE: u8 = 0x3;
/// System segment type: busy 64-bit TSS.
const TSS_TYPE: u8 = 0xb;

fn user_segment(selector: u16, type_: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 3,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Special registers: long mode with paging at CPL 3, SSE enabled, our GDT/IDT/TSS.
///
/// No CR4 feature bit that needs CPUID (SMEP, SMAP, UMIP, OSXSAVE) is set: the VMM does not
/// configure CPUID, and hardware KVM refuses such bits without it.
pub fn initial_sregs() -> kvm_sregs {
    let data = user_segment(USER_DS, DATA_TYPE, false);
    kvm_sregs {
        cs: user_segment(USER_CS, CODE_TYPE, true),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: kvm_segment {
            base: TSS_ADDR,
            limit: TSS_LIMIT,
            selector: TSS_SELECTOR,
            type_: TSS_TYPE,
            present: 1,
            ..Default::default()
        },
        ldt: kvm_segment {
            unusable: 1,
            ..Default::default()
        },
        gdt: kvm_bindings::kvm_dtable {
            base: GDT_ADDR,
            limit: (GDT_ENTRIES * 8 - 1) as u16,
            ..Default::default()
        },
        idt: kvm_bindings::kvm_dtable {
            base: IDT_ADDR,
            limit: (abi::exception::VECTORS * 16 - 1) as u16,
            ..Default::default()
        },
        cr0: CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG,
        cr3: PML4_ADDR,
        cr4: CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT,
        efer: EFER_LME | EFER_LMA | EFER_NXE,
        ..Default::default()
    }
}

/// General registers: `RIP` = entry, `RSP` = stack top, `RDI` = boot info, interrupts off.
pub fn initial_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: STACK_TOP,
        rdi: BOOT_INFO_ADDR,
        rflags: 0x2,
        ..Default::default()
    }
}
