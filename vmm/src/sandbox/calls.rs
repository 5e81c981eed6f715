//! Which system calls each thread role may make, and why: one table per role and per feature
//! of the guests a thread runs, so that a filter holds only what its thread can need. The
//! argument checks are in the parent module's filter builder; the reasons here say them.

/// A system call a filter allows, and why.
pub type Allowance = (&'static str, &'static str);

/// The runner of `vmm run IMAGE` (no flags): the thread that runs the guest (`vmm run`'s main
/// thread, which afterwards only prints its report and exits), with its stdin (fd 0) and
/// console. Every runner allows these, except `read` and `ppoll` when its guests have neither
/// a stdin stream nor a tap.
pub const ALLOWED: &[Allowance] = &[
    (
        "ioctl",
        "KVM_RUN; KVM_GET_REGS, KVM_GET_SREGS, KVM_GET_XSAVE (crash reports and core files; the state vmm snapshot saves) only",
    ),
    ("write", "fds 1 and 2 only: the guest's console, reports"),
    (
        "read",
        "the guest's stdin stream only (vmm run: fd 0; a serve runner: its client slot)",
    ),
    (
        "ppoll",
        "the guest's poll hypercall: wait for its stdin or tap (or nothing) until a deadline",
    ),
    ("futex", "locks (stdout; the watchdog's list of deadlines)"),
    ("clock_nanosleep", "the guest's sleep hypercall"),
    (
        "clock_gettime",
        "timestamps when the vDSO cannot serve them",
    ),
    (
        "rt_sigprocmask",
        "thread exit (glibc blocks signals while a thread ends)",
    ),
    (
        "restart_syscall",
        "resume an interrupted sleep (after SIGSTOP/SIGCONT or a debugger)",
    ),
    ("brk", "memory allocation"),
    ("mmap", "memory allocation, never with PROT_EXEC"),
    (
        "mprotect",
        "memory allocation (glibc thread arenas), never with PROT_EXEC",
    ),
    ("munmap", "memory release"),
    (
        "close",
        "dropping a VM the thread holds when its start fails (its vCPU and VM fds)",
    ),
    ("exit", "thread exit"),
    (
        "exit_group",
        "process exit (the report of a blocked call, an abort)",
    ),
];

/// The calls of [`ALLOWED`] that only a guest with input to read needs. `ppoll` is not one:
/// a guest may make the poll hypercall with nothing to wait for (a timed wait), and the runner
/// then waits in `ppoll` on no fds.
pub(super) const INPUT_CALLS: [&str; 1] = ["read"];

/// What a thread that finishes restored VMs after its confinement adds (fleet and serve
/// workers; `vmm run --from` loads the FPU state before its runner is confined).
pub const WITH_RESTORE: &[Allowance] =
    &[("ioctl", "also KVM_SET_XSAVE: the snapshot's FPU/SSE state")];

/// What the runner of `vmm run --timeline` adds: it also reports on the run.
pub const WITH_TIMELINE: &[Allowance] =
    &[("mincore", "counting the guest pages touched, after the run")];

/// What a runner whose guest a watchdog may interrupt adds (`--timeout`).
pub const WITH_TIMEOUT: &[Allowance] = &[(
    "rt_sigreturn",
    "return from the watchdog's signal, which interrupts KVM_RUN at the deadline",
)];

/// What a runner whose guests share host directories adds (`--volume`).
pub const WITH_VOLUMES: &[Allowance] = &[
    ("pread64", "volume file reads (straight into guest RAM)"),
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
    ("close", "closing volume files"),
];

/// What a runner whose guests read a stdin file adds (a fleet manifest's `stdin`).
pub const WITH_STDIN_FILE: &[Allowance] = &[(
    "pread64",
    "the stdin file, read at the instance's own offset",
)];

/// What a runner whose guests have a network device adds (`--net`).
pub const WITH_NET: &[Allowance] = &[
    ("read", "also the tap's fd: frames for the guest"),
    ("write", "also the tap's fd: frames the guest sends"),
    ("ppoll", "wait on the tap"),
];

/// What a `vmm fleet` worker adds to a runner (with the features its guests use, and a
/// watchdog's signal and restores always): it creates and destroys VMs.
pub const FLEET_WORKER_EXTRA: &[Allowance] = &[
    (
        "ioctl",
        "also KVM_CREATE_VM, KVM_CHECK_EXTENSION, KVM_GET_VCPU_MMAP_SIZE, KVM_CREATE_VCPU, KVM_SET_USER_MEMORY_REGION, KVM_SET_REGS, KVM_SET_SREGS, KVM_SET_CPUID2, KVM_GET_TSC_KHZ, KVM_GET_MSRS: creating VMs through the open /dev/kvm (and reading a vCPU's TSC for its boot info)",
    ),
    (
        "getrandom",
        "a fresh random seed for each guest it creates (or reuses)",
    ),
    ("close", "destroying a VM: its vCPU and VM fds"),
    (
        "madvise",
        "memory release (long-lived: heap pages go back as they are freed)",
    ),
];

/// What a thread adds that makes VMs which may be reused, or reuses them (`vmm fleet` and
/// `vmm serve` without `--no-reuse`: fleet threads, serve's refill and runners).
pub const WITH_REUSE: &[Allowance] = &[
    (
        "ioctl",
        "also KVM_GET_VCPU_EVENTS, KVM_GET_DEBUGREGS, KVM_GET_XCRS, KVM_SET_DEVICE_ATTR (and KVM_GET_MSRS, which creating VMs allows already): reusing a VM (its vCPU compared with a fresh one's, its TSC offset set back to zero)",
    ),
    (
        "mincore",
        "reusing a VM: finding the guest pages its last guest populated",
    ),
    (
        "mlock2",
        "a reusable VM's RAM kept in memory as it is populated (MLOCK_ONFAULT), so that no page the guest wrote can go to swap unseen",
    ),
];

/// What a `vmm serve` runner adds to a fleet worker.
pub const SERVE_WORKER_EXTRA: &[Allowance] = &[
    (
        "sendto",
        "the reply, on the runner's own client slot only, MSG_DONTWAIT|MSG_NOSIGNAL only",
    ),
    (
        "poll",
        "wait, until the request's deadline, for a slow client to take more of its reply",
    ),
];

/// The watchdog of `--timeout` (and the deadline thread of fleet and serve).
pub const WATCHDOG: &[Allowance] = &[
    (
        "futex",
        "waiting for the next deadline (a condition variable)",
    ),
    (
        "clock_gettime",
        "timestamps when the vDSO cannot serve them",
    ),
    ("getpid", "pthread_kill: the process to signal"),
    ("tgkill", "interrupting KVM_RUN at the deadline"),
    (
        "rt_sigprocmask",
        "pthread_kill and thread exit block signals around their work",
    ),
    ("brk", "memory allocation"),
    ("mmap", "memory allocation, never with PROT_EXEC"),
    ("munmap", "memory release"),
    ("madvise", "memory release (a thread's stack when it ends)"),
    ("restart_syscall", "resume an interrupted wait"),
    ("exit", "thread exit"),
    ("write", "fd 2 only: the report of a blocked call"),
    ("exit_group", "process exit (the report of a blocked call)"),
];

/// The log writer of `vmm serve`.
pub const LOGGER: &[Allowance] = &[
    ("write", "fd 2 only: the log lines"),
    ("futex", "waiting for the next line"),
    ("brk", "memory allocation"),
    ("mmap", "memory allocation, never with PROT_EXEC"),
    (
        "mprotect",
        "memory allocation (glibc thread arenas), never with PROT_EXEC",
    ),
    ("munmap", "memory release"),
    ("madvise", "memory release"),
    ("restart_syscall", "resume an interrupted write or wait"),
    ("exit_group", "process exit (the report of a blocked call)"),
];

/// System calls that fail with `EACCES` on confined threads that do not allow them, instead of
/// stopping the VMM, because library code tries them and copes with the failure.
///
/// A prefix of the thread's one filter answers them with the error before the main filter's
/// rules, which would trap them.
pub const DENIED: &[Allowance] = &[
    (
        "openat",
        "glibc's free reads /proc/sys/vm/overcommit_memory before shrinking a thread's heap",
    ),
    (
        "mremap",
        "glibc's realloc of a large block: it falls back to allocate, copy, free",
    ),
    (
        "madvise",
        "runners: glibc releasing a thread's stack or heap pages early; the pages go with the process",
    ),
];

/// `vmm seccomp-list`: every role's calls with their reasons, one call per line (a section's
/// heading starts with `#`).
pub fn listing() -> String {
    let sections: [(String, &[Allowance]); 15] = [
        (
            format!(
                "# runner: the thread that runs a guest; `vmm run IMAGE` allows these {}",
                ALLOWED.len()
            ),
            ALLOWED,
        ),
        ("# runner, restoring (vmm run --from)".into(), WITH_RESTORE),
        ("# runner, with --timeout".into(), WITH_TIMEOUT),
        ("# runner, with --timeline".into(), WITH_TIMELINE),
        ("# runner, with --volume".into(), WITH_VOLUMES),
        ("# runner, with a stdin file (fleet manifests)".into(), WITH_STDIN_FILE),
        ("# runner, with --net".into(), WITH_NET),
        (
            "# fleet and serve threads that make or reuse VMs to be reused (not with --no-reuse)"
                .into(),
            WITH_REUSE,
        ),
        (
            "# fleet worker: a runner (restoring, with --timeout, and the features of the fleet's guests), plus".into(),
            FLEET_WORKER_EXTRA,
        ),
        (
            "# serve runner: a fleet worker (with stdin, and --volume if the server has volume roots), plus".into(),
            SERVE_WORKER_EXTRA,
        ),
        ("# serve refill thread: a fleet worker that creates VMs and runs none".into(), &[]),
        ("# watchdog (--timeout; the deadline thread of fleet and serve)".into(), WATCHDOG),
        ("# serve log writer".into(), LOGGER),
        (
            "# denied with EACCES where not allowed above (library calls that cope with failure)"
                .into(),
            DENIED,
        ),
        (
            "# anything else stops the VMM: `seccomp: blocked syscall NAME (NR)`, status 125".into(),
            &[],
        ),
    ];
    let mut out = String::new();
    for (heading, calls) in sections {
        out.push_str(&heading);
        out.push('\n');
        for (name, why) in calls {
            out.push_str(&format!("{name:<16} {why}\n"));
        }
    }
    out
}
