//! `vmm run --via SOCKET`: sends a request to a `vmm serve`, forwards our stdin after it,
//! relays the guest's stdout and stderr to ours as they arrive, and returns the guest's exit
//! status, so that it behaves like a local `vmm run`.

use super::wire::{self, Request, frame};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Why a request through a server failed (exit status 125).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server cannot be reached.
    #[error("cannot reach vmm serve at {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The request cannot be encoded.
    #[error(transparent)]
    Encode(#[from] wire::EncodeError),
    /// The request could not be sent.
    #[error("cannot send the request")]
    Send(#[source] std::io::Error),
    /// The reply ended early or was malformed.
    #[error("the server closed the connection before the guest's exit status")]
    Reply(#[source] wire::FrameError),
    /// A frame of a kind this client does not know.
    #[error("the server sent an unknown frame kind {0}")]
    UnknownFrame(u8),
    /// The server could not run the request.
    #[error("{0}")]
    Refused(String),
    /// The guest's stdout cannot be written here (a full disk), as for a local run.
    #[error("cannot write the guest's stdout")]
    Output(#[source] std::io::Error),
}

/// Copies this process's stdin to the connection on a thread of its own, then shuts down the
/// connection's writing side (the guest's end of input). The thread ends with the stdin, the
/// connection, or the process. A stdin that is `/dev/null` (scripts, daemons) needs no thread:
/// its end is sent at once, sparing the client a thread's start (a stack, a malloc arena).
fn forward_stdin(stream: &UnixStream) {
    if stdin_is_dev_null() {
        let _ = stream.shutdown(std::net::Shutdown::Write);
        return;
    }
    let Ok(mut to_server) = stream.try_clone() else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            if std::io::copy(&mut std::io::stdin().lock(), &mut to_server).is_ok() {
                let _ = to_server.shutdown(std::net::Shutdown::Write);
            }
        });
}

/// Whether stdin is the character device `/dev/null` is (whatever its path): reading it
/// gives end-of-file at once.
fn stdin_is_dev_null() -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(null) = std::fs::metadata("/dev/null") else {
        return false;
    };
    // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
    let mut stdin: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into the struct we own; fd 0 is only looked at.
    if unsafe { libc::fstat(libc::STDIN_FILENO, &mut stdin) } != 0 {
        return false;
    }
    null.file_type().is_char_device()
        && stdin.st_mode & libc::S_IFMT == libc::S_IFCHR
        && stdin.st_rdev == null.rdev()
}

/// How long after a request's timeout the client still waits for the rest of the reply.
const REPLY_MARGIN: std::time::Duration = std::time::Duration::from_secs(3);

/// Sends `request` to the server at `socket`; returns the guest's exit status.
pub fn run_via(socket: &Path, request: &Request) -> Result<i32, ClientError> {
    let message = wire::encode_request(request)?;
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    stream.write_all(&message).map_err(ClientError::Send)?;
    if request.stdin {
        forward_stdin(&stream);
    }
    // A server that stops answering (stopped, wedged) must not hold the client for ever when
    // the request has a deadline: the server ends the guest by then, so the reply is complete
    // well before it plus a margin.
    if let Some(ms) = request.timeout_ms {
        let wait = std::time::Duration::from_millis(ms).saturating_add(REPLY_MARGIN);
        stream
            .set_read_timeout(Some(wait))
            .map_err(ClientError::Send)?;
    }
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    loop {
        let (kind, payload) = wire::read_frame(&mut stream).map_err(ClientError::Reply)?;
        match kind {
            frame::STDOUT => match stdout.write_all(&payload).and_then(|()| stdout.flush()) {
                Ok(()) => {}
                // Nobody reads our stdout any more (`| head -1`): end at once, as a local run
                // does; the server finds its client gone and drops the rest.
                Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {
                    return Ok(abi::exit_status::BROKEN_PIPE);
                }
                Err(err) => return Err(ClientError::Output(err)),
            },
            frame::STDERR => {
                let _ = stderr.write_all(&payload);
            }
            frame::EXIT if payload.len() == 4 => {
                return Ok(i32::from_le_bytes(payload.try_into().expect("4 bytes")));
            }
            frame::ERROR => {
                let text = String::from_utf8_lossy(&payload);
                return Err(ClientError::Refused(text.into_owned()));
            }
            other => return Err(ClientError::UnknownFrame(other)),
        }
    }
}
