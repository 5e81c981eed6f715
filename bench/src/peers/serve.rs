//! Our VMM's snapshot plumbing for the warm rows: the snapshot file itself, and a `vmm serve`
//! started once for the session (a pool of ready VMs of that snapshot), stopped by its PID when
//! dropped.

use crate::error::{Error, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Ready VMs the server keeps (and processes the native warm pool keeps).
pub(crate) const POOL: usize = 8;
/// How long a server may take to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a server to fill its pool once the socket is there (8 VMs take a few ms).
pub(crate) const POOL_FILL: Duration = Duration::from_millis(200);

/// Snapshots `image` (booted with `args` to its snapshot point) into `output` with `vmm`.
pub(crate) fn make_snapshot(
    vmm: &Path,
    image: &Path,
    args: &[String],
    output: &Path,
) -> Result<()> {
    let out = Command::new(vmm)
        .arg("snapshot")
        .arg(image)
        .arg("-o")
        .arg(output)
        .arg("--")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(Error::io("cannot start vmm snapshot"))?;
    if !out.status.success() {
        let program = format!("vmm snapshot {}", image.display());
        return Err(Error::tool(program, out.status, &out.stderr));
    }
    Ok(())
}

/// A running server process on a Unix socket; killed by its PID when dropped.
pub(crate) struct Server {
    child: Child,
    /// Its socket.
    pub(crate) socket: PathBuf,
}

impl Server {
    /// Starts `vmm serve --pool POOL --snapshot SNAPSHOT` on `dir/serve.sock` (log in
    /// `dir/serve.log`), or with `--no-reuse` on `dir/serve-fresh.sock` (`serve-fresh.log`)
    /// unless `reuse`, and waits for its socket.
    pub(crate) fn start_vmm(
        vmm: &Path,
        dir: &Path,
        snapshot: &Path,
        reuse: bool,
    ) -> Result<Server> {
        let name = if reuse { "serve" } else { "serve-fresh" };
        let socket = dir.join(format!("{name}.sock"));
        let mut cmd = Command::new(vmm);
        cmd.arg("serve")
            .arg("--socket")
            .arg(&socket)
            .args(["--pool", &POOL.to_string(), "--snapshot"])
            .arg(snapshot);
        if !reuse {
            cmd.arg("--no-reuse");
        }
        Server::start(cmd, socket, &dir.join(format!("{name}.log")))
    }

    /// Starts `cmd`, which must create `socket`, logging into `log_path`, and waits for the
    /// socket and then [`POOL_FILL`].
    pub(crate) fn start(mut cmd: Command, socket: PathBuf, log_path: &Path) -> Result<Server> {
        let _ = std::fs::remove_file(&socket);
        let log = File::create(log_path)
            .map_err(Error::io(format!("cannot create {}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(Error::io("cannot duplicate the log file"))?;
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(Error::io(format!("cannot start {program}")))?;
        let mut server = Server { child, socket };
        let deadline = Instant::now() + START_TIMEOUT;
        while !server.socket.exists() {
            let exited = server
                .child
                .try_wait()
                .map_err(Error::io(format!("cannot wait for {program}")))?;
            if let Some(status) = exited {
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                return Err(Error::tool(program, status, log.as_bytes()));
            }
            if Instant::now() >= deadline {
                return Err(Error::Check(format!(
                    "{program} made no socket within {START_TIMEOUT:?}"
                )));
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
