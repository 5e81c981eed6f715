//! Files in the host directories the VMM shares with this guest (`vmm run --volume
//! HOST_DIR:GUEST_PATH[:ro]`), shaped like `std::fs`.
//!
//! Paths are guest paths: `/data/in.csv` for a volume at `/data` (a path without a leading
//! `/` is taken from `/`). The VMM resolves each one beneath its volume's host directory only:
//! a path that leads out of it (`..` past its root, a symlink pointing out) fails with
//! [`ErrorKind::OutsideVolume`], a write to a `:ro` volume with
//! [`ErrorKind::ReadOnlyFilesystem`], and a path under no volume with
//! [`ErrorKind::NotFound`]. A guest holds at most [`abi::fs::MAX_OPEN_FILES`] files open;
//! each read or write moves up to 1 MiB in one VM exit.
//!
//! ```ignore
//! use kernel::fs;
//! let text = fs::read_to_string("/data/in.csv")?;
//! fs::write("/out/result.json", text.to_uppercase())?;
//! for entry in fs::read_dir("/data")? {
//!     kernel::println!("{}", entry?.file_name());
//! }
//! ```

use crate::hypercall;
use crate::io::{self, Error, ErrorKind, Read, Seek, SeekFrom, Write};
use abi::MAX_TRANSFER;
use abi::fs::{DirEntryHeader, FsRequest, kind, op, open_flags};
use alloc::borrow::Cow;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

/// A guest path as the VMM takes it: absolute, at most `PATH_MAX` bytes, without NUL.
fn guest_path(path: &str) -> io::Result<Cow<'_, str>> {
    if path.contains('\0') {
        return Err(ErrorKind::InvalidInput.into());
    }
    let path = if path.starts_with('/') {
        Cow::Borrowed(path)
    } else {
        let mut absolute = String::with_capacity(path.len() + 1);
        absolute.push('/');
        absolute.push_str(path);
        Cow::Owned(absolute)
    };
    if path.len() > abi::fs::PATH_MAX as usize {
        return Err(ErrorKind::InvalidFilename.into());
    }
    Ok(path)
}

/// Sends `request`: its result, or the VMM's error.
fn call(mut request: FsRequest) -> io::Result<u64> {
    hypercall::fs_call(&mut request);
    match request.errno {
        0 => Ok(request.result),
        code => Err(Error::from_code(code)),
    }
}

/// A request naming `path`.
fn on_path(op: u32, path: &str, flags: u32) -> io::Result<u64> {
    let path = guest_path(path)?;
    call(FsRequest {
        op,
        flags,
        path: path.as_ptr() as u64,
        path_len: path.len() as u32,
        ..FsRequest::default()
    })
}

/// How to open a file (like `std::fs::OpenOptions`).
///
/// ```ignore
/// let log = kernel::fs::OpenOptions::new().append(true).create(true).open("/out/log")?;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenOptions {
    flags: u32,
}

impl OpenOptions {
    /// Nothing set.
    pub fn new() -> Self {
        Self::default()
    }

    fn set(mut self, bit: u32, on: bool) -> Self {
        if on {
            self.flags |= bit;
        } else {
            self.flags &= !bit;
        }
        self
    }

    /// For reading.
    pub fn read(self, on: bool) -> Self {
        self.set(open_flags::READ, on)
    }

    /// For writing.
    pub fn write(self, on: bool) -> Self {
        self.set(open_flags::WRITE, on)
    }

    /// Every write goes to the end of the file.
    pub fn append(self, on: bool) -> Self {
        self.set(open_flags::APPEND, on)
    }

    /// Cut the file to 0 bytes (needs writing).
    pub fn truncate(self, on: bool) -> Self {
        self.set(open_flags::TRUNCATE, on)
    }

    /// Create the file if it is missing (needs writing).
    pub fn create(self, on: bool) -> Self {
        self.set(open_flags::CREATE, on)
    }

    /// Create the file, failing with [`ErrorKind::AlreadyExists`] if it exists.
    pub fn create_new(self, on: bool) -> Self {
        self.set(open_flags::CREATE_NEW, on)
    }

    /// Opens `path` with these options.
    pub fn open(&self, path: &str) -> io::Result<File> {
        let handle = on_path(op::OPEN, path, self.flags)? as u32;
        Ok(File {
            handle,
            pos: 0,
            append: self.flags & open_flags::APPEND != 0,
        })
    }
}

/// An open file of a volume (like `std::fs::File`); closed when dropped.
#[derive(Debug)]
pub struct File {
    handle: u32,
    pos: u64,
    append: bool,
}

impl File {
    /// Opens `path` for reading.
    pub fn open(path: &str) -> io::Result<File> {
        OpenOptions::new().read(true).open(path)
    }

    /// Opens `path` for writing, creating it or cutting it to 0 bytes.
    pub fn create(path: &str) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    }

    /// Options to open a file with.
    pub fn options() -> OpenOptions {
        OpenOptions::new()
    }

    /// Its size, kind, times and permissions.
    pub fn metadata(&self) -> io::Result<Metadata> {
        let mut raw = abi::fs::Metadata::default();
        call(FsRequest {
            op: op::FSTAT,
            handle: self.handle,
            buf: &raw mut raw as u64,
            len: size_of::<abi::fs::Metadata>() as u64,
            ..FsRequest::default()
        })?;
        // SAFETY: a live local the VMM wrote during the call.
        Ok(Metadata(unsafe { core::ptr::read_volatile(&raw) }))
    }

    /// Reads at `offset` without moving the position (one exit, at most 1 MiB).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let len = buf.len().min(MAX_TRANSFER as usize);
        let n = call(FsRequest {
            op: op::READ,
            handle: self.handle,
            offset,
            buf: buf.as_mut_ptr() as u64,
            len: len as u64,
            ..FsRequest::default()
        })?;
        Ok((n as usize).min(len))
    }

    /// Writes at `offset` without moving the position (at the end if opened to append; one
    /// exit, at most 1 MiB).
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        let len = buf.len().min(MAX_TRANSFER as usize);
        let n = call(FsRequest {
            op: op::WRITE,
            handle: self.handle,
            offset,
            buf: buf.as_ptr() as u64,
            len: len as u64,
            ..FsRequest::default()
        })?;
        Ok((n as usize).min(len))
    }
}

impl Read for File {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn read_to_end(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let left = self
            .metadata()
            .map_or(0, |m| m.len().saturating_sub(self.pos));
        buf.reserve(usize::try_from(left).unwrap_or(0).saturating_add(1));
        io::read_to_end_in_chunks(self, buf, MAX_TRANSFER as usize)
    }
}

impl Write for File {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.write_at(buf, self.pos)?;
        if !self.append {
            self.pos += n as u64;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for File {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.pos = match pos {
            SeekFrom::Start(at) => at,
            SeekFrom::Current(by) if self.append => {
                io::offset_position(self.metadata()?.len(), by)?
            }
            SeekFrom::Current(by) => io::offset_position(self.pos, by)?,
            SeekFrom::End(by) => io::offset_position(self.metadata()?.len(), by)?,
        };
        Ok(self.pos)
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = call(FsRequest {
            op: op::CLOSE,
            handle: self.handle,
            ..FsRequest::default()
        });
    }
}

/// What kind of file an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileType(u8);

impl FileType {
    /// A regular file.
    pub fn is_file(&self) -> bool {
        self.0 == kind::FILE
    }

    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.0 == kind::DIR
    }

    /// A symbolic link (seen only in directory listings; opening one follows it).
    pub fn is_symlink(&self) -> bool {
        self.0 == kind::SYMLINK
    }
}

/// Permission bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permissions(u32);

impl Permissions {
    /// No write bit set (always so on a `:ro` volume).
    pub fn readonly(&self) -> bool {
        self.0 & 0o222 == 0
    }

    /// The bits (`0o7777`).
    pub fn mode(&self) -> u32 {
        self.0
    }
}

/// A file's size, kind, modification time and permissions (like `std::fs::Metadata`).
#[derive(Clone, Copy, Debug)]
pub struct Metadata(abi::fs::Metadata);

impl Metadata {
    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.0.len
    }

    /// Whether it is 0 bytes long.
    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    /// Its kind.
    pub fn file_type(&self) -> FileType {
        FileType(self.0.kind)
    }

    /// A regular file.
    pub fn is_file(&self) -> bool {
        self.file_type().is_file()
    }

    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.file_type().is_dir()
    }

    /// Last modification, as time since the Unix epoch.
    pub fn modified(&self) -> Duration {
        Duration::from_nanos(self.0.modified_ns)
    }

    /// Its permission bits.
    pub fn permissions(&self) -> Permissions {
        Permissions(self.0.mode)
    }
}

/// The metadata of `path` (symlinks followed).
pub fn metadata(path: &str) -> io::Result<Metadata> {
    let path = guest_path(path)?;
    let mut raw = abi::fs::Metadata::default();
    call(FsRequest {
        op: op::STAT,
        path: path.as_ptr() as u64,
        path_len: path.len() as u32,
        buf: &raw mut raw as u64,
        len: size_of::<abi::fs::Metadata>() as u64,
        ..FsRequest::default()
    })?;
    // SAFETY: a live local the VMM wrote during the call.
    Ok(Metadata(unsafe { core::ptr::read_volatile(&raw) }))
}

/// Whether `path` exists (`Ok(false)` when it does not; other errors are errors).
pub fn exists(path: &str) -> io::Result<bool> {
    match metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The whole contents of `path`.
pub fn read(path: &str) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The whole contents of `path`, which must be UTF-8.
pub fn read_to_string(path: &str) -> io::Result<String> {
    String::from_utf8(read(path)?).map_err(|_| ErrorKind::InvalidData.into())
}

/// Writes `contents` to `path`, creating it or replacing what it held.
pub fn write(path: &str, contents: impl AsRef<[u8]>) -> io::Result<()> {
    File::create(path)?.write_all(contents.as_ref())
}

/// Creates the directory `path` (its parent must exist).
pub fn create_dir(path: &str) -> io::Result<()> {
    on_path(op::MKDIR, path, 0).map(drop)
}

/// Creates `path` and every missing directory above it.
pub fn create_dir_all(path: &str) -> io::Result<()> {
    let path = guest_path(path)?;
    let mut prefix = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        prefix.push('/');
        prefix.push_str(part);
        match create_dir(&prefix) {
            // Above every volume (`/mnt` of a volume at `/mnt/in`) nothing can be created.
            Ok(()) | Err(_) if prefix.len() < path.len() => {}
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    if metadata(&path)?.is_dir() {
        Ok(())
    } else {
        Err(ErrorKind::AlreadyExists.into())
    }
}

/// Removes the file `path` (a symlink itself, not what it points to).
pub fn remove_file(path: &str) -> io::Result<()> {
    on_path(op::REMOVE_FILE, path, 0).map(drop)
}

/// Removes the empty directory `path`.
pub fn remove_dir(path: &str) -> io::Result<()> {
    on_path(op::REMOVE_DIR, path, 0).map(drop)
}

/// Renames `from` to `to` within one volume, replacing `to` if it exists.
pub fn rename(from: &str, to: &str) -> io::Result<()> {
    let (from, to) = (guest_path(from)?, guest_path(to)?);
    call(FsRequest {
        op: op::RENAME,
        path: from.as_ptr() as u64,
        path_len: from.len() as u32,
        path2: to.as_ptr() as u64,
        path2_len: to.len() as u32,
        ..FsRequest::default()
    })
    .map(drop)
}

/// The entries of directory `path`, without `.` and `..`, in the host's order.
pub fn read_dir(path: &str) -> io::Result<ReadDir> {
    let handle = on_path(op::OPEN, path, open_flags::DIRECTORY)? as u32;
    let dir = guest_path(path)?.trim_end_matches('/').into();
    Ok(ReadDir {
        handle,
        dir,
        buf: vec![0; 16 * 1024],
        pos: 0,
        filled: 0,
        done: false,
    })
}

/// An open directory's entries; see [`read_dir`].
#[derive(Debug)]
pub struct ReadDir {
    handle: u32,
    dir: String,
    buf: Vec<u8>,
    pos: usize,
    filled: usize,
    done: bool,
}

impl Iterator for ReadDir {
    type Item = io::Result<DirEntry>;

    fn next(&mut self) -> Option<io::Result<DirEntry>> {
        if self.pos == self.filled {
            if self.done {
                return None;
            }
            let filled = call(FsRequest {
                op: op::READ_DIR,
                handle: self.handle,
                buf: self.buf.as_mut_ptr() as u64,
                len: self.buf.len() as u64,
                ..FsRequest::default()
            });
            match filled {
                Ok(0) => {
                    self.done = true;
                    return None;
                }
                Ok(n) => (self.pos, self.filled) = (0, (n as usize).min(self.buf.len())),
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        const HEADER: usize = size_of::<DirEntryHeader>();
        let record = &self.buf[self.pos..self.filled];
        let name_len = usize::from(u16::from_le_bytes([*record.first()?, *record.get(1)?]));
        let name = record.get(HEADER..HEADER + name_len)?;
        let entry = DirEntry {
            dir: self.dir.clone(),
            name: String::from_utf8_lossy(name).into_owned(),
            kind: FileType(record[2]),
        };
        self.pos += HEADER + name_len;
        Some(Ok(entry))
    }
}

impl Drop for ReadDir {
    fn drop(&mut self) {
        let _ = call(FsRequest {
            op: op::CLOSE,
            handle: self.handle,
            ..FsRequest::default()
        });
    }
}

/// One entry of a directory.
#[derive(Clone, Debug)]
pub struct DirEntry {
    dir: String,
    name: String,
    kind: FileType,
}

impl DirEntry {
    /// Its name (bytes that are not UTF-8 shown as U+FFFD).
    pub fn file_name(&self) -> &str {
        &self.name
    }

    /// Its full guest path.
    pub fn path(&self) -> String {
        format!("{}/{}", self.dir, self.name)
    }

    /// Its kind, as the directory lists it (a symlink is a symlink here).
    pub fn file_type(&self) -> FileType {
        self.kind
    }

    /// Its metadata (symlinks followed).
    pub fn metadata(&self) -> io::Result<Metadata> {
        metadata(&self.path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[kernel::test]
    fn test_guest_path_is_made_absolute_and_checked() {
        assert_eq!(guest_path("/data/x").unwrap(), "/data/x");
        assert_eq!(guest_path("data/x").unwrap(), "/data/x");
        assert_eq!(
            guest_path("a\0b").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        let long = "x".repeat(abi::fs::PATH_MAX as usize);
        assert_eq!(
            guest_path(&long).unwrap_err().kind(),
            ErrorKind::InvalidFilename
        );
    }

    #[kernel::test]
    fn test_open_options_set_and_clear_flags() {
        let options = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .create(false);
        assert_eq!(options.flags, open_flags::WRITE | open_flags::TRUNCATE);
    }

    #[kernel::test]
    fn test_paths_under_no_volume_are_not_found() {
        // A guest unit test runs without volumes.
        assert_eq!(
            File::open("/nowhere/x").unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert!(!exists("/nowhere").unwrap());
    }
}
