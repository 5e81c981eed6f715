//! The bench's in-process client for warm peers: it sends one prepared request over a Unix
//! socket in `vmm serve`'s wire format (`contracts`) and times it from the client's view,
//! connect and send → exit-status frame received. Both warm peers, `vmm serve` and the pool of
//! native processes, are measured by this same client.

use crate::contracts::{read_reply, request_message};
use crate::error::{Error, Result};
use crate::measure::run::{Sample, Status};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// An in-process client sending one prepared request per run.
pub(crate) struct Client {
    socket: PathBuf,
    message: Vec<u8>,
    exact_stdout: Option<String>,
}

impl Client {
    /// A client asking the server on `socket` to run `target` (made absolute) with `args`;
    /// with `exact_stdout`, a reply whose stdout differs fails.
    pub(crate) fn new(
        socket: &Path,
        target: &Path,
        args: &[String],
        exact_stdout: Option<&str>,
    ) -> Result<Client> {
        let target = std::fs::canonicalize(target)
            .map_err(Error::io(format!("cannot find {}", target.display())))?;
        Ok(Client {
            socket: socket.to_owned(),
            message: request_message(&target, args)?,
            exact_stdout: exact_stdout.map(str::to_owned),
        })
    }

    /// One request, timed from before `connect` until the exit-status frame has been read.
    /// `timeout` bounds each read from the server.
    pub(crate) fn run_once(&self, timeout: Duration) -> Result<Sample> {
        let start = Instant::now();
        let mut stream = UnixStream::connect(&self.socket).map_err(Error::io(format!(
            "cannot reach the server at {}",
            self.socket.display()
        )))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(Error::io("cannot set a read timeout"))?;
        stream
            .write_all(&self.message)
            .map_err(Error::io("cannot send the request"))?;
        let reply = read_reply(&mut stream)?;
        let wall = start.elapsed();
        if let Some(expected) = &self.exact_stdout
            && reply.stdout != *expected
        {
            return Err(Error::Check(format!(
                "stdout {:?} (expected {expected:?}); stderr: {:?}",
                reply.stdout, reply.stderr
            )));
        }
        Ok(Sample {
            wall,
            done: None,
            reaped: 0,
            max_rss_kib: 0,
            status: Status::Exited(reply.status),
            output: reply.stdout + &reply.stderr,
        })
    }
}
