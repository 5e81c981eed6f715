//! What a peer is: a program run as a fresh process (or a request sent by an in-process
//! client), the output and exit status every run must give, what each run waits for, and what
//! it measured so far. Also why a peer is missing (not installed, with the command that
//! installs it, or failed, with the reason): a peer is never silently dropped.

use super::client::Client;
use crate::error::{Error, Result};
use crate::measure::run::{self, Reap, Sample, Status, Watchdog};
use serde::Serialize;
use std::any::Any;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// Replaced in a peer's arguments by an id unique to the run (container names).
pub(crate) const RUN_ID: &str = "{id}";

/// A mount namespace that a peer's runs enter (`setns`) right before `exec`.
pub(crate) struct MountNs {
    /// `/proc/PID/ns/mnt` of the process holding it.
    pub(crate) path: PathBuf,
    fd: OwnedFd,
}

impl MountNs {
    /// Opens the namespace at `path` (close-on-exec: the run's program does not inherit it).
    pub(crate) fn open(path: &Path) -> Result<MountNs> {
        let file = std::fs::File::open(path)
            .map_err(Error::io(format!("cannot open {}", path.display())))?;
        Ok(MountNs {
            path: path.to_owned(),
            fd: file.into(),
        })
    }

    /// Makes `cmd` enter this namespace in the forked child, right before `exec`. The
    /// namespace must outlive every spawn of `cmd`.
    pub(crate) fn enter_before_exec(&self, cmd: &mut Command) {
        let fd = self.fd.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and makes one system call
        // (setns) on an fd that stays open in the child until exec; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNS) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
}

/// A peer ready to run.
pub(crate) struct Peer {
    /// Short name (`--only` uses it).
    pub(crate) name: &'static str,
    /// What it is, for the report.
    pub(crate) what: String,
    /// The program a run starts (for an in-process peer: the server's, for the report).
    pub(crate) program: PathBuf,
    /// Its arguments; [`RUN_ID`] stands for an id unique to the run.
    pub(crate) args: Vec<String>,
    /// What every run's output must contain (`None`: anything).
    pub(crate) expect_output: Option<String>,
    /// The exit status every run must end with.
    pub(crate) expect_status: i32,
    /// Where each run's output goes.
    pub(crate) output_file: PathBuf,
    /// What a run waits for: the child, or its whole process group.
    pub(crate) reap: Reap,
    /// Set for a peer measured in-process (a request to a server), not as a process.
    pub(crate) client: Option<Client>,
    /// A mount namespace each run enters before `exec`.
    pub(crate) mount_ns: Option<Arc<MountNs>>,
    /// Whatever must live as long as the peer runs (a daemon, container state), dropped last.
    pub(crate) guard: Option<Box<dyn Any + Send + Sync>>,
}

impl Peer {
    /// A peer running `program args`, waiting for its whole process group, whose runs must
    /// print `expect_output` and exit 0.
    pub(crate) fn new(
        dir: &Path,
        name: &'static str,
        what: String,
        program: PathBuf,
        args: Vec<String>,
        expect_output: &str,
    ) -> Peer {
        Peer {
            name,
            what,
            program,
            args,
            expect_output: Some(expect_output.to_owned()),
            expect_status: 0,
            output_file: dir.join(format!("{name}.out")),
            reap: Reap::Group,
            client: None,
            mount_ns: None,
            guard: None,
        }
    }

    /// The command of one run; `run_id` makes container names unique.
    pub(crate) fn command(&self, run_id: &str) -> Command {
        let id = format!("flick-bench-{}-{run_id}", std::process::id());
        let mut cmd = Command::new(&self.program);
        cmd.args(self.args.iter().map(|a| a.replace(RUN_ID, &id)));
        if let Some(ns) = &self.mount_ns {
            ns.enter_before_exec(&mut cmd);
        }
        cmd
    }

    /// Whether a run is a process (which `rss-probe` can measure).
    pub(crate) fn is_process(&self) -> bool {
        self.client.is_none()
    }

    /// One run, measured: a process under `watchdog`, or an in-process request.
    pub(crate) fn run_once(&self, run_id: &str, watchdog: &Watchdog) -> Result<Sample> {
        match &self.client {
            Some(client) => client.run_once(run::RUN_TIMEOUT),
            None => run::run_once(
                &mut self.command(run_id),
                &self.output_file,
                watchdog,
                self.reap,
            ),
        }
    }

    /// One run as a script makes it: waiting only for the command to return.
    pub(crate) fn run_returned(&self, run_id: &str, watchdog: &Watchdog) -> Result<Sample> {
        match &self.client {
            Some(client) => client.run_once(run::RUN_TIMEOUT),
            None => run::run_once(
                &mut self.command(run_id),
                &self.output_file,
                watchdog,
                Reap::Child,
            ),
        }
    }

    /// The peak RSS of one untimed run under `probe`, KiB.
    pub(crate) fn probe_rss(&self, probe: &Path, run_id: &str) -> Result<u64> {
        let ns = self.mount_ns.as_ref().map(|ns| ns.path.as_path());
        run::probe_rss(probe, ns, &self.command(run_id), &self.output_file)
    }

    /// The command line, for the report.
    pub(crate) fn command_line(&self) -> String {
        if self.client.is_some() {
            return format!("(in-process client of {})", self.program.display());
        }
        let mut line = self.program.display().to_string();
        for arg in &self.args {
            line.push(' ');
            if arg.contains(' ') {
                line.push_str(&format!("'{arg}'"));
            } else {
                line.push_str(arg);
            }
        }
        line
    }

    /// Checks a run's exit status and output.
    pub(crate) fn verify(&self, sample: &Sample) -> Result<()> {
        if sample.status != Status::Exited(self.expect_status) {
            return Err(Error::Check(format!(
                "{} (expected exit status {}); output: {}",
                sample.status,
                self.expect_status,
                tail(&sample.output)
            )));
        }
        if let Some(expected) = &self.expect_output
            && !sample.output.contains(expected.as_str())
        {
            return Err(Error::Check(format!(
                "output lacks {expected:?}: {}",
                tail(&sample.output)
            )));
        }
        Ok(())
    }
}

/// The last few hundred characters of `output`, on one line.
pub(crate) fn tail(output: &str) -> String {
    let text = output.trim().replace('\n', " | ");
    let start = text.len().saturating_sub(300);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    if text.is_empty() {
        "(none)".to_owned()
    } else {
        text[start..].to_owned()
    }
}

/// A peer as prepared: ready, or why not.
pub(crate) enum Setup {
    /// Ready to run.
    Ready(Peer),
    /// Its program is missing; `install` installs it.
    NotInstalled {
        /// Short name.
        name: &'static str,
        /// The command that installs it.
        install: String,
    },
    /// It is installed but could not be set up.
    Failed {
        /// Short name.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

impl Setup {
    /// The peer's name.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Setup::Ready(peer) => peer.name,
            Setup::NotInstalled { name, .. } | Setup::Failed { name, .. } => name,
        }
    }

    /// A peer that is not installed.
    pub(crate) fn not_installed(name: &'static str, install: &str) -> Setup {
        Setup::NotInstalled {
            name,
            install: install.to_owned(),
        }
    }

    /// A peer whose setup failed with `err`.
    pub(crate) fn failed(name: &'static str, err: &Error) -> Setup {
        Setup::Failed {
            name,
            reason: crate::error::chain(err),
        }
    }
}

/// A peer's measurements so far.
#[derive(Serialize)]
pub(crate) struct PeerResult {
    /// Short name.
    pub(crate) name: &'static str,
    /// What it is.
    pub(crate) what: String,
    /// Its command line (empty when not ready).
    pub(crate) command: String,
    /// Set when it is not installed: the command that installs it.
    pub(crate) install: Option<String>,
    /// Set when it failed: why.
    pub(crate) failure: Option<String>,
    /// Until the command returned, each timed run, µs.
    pub(crate) samples_us: Vec<f64>,
    /// Until the work was done (the last process of its group reaped), each timed run, µs;
    /// empty when not measured (in-process requests, Docker's CLI).
    pub(crate) done_us: Vec<f64>,
    /// Processes of its group reaped after the command returned, each timed run (our VMM's
    /// teardown helper).
    pub(crate) reaped: Vec<usize>,
    /// `wait4`'s `ru_maxrss` of each timed run, KiB. Linux counts in it the RSS of the bench
    /// itself (the mm the child had before `execve`), so it has a floor of a few MiB.
    pub(crate) rss_kib: Vec<u64>,
    /// Peak RSS of untimed runs under `rss-probe`, KiB (without the bench's RSS).
    pub(crate) probe_rss_kib: Vec<u64>,
    /// Why `probe_rss_kib` is missing or short, if it is.
    pub(crate) probe_note: Option<String>,
}

impl PeerResult {
    /// An empty result for `setup`.
    pub(crate) fn from_setup(setup: &Setup) -> PeerResult {
        let (what, command, install, failure) = match setup {
            Setup::Ready(p) => (p.what.clone(), p.command_line(), None, None),
            Setup::NotInstalled { install, .. } => {
                (String::new(), String::new(), Some(install.clone()), None)
            }
            Setup::Failed { reason, .. } => {
                (String::new(), String::new(), None, Some(reason.clone()))
            }
        };
        PeerResult {
            name: setup.name(),
            what,
            command,
            install,
            failure,
            samples_us: Vec::new(),
            done_us: Vec::new(),
            reaped: Vec::new(),
            rss_kib: Vec::new(),
            probe_rss_kib: Vec::new(),
            probe_note: None,
        }
    }

    /// Records one timed run.
    pub(crate) fn record(&mut self, sample: &Sample) {
        let us = |d: std::time::Duration| (d.as_secs_f64() * 1e9).round() / 1000.0;
        self.samples_us.push(us(sample.wall));
        if let Some(done) = sample.done {
            self.done_us.push(us(done));
            self.reaped.push(sample.reaped);
        }
        if sample.max_rss_kib > 0 {
            self.rss_kib.push(sample.max_rss_kib);
        }
    }
}

/// The first executable `name` on `PATH`.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample(status: Status, output: &str) -> Sample {
        Sample {
            wall: Duration::from_micros(500),
            done: Some(Duration::from_micros(900)),
            reaped: 1,
            max_rss_kib: 1024,
            status,
            output: output.to_owned(),
        }
    }

    fn hello_peer() -> Peer {
        let dir = Path::new("/tmp");
        Peer::new(
            dir,
            "native",
            String::new(),
            "/x".into(),
            Vec::new(),
            "hello",
        )
    }

    #[test]
    fn test_verify_hello_with_status_0_passes() {
        let ok = hello_peer().verify(&sample(Status::Exited(0), "hello\n"));
        assert!(ok.is_ok());
    }

    #[test]
    fn test_verify_wrong_status_fails_with_both_statuses() {
        let err = hello_peer()
            .verify(&sample(Status::Exited(1), "hello\n"))
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("exit status 1 (expected exit status 0)"),
            "{text}"
        );
    }

    #[test]
    fn test_verify_missing_output_fails() {
        let err = hello_peer()
            .verify(&sample(Status::Exited(0), "bye\n"))
            .unwrap_err();
        assert!(err.to_string().contains("lacks \"hello\""), "{err}");
    }

    #[test]
    fn test_verify_signal_fails() {
        let err = hello_peer().verify(&sample(Status::Signaled(9), "hello"));
        assert!(err.is_err());
    }

    #[test]
    fn test_command_gives_each_run_its_own_id() {
        let mut peer = hello_peer();
        peer.args = vec!["run".into(), RUN_ID.into()];
        let args = |run: &str| -> Vec<String> {
            peer.command(run)
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        assert_ne!(args("1"), args("2"));
        assert!(args("1")[1].starts_with("flick-bench-"));
    }

    #[test]
    fn test_record_keeps_both_clocks_and_the_helpers() {
        let mut result = PeerResult::from_setup(&Setup::Ready(hello_peer()));
        result.record(&sample(Status::Exited(0), "hello"));
        assert_eq!(result.samples_us, [500.0]);
        assert_eq!(result.done_us, [900.0]);
        assert_eq!(result.reaped, [1]);
    }
}
