//! The Docker peer: finds a reachable daemon or starts a private one (its own data root, exec
//! root and socket under `OUT/docker`, no host network changes, stopped by its PID at the end),
//! and imports the hello rootfs as an image. A run waits for the CLI only: the container's
//! teardown happens in the daemon, outside the CLI's process group.
//!
//! [`NetworkDaemon`] is the network section's: always a private daemon, started in the
//! section's own network namespace (the caller's) with Docker's networking on (its NAT rules
//! and bridges exist in that namespace alone), a user-defined bridge network with a fixed
//! address for the container, and the native server imported as an image.

use super::native::Payload;
use super::oci;
use super::peer::{Peer, Setup, which};
use crate::error::{Error, Result};
use crate::measure::run::Reap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The image the bench imports.
const IMAGE: &str = "flick-bench-hello";
/// How long a daemon may take to answer after it starts, or to stop after SIGTERM.
const DAEMON_PATIENCE: Duration = Duration::from_secs(30);

/// A daemon with the image imported; dropping it stops the daemon if the bench started it,
/// or removes the image from the daemon it found.
struct Prepared {
    /// `-H` for our own daemon, `None` for the one found.
    host: Option<String>,
    daemon: Option<Child>,
    cli: PathBuf,
}

impl Prepared {
    /// Arguments of `docker` for one run.
    fn run_args(&self) -> Vec<String> {
        let mut args = self.host_args();
        args.extend(["run", "--rm", "--network", "none", IMAGE].map(String::from));
        args
    }

    fn host_args(&self) -> Vec<String> {
        self.host
            .iter()
            .flat_map(|h| ["-H".to_owned(), h.clone()])
            .collect()
    }
}

/// Sets up Docker to run `payload` (the static hello).
pub(crate) fn setup(dir: &Path, payload: Payload<'_>) -> Setup {
    let Some(cli) = which("docker") else {
        return Setup::not_installed("docker", "apt-get install docker.io");
    };
    match prepare(dir, &cli, payload) {
        Ok(Some(prepared)) => {
            let what = "docker run --rm --network none of the static hello (RSS: the CLI only; \
                        until done: the CLI only, the daemon removes the container)";
            let args = prepared.run_args();
            let mut peer = Peer::new(dir, "docker", what.to_owned(), cli, args, payload.prints);
            peer.reap = Reap::Child;
            peer.guard = Some(Box::new(prepared));
            Setup::Ready(peer)
        }
        Ok(None) => Setup::not_installed(
            "docker",
            "apt-get install docker.io (no daemon is reachable and dockerd is missing)",
        ),
        Err(err) => Setup::failed("docker", &err),
    }
}

/// Connects to (or starts) a daemon and imports the image. `Ok(None)`: no daemon and no
/// `dockerd` to start one.
fn prepare(dir: &Path, cli: &Path, payload: Payload<'_>) -> Result<Option<Prepared>> {
    let prepared = if daemon_answers(cli, None) {
        Prepared {
            host: None,
            daemon: None,
            cli: cli.to_owned(),
        }
    } else {
        let Some(dockerd) = which("dockerd") else {
            return Ok(None);
        };
        start_daemon(dir, cli, &dockerd)?
    };
    let rootfs = oci::write_bundle(dir, payload)?.join("rootfs");
    import_image(cli, &prepared.host_args(), &rootfs, payload.name)?;
    Ok(Some(prepared))
}

fn daemon_answers(cli: &Path, host: Option<&str>) -> bool {
    let mut cmd = Command::new(cli);
    if let Some(host) = host {
        cmd.args(["-H", host]);
    }
    cmd.args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts `dockerd` with private paths and waits until it answers.
fn start_daemon(dir: &Path, cli: &Path, dockerd: &Path) -> Result<Prepared> {
    start_daemon_in(&dir.join("docker"), cli, dockerd, false)
}

/// Starts `dockerd` with its files under `root`; with `networking`, Docker's iptables rules
/// and bridges too (only ever in a network namespace the bench made).
fn start_daemon_in(root: &Path, cli: &Path, dockerd: &Path, networking: bool) -> Result<Prepared> {
    std::fs::create_dir_all(root)
        .map_err(Error::io(format!("cannot create {}", root.display())))?;
    let socket = root.join("docker.sock");
    let host = format!("unix://{}", socket.display());
    let log_path = root.join("dockerd.log");
    let log = File::create(&log_path).map_err(Error::io("cannot create dockerd.log"))?;
    let path_arg = |flag: &str, p: PathBuf| [flag.to_owned(), p.display().to_string()];
    let mut cmd = Command::new(dockerd);
    cmd.args(path_arg("--data-root", root.join("data")))
        .args(path_arg("--exec-root", root.join("exec")))
        .args(path_arg("--pidfile", root.join("dockerd.pid")))
        .args(["-H", &host, "--bridge=none", "--ip6tables=false"])
        .args(["--userland-proxy=false"])
        .args(if networking {
            &[][..]
        } else {
            &["--iptables=false", "--ip-masq=false"][..]
        })
        .args(["--exec-opt", "native.cgroupdriver=cgroupfs"])
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .map_err(Error::io("cannot duplicate dockerd.log"))?,
        )
        .stderr(log);
    let daemon = cmd.spawn().map_err(Error::io("cannot start dockerd"))?;
    let mut prepared = Prepared {
        host: Some(host),
        daemon: Some(daemon),
        cli: cli.to_owned(),
    };
    wait_until_up(&mut prepared, cli, &log_path)?;
    Ok(prepared)
}

fn wait_until_up(prepared: &mut Prepared, cli: &Path, log: &Path) -> Result<()> {
    let start = Instant::now();
    while !daemon_answers(cli, prepared.host.as_deref()) {
        let exited = match prepared.daemon.as_mut() {
            Some(daemon) => daemon
                .try_wait()
                .map_err(Error::io("cannot wait for dockerd"))?
                .is_some(),
            None => false,
        };
        if exited || start.elapsed() > DAEMON_PATIENCE {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let last = text.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
            return Err(Error::Check(format!(
                "dockerd did not come up (see {}): {last}",
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// `tar -C rootfs -c . | docker import -c 'CMD ["/NAME"]' - IMAGE`.
fn import_image(cli: &Path, host_args: &[String], rootfs: &Path, name: &str) -> Result<()> {
    import_image_as(cli, host_args, rootfs, name, IMAGE)
}

fn import_image_as(
    cli: &Path,
    host_args: &[String],
    rootfs: &Path,
    name: &str,
    image: &str,
) -> Result<()> {
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(Error::io("cannot run tar"))?;
    let tar_out = tar
        .stdout
        .take()
        .ok_or_else(|| Error::Check("tar has no stdout".to_owned()))?;
    let cmd = format!(r#"CMD ["/{name}"]"#);
    let import = Command::new(cli)
        .args(host_args)
        .args(["import", "-c", &cmd, "-", image])
        .stdin(tar_out)
        .stdout(Stdio::null())
        .output()
        .map_err(Error::io("cannot run docker import"))?;
    let tar_status = tar.wait().map_err(Error::io("cannot wait for tar"))?;
    if !tar_status.success() {
        return Err(Error::Check(format!("tar -c failed ({tar_status})")));
    }
    if !import.status.success() {
        return Err(Error::tool("docker import", import.status, &import.stderr));
    }
    Ok(())
}

impl Drop for Prepared {
    fn drop(&mut self) {
        let Some(mut daemon) = self.daemon.take() else {
            let _ = Command::new(&self.cli)
                .args(["rmi", "-f", IMAGE])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            return;
        };
        if let Ok(pid) = libc::pid_t::try_from(daemon.id()) {
            // SAFETY: kill(2) takes no pointers; `pid` is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let start = Instant::now();
        while start.elapsed() < DAEMON_PATIENCE {
            if let Ok(Some(_)) = daemon.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = daemon.kill();
        let _ = daemon.wait();
    }
}

/// The network section's image (the native HTTP server).
pub(crate) const NETWORK_IMAGE: &str = "flick-bench-net-httpd";
/// Its user-defined bridge network.
const NETWORK: &str = "flick-bench-net";

/// A private daemon in the caller's network namespace, with a bridge network (`subnet`,
/// bridge interface `bridge`) and `payload` imported as [`NETWORK_IMAGE`]; stopped when
/// dropped.
pub(crate) struct NetworkDaemon {
    prepared: Prepared,
    /// Whether the daemon takes `--mac-address` with `--network` (API 1.44, Docker 25);
    /// older ones make the MAC from the address (`02:42:` and its four bytes).
    mac_per_network: bool,
}

impl NetworkDaemon {
    /// Starts it under `root` (which must be short: the daemon's sockets live there).
    pub(crate) fn start(
        root: &Path,
        payload: Payload<'_>,
        subnet: &str,
        gateway: &str,
        bridge: &str,
    ) -> Result<NetworkDaemon> {
        let (Some(cli), Some(dockerd)) = (which("docker"), which("dockerd")) else {
            return Err(Error::Check(
                "not installed (apt-get install docker.io)".to_owned(),
            ));
        };
        let prepared = start_daemon_in(&root.join("daemon"), &cli, &dockerd, true)?;
        let mut daemon = NetworkDaemon {
            prepared,
            mac_per_network: false,
        };
        let version = daemon
            .docker()
            .args(["version", "--format", "{{.Server.APIVersion}}"])
            .output()
            .map_err(Error::io("cannot run docker version"))?;
        let api = String::from_utf8_lossy(&version.stdout).trim().to_owned();
        daemon.mac_per_network = api_at_least(&api, (1, 44));
        let rootfs = oci::write_bundle(root, payload)?.join("rootfs");
        import_image_as(
            &cli,
            &daemon.prepared.host_args(),
            &rootfs,
            payload.name,
            NETWORK_IMAGE,
        )?;
        let bridge_option = format!("com.docker.network.bridge.name={bridge}");
        let out = daemon
            .docker()
            .args(["network", "create", "--driver", "bridge"])
            .args([
                "--subnet",
                subnet,
                "--gateway",
                gateway,
                "-o",
                &bridge_option,
            ])
            .arg(NETWORK)
            .stdout(Stdio::null())
            .output()
            .map_err(Error::io("cannot run docker network create"))?;
        if !out.status.success() {
            return Err(Error::tool(
                "docker network create",
                out.status,
                &out.stderr,
            ));
        }
        Ok(daemon)
    }

    /// `docker` talking to this daemon.
    pub(crate) fn docker(&self) -> Command {
        let mut cmd = Command::new(&self.prepared.cli);
        cmd.args(self.prepared.host_args());
        cmd
    }

    /// `docker run` of `args` of the image as container `name` on the bridge network at `ip`
    /// with `mac` (which must be `02:42:` and the address's bytes, what a daemon too old to
    /// be told gives it), in the foreground, removed when it ends.
    pub(crate) fn run(&self, name: &str, ip: &str, mac: &str, args: &[&str]) -> Command {
        let mut cmd = self.docker();
        cmd.args(["run", "--rm", "--name", name, "--network", NETWORK])
            .args(["--ip", ip]);
        if self.mac_per_network {
            cmd.args(["--mac-address", mac]);
        }
        cmd.arg(NETWORK_IMAGE).args(args);
        cmd
    }

    /// Removes container `name` (killing `docker run` leaves it running), waiting until done.
    pub(crate) fn remove(&self, name: &str) {
        let _ = self
            .docker()
            .args(["rm", "-f", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether API version `text` (`1.41`) is at least `want`.
fn api_at_least(text: &str, want: (u32, u32)) -> bool {
    let mut parts = text.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= want,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_api_at_least_compares_numerically() {
        assert!(api_at_least("1.44", (1, 44)));
        assert!(api_at_least("1.51", (1, 44)));
        assert!(!api_at_least("1.41", (1, 44)));
        assert!(!api_at_least("1.9", (1, 44)));
        assert!(!api_at_least("", (1, 44)));
    }
}
