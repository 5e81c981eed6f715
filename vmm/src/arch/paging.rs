//! Identity page tables with least privilege.
//!
//! 2 MiB pages for the heap; 4 KiB pages for the low 2 MiB (null page and stack guard
//! unmapped, system structures and the VMM's exception stubs supervisor-only) and for the
//! image's 2 MiB chunks (code read-only, data non-executable). The page tables themselves are
//! not mapped at all.

use super::layout::*;
use crate::memory::image::Image;
use crate::memory::{GuestRam, MemoryError};

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
const HUGE: u64 = 1 << 7;
const NO_EXECUTE: u64 = 1 << 63;

const TABLE: u64 = PRESENT | WRITABLE | USER | ACCESSED;
const SUPERVISOR_RW: u64 = PRESENT | WRITABLE | ACCESSED | DIRTY | NO_EXECUTE;
const SUPERVISOR_RX: u64 = PRESENT | ACCESSED;
const USER_RW: u64 = PRESENT | WRITABLE | USER | ACCESSED | DIRTY | NO_EXECUTE;
const USER_RO: u64 = PRESENT | USER | ACCESSED | NO_EXECUTE;

const ENTRIES: usize = 512;
type Table = [u64; ENTRIES];

/// Writes the page tables for `image` in RAM of `ram.size()` bytes.
pub(crate) fn write_page_tables(ram: &GuestRam, image: &Image) -> Result<(), MemoryError> {
    let chunks = ram.size() / LARGE_PAGE_SIZE;
    let gibs = ram.size().div_ceil(1 << 30);
    let first_image_chunk = image.segments()[0].addr / LARGE_PAGE_SIZE;
    let last_image_chunk = (image.end() - 1) / LARGE_PAGE_SIZE;

    let mut pml4 = [0u64; ENTRIES];
    pml4[0] = PDPT_ADDR | TABLE;
    ram.write(PML4_ADDR, table_bytes(&pml4))?;

    let mut pdpt = [0u64; ENTRIES];
    for gib in 0..gibs {
        pdpt[gib as usize] = (PD_ADDR + gib * PAGE_SIZE) | TABLE;
    }
    ram.write(PDPT_ADDR, table_bytes(&pdpt))?;

    let mut pd = [0u64; ENTRIES];
    for gib in 0..gibs {
        for (slot, entry) in pd.iter_mut().enumerate() {
            let chunk = gib * ENTRIES as u64 + slot as u64;
            *entry = if chunk >= chunks {
                0
            } else if chunk == 0 {
                PT_ADDR | TABLE
            } else if (first_image_chunk..=last_image_chunk).contains(&chunk) {
                (PT_ADDR + (1 + chunk - first_image_chunk) * PAGE_SIZE) | TABLE
            } else {
                (chunk * LARGE_PAGE_SIZE) | USER_RW | HUGE
            };
        }
        ram.write(PD_ADDR + gib * PAGE_SIZE, table_bytes(&pd))?;
    }

    ram.write(PT_ADDR, table_bytes(&low_table()))?;
    for chunk in first_image_chunk..=last_image_chunk {
        let table = image_table(image, chunk * LARGE_PAGE_SIZE);
        ram.write(
            PT_ADDR + (1 + chunk - first_image_chunk) * PAGE_SIZE,
            table_bytes(&table),
        )?;
    }
    Ok(())
}

fn table_bytes(table: &Table) -> &[u8] {
    // SAFETY: a [u64; 512] is 4096 initialised bytes with no padding; the guest reads the
    // entries as little-endian u64, the host's byte order.
    unsafe { std::slice::from_raw_parts(table.as_ptr().cast::<u8>(), size_of::<Table>()) }
}

/// The 4 KiB pages of the first 2 MiB.
fn low_table() -> Table {
    let mut table = [0u64; ENTRIES];
    let mut map = |start: u64, end: u64, flags: u64| {
        for page in (start..end).step_by(PAGE_SIZE as usize) {
            table[(page / PAGE_SIZE) as usize] = page | flags;
        }
    };
    map(
        SYSTEM_TABLES_PAGE,
        SYSTEM_TABLES_PAGE + PAGE_SIZE,
        SUPERVISOR_RW,
    );
    map(STUBS_ADDR, STUBS_ADDR + PAGE_SIZE, SUPERVISOR_RX);
    map(RING0_STACK_BOTTOM, DOUBLE_FAULT_STACK_TOP, SUPERVISOR_RW);
    map(BOOT_INFO_ADDR, BOOT_INFO_ADDR + BOOT_INFO_SIZE, USER_RO);
    map(STACK_BOTTOM, STACK_TOP, USER_RW);
    table
}

/// The 4 KiB pages of the image chunk starting at `base`.
fn image_table(image: &Image, base: u64) -> Table {
    let mut table = [0u64; ENTRIES];
    for (slot, entry) in table.iter_mut().enumerate() {
        let page = base + slot as u64 * PAGE_SIZE;
        let segment = image
            .segments()
            .iter()
            .find(|s| (s.first_page()..s.page_end()).contains(&page));
        *entry = match segment {
            Some(s) => {
                let mut flags = PRESENT | USER | ACCESSED;
                if s.access.write {
                    flags |= WRITABLE | DIRTY;
                }
                if !s.access.execute {
                    flags |= NO_EXECUTE;
                }
                page | flags
            }
            None if page >= image.end() => page | USER_RW,
            None => 0,
        };
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_low_table_leaves_null_and_guard_unmapped() {
        let table = low_table();
        assert_eq!(table[0], 0, "null page");
        assert_eq!(
            table[(STACK_GUARD_ADDR / PAGE_SIZE) as usize],
            0,
            "guard page"
        );
        assert_eq!(table[(PML4_ADDR / PAGE_SIZE) as usize], 0, "page tables");
    }

    #[test]
    fn test_low_table_system_structures_are_supervisor_only() {
        let table = low_table();
        for addr in [GDT_ADDR, IDT_ADDR, TSS_ADDR, RING0_STACK_BOTTOM] {
            let entry = table[(addr / PAGE_SIZE) as usize];
            assert_ne!(entry & PRESENT, 0, "{addr:#x} present");
            assert_eq!(entry & USER, 0, "{addr:#x} supervisor");
            assert_ne!(entry & NO_EXECUTE, 0, "{addr:#x} not executable");
        }
    }

    #[test]
    fn test_low_table_stubs_are_supervisor_read_only_code() {
        let entry = low_table()[(STUBS_ADDR / PAGE_SIZE) as usize];
        assert_ne!(entry & PRESENT, 0);
        assert_eq!(entry & (USER | WRITABLE | NO_EXECUTE), 0);
    }

    #[test]
    fn test_low_table_stack_is_user_rw_nx() {
        let table = low_table();
        let entry = table[(STACK_TOP / PAGE_SIZE - 1) as usize];
        assert_eq!(
            entry & (USER | WRITABLE | NO_EXECUTE),
            USER | WRITABLE | NO_EXECUTE
        );
        let info = table[(BOOT_INFO_ADDR / PAGE_SIZE) as usize];
        assert_eq!(info & (USER | WRITABLE), USER, "boot info is read-only");
    }
}
