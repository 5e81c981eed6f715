//! The exception stubs: the only code a guest ever runs at ring 0, written here, byte by byte,
//! by the VMM (never taken from an image or a snapshot, which are untrusted).
//!
//! Stub `n` (16 bytes at `STUBS_ADDR + 16 n`) is `push rax; push rdx; mov eax, n;
//! mov dx, CRASH; out dx, eax; hlt; jmp back to hlt`: the VMM then reads the frame from the
//! ring-0 stack (see `abi::exception`) and prints the crash report. The rest of the page is
//! `int3`, but for one `iretq` right after the stubs ([`resume_address`]): the debugger
//! resumes a guest that a stub stopped through it, with an interrupt frame of the VMM's own
//! making on the ring-0 stack, so that the CPU itself returns to ring 3. The page is
//! supervisor-only and read-only: ring 3 can neither read nor change it.

use super::layout::{PAGE_SIZE, STUBS_ADDR};
use abi::exception::{STUB_STRIDE, TABLE_SIZE, VECTORS};

/// The instruction bytes of stub `vector`, padded with `int3` to the stride.
fn stub(vector: u8) -> [u8; STUB_STRIDE] {
    let [port_lo, port_hi] = abi::port::CRASH.to_le_bytes();
    let code = [
        0x50, // push rax
        0x52, // push rdx
        0xb8, vector, 0, 0, 0, // mov eax, vector
        0x66, 0xba, port_lo, port_hi, // mov dx, CRASH
        0xef,    // out dx, eax
        0xf4,    // hlt
        0xeb, 0xfd, // jmp back to hlt
    ];
    let mut bytes = [0xcc; STUB_STRIDE];
    bytes[..code.len()].copy_from_slice(&code);
    bytes
}

/// `iretq`.
const IRETQ: [u8; 2] = [0x48, 0xcf];

/// The whole stub page.
pub(crate) fn page() -> [u8; PAGE_SIZE as usize] {
    let mut page = [0xcc; PAGE_SIZE as usize];
    for vector in 0..VECTORS {
        let at = vector * STUB_STRIDE;
        page[at..at + STUB_STRIDE].copy_from_slice(&stub(vector as u8));
    }
    page[TABLE_SIZE..TABLE_SIZE + IRETQ.len()].copy_from_slice(&IRETQ);
    page
}

/// Where the `iretq` lies that returns a stopped guest to ring 3 (with `rsp` at an interrupt
/// frame: `rip`, `cs`, `rflags`, `rsp`, `ss`).
pub(crate) fn resume_address() -> u64 {
    STUBS_ADDR + TABLE_SIZE as u64
}

/// Where stub `vector` starts.
pub(crate) fn address(vector: usize) -> u64 {
    STUBS_ADDR + (vector * STUB_STRIDE) as u64
}

/// Whether `rip` lies inside the stub page (where a genuine crash report's `out` executes).
pub(crate) fn contains(rip: u64) -> bool {
    (STUBS_ADDR..STUBS_ADDR + PAGE_SIZE).contains(&rip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_stub_reports_its_vector_through_the_crash_port() {
        let stub = stub(14);
        assert_eq!(&stub[..2], &[0x50, 0x52]);
        assert_eq!(stub[3], 14);
        assert_eq!(u16::from_le_bytes([stub[9], stub[10]]), abi::port::CRASH);
        assert_eq!(stub[11], 0xef);
    }

    #[test]
    fn test_page_holds_every_vector_then_int3() {
        let page = page();
        for vector in 0..VECTORS {
            assert_eq!(page[vector * STUB_STRIDE + 3], vector as u8);
        }
        assert_eq!(&page[TABLE_SIZE..TABLE_SIZE + 2], &IRETQ);
        assert_eq!(resume_address(), STUBS_ADDR + TABLE_SIZE as u64);
        assert!(page[TABLE_SIZE + 2..].iter().all(|&b| b == 0xcc));
        assert!(contains(address(31)));
        assert!(!contains(STUBS_ADDR + PAGE_SIZE));
    }
}
