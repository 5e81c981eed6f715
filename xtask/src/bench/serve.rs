//! The snapshot peers' plumbing: the snapshot file itself, a `vmm serve` started once for the
//! session (a pool of ready VMs of that snapshot, stopped by its PID when dropped), and an
//! in-process client that speaks the server's wire protocol (`vmm/src/serve.rs`) and times one
//! request from the client's view: connect and send → exit-status frame received.

use super::measure::{Sample, Status};
use crate::vmm_path;
use anyhow::{Context, Result, bail};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Ready VMs the server keeps.
pub const POOL: usize = 8;
/// How long the server may take to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for the server to fill its pool once the socket is there (8 VMs take a few ms).
const POOL_FILL: Duration = Duration::from_millis(200);
/// Frame kinds of the reply (`vmm::serve::frame`).
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const EXIT: u8 = 3;
const ERROR: u8 = 4;
/// The largest frame accepted (the server's `max_output` default).
const MAX_FRAME: u32 = 64 << 20;
/// Guest RAM asked for (snapshots bring their own size; the server needs the field).
const MEM_SIZE: u64 = 16 << 20;

/// Snapshots `image` (booted with `args` to its snapshot point) into `output`.
pub fn make_snapshot(image: &Path, args: &[String], output: &Path) -> Result<()> {
    let out = Command::new(vmm_path())
        .arg("snapshot")
        .arg(image)
        .arg("-o")
        .arg(output)
        .arg("--")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot start vmm snapshot")?;
    if !out.status.success() {
        bail!(
            "vmm snapshot {} failed ({}): {}",
            image.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A running `vmm serve`; killed by its PID when dropped.
pub struct Server {
    child: Child,
    /// Its socket.
    pub socket: PathBuf,
}

impl Server {
    /// Starts `vmm serve --pool POOL --snapshot SNAPSHOT` on `dir/serve.sock` (log in
    /// `dir/serve.log`) and waits for its socket.
    pub fn start(dir: &Path, snapshot: &Path) -> Result<Server> {
        let socket = dir.join("serve.sock");
        let _ = std::fs::remove_file(&socket);
        let log_path = dir.join("serve.log");
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let child = Command::new(vmm_path())
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .args(["--pool", &POOL.to_string(), "--snapshot"])
            .arg(snapshot)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cannot duplicate the log file")?)
            .stderr(log)
            .spawn()
            .context("cannot start vmm serve")?;
        let mut server = Server { child, socket };
        let deadline = Instant::now() + START_TIMEOUT;
        while !server.socket.exists() {
            if let Some(status) = server
                .child
                .try_wait()
                .context("cannot wait for vmm serve")?
            {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("vmm serve exited ({status}): {}", log.trim());
            }
            if Instant::now() >= deadline {
                bail!("vmm serve made no socket within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(POOL_FILL);
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill(); // SIGKILL to this child's PID only
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// An in-process client sending one prepared request per run.
pub struct Client {
    socket: PathBuf,
    message: Vec<u8>,
    exact_stdout: Option<&'static str>,
}

impl Client {
    /// A client asking the server on `socket` to run `target` (made absolute) with `args`;
    /// with `exact_stdout`, a reply whose stdout differs fails.
    pub fn new(
        socket: &Path,
        target: &Path,
        args: &[String],
        exact_stdout: Option<&'static str>,
    ) -> Result<Client> {
        let target = std::fs::canonicalize(target)
            .with_context(|| format!("cannot find {}", target.display()))?;
        Ok(Client {
            socket: socket.to_owned(),
            message: request_message(&target, args)?,
            exact_stdout,
        })
    }

    /// One request, timed from before `connect` until the exit-status frame has been read.
    /// `timeout` bounds each read from the server.
    pub fn run_once(&self, timeout: Duration) -> Result<Sample> {
        let start = Instant::now();
        let mut stream = UnixStream::connect(&self.socket)
            .with_context(|| format!("cannot reach vmm serve at {}", self.socket.display()))?;
        stream
            .set_read_timeout(Some(timeout))
            .context("cannot set a read timeout")?;
        stream
            .write_all(&self.message)
            .context("cannot send the request")?;
        let reply = read_reply(&mut stream)?;
        let wall = start.elapsed();
        if let Some(expected) = self.exact_stdout
            && reply.stdout != expected
        {
            bail!(
                "stdout {:?} (expected {expected:?}); stderr: {:?}",
                reply.stdout,
                reply.stderr
            );
        }
        Ok(Sample {
            wall,
            max_rss_kib: 0,
            status: Status::Exited(reply.status),
            output: reply.stdout + &reply.stderr,
        })
    }
}

/// The request: a little-endian `u32` length, then the JSON body.
fn request_message(target: &Path, args: &[String]) -> Result<Vec<u8>> {
    let body = serde_json::to_vec(&serde_json::json!({
        "target": target,
        "args": args,
        "env": [],
        "timeout_ms": null,
        "max_output": MAX_FRAME,
        "mem_size": MEM_SIZE,
    }))?;
    let len = u32::try_from(body.len()).context("request too large")?;
    let mut message = len.to_le_bytes().to_vec();
    message.extend_from_slice(&body);
    Ok(message)
}

/// What the server answered.
#[derive(Debug, PartialEq)]
struct Reply {
    stdout: String,
    stderr: String,
    status: i32,
}

/// Reads frames until the exit status (or the server's error, returned as an error).
fn read_reply(stream: &mut impl Read) -> Result<Reply> {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    loop {
        let mut head = [0u8; 5];
        stream
            .read_exact(&mut head)
            .context("the server closed the connection before the exit status")?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        if len > MAX_FRAME {
            bail!("the server sent a frame of {len} bytes");
        }
        let mut payload = vec![0u8; len as usize];
        stream.read_exact(&mut payload).context("truncated frame")?;
        match (head[0], <[u8; 4]>::try_from(payload.as_slice())) {
            (STDOUT, _) => stdout.extend_from_slice(&payload),
            (STDERR, _) => stderr.extend_from_slice(&payload),
            (EXIT, Ok(status)) => {
                return Ok(Reply {
                    stdout: String::from_utf8_lossy(&stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&stderr).into_owned(),
                    status: i32::from_le_bytes(status),
                });
            }
            (ERROR, _) => bail!("vmm serve: {}", String::from_utf8_lossy(&payload).trim()),
            (kind, _) => bail!("the server sent a frame of kind {kind} and {len} bytes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![kind];
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn test_read_reply_collects_output_until_exit() {
        let mut wire = frame(STDOUT, b"Hello ");
        wire.extend(frame(STDERR, b"warn\n"));
        wire.extend(frame(STDOUT, b"world\n"));
        wire.extend(frame(EXIT, &7i32.to_le_bytes()));
        let reply = read_reply(&mut wire.as_slice()).unwrap();
        assert_eq!(
            reply,
            Reply {
                stdout: "Hello world\n".into(),
                stderr: "warn\n".into(),
                status: 7
            }
        );
    }

    #[test]
    fn test_read_reply_error_frame_is_an_error() {
        let wire = frame(ERROR, b"error: no such snapshot");
        let err = read_reply(&mut wire.as_slice()).unwrap_err();
        assert!(err.to_string().contains("no such snapshot"), "{err}");
    }

    #[test]
    fn test_read_reply_eof_before_exit_is_an_error() {
        let wire = frame(STDOUT, b"Hello");
        assert!(read_reply(&mut wire.as_slice()).is_err());
    }

    #[test]
    fn test_read_reply_short_exit_frame_is_an_error() {
        let wire = frame(EXIT, &[0, 0]);
        assert!(read_reply(&mut wire.as_slice()).is_err());
    }

    #[test]
    fn test_request_message_is_length_prefixed_json() {
        let message = request_message(Path::new("/t/hello.snap"), &["a".into()]).unwrap();
        let len = u32::from_le_bytes(message[..4].try_into().unwrap()) as usize;
        assert_eq!(len, message.len() - 4);
        let body: serde_json::Value = serde_json::from_slice(&message[4..]).unwrap();
        assert_eq!(body["target"], "/t/hello.snap");
        assert_eq!(body["args"], serde_json::json!(["a"]));
        assert_eq!(body["timeout_ms"], serde_json::Value::Null);
    }
}
