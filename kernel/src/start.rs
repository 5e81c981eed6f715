//! Entry from the VMM and exit back to it.
//!
//! The VMM starts the vCPU at ring 3 at [`_start`] with `RSP` at the top of the stack and `RDI`
//! pointing at the [`BootInfo`]. Nothing runs in the guest before this.

use crate::global::Global;
use crate::{console, hypercall};
use abi::BootInfo;

static BOOT_INFO: Global<BootInfo> = Global::new(BootInfo {
    magic: 0,
    abi_version: 0,
    argc: 0,
    envc: 0,
    flags: 0,
    args: 0,
    args_len: 0,
    mem_size: 0,
    heap_start: 0,
    heap_end: 0,
    stack_bottom: 0,
    stack_top: 0,
    tsc_khz: 0,
    boot_unix_ns: 0,
    boot_tsc: 0,
    random_seed: 0,
});

unsafe extern "Rust" {
    /// The app's entry point, defined by [`crate::main!`].
    fn __flick_app_main() -> i32;
    /// Whether the app calls [`crate::snapshot_point`] itself, defined by [`crate::main!`].
    fn __flick_app_takes_own_snapshot() -> bool;
}

/// The image's entry point.
///
/// # Safety
/// Only the VMM enters here, with the register state described in the module docs.
#[unsafe(naked)]
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text.start")]
pub unsafe extern "C" fn _start() -> ! {
    core::arch::naked_asm!(
        "xor ebp, ebp", // end of the frame-pointer chain for backtraces
        "call {start}",
        "ud2",
        start = sym start_kernel,
    )
}

extern "C" fn start_kernel(info: *const BootInfo) -> ! {
    BOOT_INFO_PTR.with(|slot| *slot = Some(info));
    // SAFETY: the VMM put a BootInfo at `info` in memory mapped readable for ring 3.
    let info = unsafe { info.read_volatile() };
    if info.magic != abi::BOOT_INFO_MAGIC || info.abi_version != abi::ABI_VERSION {
        hypercall::console_write(abi::hypercall::stream::STDERR, b"kernel: bad boot info\n");
        hypercall::exit(abi::exit_status::CRASH);
    }
    BOOT_INFO.with(|slot| *slot = info);
    // SAFETY: `main!` defines this symbol with exactly this signature.
    if !unsafe { __flick_app_takes_own_snapshot() } {
        snapshot_point();
    }
    #[cfg(feature = "milestones")]
    if boot_info().flags & abi::boot_flags::MILESTONES != 0 {
        hypercall::milestone(abi::milestone::ENTERED_MAIN);
    }
    // SAFETY: `main!` defines this symbol with exactly this signature.
    let code = unsafe { __flick_app_main() };
    exit(code)
}

/// Marks the point where `vmm snapshot` saves this guest; a no-op otherwise.
///
/// By default the kernel calls it just before the app's `main`. An app that declares
/// `kernel::main!(main, snapshot = manual)` calls it itself, after its own initialisation, so
/// that every run restored from the snapshot starts with that work done. After a restore it
/// returns with fresh arguments, environment, clock and random seed in [`boot_info`].
///
/// ```ignore
/// let table = build_expensive_table();
/// kernel::snapshot_point();
/// // Each restored run starts here, with `table` ready.
/// ```
pub fn snapshot_point() {
    if boot_info().flags & abi::boot_flags::SNAPSHOT == 0 {
        return;
    }
    console::flush();
    if hypercall::snapshot()
        && let Some(Some(pointer)) = BOOT_INFO_PTR.with(|p| *p)
    {
        // Restored: the VMM rewrote boot info for this run.
        // SAFETY: as at entry: the VMM's boot info, mapped readable for ring 3.
        let info = unsafe { pointer.read_volatile() };
        BOOT_INFO.with(|slot| *slot = info);
        // This run's stdin is a new one.
        crate::io::forget_buffered_stdin();
    }
}

static BOOT_INFO_PTR: Global<Option<*const BootInfo>> = Global::new(None);

/// A copy of the boot information the VMM handed over.
pub fn boot_info() -> BootInfo {
    BOOT_INFO.with(|info| *info).unwrap_or_default()
}

/// Flushes the console and stops the guest; `vmm run` exits with `code & 0xff`.
///
/// ```ignore
/// kernel::exit(3);
/// ```
pub fn exit(code: i32) -> ! {
    console::flush();
    hypercall::exit(code)
}
