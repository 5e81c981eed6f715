//! Byte streams, shaped like `std::io`: [`Read`], [`Write`], [`BufRead`], [`Seek`], errors an
//! app can match ([`Error`], [`ErrorKind`]), and the standard streams: [`stdin`] (what `vmm
//! run` was given on its own stdin), [`stdout`] and [`stderr`].
//!
//! Input moves in large chunks: a read of stdin or of a file asks the VMM for up to 1 MiB at
//! once (one VM exit per buffer). Waiting for input blocks the guest without spinning (the
//! VMM waits on the host fd, and `--timeout` still holds).
//!
//! ```ignore
//! use kernel::io::{self, BufRead};
//! for line in io::stdin().lines() {
//!     let line = line?;
//!     kernel::println!("{}", line.len());
//! }
//! ```

use crate::global::{Global, GlobalGuard};
use crate::{console, hypercall};
use abi::errno;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// What kind of error an I/O operation hit, for apps to match on (like
/// `std::io::ErrorKind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No such file or directory (or no volume at that guest path).
    NotFound,
    /// The host refused, or the operation would remove or rename a volume's own directory.
    PermissionDenied,
    /// The file already exists.
    AlreadyExists,
    /// No input yet (only from non-blocking calls).
    WouldBlock,
    /// A bad argument: flags, an offset, a seek before the start, a path with a NUL.
    InvalidInput,
    /// Bytes that should have been UTF-8 were not.
    InvalidData,
    /// The input ended before a `read_exact` was satisfied.
    UnexpectedEof,
    /// A write wrote nothing.
    WriteZero,
    /// The call was interrupted; try again.
    Interrupted,
    /// A path component is not a directory.
    NotADirectory,
    /// A directory where a file was expected.
    IsADirectory,
    /// The directory is not empty.
    DirectoryNotEmpty,
    /// A write to a read-only volume (`--volume DIR:/path:ro`) or filesystem.
    ReadOnlyFilesystem,
    /// Too many symlinks, or a link the VMM refuses to follow (`/proc/self/fd/N` and the like).
    FilesystemLoop,
    /// The host's disk is full.
    StorageFull,
    /// The file would grow beyond what the host allows.
    FileTooLarge,
    /// A path or file name is too long.
    InvalidFilename,
    /// A rename across two volumes.
    CrossesDevices,
    /// This guest (or the host) has too many files open.
    TooManyOpenFiles,
    /// The path leads outside its volume (`..` past its root, an absolute symlink, a symlink
    /// pointing out): the VMM refuses to leave a volume.
    OutsideVolume,
    /// A FIFO, socket or device file: volumes serve regular files and directories only.
    Unsupported,
    /// Anything else (a host I/O error, a file used after it was closed).
    Other,
}

impl ErrorKind {
    fn description(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "No such file or directory",
            ErrorKind::PermissionDenied => "Permission denied",
            ErrorKind::AlreadyExists => "File exists",
            ErrorKind::WouldBlock => "Resource temporarily unavailable",
            ErrorKind::InvalidInput => "Invalid argument",
            ErrorKind::InvalidData => "Invalid data (not UTF-8)",
            ErrorKind::UnexpectedEof => "Unexpected end of input",
            ErrorKind::WriteZero => "Wrote nothing",
            ErrorKind::Interrupted => "Interrupted",
            ErrorKind::NotADirectory => "Not a directory",
            ErrorKind::IsADirectory => "Is a directory",
            ErrorKind::DirectoryNotEmpty => "Directory not empty",
            ErrorKind::ReadOnlyFilesystem => "Read-only file system",
            ErrorKind::FilesystemLoop => "Too many levels of symbolic links",
            ErrorKind::StorageFull => "No space left on device",
            ErrorKind::FileTooLarge => "File too large",
            ErrorKind::InvalidFilename => "File name too long",
            ErrorKind::CrossesDevices => "Invalid cross-device link",
            ErrorKind::TooManyOpenFiles => "Too many open files",
            ErrorKind::OutsideVolume => "Path leads outside its volume",
            ErrorKind::Unsupported => "Not a regular file or directory",
            ErrorKind::Other => "Input/output error",
        }
    }
}

/// An I/O error: its [`ErrorKind`], and the VMM's code when it came from the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    code: u32,
}

/// `core::result::Result` with this module's [`Error`].
pub type Result<T> = core::result::Result<T, Error>;

impl Error {
    /// An error of `kind` raised in the guest (no VMM code).
    pub const fn new(kind: ErrorKind) -> Self {
        Self { kind, code: 0 }
    }

    /// The error for a VMM code ([`abi::errno`]).
    pub fn from_code(code: u32) -> Self {
        let kind = match code {
            errno::NOT_FOUND => ErrorKind::NotFound,
            errno::PERMISSION_DENIED => ErrorKind::PermissionDenied,
            errno::ALREADY_EXISTS => ErrorKind::AlreadyExists,
            errno::WOULD_BLOCK => ErrorKind::WouldBlock,
            errno::INVALID_INPUT => ErrorKind::InvalidInput,
            errno::INTERRUPTED => ErrorKind::Interrupted,
            errno::NOT_A_DIRECTORY => ErrorKind::NotADirectory,
            errno::IS_A_DIRECTORY => ErrorKind::IsADirectory,
            errno::DIRECTORY_NOT_EMPTY => ErrorKind::DirectoryNotEmpty,
            errno::READ_ONLY => ErrorKind::ReadOnlyFilesystem,
            errno::FILESYSTEM_LOOP => ErrorKind::FilesystemLoop,
            errno::STORAGE_FULL => ErrorKind::StorageFull,
            errno::FILE_TOO_LARGE => ErrorKind::FileTooLarge,
            errno::NAME_TOO_LONG => ErrorKind::InvalidFilename,
            errno::CROSSES_DEVICES => ErrorKind::CrossesDevices,
            errno::TOO_MANY_OPEN_FILES => ErrorKind::TooManyOpenFiles,
            errno::NOT_CAPABLE => ErrorKind::OutsideVolume,
            errno::UNSUPPORTED => ErrorKind::Unsupported,
            _ => ErrorKind::Other,
        };
        Self { kind, code }
    }

    /// What kind of error it is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The VMM's code ([`abi::errno`]), if the VMM raised it.
    pub fn raw_code(&self) -> Option<u32> {
        (self.code != 0).then_some(self.code)
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Self::new(kind)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.raw_code() {
            Some(errno::BAD_HANDLE) => f.write_str("Bad file handle"),
            _ => f.write_str(self.kind.description()),
        }
    }
}

impl core::error::Error for Error {}

/// A source of bytes (like `std::io::Read`).
pub trait Read {
    /// Reads some bytes into `buf`: how many (0 at the end of input, or for an empty `buf`).
    fn read(&mut self, buf: &mut [u8]) -> Result<usize>;

    /// Fills `buf` completely, or fails with [`ErrorKind::UnexpectedEof`].
    fn read_exact(&mut self, mut buf: &mut [u8]) -> Result<()> {
        while !buf.is_empty() {
            match self.read(buf) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => buf = &mut buf[n..],
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Appends everything up to the end of input to `buf`: the number of bytes appended.
    fn read_to_end(&mut self, buf: &mut Vec<u8>) -> Result<usize> {
        read_to_end_in_chunks(self, buf, 64 * 1024)
    }

    /// Appends everything up to the end of input to `buf`, which must be UTF-8
    /// ([`ErrorKind::InvalidData`] otherwise, and `buf` is left as it was).
    fn read_to_string(&mut self, buf: &mut String) -> Result<usize> {
        let mut bytes = Vec::new();
        self.read_to_end(&mut bytes)?;
        let text = core::str::from_utf8(&bytes).map_err(|_| Error::new(ErrorKind::InvalidData))?;
        buf.push_str(text);
        Ok(bytes.len())
    }
}

/// Reads to the end, growing `buf` by at least `chunk` bytes at a time.
pub(crate) fn read_to_end_in_chunks<R: Read + ?Sized>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    chunk: usize,
) -> Result<usize> {
    let start = buf.len();
    loop {
        let filled = buf.len();
        if buf.capacity() - filled < chunk / 2 {
            buf.reserve(chunk);
        }
        // Zero at most one chunk per read: the whole spare capacity each time would make a
        // large read quadratic.
        let room = (buf.capacity() - filled).min(chunk.max(1));
        buf.resize(filled + room, 0);
        match reader.read(&mut buf[filled..]) {
            Ok(0) => {
                buf.truncate(filled);
                return Ok(filled - start);
            }
            Ok(n) => buf.truncate(filled + n),
            Err(e) if e.kind() == ErrorKind::Interrupted => buf.truncate(filled),
            Err(e) => {
                buf.truncate(filled);
                return Err(e);
            }
        }
    }
}

/// A sink for bytes (like `std::io::Write`).
pub trait Write {
    /// Writes some of `buf`: how many bytes.
    fn write(&mut self, buf: &[u8]) -> Result<usize>;

    /// Sends on whatever is buffered.
    fn flush(&mut self) -> Result<()>;

    /// Writes all of `buf`, or fails ([`ErrorKind::WriteZero`] if a write wrote nothing).
    fn write_all(&mut self, mut buf: &[u8]) -> Result<()> {
        while !buf.is_empty() {
            match self.write(buf) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes formatted text: the target of `write!` and `writeln!`.
    fn write_fmt(&mut self, args: fmt::Arguments<'_>) -> Result<()> {
        struct Adapter<'a, W: ?Sized> {
            inner: &'a mut W,
            error: Option<Error>,
        }
        impl<W: Write + ?Sized> fmt::Write for Adapter<'_, W> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                self.inner.write_all(s.as_bytes()).map_err(|e| {
                    self.error = Some(e);
                    fmt::Error
                })
            }
        }
        let mut adapter = Adapter {
            inner: self,
            error: None,
        };
        match fmt::write(&mut adapter, args) {
            Ok(()) => Ok(()),
            Err(_) => Err(adapter.error.unwrap_or(Error::new(ErrorKind::Other))),
        }
    }
}

/// A reader with a buffer of its own: lines and small reads without a VM exit each (like
/// `std::io::BufRead`).
pub trait BufRead: Read {
    /// The buffered bytes, reading more if there are none (empty at the end of input).
    fn fill_buf(&mut self) -> Result<&[u8]>;

    /// Marks `amount` buffered bytes as used.
    fn consume(&mut self, amount: usize);

    /// Appends bytes up to and including `byte` (or the end of input) to `buf`: how many.
    fn read_until(&mut self, byte: u8, buf: &mut Vec<u8>) -> Result<usize> {
        let mut read = 0;
        loop {
            let (done, used) = {
                let available = match self.fill_buf() {
                    Ok(available) => available,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                match available.iter().position(|&b| b == byte) {
                    Some(i) => {
                        buf.extend_from_slice(&available[..=i]);
                        (true, i + 1)
                    }
                    None => {
                        buf.extend_from_slice(available);
                        (available.is_empty(), available.len())
                    }
                }
            };
            self.consume(used);
            read += used;
            if done {
                return Ok(read);
            }
        }
    }

    /// Appends one line, with its `\n`, to `buf`: how many bytes (0 at the end of input). The
    /// line must be UTF-8 ([`ErrorKind::InvalidData`] otherwise).
    fn read_line(&mut self, buf: &mut String) -> Result<usize> {
        let mut bytes = Vec::new();
        let n = self.read_until(b'\n', &mut bytes)?;
        let text = core::str::from_utf8(&bytes).map_err(|_| Error::new(ErrorKind::InvalidData))?;
        buf.push_str(text);
        Ok(n)
    }

    /// The lines, without their `\n` or `\r\n`.
    fn lines(self) -> Lines<Self>
    where
        Self: Sized,
    {
        Lines { reader: self }
    }
}

/// The lines of a [`BufRead`]; see [`BufRead::lines`].
#[derive(Debug)]
pub struct Lines<B> {
    reader: B,
}

impl<B: BufRead> Iterator for Lines<B> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => {
                if line.ends_with('\n') {
                    line.pop();
                    if line.ends_with('\r') {
                        line.pop();
                    }
                }
                Some(Ok(line))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

/// Where a [`Seek`] moves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeekFrom {
    /// This many bytes from the start.
    Start(u64),
    /// This many bytes from the end (negative: before it).
    End(i64),
    /// This many bytes from the current position.
    Current(i64),
}

/// A stream with a position (like `std::io::Seek`).
pub trait Seek {
    /// Moves to `pos`: the new position from the start. Before the start is
    /// [`ErrorKind::InvalidInput`].
    fn seek(&mut self, pos: SeekFrom) -> Result<u64>;

    /// Back to the start.
    fn rewind(&mut self) -> Result<()> {
        self.seek(SeekFrom::Start(0)).map(drop)
    }

    /// The current position.
    fn stream_position(&mut self) -> Result<u64> {
        self.seek(SeekFrom::Current(0))
    }
}

/// `base + offset`, refusing a position before 0 or past `u64::MAX`.
pub(crate) fn offset_position(base: u64, offset: i64) -> Result<u64> {
    base.checked_add_signed(offset)
        .ok_or(Error::new(ErrorKind::InvalidInput))
}

/// Size of [`BufReader`]'s buffer by default: one VM exit per 64 KiB of small reads.
pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;

/// Adds a buffer to any reader (like `std::io::BufReader`): small reads and lines come from the
/// buffer; a read as large as the buffer goes straight to the reader.
pub struct BufReader<R> {
    inner: R,
    buf: Box<[u8]>,
    pos: usize,
    filled: usize,
}

impl<R: Read> BufReader<R> {
    /// With a [`DEFAULT_BUFFER_SIZE`] buffer.
    pub fn new(inner: R) -> Self {
        Self::with_capacity(DEFAULT_BUFFER_SIZE, inner)
    }

    /// With a buffer of `capacity` bytes.
    pub fn with_capacity(capacity: usize, inner: R) -> Self {
        Self {
            inner,
            buf: vec![0; capacity.max(1)].into_boxed_slice(),
            pos: 0,
            filled: 0,
        }
    }

    /// The reader, with whatever was buffered dropped.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for BufReader<R> {
    fn read(&mut self, out: &mut [u8]) -> Result<usize> {
        if self.pos == self.filled && out.len() >= self.buf.len() {
            return self.inner.read(out);
        }
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for BufReader<R> {
    fn fill_buf(&mut self) -> Result<&[u8]> {
        if self.pos == self.filled {
            self.filled = self.inner.read(&mut self.buf)?;
            self.pos = 0;
        }
        Ok(&self.buf[self.pos..self.filled])
    }

    fn consume(&mut self, amount: usize) {
        self.pos = (self.pos + amount).min(self.filled);
    }
}

/// Adds a buffer to any writer (like `std::io::BufWriter`): many small writes become one
/// large one (one VM exit per buffer when writing to [`stdout`]). Dropping it flushes it.
pub struct BufWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
    capacity: usize,
}

impl<W: Write> BufWriter<W> {
    /// With a [`DEFAULT_BUFFER_SIZE`] buffer.
    pub fn new(inner: W) -> Self {
        Self::with_capacity(DEFAULT_BUFFER_SIZE, inner)
    }

    /// With a buffer of `capacity` bytes.
    pub fn with_capacity(capacity: usize, inner: W) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            capacity: capacity.max(1),
        }
    }

    fn flush_buffer(&mut self) -> Result<()> {
        let result = self.inner.write_all(&self.buf);
        self.buf.clear();
        result
    }

    /// The writer underneath.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

impl<W: Write> Write for BufWriter<W> {
    fn write(&mut self, data: &[u8]) -> Result<usize> {
        if self.buf.len() + data.len() > self.capacity {
            self.flush_buffer()?;
        }
        if data.len() >= self.capacity {
            return self.inner.write(data);
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> Result<()> {
        self.flush_buffer()?;
        self.inner.flush()
    }
}

impl<W: Write> Drop for BufWriter<W> {
    fn drop(&mut self) {
        let _ = self.flush_buffer();
    }
}

impl Read for &[u8] {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let n = self.len().min(buf.len());
        buf[..n].copy_from_slice(&self[..n]);
        *self = &self[n..];
        Ok(n)
    }
}

impl BufRead for &[u8] {
    fn fill_buf(&mut self) -> Result<&[u8]> {
        Ok(self)
    }

    fn consume(&mut self, amount: usize) {
        *self = &self[amount.min(self.len())..];
    }
}

impl Write for Vec<u8> {
    fn write(&mut self, buf: &[u8]) -> Result<usize> {
        self.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

impl<R: Read + ?Sized> Read for &mut R {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        (**self).read(buf)
    }
}

impl<W: Write + ?Sized> Write for &mut W {
    fn write(&mut self, buf: &[u8]) -> Result<usize> {
        (**self).write(buf)
    }

    fn flush(&mut self) -> Result<()> {
        (**self).flush()
    }
}

/// Size of stdin's own buffer (for lines and small reads).
const STDIN_BUFFER_SIZE: usize = 64 * 1024;

/// Stdin's buffer: in `.bss`, so that it costs nothing until an app reads stdin.
struct StdinBuffer {
    bytes: [u8; STDIN_BUFFER_SIZE],
    pos: usize,
    filled: usize,
}

static STDIN: Global<StdinBuffer> = Global::new(StdinBuffer {
    bytes: [0; STDIN_BUFFER_SIZE],
    pos: 0,
    filled: 0,
});

/// Drops whatever stdin had buffered: a guest restored from a snapshot reads the stdin of the
/// run that restored it, not what was left of the snapshotting run's.
pub(crate) fn forget_buffered_stdin() {
    STDIN.with(|buf| {
        buf.pos = 0;
        buf.filled = 0;
    });
}

/// Reads the VMM's stdin straight into `buf` (one exit per up to 1 MiB).
fn read_stdin_unbuffered(buf: &mut [u8]) -> Result<usize> {
    if buf.is_empty() {
        return Ok(0);
    }
    hypercall::stdin_read(buf).map_err(Error::from_code)
}

/// The guest's standard input: what `vmm run` was given on its own stdin (a pipe, a file, a
/// terminal), the `stdin` file of a fleet manifest entry, or nothing. Reads block (without
/// spinning) until input arrives; the end of input reads 0 bytes.
///
/// ```ignore
/// let mut text = alloc::string::String::new();
/// kernel::io::stdin().read_to_string(&mut text)?;
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Stdin {
    _private: (),
}

/// The guest's standard input.
pub fn stdin() -> Stdin {
    Stdin { _private: () }
}

impl Stdin {
    /// Exclusive, buffered access for [`BufRead`]: lines, `read_until`.
    ///
    /// # Panics
    /// If stdin is locked already (a second lock while the first is alive).
    pub fn lock(&self) -> StdinLock<'static> {
        match STDIN.lock() {
            Some(buffer) => StdinLock {
                buffer,
                _life: core::marker::PhantomData,
            },
            None => panic!("stdin is locked already"),
        }
    }

    /// Appends one line (with its `\n`) to `buf`: how many bytes, 0 at the end of input.
    pub fn read_line(&self, buf: &mut String) -> Result<usize> {
        self.lock().read_line(buf)
    }

    /// The lines of stdin, without their line endings.
    pub fn lines(self) -> Lines<StdinLock<'static>> {
        self.lock().lines()
    }
}

impl Read for Stdin {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.lock().read(buf)
    }

    fn read_to_end(&mut self, buf: &mut Vec<u8>) -> Result<usize> {
        self.lock().read_to_end(buf)
    }
}

/// Stdin, locked: see [`Stdin::lock`].
pub struct StdinLock<'a> {
    buffer: GlobalGuard<StdinBuffer>,
    _life: core::marker::PhantomData<&'a ()>,
}

impl Read for StdinLock<'_> {
    fn read(&mut self, out: &mut [u8]) -> Result<usize> {
        let buffer = &mut *self.buffer;
        if buffer.pos == buffer.filled && out.len() >= STDIN_BUFFER_SIZE {
            return read_stdin_unbuffered(out);
        }
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }

    fn read_to_end(&mut self, buf: &mut Vec<u8>) -> Result<usize> {
        let buffered = {
            let buffer = &mut *self.buffer;
            buf.extend_from_slice(&buffer.bytes[buffer.pos..buffer.filled]);
            let n = buffer.filled - buffer.pos;
            buffer.pos = buffer.filled;
            n
        };
        let rest = read_to_end_in_chunks(&mut Unbuffered, buf, abi::MAX_TRANSFER as usize)?;
        Ok(buffered + rest)
    }
}

/// Stdin without the buffer, for large reads.
struct Unbuffered;

impl Read for Unbuffered {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        read_stdin_unbuffered(buf)
    }
}

impl BufRead for StdinLock<'_> {
    fn fill_buf(&mut self) -> Result<&[u8]> {
        let buffer = &mut *self.buffer;
        if buffer.pos == buffer.filled {
            buffer.filled = read_stdin_unbuffered(&mut buffer.bytes)?;
            buffer.pos = 0;
        }
        Ok(&buffer.bytes[buffer.pos..buffer.filled])
    }

    fn consume(&mut self, amount: usize) {
        let buffer = &mut *self.buffer;
        buffer.pos = (buffer.pos + amount).min(buffer.filled);
    }
}

/// The guest's standard output as a byte stream (the `print!` console, in order with it):
/// small writes are line-buffered, a write of 4 KiB or more goes out directly.
///
/// ```ignore
/// use kernel::io::Write;
/// kernel::io::stdout().write_all(b"raw bytes\n")?;
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Stdout {
    _private: (),
}

/// The guest's standard output.
pub fn stdout() -> Stdout {
    Stdout { _private: () }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> Result<usize> {
        console::write_stdout(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<()> {
        console::flush();
        Ok(())
    }
}

/// The guest's standard error as a byte stream (unbuffered).
#[derive(Clone, Copy, Debug)]
pub struct Stderr {
    _private: (),
}

/// The guest's standard error.
pub fn stderr() -> Stderr {
    Stderr { _private: () }
}

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> Result<usize> {
        console::write_stderr(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[kernel::test]
    fn test_lines_strip_lf_and_crlf_and_keep_a_last_line_without_newline() {
        let lines: Vec<String> = (&b"one\r\ntwo\n\nthree"[..])
            .lines()
            .map(|l| l.unwrap())
            .collect();
        assert_eq!(lines, ["one", "two", "", "three"]);
    }

    #[kernel::test]
    fn test_read_line_refuses_invalid_utf8_and_leaves_the_buffer() {
        let mut text = String::from("kept");
        let err = (&b"\xff\xfe\n"[..]).read_line(&mut text).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        assert_eq!(text, "kept");
    }

    /// A reader that hands out at most `chunk` bytes per read.
    struct Trickle<'a> {
        data: &'a [u8],
        chunk: usize,
        reads: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
            self.reads += 1;
            let n = self.chunk.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[kernel::test]
    fn test_read_exact_gathers_short_reads_and_reports_early_end() {
        let mut reader = Trickle {
            data: b"abcdefgh",
            chunk: 3,
            reads: 0,
        };
        let mut buf = [0u8; 8];
        reader.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"abcdefgh");
        let err = reader.read_exact(&mut buf[..1]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnexpectedEof);
    }

    #[kernel::test]
    fn test_read_to_end_appends_everything() {
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut reader = Trickle {
            data: &data,
            chunk: 70_000,
            reads: 0,
        };
        let mut out = vec![1, 2];
        assert_eq!(reader.read_to_end(&mut out).unwrap(), data.len());
        assert_eq!(&out[2..], &data[..]);
    }

    #[kernel::test]
    fn test_read_to_end_zeroes_at_most_a_chunk_per_read() {
        let data = [5u8; 10_000];
        let mut reader = Trickle {
            data: &data,
            chunk: 10_000,
            reads: 0,
        };
        let mut out = Vec::with_capacity(1 << 20);
        let mut counting = CountingReads {
            inner: &mut reader,
            largest: 0,
        };
        read_to_end_in_chunks(&mut counting, &mut out, 4096).unwrap();
        assert_eq!(out.len(), 10_000);
        assert_eq!(
            counting.largest, 4096,
            "each read is offered one chunk, not all capacity"
        );
    }

    /// Records the largest buffer a reader was offered.
    struct CountingReads<'a, R> {
        inner: &'a mut R,
        largest: usize,
    }

    impl<R: Read> Read for CountingReads<'_, R> {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
            self.largest = self.largest.max(buf.len());
            self.inner.read(buf)
        }
    }

    #[kernel::test]
    fn test_bufreader_serves_small_reads_from_one_large_one() {
        let data = [7u8; 1000];
        let mut reader = BufReader::with_capacity(
            512,
            Trickle {
                data: &data,
                chunk: 512,
                reads: 0,
            },
        );
        let mut byte = [0u8; 1];
        for _ in 0..512 {
            reader.read_exact(&mut byte).unwrap();
        }
        assert_eq!(reader.into_inner().reads, 1);
    }

    #[kernel::test]
    fn test_bufreader_large_read_bypasses_the_buffer() {
        let data = [7u8; 4096];
        let mut reader = BufReader::with_capacity(
            64,
            Trickle {
                data: &data,
                chunk: 4096,
                reads: 0,
            },
        );
        let mut buf = [0u8; 4096];
        assert_eq!(reader.read(&mut buf).unwrap(), 4096);
    }

    #[kernel::test]
    fn test_bufwriter_batches_small_writes() {
        let mut out = BufWriter::with_capacity(16, Vec::new());
        out.write_all(b"0123456789").unwrap();
        assert!(out.get_mut().is_empty());
        out.write_all(b"abcdefghij").unwrap();
        assert_eq!(out.get_mut().as_slice(), b"0123456789");
        out.flush().unwrap();
        assert_eq!(out.get_mut().as_slice(), b"0123456789abcdefghij");
    }

    #[kernel::test]
    fn test_write_fmt_reaches_the_writer() {
        let (mut out, name) = (Vec::new(), "a");
        write!(out, "{name}-{:02}", 7).unwrap();
        assert_eq!(out, b"a-07");
    }

    #[kernel::test]
    fn test_offset_position_refuses_before_the_start_and_overflow() {
        assert_eq!(offset_position(10, -4), Ok(6));
        assert_eq!(
            offset_position(3, -4).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            offset_position(u64::MAX, 1).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[kernel::test]
    fn test_vmm_codes_map_to_kinds_an_app_can_match() {
        for (code, kind) in [
            (errno::NOT_FOUND, ErrorKind::NotFound),
            (errno::READ_ONLY, ErrorKind::ReadOnlyFilesystem),
            (errno::NOT_CAPABLE, ErrorKind::OutsideVolume),
            (errno::TOO_MANY_OPEN_FILES, ErrorKind::TooManyOpenFiles),
            (errno::NAME_TOO_LONG, ErrorKind::InvalidFilename),
            (12345, ErrorKind::Other),
        ] {
            let err = Error::from_code(code);
            assert_eq!((err.kind(), err.raw_code()), (kind, Some(code)));
        }
        assert_eq!(Error::new(ErrorKind::InvalidData).raw_code(), None);
    }
}
