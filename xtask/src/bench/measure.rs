//! One cold start, measured: fork → exit wall time around `spawn` + `wait4`, the child's peak
//! RSS from `wait4`'s rusage, its exit status and its output (stdout and stderr, captured into a
//! file so that a chatty child can never block on a full pipe). A watchdog thread kills a run
//! that hangs.

use anyhow::{Context, Result, bail};
use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long one run may take before the watchdog kills it.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the watchdog looks at the clock (it must not disturb the runs it guards).
const WATCHDOG_TICK: Duration = Duration::from_millis(100);

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Exited(code) => write!(f, "exit status {code}"),
            Status::Signaled(sig) => write!(f, "killed by signal {sig}"),
        }
    }
}

/// What one run measured.
#[derive(Debug)]
pub struct Sample {
    /// From just before `spawn` to `wait4`'s return.
    pub wall: Duration,
    /// `ru_maxrss` of the child (and of the descendants it waited for), KiB.
    pub max_rss_kib: u64,
    /// How it ended.
    pub status: Status,
    /// Stdout and stderr, interleaved.
    pub output: String,
}

/// The run the watchdog guards: its process group and when to kill it.
type Armed = Option<(libc::pid_t, Instant)>;

/// Kills the process group of a run that outlives its time limit.
pub struct Watchdog {
    limit: Duration,
    armed: Arc<Mutex<Armed>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the watchdog thread; a run may take `limit` ([`RUN_TIMEOUT`] in the bench).
    pub fn start(limit: Duration) -> Watchdog {
        let armed = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (armed, stop) = (Arc::clone(&armed), Arc::clone(&stop));
            std::thread::spawn(move || watch(&armed, &stop))
        };
        Watchdog {
            limit,
            armed,
            stop,
            thread: Some(thread),
        }
    }

    fn arm(&self, armed: Armed) {
        *self.armed.lock().unwrap_or_else(PoisonError::into_inner) = armed;
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn watch(armed: &Mutex<Armed>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(WATCHDOG_TICK);
        let mut armed = armed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((pgid, deadline)) = *armed
            && Instant::now() >= deadline
        {
            // SAFETY: kill(2) takes no pointers. The group leader is our child, not yet reaped
            // (the run disarms under this lock right after wait4), so the id is still ours.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            *armed = None;
        }
    }
}

/// Runs `cmd` once (stdin from /dev/null, stdout and stderr into `output_file`) in its own
/// process group, and measures it.
pub fn run_once(cmd: &mut Command, output_file: &Path, watchdog: &Watchdog) -> Result<Sample> {
    let out = File::create(output_file)
        .with_context(|| format!("cannot create {}", output_file.display()))?;
    let err = out
        .try_clone()
        .context("cannot duplicate the output file")?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);

    let start = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    watchdog.arm(Some((pid, start + watchdog.limit)));
    let waited = wait4(pid);
    let wall = start.elapsed();
    watchdog.arm(None);
    let (status, max_rss_kib) = waited?;
    if wall >= watchdog.limit {
        bail!("killed after the time limit of {:?}", watchdog.limit);
    }
    Ok(Sample {
        wall,
        max_rss_kib,
        status,
        output: read_output(output_file)?,
    })
}

/// Waits for `pid`, retrying on EINTR; returns its status and `ru_maxrss` (KiB).
fn wait4(pid: libc::pid_t) -> Result<(Status, u64)> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is a C struct of integers, for which all-zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both pointers are to live, writable locals of the types wait4 expects.
        let ret = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if ret == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("wait4 failed");
        }
    }
    let status = if libc::WIFEXITED(status) {
        Status::Exited(libc::WEXITSTATUS(status))
    } else {
        Status::Signaled(libc::WTERMSIG(status))
    };
    Ok((status, u64::try_from(usage.ru_maxrss).unwrap_or(0)))
}

fn read_output(path: &Path) -> Result<String> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Runs `cmd` (untimed) under `probe` (see `native::build_rss_probe`) and returns the peak RSS
/// of its process tree, KiB, free of the bench's own RSS.
pub fn probe_rss(probe: &Path, cmd: &Command, output_file: &Path) -> Result<u64> {
    let out = File::create(output_file)
        .with_context(|| format!("cannot create {}", output_file.display()))?;
    let err = out
        .try_clone()
        .context("cannot duplicate the output file")?;
    let rss_file = output_file.with_extension("rss");
    let status = Command::new(probe)
        .arg(&rss_file)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .context("cannot start rss-probe")?;
    let text = std::fs::read_to_string(&rss_file)
        .with_context(|| format!("rss-probe wrote no RSS ({status})"))?;
    text.trim()
        .parse()
        .with_context(|| format!("rss-probe wrote {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = crate::project_root().join("target/test-scratch");
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(format!("{name}-{}", std::process::id()))
    }

    #[test]
    fn test_run_once_captures_output_and_status() {
        let watchdog = Watchdog::start(RUN_TIMEOUT);
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo hello; echo oops >&2; exit 3"]);
        let sample = run_once(&mut cmd, &scratch("run-once"), &watchdog).unwrap();
        assert_eq!(sample.status, Status::Exited(3));
        assert_eq!(sample.output, "hello\noops\n");
        assert!(sample.max_rss_kib > 0);
    }

    #[test]
    fn test_run_once_hung_child_is_killed() {
        let watchdog = Watchdog::start(Duration::from_millis(200));
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let err = run_once(&mut cmd, &scratch("hung"), &watchdog).unwrap_err();
        assert!(format!("{err:#}").contains("time limit"), "{err:#}");
    }
}
