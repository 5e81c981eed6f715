//! One run of a process, measured: wall time from `spawn` to `wait4`'s return (what a caller
//! of the command waits for) and, where asked, to the reaping of the last process of its
//! process group (what the machine pays: our VMM hands VM teardown to a helper process that
//! outlives it). Also the child's peak RSS from `wait4`'s rusage, its exit status and its
//! output (stdout and stderr, captured into a file so that a chatty child can never block on a
//! full pipe). A watchdog thread kills a run that hangs.
//!
//! To wait for the process group, the bench makes itself a child subreaper
//! (`PR_SET_CHILD_SUBREAPER`) for the duration of the run: a helper orphaned when its parent
//! exits is then reparented to the bench instead of init, and `waitid(P_PGID)` reaps it.

use crate::error::{Error, Result};
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
pub(crate) const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the watchdog looks at the clock (it must not disturb the runs it guards).
const WATCHDOG_TICK: Duration = Duration::from_millis(100);

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
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

/// What a run waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reap {
    /// The child only (its descendants are someone else's: a daemon's).
    Child,
    /// The child, then every process left in its process group (helpers it orphaned).
    Group,
}

/// What one run measured.
#[derive(Debug)]
pub(crate) struct Sample {
    /// Until the command returned: from just before `spawn` to `wait4`'s return.
    pub(crate) wall: Duration,
    /// Until the work was done: to the reaping of the last process of its group
    /// ([`Reap::Group`] only).
    pub(crate) done: Option<Duration>,
    /// Processes of its group reaped after the child ([`Reap::Group`] only).
    pub(crate) reaped: usize,
    /// `ru_maxrss` of the child (and of the descendants it waited for), KiB.
    pub(crate) max_rss_kib: u64,
    /// How it ended.
    pub(crate) status: Status,
    /// Stdout and stderr, interleaved.
    pub(crate) output: String,
}

/// The run the watchdog guards: its process group and when to kill it.
type Armed = Option<(libc::pid_t, Instant)>;

/// Kills the process group of a run that outlives its time limit.
pub(crate) struct Watchdog {
    limit: Duration,
    armed: Arc<Mutex<Armed>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the watchdog thread; a run may take `limit` ([`RUN_TIMEOUT`] in the bench).
    pub(crate) fn start(limit: Duration) -> Watchdog {
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
            // SAFETY: kill(2) takes no pointers. The group is the run's: the run disarms under
            // this lock once its last member is reaped, so the id is still in use by it.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            *armed = None;
        }
    }
}

/// Runs that need the bench to be a child subreaper right now.
static SUBREAPER_USERS: Mutex<usize> = Mutex::new(0);

/// The bench is a child subreaper while one of these lives.
struct Subreaper;

impl Subreaper {
    fn enable() -> Result<Subreaper> {
        let mut users = SUBREAPER_USERS
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *users == 0 {
            set_subreaper(true)?;
        }
        *users += 1;
        Ok(Subreaper)
    }
}

impl Drop for Subreaper {
    fn drop(&mut self) {
        let mut users = SUBREAPER_USERS
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *users -= 1;
        if *users == 0 {
            // Orphans of the bench's other children (a daemon's) go to init again.
            let _ = set_subreaper(false);
        }
    }
}

fn set_subreaper(on: bool) -> Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes an integer and no pointers.
    let ret = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, libc::c_ulong::from(on)) };
    if ret != 0 {
        return Err(Error::io("cannot make the bench a child subreaper")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// `output_file` created, twice: a command's stdout and stderr, interleaved in one file.
fn output_pair(output_file: &Path) -> Result<(File, File)> {
    let out = File::create(output_file).map_err(Error::io(format!(
        "cannot create {}",
        output_file.display()
    )))?;
    let err = out
        .try_clone()
        .map_err(Error::io("cannot duplicate the output file"))?;
    Ok((out, err))
}

/// Runs `cmd` once (stdin from /dev/null, stdout and stderr into `output_file`) in its own
/// process group, and measures it; with [`Reap::Group`], until its whole group is reaped.
pub(crate) fn run_once(
    cmd: &mut Command,
    output_file: &Path,
    watchdog: &Watchdog,
    reap: Reap,
) -> Result<Sample> {
    let (out, err) = output_pair(output_file)?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let _subreaper = match reap {
        Reap::Group => Some(Subreaper::enable()?),
        Reap::Child => None,
    };

    let start = Instant::now();
    let child = cmd.spawn().map_err(Error::io(format!(
        "cannot start {}",
        cmd.get_program().to_string_lossy()
    )))?;
    let pid = libc::pid_t::try_from(child.id())
        .map_err(|e| Error::Check(format!("pid {} out of range: {e}", child.id())))?;
    watchdog.arm(Some((pid, start + watchdog.limit)));
    let waited = wait4(pid);
    let wall = start.elapsed();
    let group = match (&waited, reap) {
        (Ok(_), Reap::Group) => Some(reap_group(pid).map(|n| (n, start.elapsed()))),
        _ => None,
    };
    watchdog.arm(None);
    let (status, max_rss_kib) = waited?;
    let (reaped, done) = match group.transpose()? {
        Some((reaped, done)) => (reaped, Some(done)),
        None => (0, None),
    };
    if done.unwrap_or(wall) >= watchdog.limit {
        return Err(Error::TimedOut(watchdog.limit));
    }
    Ok(Sample {
        wall,
        done,
        reaped,
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
            return Err(Error::io("wait4 failed")(err));
        }
    }
    let status = if libc::WIFEXITED(status) {
        Status::Exited(libc::WEXITSTATUS(status))
    } else {
        Status::Signaled(libc::WTERMSIG(status))
    };
    Ok((status, u64::try_from(usage.ru_maxrss).unwrap_or(0)))
}

/// Reaps every child of the bench in process group `pgid` until none is left; returns how
/// many it reaped. `__WALL` also finds children whose exit signal is not SIGCHLD (a
/// `clone(CLONE_VM)` helper that was not reparented yet).
fn reap_group(pgid: libc::pid_t) -> Result<usize> {
    let id = libc::id_t::try_from(pgid)
        .map_err(|e| Error::Check(format!("process group {pgid} out of range: {e}")))?;
    let mut reaped = 0;
    loop {
        // SAFETY: siginfo_t is a C struct for which all-zero bytes are a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a live, writable siginfo_t; no other pointer is passed.
        let ret =
            unsafe { libc::waitid(libc::P_PGID, id, &mut info, libc::WEXITED | libc::__WALL) };
        if ret == 0 {
            reaped += 1;
            continue;
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ECHILD) => return Ok(reaped),
            Some(libc::EINTR) => continue,
            _ => return Err(Error::io("waitid for the process group failed")(err)),
        }
    }
}

fn read_output(path: &Path) -> Result<String> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(Error::io(format!("cannot read {}", path.display())))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Runs `cmd` (untimed) under `probe` (see `peers::native::build_rss_probe`), in the mount
/// namespace `mount_ns` if given, and returns the peak RSS of its process tree, KiB, free of
/// the bench's own RSS.
pub(crate) fn probe_rss(
    probe: &Path,
    mount_ns: Option<&Path>,
    cmd: &Command,
    output_file: &Path,
) -> Result<u64> {
    let (out, err) = output_pair(output_file)?;
    let rss_file = output_file.with_extension("rss");
    let mut probe_cmd = Command::new(probe);
    if let Some(ns) = mount_ns {
        probe_cmd.arg("--mntns").arg(ns);
    }
    let status = probe_cmd
        .arg(&rss_file)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(Error::io("cannot start rss-probe"))?;
    let text = std::fs::read_to_string(&rss_file)
        .map_err(Error::io(format!("rss-probe wrote no RSS ({status})")))?;
    text.trim()
        .parse()
        .map_err(|e| Error::Check(format!("rss-probe wrote {text:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("flick-bench-{name}-{}", std::process::id()))
    }

    #[test]
    fn test_run_once_captures_output_and_status() {
        let watchdog = Watchdog::start(RUN_TIMEOUT);
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo hello; echo oops >&2; exit 3"]);
        let sample = run_once(&mut cmd, &scratch("run-once"), &watchdog, Reap::Child).unwrap();
        assert_eq!(sample.status, Status::Exited(3));
        assert_eq!(sample.output, "hello\noops\n");
        assert!(sample.max_rss_kib > 0);
        assert_eq!(sample.done, None);
    }

    #[test]
    fn test_run_once_hung_child_is_killed() {
        let watchdog = Watchdog::start(Duration::from_millis(200));
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let err = run_once(&mut cmd, &scratch("hung"), &watchdog, Reap::Child).unwrap_err();
        assert!(err.to_string().contains("time limit"), "{err}");
    }

    #[test]
    fn test_run_once_group_waits_for_an_orphaned_helper() {
        let watchdog = Watchdog::start(RUN_TIMEOUT);
        let mut cmd = Command::new("sh");
        // The shell exits at once; its background child, orphaned, lives 300 ms more.
        cmd.args(["-c", "sleep 0.3 & exit 0"]);
        let sample = run_once(&mut cmd, &scratch("orphan"), &watchdog, Reap::Group).unwrap();
        let done = sample
            .done
            .expect("a group run says when its work was done");
        assert_eq!(sample.reaped, 1);
        assert!(sample.wall < Duration::from_millis(250), "{sample:?}");
        assert!(done >= Duration::from_millis(300), "{sample:?}");
    }
}
