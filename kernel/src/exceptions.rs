//! The ring-0 exception stubs: the only code of an image that runs at ring 0.
//!
//! Hand-written asm without Rust `core` (ring 0 is emulated instruction by instruction on a
//! software hypervisor, and most SSE stops it there). Stub `n` saves `rax` and `rdx`, writes
//! vector `n` to the CRASH port and halts; the VMM reads the frame from the ring-0 stack and
//! prints the crash report. The table is page-aligned in a section of its own so that the VMM
//! can map it supervisor-only.

use abi::exception::STUB_STRIDE;
use abi::port::CRASH;

core::arch::global_asm!(
    ".pushsection .text.flick_exception_stubs, \"ax\", @progbits",
    ".balign 4096",
    ".globl __flick_exception_stubs",
    "__flick_exception_stubs:",
    ".irp vector, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    ".balign {stride}, 0xcc",
    "push rax",
    "push rdx",
    "mov eax, \\vector",
    "mov dx, {crash}",
    "out dx, eax",
    "2: hlt",
    "jmp 2b",
    ".endr",
    ".balign {stride}, 0xcc",
    ".balign 4096, 0xcc",
    ".popsection",
    stride = const STUB_STRIDE,
    crash = const CRASH,
);

unsafe extern "C" {
    /// Start of the stub table (not callable from ring 3; only its address is used).
    pub fn __flick_exception_stubs();
}
