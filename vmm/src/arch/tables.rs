//! The GDT, the TSS with its I/O permission bitmap, and the IDT.

use super::layout::*;
use crate::memory::{GuestRam, MemoryError};
use abi::exception::VECTORS;
use abi::port;

/// Kernel code segment selector (the IDT gates' target).
pub const KERNEL_CS: u16 = 0x08;
/// User data segment selector (RPL 3).
pub const USER_DS: u16 = 0x18 | 3;
/// User code segment selector (RPL 3).
pub const USER_CS: u16 = 0x20 | 3;
/// TSS selector.
pub const TSS_SELECTOR: u16 = 0x28;
/// Number of 8-byte GDT slots (the TSS descriptor takes two).
pub const GDT_ENTRIES: usize = 7;

/// Size of the 64-bit TSS without the bitmap.
const TSS_BASE_SIZE: usize = 104;
/// The highest port the bitmap can open: above the hypercalls, the device ranges
/// `0x520`-`0x53f` (stdin, volumes, network) and COM1 below them (a test checks that every
/// device lies below it).
const BITMAP_LAST_PORT: u16 = 0x53f;
/// Bytes of I/O bitmap: enough to cover the highest port a guest may open (all ports above are
/// closed by the all-ones byte that ends the bitmap and by the TSS limit).
const IO_BITMAP_SIZE: usize = BITMAP_LAST_PORT as usize / 8 + 1;
/// TSS limit: base, bitmap, and the all-ones byte the CPU may read past the bitmap.
pub const TSS_LIMIT: u32 = (TSS_BASE_SIZE + IO_BITMAP_SIZE) as u32;

// Flat descriptors with the accessed bit preset, so the CPU never writes the GDT.
const KERNEL_CODE_64: u64 = 0x00af_9b00_0000_ffff;
const KERNEL_DATA: u64 = 0x00cf_9300_0000_ffff;
const USER_DATA: u64 = 0x00cf_f300_0000_ffff;
const USER_CODE_64: u64 = 0x00af_fb00_0000_ffff;

/// Writes the GDT, TSS and IDT; IDT vector `n` points at the VMM's stub `n`.
pub(crate) fn write_system_tables(ram: &GuestRam) -> Result<(), MemoryError> {
    ram.write(GDT_ADDR, &gdt_bytes())?;
    ram.write(TSS_ADDR, &tss_bytes())?;
    ram.write(IDT_ADDR, &idt_bytes())
}

fn gdt_bytes() -> Vec<u8> {
    let (tss_low, tss_high) = tss_descriptor(TSS_ADDR, TSS_LIMIT);
    let entries: [u64; GDT_ENTRIES] = [
        0,
        KERNEL_CODE_64,
        KERNEL_DATA,
        USER_DATA,
        USER_CODE_64,
        tss_low,
        tss_high,
    ];
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}

/// A busy 64-bit TSS descriptor (two GDT slots).
fn tss_descriptor(base: u64, limit: u32) -> (u64, u64) {
    let limit = u64::from(limit);
    let low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x8b << 40) // present, DPL 0, type 0xb: busy 64-bit TSS
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    (low, base >> 32)
}

/// Whether ring 3 may use `port`: the hypercall range (whole: a 32-bit access needs all four
/// of its ports open; the crash port lies outside it) and the devices' port ranges.
pub(crate) fn port_open_to_guest(port: u16) -> bool {
    (port::FIRST..=port::LAST).contains(&port)
        || crate::devices::port_ranges()
            .iter()
            .any(|range| range.contains(&port))
}

const _: () = assert!(
    port::COM1 < BITMAP_LAST_PORT
        && port::LAST < BITMAP_LAST_PORT
        && port::NET + port::NET_LEN - 1 <= BITMAP_LAST_PORT,
    "the bitmap covers the hypercalls, COM1 and the network device"
);

fn tss_bytes() -> Vec<u8> {
    let mut tss = vec![0u8; TSS_LIMIT as usize + 1];
    tss[4..12].copy_from_slice(&RING0_STACK_TOP.to_le_bytes()); // RSP0
    tss[36..44].copy_from_slice(&DOUBLE_FAULT_STACK_TOP.to_le_bytes()); // IST1
    tss[102..104].copy_from_slice(&(TSS_BASE_SIZE as u16).to_le_bytes()); // I/O map base
    let bitmap = &mut tss[TSS_BASE_SIZE..];
    bitmap.fill(0xff);
    for port in 0..=BITMAP_LAST_PORT {
        if port_open_to_guest(port) {
            bitmap[usize::from(port / 8)] &= !(1 << (port % 8));
        }
    }
    tss
}

fn idt_bytes() -> Vec<u8> {
    let mut idt = Vec::with_capacity(VECTORS * 16);
    for vector in 0..VECTORS {
        let handler = super::stubs::address(vector);
        // #BP and #OF may be raised by `int3`/`into` at ring 3; the others only by the CPU.
        let dpl: u8 = if vector == 3 || vector == 4 { 3 } else { 0 };
        let ist: u8 = if vector == 8 { 1 } else { 0 };
        let attributes = 0x80 | (dpl << 5) | 0x0e; // present, 64-bit interrupt gate
        idt.extend_from_slice(&(handler as u16).to_le_bytes());
        idt.extend_from_slice(&KERNEL_CS.to_le_bytes());
        idt.push(ist);
        idt.push(attributes);
        idt.extend_from_slice(&((handler >> 16) as u16).to_le_bytes());
        idt.extend_from_slice(&((handler >> 32) as u32).to_le_bytes());
        idt.extend_from_slice(&0u32.to_le_bytes());
    }
    idt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port_allowed(tss: &[u8], port: u16) -> bool {
        let bitmap = &tss[TSS_BASE_SIZE..];
        match bitmap.get(usize::from(port / 8)) {
            Some(byte) => byte & (1 << (port % 8)) == 0,
            None => false,
        }
    }

    #[test]
    fn test_tss_bitmap_covers_every_device() {
        for range in crate::devices::port_ranges() {
            assert!(range.end - 1 <= BITMAP_LAST_PORT, "{range:#x?}");
        }
        assert!(port_allowed(&tss_bytes(), port::STDIN));
        assert!(port_allowed(&tss_bytes(), port::FS + 3));
    }

    #[test]
    fn test_tss_bitmap_opens_exactly_abi_ports_and_com1() {
        let tss = tss_bytes();
        for port in 0..=u16::MAX {
            assert_eq!(
                port_allowed(&tss, port),
                port_open_to_guest(port),
                "port {port:#x}"
            );
        }
        assert!(port_allowed(&tss, port::EXIT));
        assert!(port_allowed(&tss, port::COM1));
        assert!(port_allowed(&tss, port::NET_EXCHANGE + 3));
        assert!(!port_allowed(&tss, port::NET + port::NET_LEN));
        assert!(!port_allowed(&tss, 0x80));
        assert!(
            !port_allowed(&tss, port::CRASH),
            "only the stubs write the crash port"
        );
        assert_eq!(*tss.last().unwrap(), 0xff, "terminating byte");
    }

    #[test]
    fn test_idt_gate_points_at_stub() {
        let idt = idt_bytes();
        let gate = &idt[14 * 16..15 * 16];
        let offset = u64::from(u16::from_le_bytes([gate[0], gate[1]]))
            | (u64::from(u16::from_le_bytes([gate[6], gate[7]])) << 16)
            | (u64::from(u32::from_le_bytes(gate[8..12].try_into().unwrap())) << 32);
        assert_eq!(offset, STUBS_ADDR + 14 * 16);
        assert_eq!(u16::from_le_bytes([gate[2], gate[3]]), KERNEL_CS);
        assert_eq!(gate[5], 0x8e);
    }

    #[test]
    fn test_idt_double_fault_uses_ist1() {
        let idt = idt_bytes();
        assert_eq!(idt[8 * 16 + 4], 1);
        assert_eq!(idt[14 * 16 + 4], 0);
    }

    #[test]
    fn test_tss_descriptor_encodes_base_and_limit() {
        let (low, high) = tss_descriptor(0x1234_5678_9abc_def0, 0x12345);
        assert_eq!(low & 0xffff, 0x2345);
        assert_eq!((low >> 48) & 0xf, 0x1);
        assert_eq!((low >> 16) & 0xff_ffff, 0xbc_def0);
        assert_eq!(low >> 56, 0x9a);
        assert_eq!(high, 0x1234_5678);
    }
}
