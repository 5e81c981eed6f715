//! Terminal mode (`process.terminal` with `--console-socket`), as runc does it: the runtime
//! opens a pseudo-terminal, the container process makes its slave side its controlling
//! terminal and stdio, and the master is sent over the console socket with `SCM_RIGHTS` to
//! whoever listens there (containerd's shim, which relays it to `docker run -t`).

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Errors of terminal mode.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No pseudo-terminal could be opened.
    #[error("cannot open a pseudo-terminal")]
    Open(#[source] nix::Error),
    /// The console socket could not be reached.
    #[error("cannot connect to the console socket {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The master could not be sent.
    #[error("cannot send the terminal over the console socket {path}")]
    Send {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: nix::Error,
    },
}

/// Both sides of a pseudo-terminal.
pub struct Pty {
    /// What the console socket receives.
    pub master: OwnedFd,
    /// The container's stdio.
    pub slave: OwnedFd,
}

/// Opens a pseudo-terminal.
pub fn open_pty() -> Result<Pty, ConsoleError> {
    let pty = nix::pty::openpty(None, None).map_err(ConsoleError::Open)?;
    Ok(Pty {
        master: pty.master,
        slave: pty.slave,
    })
}

/// Sends `master` over the Unix socket at `socket` (one message: the terminal's name as data,
/// the descriptor as `SCM_RIGHTS`, which is what runc sends and go-runc expects).
pub fn send_master(socket: &Path, master: &OwnedFd) -> Result<(), ConsoleError> {
    let stream = UnixStream::connect(socket).map_err(|source| ConsoleError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    let name = b"/dev/ptmx";
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(name)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|source| ConsoleError::Send {
        path: socket.to_owned(),
        source,
    })?;
    Ok(())
}

/// Makes `slave` the calling process's controlling terminal and its stdin, stdout and
/// stderr (in the container process, after `setsid`).
pub fn become_terminal_owner(slave: OwnedFd) -> nix::Result<()> {
    nix::unistd::setsid()?;
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal from another session).
    let rc = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) };
    nix::errno::Errno::result(rc)?;
    for target in 0..=2 {
        nix::unistd::dup2(slave.as_raw_fd(), target)?;
    }
    if slave.as_raw_fd() > 2 {
        drop(slave);
    } else {
        // The slave is one of 0..=2 now in use as stdio: keep it open.
        std::mem::forget(slave);
    }
    Ok(())
}
