//! Guest → VMM calls: one `out` to an `abi` port each.

use abi::hypercall::{CONSOLE_WRITE_MAX, ConsoleWrite};
use abi::input::InputRead;
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

/// Asks the VMM for the network settings (`info.mtu` stays 0 without a network device).
#[cfg(feature = "net")]
pub fn net_info(info: &mut abi::hypercall::NetInfo) {
    out(port::NET_INFO, address_of(info));
}

/// One network exchange: the VMM sends, receives and maybe waits, and writes back `args`.
#[cfg(feature = "net")]
pub fn net_exchange(args: &mut abi::hypercall::NetExchange) {
    out(port::NET_EXCHANGE, address_of(args));
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

/// Waits (one exit) until a source of `interest` ([`abi::hypercall::poll_source`]) has input
/// or `timeout_ns` passes (`u64::MAX`: no limit); the sources that are ready.
pub fn poll(interest: u32, timeout_ns: u64) -> u32 {
    let args = abi::hypercall::Poll {
        timeout_ns,
        interest,
        ready: 0,
    };
    out(port::POLL, address_of(&args));
    // SAFETY: a live local the VMM may have written during the exit.
    unsafe { core::ptr::read_volatile(&args) }.ready
}

/// Reads stdin into `buf` (at most [`abi::MAX_TRANSFER`] bytes, one exit), waiting with
/// [`poll`] while there is no input yet: the bytes read (0 at the end), or an `abi::errno`.
pub fn stdin_read(buf: &mut [u8]) -> Result<usize, u32> {
    let len = buf.len().min(abi::MAX_TRANSFER as usize) as u32;
    loop {
        let args = InputRead {
            buf: buf.as_mut_ptr() as u64,
            len,
            status: 0,
            count: 0,
        };
        out(port::STDIN, address_of(&args));
        // SAFETY: a live local the VMM wrote during the exit.
        let done = unsafe { core::ptr::read_volatile(&args) };
        match done.status {
            0 => return Ok((done.count as usize).min(len as usize)),
            abi::errno::WOULD_BLOCK => {
                poll(abi::hypercall::poll_source::STDIN, u64::MAX);
            }
            code => return Err(code),
        }
    }
}

/// Sends one volume request (one exit); the VMM fills in `errno` and `result`.
pub fn fs_call(request: &mut abi::fs::FsRequest) {
    out(port::FS, address_of(request));
    // SAFETY: a live value the VMM wrote during the exit.
    *request = unsafe { core::ptr::read_volatile(request) };
}
