//! The peers: what each one runs, how its output and status are verified, and why a peer is
//! missing (not installed, with the command that installs it, or failed, with the reason).
//! A peer is never silently dropped.

use super::measure::{self, Sample, Status, Watchdog};
use super::{docker, native, oci, qemu, serve};
use crate::vmm_path;
use anyhow::{Result, bail};
use serde::Serialize;
use std::any::Any;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// What "ours" prints when it boots the hello image.
const OURS_HELLO: &str = "Hello from a unikernel!";
/// Its whole stdout.
const OURS_HELLO_LINE: &str = "Hello from a unikernel!\n";
/// What every other hello prints.
const HELLO: &str = "hello";
/// Replaced in a peer's arguments by an id unique to the run (container names).
const RUN_ID: &str = "{id}";

/// A peer ready to run.
pub struct Peer {
    /// Short name (`--only` uses it).
    pub name: &'static str,
    /// What it is, for the report.
    pub what: String,
    program: PathBuf,
    args: Vec<String>,
    expect_output: Option<&'static str>,
    expect_status: i32,
    /// Where each run's output goes.
    pub output_file: PathBuf,
    /// Set for the peer measured in-process (a request to `vmm serve`), not as a process.
    client: Option<serve::Client>,
    /// Whatever must live as long as the peer runs (a daemon, container state), dropped last.
    _guard: Option<Box<dyn Any + Send + Sync>>,
}

/// A peer as prepared: ready, or why not.
pub enum Setup {
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

impl Peer {
    /// The command of one run; `run_id` makes container names unique.
    pub fn command(&self, run_id: &str) -> Command {
        let id = format!("flick-bench-{}-{run_id}", std::process::id());
        let mut cmd = Command::new(&self.program);
        cmd.args(self.args.iter().map(|a| a.replace(RUN_ID, &id)));
        cmd
    }

    /// Whether a run is a process (which `rss-probe` can measure).
    pub fn is_process(&self) -> bool {
        self.client.is_none()
    }

    /// One run, measured: a process under `watchdog`, or an in-process request.
    pub fn run_once(&self, run_id: &str, watchdog: &Watchdog) -> Result<Sample> {
        match &self.client {
            Some(client) => client.run_once(measure::RUN_TIMEOUT),
            None => measure::run_once(&mut self.command(run_id), &self.output_file, watchdog),
        }
    }

    /// The command line, for the report.
    pub fn command_line(&self) -> String {
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
    pub fn verify(&self, sample: &Sample) -> Result<()> {
        if sample.status != Status::Exited(self.expect_status) {
            bail!(
                "{} (expected exit status {}); output: {}",
                sample.status,
                self.expect_status,
                tail(&sample.output)
            );
        }
        if let Some(expected) = self.expect_output
            && !sample.output.contains(expected)
        {
            bail!("output lacks {expected:?}: {}", tail(&sample.output));
        }
        Ok(())
    }
}

/// The last few hundred characters of `output`, on one line.
fn tail(output: &str) -> String {
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

/// A peer's measurements so far.
#[derive(Serialize)]
pub struct PeerResult {
    /// Short name.
    pub name: &'static str,
    /// What it is.
    pub what: String,
    /// Its command line (empty when not ready).
    pub command: String,
    /// Set when it is not installed: the command that installs it.
    pub install: Option<String>,
    /// Set when it failed: why.
    pub failure: Option<String>,
    /// Wall time of each timed run, µs.
    pub samples_us: Vec<f64>,
    /// `wait4`'s `ru_maxrss` of each timed run, KiB. Linux counts in it the RSS of the bench
    /// itself (the mm the child had before `execve`), so it has a floor of a few MiB.
    pub rss_kib: Vec<u64>,
    /// Peak RSS of untimed runs under `rss-probe`, KiB (without the bench's RSS).
    pub probe_rss_kib: Vec<u64>,
    /// Why `probe_rss_kib` is missing or short, if it is.
    pub probe_note: Option<String>,
}

impl PeerResult {
    /// An empty result for `setup`.
    pub fn from_setup(setup: &Setup) -> PeerResult {
        let (name, what, command, install, failure) = match setup {
            Setup::Ready(p) => (p.name, p.what.clone(), p.command_line(), None, None),
            Setup::NotInstalled { name, install } => (
                *name,
                String::new(),
                String::new(),
                Some(install.clone()),
                None,
            ),
            Setup::Failed { name, reason } => (
                *name,
                String::new(),
                String::new(),
                None,
                Some(reason.clone()),
            ),
        };
        PeerResult {
            name,
            what,
            command,
            install,
            failure,
            samples_us: Vec::new(),
            rss_kib: Vec::new(),
            probe_rss_kib: Vec::new(),
            probe_note: None,
        }
    }

    /// Records one timed run.
    pub fn record(&mut self, sample: &Sample) {
        let us = sample.wall.as_secs_f64() * 1e6;
        self.samples_us.push((us * 1000.0).round() / 1000.0);
        if sample.max_rss_kib > 0 {
            self.rss_kib.push(sample.max_rss_kib);
        }
    }
}

/// What "ours" boots.
pub struct Ours<'a> {
    /// The image.
    pub image: &'a Path,
    /// Its arguments.
    pub args: &'a [String],
    /// Whether it is hello (whose output is known) or an image given with `--image`.
    pub is_hello: bool,
    /// The exit status it must end with.
    pub expect_status: i32,
}

/// Sets up every selected peer, in report order.
pub fn prepare(dir: &Path, ours: &Ours<'_>, selected: &dyn Fn(&str) -> bool) -> Vec<Setup> {
    let mut setups = Vec::new();
    if selected("ours") {
        setups.push(Setup::Ready(ours_peer(dir, ours)));
    }
    setups.extend(snapshot_peers(dir, ours, selected));
    let needs_hello = ["native", "unshare", "crun", "runc", "docker"]
        .iter()
        .any(|n| selected(n));
    let hello = if needs_hello {
        native::build_hello(dir).map_err(|e| format!("static hello: {e:#}"))
    } else {
        Err(String::new())
    };
    let with_hello = |name: &'static str, make: &dyn Fn(&Path) -> Setup| match &hello {
        Ok(path) => make(path),
        Err(reason) => Setup::Failed {
            name,
            reason: reason.clone(),
        },
    };
    if selected("native") {
        setups.push(with_hello("native", &|h| native_peer(dir, h)));
    }
    if selected("true") {
        setups.push(true_peer(dir));
    }
    if selected("unshare") {
        setups.push(with_hello("unshare", &|h| unshare_peer(dir, h)));
    }
    for runtime in [oci::Runtime::Crun, oci::Runtime::Runc] {
        if selected(runtime.name()) {
            setups.push(with_hello(runtime.name(), &|h| oci_peer(dir, runtime, h)));
        }
    }
    if selected("docker") {
        setups.push(with_hello("docker", &|h| docker_peer(dir, h)));
    }
    if selected("qemu") {
        setups.push(qemu_peer(dir));
    }
    setups
}

fn peer(dir: &Path, name: &'static str, what: String, program: PathBuf, args: Vec<String>) -> Peer {
    Peer {
        name,
        what,
        program,
        args,
        expect_output: Some(HELLO),
        expect_status: 0,
        output_file: dir.join(format!("{name}.out")),
        client: None,
        _guard: None,
    }
}

fn ours_peer(dir: &Path, ours: &Ours<'_>) -> Peer {
    let mut args = vec![
        "run".to_owned(),
        ours.image.display().to_string(),
        "--".into(),
    ];
    args.extend(ours.args.iter().cloned());
    let image = ours.image.file_name().unwrap_or(ours.image.as_os_str());
    let what = format!("our VMM booting {}", image.to_string_lossy());
    let mut peer = peer(dir, "ours", what, vmm_path(), args);
    peer.expect_output = ours.is_hello.then_some(OURS_HELLO);
    peer.expect_status = ours.expect_status;
    peer
}

/// The rows of ours restored from a snapshot, in report order: a fresh `vmm run --from`, a
/// warm request to `vmm serve` from the bench itself, and one from a fresh `vmm run --via`.
pub const SNAPSHOT_PEERS: [&str; 3] = ["restore", "serve", "serve-process"];

/// Snapshots ours into `dir/<image>.snap` and sets up the selected snapshot rows (starting
/// one `vmm serve` for both serve rows).
fn snapshot_peers(dir: &Path, ours: &Ours<'_>, selected: &dyn Fn(&str) -> bool) -> Vec<Setup> {
    let wanted: Vec<&'static str> = SNAPSHOT_PEERS.into_iter().filter(|n| selected(n)).collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let image = ours.image.file_name().unwrap_or(ours.image.as_os_str());
    let snapshot = dir.join(format!("{}.snap", image.to_string_lossy()));
    if let Err(err) = serve::make_snapshot(ours.image, ours.args, &snapshot) {
        return wanted.into_iter().map(|n| failed(n, &err)).collect();
    }
    let server = wanted
        .iter()
        .any(|n| n.starts_with("serve"))
        .then(|| serve::Server::start(dir, &snapshot).map(Arc::new));
    wanted
        .into_iter()
        .map(|name| match (name, &server) {
            ("restore", _) => Setup::Ready(restore_peer(dir, ours, &snapshot)),
            (_, Some(Ok(server))) => serve_peer(dir, name, ours, &snapshot, server),
            (_, Some(Err(err))) => failed(name, err),
            (_, None) => unreachable!("a serve row starts the server"),
        })
        .collect()
}

/// A peer running our VMM with `args` then `--` and ours' arguments, verified like ours.
fn vmm_peer(dir: &Path, name: &'static str, what: String, args: &[&str], ours: &Ours<'_>) -> Peer {
    let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    args.push("--".into());
    args.extend(ours.args.iter().cloned());
    let mut peer = peer(dir, name, what, vmm_path(), args);
    peer.expect_output = ours.is_hello.then_some(OURS_HELLO);
    peer.expect_status = ours.expect_status;
    peer
}

fn restore_peer(dir: &Path, ours: &Ours<'_>, snapshot: &Path) -> Peer {
    let snap = snapshot.display().to_string();
    let what = format!("our VMM restoring {snap} in a fresh process");
    vmm_peer(dir, "restore", what, &["run", "--from", &snap], ours)
}

fn serve_peer(
    dir: &Path,
    name: &'static str,
    ours: &Ours<'_>,
    snapshot: &Path,
    server: &Arc<serve::Server>,
) -> Setup {
    let (snap, socket) = (snapshot.display(), server.socket.display().to_string());
    let pool = serve::POOL;
    let mut peer = if name == "serve" {
        let what = format!(
            "warm request to vmm serve (pool of {pool} VMs of {snap}) from the bench itself: \
             connect and send → exit-status frame"
        );
        let mut peer = vmm_peer(dir, name, what, &[], ours);
        let stdout = ours.is_hello.then_some(OURS_HELLO_LINE);
        match serve::Client::new(&server.socket, snapshot, ours.args, stdout) {
            Ok(client) => peer.client = Some(client),
            Err(err) => return failed(name, &err),
        }
        peer
    } else {
        let what = "vmm run --via (a fresh client process) to the same vmm serve".to_owned();
        vmm_peer(
            dir,
            name,
            what,
            &["run", "--via", &socket, "--from", &snap.to_string()],
            ours,
        )
    };
    peer._guard = Some(Box::new(Arc::clone(server)));
    Setup::Ready(peer)
}

fn native_peer(dir: &Path, hello: &Path) -> Setup {
    let what = "static glibc hello (cc -static -O2)".to_owned();
    Setup::Ready(peer(dir, "native", what, hello.to_owned(), Vec::new()))
}

fn true_peer(dir: &Path) -> Setup {
    let path = PathBuf::from("/bin/true");
    if !path.is_file() {
        return not_installed("true", "apt-get install coreutils");
    }
    let mut peer = peer(
        dir,
        "true",
        "/bin/true (dynamic)".to_owned(),
        path,
        Vec::new(),
    );
    peer.expect_output = None;
    Setup::Ready(peer)
}

fn unshare_peer(dir: &Path, hello: &Path) -> Setup {
    let Some(unshare) = which("unshare") else {
        return not_installed("unshare", "apt-get install util-linux");
    };
    let mut args: Vec<String> = [
        "--fork",
        "--pid",
        "--mount",
        "--net",
        "--uts",
        "--ipc",
        "--mount-proc",
    ]
    .map(String::from)
    .to_vec();
    args.push(hello.display().to_string());
    let what = "static hello in new pid, mount, net, uts, ipc namespaces".to_owned();
    Setup::Ready(peer(dir, "unshare", what, unshare, args))
}

fn oci_peer(dir: &Path, runtime: oci::Runtime, hello: &Path) -> Setup {
    let name = runtime.name();
    let Some(program) = which(name) else {
        return not_installed(name, &format!("apt-get install {name}"));
    };
    let unshare = which("unshare");
    match oci::prepare(dir, runtime, &program, unshare.as_deref(), hello) {
        Ok(prepared) => {
            let what = format!("{name} run of an OCI bundle with the static hello");
            let mut peer = peer(
                dir,
                name,
                what,
                prepared.program.clone(),
                prepared.args.clone(),
            );
            peer._guard = Some(Box::new(prepared));
            Setup::Ready(peer)
        }
        Err(err) => failed(name, &err),
    }
}

fn docker_peer(dir: &Path, hello: &Path) -> Setup {
    let Some(cli) = which("docker") else {
        return not_installed("docker", "apt-get install docker.io");
    };
    match docker::prepare(dir, &cli, hello) {
        Ok(Some(prepared)) => {
            let what = "docker run --rm --network none of the static hello (RSS: the CLI only)";
            let what = what.to_owned();
            let mut peer = peer(dir, "docker", what, cli, prepared.run_args());
            peer._guard = Some(Box::new(prepared));
            Setup::Ready(peer)
        }
        Ok(None) => not_installed(
            "docker",
            "apt-get install docker.io (no daemon is reachable and dockerd is missing)",
        ),
        Err(err) => failed("docker", &err),
    }
}

fn qemu_peer(dir: &Path) -> Setup {
    let Some(program) = which("qemu-system-x86_64") else {
        return not_installed("qemu", "apt-get install qemu-system-x86");
    };
    match qemu::prepare(dir) {
        Ok(args) => {
            let what = "QEMU -M microvm + qboot, PVH kernel of a few instructions".to_owned();
            let mut peer = peer(dir, "qemu", what, program, args);
            peer.expect_status = qemu::EXPECTED_STATUS;
            Setup::Ready(peer)
        }
        Err(err) => failed("qemu", &err),
    }
}

fn not_installed(name: &'static str, install: &str) -> Setup {
    Setup::NotInstalled {
        name,
        install: install.to_owned(),
    }
}

fn failed(name: &'static str, err: &anyhow::Error) -> Setup {
    Setup::Failed {
        name,
        reason: format!("{err:#}"),
    }
}

/// The first executable `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
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
            max_rss_kib: 1024,
            status,
            output: output.to_owned(),
        }
    }

    fn hello_peer() -> Peer {
        peer(
            Path::new("/tmp"),
            "native",
            String::new(),
            "/x".into(),
            Vec::new(),
        )
    }

    #[test]
    fn test_verify_hello_with_status_0_passes() {
        assert!(
            hello_peer()
                .verify(&sample(Status::Exited(0), "hello\n"))
                .is_ok()
        );
    }

    #[test]
    fn test_verify_wrong_status_fails_with_both_statuses() {
        let err = hello_peer()
            .verify(&sample(Status::Exited(1), "hello\n"))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("exit status 1 (expected exit status 0)"),
            "{err}"
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
        assert!(
            hello_peer()
                .verify(&sample(Status::Signaled(9), "hello"))
                .is_err()
        );
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
}
