//! The guest/VMM ABI of flick: the one source of truth for every number that the guest kernel
//! and the VMM share.
//!
//! - [`port`]: the I/O ports a guest may use, and what the 32-bit value written to each means.
//! - [`hypercall`]: the `#[repr(C)]` argument structs that a port value points at.
//! - [`BootInfo`]: what the VMM hands the guest in `RDI` at entry.
//! - [`note`]: the ELF note that marks an image as built for this ABI.
//! - [`exit_status`]: the VMM's process exit statuses.
//! - [`input`], [`fs`], [`errno`]: the stdin and volume devices' requests and error codes.
//!
//! Guest → VMM calls are one `out dx, eax` to a port of [`port`]; for ports that take arguments,
//! `eax` is the guest-physical address of an argument struct. The guest is untrusted: the VMM
//! validates every address and length it finds here against guest RAM before using it.

#![no_std]

/// Version of this ABI. The VMM refuses images whose note carries another version.
///
/// Bump it whenever a port, struct layout or boot-info field changes meaning.
pub const ABI_VERSION: u32 = 5;

/// I/O ports (guest → VMM).
///
/// The hypercall ports are listed once, as [`port::Hypercall`]; the `u16` constants below are
/// the same numbers for code that writes them (the kernel's `out` instructions, asm tests).
/// The TSS I/O permission bitmap opens the hypercall range [`port::FIRST`]..=[`port::LAST`]
/// (a 32-bit `out` needs all four of its ports open, so the range is opened whole) and the
/// port ranges of the VMM's devices (COM1); [`port::Hypercall::Crash`] lies outside both.
pub mod port {
    /// The hypercalls, one port each. Every one takes a 32-bit `out` (any other width is a
    /// malformed hypercall that stops the guest).
    #[repr(u16)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum Hypercall {
        /// Value: the app's exit code. The VMM stops the guest and exits with `code & 0xff`.
        Exit = 0x500,
        /// Value: guest-physical address of a [`super::hypercall::ConsoleWrite`].
        ConsoleWrite = 0x501,
        /// Value: exception vector. Written only by the VMM's ring-0 exception stubs: the port
        /// lies outside the range open to ring 3, so a guest cannot forge a crash report. The
        /// frame is on the ring-0 stack as described in [`super::exception`].
        Crash = 0x510,
        /// Value: a boot milestone number from [`super::milestone`].
        Milestone = 0x503,
        /// Value: microseconds to sleep. The VMM waits (no busy loop in the guest), then
        /// resumes the guest; a `--timeout` that passes meanwhile stops it.
        Sleep = 0x504,
        /// Value: ignored. The guest parks until the VMM releases it (`vmm fleet --resident`
        /// holds many guests this way; `vmm run` releases at once).
        Wait = 0x505,
        /// Value: 0. The kernel reached its snapshot point (only when boot info has
        /// [`super::boot_flags::SNAPSHOT`]): `vmm snapshot` saves the VM here. When a
        /// restored VM resumes, the VMM has set `eax` to 1 and rewritten boot info
        /// (arguments, environment, clock, random seed) for this run.
        Snapshot = 0x506,
        /// Value: guest-physical address of a [`super::hypercall::Poll`]. The VMM waits until
        /// one of the sources named in `interest` has input, or `timeout_ns` passes (a
        /// `--timeout` that passes meanwhile stops the guest), and writes the ready ones to
        /// `ready`. One exit per wait; the guest never spins.
        Poll = 0x507,
    }

    impl Hypercall {
        /// Every hypercall, in port order.
        pub const ALL: [Hypercall; 8] = [
            Hypercall::Exit,
            Hypercall::ConsoleWrite,
            Hypercall::Milestone,
            Hypercall::Sleep,
            Hypercall::Wait,
            Hypercall::Snapshot,
            Hypercall::Poll,
            Hypercall::Crash,
        ];

        /// The hypercall at `port`, if any.
        pub const fn from_port(port: u16) -> Option<Hypercall> {
            let mut i = 0;
            while i < Self::ALL.len() {
                if Self::ALL[i] as u16 == port {
                    return Some(Self::ALL[i]);
                }
                i += 1;
            }
            None
        }

        /// Its port number.
        pub const fn port(self) -> u16 {
            self as u16
        }

        /// Whether ring 3 may use it: every hypercall in [`FIRST`]..=[`LAST`], that is all
        /// but [`Hypercall::Crash`], which only the VMM's ring-0 stubs write.
        pub const fn open_to_ring3(self) -> bool {
            self as u16 >= FIRST && self as u16 <= LAST
        }
    }

    /// First port reserved for hypercalls.
    pub const FIRST: u16 = 0x500;
    /// Last port of the range open to ring 3. Unassigned ports in it read as all-ones and
    /// ignore writes (the VMM counts them).
    pub const LAST: u16 = 0x50f;

    /// [`Hypercall::Exit`].
    pub const EXIT: u16 = Hypercall::Exit as u16;
    /// [`Hypercall::ConsoleWrite`].
    pub const CONSOLE_WRITE: u16 = Hypercall::ConsoleWrite as u16;
    /// [`Hypercall::Crash`].
    pub const CRASH: u16 = Hypercall::Crash as u16;
    /// [`Hypercall::Milestone`].
    pub const MILESTONE: u16 = Hypercall::Milestone as u16;
    /// [`Hypercall::Sleep`].
    pub const SLEEP: u16 = Hypercall::Sleep as u16;
    /// [`Hypercall::Wait`].
    pub const WAIT: u16 = Hypercall::Wait as u16;
    /// [`Hypercall::Snapshot`].
    pub const SNAPSHOT: u16 = Hypercall::Snapshot as u16;
    /// [`Hypercall::Poll`].
    pub const POLL: u16 = Hypercall::Poll as u16;

    /// First port of the 16550 UART on COM1 (eight registers).
    pub const COM1: u16 = 0x3f8;
    /// Number of COM1 registers.
    pub const COM1_LEN: u16 = 8;

    /// The stdin device: value = guest-physical address of a [`super::input::InputRead`].
    pub const STDIN: u16 = 0x520;
    /// Ports of the stdin device (a 32-bit `out` covers all four).
    pub const STDIN_LEN: u16 = 4;
    /// The volume device: value = guest-physical address of a [`super::fs::FsRequest`].
    pub const FS: u16 = 0x524;
    /// Ports of the volume device.
    pub const FS_LEN: u16 = 4;

    /// First port of the network device (`vmm run --net`); its range is [`NET`]..[`NET`] +
    /// [`NET_LEN`]. Each port takes a 32-bit `out` of a guest-physical address; without a
    /// network device the ports ignore writes, so the struct comes back unchanged.
    pub const NET: u16 = 0x530;
    /// Number of ports the network device owns.
    pub const NET_LEN: u16 = 16;
    /// Value: address of a [`super::hypercall::NetInfo`] the VMM fills in (MAC, address,
    /// gateway, MTU); `mtu` stays 0 when the guest has no network device.
    pub const NET_INFO: u16 = NET;
    /// Value: address of a [`super::hypercall::NetExchange`]: send frames, receive frames,
    /// and, when none arrived, wait for one (one exit for all three).
    pub const NET_EXCHANGE: u16 = NET + 4;
}

/// Argument structs of the hypercalls, as the guest lays them out in its memory.
pub mod hypercall {
    /// Console stream numbers for [`ConsoleWrite::stream`].
    pub mod stream {
        /// The VMM's standard output.
        pub const STDOUT: u32 = 1;
        /// The VMM's standard error.
        pub const STDERR: u32 = 2;
    }

    /// Largest buffer one console write may carry.
    pub const CONSOLE_WRITE_MAX: u32 = 64 * 1024;

    /// Input sources for [`Poll::interest`] and [`Poll::ready`]: one bit each. A device that
    /// gives the guest input (stdin, a network interface) owns one bit.
    pub mod poll_source {
        /// The guest's standard input has bytes (or end of file).
        pub const STDIN: u32 = 1 << 0;
        /// The network interface has a frame.
        pub const NET: u32 = 1 << 1;
        /// Every source this ABI defines.
        pub const ALL: u32 = STDIN | NET;
    }

    /// Arguments of [`super::port::POLL`]. The VMM writes `ready` back; the rest it only reads.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Poll {
        /// The longest wait in nanoseconds (`u64::MAX`: no limit but the guest's timeout).
        pub timeout_ns: u64,
        /// The sources to wait for ([`poll_source`] bits); 0 makes the call a plain sleep.
        pub interest: u32,
        /// Out: the sources that have input (a subset of `interest`; 0 after a timeout).
        pub ready: u32,
    }

    /// Largest Ethernet frame either way: a 1500-byte MTU plus the 14-byte header (no FCS,
    /// no VLAN tag).
    pub const NET_FRAME_MAX: u32 = 1514;
    /// Smallest frame the VMM sends: an Ethernet header.
    pub const NET_FRAME_MIN: u32 = 14;
    /// Most frames one [`NetExchange`] sends, and most it receives.
    pub const NET_BATCH_MAX: u32 = 64;

    /// Bits of [`NetInfo::flags`].
    pub mod net_flags {
        /// [`super::NetInfo::gateway`] is set.
        pub const GATEWAY: u8 = 1 << 0;
    }

    /// Arguments of [`super::port::NET_INFO`]: the VMM writes the whole struct.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct NetInfo {
        /// The guest's MAC address.
        pub mac: [u8; 6],
        /// Prefix length of `ipv4` (`/24`).
        pub prefix_len: u8,
        /// [`net_flags`].
        pub flags: u8,
        /// The guest's IPv4 address, network byte order.
        pub ipv4: [u8; 4],
        /// The default gateway, network byte order (when [`net_flags::GATEWAY`] is set).
        pub gateway: [u8; 4],
        /// The MTU (frames carry at most `mtu + 14` bytes); 0: no network device.
        pub mtu: u32,
        /// Most frames one [`NetExchange`] moves each way.
        pub max_batch: u32,
    }

    /// One frame of a [`NetExchange`]: a buffer in guest memory.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct NetFrame {
        /// Guest-physical address of the bytes.
        pub buf: u64,
        /// Sent frames: the frame's length. Received frames: written by the VMM.
        pub len: u32,
        /// Received frames: the buffer's size (a longer frame is dropped). Sent: ignored.
        pub cap: u32,
    }

    /// Arguments of [`super::port::NET_EXCHANGE`]. The VMM first sends the `tx_count` frames
    /// at `tx` (in order), then fills up to `rx_count` buffers at `rx` with frames that have
    /// arrived; if none had arrived, it waits up to `wait_ns` for one (`u64::MAX`: until the
    /// guest's timeout). It writes back `received`, `dropped` and each received frame's `len`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct NetExchange {
        /// Guest-physical address of `tx_count` [`NetFrame`]s to send.
        pub tx: u64,
        /// Guest-physical address of `rx_count` [`NetFrame`]s to fill.
        pub rx: u64,
        /// Frames to send, at most [`NET_BATCH_MAX`].
        pub tx_count: u32,
        /// Buffers to fill, at most [`NET_BATCH_MAX`].
        pub rx_count: u32,
        /// The longest wait for a frame when none is there (0: do not wait).
        pub wait_ns: u64,
        /// Out: frames received (the first `received` of `rx`).
        pub received: u32,
        /// Out: frames of `tx` that the VMM dropped (over its rate limit, or not from the
        /// guest's MAC address).
        pub dropped: u32,
    }

    /// Arguments of [`super::port::CONSOLE_WRITE`]: write `len` bytes at guest-physical `buf`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct ConsoleWrite {
        /// Guest-physical address of the bytes.
        pub buf: u64,
        /// Number of bytes, at most [`CONSOLE_WRITE_MAX`].
        pub len: u32,
        /// One of [`stream`].
        pub stream: u32,
    }
}

/// The largest transfer one stdin read or file read/write moves (one VM exit each).
pub const MAX_TRANSFER: u64 = 1 << 20;

/// The stdin device ([`port::STDIN`]): the guest's standard input, read in large chunks.
///
/// A read never blocks the guest: without input yet it answers [`errno::WOULD_BLOCK`], and the
/// guest waits with the `Poll` hypercall on [`hypercall::poll_source::STDIN`] (one exit, no
/// spinning; `--timeout` holds). End of input is a read of 0 bytes with status 0.
pub mod input {
    /// Arguments of a stdin read. The VMM writes `status` and `count`; the rest it only reads.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct InputRead {
        /// Guest-physical address of the buffer.
        pub buf: u64,
        /// Its length, at most [`super::MAX_TRANSFER`].
        pub len: u32,
        /// Out: 0, or an [`super::errno`] code ([`super::errno::WOULD_BLOCK`]: no input yet).
        pub status: u32,
        /// Out: bytes read (0 with status 0: end of input).
        pub count: u64,
    }
}

/// The volume device ([`port::FS`]): files in directories the VMM shares from the host.
///
/// The guest names files by absolute guest paths (`/data/in.csv`); the VMM finds the volume
/// whose guest path is the longest prefix and resolves the rest beneath that volume's host
/// directory only. Each call is one [`FsRequest`]; the VMM writes `errno` (0 on success) and
/// `result` back. Open files are numbered handles, at most [`MAX_OPEN_FILES`] per guest.
pub mod fs {
    /// Operations ([`FsRequest::op`]).
    pub mod op {
        /// Open `path` with [`super::open_flags`] `flags`; `result` = the handle.
        pub const OPEN: u32 = 1;
        /// Close `handle`.
        pub const CLOSE: u32 = 2;
        /// Read at most `len` bytes of `handle` at `offset` into `buf`; `result` = bytes read.
        pub const READ: u32 = 3;
        /// Write `len` bytes from `buf` to `handle` at `offset` (at the end if opened with
        /// [`super::open_flags::APPEND`]); `result` = bytes written.
        pub const WRITE: u32 = 4;
        /// A [`super::Metadata`] of `path` (symlinks followed) into `buf`.
        pub const STAT: u32 = 5;
        /// A [`super::Metadata`] of `handle` into `buf`.
        pub const FSTAT: u32 = 6;
        /// The next entries of directory `handle` into `buf`, each a [`super::DirEntryHeader`]
        /// then its name; `result` = bytes filled (0: no more entries).
        pub const READ_DIR: u32 = 7;
        /// Create directory `path`.
        pub const MKDIR: u32 = 8;
        /// Remove file `path` (a symlink itself, never its target).
        pub const REMOVE_FILE: u32 = 9;
        /// Remove the empty directory `path`.
        pub const REMOVE_DIR: u32 = 10;
        /// Rename `path` to `path2` (within one volume), replacing `path2` if it exists.
        pub const RENAME: u32 = 11;
    }

    /// Bits of [`FsRequest::flags`] for [`op::OPEN`].
    pub mod open_flags {
        /// Open for reading.
        pub const READ: u32 = 1 << 0;
        /// Open for writing.
        pub const WRITE: u32 = 1 << 1;
        /// Every write goes to the end (implies writing).
        pub const APPEND: u32 = 1 << 2;
        /// Truncate to 0 bytes (needs writing).
        pub const TRUNCATE: u32 = 1 << 3;
        /// Create the file if it does not exist.
        pub const CREATE: u32 = 1 << 4;
        /// Create the file; fail if it exists.
        pub const CREATE_NEW: u32 = 1 << 5;
        /// Open a directory, for [`super::op::READ_DIR`] (read only).
        pub const DIRECTORY: u32 = 1 << 6;
        /// Every flag defined.
        pub const ALL: u32 = READ | WRITE | APPEND | TRUNCATE | CREATE | CREATE_NEW | DIRECTORY;
    }

    /// File kinds, in [`Metadata::kind`] and [`DirEntryHeader::kind`].
    pub mod kind {
        /// A regular file.
        pub const FILE: u8 = 1;
        /// A directory.
        pub const DIR: u8 = 2;
        /// A symbolic link (only in directory listings: opening follows it).
        pub const SYMLINK: u8 = 3;
        /// Anything else (FIFO, socket, device): volumes do not open these.
        pub const OTHER: u8 = 4;
    }

    /// Longest guest path, in bytes.
    pub const PATH_MAX: u32 = 4096;
    /// Most files and directories one guest holds open at once.
    pub const MAX_OPEN_FILES: u32 = 64;

    /// One volume request. The VMM writes `errno` and `result`; the rest it only reads.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct FsRequest {
        /// One of [`op`].
        pub op: u32,
        /// The open file or directory, for operations on a handle.
        pub handle: u32,
        /// [`open_flags`] for [`op::OPEN`]; 0 otherwise.
        pub flags: u32,
        /// Out: 0, or an [`super::errno`] code.
        pub errno: u32,
        /// File offset for reads and writes (at most `i64::MAX`, with `len`).
        pub offset: u64,
        /// Guest-physical address of the data buffer.
        pub buf: u64,
        /// Its length, at most [`super::MAX_TRANSFER`].
        pub len: u64,
        /// Guest-physical address of the path (UTF-8, no NUL, at most [`PATH_MAX`] bytes).
        pub path: u64,
        /// Length of the path.
        pub path_len: u32,
        /// Length of the second path ([`op::RENAME`]'s target).
        pub path2_len: u32,
        /// Guest-physical address of the second path.
        pub path2: u64,
        /// Out: the handle, or the bytes transferred.
        pub result: u64,
    }

    /// What [`op::STAT`] and [`op::FSTAT`] write.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Metadata {
        /// Size in bytes.
        pub len: u64,
        /// Last modification, nanoseconds since the Unix epoch (0 if earlier).
        pub modified_ns: u64,
        /// One of [`kind`].
        pub kind: u8,
        /// Reserved, zero.
        pub reserved: [u8; 3],
        /// Permission bits (`0o7777`); a read-only volume shows no write bits.
        pub mode: u32,
    }

    /// The header of each entry [`op::READ_DIR`] writes; `name_len` bytes of name follow.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct DirEntryHeader {
        /// Bytes of the name after this header.
        pub name_len: u16,
        /// One of [`kind`].
        pub kind: u8,
        /// Reserved, zero.
        pub reserved: u8,
    }
}

/// Error codes the stdin and volume devices give back (Linux's numbers where Linux has one).
pub mod errno {
    /// No such file or directory, or no volume at that guest path.
    pub const NOT_FOUND: u32 = 2;
    /// The operation was interrupted; try again.
    pub const INTERRUPTED: u32 = 4;
    /// An I/O error on the host (or an error without a code of its own here).
    pub const IO: u32 = 5;
    /// No such open file, or not open for that (a write to a file opened for reading).
    pub const BAD_HANDLE: u32 = 9;
    /// No input yet: poll, then read again.
    pub const WOULD_BLOCK: u32 = 11;
    /// The host refused (`EPERM`, `EACCES`), or the operation would remove or rename a
    /// volume's own directory.
    pub const PERMISSION_DENIED: u32 = 13;
    /// The file exists.
    pub const ALREADY_EXISTS: u32 = 17;
    /// A rename across two volumes.
    pub const CROSSES_DEVICES: u32 = 18;
    /// A path component is not a directory.
    pub const NOT_A_DIRECTORY: u32 = 20;
    /// A directory where a file was expected.
    pub const IS_A_DIRECTORY: u32 = 21;
    /// A bad flag, offset, or path.
    pub const INVALID_INPUT: u32 = 22;
    /// The guest (or the host) has too many files open.
    pub const TOO_MANY_OPEN_FILES: u32 = 24;
    /// The file would grow beyond what the host allows.
    pub const FILE_TOO_LARGE: u32 = 27;
    /// The host's disk (or quota) is full.
    pub const STORAGE_FULL: u32 = 28;
    /// A write to a read-only volume (`:ro`), or to a read-only host filesystem.
    pub const READ_ONLY: u32 = 30;
    /// A path or name too long.
    pub const NAME_TOO_LONG: u32 = 36;
    /// The directory is not empty.
    pub const DIRECTORY_NOT_EMPTY: u32 = 39;
    /// Too many symlinks, or a "magic" link (`/proc/self/fd/N` and the like): refused.
    pub const FILESYSTEM_LOOP: u32 = 40;
    /// The path leads outside its volume (`..` past the volume's root, an absolute symlink,
    /// a symlink pointing out): refused by the VMM (WASI's number for it).
    pub const NOT_CAPABLE: u32 = 76;
    /// A FIFO, socket or device file: volumes serve regular files and directories only.
    pub const UNSUPPORTED: u32 = 95;
}

/// Bits of [`BootInfo::flags`].
pub mod boot_flags {
    /// `vmm snapshot` is booting this guest: stop at the snapshot point.
    pub const SNAPSHOT: u32 = 1 << 0;
    /// This guest was restored from a snapshot.
    pub const RESTORED: u32 = 1 << 1;
    /// The VMM measures a timeline: report boot milestones ([`super::milestone`]), one VM
    /// exit each. Without it the kernel reports none (an exit costs 7-25 µs on PVM).
    pub const MILESTONES: u32 = 1 << 2;
}

/// Boot milestones the kernel reports through [`port::MILESTONE`].
pub mod milestone {
    /// The kernel is about to call the app's `main`.
    pub const ENTERED_MAIN: u32 = 1;
}

/// The exception stubs: the only ring-0 code a guest runs, written by the VMM (never taken from
/// an image or a snapshot) on a supervisor-only page of its own.
pub mod exception {
    /// Number of stubs: one for each architectural exception vector 0..32.
    pub const VECTORS: usize = 32;
    /// Bytes between consecutive stubs.
    pub const STUB_STRIDE: usize = 16;
    /// Size of the whole stub table.
    pub const TABLE_SIZE: usize = VECTORS * STUB_STRIDE;
    /// What each stub does, so that the VMM can read the frame: `push rax; push rdx;
    /// mov eax, VECTOR; mov dx, CRASH; out dx, eax`. The VMM then finds, from `RSP` upwards,
    /// the saved `rdx`, the saved `rax`, the error code if the vector pushes one, then `rip`,
    /// `cs`, `rflags`, `rsp`, `ss`.
    pub const SAVED_REGISTERS: usize = 2;

    /// Whether the CPU pushes an error code for `vector`.
    pub const fn has_error_code(vector: u8) -> bool {
        matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
    }
}

/// The ELF note that marks a flick image.
///
/// The note has name [`NAME`], type [`TYPE`] and an [`AbiNoteDesc`] as descriptor. An ELF
/// without it is not an image for this VMM.
pub mod note {
    /// Note name, NUL included.
    pub const NAME: &[u8; 10] = b"flick-abi\0";
    /// Note type.
    pub const TYPE: u32 = 0x464c_4b01;

    /// The note's descriptor.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct AbiNoteDesc {
        /// [`super::ABI_VERSION`] of the kernel the image was built with.
        pub abi_version: u32,
        /// Reserved, zero.
        pub flags: u32,
        /// Reserved, zero (ABI version 3 and older put their own exception stubs here; the
        /// VMM now writes them itself).
        pub reserved: u64,
    }

    /// Size of the descriptor in bytes.
    pub const DESC_SIZE: usize = core::mem::size_of::<AbiNoteDesc>();
}

/// Magic number at the start of [`BootInfo`] (`"FLICKBI1"`).
pub const BOOT_INFO_MAGIC: u64 = u64::from_le_bytes(*b"FLICKBI1");

/// What the VMM hands the guest: `RDI` holds its guest-physical (= virtual) address at entry.
///
/// The arguments follow as `argc` NUL-terminated UTF-8 strings packed at `args`, the first
/// being the image's name, then `envc` more strings of the form `KEY=VALUE`: `args_len` bytes
/// in all.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootInfo {
    /// [`BOOT_INFO_MAGIC`].
    pub magic: u64,
    /// [`ABI_VERSION`].
    pub abi_version: u32,
    /// Number of arguments at `args`.
    pub argc: u32,
    /// Number of `KEY=VALUE` environment strings after the arguments.
    pub envc: u32,
    /// [`boot_flags`].
    pub flags: u32,
    /// Guest-physical address of the packed arguments and environment.
    pub args: u64,
    /// Bytes at `args`.
    pub args_len: u64,
    /// Size of guest RAM in bytes.
    pub mem_size: u64,
    /// First byte of free RAM (page-aligned), for the heap.
    pub heap_start: u64,
    /// One past the last byte of free RAM.
    pub heap_end: u64,
    /// Lowest address of the stack (a guard page lies below it).
    pub stack_bottom: u64,
    /// Initial stack pointer.
    pub stack_top: u64,
    /// TSC frequency in kHz (0 when unknown).
    pub tsc_khz: u64,
    /// Wall-clock time at boot, in nanoseconds since the Unix epoch.
    pub boot_unix_ns: u64,
    /// Guest TSC value at `boot_unix_ns`.
    pub boot_tsc: u64,
    /// Fresh random bits for this run (differs between runs restored from one snapshot).
    pub random_seed: u64,
}

/// Exit statuses of the `vmm` process. Any other status is the app's own exit code.
pub mod exit_status {
    /// The app panicked.
    pub const PANIC: i32 = 101;
    /// The guest ran longer than `--timeout`.
    pub const TIMEOUT: i32 = 124;
    /// The VMM failed: it could not start the guest (bad image, bad flag, no KVM, too little
    /// memory), or it stopped itself (a system call its sandbox blocks, an internal error).
    /// Never the status of anything a guest did.
    pub const VMM_ERROR: i32 = 125;
    /// The guest crashed: CPU exception, triple fault, emulation failure, bad hypercall.
    pub const CRASH: i32 = 134;
    /// The guest's stdout was closed while it wrote (as a process killed by SIGPIPE: 128 + 13).
    pub const BROKEN_PIPE: i32 = 141;
}

#[cfg(feature = "vm-memory")]
mod byte_valued {
    //! The structs the VMM copies in and out of guest memory as whole values.
    use vm_memory::ByteValued;

    // SAFETY: `#[repr(C)]` structs of integers only, without padding (their sizes are checked
    // by the tests below): every bit pattern is a valid value.
    unsafe impl ByteValued for super::hypercall::ConsoleWrite {}
    // SAFETY: as above.
    unsafe impl ByteValued for super::hypercall::Poll {}
    // SAFETY: as above.
    unsafe impl ByteValued for super::hypercall::NetInfo {}
    // SAFETY: as above.
    unsafe impl ByteValued for super::hypercall::NetFrame {}
    // SAFETY: as above.
    unsafe impl ByteValued for super::hypercall::NetExchange {}
    // SAFETY: as above.
    unsafe impl ByteValued for super::BootInfo {}
    // SAFETY: as above.
    unsafe impl ByteValued for super::input::InputRead {}
    // SAFETY: as above.
    unsafe impl ByteValued for super::fs::FsRequest {}
    // SAFETY: as above (the reserved bytes are fields too).
    unsafe impl ByteValued for super::fs::Metadata {}
    // SAFETY: as above.
    unsafe impl ByteValued for super::fs::DirEntryHeader {}
    // SAFETY: as above.
    unsafe impl ByteValued for super::note::AbiNoteDesc {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_console_write_layout_is_16_bytes() {
        assert_eq!(core::mem::size_of::<hypercall::ConsoleWrite>(), 16);
    }

    #[test]
    fn test_poll_layout_is_16_bytes() {
        assert_eq!(core::mem::size_of::<hypercall::Poll>(), 16);
    }

    #[test]
    fn test_net_layouts_have_no_padding() {
        assert_eq!(size_of::<hypercall::NetInfo>(), 6 + 1 + 1 + 4 + 4 + 4 + 4);
        assert_eq!(size_of::<hypercall::NetFrame>(), 16);
        assert_eq!(
            size_of::<hypercall::NetExchange>(),
            8 + 8 + 4 + 4 + 8 + 4 + 4
        );
    }

    #[test]
    fn test_net_ports_lie_outside_the_hypercall_range() {
        const { assert!(port::NET > port::CRASH) };
        const { assert!(port::NET_EXCHANGE + 4 <= port::NET + port::NET_LEN) };
        assert!(!(port::FIRST..=port::LAST).contains(&port::NET));
    }

    #[test]
    fn test_input_read_layout_is_24_bytes() {
        assert_eq!(core::mem::size_of::<input::InputRead>(), 8 + 4 + 4 + 8);
    }

    #[test]
    fn test_fs_request_layout_has_no_padding() {
        assert_eq!(
            core::mem::size_of::<fs::FsRequest>(),
            4 * 4 + 8 * 4 + 4 * 2 + 8 * 2
        );
        assert_eq!(core::mem::size_of::<fs::Metadata>(), 8 + 8 + 1 + 3 + 4);
        assert_eq!(core::mem::size_of::<fs::DirEntryHeader>(), 4);
    }

    #[test]
    fn test_device_ports_lie_outside_the_hypercall_range() {
        for first in [port::STDIN, port::FS] {
            assert!(
                first > port::CRASH,
                "past the hypercalls and the crash port"
            );
        }
        assert_eq!(port::STDIN + port::STDIN_LEN, port::FS);
    }

    #[test]
    fn test_note_desc_layout_is_16_bytes() {
        assert_eq!(note::DESC_SIZE, 16);
    }

    #[test]
    fn test_boot_info_layout_is_stable() {
        assert_eq!(core::mem::size_of::<BootInfo>(), 112);
    }

    #[test]
    fn test_error_code_vectors_match_sdm() {
        let with_code: [u8; 8] = [8, 10, 11, 12, 13, 14, 17, 21];
        for v in 0..32u8 {
            let expected = with_code.contains(&v) || v == 29 || v == 30;
            assert_eq!(exception::has_error_code(v), expected, "vector {v}");
        }
    }

    #[test]
    fn test_ports_lie_in_hypercall_range() {
        for call in port::Hypercall::ALL {
            assert_eq!(
                (port::FIRST..=port::LAST).contains(&call.port()),
                call.open_to_ring3()
            );
            assert_eq!(port::Hypercall::from_port(call.port()), Some(call));
        }
        assert_eq!(port::Hypercall::from_port(port::LAST), None);
        assert_eq!(port::Hypercall::from_port(port::COM1), None);
    }

    #[test]
    fn test_crash_port_is_closed_to_ring3() {
        assert!(!port::Hypercall::Crash.open_to_ring3());
        // A 32-bit `out` to the last open port must not reach it either.
        const { assert!(port::CRASH > port::LAST) };
        assert!(port::Hypercall::Exit.open_to_ring3());
    }

    #[test]
    fn test_boot_info_has_no_padding() {
        // 4 u32 + 12 u64: ByteValued needs every byte to be a field's.
        assert_eq!(size_of::<BootInfo>(), 4 * 4 + 12 * 8);
    }
}
