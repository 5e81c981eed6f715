//! The commands after `create`: `start`, `state`, `kill`, `delete`, `ps` and `features`,
//! with runc's semantics where containerd's shim depends on them (`delete` of a missing
//! container says "does not exist", `state` of a stopped one has pid 0).

use crate::cgroup::{Cgroup, CgroupError};
use crate::container::{ContainerDir, ContainerError, Saved};
use crate::create::wait_until_dead;
use crate::hooks;
use crate::log::{Log, chain};
use crate::signals::{self, UnknownSignal};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::ContainerState;
use serde::Serialize;
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The longest `start` waits for the container process to take the exec fifo.
const START_PATIENCE: Duration = Duration::from_secs(10);
/// The longest `delete --force` waits for killed processes to die.
const KILL_PATIENCE: Duration = Duration::from_secs(10);

/// Errors of the commands.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The container's state is unusable or missing.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// The command does not apply in the container's status.
    #[error("cannot {verb} container \"{id}\": it is {status}")]
    WrongStatus {
        /// What was asked.
        verb: &'static str,
        /// The container.
        id: String,
        /// Its status.
        status: ContainerState,
    },
    /// The container process died before `start` released it.
    #[error("container \"{0}\" stopped before it could start")]
    DiedBeforeStart(String),
    /// The container process did not take the exec fifo in time.
    #[error("container \"{0}\" did not start within {START_PATIENCE:?}")]
    StartTimedOut(String),
    /// The exec fifo failed.
    #[error("cannot use the exec fifo of container \"{id}\"")]
    Fifo {
        /// The container.
        id: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The signal name is unknown.
    #[error(transparent)]
    Signal(#[from] UnknownSignal),
    /// The signal could not be sent.
    #[error("cannot signal container \"{id}\"")]
    Kill {
        /// The container.
        id: String,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// Its cgroup failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Killed processes did not die.
    #[error("the processes of container \"{0}\" did not die within {KILL_PATIENCE:?}")]
    StillAlive(String),
    /// A `ps` format other than table and json.
    #[error("unknown ps format '{0}' (table, json)")]
    PsFormat(String),
}

/// `start`: releases the container process, which boots the guest.
pub fn start(root: &Path, id: &str, log: &Log) -> Result<(), CommandError> {
    let dir = ContainerDir::open(root, id)?;
    let saved = dir.load()?;
    let status = dir.status(&saved);
    if status != ContainerState::Created {
        return Err(wrong("start", id, status));
    }
    release(&dir, &saved)?;
    let fifo = dir.fifo();
    let _ = std::fs::remove_file(fifo);
    let state = hooks_state(&saved, ContainerState::Running);
    if let Err(err) = hooks::run("poststart", saved.hooks.poststart().as_deref(), &state) {
        log.warn(&chain(&err));
    }
    Ok(())
}

/// Opens the exec fifo for reading without blocking, then waits for the container process's
/// byte while checking that it is still alive (a dead one would never open its end).
fn release(dir: &ContainerDir, saved: &Saved) -> Result<(), CommandError> {
    let fifo_err = |source| CommandError::Fifo {
        id: saved.id.clone(),
        source,
    };
    let mut fifo = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(dir.fifo())
        .map_err(fifo_err)?;
    let start = Instant::now();
    loop {
        let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
        let ready =
            nix::poll::poll(&mut fds, PollTimeout::from(50u16)).map_err(|e| fifo_err(e.into()))?;
        if ready > 0 {
            let mut byte = [0u8; 1];
            match fifo.read(&mut byte) {
                Ok(1) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(fifo_err(e)),
            }
        }
        if dir.status(saved) == ContainerState::Stopped {
            return Err(CommandError::DiedBeforeStart(saved.id.clone()));
        }
        if start.elapsed() > START_PATIENCE {
            return Err(CommandError::StartTimedOut(saved.id.clone()));
        }
        if ready > 0 {
            // POLLHUP without data: the writer has not opened yet; do not spin.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// What `state` prints: the OCI state plus runc's `rootfs`, `created` and `owner`.
#[derive(Debug, Serialize)]
pub struct StateOutput {
    /// The runtime spec version.
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    /// The container id.
    pub id: String,
    /// Its status.
    pub status: ContainerState,
    /// The VMM's pid (0 once stopped).
    pub pid: i32,
    /// The bundle.
    pub bundle: PathBuf,
    /// The root file system.
    pub rootfs: PathBuf,
    /// When it was created.
    pub created: String,
    /// Its annotations.
    pub annotations: HashMap<String, String>,
    /// The owner (empty: root).
    pub owner: String,
}

/// `state`: the container's state as JSON.
pub fn state(root: &Path, id: &str) -> Result<String, CommandError> {
    let dir = ContainerDir::open(root, id)?;
    let saved = dir.load()?;
    let status = dir.status(&saved);
    let output = StateOutput {
        oci_version: oci_spec::runtime::VERSION.to_owned(),
        id: saved.id.clone(),
        status,
        pid: if status == ContainerState::Stopped {
            0
        } else {
            saved.pid
        },
        bundle: saved.bundle.clone(),
        rootfs: saved.rootfs.clone(),
        created: saved.created.clone(),
        annotations: saved.annotations.clone(),
        owner: String::new(),
    };
    Ok(serde_json::to_string_pretty(&output).expect("the state serializes"))
}

/// `kill [--all] ID SIGNAL`: signals the VMM (or every process of the container's cgroup).
pub fn kill(root: &Path, id: &str, signal: &str, all: bool) -> Result<(), CommandError> {
    let signal = signals::parse(signal)?;
    let dir = ContainerDir::open(root, id)?;
    let saved = dir.load()?;
    let status = dir.status(&saved);
    if status == ContainerState::Stopped {
        return Err(wrong("kill", id, status));
    }
    let send = |pid: i32| nix::sys::signal::kill(Pid::from_raw(pid), signal);
    if all {
        for pid in cgroup(&saved)?.pids()? {
            let _ = send(pid);
        }
        return Ok(());
    }
    send(saved.pid).map_err(|source| CommandError::Kill {
        id: id.to_owned(),
        source,
    })
}

/// `delete [--force] ID`: removes a stopped or created container; `--force` kills a running
/// one first, and is content when there is no such container (as runc's). Puts back the
/// network namespace the container changed ([`crate::network::restore`]), runs the
/// `poststop` hooks, removes the cgroup and the state directory.
pub fn delete(root: &Path, id: &str, force: bool, log: &Log) -> Result<(), CommandError> {
    let dir = match ContainerDir::open(root, id) {
        // runc's `delete --force` of a missing container succeeds (the shim deletes twice).
        Err(ContainerError::NotFound(_)) if force => return Ok(()),
        other => other?,
    };
    let saved = match dir.load() {
        Ok(saved) => saved,
        Err(ContainerError::NotFound(_)) => {
            // A directory without state is what a killed `create` left: clean it up.
            dir.remove()?;
            return Err(ContainerError::NotFound(id.to_owned()).into());
        }
        Err(err) => return Err(err.into()),
    };
    let status = dir.status(&saved);
    if status == ContainerState::Running && !force {
        return Err(wrong("delete", id, status));
    }
    let cgroup = cgroup(&saved)?;
    if status != ContainerState::Stopped {
        let _ = nix::sys::signal::kill(Pid::from_raw(saved.pid), Signal::SIGKILL);
        for pid in cgroup.pids().unwrap_or_default() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if !wait_until_dead(saved.pid, KILL_PATIENCE) {
            return Err(CommandError::StillAlive(id.to_owned()));
        }
    }
    // The container process gave up the privileges to do it, and may have been killed: the
    // namespace it changed (one that outlives it) is put back here, once it is gone.
    match crate::network::restore(dir.fd()) {
        Ok(None) => {}
        Ok(Some(note)) => log.warn(&format!("container \"{id}\": {note}")),
        Err(err) => log.warn(&format!(
            "cannot put the network namespace of container \"{id}\" back as it was: {}",
            chain(&err)
        )),
    }
    cgroup.remove()?;
    let state = hooks_state(&saved, ContainerState::Stopped);
    if let Err(err) = hooks::run("poststop", saved.hooks.poststop().as_deref(), &state) {
        log.warn(&chain(&err));
    }
    dir.remove()?;
    Ok(())
}

/// `ps [--format table|json] ID`: the pids of the container's cgroup.
pub fn ps(root: &Path, id: &str, format: &str) -> Result<String, CommandError> {
    let dir = ContainerDir::open(root, id)?;
    let saved = dir.load()?;
    let pids = cgroup(&saved)?.pids()?;
    match format {
        "json" => Ok(serde_json::to_string(&pids).expect("pids serialize")),
        "table" => Ok(std::iter::once("PID".to_owned())
            .chain(pids.iter().map(i32::to_string))
            .collect::<Vec<_>>()
            .join("\n")),
        other => Err(CommandError::PsFormat(other.to_owned())),
    }
}

/// `features`: what this runtime implements, as the runtime spec's features document.
pub fn features() -> String {
    let value = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": oci_spec::runtime::VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": [],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "uts"],
            "capabilities": [],
            "cgroup": { "v1": true, "v2": true, "systemd": true, "systemdUser": false },
            "seccomp": { "enabled": false },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false }
        },
        "annotations": {
            "org.flick.runtime.version": env!("CARGO_PKG_VERSION"),
            "org.flick.runtime.image": format!(
                "the annotation {} or /{} in the root file system names the image",
                crate::marker::IMAGE_ANNOTATION,
                crate::marker::MARKER_FILE
            )
        }
    });
    serde_json::to_string_pretty(&value).expect("json values serialize")
}

fn cgroup(saved: &Saved) -> Result<Cgroup, CgroupError> {
    Cgroup::new(&saved.cgroups_path, &saved.id, saved.systemd_cgroup)
}

fn hooks_state(saved: &Saved, status: ContainerState) -> oci_spec::runtime::State {
    hooks::state(
        &saved.id,
        status,
        saved.pid,
        &saved.bundle,
        &saved.annotations,
    )
}

fn wrong(verb: &'static str, id: &str, status: ContainerState) -> CommandError {
    CommandError::WrongStatus {
        verb,
        id: id.to_owned(),
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_features_is_a_runtime_spec_features_document() {
        let parsed: oci_spec::runtime::Features = serde_json::from_str(&features()).unwrap();
        assert_eq!(parsed.oci_version_min(), "1.0.0");
        assert!(
            parsed
                .hooks()
                .as_ref()
                .unwrap()
                .contains(&"poststop".to_owned())
        );
    }
}
