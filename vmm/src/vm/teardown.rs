//! Taking VM teardown off the path the user waits on.
//!
//! Destroying a VM and unmapping its RAM costs 0.3-0.5 ms here, and it happens inside the
//! exiting process before its parent is told. [`detach`] (or a [`Helper`] made ahead, before
//! the thread is sandboxed) hands the VM's last references to a helper process: a
//! `clone(CLONE_VM)` child that shares the address space and holds a copy of the fd table. It
//! is made before the guest runs and lives alongside it, so it makes only raw system calls
//! (never touching `errno` or anything else of the parent's). The VMM then exits at once (its exit only drops references); the child waits
//! for the VMM to die (`PR_SET_PDEATHSIG`), then exits itself, and the kernel tears the VM down
//! as the child's exit releases the last references. Nothing is leaked: the child lives only
//! until its parent has gone.

use std::ffi::c_void;

const CHILD_STACK_SIZE: usize = 64 * 1024;
/// Most device fds the helper closes.
const MAX_CLOSED_FDS: usize = 8;

/// What the helper is told, written at the bottom of its stack mapping (which only it uses).
#[repr(C)]
struct HelperArgs {
    parent: usize,
    close_count: usize,
    close: [i32; MAX_CLOSED_FDS],
}

/// A system call made with the `syscall` instruction itself: unlike libc's wrappers it never
/// writes `errno`, which in the helper (a `CLONE_VM` child without a TLS of its own) would be
/// the parent's main thread's `errno`, changed under it while it runs the guest.
///
/// # Safety
/// As the call `nr` with these arguments.
unsafe fn raw_syscall(nr: libc::c_long, a1: usize, a2: usize) -> isize {
    let ret: isize;
    // SAFETY: the caller's; the kernel clobbers rcx and r11, and reads nothing else here.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a1,
            in("rsi") a2,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

extern "C" fn wait_for_parent_then_exit(args: *mut c_void) -> libc::c_int {
    // Only raw system calls here: this runs on a small private stack in a shared address
    // space, with the parent's TLS.
    // SAFETY: `args` points at the `HelperArgs` the parent wrote before clone, in a mapping
    // that lives as long as this child; plain system calls on values we own. Closing our
    // copies of stdio lets readers of the VMM's output see end-of-file as soon as the VMM
    // exits, and closing the devices' fds frees them (a tap can be attached again at once).
    unsafe {
        let args = &*args.cast::<HelperArgs>();
        let parent = args.parent;
        for &fd in &args.close[..args.close_count.min(MAX_CLOSED_FDS)] {
            raw_syscall(libc::SYS_close, fd as usize, 0);
        }
        for fd in 0..=2 {
            raw_syscall(libc::SYS_close, fd, 0);
        }
        raw_syscall(
            libc::SYS_prctl,
            libc::PR_SET_PDEATHSIG as usize,
            libc::SIGKILL as usize,
        );
        if raw_syscall(libc::SYS_getppid, 0, 0) as usize == parent {
            loop {
                raw_syscall(libc::SYS_pause, 0, 0);
            }
        }
        raw_syscall(libc::SYS_exit, 0, 0);
    }
    0
}

/// Hands `resources` (the VM) to a helper process that releases them after this process exits.
///
/// Call this only right before the process exits: until then the helper holds the VM. If the
/// helper cannot be created, `resources` are dropped here instead.
pub fn detach<T>(resources: T) {
    detach_closing(resources, &[]);
}

/// [`detach`], with the helper closing its copies of `device_fds` (up to 8; the taps of
/// `--net`) at once, so that they are released when this process exits, not after the VM.
pub fn detach_closing<T>(resources: T, device_fds: &[i32]) {
    Helper::start(device_fds).hand_over(resources);
}

/// A helper process made ahead of the VM's end: it holds copies of the fds open when it was
/// made (the VM's among them) and shares this process's memory, so that [`Helper::hand_over`]
/// needs no system call (`vmm run` makes it before its thread is sandboxed).
#[must_use = "a helper holds nothing until the VM is handed over"]
pub struct Helper {
    made: bool,
}

impl Helper {
    /// Makes the helper, which closes its copies of stdio and of `device_fds` (up to 8) at
    /// once and waits for this process to exit.
    pub fn start(device_fds: &[i32]) -> Helper {
        Helper {
            made: start_helper(device_fds),
        }
    }

    /// Leaves `resources` (made before the helper was) to the helper, which releases them
    /// after this process exits; without a helper, drops them here.
    pub fn hand_over<T>(self, resources: T) {
        if self.made {
            // The helper holds the last references; this process lets go of its own at exit.
            std::mem::forget(resources);
        } else {
            drop(resources);
        }
    }
}

/// Makes the helper process; whether it exists.
fn start_helper(device_fds: &[i32]) -> bool {
    // SAFETY: an anonymous private mapping for the child's stack; checked below.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            CHILD_STACK_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return false;
    }
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() } as usize;
    let mut args = HelperArgs {
        parent: me,
        close_count: device_fds.len().min(MAX_CLOSED_FDS),
        close: [-1; MAX_CLOSED_FDS],
    };
    args.close[..args.close_count].copy_from_slice(&device_fds[..args.close_count]);
    let args_at = stack.cast::<HelperArgs>();
    // SAFETY: the mapping is page-aligned, writable and far larger than `HelperArgs`; the
    // child's stack grows down from the top and never reaches it.
    unsafe { args_at.write(args) };
    // SAFETY: the child runs `wait_for_parent_then_exit` on its own stack (top of the mapping)
    // and only makes raw syscalls; CLONE_VM shares memory, the fd table is copied.
    let child = unsafe {
        libc::clone(
            wait_for_parent_then_exit,
            stack.cast::<u8>().add(CHILD_STACK_SIZE).cast(),
            libc::CLONE_VM,
            args_at.cast::<c_void>(),
        )
    };
    if child < 0 {
        // SAFETY: the mapping made above, which no child uses.
        unsafe { libc::munmap(stack, CHILD_STACK_SIZE) };
        return false;
    }
    true
}
