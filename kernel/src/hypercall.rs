//! Guest → VMM calls: one `out` to an `abi` port each.

use abi::hypercall::{CONSOLE_WRITE_MAX, ConsoleWrite};
use abi::port;
use core::arch::asm;

/// Writes `value` to `port`: one VM exit.
#[inline(always)]
fn out(port: u16, value: u32) {
    // SAFETY: the TSS I/O bitmap opens the abi ports to ring 3; the VMM reads any argument
    // struct the value points at, which is why this asm is not `nomem`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags))
    };
}

/// Guest-physical address of `value` as the 32-bit port value. Kernel data (stack, image,
/// boot info) lies below 4 GiB by construction of the memory layout.
fn address_of<T>(value: &T) -> u32 {
    value as *const T as usize as u32
}

/// Writes `bytes` to console `stream` ([`abi::hypercall::stream`]): one exit per 64 KiB.
pub fn console_write(stream: u32, bytes: &[u8]) {
    for chunk in bytes.chunks(CONSOLE_WRITE_MAX as usize) {
        let args = ConsoleWrite {
            buf: chunk.as_ptr() as u64,
            len: chunk.len() as u32,
            stream,
        };
        out(port::CONSOLE_WRITE, address_of(&args));
    }
}

/// Reports boot milestone `id` ([`abi::milestone`]).
#[cfg_attr(not(feature = "milestones"), allow(dead_code))]
pub fn milestone(id: u32) {
    out(port::MILESTONE, id);
}

/// Asks the VMM to wait `micros` microseconds.
pub fn sleep_micros(micros: u32) {
    out(port::SLEEP, micros);
}

/// Reports the snapshot point; true when this guest was just restored from a snapshot.
pub fn snapshot() -> bool {
    let restored: u32;
    // SAFETY: as `out`; the VMM sets eax to 1 in a restored VM, and leaves it 0 otherwise.
    unsafe {
        asm!("out dx, eax", in("dx") port::SNAPSHOT, inout("eax") 0u32 => restored,
            options(nostack, preserves_flags));
    }
    restored == 1
}

/// Parks the guest until the VMM releases it.
pub fn wait_for_release() {
    out(port::WAIT, 0);
}

/// Stops the guest with exit code `code`.
pub fn exit(code: i32) -> ! {
    out(port::EXIT, code as u32);
    // The VMM never resumes a guest after EXIT; if one did, stop here.
    loop {
        // SAFETY: `ud2` only raises #UD, which the exception stubs report.
        unsafe { asm!("ud2", options(nomem, nostack)) };
    }
}
