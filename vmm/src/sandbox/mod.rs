//! The VMM sandboxes itself: before a guest's first `KVM_RUN`, the thread that runs it (and the
//! watchdog) may only make the system calls its role needs ([`calls`] lists them with their
//! reasons), and of those only the ones its guests' features need ([`Grants`]): a guest
//! without volumes gets none of their calls, one without a tap no `read` on it. Arguments are
//! checked where seccomp can check them (which request for `ioctl`, which fd for `write` and
//! `read`, which flags for `unlinkat` and `renameat2`, no `PROT_EXEC`, the size of `openat2`'s
//! `open_how`).
//!
//! The `ioctl` rule checks the request, not the fd: the filter is then the same for every
//! guest of a kind, so it is built once per process and profile (fleet and serve confine many
//! threads alike). The requests allowed do nothing on a file that is not a vCPU. Installing a
//! program is not cheap here (the kernel JIT-compiles each one: ~80 µs for `vmm run`'s), so a
//! thread installs exactly one, on `vmm run`'s path right before the first `KVM_RUN`.
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

mod calls;
mod syscalls;

pub use calls::{
    ALLOWED, Allowance, DENIED, FLEET_WORKER_EXTRA, LOGGER, SERVE_WORKER_EXTRA, WATCHDOG, WITH_NET,
    WITH_RESTORE, WITH_REUSE, WITH_STDIN_FILE, WITH_TIMELINE, WITH_TIMEOUT, WITH_VOLUMES, listing,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

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
    /// A serve runner's client slot, a stdin stream or a tap is not an fd number.
    #[error("invalid fd {0} for the sandbox")]
    BadFd(i32),
}

const fn ioc_read(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}

const fn ioc_write(nr: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}

const fn ioc_read_write(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (0xae << 8) | nr
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

/// The extra `ioctl` requests of a thread that creates VMs (fleet workers, serve's refill):
/// creating a VM, its memory and vCPU, and reading its vCPU's TSC for the boot info.
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
    // The guest's TSC at boot, paired with the wall clock in its boot info.
    (
        "KVM_GET_MSRS",
        ioc_read_write(0x88, size_of::<kvm_bindings::kvm_msrs>()),
    ),
];

/// The extra `ioctl` requests of fleet workers and serve runners, which reuse VMs
/// (`vm::recycle`): reading the vCPU state compared with a fresh vCPU's, and setting the TSC
/// back to zero (through its offset).
pub const RECYCLE_IOCTLS: &[(&str, u64)] = &[
    (
        "KVM_GET_VCPU_EVENTS",
        ioc_read(0x9f, size_of::<kvm_bindings::kvm_vcpu_events>()),
    ),
    (
        "KVM_GET_DEBUGREGS",
        ioc_read(0xa1, size_of::<kvm_bindings::kvm_debugregs>()),
    ),
    (
        "KVM_GET_XCRS",
        ioc_read(0xa6, size_of::<kvm_bindings::kvm_xcrs>()),
    ),
    ("KVM_SET_DEVICE_ATTR", KVM_SET_DEVICE_ATTR),
];

/// `KVM_SET_DEVICE_ATTR` (on a vCPU: its TSC offset).
pub const KVM_SET_DEVICE_ATTR: u64 = ioc_write(0xe1, size_of::<kvm_bindings::kvm_device_attr>());

/// The only flags a serve runner may pass to `sendto`: never block, never raise SIGPIPE.
pub const SERVE_SEND_FLAGS: i32 = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;

/// What the guests a thread runs may use, known before the thread is confined; each feature
/// adds the calls (or the fds) it needs, and nothing else is allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// The stream the guests' stdin is read from (`vmm run`: fd 0): `read` on it, `ppoll`.
    pub stdin_stream: Option<RawFd>,
    /// The guests read a stdin file at an offset of their own (a fleet manifest): `pread64`.
    pub stdin_file: bool,
    /// The guests share host directories ([`WITH_VOLUMES`]).
    pub volumes: bool,
    /// The taps of `--net`: `read` and `write` on exactly these fds, `ppoll`.
    pub taps: Vec<RawFd>,
    /// A watchdog may interrupt the guests (`--timeout`): `rt_sigreturn`.
    pub timeout: bool,
    /// The guests are restored from snapshots: `KVM_SET_XSAVE`.
    pub restore: bool,
    /// The thread counts the guest pages touched for `--timeline` after the run: `mincore`.
    pub timeline: bool,
    /// The thread makes or reuses VMs that may be reused ([`WITH_REUSE`]).
    pub reuse: bool,
}

impl Grants {
    /// Both grants' features.
    pub fn union(mut self, other: &Grants) -> Grants {
        self.stdin_stream = self.stdin_stream.or(other.stdin_stream);
        self.stdin_file |= other.stdin_file;
        self.volumes |= other.volumes;
        self.taps.extend(&other.taps);
        self.taps.sort_unstable();
        self.taps.dedup();
        self.timeout |= other.timeout;
        self.restore |= other.restore;
        self.timeline |= other.timeline;
        self.reuse |= other.reuse;
        self
    }
}

/// Which threads a filter is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Profile {
    /// A thread that runs one guest that already exists ([`ALLOWED`], and what its grants
    /// add).
    Runner(Grants),
    /// A `vmm fleet` worker, which also creates and destroys VMs through an open `/dev/kvm`
    /// ([`FLEET_WORKER_EXTRA`]); its grants are the union of its guests'.
    FleetWorker(Grants),
    /// A `vmm serve` runner: a fleet worker that may also send (never blocking) on the one fd
    /// where the server puts each of its clients' connections, and wait for it with `poll`
    /// ([`SERVE_WORKER_EXTRA`]); the slot is its guests' stdin stream.
    ServeWorker {
        /// The runner's client slot: an fd number reserved for it for the server's life.
        client_slot: RawFd,
        /// What its guests may use besides.
        grants: Grants,
    },
    /// The watchdog's thread ([`WATCHDOG`]).
    Watchdog,
    /// The log writer of `vmm serve` ([`LOGGER`]).
    Logger,
}

impl Profile {
    /// The plain runner of `vmm run IMAGE`.
    pub fn plain_runner() -> Profile {
        Profile::Runner(Grants {
            stdin_stream: Some(libc::STDIN_FILENO),
            ..Grants::default()
        })
    }

    /// The grants of a profile that runs guests, with a serve runner's slot as its stdin.
    fn grants(&self) -> Option<Grants> {
        match self {
            Profile::Runner(grants) => Some(grants.clone()),
            Profile::FleetWorker(grants) => Some(Grants {
                timeout: true,
                restore: true,
                ..grants.clone()
            }),
            Profile::ServeWorker {
                client_slot,
                grants,
            } => Some(Grants {
                stdin_stream: Some(*client_slot),
                timeout: true,
                restore: true,
                ..grants.clone()
            }),
            Profile::Watchdog | Profile::Logger => None,
        }
    }

    /// The names and reasons of the calls this profile allows, in listing order (a call may
    /// appear more than once, for more than one reason).
    pub fn allowances(&self) -> Vec<Allowance> {
        let Some(grants) = self.grants() else {
            return match self {
                Profile::Watchdog => WATCHDOG.to_vec(),
                _ => LOGGER.to_vec(),
            };
        };
        let input = grants.stdin_stream.is_some() || !grants.taps.is_empty();
        let mut calls: Vec<Allowance> = ALLOWED
            .iter()
            .filter(|(name, _)| input || !calls::INPUT_CALLS.contains(name))
            .copied()
            .collect();
        let features: [(bool, &[Allowance]); 7] = [
            (grants.restore, WITH_RESTORE),
            (grants.timeline, WITH_TIMELINE),
            (grants.timeout, WITH_TIMEOUT),
            (grants.volumes, WITH_VOLUMES),
            (grants.stdin_file, WITH_STDIN_FILE),
            (!grants.taps.is_empty(), WITH_NET),
            (grants.reuse, WITH_REUSE),
        ];
        for (granted, extra) in features {
            if granted {
                calls.extend_from_slice(extra);
            }
        }
        if matches!(self, Profile::FleetWorker(_) | Profile::ServeWorker { .. }) {
            calls.extend_from_slice(FLEET_WORKER_EXTRA);
        }
        if matches!(self, Profile::ServeWorker { .. }) {
            calls.extend_from_slice(SERVE_WORKER_EXTRA);
        }
        calls
    }

    /// The distinct system calls this profile allows.
    pub fn call_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.allowances().iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

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

fn fd_number(fd: RawFd) -> Result<u64, SandboxError> {
    u64::try_from(fd).map_err(|_| SandboxError::BadFd(fd))
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SandboxError> {
    SeccompRule::new(conditions).map_err(|e| SandboxError::Build(seccompiler::Error::from(e)))
}

/// Rules allowing a call whose first argument is one of `fds` (as ranges of consecutive
/// numbers).
fn on_fds(fds: &[u64]) -> Result<Vec<SeccompRule>, SandboxError> {
    fd_ranges(fds)
        .into_iter()
        .map(|(low, high)| rule(fd_in_range(low, high)))
        .collect()
}

/// The filter for `profile`: every call of [`Profile::allowances`], with its arguments
/// checked where seccomp can.
pub fn filter_for(profile: &Profile) -> Result<BpfProgram, SandboxError> {
    // The denied calls never reach this filter: `with_denials_first` answers them before it.
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = profile
        .call_names()
        .into_iter()
        .map(|name| (syscall_number(name), Vec::new()))
        .collect();
    let mut restrict = |name: &str, conditions: Vec<SeccompRule>| {
        if let Some(rules) = rules.get_mut(&syscall_number(name)) {
            *rules = conditions;
        }
    };
    let grants = profile.grants();
    if let Some(grants) = &grants {
        let mut requests = vec![KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS, KVM_GET_XSAVE];
        if grants.restore {
            requests.push(KVM_SET_XSAVE);
        }
        if !matches!(profile, Profile::Runner(_)) {
            requests.extend(FLEET_IOCTLS.iter().map(|(_, request)| *request));
        }
        if grants.reuse {
            requests.extend(RECYCLE_IOCTLS.iter().map(|(_, request)| *request));
        }
        let ioctl_rules = requests
            .into_iter()
            .map(|r| rule(vec![arg_eq(1, r)]))
            .collect::<Result<_, _>>()?;
        restrict("ioctl", ioctl_rules);
        let taps = grants
            .taps
            .iter()
            .map(|fd| fd_number(*fd))
            .collect::<Result<Vec<_>, _>>()?;
        let mut readable = taps.clone();
        if let Some(stream) = grants.stdin_stream {
            readable.push(fd_number(stream)?);
        }
        restrict("read", on_fds(&readable)?);
        let mut writable = taps;
        writable.extend([1, 2]);
        restrict("write", on_fds(&writable)?);
    } else {
        restrict("write", on_fds(&[2])?);
    }
    let no_exec = SeccompCondition::new(
        2,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
        0,
    )
    .expect("argument index below 6");
    restrict("mprotect", vec![rule(vec![no_exec.clone()])?]);
    restrict("mmap", vec![rule(vec![no_exec])?]);
    restrict(
        "openat2",
        vec![rule(vec![arg_eq_u64(
            3,
            size_of::<libc::open_how>() as u64,
        )])?],
    );
    restrict("mkdirat", vec![rule(vec![arg_eq(2, 0o777)])?]);
    restrict(
        "unlinkat",
        vec![
            rule(vec![arg_eq(2, 0)])?,
            rule(vec![arg_eq(2, libc::AT_REMOVEDIR as u64)])?,
        ],
    );
    restrict("renameat2", vec![rule(vec![arg_eq(4, 0)])?]);
    if let Profile::ServeWorker { client_slot, .. } = profile {
        // The slot is an fd number the server reserved for this runner for its whole life
        // (see `serve::slots`): nothing else can ever be at that number.
        let flags = u64::from(SERVE_SEND_FLAGS.unsigned_abs());
        restrict(
            "sendto",
            vec![rule(vec![
                arg_eq(0, fd_number(*client_slot)?),
                arg_eq(3, flags),
            ])?],
        );
    }
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
fn fd_ranges(fds: &[u64]) -> Vec<(u64, u64)> {
    let mut sorted = fds.to_vec();
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

/// Confines the calling thread as `profile` (once; later calls do nothing).
///
/// Filters are built once per process and profile (fleet and serve confine many threads
/// alike).
pub fn confine_this_thread_as(profile: &Profile) -> Result<(), SandboxError> {
    if SANDBOXED.get() {
        return Ok(());
    }
    type Built = Arc<BpfProgram>;
    static PROGRAMS: Mutex<Vec<(Profile, Built)>> = Mutex::new(Vec::new());
    let known = lock(&PROGRAMS)
        .iter()
        .find(|(p, _)| p == profile)
        .map(|(_, program)| Arc::clone(program));
    let program = match known {
        Some(program) => program,
        None => {
            let program = Arc::new(with_denials_first(profile, filter_for(profile)?));
            lock(&PROGRAMS).push((profile.clone(), Arc::clone(&program)));
            program
        }
    };
    install_sigsys_reporter();
    seccompiler::apply_filter(&program).map_err(SandboxError::Apply)?;
    SANDBOXED.set(true);
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The calls of [`DENIED`] that `profile` does not allow.
pub fn denied_calls(profile: &Profile) -> Vec<&'static str> {
    let allowed = profile.call_names();
    DENIED
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !allowed.contains(name))
        .collect()
}

/// `main` behind a prefix that makes [`denied_calls`] fail with `EACCES`: one program, so
/// that a confined thread installs one filter (each `seccomp` call JIT-compiles its program,
/// about 60 µs here even for a few instructions).
///
/// seccompiler gives every rule of a filter one action; the prefix is the one place with two
/// (the error for the denied calls, the main filter's verdict for everything else), so it is
/// written here, in classic BPF: check the architecture (anything but x86-64 is killed, as
/// the main filter would), load the call number, and return the error on a match; every
/// other call falls through to `main`, which checks the architecture again.
fn with_denials_first(profile: &Profile, main: BpfProgram) -> BpfProgram {
    const LOAD_WORD: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JUMP_IF_EQUAL: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JUMP: u16 = 0x05; // BPF_JMP | BPF_JA
    const RETURN: u16 = 0x06; // BPF_RET | BPF_K
    const ARCH_OFFSET: u32 = 4; // seccomp_data.arch
    const NR_OFFSET: u32 = 0; // seccomp_data.nr
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    let op = |code, jt, jf, k| seccompiler::sock_filter { code, jt, jf, k };
    let denied: Vec<u32> = denied_calls(profile)
        .into_iter()
        .map(|name| syscall_number(name) as u32)
        .collect();
    let count = u8::try_from(denied.len()).expect("DENIED is a short list");
    let mut program = vec![
        op(LOAD_WORD, 0, 0, ARCH_OFFSET),
        op(JUMP_IF_EQUAL, 1, 0, AUDIT_ARCH_X86_64),
        op(RETURN, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        op(LOAD_WORD, 0, 0, NR_OFFSET),
    ];
    // Each match jumps over the rest of the matches and the jump past the error, to the error.
    for (index, nr) in denied.into_iter().enumerate() {
        program.push(op(JUMP_IF_EQUAL, count - index as u8, 0, nr));
    }
    program.push(op(JUMP, 0, 0, 1));
    program.push(op(
        RETURN,
        0,
        0,
        libc::SECCOMP_RET_ERRNO | libc::EACCES as u32,
    ));
    program.extend(main);
    program
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
    fn test_recycle_ioctl_numbers_match_the_kernel() {
        let number = |name| RECYCLE_IOCTLS.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(number("KVM_GET_VCPU_EVENTS"), 0x8040_ae9f);
        assert_eq!(number("KVM_GET_DEBUGREGS"), 0x8080_aea1);
        assert_eq!(number("KVM_GET_XCRS"), 0x8188_aea6);
        assert_eq!(number("KVM_SET_DEVICE_ATTR"), 0x4018_aee1);
    }

    #[test]
    fn test_fleet_ioctl_numbers_match_the_kernel() {
        let number = |name| FLEET_IOCTLS.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(number("KVM_SET_USER_MEMORY_REGION"), 0x4020_ae46);
        assert_eq!(number("KVM_GET_MSRS"), 0xc008_ae88);
        assert_eq!(number("KVM_SET_REGS"), 0x4090_ae82);
        assert_eq!(number("KVM_SET_SREGS"), 0x4138_ae84);
        assert_eq!(number("KVM_SET_CPUID2"), 0x4008_ae90);
    }

    #[test]
    fn test_plain_runner_allows_at_most_16_calls() {
        let calls = Profile::plain_runner().call_names();
        assert!(calls.len() <= 16, "{} calls: {calls:?}", calls.len());
        assert_eq!(calls.len(), ALLOWED.len());
        assert!(filter_for(&Profile::plain_runner()).is_ok());
    }

    #[test]
    fn test_runner_without_input_has_no_read() {
        let calls = Profile::Runner(Grants::default()).call_names();
        assert!(!calls.contains(&"read"), "{calls:?}");
    }

    #[test]
    fn test_runner_without_input_may_still_wait_in_the_poll_hypercall() {
        let calls = Profile::Runner(Grants::default()).call_names();
        assert!(calls.contains(&"ppoll"), "{calls:?}");
    }

    #[test]
    fn test_runner_without_volumes_has_none_of_their_calls() {
        let plain = Profile::plain_runner().call_names();
        for (name, _) in WITH_VOLUMES.iter().filter(|(n, _)| *n != "close") {
            assert!(!plain.contains(name), "{name}");
        }
        let with_volumes = Profile::Runner(Grants {
            volumes: true,
            ..Grants::default()
        })
        .call_names();
        assert!(with_volumes.contains(&"openat2"), "{with_volumes:?}");
    }

    #[test]
    fn test_denied_calls_are_those_a_profile_does_not_allow() {
        assert!(denied_calls(&Profile::plain_runner()).contains(&"madvise"));
        let fleet = Profile::FleetWorker(Grants::default());
        assert!(!denied_calls(&fleet).contains(&"madvise"));
        assert!(denied_calls(&fleet).contains(&"openat"));
    }

    /// Forks a child that installs the plain runner's program and makes `call`; the child's
    /// wait status.
    fn status_of_confined_child(call: impl FnOnce() -> i32) -> i32 {
        let program = with_denials_first(
            &Profile::plain_runner(),
            filter_for(&Profile::plain_runner()).unwrap(),
        );
        // SAFETY: the child only installs the prebuilt filter, makes one call and `_exit`s;
        // it allocates nothing (the program was built before the fork).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = match seccompiler::apply_filter(&program) {
                Ok(()) => call(),
                Err(_) => 100,
            };
            // SAFETY: ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above, writing its status to a local.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    #[test]
    fn test_denied_call_fails_with_eacces_in_the_one_program() {
        let status = status_of_confined_child(|| {
            // SAFETY: madvise on a null, zero-length range touches no memory.
            let result = unsafe { libc::madvise(std::ptr::null_mut(), 0, libc::MADV_DONTNEED) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            if result == -1 && errno == Some(libc::EACCES) {
                0
            } else {
                1
            }
        });
        assert!(
            libc::WIFEXITED(status),
            "child stopped by a signal: {status:#x}"
        );
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "madvise did not fail with EACCES"
        );
    }

    #[test]
    fn test_call_outside_the_profile_is_stopped_behind_the_denials() {
        let status = status_of_confined_child(|| {
            // SAFETY: getppid has no preconditions; the filter should stop it first.
            unsafe { libc::syscall(libc::SYS_getppid) };
            0
        });
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "getppid was not trapped: {status:#x}"
        );
    }

    #[test]
    fn test_runner_with_a_timeout_returns_from_signals() {
        let calls = Profile::Runner(Grants {
            timeout: true,
            ..Grants::default()
        })
        .call_names();
        assert!(calls.contains(&"rt_sigreturn"), "{calls:?}");
        assert!(
            !Profile::plain_runner()
                .call_names()
                .contains(&"rt_sigreturn")
        );
    }

    #[test]
    fn test_runner_never_starts_processes_or_threads() {
        for profile in [
            Profile::plain_runner(),
            Profile::FleetWorker(Grants::default()),
            Profile::Watchdog,
            Profile::Logger,
        ] {
            let calls = profile.call_names();
            for call in [
                "clone", "clone3", "fork", "execve", "socket", "openat", "open",
            ] {
                assert!(!calls.contains(&call), "{profile:?} allows {call}");
            }
        }
    }

    #[test]
    fn test_every_listed_call_is_known() {
        let tables = [
            ALLOWED,
            WITH_RESTORE,
            WITH_TIMELINE,
            WITH_TIMEOUT,
            WITH_VOLUMES,
            WITH_STDIN_FILE,
            WITH_NET,
            FLEET_WORKER_EXTRA,
            SERVE_WORKER_EXTRA,
            WATCHDOG,
            LOGGER,
            DENIED,
        ];
        for (name, why) in tables.concat() {
            assert!(SYSCALL_NAMES.contains(&name), "{name}");
            assert!(!why.is_empty(), "{name}");
        }
    }

    #[test]
    fn test_fd_ranges_merge_consecutive_fds() {
        assert_eq!(fd_ranges(&[9, 3, 4, 5, 7, 8, 4]), vec![(3, 5), (7, 9)]);
        assert_eq!(fd_ranges(&[]), vec![]);
    }

    #[test]
    fn test_filter_with_taps_builds() {
        let plain = filter_for(&Profile::plain_runner()).unwrap();
        let with_tap = filter_for(&Profile::Runner(Grants {
            taps: vec![5],
            ..Grants::default()
        }))
        .unwrap();
        let fleet = filter_for(&Profile::FleetWorker(Grants {
            taps: vec![5, 6, 7, 20],
            ..Grants::default()
        }))
        .unwrap();
        assert!(with_tap.len() > plain.len() / 2);
        assert!(fleet.len() > plain.len());
    }

    #[test]
    fn test_serve_worker_filter_builds_and_refuses_a_bad_slot() {
        let serve = |client_slot| Profile::ServeWorker {
            client_slot,
            grants: Grants::default(),
        };
        let calls = serve(7).call_names();
        assert!(
            calls.contains(&"sendto") && calls.contains(&"read"),
            "{calls:?}"
        );
        assert!(filter_for(&serve(7)).is_ok());
        assert!(matches!(
            filter_for(&serve(-1)),
            Err(SandboxError::BadFd(-1))
        ));
    }

    #[test]
    fn test_every_role_may_write_the_report_of_a_blocked_call() {
        // The SIGSYS handler writes one line to fd 2; a role without `write` would die of a
        // second SIGSYS inside the handler (status 159, no line) instead of exiting 125.
        for profile in [
            Profile::plain_runner(),
            Profile::Runner(Grants::default()),
            Profile::FleetWorker(Grants::default()),
            Profile::Watchdog,
            Profile::Logger,
        ] {
            assert!(profile.call_names().contains(&"write"), "{profile:?}");
        }
    }

    #[test]
    fn test_listing_names_every_role() {
        let text = listing();
        for role in [
            "# runner",
            "# fleet worker",
            "# serve runner",
            "# watchdog",
            "# serve log",
        ] {
            assert!(text.contains(role), "{role}");
        }
        assert!(text.contains(&format!("allows these {}", ALLOWED.len())));
    }
}
