//! `vmm run IMAGE --gdb ADDR`: gdb attached to a live guest through the `gdbstub` crate.
//!
//! The guest stops before its first instruction and waits for gdb (`target remote ADDR`) on a
//! loopback TCP address or a Unix socket; then registers, memory, software breakpoints,
//! single steps, continue, Ctrl-C, the exit code (`W`) and crashes (as signals: `SIGSEGV` for
//! `#PF`, `SIGILL` for `#UD`, ...) go through the gdb remote protocol. How the guest is
//! stopped and resumed without `KVM_SET_GUEST_DEBUG` is in `crate::vm::debug`.
//!
//! - [`GdbAddress`] and [`GdbListener`]: where gdb connects;
//! - `target`: the gdbstub `Target` over a stopped VM, and the event loop that runs it;
//! - `interrupt`: gdb's Ctrl-C while the guest runs.
//!
//! The guest runs without the seccomp sandbox under a debugger (the connection and the vCPU
//! register calls need what the run loop's filter denies), which `vmm run` says in a warning.
//! `--timeout` does not apply: a guest stopped in gdb is not late.

mod interrupt;
mod target;

use crate::launch::{LaunchError, RunConfig};
use crate::report::{RunReport, Timeline};
use crate::vm::{Console, VmError};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

/// Why a debugging session could not run.
#[derive(Debug, thiserror::Error)]
pub enum DebugError {
    /// `--gdb` is neither a loopback `HOST:PORT` nor a socket path.
    #[error("--gdb {0}: {1}")]
    BadAddress(String, &'static str),
    /// Something other than a stale socket is at the socket path.
    #[error("--gdb {0}: the path exists and is not a stale socket")]
    PathInUse(PathBuf),
    /// The address could not be listened on.
    #[error("cannot listen on {0}")]
    Listen(String, #[source] std::io::Error),
    /// gdb's connection could not be accepted or watched.
    #[error("cannot accept gdb's connection")]
    Accept(#[source] std::io::Error),
    /// The VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
}

/// Where gdb connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GdbAddress {
    /// A TCP address on the loopback interface.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl std::str::FromStr for GdbAddress {
    type Err = DebugError;

    /// `HOST:PORT` (`localhost:1234`, `127.0.0.1:0`, `[::1]:1234`, `:1234`; loopback only:
    /// the connection controls the guest entirely), or else a Unix socket path.
    fn from_str(text: &str) -> Result<Self, DebugError> {
        let bad = |why| DebugError::BadAddress(text.to_owned(), why);
        let Some((host, port)) = text.rsplit_once(':') else {
            return unix_path(text).ok_or_else(|| bad("empty path"));
        };
        if text.contains('/') || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return unix_path(text).ok_or_else(|| bad("empty path"));
        }
        let port: u16 = port.parse().map_err(|_| bad("port out of range"))?;
        let host = match host {
            "" => "127.0.0.1",
            other => other.trim_start_matches('[').trim_end_matches(']'),
        };
        let addr = (host, port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.find(|a| a.ip().is_loopback()))
            .ok_or_else(|| {
                bad("not a loopback address (gdb's connection controls the guest: only this host may make one)")
            })?;
        Ok(GdbAddress::Tcp(addr))
    }
}

fn unix_path(text: &str) -> Option<GdbAddress> {
    (!text.is_empty()).then(|| GdbAddress::Unix(PathBuf::from(text)))
}

/// A bound address, waiting for gdb.
pub struct GdbListener {
    kind: ListenerKind,
    /// What gdb's `target remote` takes.
    target: String,
}

enum ListenerKind {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// gdb's connection.
type Connection = Box<dyn gdbstub::conn::ConnectionExt<Error = std::io::Error>>;

impl GdbListener {
    /// Listens on `address` (a stale Unix socket there is replaced; anything else is not).
    pub fn bind(address: &GdbAddress) -> Result<Self, DebugError> {
        match address {
            GdbAddress::Tcp(addr) => {
                let listener =
                    TcpListener::bind(addr).map_err(|e| DebugError::Listen(addr.to_string(), e))?;
                let bound = listener
                    .local_addr()
                    .map_err(|e| DebugError::Listen(addr.to_string(), e))?;
                Ok(Self {
                    kind: ListenerKind::Tcp(listener),
                    target: bound.to_string(),
                })
            }
            GdbAddress::Unix(path) => {
                remove_stale_socket(path)?;
                let listener = UnixListener::bind(path)
                    .map_err(|e| DebugError::Listen(path.display().to_string(), e))?;
                Ok(Self {
                    kind: ListenerKind::Unix(listener, path.clone()),
                    target: path.display().to_string(),
                })
            }
        }
    }

    /// What to give gdb's `target remote` (a TCP listener's actual port included).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Waits for gdb.
    fn accept(&self) -> Result<(Connection, RawFd), DebugError> {
        match &self.kind {
            ListenerKind::Tcp(listener) => {
                let (stream, _) = listener.accept().map_err(DebugError::Accept)?;
                let fd = stream.as_raw_fd();
                Ok((Box::new(stream), fd))
            }
            ListenerKind::Unix(listener, _) => {
                let (stream, _) = listener.accept().map_err(DebugError::Accept)?;
                let fd = stream.as_raw_fd();
                Ok((Box::new(stream), fd))
            }
        }
    }
}

impl Drop for GdbListener {
    fn drop(&mut self) {
        if let ListenerKind::Unix(_, path) = &self.kind {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes a socket at `path` that nobody listens on; refuses anything else that is there.
fn remove_stale_socket(path: &std::path::Path) -> Result<(), DebugError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let stale = meta.file_type().is_socket()
        && matches!(
            std::os::unix::net::UnixStream::connect(path),
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused
        );
    if !stale {
        return Err(DebugError::PathInUse(path.to_owned()));
    }
    std::fs::remove_file(path).map_err(|e| DebugError::Listen(path.display().to_string(), e))
}

/// Boots `config.target` (an image or snapshot) stopped before its first instruction, waits
/// for gdb on `listener`, and runs the guest under gdb until it ends; then as `launch::run`
/// (core file, teardown). After gdb detaches (or its connection drops), the guest runs on to
/// its end without a debugger.
pub fn run(
    config: &RunConfig,
    listener: GdbListener,
    console: Console,
    timeline: Timeline,
) -> Result<RunReport, LaunchError> {
    let mut config = config.clone();
    config.vm.seccomp = false;
    config.vm.timeout = None;
    crate::launch::run_with(
        &config,
        console,
        timeline,
        Box::new(move |vm, console, _watchdog| {
            target::serve(vm, console, &listener).map_err(|err| match err {
                DebugError::Vm(err) => LaunchError::Vm(err),
                other => LaunchError::Session(Box::new(other)),
            })
        }),
    )
}
