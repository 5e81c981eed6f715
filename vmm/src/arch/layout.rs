//! Where everything lives in guest-physical memory (identity-mapped, so also the guest's
//! virtual addresses). Every guest address the VMM uses is a constant here.
//!
//! ```text
//! 0x0000_0000  null page                      unmapped
//! 0x0000_1000  GDT, IDT, TSS + I/O bitmap      supervisor RW (one page: one fault, not three)
//! 0x0000_2000  exception stubs (the VMM's)    supervisor RX (the only ring-0 code)
//! 0x0000_4000  ring-0 stack (RSP0), 8 KiB     supervisor RW
//! 0x0000_6000  double-fault stack (IST1)      supervisor RW
//! 0x0000_8000  page tables                    unmapped
//! 0x0003_0000  boot info + arguments, 64 KiB  user RO
//! 0x000f_f000  stack guard page               unmapped
//! 0x0010_0000  stack, 1 MiB                   user RW
//! 0x0020_0000  image segments                 as the ELF says (W^X)
//! image end    heap, up to the end of RAM     user RW
//! ```

/// Size of a small page.
pub const PAGE_SIZE: u64 = 0x1000;
/// Size of a large page.
pub const LARGE_PAGE_SIZE: u64 = 0x20_0000;

/// The page holding the GDT, IDT and TSS.
pub const SYSTEM_TABLES_PAGE: u64 = 0x1000;
/// Global descriptor table (7 slots).
pub const GDT_ADDR: u64 = 0x1000;
/// Interrupt descriptor table (32 gates, 512 bytes).
pub const IDT_ADDR: u64 = 0x1200;
/// Task-state segment, followed by its I/O permission bitmap (under 300 bytes).
pub const TSS_ADDR: u64 = 0x1800;
/// The page of exception stubs, written by the VMM (see `arch::stubs`).
pub const STUBS_ADDR: u64 = 0x2000;
/// Bottom of the ring-0 stack that exceptions from ring 3 switch to.
pub const RING0_STACK_BOTTOM: u64 = 0x4000;
/// Top of the ring-0 stack (TSS.RSP0).
pub const RING0_STACK_TOP: u64 = 0x6000;
/// Top of the double-fault stack (TSS.IST1); it spans the page below.
pub const DOUBLE_FAULT_STACK_TOP: u64 = 0x7000;

/// The level-4 table (CR3).
pub const PML4_ADDR: u64 = 0x8000;
/// The one level-3 table (covers 512 GiB).
pub const PDPT_ADDR: u64 = 0x9000;
/// The level-2 tables, one per GiB of RAM.
pub const PD_ADDR: u64 = 0xa000;
/// Maximum number of level-2 tables.
pub const MAX_PDS: u64 = 4;
/// The level-1 tables: the first maps the low 2 MiB, the others the image's 2 MiB chunks.
pub const PT_ADDR: u64 = PD_ADDR + MAX_PDS * PAGE_SIZE;
/// Maximum number of level-1 tables (so an image spans at most 62 MiB).
pub const MAX_PTS: u64 = 32;
/// End of the page-table area.
pub const PAGE_TABLES_END: u64 = PT_ADDR + MAX_PTS * PAGE_SIZE;

/// The boot-info block; the arguments follow it.
pub const BOOT_INFO_ADDR: u64 = 0x3_0000;
/// Size of the boot-info area.
pub const BOOT_INFO_SIZE: u64 = 0x1_0000;

/// The unmapped page under the stack.
pub const STACK_GUARD_ADDR: u64 = 0xf_f000;
/// Lowest address of the app stack.
pub const STACK_BOTTOM: u64 = 0x10_0000;
/// Initial stack pointer.
pub const STACK_TOP: u64 = 0x20_0000;

/// Images are linked at or above this address; below it is the VMM's.
pub const IMAGE_MIN_ADDR: u64 = 0x20_0000;

/// Smallest guest RAM.
pub const MIN_MEM_SIZE: u64 = 4 << 20;
/// Largest guest RAM: hypercall arguments are 32-bit guest-physical addresses.
pub const MAX_MEM_SIZE: u64 = 4 << 30;
/// Free RAM an image needs beyond its own segments.
pub const MIN_HEAP_SIZE: u64 = 64 << 10;

const _: () = assert!(PAGE_TABLES_END <= BOOT_INFO_ADDR);
const _: () = assert!(SYSTEM_TABLES_PAGE + PAGE_SIZE <= STUBS_ADDR);
const _: () = assert!(STUBS_ADDR + PAGE_SIZE <= RING0_STACK_BOTTOM);
const _: () = assert!(TSS_ADDR + 0x400 <= SYSTEM_TABLES_PAGE + PAGE_SIZE);
const _: () = assert!(BOOT_INFO_ADDR + BOOT_INFO_SIZE <= STACK_GUARD_ADDR);
const _: () = assert!(MAX_MEM_SIZE <= MAX_PDS << 30);
