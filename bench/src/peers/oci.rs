//! The OCI peers (crun, runc): a bundle in `OUT/bundle-NAME` (a rootfs holding only a static
//! program, and a config.json in the style of `runc spec` with `terminal: false`), a private
//! state root per runtime, and the cleanup of any container left over.
//!
//! crun 1.8 refuses this host's hybrid cgroup layout (cgroup v1 controllers plus a cgroup2
//! mount at `/sys/fs/cgroup/unified`). Rather than timing a `unshare`/`sh` wrapper that unmounts
//! it before every run (about 3.5 ms here), the bench prepares one private mount namespace
//! without that mount, held by a sleeping process, and each crun run enters it with `setns`
//! in the forked child right before `exec` (a few µs).

use super::native::Payload;
use super::peer::{MountNs, Peer, Setup, which};
use crate::error::{Error, Result};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

/// The cgroup2 mount of a hybrid layout, which crun 1.8 refuses.
const HYBRID_CGROUP2: &str = "/sys/fs/cgroup/unified";

/// An OCI runtime.
#[derive(Clone, Copy)]
pub(crate) enum Runtime {
    /// crun (C).
    Crun,
    /// runc (Go).
    Runc,
}

impl Runtime {
    /// Its program name, also the peer's name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Runtime::Crun => "crun",
            Runtime::Runc => "runc",
        }
    }
}

/// A runtime's state root and mount namespace; dropping it deletes leftover containers, its
/// state, and stops the namespace's holder.
struct Prepared {
    runtime_path: PathBuf,
    state: PathBuf,
    mount_ns: Option<Arc<MountNs>>,
    holder: Option<Child>,
}

/// Sets up `runtime` to run `payload` from a bundle in `dir`.
pub(crate) fn setup(dir: &Path, runtime: Runtime, payload: Payload<'_>) -> Setup {
    let name = runtime.name();
    let Some(program) = which(name) else {
        return Setup::not_installed(name, &format!("apt-get install {name}"));
    };
    match prepare(dir, runtime, &program, payload) {
        Ok(peer) => Setup::Ready(peer),
        Err(err) => Setup::failed(name, &err),
    }
}

fn prepare(dir: &Path, runtime: Runtime, program: &Path, payload: Payload<'_>) -> Result<Peer> {
    let name = runtime.name();
    let bundle = write_bundle(dir, payload)?;
    let state = dir.join(format!("{name}-state"));
    std::fs::create_dir_all(&state)
        .map_err(Error::io(format!("cannot create {}", state.display())))?;
    let (holder, mount_ns) = match runtime {
        Runtime::Crun if hybrid_cgroups() => {
            let (holder, ns) = hold_mount_ns_without_cgroup2()?;
            (Some(holder), Some(Arc::new(ns)))
        }
        _ => (None, None),
    };
    let prepared = Prepared {
        runtime_path: program.to_owned(),
        state,
        mount_ns,
        holder,
    };
    let mut args = prepared.global_args();
    args.extend(["run", "--bundle", &bundle.display().to_string(), "{id}"].map(String::from));
    let what = match prepared.mount_ns {
        Some(_) => format!(
            "{name} run of an OCI bundle with the static {} (in a mount namespace prepared \
             once without the cgroup2 mount, entered with setns before exec: no wrapper timed)",
            payload.name
        ),
        None => format!(
            "{name} run of an OCI bundle with the static {}",
            payload.name
        ),
    };
    let mut peer = Peer::new(dir, name, what, program.to_owned(), args, payload.prints);
    peer.mount_ns = prepared.mount_ns.clone();
    peer.guard = Some(Box::new(prepared));
    Ok(peer)
}

/// Whether the host mounts cgroup2 beside the v1 controllers (the hybrid layout).
fn hybrid_cgroups() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| {
        info.lines()
            .any(|l| l.split_whitespace().nth(4) == Some(HYBRID_CGROUP2))
    })
}

/// Starts a process in a private mount namespace without the hybrid cgroup2 mount, sleeping
/// until it is killed; returns it once the namespace is ready, and the namespace.
fn hold_mount_ns_without_cgroup2() -> Result<(Child, MountNs)> {
    let unshare = which("unshare").ok_or_else(|| {
        Error::Check("crun needs unshare here (apt-get install util-linux)".to_owned())
    })?;
    let script = format!("umount {HYBRID_CGROUP2} || exit 1; echo ready; exec sleep infinity");
    let mut holder = Command::new(unshare)
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(Error::io("cannot start unshare"))?;
    let mut line = String::new();
    if let Some(stdout) = holder.stdout.take() {
        let _ = BufReader::new(stdout).read_line(&mut line);
    }
    if line.trim() != "ready" {
        let _ = holder.kill();
        let status = holder
            .wait()
            .map_or_else(|e| e.to_string(), |s| s.to_string());
        return Err(Error::Check(format!(
            "cannot prepare a mount namespace without {HYBRID_CGROUP2} ({status})"
        )));
    }
    let path = PathBuf::from(format!("/proc/{}/ns/mnt", holder.id()));
    match MountNs::open(&path) {
        Ok(ns) => Ok((holder, ns)),
        Err(err) => {
            let _ = holder.kill();
            let _ = holder.wait();
            Err(err)
        }
    }
}

impl Prepared {
    /// `--root STATE`, before the runtime's command.
    fn global_args(&self) -> Vec<String> {
        vec!["--root".to_owned(), self.state.display().to_string()]
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        let leftovers = std::fs::read_dir(&self.state)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir());
        for entry in leftovers {
            let mut cmd = Command::new(&self.runtime_path);
            cmd.args(self.global_args())
                .args(["delete", "-f"])
                .arg(entry.file_name())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some(ns) = &self.mount_ns {
                ns.enter_before_exec(&mut cmd);
            }
            let _ = cmd.status();
        }
        let _ = std::fs::remove_dir_all(&self.state);
        if let Some(mut holder) = self.holder.take() {
            let _ = holder.kill(); // SIGKILL to this child's PID only
            let _ = holder.wait();
        }
    }
}

/// Writes `dir/bundle-NAME` (rootfs with `/NAME`, config.json running it) and returns its
/// path.
pub(crate) fn write_bundle(dir: &Path, payload: Payload<'_>) -> Result<PathBuf> {
    let bundle = dir.join(format!("bundle-{}", payload.name));
    let rootfs = bundle.join("rootfs");
    for sub in ["proc", "dev", "sys"] {
        let path = rootfs.join(sub);
        std::fs::create_dir_all(&path)
            .map_err(Error::io(format!("cannot create {}", path.display())))?;
    }
    let inside = format!("/{}", payload.name);
    std::fs::copy(payload.path, rootfs.join(payload.name)).map_err(Error::io(format!(
        "cannot copy {} into the rootfs",
        payload.name
    )))?;
    let config = serde_json::to_string_pretty(&config(&[&inside]))
        .map_err(Error::json("cannot encode config.json"))?;
    std::fs::write(bundle.join("config.json"), config)
        .map_err(Error::io("cannot write config.json"))?;
    Ok(bundle)
}

/// A config.json like `runc spec` writes, not interactive, running `args`.
fn config(args: &[&str]) -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    let namespaces =
        ["pid", "network", "ipc", "uts", "mount", "cgroup"].map(|t| json!({ "type": t }));
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps, "ambient": caps
            },
            "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
            "noNewPrivileges": true
        },
        "root": { "path": "rootfs", "readonly": true },
        "hostname": "flick-bench",
        "mounts": mounts(),
        "linux": {
            "resources": { "devices": [{ "allow": false, "access": "rwm" }] },
            "namespaces": namespaces,
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

fn mount(dest: &str, kind: &str, source: &str, options: &[&str]) -> Value {
    json!({ "destination": dest, "type": kind, "source": source, "options": options })
}

fn mounts() -> Value {
    let noexec = ["nosuid", "noexec", "nodev"];
    json!([
        mount("/proc", "proc", "proc", &[]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"]
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5"
            ]
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
        ),
        mount("/dev/mqueue", "mqueue", "mqueue", &noexec),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"]
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"]
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_config_is_not_interactive_and_runs_hello() {
        let config = config(&["/hello"]);
        assert_eq!(config["process"]["terminal"], false);
        assert_eq!(config["process"]["args"], json!(["/hello"]));
        assert_eq!(config["root"]["path"], "rootfs");
    }

    #[test]
    fn test_config_unshares_every_namespace() {
        let config = config(&["/hello"]);
        let kinds: Vec<&str> = config["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["pid", "network", "ipc", "uts", "mount", "cgroup"]);
    }
}
