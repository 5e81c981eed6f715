//! The stdin device: the guest's standard input, read in large chunks straight into guest RAM
//! ([`abi::input::InputRead`], one exit per buffer).
//!
//! A read never blocks the vCPU thread: with nothing to read yet it answers
//! `errno::WOULD_BLOCK`, and the guest waits with the `Poll` hypercall, which waits on this
//! device's fd together with the other input sources and the guest's `--timeout`. When input
//! is there, one request takes as much as is ready, up to the guest's buffer (a pipe fed by a
//! fast writer fills a 1 MiB buffer in one exit, not one per 64 KiB).
//!
//! Nothing of it is part of a snapshot: a restored guest reads the stdin of the run that
//! restores it.

use super::volumes::SharedFd;
use super::{DeviceContext, DeviceStateError, DeviceStop, PollSource, PortDevice};
use crate::memory::GuestRam;
use abi::errno;
use abi::input::InputRead;
use std::os::fd::{AsRawFd, RawFd};

/// The device's name in reports.
const NAME: &str = "stdin";
/// The ports of the device.
pub(crate) const PORTS: std::ops::Range<u16> =
    abi::port::STDIN..abi::port::STDIN + abi::port::STDIN_LEN;

/// Where a guest's standard input comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StdinSource {
    /// Nothing: every read is the end of input (fleet instances without a stdin file; serve
    /// requests whose client sends none).
    #[default]
    Empty,
    /// A stream of this process, read as a process reads its stdin: `vmm run`'s fd 0, a serve
    /// client's connection. Not owned: whoever configures it keeps the fd open while the
    /// guest runs.
    Stream(RawFd),
    /// A file read from its start by each guest, at an offset of its own (a fleet manifest's
    /// `stdin`: every instance reads the whole file).
    File(SharedFd),
}

impl StdinSource {
    /// This process's own stdin (fd 0), as `vmm run` forwards it. If it is a pipe, the pipe
    /// is widened to 1 MiB where the host allows it, so that a fast writer can fill a guest's
    /// 1 MiB reads (one exit each) instead of 64 KiB ones.
    ///
    /// A closed fd 0 is end of input; its number is then held by `/dev/null`, so that no file
    /// the VMM opens later (the image, `/dev/kvm`, a volume's file) lands there and is read as
    /// the guest's input.
    pub fn inherit() -> Self {
        // SAFETY: F_GETFD only asks whether the descriptor is open.
        if unsafe { libc::fcntl(libc::STDIN_FILENO, libc::F_GETFD) } < 0 {
            use std::os::fd::IntoRawFd;
            // The lowest free number: 0. Kept open for the life of the process.
            let _ = std::fs::File::open("/dev/null").map(IntoRawFd::into_raw_fd);
            return StdinSource::Empty;
        }
        // SAFETY: F_SETPIPE_SZ only resizes a pipe's buffer; on anything else it fails, and a
        // failure (not a pipe, over the host's limit) changes nothing.
        unsafe {
            libc::fcntl(
                libc::STDIN_FILENO,
                libc::F_SETPIPE_SZ,
                abi::MAX_TRANSFER as i32,
            )
        };
        StdinSource::Stream(libc::STDIN_FILENO)
    }

    /// A file every guest reads from its start (a fleet manifest's `stdin`); refuses anything
    /// but a regular file, without blocking.
    pub fn file(path: &std::path::Path) -> Result<Self, crate::files::FileError> {
        let (file, _) = crate::files::open_regular(path)?;
        Ok(StdinSource::File(SharedFd::new(file.into())))
    }
}

/// The stdin device of one guest.
pub(crate) struct StdinDevice {
    source: StdinSource,
    offset: u64,
    ended: bool,
}

impl StdinDevice {
    /// A device reading `source`.
    pub(crate) fn new(source: StdinSource) -> Self {
        Self {
            source,
            offset: 0,
            ended: false,
        }
    }

    /// Reads into the guest's buffer: `(status, count)`.
    fn read_into(&mut self, ram: &GuestRam, buf: u64, len: u64) -> Result<(u32, u64), String> {
        if self.ended || len == 0 {
            return Ok((0, 0));
        }
        match &self.source {
            StdinSource::Empty => {
                self.ended = true;
                Ok((0, 0))
            }
            StdinSource::File(file) => {
                let (fd, offset) = (file.borrow().as_raw_fd(), self.offset as libc::off_t);
                let n = ram
                    .with_host_range(buf, len, |ptr, len| {
                        // SAFETY: `ptr..ptr+len` is checked guest RAM, mapped while the VMM
                        // runs; pread writes at most `len` bytes there.
                        unsafe { libc::pread(fd, ptr.cast(), len, offset) }
                    })
                    .map_err(|e| e.to_string())?;
                Ok(self.account(n, len))
            }
            StdinSource::Stream(fd) => {
                let fd = *fd;
                let mut total = 0u64;
                while total < len && readable_now(fd) {
                    let n = ram
                        .with_host_range(buf + total, len - total, |ptr, len| {
                            // SAFETY: as above; read writes at most `len` bytes there.
                            unsafe { libc::read(fd, ptr.cast(), len) }
                        })
                        .map_err(|e| e.to_string())?;
                    match n {
                        0 => {
                            self.ended = true;
                            break;
                        }
                        n if n > 0 => total += n as u64,
                        _ => {
                            let host = super::volumes::resolve::last_errno();
                            if host == libc::EINTR || host == libc::EAGAIN {
                                break;
                            }
                            // A stdin that fails (closed, EIO) ends the input.
                            self.ended = true;
                            if total == 0 {
                                return Ok((errno::IO, 0));
                            }
                            break;
                        }
                    }
                }
                let status = if total == 0 && !self.ended {
                    errno::WOULD_BLOCK
                } else {
                    0
                };
                Ok((status, total))
            }
        }
    }

    /// The answer to a file read of `n` bytes.
    fn account(&mut self, n: isize, len: u64) -> (u32, u64) {
        match n {
            0 => {
                self.ended = true;
                (0, 0)
            }
            n if n > 0 => {
                self.offset += n as u64;
                (0, (n as u64).min(len))
            }
            _ => {
                self.ended = true;
                (errno::IO, 0)
            }
        }
    }
}

/// Whether a read of `fd` would not block now (input, end of input, or an error to report).
fn readable_now(fd: RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: one live pollfd and a live timespec; a zero timeout never blocks.
    let n = unsafe { libc::ppoll(&raw mut poll, 1, &raw const zero, std::ptr::null()) };
    n > 0 && poll.revents != 0
}

impl PortDevice for StdinDevice {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(
        &mut self,
        offset: u16,
        data: &[u8],
        ctx: &mut DeviceContext<'_>,
    ) -> Result<(), DeviceStop> {
        let bad = |why: String| DeviceStop::BadRequest { device: NAME, why };
        let addr = super::request_address(NAME, offset, data)?;
        let mut req: InputRead = ctx
            .ram
            .read_obj(addr)
            .map_err(|e| bad(format!("request struct: {e}")))?;
        let len = u64::from(req.len);
        if len > abi::MAX_TRANSFER {
            return Err(bad(format!(
                "read of {len} bytes (at most {})",
                abi::MAX_TRANSFER
            )));
        }
        ctx.ram
            .check_range(req.buf, len)
            .map_err(|e| bad(format!("buffer: {e}")))?;
        (req.status, req.count) = self
            .read_into(ctx.ram, req.buf, len)
            .map_err(|e| bad(format!("buffer: {e}")))?;
        // The struct's range was checked when it was read.
        let _ = ctx.ram.write_obj(addr, req);
        Ok(())
    }

    fn flush(&mut self, _console: &mut dyn super::ConsoleSink) {}

    fn save(&self) -> Vec<u8> {
        Vec::new()
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), DeviceStateError> {
        super::restore_stateless(NAME, bytes)
    }

    fn poll_source(&self) -> Option<PollSource> {
        let fd = match &self.source {
            StdinSource::Stream(fd) if !self.ended => Some(*fd),
            _ => None,
        };
        Some(PollSource {
            mask: abi::hypercall::poll_source::STDIN,
            ready: fd.is_none(),
            fd,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{ConsoleSink, Stream};
    use std::io::Write;
    use std::os::fd::{FromRawFd, OwnedFd};

    struct NoConsole;

    impl ConsoleSink for NoConsole {
        fn emit(&mut self, _: Stream, _: &[u8]) -> Result<(), DeviceStop> {
            Ok(())
        }
    }

    const REQ: u64 = 0x1000;
    const BUF: u64 = 0x2000;

    fn read(dev: &mut StdinDevice, ram: &GuestRam, len: u32) -> Result<InputRead, DeviceStop> {
        ram.write_obj(
            REQ,
            InputRead {
                buf: BUF,
                len,
                ..InputRead::default()
            },
        )
        .unwrap();
        let mut ctx = DeviceContext {
            ram,
            console: &mut NoConsole,
            deadline: None,
        };
        dev.write(0, &(REQ as u32).to_le_bytes(), &mut ctx)?;
        Ok(ram.read_obj(REQ).unwrap())
    }

    fn pipe() -> (OwnedFd, std::fs::File) {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two new fds into our array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both fds are new and owned by nothing else.
        unsafe {
            (
                OwnedFd::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        }
    }

    #[test]
    fn test_stdin_empty_source_reads_end_of_input() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let mut dev = StdinDevice::new(StdinSource::Empty);
        let back = read(&mut dev, &ram, 64).unwrap();
        assert_eq!((back.status, back.count), (0, 0));
        assert!(dev.poll_source().unwrap().ready);
    }

    #[test]
    fn test_stdin_stream_would_block_then_reads_then_ends() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let (read_end, mut write_end) = pipe();
        let mut dev = StdinDevice::new(StdinSource::Stream(read_end.as_raw_fd()));
        let back = read(&mut dev, &ram, 64).unwrap();
        assert_eq!((back.status, back.count), (errno::WOULD_BLOCK, 0));
        let source = dev.poll_source().unwrap();
        assert_eq!(
            (source.ready, source.fd),
            (false, Some(read_end.as_raw_fd()))
        );
        write_end.write_all(b"line one\nline two\n").unwrap();
        let back = read(&mut dev, &ram, 64).unwrap();
        assert_eq!((back.status, back.count), (0, 18));
        let mut got = [0u8; 18];
        ram.read(BUF, &mut got).unwrap();
        assert_eq!(&got, b"line one\nline two\n");
        drop(write_end);
        let back = read(&mut dev, &ram, 64).unwrap();
        assert_eq!((back.status, back.count), (0, 0), "end of input");
        assert!(dev.poll_source().unwrap().ready);
    }

    #[test]
    fn test_stdin_stream_takes_what_is_ready_up_to_the_buffer() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let (read_end, mut write_end) = pipe();
        let mut dev = StdinDevice::new(StdinSource::Stream(read_end.as_raw_fd()));
        write_end.write_all(&[7u8; 100]).unwrap();
        let back = read(&mut dev, &ram, 60).unwrap();
        assert_eq!(back.count, 60);
        let back = read(&mut dev, &ram, 60).unwrap();
        assert_eq!(back.count, 40);
    }

    #[test]
    fn test_stdin_file_source_reads_from_its_own_offset() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let path = std::env::temp_dir().join(format!("flick-stdin-{}", std::process::id()));
        std::fs::write(&path, b"0123456789").unwrap();
        let file = SharedFd::new(std::fs::File::open(&path).unwrap().into());
        let (mut a, mut b) = (
            StdinDevice::new(StdinSource::File(file.clone())),
            StdinDevice::new(StdinSource::File(file)),
        );
        assert_eq!(read(&mut a, &ram, 4).unwrap().count, 4);
        assert_eq!(read(&mut b, &ram, 64).unwrap().count, 10, "b starts at 0");
        assert_eq!(read(&mut a, &ram, 64).unwrap().count, 6);
        assert_eq!(read(&mut a, &ram, 64).unwrap().count, 0);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn test_stdin_bad_requests_stop_the_guest() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let mut dev = StdinDevice::new(StdinSource::Empty);
        let too_long = (abi::MAX_TRANSFER + 1) as u32;
        assert!(matches!(
            read(&mut dev, &ram, too_long),
            Err(DeviceStop::BadRequest { .. })
        ));
        ram.write_obj(
            REQ,
            InputRead {
                buf: (1 << 20) - 8,
                len: 16,
                ..InputRead::default()
            },
        )
        .unwrap();
        let mut ctx = DeviceContext {
            ram: &ram,
            console: &mut NoConsole,
            deadline: None,
        };
        let call = (REQ as u32).to_le_bytes();
        assert!(dev.write(0, &call, &mut ctx).is_err(), "buffer past RAM");
        assert!(dev.write(0, &call[..2], &mut ctx).is_err(), "16-bit write");
        assert!(
            dev.write(0, &u32::MAX.to_le_bytes(), &mut ctx).is_err(),
            "struct past RAM"
        );
        assert!(
            dev.write(1, &call, &mut ctx).is_err(),
            "not at the base port"
        );
    }
}
