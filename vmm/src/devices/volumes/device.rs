//! The volume device: the guest's file operations ([`abi::fs::FsRequest`], one exit each) on
//! its volumes, with a table of at most [`abi::fs::MAX_OPEN_FILES`] open files and
//! directories.
//!
//! Every guest value is checked where it enters: the request struct and every buffer against
//! guest RAM, lengths against [`abi::MAX_TRANSFER`] and `PATH_MAX`, offsets against
//! `i64::MAX`, flags against those defined, handles against the table. A request that no
//! kernel would make (a buffer outside RAM, an oversized transfer, an unknown operation) stops
//! the guest with a report; everything an app can ask for wrongly (a missing file, a bad
//! offset, too many open files, a write to a `:ro` volume, a path out of its volume) gets an
//! [`abi::errno`] code back. File data moves between the host file and guest RAM with one
//! `pread`/`pwrite` per request, without a copy in the VMM.
//!
//! Open files are not part of a snapshot: a guest holding any at its snapshot point cannot be
//! snapshotted ([`FsDevice::snapshot_refusal`]), and a restored guest starts with none.

use super::Volume;
use super::resolve::{self, Located, entry, from_host, last_errno, open_beneath, relative};
use crate::devices::{DeviceContext, DeviceStateError, DeviceStop, PortDevice};
use crate::memory::GuestRam;
use abi::MAX_TRANSFER;
use abi::errno;
use abi::fs::{DirEntryHeader, FsRequest, Metadata, kind, op, open_flags};
use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use vm_memory::ByteValued;

/// The device's name in reports.
const NAME: &str = "volumes";
/// The ports of the device.
pub(crate) const PORTS: std::ops::Range<u16> = abi::port::FS..abi::port::FS + abi::port::FS_LEN;
/// Bytes asked of `getdents64` at a time (about a hundred entries).
const DIRENT_BATCH: usize = 16 * 1024;

/// What went wrong with a request.
enum Fault {
    /// Something an app can get wrong: the code goes back to it.
    Errno(u32),
    /// Something no kernel would send: the guest is stopped.
    Bad(String),
}

impl From<u32> for Fault {
    fn from(code: u32) -> Self {
        Fault::Errno(code)
    }
}

type Reply = Result<u64, Fault>;

fn bad(why: impl Into<String>) -> Fault {
    Fault::Bad(why.into())
}

/// An open directory: its fd and the entries read from the host but not yet handed over.
struct OpenDir {
    fd: OwnedFd,
    pending: VecDeque<(Vec<u8>, u8)>,
    ended: bool,
}

/// An entry of the handle table.
enum Handle {
    File {
        fd: OwnedFd,
        readable: bool,
        writable: bool,
        read_only_volume: bool,
    },
    Dir {
        dir: OpenDir,
        read_only_volume: bool,
    },
}

impl Handle {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Handle::File { fd, .. } => fd.as_fd(),
            Handle::Dir { dir, .. } => dir.fd.as_fd(),
        }
    }

    fn read_only_volume(&self) -> bool {
        match self {
            Handle::File {
                read_only_volume, ..
            }
            | Handle::Dir {
                read_only_volume, ..
            } => *read_only_volume,
        }
    }
}

/// The volume device of one guest.
pub(crate) struct FsDevice {
    volumes: Vec<Volume>,
    handles: Vec<Option<Handle>>,
}

impl FsDevice {
    /// A device serving `volumes` (none: every path is "not found").
    pub(crate) fn new(volumes: Vec<Volume>) -> Self {
        Self {
            volumes,
            handles: Vec::new(),
        }
    }

    /// Files and directories open now.
    pub(crate) fn open_count(&self) -> usize {
        self.handles.iter().filter(|h| h.is_some()).count()
    }

    fn serve(&mut self, ram: &GuestRam, req: &FsRequest) -> Reply {
        match req.op {
            op::OPEN => self.open(ram, req),
            op::CLOSE => self.close(req.handle),
            op::READ => self.transfer(ram, req, false),
            op::WRITE => self.transfer(ram, req, true),
            op::STAT => self.stat_path(ram, req),
            op::FSTAT => self.stat_handle(ram, req),
            op::READ_DIR => self.read_dir(ram, req),
            op::MKDIR | op::REMOVE_FILE | op::REMOVE_DIR => self.change_entry(ram, req),
            op::RENAME => self.rename(ram, req),
            other => Err(bad(format!("unknown operation {other}"))),
        }
    }

    /// Copies a guest path out of RAM (the length is checked before anything is read).
    fn path(ram: &GuestRam, addr: u64, len: u32) -> Result<Vec<u8>, Fault> {
        if len > abi::fs::PATH_MAX {
            return Err(errno::NAME_TOO_LONG.into());
        }
        let mut path = vec![0u8; len as usize];
        ram.read(addr, &mut path)
            .map_err(|e| bad(format!("path: {e}")))?;
        Ok(path)
    }

    fn writable_volume(&self, volume: usize) -> Result<&Volume, Fault> {
        let volume = &self.volumes[volume];
        if volume.read_only() {
            return Err(errno::READ_ONLY.into());
        }
        Ok(volume)
    }

    fn open(&mut self, ram: &GuestRam, req: &FsRequest) -> Reply {
        let path = Self::path(ram, req.path, req.path_len)?;
        let Located { volume, rest } = resolve::locate(&self.volumes, &path)?;
        let flags = OpenRequest::check(req.flags)?;
        let volume = &self.volumes[volume];
        if volume.read_only() && flags.changes_anything() {
            return Err(errno::READ_ONLY.into());
        }
        let slot = match self.handles.iter().position(Option::is_none) {
            Some(slot) => slot,
            None if self.handles.len() < abi::fs::MAX_OPEN_FILES as usize => {
                self.handles.push(None);
                self.handles.len() - 1
            }
            None => return Err(errno::TOO_MANY_OPEN_FILES.into()),
        };
        let fd = open_beneath(volume.dir(), &relative(&rest), flags.host_flags(), 0o666)?;
        let stat = fstat(fd.as_fd())?;
        let read_only_volume = volume.read_only();
        let handle = match (stat.st_mode & libc::S_IFMT, flags.directory) {
            (libc::S_IFDIR, true) => Handle::Dir {
                dir: OpenDir {
                    fd,
                    pending: VecDeque::new(),
                    ended: false,
                },
                read_only_volume,
            },
            (libc::S_IFREG, false) => Handle::File {
                fd,
                readable: flags.read,
                writable: flags.write,
                read_only_volume,
            },
            (libc::S_IFDIR, false) => return Err(errno::IS_A_DIRECTORY.into()),
            (_, true) => return Err(errno::NOT_A_DIRECTORY.into()),
            // A FIFO, socket or device: opened without blocking, and closed again.
            _ => return Err(errno::UNSUPPORTED.into()),
        };
        self.handles[slot] = Some(handle);
        Ok(slot as u64)
    }

    fn handle(&mut self, handle: u32) -> Result<&mut Handle, Fault> {
        self.handles
            .get_mut(handle as usize)
            .and_then(Option::as_mut)
            .ok_or(Fault::Errno(errno::BAD_HANDLE))
    }

    fn close(&mut self, handle: u32) -> Reply {
        self.handle(handle)?;
        self.handles[handle as usize] = None;
        while self.handles.last().is_some_and(Option::is_none) {
            self.handles.pop();
        }
        Ok(0)
    }

    fn transfer(&mut self, ram: &GuestRam, req: &FsRequest, write: bool) -> Reply {
        if req.len > MAX_TRANSFER {
            return Err(bad(format!(
                "transfer of {} bytes (at most {MAX_TRANSFER})",
                req.len
            )));
        }
        ram.check_range(req.buf, req.len)
            .map_err(|e| bad(format!("buffer: {e}")))?;
        let fd = match self.handle(req.handle)? {
            Handle::File {
                fd,
                readable,
                writable,
                ..
            } if (if write { *writable } else { *readable }) => fd.as_raw_fd(),
            Handle::File { .. } => return Err(errno::BAD_HANDLE.into()),
            Handle::Dir { .. } => return Err(errno::IS_A_DIRECTORY.into()),
        };
        let offset = req
            .offset
            .checked_add(req.len)
            .filter(|&end| end <= i64::MAX as u64)
            .map(|_| req.offset as libc::off_t)
            .ok_or(Fault::Errno(errno::INVALID_INPUT))?;
        let done = ram
            .with_host_range(req.buf, req.len, |ptr, len| {
                if write {
                    // SAFETY: `ptr..ptr+len` is guest RAM, checked above and mapped for the
                    // VMM's lifetime; pwrite only reads it.
                    unsafe { libc::pwrite(fd, ptr.cast(), len, offset) }
                } else {
                    // SAFETY: as above; pread writes at most `len` bytes there, guest memory
                    // that no Rust reference points into.
                    unsafe { libc::pread(fd, ptr.cast(), len, offset) }
                }
            })
            .map_err(|e| bad(format!("buffer: {e}")))?;
        if done < 0 {
            return Err(from_host(last_errno()).into());
        }
        Ok(done as u64)
    }

    fn write_metadata(
        ram: &GuestRam,
        buf: u64,
        fd: BorrowedFd<'_>,
        read_only_volume: bool,
    ) -> Reply {
        let at = size_of::<Metadata>() as u64;
        ram.check_range(buf, at)
            .map_err(|e| bad(format!("metadata buffer: {e}")))?;
        let stat = fstat(fd)?;
        let mut mode = stat.st_mode & 0o7777;
        if read_only_volume {
            mode &= !0o222;
        }
        let modified_ns = u64::try_from(stat.st_mtime)
            .ok()
            .and_then(|s| s.checked_mul(1_000_000_000))
            .and_then(|ns| ns.checked_add(stat.st_mtime_nsec as u64))
            .unwrap_or(0);
        let metadata = Metadata {
            len: u64::try_from(stat.st_size).unwrap_or(0),
            modified_ns,
            kind: kind_of(stat.st_mode),
            reserved: [0; 3],
            mode,
        };
        ram.write_obj(buf, metadata)
            .map_err(|e| bad(format!("metadata buffer: {e}")))?;
        Ok(0)
    }

    fn stat_path(&mut self, ram: &GuestRam, req: &FsRequest) -> Reply {
        let path = Self::path(ram, req.path, req.path_len)?;
        let Located { volume, rest } = resolve::locate(&self.volumes, &path)?;
        let volume = &self.volumes[volume];
        let fd = open_beneath(volume.dir(), &relative(&rest), libc::O_PATH, 0)?;
        Self::write_metadata(ram, req.buf, fd.as_fd(), volume.read_only())
    }

    fn stat_handle(&mut self, ram: &GuestRam, req: &FsRequest) -> Reply {
        let handle = self.handle(req.handle)?;
        Self::write_metadata(ram, req.buf, handle.fd(), handle.read_only_volume())
    }

    fn read_dir(&mut self, ram: &GuestRam, req: &FsRequest) -> Reply {
        if req.len > MAX_TRANSFER {
            return Err(bad(format!("directory buffer of {} bytes", req.len)));
        }
        ram.check_range(req.buf, req.len)
            .map_err(|e| bad(format!("directory buffer: {e}")))?;
        let Handle::Dir { dir, .. } = self.handle(req.handle)? else {
            return Err(errno::NOT_A_DIRECTORY.into());
        };
        let out = fill_dir_entries(dir, req.len as usize)?;
        ram.write(req.buf, &out)
            .map_err(|e| bad(format!("directory buffer: {e}")))?;
        Ok(out.len() as u64)
    }

    fn change_entry(&mut self, ram: &GuestRam, req: &FsRequest) -> Reply {
        let path = Self::path(ram, req.path, req.path_len)?;
        let Located { volume, rest } = resolve::locate(&self.volumes, &path)?;
        let volume = self.writable_volume(volume)?;
        let target = match entry(volume.dir(), &rest) {
            Err(errno::PERMISSION_DENIED) if req.op == op::MKDIR => {
                return Err(errno::ALREADY_EXISTS.into());
            }
            other => other?,
        };
        let parent = target.parent.as_raw_fd();
        let name = target.name.as_ptr();
        // SAFETY: `name` is a live NUL-terminated string; the calls only read it.
        let rc = unsafe {
            match req.op {
                op::MKDIR => libc::mkdirat(parent, name, 0o777),
                op::REMOVE_FILE => libc::unlinkat(parent, name, 0),
                _ => libc::unlinkat(parent, name, libc::AT_REMOVEDIR),
            }
        };
        if rc < 0 {
            return Err(from_host(last_errno()).into());
        }
        Ok(0)
    }

    fn rename(&mut self, ram: &GuestRam, req: &FsRequest) -> Reply {
        let from = Self::path(ram, req.path, req.path_len)?;
        let to = Self::path(ram, req.path2, req.path2_len)?;
        let from = resolve::locate(&self.volumes, &from)?;
        let to = resolve::locate(&self.volumes, &to)?;
        if from.volume != to.volume {
            return Err(errno::CROSSES_DEVICES.into());
        }
        let volume = self.writable_volume(from.volume)?;
        let (from, to) = (
            entry(volume.dir(), &from.rest)?,
            entry(volume.dir(), &to.rest)?,
        );
        // SAFETY: both names are live NUL-terminated strings; renameat2 only reads them. The
        // raw system call: glibc's wrapper makes `renameat` instead when the flags are 0.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                from.parent.as_raw_fd(),
                from.name.as_ptr(),
                to.parent.as_raw_fd(),
                to.name.as_ptr(),
                0,
            )
        };
        if rc < 0 {
            return Err(from_host(last_errno()).into());
        }
        Ok(0)
    }
}

/// Open flags as the guest asked, checked.
struct OpenRequest {
    read: bool,
    write: bool,
    append: bool,
    truncate: bool,
    create: bool,
    create_new: bool,
    directory: bool,
}

impl OpenRequest {
    /// Refuses undefined bits and combinations that mean nothing (std's rules: creating or
    /// truncating needs writing; a directory is opened for reading only).
    fn check(flags: u32) -> Result<Self, Fault> {
        if flags & !open_flags::ALL != 0 {
            return Err(errno::INVALID_INPUT.into());
        }
        let has = |bit| flags & bit != 0;
        let request = Self {
            read: has(open_flags::READ),
            write: has(open_flags::WRITE) || has(open_flags::APPEND),
            append: has(open_flags::APPEND),
            truncate: has(open_flags::TRUNCATE),
            create: has(open_flags::CREATE),
            create_new: has(open_flags::CREATE_NEW),
            directory: has(open_flags::DIRECTORY),
        };
        let creates = request.truncate || request.create || request.create_new;
        let valid = if request.directory {
            !request.write && !creates
        } else {
            request.write || (request.read && !creates)
        };
        if !valid {
            return Err(errno::INVALID_INPUT.into());
        }
        Ok(request)
    }

    /// Whether the open could change the volume.
    fn changes_anything(&self) -> bool {
        self.write || self.truncate || self.create || self.create_new
    }

    /// The host `open(2)` flags: never blocking (a FIFO is refused after the open, not waited
    /// for), never a controlling terminal.
    fn host_flags(&self) -> i32 {
        let access = match (self.read, self.write) {
            (_, false) => libc::O_RDONLY,
            (false, true) => libc::O_WRONLY,
            (true, true) => libc::O_RDWR,
        };
        let mut flags = access | libc::O_NOCTTY | libc::O_NONBLOCK;
        for (wanted, bit) in [
            (self.append, libc::O_APPEND),
            (self.truncate, libc::O_TRUNC),
            (self.create || self.create_new, libc::O_CREAT),
            (self.create_new, libc::O_EXCL),
            (self.directory, libc::O_DIRECTORY),
        ] {
            if wanted {
                flags |= bit;
            }
        }
        flags
    }
}

/// `fstat` through its own system call (glibc's wrapper may use another one).
fn fstat(fd: BorrowedFd<'_>) -> Result<libc::stat, Fault> {
    // SAFETY: `stat` is plain integers; all-zero is a valid value.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one `struct stat` to our live value.
    let rc = unsafe { libc::syscall(libc::SYS_fstat, fd.as_raw_fd(), &raw mut stat) };
    if rc < 0 {
        return Err(from_host(last_errno()).into());
    }
    Ok(stat)
}

fn kind_of(mode: libc::mode_t) -> u8 {
    match mode & libc::S_IFMT {
        libc::S_IFREG => kind::FILE,
        libc::S_IFDIR => kind::DIR,
        libc::S_IFLNK => kind::SYMLINK,
        _ => kind::OTHER,
    }
}

fn kind_of_dirent(d_type: u8) -> u8 {
    match d_type {
        libc::DT_REG => kind::FILE,
        libc::DT_DIR => kind::DIR,
        libc::DT_LNK => kind::SYMLINK,
        _ => kind::OTHER,
    }
}

/// Packs as many of `dir`'s next entries as fit in `room` bytes, reading more from the host
/// when none are pending; empty at the end. An entry that cannot fit even alone is an error
/// (the guest's buffer is too small for its name).
fn fill_dir_entries(dir: &mut OpenDir, room: usize) -> Result<Vec<u8>, Fault> {
    if dir.pending.is_empty() && !dir.ended {
        read_host_entries(dir)?;
    }
    let mut out = Vec::new();
    while let Some((name, kind)) = dir.pending.front() {
        let header = DirEntryHeader {
            name_len: name.len() as u16,
            kind: *kind,
            reserved: 0,
        };
        let size = size_of::<DirEntryHeader>() + name.len();
        if out.len() + size > room {
            if out.is_empty() {
                return Err(errno::INVALID_INPUT.into());
            }
            break;
        }
        out.extend_from_slice(header.as_slice());
        out.extend_from_slice(name);
        dir.pending.pop_front();
    }
    Ok(out)
}

/// One `getdents64` batch into `dir.pending` (without `.` and `..`).
fn read_host_entries(dir: &mut OpenDir) -> Result<(), Fault> {
    let mut scratch = vec![0u8; DIRENT_BATCH];
    // SAFETY: getdents64 writes at most `scratch.len()` bytes into our buffer.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            dir.fd.as_raw_fd(),
            scratch.as_mut_ptr(),
            scratch.len(),
        )
    };
    if n < 0 {
        return Err(from_host(last_errno()).into());
    }
    if n == 0 {
        dir.ended = true;
    }
    let mut records = &scratch[..n as usize];
    // struct linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name NUL-terminated.
    const NAME_AT: usize = 19;
    while records.len() >= NAME_AT {
        let reclen = usize::from(u16::from_ne_bytes([records[16], records[17]]));
        if reclen < NAME_AT || reclen > records.len() {
            break;
        }
        let name = &records[NAME_AT..reclen];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        if name != b"." && name != b".." && name.len() <= usize::from(u16::MAX) {
            dir.pending
                .push_back((name.to_vec(), kind_of_dirent(records[18])));
        }
        records = &records[reclen..];
    }
    Ok(())
}

impl PortDevice for FsDevice {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(
        &mut self,
        offset: u16,
        data: &[u8],
        ctx: &mut DeviceContext<'_>,
    ) -> Result<(), DeviceStop> {
        let addr = crate::devices::request_address(NAME, offset, data)?;
        let mut req: FsRequest = ctx.ram.read_obj(addr).map_err(|e| DeviceStop::BadRequest {
            device: NAME,
            why: format!("request struct: {e}"),
        })?;
        match self.serve(ctx.ram, &req) {
            Ok(result) => (req.errno, req.result) = (0, result),
            Err(Fault::Errno(code)) => (req.errno, req.result) = (code, 0),
            Err(Fault::Bad(why)) => {
                return Err(DeviceStop::BadRequest {
                    device: NAME,
                    why: format!("operation {}: {why}", req.op),
                });
            }
        }
        // The struct's range was checked when it was read.
        let _ = ctx.ram.write_obj(addr, req);
        Ok(())
    }

    fn flush(&mut self, _console: &mut dyn crate::devices::ConsoleSink) {}

    fn save(&self) -> Vec<u8> {
        Vec::new()
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), DeviceStateError> {
        crate::devices::restore_stateless(NAME, bytes)
    }

    fn snapshot_refusal(&self) -> Option<String> {
        match self.open_count() {
            0 => None,
            n => Some(format!(
                "the guest holds {n} open file(s) at its snapshot point; open files are not part of a snapshot: close them before it"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::VolumeSpec;
    use super::*;
    use crate::devices::{ConsoleSink, Stream};
    use std::path::{Path, PathBuf};

    struct NoConsole;

    impl ConsoleSink for NoConsole {
        fn emit(&mut self, _: Stream, _: &[u8]) -> Result<(), DeviceStop> {
            Ok(())
        }
    }

    const MEM: u64 = 1 << 20;
    const REQ: u64 = 0x1000;
    const PATH: u64 = 0x2000;
    const PATH2: u64 = 0x3000;
    const BUF: u64 = 0x10000;

    /// A scratch directory tree: `vol/` (the volume, with `hello.txt`) and `outside/secret`.
    struct Tree(PathBuf);

    impl Tree {
        fn new(test: &str) -> Self {
            let root =
                std::env::temp_dir().join(format!("flick-vol-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(root.join("vol/sub")).unwrap();
            std::fs::create_dir_all(root.join("outside")).unwrap();
            std::fs::write(root.join("vol/hello.txt"), b"hello, volume\n").unwrap();
            std::fs::write(root.join("outside/secret"), b"secret").unwrap();
            Tree(root)
        }

        fn vol(&self) -> PathBuf {
            self.0.join("vol")
        }

        fn device(&self, mode: &str) -> FsDevice {
            let spec = VolumeSpec::parse(&format!("{}:/data{mode}", self.vol().display())).unwrap();
            FsDevice::new(vec![Volume::open(&spec).unwrap()])
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    struct Guest {
        ram: GuestRam,
        dev: FsDevice,
    }

    impl Guest {
        fn new(dev: FsDevice) -> Self {
            Self {
                ram: GuestRam::new(MEM).unwrap(),
                dev,
            }
        }

        fn call(&mut self, req: FsRequest) -> Result<FsRequest, DeviceStop> {
            self.ram.write_obj(REQ, req).unwrap();
            let mut ctx = DeviceContext {
                ram: &self.ram,
                console: &mut NoConsole,
                deadline: None,
            };
            self.dev.write(0, &(REQ as u32).to_le_bytes(), &mut ctx)?;
            Ok(self.ram.read_obj(REQ).unwrap())
        }

        fn with_path(&mut self, op: u32, path: &str, flags: u32) -> FsRequest {
            self.ram.write(PATH, path.as_bytes()).unwrap();
            self.call(FsRequest {
                op,
                flags,
                path: PATH,
                path_len: path.len() as u32,
                buf: BUF,
                len: 4096,
                ..FsRequest::default()
            })
            .unwrap()
        }

        /// Opens `path`: the handle, or the errno.
        fn open(&mut self, path: &str, flags: u32) -> Result<u32, u32> {
            let back = self.with_path(op::OPEN, path, flags);
            if back.errno == 0 {
                Ok(back.result as u32)
            } else {
                Err(back.errno)
            }
        }

        fn read(&mut self, handle: u32, offset: u64, len: u64) -> Result<Vec<u8>, u32> {
            let back = self
                .call(FsRequest {
                    op: op::READ,
                    handle,
                    offset,
                    buf: BUF,
                    len,
                    ..FsRequest::default()
                })
                .unwrap();
            if back.errno != 0 {
                return Err(back.errno);
            }
            let mut bytes = vec![0u8; back.result as usize];
            self.ram.read(BUF, &mut bytes).unwrap();
            Ok(bytes)
        }

        fn write(&mut self, handle: u32, offset: u64, bytes: &[u8]) -> Result<u64, u32> {
            self.ram.write(BUF, bytes).unwrap();
            let back = self
                .call(FsRequest {
                    op: op::WRITE,
                    handle,
                    offset,
                    buf: BUF,
                    len: bytes.len() as u64,
                    ..FsRequest::default()
                })
                .unwrap();
            if back.errno != 0 {
                Err(back.errno)
            } else {
                Ok(back.result)
            }
        }
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn test_fs_open_read_close_round_trips() {
        let tree = Tree::new("read");
        let mut g = Guest::new(tree.device(""));
        let h = g.open("/data/hello.txt", open_flags::READ).unwrap();
        assert_eq!(g.read(h, 0, 5).unwrap(), b"hello");
        assert_eq!(g.read(h, 7, 100).unwrap(), b"volume\n");
        assert_eq!(g.read(h, 1000, 100).unwrap(), b"", "past the end: 0 bytes");
        assert_eq!(g.dev.open_count(), 1);
        assert!(g.dev.snapshot_refusal().is_some());
        let back = g
            .call(FsRequest {
                op: op::CLOSE,
                handle: h,
                ..FsRequest::default()
            })
            .unwrap();
        assert_eq!(back.errno, 0);
        assert_eq!(g.read(h, 0, 5), Err(errno::BAD_HANDLE), "closed");
        assert!(g.dev.snapshot_refusal().is_none());
    }

    #[test]
    fn test_fs_create_write_then_read_back() {
        let tree = Tree::new("write");
        let mut g = Guest::new(tree.device(""));
        let flags = open_flags::WRITE | open_flags::CREATE | open_flags::TRUNCATE;
        let h = g.open("/data/sub/out.txt", flags).unwrap();
        assert_eq!(g.write(h, 0, b"written"), Ok(7));
        assert_eq!(
            g.read(h, 0, 7),
            Err(errno::BAD_HANDLE),
            "opened for writing only"
        );
        assert_eq!(
            std::fs::read(tree.vol().join("sub/out.txt")).unwrap(),
            b"written"
        );
    }

    #[test]
    fn test_fs_read_only_volume_refuses_every_change() {
        let tree = Tree::new("ro");
        let before = files_in(&tree.vol());
        let mut g = Guest::new(tree.device(":ro"));
        for flags in [
            open_flags::WRITE,
            open_flags::APPEND,
            open_flags::READ | open_flags::WRITE,
            open_flags::WRITE | open_flags::CREATE,
            open_flags::WRITE | open_flags::TRUNCATE,
            open_flags::WRITE | open_flags::CREATE_NEW,
        ] {
            assert_eq!(
                g.open("/data/hello.txt", flags),
                Err(errno::READ_ONLY),
                "{flags:#x}"
            );
        }
        for op in [op::MKDIR, op::REMOVE_FILE, op::REMOVE_DIR] {
            assert_eq!(
                g.with_path(op, "/data/hello.txt", 0).errno,
                errno::READ_ONLY
            );
        }
        g.ram.write(PATH2, b"/data/moved").unwrap();
        let mut rename = FsRequest {
            op: op::RENAME,
            path: PATH,
            path2: PATH2,
            path2_len: 11,
            ..FsRequest::default()
        };
        g.ram.write(PATH, b"/data/hello.txt").unwrap();
        rename.path_len = 15;
        assert_eq!(g.call(rename).unwrap().errno, errno::READ_ONLY);
        assert!(
            g.open("/data/hello.txt", open_flags::READ).is_ok(),
            "reading still works"
        );
        assert_eq!(files_in(&tree.vol()), before);
        assert_eq!(
            std::fs::read(tree.vol().join("hello.txt")).unwrap(),
            b"hello, volume\n"
        );
    }

    #[test]
    fn test_fs_dotdot_past_the_root_is_not_capable() {
        let tree = Tree::new("dotdot");
        let mut g = Guest::new(tree.device(""));
        assert_eq!(
            g.open("/data/../outside/secret", open_flags::READ),
            Err(errno::NOT_CAPABLE)
        );
        assert_eq!(
            g.open("/data/sub/../../outside/secret", open_flags::READ),
            Err(errno::NOT_CAPABLE)
        );
        assert!(
            g.open("/data/sub/../hello.txt", open_flags::READ).is_ok(),
            ".. inside is fine"
        );
    }

    #[test]
    fn test_fs_symlinks_out_of_the_volume_are_not_followed() {
        let tree = Tree::new("symlinks");
        let vol = tree.vol();
        std::os::unix::fs::symlink(tree.0.join("outside/secret"), vol.join("absolute")).unwrap();
        std::os::unix::fs::symlink("../outside/secret", vol.join("relative")).unwrap();
        std::os::unix::fs::symlink("/proc/self/root/etc/passwd", vol.join("proc-root")).unwrap();
        std::os::unix::fs::symlink(tree.0.join("outside"), vol.join("dir-link")).unwrap();
        std::os::unix::fs::symlink("hello.txt", vol.join("inside")).unwrap();
        let mut g = Guest::new(tree.device(""));
        for path in [
            "/data/absolute",
            "/data/relative",
            "/data/proc-root",
            "/data/dir-link/secret",
        ] {
            assert_eq!(
                g.open(path, open_flags::READ),
                Err(errno::NOT_CAPABLE),
                "{path}"
            );
        }
        let flags = open_flags::WRITE | open_flags::CREATE;
        assert_eq!(
            g.open("/data/dir-link/planted", flags),
            Err(errno::NOT_CAPABLE)
        );
        assert_eq!(
            g.with_path(op::REMOVE_FILE, "/data/dir-link/secret", 0)
                .errno,
            errno::NOT_CAPABLE
        );
        assert_eq!(
            g.with_path(op::MKDIR, "/data/dir-link/new", 0).errno,
            errno::NOT_CAPABLE
        );
        let h = g.open("/data/inside", open_flags::READ).unwrap();
        assert_eq!(
            g.read(h, 0, 5).unwrap(),
            b"hello",
            "a symlink within the volume works"
        );
        assert_eq!(files_in(&tree.0.join("outside")), ["secret"]);
        assert_eq!(
            std::fs::read(tree.0.join("outside/secret")).unwrap(),
            b"secret"
        );
    }

    #[test]
    fn test_fs_remove_file_on_a_symlink_removes_the_link_only() {
        let tree = Tree::new("unlink-link");
        std::os::unix::fs::symlink(tree.0.join("outside/secret"), tree.vol().join("link")).unwrap();
        let mut g = Guest::new(tree.device(""));
        assert_eq!(g.with_path(op::REMOVE_FILE, "/data/link", 0).errno, 0);
        assert!(!tree.vol().join("link").exists());
        assert_eq!(
            std::fs::read(tree.0.join("outside/secret")).unwrap(),
            b"secret"
        );
    }

    #[test]
    fn test_fs_paths_outside_every_volume_are_not_found() {
        let tree = Tree::new("outside");
        let mut g = Guest::new(tree.device(""));
        assert_eq!(
            g.open("/etc/passwd", open_flags::READ),
            Err(errno::NOT_FOUND)
        );
        assert_eq!(g.open("/database", open_flags::READ), Err(errno::NOT_FOUND));
        assert_eq!(
            g.open("data/hello.txt", open_flags::READ),
            Err(errno::INVALID_INPUT)
        );
    }

    #[test]
    fn test_fs_too_many_open_files_is_an_error_then_recovers() {
        let tree = Tree::new("many");
        let mut g = Guest::new(tree.device(""));
        let handles: Vec<u32> = (0..abi::fs::MAX_OPEN_FILES)
            .map(|_| g.open("/data/hello.txt", open_flags::READ).unwrap())
            .collect();
        assert_eq!(
            g.open("/data/hello.txt", open_flags::READ),
            Err(errno::TOO_MANY_OPEN_FILES)
        );
        g.call(FsRequest {
            op: op::CLOSE,
            handle: handles[3],
            ..FsRequest::default()
        })
        .unwrap();
        assert_eq!(g.open("/data/hello.txt", open_flags::READ), Ok(handles[3]));
    }

    #[test]
    fn test_fs_huge_offsets_are_invalid_input() {
        let tree = Tree::new("offsets");
        let mut g = Guest::new(tree.device(""));
        let h = g.open("/data/hello.txt", open_flags::READ).unwrap();
        for offset in [u64::MAX, i64::MAX as u64, 1 << 63, i64::MAX as u64 - 2] {
            assert_eq!(
                g.read(h, offset, 16),
                Err(errno::INVALID_INPUT),
                "{offset:#x}"
            );
        }
        assert_eq!(
            g.read(h, 1 << 40, 16).unwrap(),
            b"",
            "far but valid: nothing there"
        );
    }

    #[test]
    fn test_fs_malformed_requests_stop_the_guest() {
        let tree = Tree::new("malformed");
        let mut g = Guest::new(tree.device(""));
        let h = g.open("/data/hello.txt", open_flags::READ).unwrap();
        let read = FsRequest {
            op: op::READ,
            handle: h,
            buf: BUF,
            len: 16,
            ..FsRequest::default()
        };
        for req in [
            FsRequest {
                len: MAX_TRANSFER + 1,
                ..read
            },
            FsRequest {
                buf: MEM - 8,
                ..read
            },
            FsRequest {
                buf: u64::MAX - 4,
                ..read
            },
            FsRequest { op: 99, ..read },
            FsRequest {
                op: op::STAT,
                path: MEM - 2,
                path_len: 16,
                ..read
            },
        ] {
            assert!(
                matches!(g.call(req), Err(DeviceStop::BadRequest { .. })),
                "{req:?}"
            );
        }
        let mut ctx = DeviceContext {
            ram: &g.ram,
            console: &mut NoConsole,
            deadline: None,
        };
        assert!(
            g.dev.write(0, &u32::MAX.to_le_bytes(), &mut ctx).is_err(),
            "struct past RAM"
        );
        assert!(g.dev.write(0, &[1, 2], &mut ctx).is_err(), "narrow write");
    }

    #[test]
    fn test_fs_bad_flags_and_lengths_are_errors_not_crashes() {
        let tree = Tree::new("flags");
        let mut g = Guest::new(tree.device(""));
        for flags in [
            0,
            1 << 20,
            open_flags::CREATE,
            open_flags::READ | open_flags::TRUNCATE,
            open_flags::DIRECTORY | open_flags::WRITE,
        ] {
            assert_eq!(
                g.open("/data/hello.txt", flags),
                Err(errno::INVALID_INPUT),
                "{flags:#x}"
            );
        }
        let back = g
            .call(FsRequest {
                op: op::OPEN,
                flags: open_flags::READ,
                path: PATH,
                path_len: u32::MAX,
                ..FsRequest::default()
            })
            .unwrap();
        assert_eq!(back.errno, errno::NAME_TOO_LONG);
        assert_eq!(g.read(12345, 0, 1), Err(errno::BAD_HANDLE));
        assert_eq!(
            g.open("/data/sub", open_flags::READ),
            Err(errno::IS_A_DIRECTORY)
        );
        assert_eq!(
            g.open("/data/hello.txt", open_flags::DIRECTORY),
            Err(errno::NOT_A_DIRECTORY)
        );
    }

    #[test]
    fn test_fs_fifo_in_a_volume_is_refused_without_blocking() {
        let tree = Tree::new("fifo");
        let fifo = std::ffi::CString::new(
            tree.vol()
                .join("fifo")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let mut g = Guest::new(tree.device(""));
        assert_eq!(
            g.open("/data/fifo", open_flags::READ),
            Err(errno::UNSUPPORTED)
        );
        assert_eq!(g.dev.open_count(), 0);
    }

    #[test]
    fn test_fs_read_dir_lists_every_entry_once() {
        let tree = Tree::new("readdir");
        for i in 0..300 {
            std::fs::write(tree.vol().join(format!("file-{i:03}")), b"").unwrap();
        }
        let mut g = Guest::new(tree.device(""));
        let h = g.open("/data", open_flags::DIRECTORY).unwrap();
        let mut names = Vec::new();
        loop {
            let back = g
                .call(FsRequest {
                    op: op::READ_DIR,
                    handle: h,
                    buf: BUF,
                    len: 512,
                    ..FsRequest::default()
                })
                .unwrap();
            assert_eq!(back.errno, 0);
            if back.result == 0 {
                break;
            }
            let mut bytes = vec![0u8; back.result as usize];
            g.ram.read(BUF, &mut bytes).unwrap();
            let mut at = 0;
            while at < bytes.len() {
                let len = usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
                names.push((
                    String::from_utf8(bytes[at + 4..at + 4 + len].to_vec()).unwrap(),
                    bytes[at + 2],
                ));
                at += 4 + len;
            }
        }
        names.sort();
        assert_eq!(names.len(), 302);
        assert!(names.contains(&("sub".to_owned(), kind::DIR)));
        assert!(names.contains(&("file-299".to_owned(), kind::FILE)));
    }

    #[test]
    fn test_fs_stat_reports_size_kind_and_read_only_mode() {
        let tree = Tree::new("stat");
        let mut g = Guest::new(tree.device(":ro"));
        assert_eq!(g.with_path(op::STAT, "/data/hello.txt", 0).errno, 0);
        let meta: Metadata = g.ram.read_obj(BUF).unwrap();
        assert_eq!((meta.len, meta.kind), (14, kind::FILE));
        assert_eq!(
            meta.mode & 0o222,
            0,
            "a read-only volume shows no write bits"
        );
        assert!(meta.modified_ns > 0);
        assert_eq!(
            g.with_path(op::STAT, "/data/missing", 0).errno,
            errno::NOT_FOUND
        );
    }

    #[test]
    fn test_fs_mkdir_rename_remove() {
        let tree = Tree::new("tree-ops");
        let mut g = Guest::new(tree.device(""));
        assert_eq!(g.with_path(op::MKDIR, "/data/new", 0).errno, 0);
        assert_eq!(
            g.with_path(op::MKDIR, "/data/new", 0).errno,
            errno::ALREADY_EXISTS
        );
        assert_eq!(
            g.with_path(op::MKDIR, "/data", 0).errno,
            errno::ALREADY_EXISTS
        );
        g.ram.write(PATH, b"/data/hello.txt").unwrap();
        g.ram.write(PATH2, b"/data/new/moved.txt").unwrap();
        let back = g
            .call(FsRequest {
                op: op::RENAME,
                path: PATH,
                path_len: 15,
                path2: PATH2,
                path2_len: 19,
                ..FsRequest::default()
            })
            .unwrap();
        assert_eq!(back.errno, 0);
        assert!(tree.vol().join("new/moved.txt").is_file());
        assert_eq!(
            g.with_path(op::REMOVE_DIR, "/data/new", 0).errno,
            errno::DIRECTORY_NOT_EMPTY
        );
        assert_eq!(
            g.with_path(op::REMOVE_FILE, "/data/new/moved.txt", 0).errno,
            0
        );
        assert_eq!(g.with_path(op::REMOVE_DIR, "/data/new", 0).errno, 0);
        assert_eq!(
            g.with_path(op::REMOVE_DIR, "/data", 0).errno,
            errno::PERMISSION_DENIED
        );
        assert!(tree.vol().is_dir());
    }

    #[test]
    fn test_fs_rename_across_volumes_is_refused() {
        let tree = Tree::new("cross");
        let specs = [
            VolumeSpec::parse(&format!("{}:/a", tree.vol().display())).unwrap(),
            VolumeSpec::parse(&format!("{}:/b", tree.0.join("outside").display())).unwrap(),
        ];
        let mut g = Guest::new(FsDevice::new(Volume::open_all(&specs).unwrap()));
        g.ram.write(PATH, b"/a/hello.txt").unwrap();
        g.ram.write(PATH2, b"/b/hello.txt").unwrap();
        let back = g
            .call(FsRequest {
                op: op::RENAME,
                path: PATH,
                path_len: 12,
                path2: PATH2,
                path2_len: 12,
                ..FsRequest::default()
            })
            .unwrap();
        assert_eq!(back.errno, errno::CROSSES_DEVICES);
    }

    #[test]
    fn test_fs_deleted_directory_gives_errors() {
        let tree = Tree::new("deleted");
        let mut g = Guest::new(tree.device(""));
        let h = g.open("/data/sub", open_flags::DIRECTORY).unwrap();
        std::fs::remove_dir_all(tree.vol()).unwrap();
        let back = g
            .call(FsRequest {
                op: op::READ_DIR,
                handle: h,
                buf: BUF,
                len: 4096,
                ..FsRequest::default()
            })
            .unwrap();
        assert!(back.errno != 0 || back.result == 0, "{back:?}");
        assert_eq!(
            g.open("/data/hello.txt", open_flags::READ),
            Err(errno::NOT_FOUND)
        );
        let flags = open_flags::WRITE | open_flags::CREATE;
        assert_eq!(g.open("/data/new.txt", flags), Err(errno::NOT_FOUND));
        assert!(!tree.vol().exists(), "nothing recreated");
    }
}
