//! Our VMM as the bench runs it: the cold-boot row `ours` (`vmm run IMAGE`), the snapshot rows
//! (`restore`: `vmm run --from` in a fresh process; `serve`: a warm request to `vmm serve`
//! from the bench's in-process client; `serve-fresh`: the same to a server that destroys every
//! VM after its request (`--no-reuse`); `serve-process`: `serve` from a fresh `vmm run --via`),
//! `vmm run --timeline=json` for the phase breakdown, and `vmm fleet` for the fleet bench.

use super::client::Client;
use super::peer::{Peer, Setup};
use super::serve::{self, POOL, Server};
use crate::contracts::VmmFleet;
use crate::error::{Error, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

/// What ours prints when it boots the hello image.
pub(crate) const HELLO: &str = "Hello from a unikernel!";
/// Its whole stdout.
pub(crate) const HELLO_LINE: &str = "Hello from a unikernel!\n";
/// The rows of ours restored from a snapshot, in report order.
pub(crate) const SNAPSHOT_PEERS: [&str; 4] = ["restore", "serve", "serve-fresh", "serve-process"];

/// What ours boots.
pub(crate) struct Ours<'a> {
    /// The VMM.
    pub(crate) vmm: &'a Path,
    /// The image.
    pub(crate) image: &'a Path,
    /// Its arguments.
    pub(crate) args: &'a [String],
    /// Whether it is hello (whose output is known) or an image given with `--image`.
    pub(crate) is_hello: bool,
    /// The exit status it must end with.
    pub(crate) expect_status: i32,
}

impl Ours<'_> {
    /// A peer running the VMM with `args`, then `--` and the image's arguments, verified like
    /// ours; it waits for the VMM's whole process group (its teardown helper).
    fn peer(&self, dir: &Path, name: &'static str, what: String, args: &[&str]) -> Peer {
        let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        args.push("--".into());
        args.extend(self.args.iter().cloned());
        let mut peer = Peer::new(dir, name, what, self.vmm.to_owned(), args, HELLO);
        peer.expect_output = self.is_hello.then(|| HELLO.to_owned());
        peer.expect_status = self.expect_status;
        peer
    }

    /// `vmm run --timeline=json IMAGE -- ARGS`.
    pub(crate) fn timeline_command(&self) -> Command {
        let mut cmd = Command::new(self.vmm);
        cmd.args(["run", "--timeline=json"])
            .arg(self.image)
            .arg("--")
            .args(self.args);
        cmd
    }
}

/// The cold boot: `vmm run IMAGE`.
pub(crate) fn cold(dir: &Path, ours: &Ours<'_>) -> Setup {
    let image = ours.image.file_name().unwrap_or(ours.image.as_os_str());
    let what = format!("our VMM booting {}", image.to_string_lossy());
    let image = ours.image.display().to_string();
    Setup::Ready(ours.peer(dir, "ours", what, &["run", &image]))
}

/// Snapshots ours into `dir/<image>.snap` and sets up the selected snapshot rows (starting
/// one `vmm serve` for `serve` and `serve-process`, and one with `--no-reuse` for
/// `serve-fresh`).
pub(crate) fn snapshot_rows(
    dir: &Path,
    ours: &Ours<'_>,
    selected: &dyn Fn(&str) -> bool,
) -> Vec<Setup> {
    let wanted: Vec<&'static str> = SNAPSHOT_PEERS.into_iter().filter(|n| selected(n)).collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let image = ours.image.file_name().unwrap_or(ours.image.as_os_str());
    let snapshot = dir.join(format!("{}.snap", image.to_string_lossy()));
    if let Err(err) = serve::make_snapshot(ours.vmm, ours.image, ours.args, &snapshot) {
        return wanted.into_iter().map(|n| Setup::failed(n, &err)).collect();
    }
    let start = |reuse: bool, rows: &[&str]| {
        wanted
            .iter()
            .any(|n| rows.contains(n))
            .then(|| Server::start_vmm(ours.vmm, dir, &snapshot, reuse).map(Arc::new))
    };
    let reusing = start(true, &["serve", "serve-process"]);
    let fresh = start(false, &["serve-fresh"]);
    wanted
        .into_iter()
        .map(|name| {
            let server = if name == "serve-fresh" {
                &fresh
            } else {
                &reusing
            };
            match (name, server) {
                ("restore", _) => restore(dir, ours, &snapshot),
                (_, Some(Ok(server))) => serve_row(dir, name, ours, &snapshot, server),
                (_, Some(Err(err))) => Setup::failed(name, err),
                (_, None) => unreachable!("a serve row starts its server"),
            }
        })
        .collect()
}

fn restore(dir: &Path, ours: &Ours<'_>, snapshot: &Path) -> Setup {
    let snap = snapshot.display().to_string();
    let what = format!("our VMM restoring {snap} in a fresh process");
    Setup::Ready(ours.peer(dir, "restore", what, &["run", "--from", &snap]))
}

fn serve_row(
    dir: &Path,
    name: &'static str,
    ours: &Ours<'_>,
    snapshot: &Path,
    server: &Arc<Server>,
) -> Setup {
    let (snap, socket) = (snapshot.display(), server.socket.display().to_string());
    let mut peer = if name == "serve" || name == "serve-fresh" {
        let vms = if name == "serve" {
            "a VM that exited cleanly is returned to a fresh VM's state after the reply and \
             reused"
        } else {
            "--no-reuse: a fresh VM per request, refilled after the reply"
        };
        let what = format!(
            "warm request to vmm serve (pool of {POOL} VMs of {snap}; {vms}) from the bench \
             itself: connect and send → exit-status frame"
        );
        let mut peer = ours.peer(dir, name, what, &[]);
        let stdout = ours.is_hello.then_some(HELLO_LINE);
        match Client::new(&server.socket, snapshot, ours.args, stdout) {
            Ok(client) => peer.client = Some(client),
            Err(err) => return Setup::failed(name, &err),
        }
        peer
    } else {
        let what = "vmm run --via (a fresh client process) to the same vmm serve".to_owned();
        let snap = snap.to_string();
        ours.peer(dir, name, what, &["run", "--via", &socket, "--from", &snap])
    };
    peer.guard = Some(Box::new(Arc::clone(server)));
    Setup::Ready(peer)
}

/// Runs `vmm fleet TARGET --count COUNT --concurrency CONCURRENCY --json EXTRA...` and parses
/// its report.
pub(crate) fn vmm_fleet(
    vmm: &Path,
    target: &Path,
    count: usize,
    concurrency: usize,
    extra: &[&str],
) -> Result<VmmFleet> {
    let out = Command::new(vmm)
        .arg("fleet")
        .arg(target)
        .args(["--count", &count.to_string()])
        .args(["--concurrency", &concurrency.to_string(), "--json"])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .map_err(Error::io("cannot start vmm fleet"))?;
    if !out.status.success() {
        let program = format!("vmm fleet {}", target.display());
        return Err(Error::tool(program, out.status, &out.stderr));
    }
    serde_json::from_slice(&out.stdout).map_err(Error::json("vmm fleet --json printed no report"))
}
