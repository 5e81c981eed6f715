//! Claiming the socket path: the server listens at the path it was given only if nothing is
//! there, or a stale socket (one nobody answers on), and with the mode it was given from the
//! first instant.
//!
//! The socket is bound in a private directory (mode 0700) made next to the path, through
//! `/proc/self/fd/N/` (so the binding path stays short whatever the directory's), gets its mode,
//! listens, and only then is hard-linked to the path: `link` fails if anything is there, so a
//! file that appears meanwhile is never replaced, and no client ever finds the path before the
//! server listens with the right mode. What is at the path beforehand is judged first: nothing
//! (fine), a socket that refuses connections (stale: removed), a socket that answers (another
//! server: refused), anything else (refused, left alone). `vmm serve` instances starting in one
//! directory take turns through an advisory lock on it, so that two of them cannot both judge
//! one stale socket and remove each other's.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the socket path cannot be claimed.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Something other than a socket is there.
    #[error("{0} exists and is not a socket (vmm serve removes only a stale socket)")]
    NotASocket(PathBuf),
    /// A live socket is there.
    #[error("another server is listening on {0}")]
    InUse(PathBuf),
    /// Longer than a Unix socket address holds.
    #[error("socket path {0} is too long (at most 107 bytes)")]
    TooLong(PathBuf),
    /// Another `vmm serve` holds the directory's lock.
    #[error("another vmm serve is starting in the directory of {0}")]
    Busy(PathBuf),
    /// A system call failed.
    #[error("cannot {what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Room in `sockaddr_un::sun_path`, its NUL included.
const SUN_PATH_LEN: usize = 108;
/// How long to wait for another `vmm serve` starting in the same directory.
const LOCK_WAIT: Duration = Duration::from_secs(2);

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SocketError {
    let path = path.to_owned();
    move |source| SocketError::Io { what, path, source }
}

/// Listens on `path` with permission bits `mode`; see the module's documentation.
pub(crate) fn claim(path: &Path, mode: u32) -> Result<UnixListener, SocketError> {
    if path.as_os_str().len() >= SUN_PATH_LEN {
        return Err(SocketError::TooLong(path.to_owned()));
    }
    let name = path
        .file_name()
        .ok_or_else(|| SocketError::NotASocket(path.to_owned()))?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(parent)
        .map_err(io("open the directory of", path))?;
    lock(&dir, path)?;
    let private = parent.join(format!(
        ".{}.{}.new",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(io("create", &private))?;
    let staged = Staged {
        socket: private.join("socket"),
        dir: private,
    };
    let listener = staged.listen(mode)?;
    judge_what_is_at(path)?;
    std::fs::hard_link(&staged.socket, path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            SocketError::InUse(path.to_owned())
        } else {
            SocketError::Io {
                what: "create",
                path: path.to_owned(),
                source,
            }
        }
    })?;
    Ok(listener)
}

/// The private directory and the socket bound in it; both removed when dropped.
struct Staged {
    dir: PathBuf,
    socket: PathBuf,
}

impl Staged {
    fn listen(&self, mode: u32) -> Result<UnixListener, SocketError> {
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(&self.dir)
            .map_err(io("open", &self.dir))?;
        let short = PathBuf::from(format!("/proc/self/fd/{}/socket", dir.as_raw_fd()));
        let listener = UnixListener::bind(&short).map_err(io("listen on", &self.socket))?;
        std::fs::set_permissions(&self.socket, std::fs::Permissions::from_mode(mode))
            .map_err(io("set the mode of", &self.socket))?;
        Ok(listener)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Takes the directory's advisory lock (released when `dir` is closed), waiting a little for
/// another `vmm serve` that is starting there; where locks are not supported, goes without.
fn lock(dir: &File, path: &Path) -> Result<(), SocketError> {
    let tries = LOCK_WAIT.as_millis() / 10;
    for _ in 0..tries {
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
            // A filesystem without locks: go on; only two servers starting at the same
            // instant over one stale socket could then race.
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(SocketError::Busy(path.to_owned()))
}

/// Removes a stale socket at `path`; refuses anything else that is there.
fn judge_what_is_at(path: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(io("inspect", path)(err)),
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket(path.to_owned()));
    }
    match probe(path) {
        Ok(()) => Err(SocketError::InUse(path.to_owned())),
        // Busy (its backlog is full): alive.
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
            Err(SocketError::InUse(path.to_owned()))
        }
        Err(err) if err.raw_os_error() == Some(libc::ECONNREFUSED) => {
            match std::fs::remove_file(path) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    Err(io("remove the stale socket", path)(err))
                }
                _ => Ok(()),
            }
        }
        Err(err) => Err(io("connect to the socket at", path)(err)),
    }
}

/// Connects to the socket at `path` without ever blocking (a server that is stopped with a
/// full backlog answers `EAGAIN`, not a wait), and hangs up at once.
fn probe(path: &Path) -> std::io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor we just created and own.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_un is a valid value.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let bytes = path.as_os_str().as_encoded_bytes();
    if bytes.len() >= address.sun_path.len() {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    for (to, from) in address.sun_path.iter_mut().zip(bytes) {
        *to = libc::c_char::from_ne_bytes([*from]);
    }
    let len = libc::socklen_t::try_from(size_of::<libc::sockaddr_un>())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `address` is a valid sockaddr_un of `len` bytes for the duration of the call.
    let connected = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            (&raw const address).cast::<libc::sockaddr>(),
            len,
        )
    };
    if connected == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("flick-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn test_claim_leaves_a_regular_file_alone() {
        let dir = scratch("claim-file");
        let path = dir.join("sock");
        std::fs::write(&path, b"precious").unwrap();
        assert!(matches!(
            claim(&path, 0o600),
            Err(SocketError::NotASocket(_))
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no leftovers");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn test_claim_refuses_a_live_socket_and_replaces_a_stale_one() {
        let dir = scratch("claim-live");
        let path = dir.join("sock");
        let first = claim(&path, 0o600).unwrap();
        assert!(matches!(claim(&path, 0o600), Err(SocketError::InUse(_))));
        drop(first);
        let second = claim(&path, 0o640).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        drop(second);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn test_claim_refuses_a_path_too_long_for_a_socket() {
        let path = PathBuf::from(format!("/tmp/{}", "x".repeat(110)));
        assert!(matches!(claim(&path, 0o600), Err(SocketError::TooLong(_))));
    }
}
