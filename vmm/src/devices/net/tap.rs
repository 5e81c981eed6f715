//! A tap interface as the VMM uses it: an fd that reads and writes whole Ethernet frames
//! (`IFF_TAP | IFF_NO_PI`, no virtio header), non-blocking.
//!
//! The VMM never creates interfaces: [`Tap::open`] attaches to an existing one (made with
//! `ip tuntap add dev NAME mode tap [user USER]`), and [`Tap::from_fd`] takes one that another
//! program opened. [`Tap::create_on`] is for such a program (the OCI runtime, which makes the
//! tap inside a container's network namespace on a `/dev/net/tun` it opened earlier).

use super::NetError;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// An attached tap.
#[derive(Debug)]
pub struct Tap {
    fd: TapFd,
    name: String,
}

/// Where a tap's descriptor lives.
#[derive(Debug)]
enum TapFd {
    /// The tap's own descriptor, closed with it.
    Owned(OwnedFd),
    /// A number its owner keeps open for its whole life and refills between guests (a `vmm
    /// serve` runner's tap slot, see `serve::slots`): never closed here.
    Slot(RawFd),
}

impl PartialEq for Tap {
    fn eq(&self, other: &Self) -> bool {
        self.raw_fd() == other.raw_fd()
    }
}

impl Eq for Tap {}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.fd {
            TapFd::Owned(fd) => fd.as_fd(),
            // SAFETY: a slot is a number its owner keeps open for longer than this value lives.
            TapFd::Slot(slot) => unsafe { BorrowedFd::borrow_raw(*slot) },
        }
    }
}

impl Tap {
    /// Attaches to the existing tap interface `name`.
    pub fn open(name: &str) -> Result<Self, NetError> {
        super::spec::check_tap_name(name)?;
        let c_name = CString::new(name).map_err(|_| NetError::BadSpec(name.into()))?;
        // SAFETY: a NUL-terminated name; no other effect.
        if unsafe { libc::if_nametoindex(c_name.as_ptr()) } == 0 {
            return Err(NetError::NoSuchTap(name.to_owned()));
        }
        // SAFETY: a constant path; the result is checked.
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(NetError::OpenTun(std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        set_tap(&fd, name).map_err(|source| NetError::Attach {
            name: name.to_owned(),
            hint: attach_hint(source.raw_os_error()),
            source,
        })?;
        Ok(Self {
            fd: TapFd::Owned(fd),
            name: name.to_owned(),
        })
    }

    /// Makes the tap `name` (or attaches to it, if a tap of that name exists) on `tun`, a
    /// `/dev/net/tun` opened earlier: the tap lives until the last descriptor of it closes.
    pub fn create_on(tun: OwnedFd, name: &str) -> Result<Self, NetError> {
        super::spec::check_tap_name(name)?;
        set_tap(&tun, name).map_err(|source| NetError::Create {
            name: name.to_owned(),
            hint: create_hint(source.raw_os_error()),
            source,
        })?;
        Self::from_fd(tun)
    }

    /// Takes an already attached tap fd (checked to be a tap without packet information),
    /// and makes it non-blocking.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, NetError> {
        let mut request = ifreq("");
        // SAFETY: TUNGETIFF fills a live `ifreq`; any other kind of fd fails.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut request) } < 0 {
            return Err(NetError::NotATap(std::io::Error::last_os_error()));
        }
        // SAFETY: TUNGETIFF wrote the flags member.
        let flags = i32::from(unsafe { request.ifr_ifru.ifru_flags });
        if flags & libc::IFF_TAP == 0 || flags & libc::IFF_NO_PI == 0 {
            return Err(NetError::NotATap(std::io::Error::other(
                "the fd is a tun (not a tap) or carries packet information (IFF_NO_PI unset)",
            )));
        }
        let name_bytes: Vec<u8> = request
            .ifr_name
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        // SAFETY: fcntl on an fd we own.
        let old = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        // SAFETY: as above.
        let set = old >= 0
            && unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, old | libc::O_NONBLOCK) } >= 0;
        if !set {
            return Err(NetError::NotATap(std::io::Error::last_os_error()));
        }
        Ok(Self {
            fd: TapFd::Owned(fd),
            name: String::from_utf8_lossy(&name_bytes).into_owned(),
        })
    }

    /// Takes fd `raw`, inherited from the parent process (`--net fd=N`).
    ///
    /// # Safety
    /// `raw` must be an open fd that nothing else in this process owns or closes.
    pub unsafe fn from_inherited_fd(raw: RawFd) -> Result<Self, NetError> {
        // SAFETY: F_GETFD only asks whether `raw` is open.
        if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
            return Err(NetError::NotATap(std::io::Error::last_os_error()));
        }
        // SAFETY: the caller guarantees that `raw` is open and ours alone.
        Self::from_fd(unsafe { OwnedFd::from_raw_fd(raw) })
    }

    /// A stand-in over any fd (a socketpair in unit tests).
    #[cfg(test)]
    pub(crate) fn fake(fd: OwnedFd) -> Self {
        Self {
            fd: TapFd::Owned(fd),
            name: "fake".into(),
        }
    }

    /// The tap `name` that its owner has put at descriptor `slot` (a reserved number that
    /// outlives this value, which never closes it).
    ///
    /// # Safety
    /// `slot` must stay open and hold this tap for as long as this value is read or written
    /// through (it uses `slot` as its own, as a `BorrowedFd` would; it never closes it).
    pub(crate) unsafe fn in_slot(slot: RawFd, name: &str) -> Self {
        Self {
            fd: TapFd::Slot(slot),
            name: name.to_owned(),
        }
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fd (for the sandbox, which allows read and write on it alone).
    pub fn raw_fd(&self) -> RawFd {
        match &self.fd {
            TapFd::Owned(fd) => fd.as_raw_fd(),
            TapFd::Slot(slot) => *slot,
        }
    }
}

/// `TUNSETIFF` to the tap `name`, a frame device without packet information.
fn set_tap(tun: &OwnedFd, name: &str) -> std::io::Result<()> {
    let mut request = ifreq(name);
    request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads a live `ifreq`.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &request) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request
}

fn attach_hint(errno: Option<i32>) -> &'static str {
    match errno {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (create it for your user: ip tuntap add dev NAME mode tap user $USER; or run as root)"
        }
        Some(libc::EBUSY) => " (another program has it open)",
        Some(libc::EINVAL) => " (is it a tun rather than a tap, or a multi-queue tap?)",
        _ => "",
    }
}

/// Why `TUNSETIFF` of a tap on a fresh `/dev/net/tun` fails: the name is taken.
fn create_hint(errno: Option<i32>) -> &'static str {
    match errno {
        // tun_set_iff: a device of that name that is not a tap of these flags.
        Some(libc::EINVAL) => " (a link of that name exists and is not a tap)",
        Some(libc::EBUSY) => " (a tap of that name is open elsewhere)",
        _ => "",
    }
}
