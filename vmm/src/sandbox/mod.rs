//! The VMM sandboxes itself: before a guest's first `KVM_RUN`, the thread that runs it (and the
//! watchdog) may only make the system calls the run loop needs, with the arguments checked
//! where seccomp can check them (which request for `ioctl`, which fd for `write` and `read`,
//! which flags for `clone`, `unlinkat` and `renameat2`, the size of `openat2`'s `open_how`).
//!
//! The `ioctl` rule checks the request, not the fd: the filter is then the same for every
//! guest, so it is built once per process and installed on the runner thread while the main
//! thread is still creating the VM. Installing a filter is not cheap here (~1 µs per BPF
//! instruction, ~0.1 ms for this one), so it must stay off the critical path. The three
//! requests allowed do nothing on a file that is not a vCPU.
//!
//! The volume calls are not pinned to the volumes' directory fds, for the same reason and for
//! one more: seccomp cannot read the `open_how` that `openat2` points to, so a pinned `dirfd`
//! would not keep a subverted thread from opening an absolute path (which ignores `dirfd`).
//! Confinement to a volume is the resolver's (`devices::volumes::resolve`): every lookup goes
//! through `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, and the path-taking calls
//! (`mkdirat`, `unlinkat`, `renameat2`) name one component in a parent opened that way.
//!
//! A blocked call raises SIGSYS; the handler prints `seccomp: blocked syscall NAME (NR)` and
//! exits with status 125 (a VMM failure, never reported as a guest crash).

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
    /// A serve runner's client slot is not an fd number.
    #[error("invalid client slot {0}")]
    BadSlot(i32),
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
/// `KVM_GET_XSAVE` (the legacy 4 KiB area).
pub const KVM_GET_XSAVE: u64 = ioc_read(0xa4, 4096);
/// `KVM_SET_XSAVE` (the legacy 4 KiB area).
pub const KVM_SET_XSAVE: u64 = ioc_write(0xa5, 4096);

/// Why each system call is allowed, for `vmm seccomp-list`.
pub const ALLOWED: &[(&str, &str)] = &[
    (
        "ioctl",
        "KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS (crash reports), KVM_GET_XSAVE (snapshots), KVM_SET_XSAVE (restores) only",
    ),
    (
        "write",
        "fds 1 and 2 only: guest console, reports; and the tap of --net: frames the guest sends",
    ),
    (
        "read",
        "fd 0 only: the guest's stdin (a serve runner: also its client slot, where the client's stdin follows its request); and the tap of --net: frames for the guest",
    ),
    (
        "pread64",
        "volume file reads (straight into guest RAM); a fleet instance's stdin file",
    ),
    ("pwrite64", "volume file writes (straight from guest RAM)"),
    (
        "openat2",
        "volume lookups beneath a volume's directory fd (RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS, set in code: seccomp cannot read the open_how it points to); size argument pinned",
    ),
    ("fstat", "the kind, size and times of an opened volume file"),
    ("getdents64", "listing a volume directory"),
    (
        "mkdirat",
        "creating a directory in a volume (in a parent opened beneath it), mode 0777 only",
    ),
    (
        "unlinkat",
        "removing a volume file or empty directory (in a parent opened beneath it), flags 0 or AT_REMOVEDIR only",
    ),
    (
        "renameat2",
        "renaming within a volume (parents opened beneath it), flags 0 only",
    ),
    ("futex", "locks (stdout, watchdog)"),
    ("nanosleep", "the guest's sleep hypercall"),
    (
        "ppoll",
        "the guest's poll hypercall and network device: wait for its input sources (the tap of --net) until a deadline",
    ),
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
    (
        "restart_syscall",
        "resume an interrupted sleep (after SIGSTOP/SIGCONT or a debugger)",
    ),
    ("brk", "memory allocation"),
    (
        "mmap",
        "memory allocation and snapshot pages, never with PROT_EXEC",
    ),
    (
        "mprotect",
        "memory allocation (glibc thread arenas), never with PROT_EXEC",
    ),
    ("mremap", "memory allocation (growing a large buffer)"),
    ("munmap", "memory release"),
    ("madvise", "memory release"),
    ("mincore", "--timeline: count guest pages touched"),
    (
        "getrandom",
        "a fresh random seed for each guest a fleet worker creates",
    ),
    ("getpid", "teardown helper: who its parent is"),
    ("clone", "teardown helper, flags CLONE_VM only"),
    (
        "close",
        "closing volume files; teardown helper: close its copies of stdio",
    ),
    ("prctl", "teardown helper: PR_SET_PDEATHSIG"),
    ("getppid", "teardown helper: is the parent gone"),
    ("pause", "teardown helper: wait for the parent to exit"),
    ("exit", "thread exit"),
    ("exit_group", "process exit"),
];

/// What a `vmm serve` runner ([`Profile::ServeWorker`]) may do beyond a fleet worker, and why.
pub const SERVE_WORKER_EXTRA: &[(&str, &str)] = &[
    (
        "sendto",
        "serve runners only: the reply, on the runner's own client slot only, MSG_DONTWAIT|MSG_NOSIGNAL only",
    ),
    (
        "poll",
        "serve runners only: wait, until the request's deadline, for a slow client to take more of its reply",
    ),
];

/// The only flags a serve runner may pass to `sendto`: never block, never raise SIGPIPE.
pub const SERVE_SEND_FLAGS: i32 = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;

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

fn arg_eq_u64(index: u8, value: u64) -> SeccompCondition {
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, value)
        .expect("argument index below 6")
}

/// The filter for a thread that runs guests.
pub fn run_loop_filter() -> Result<BpfProgram, SandboxError> {
    filter_for(Profile::Runner)
}

/// The filter for `profile`.
pub fn filter_for(profile: Profile) -> Result<BpfProgram, SandboxError> {
    filter_with_device_fds(profile, &[])
}

/// The filter for `profile` on a thread whose guests' devices read and write `device_fds`
/// (the taps of `--net`): `read` and `write` are allowed on exactly those fds (as ranges of
/// consecutive numbers), `read` on no other.
pub fn filter_with_device_fds(
    profile: Profile,
    device_fds: &[i32],
) -> Result<BpfProgram, SandboxError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for name in ALLOWED
        .iter()
        .map(|(name, _)| *name)
        .chain(DENIED.iter().copied())
    {
        rules.insert(syscall_number(name), Vec::new());
    }
    let rule = |conditions| {
        SeccompRule::new(conditions).map_err(|e| SandboxError::Build(seccompiler::Error::from(e)))
    };
    let mut requests = vec![
        KVM_RUN,
        KVM_GET_REGS,
        KVM_GET_SREGS,
        KVM_GET_XSAVE,
        KVM_SET_XSAVE,
    ];
    if profile != Profile::Runner {
        requests.extend(FLEET_IOCTLS.iter().map(|(_, request)| *request));
    }
    let ioctl_rules = requests
        .into_iter()
        .map(|r| rule(vec![arg_eq(1, r)]))
        .collect::<Result<_, _>>()?;
    rules.insert(syscall_number("ioctl"), ioctl_rules);
    let no_exec = SeccompCondition::new(
        2,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
        0,
    )
    .expect("argument index below 6");
    rules.insert(
        syscall_number("mprotect"),
        vec![rule(vec![no_exec.clone()])?],
    );
    rules.insert(syscall_number("mmap"), vec![rule(vec![no_exec])?]);
    let mut write_rules: Vec<SeccompRule> = [1u64, 2]
        .into_iter()
        .map(|fd| rule(vec![arg_eq(0, fd)]))
        .collect::<Result<_, _>>()?;
    let device_rules = fd_ranges(device_fds)
        .into_iter()
        .map(|(low, high)| rule(fd_in_range(low, high)))
        .collect::<Result<Vec<_>, _>>()?;
    write_rules.extend(device_rules.iter().cloned());
    rules.insert(syscall_number("write"), write_rules);
    let mut readable = vec![0u64];
    if let Profile::ServeWorker { client_slot } = profile {
        // The slot is an fd number the server reserved for this runner for its whole life
        // (see `serve::slots`): nothing else can ever be at that number.
        let slot = u64::try_from(client_slot).map_err(|_| SandboxError::BadSlot(client_slot))?;
        let flags = u64::from(SERVE_SEND_FLAGS.unsigned_abs());
        rules.insert(
            syscall_number("sendto"),
            vec![rule(vec![arg_eq(0, slot), arg_eq(3, flags)])?],
        );
        rules.insert(syscall_number("poll"), Vec::new());
        // The client's stdin follows its request on the connection.
        readable.push(slot);
    }
    let mut read_rules: Vec<SeccompRule> = readable
        .into_iter()
        .map(|fd| rule(vec![arg_eq(0, fd)]))
        .collect::<Result<_, _>>()?;
    read_rules.extend(device_rules);
    rules.insert(syscall_number("read"), read_rules);
    rules.insert(
        syscall_number("openat2"),
        vec![rule(vec![arg_eq_u64(
            3,
            size_of::<libc::open_how>() as u64,
        )])?],
    );
    rules.insert(
        syscall_number("mkdirat"),
        vec![rule(vec![arg_eq(2, 0o777)])?],
    );
    rules.insert(
        syscall_number("unlinkat"),
        vec![
            rule(vec![arg_eq(2, 0)])?,
            rule(vec![arg_eq(2, libc::AT_REMOVEDIR as u64)])?,
        ],
    );
    rules.insert(syscall_number("renameat2"), vec![rule(vec![arg_eq(4, 0)])?]);
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

/// `fds` as sorted ranges of consecutive numbers (`(low, high)`, both included).
fn fd_ranges(fds: &[i32]) -> Vec<(u64, u64)> {
    let mut sorted: Vec<u64> = fds
        .iter()
        .filter_map(|fd| u64::try_from(*fd).ok())
        .collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for fd in sorted {
        match ranges.last_mut() {
            Some((_, high)) if *high + 1 == fd => *high = fd,
            _ => ranges.push((fd, fd)),
        }
    }
    ranges
}

/// Conditions: the first argument (an fd) lies in `low..=high`.
fn fd_in_range(low: u64, high: u64) -> Vec<SeccompCondition> {
    if low == high {
        return vec![arg_eq(0, low)];
    }
    let bound = |op, value| {
        SeccompCondition::new(0, SeccompCmpArgLen::Dword, op, value).expect("argument index 0")
    };
    vec![bound(SeccompCmpOp::Ge, low), bound(SeccompCmpOp::Le, high)]
}

thread_local! {
    static SANDBOXED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Which threads a filter is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// A thread that runs one guest that already exists ([`ALLOWED`]).
    Runner,
    /// A `vmm serve` runner: a fleet worker that may also send (never blocking) on the one fd
    /// where the server puts each of its clients' connections, and wait for it with `poll`
    /// ([`SERVE_WORKER_EXTRA`]).
    ServeWorker {
        /// The runner's client slot: an fd number reserved for it for the server's life.
        client_slot: i32,
    },
    /// A `vmm fleet` worker, which also creates and destroys VMs through an open `/dev/kvm`
    /// ([`ALLOWED`] plus the VM-creation ioctls of [`FLEET_IOCTLS`]).
    FleetWorker,
}

/// The extra `ioctl` requests of a fleet worker: creating a VM, its memory and vCPU.
pub const FLEET_IOCTLS: &[(&str, u64)] = &[
    ("KVM_CREATE_VM", 0xae01),
    ("KVM_CHECK_EXTENSION", 0xae03),
    ("KVM_GET_VCPU_MMAP_SIZE", 0xae04),
    ("KVM_CREATE_VCPU", 0xae41),
    (
        "KVM_SET_USER_MEMORY_REGION",
        ioc_write(0x46, size_of::<kvm_bindings::kvm_userspace_memory_region>()),
    ),
    (
        "KVM_SET_REGS",
        ioc_write(0x82, size_of::<kvm_bindings::kvm_regs>()),
    ),
    (
        "KVM_SET_SREGS",
        ioc_write(0x84, size_of::<kvm_bindings::kvm_sregs>()),
    ),
    ("KVM_SET_CPUID2", ioc_write(0x90, 8)),
    ("KVM_GET_TSC_KHZ", 0xaea3),
];

const fn ioc_write(nr: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}

/// Confines the calling thread as a [`Profile::Runner`] (once; later calls do nothing).
pub fn confine_this_thread() -> Result<(), SandboxError> {
    confine_this_thread_as(Profile::Runner)
}

/// Confines the calling thread (once; later calls do nothing).
pub fn confine_this_thread_as(profile: Profile) -> Result<(), SandboxError> {
    confine_this_thread_with(profile, &[])
}

/// Confines the calling thread, whose guests' devices use `device_fds` (see
/// [`filter_with_device_fds`]); once, later calls do nothing.
pub fn confine_this_thread_with(profile: Profile, device_fds: &[i32]) -> Result<(), SandboxError> {
    if SANDBOXED.get() {
        return Ok(());
    }
    type Cached = std::sync::OnceLock<Result<BpfProgram, String>>;
    static RUNNER: Cached = Cached::new();
    static FLEET: Cached = Cached::new();
    // Filters with device fds differ per guest: only the plain ones are cached.
    let cache = match profile {
        _ if !device_fds.is_empty() => None,
        Profile::Runner => Some(&RUNNER),
        Profile::FleetWorker => Some(&FLEET),
        Profile::ServeWorker { .. } => None,
    };
    let built;
    let filter =
        match cache.map(|c| c.get_or_init(|| filter_for(profile).map_err(|e| format!("{e:#?}")))) {
            Some(Ok(filter)) => filter,
            // Building is deterministic: if it failed once, build again for the real error.
            _ => {
                built = filter_with_device_fds(profile, device_fds)?;
                &built
            }
        };
    static DENIALS: std::sync::OnceLock<Result<BpfProgram, String>> = std::sync::OnceLock::new();
    let denials = match DENIALS.get_or_init(|| denial_filter().map_err(|e| format!("{e:#?}"))) {
        Ok(filter) => filter,
        Err(_) => &denial_filter()?,
    };
    install_sigsys_reporter();
    // The denials first: once the main filter is in, installing filters is itself forbidden.
    seccompiler::apply_filter(denials).map_err(SandboxError::Apply)?;
    seccompiler::apply_filter(filter).map_err(SandboxError::Apply)?;
    SANDBOXED.set(true);
    Ok(())
}

/// System calls that fail with `EACCES` instead of stopping the VMM, because library code
/// probes with them and copes with the failure: glibc's `free` reads
/// `/proc/sys/vm/overcommit_memory` once before shrinking a thread's heap.
///
/// The main filter lets these through; this second filter turns them into errors (seccomp
/// takes the most restrictive verdict of all filters, and an error beats "allow").
pub const DENIED: &[&str] = &["openat"];

fn denial_filter() -> Result<BpfProgram, SandboxError> {
    let rules = DENIED
        .iter()
        .map(|name| (syscall_number(name), Vec::new()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        TargetArch::x86_64,
    )
    .map_err(|e| SandboxError::Build(e.into()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::Build(e.into()))
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
        libc::syscall(libc::SYS_exit_group, abi::exit_status::VMM_ERROR);
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
        assert_eq!(KVM_GET_XSAVE, 0x9000_aea4);
        assert_eq!(KVM_SET_XSAVE, 0x5000_aea5);
    }

    #[test]
    fn test_fleet_ioctl_numbers_match_the_kernel() {
        let number = |name| FLEET_IOCTLS.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(number("KVM_SET_USER_MEMORY_REGION"), 0x4020_ae46);
        assert_eq!(number("KVM_SET_REGS"), 0x4090_ae82);
        assert_eq!(number("KVM_SET_SREGS"), 0x4138_ae84);
        assert_eq!(number("KVM_SET_CPUID2"), 0x4008_ae90);
    }

    #[test]
    fn test_filter_builds() {
        let program = run_loop_filter().unwrap();
        assert!(program.len() > ALLOWED.len());
    }

    #[test]
    fn test_fd_ranges_merge_consecutive_fds() {
        assert_eq!(fd_ranges(&[9, 3, 4, 5, 7, 8, 4]), vec![(3, 5), (7, 9)]);
        assert_eq!(fd_ranges(&[]), vec![]);
        assert_eq!(fd_ranges(&[-1, 6]), vec![(6, 6)]);
    }

    #[test]
    fn test_filter_with_device_fds_builds() {
        let plain = filter_for(Profile::Runner).unwrap();
        let with_tap = filter_with_device_fds(Profile::Runner, &[5]).unwrap();
        let with_taps = filter_with_device_fds(Profile::FleetWorker, &[5, 6, 7, 20]).unwrap();
        assert!(with_tap.len() > plain.len());
        assert!(with_taps.len() > plain.len());
    }

    #[test]
    fn test_allowed_list_is_small_and_known() {
        // 27 for the run loop, 9 for stdin and volumes.
        assert!(ALLOWED.len() <= 36, "{} syscalls", ALLOWED.len());
        for (name, _) in ALLOWED.iter().chain(SERVE_WORKER_EXTRA) {
            assert!(SYSCALL_NAMES.contains(name), "{name}");
        }
    }

    #[test]
    fn test_serve_worker_filter_builds_and_refuses_a_bad_slot() {
        let runner = run_loop_filter().unwrap();
        let serve = filter_for(Profile::ServeWorker { client_slot: 7 }).unwrap();
        assert!(serve.len() > runner.len());
        assert!(matches!(
            filter_for(Profile::ServeWorker { client_slot: -1 }),
            Err(SandboxError::BadSlot(-1))
        ));
    }
}
