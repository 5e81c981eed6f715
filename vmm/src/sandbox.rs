//! The VMM sandboxes itself: before a guest's first `KVM_RUN`, the thread that runs it (and the
//! watchdog) may only make the system calls the run loop needs, with the arguments checked
//! where seccomp can check them (which request for `ioctl`, which fd for `write`, which flags
//! for `clone`).
//!
//! The `ioctl` rule checks the request, not the fd: the filter is then the same for every
//! guest, so it is built once per process and installed on the runner thread while the main
//! thread is still creating the VM. Installing a filter is not cheap here (~1 µs per BPF
//! instruction, ~0.1 ms for this one), so it must stay off the critical path. The three
//! requests allowed do nothing on a file that is not a vCPU.
//!
//! A blocked call raises SIGSYS; the handler prints `seccomp: blocked syscall NAME (NR)` and
//! exits with status 134.

#[path = "sandbox_syscalls.rs"]
mod syscalls;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

pub use syscalls::SYSCALL_NAMES;

/// Errors installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The filter could not be built.
    #[error("cannot build the seccomp filter")]
    Build(#[source] seccompiler::Error),
    /// The filter could not be installed.
    #[error("cannot install the seccomp filter")]
    Apply(#[source] seccompiler::Error),
}

const fn ioc_read(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}

/// `KVM_RUN`.
pub const KVM_RUN: u64 = 0xae80;
/// `KVM_GET_REGS`.
pub const KVM_GET_REGS: u64 = ioc_read(0x81, size_of::<kvm_bindings::kvm_regs>());
/// `KVM_GET_SREGS`.
pub const KVM_GET_SREGS: u64 = ioc_read(0x83, size_of::<kvm_bindings::kvm_sregs>());

/// Why each system call is allowed, for `vmm seccomp-list`.
pub const ALLOWED: &[(&str, &str)] = &[
    ("ioctl", "KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS only"),
    ("write", "fds 1 and 2 only: guest console, reports"),
    ("futex", "locks (stdout, watchdog)"),
    ("nanosleep", "the guest's sleep hypercall"),
    ("clock_nanosleep", "the guest's sleep hypercall"),
    (
        "clock_gettime",
        "timestamps when the vDSO cannot serve them",
    ),
    ("tgkill", "the watchdog interrupting KVM_RUN at --timeout"),
    ("rt_sigreturn", "return from the watchdog's signal"),
    (
        "rt_sigprocmask",
        "thread exit (glibc blocks signals while a thread ends)",
    ),
    ("brk", "memory allocation"),
    ("mmap", "memory allocation"),
    ("munmap", "memory release"),
    ("madvise", "memory release"),
    ("mincore", "--timeline: count guest pages touched"),
    ("getpid", "teardown helper: who its parent is"),
    ("clone", "teardown helper, flags CLONE_VM only"),
    ("close", "teardown helper: close its copies of stdio"),
    ("prctl", "teardown helper: PR_SET_PDEATHSIG"),
    ("getppid", "teardown helper: is the parent gone"),
    ("pause", "teardown helper: wait for the parent to exit"),
    ("exit", "thread exit"),
    ("exit_group", "process exit"),
];

fn syscall_number(name: &str) -> i64 {
    SYSCALL_NAMES
        .iter()
        .position(|n| *n == name)
        .expect("a known syscall") as i64
}

fn arg_eq(index: u8, value: u64) -> SeccompCondition {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        .expect("argument index below 6")
}

/// The filter for a thread that runs guests.
pub fn run_loop_filter() -> Result<BpfProgram, SandboxError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (name, _) in ALLOWED {
        rules.insert(syscall_number(name), Vec::new());
    }
    let rule = |conditions| {
        SeccompRule::new(conditions).map_err(|e| SandboxError::Build(seccompiler::Error::from(e)))
    };
    rules.insert(
        syscall_number("ioctl"),
        vec![
            rule(vec![arg_eq(1, KVM_RUN)])?,
            rule(vec![arg_eq(1, KVM_GET_REGS)])?,
            rule(vec![arg_eq(1, KVM_GET_SREGS)])?,
        ],
    );
    rules.insert(
        syscall_number("write"),
        vec![rule(vec![arg_eq(0, 1)])?, rule(vec![arg_eq(0, 2)])?],
    );
    rules.insert(
        syscall_number("clone"),
        vec![rule(vec![arg_eq(0, libc::CLONE_VM as u64)])?],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SandboxError::Build(e.into()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::Build(e.into()))
}

thread_local! {
    static SANDBOXED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Confines the calling thread (once; later calls do nothing).
pub fn confine_this_thread() -> Result<(), SandboxError> {
    if SANDBOXED.get() {
        return Ok(());
    }
    static FILTER: std::sync::OnceLock<Result<BpfProgram, String>> = std::sync::OnceLock::new();
    let filter = FILTER.get_or_init(|| run_loop_filter().map_err(|e| format!("{e:#?}")));
    let filter = match filter {
        Ok(filter) => filter,
        // Building is deterministic: if it failed once, build again for the real error.
        Err(_) => &run_loop_filter()?,
    };
    install_sigsys_reporter();
    seccompiler::apply_filter(filter).map_err(SandboxError::Apply)?;
    SANDBOXED.set(true);
    Ok(())
}

/// Whether the calling thread is confined.
pub fn is_confined() -> bool {
    SANDBOXED.get()
}

fn install_sigsys_reporter() {
    // SAFETY: a zeroed sigaction is valid; the handler only makes async-signal-safe raw
    // syscalls (write, exit_group) that the filter allows.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = report_blocked_syscall as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut());
    }
}

/// Formats `seccomp: blocked syscall NAME (NR)\n` into `buf` without allocating.
pub fn format_blocked(nr: i32, buf: &mut [u8; 96]) -> usize {
    let name = usize::try_from(nr)
        .ok()
        .and_then(|n| SYSCALL_NAMES.get(n))
        .copied()
        .unwrap_or("");
    let name = if name.is_empty() { "unknown" } else { name };
    let mut len = 0;
    let mut push = |bytes: &[u8]| {
        let n = bytes.len().min(buf.len() - len);
        buf[len..len + n].copy_from_slice(&bytes[..n]);
        len += n;
    };
    push(b"seccomp: blocked syscall ");
    push(name.as_bytes());
    push(b" (");
    let mut digits = [0u8; 12];
    let mut at = digits.len();
    let mut value = i64::from(nr).unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    push(&digits[at..]);
    push(b")\n");
    len
}

extern "C" fn report_blocked_syscall(
    _: libc::c_int,
    info: *mut libc::siginfo_t,
    _: *mut libc::c_void,
) {
    // siginfo for SIGSYS: the syscall number is the int after the faulting address (offset 24).
    // SAFETY: the kernel hands a valid siginfo_t to an SA_SIGINFO handler.
    let nr = unsafe { info.cast::<u8>().add(24).cast::<i32>().read() };
    let mut buf = [0u8; 96];
    let len = format_blocked(nr, &mut buf);
    // SAFETY: raw write of our own buffer to stderr, then exit: both async-signal-safe.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::syscall(libc::SYS_exit_group, abi::exit_status::CRASH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_format_blocked_names_the_call() {
        let mut buf = [0u8; 96];
        let len = format_blocked(41, &mut buf);
        assert_eq!(&buf[..len], b"seccomp: blocked syscall socket (41)\n");
        let len = format_blocked(9999, &mut buf);
        assert_eq!(&buf[..len], b"seccomp: blocked syscall unknown (9999)\n");
    }

    #[test]
    fn test_ioctl_numbers_match_the_kernel() {
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
    }

    #[test]
    fn test_filter_builds() {
        let program = run_loop_filter().unwrap();
        assert!(program.len() > ALLOWED.len());
    }

    #[test]
    fn test_allowed_list_is_small_and_known() {
        assert!(ALLOWED.len() <= 24, "{} syscalls", ALLOWED.len());
        for (name, _) in ALLOWED {
            assert!(SYSCALL_NAMES.contains(name), "{name}");
        }
    }
}
