//! A container's state directory under `--root` (`ROOT/ID/`): the saved state
//! (`state.json`), the exec fifo that holds the container process until `start`, and the
//! container's status, computed from the saved state and the process's liveness.

use oci_spec::runtime::{ContainerState, Hooks};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// `--root` when none is given (runc's is `/run/runc`).
pub const DEFAULT_ROOT: &str = "/run/flick";
/// The saved state's file name.
const STATE_FILE: &str = "state.json";
/// The exec fifo's file name.
pub const EXEC_FIFO: &str = "exec.fifo";
/// The state directory's mode: its owner's, and searchable by the container's user.
const STATE_DIR_MODE: u32 = 0o711;
/// The longest container id accepted.
const MAX_ID_LEN: usize = 1024;

/// Errors about a container's state.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The id is not usable as a directory name.
    #[error(
        "invalid container id '{0}' (letters, digits, '_', '+', '-', '.'; not starting with '.')"
    )]
    BadId(String),
    /// Another container has this id.
    #[error("container \"{0}\" already exists")]
    Exists(String),
    /// No container has this id.
    #[error("container \"{0}\" does not exist")]
    NotFound(String),
    /// The state directory or file could not be used.
    #[error("cannot use the state of container \"{id}\" in {path}")]
    Io {
        /// The container.
        id: String,
        /// What could not be used.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The saved state is not ours.
    #[error("the saved state of container \"{id}\" is malformed")]
    Malformed {
        /// The container.
        id: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Checks a container id as runc does: `[\w+.-]+`, not `.` or `..`.
pub fn check_id(id: &str) -> Result<(), ContainerError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ContainerError::BadId(id.to_owned()))
    }
}

/// What `create` saves for the later commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    /// The container id.
    pub id: String,
    /// The container process (the VMM) in the runtime's pid namespace.
    pub pid: i32,
    /// Its start time (`/proc/PID/stat` field 22), so a reused pid is not mistaken for it.
    pub pid_start: u64,
    /// The bundle.
    pub bundle: PathBuf,
    /// The root file system.
    pub rootfs: PathBuf,
    /// When it was created (RFC 3339).
    pub created: String,
    /// `config.json`'s annotations.
    pub annotations: HashMap<String, String>,
    /// Its cgroup path.
    pub cgroups_path: PathBuf,
    /// Whether the cgroup is systemd's.
    pub systemd_cgroup: bool,
    /// Hooks that run after `create` (poststart, poststop).
    pub hooks: Hooks,
}

/// A container's state directory, locked (`flock`) while this value lives.
pub struct ContainerDir {
    id: String,
    path: PathBuf,
    /// The directory, open and locked.
    lock: OwnedFd,
}

impl ContainerDir {
    /// Makes the directory of a new container; fails if the id is taken.
    pub fn create(root: &Path, id: &str) -> Result<Self, ContainerError> {
        check_id(id)?;
        let io = |path: &Path, source| ContainerError::Io {
            id: id.to_owned(),
            path: path.to_owned(),
            source,
        };
        std::fs::create_dir_all(root).map_err(|e| io(root, e))?;
        let path = root.join(id);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(ContainerError::Exists(id.to_owned()));
            }
            Err(e) => return Err(io(&path, e)),
        }
        let lock = lock_dir(&path).map_err(|e| io(&path, e))?;
        // Whatever the umask: the container process of a container without a network of its
        // own opens the exec fifo as the container's user, who must pass through (runc asks
        // for the same mode). Nobody else may list it, and each file keeps its own mode.
        nix::sys::stat::fchmod(
            lock.as_raw_fd(),
            nix::sys::stat::Mode::from_bits_truncate(STATE_DIR_MODE),
        )
        .map_err(|errno| io(&path, errno.into()))?;
        Ok(Self {
            id: id.to_owned(),
            path,
            lock,
        })
    }

    /// Opens and locks the directory of an existing container.
    pub fn open(root: &Path, id: &str) -> Result<Self, ContainerError> {
        check_id(id)?;
        let path = root.join(id);
        let lock = match lock_dir(&path) {
            Ok(lock) => lock,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ContainerError::NotFound(id.to_owned()));
            }
            Err(source) => {
                return Err(ContainerError::Io {
                    id: id.to_owned(),
                    path,
                    source,
                });
            }
        };
        Ok(Self {
            id: id.to_owned(),
            path,
            lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory, open (the descriptor that holds the lock).
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.lock.as_fd()
    }

    /// The exec fifo's path.
    pub fn fifo(&self) -> PathBuf {
        self.path.join(EXEC_FIFO)
    }

    /// Writes the saved state (atomically: a new file renamed over the old).
    pub fn save(&self, saved: &Saved) -> Result<(), ContainerError> {
        let text = serde_json::to_vec(saved).expect("the state serializes");
        let staging = self.path.join(".state.json.new");
        let target = self.path.join(STATE_FILE);
        std::fs::write(&staging, text)
            .and_then(|()| std::fs::rename(&staging, &target))
            .map_err(|source| self.io(&target, source))
    }

    /// Reads the saved state.
    pub fn load(&self) -> Result<Saved, ContainerError> {
        let path = self.path.join(STATE_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            // A directory without state is a create that did not finish: not a container.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ContainerError::NotFound(self.id.clone()));
            }
            Err(source) => return Err(self.io(&path, source)),
        };
        serde_json::from_slice(&text).map_err(|source| ContainerError::Malformed {
            id: self.id.clone(),
            source,
        })
    }

    /// The container's status: stopped once its process is gone (or a zombie), created while
    /// the exec fifo waits, running after `start` removed it.
    pub fn status(&self, saved: &Saved) -> ContainerState {
        if !process_alive(saved.pid, saved.pid_start) {
            ContainerState::Stopped
        } else if self.fifo().exists() {
            ContainerState::Created
        } else {
            ContainerState::Running
        }
    }

    /// Removes the directory and everything in it.
    pub fn remove(self) -> Result<(), ContainerError> {
        std::fs::remove_dir_all(&self.path).map_err(|source| self.io(&self.path, source))
    }

    fn io(&self, path: &Path, source: std::io::Error) -> ContainerError {
        ContainerError::Io {
            id: self.id.clone(),
            path: path.to_owned(),
            source,
        }
    }
}

/// Opens `dir` and takes an exclusive `flock` on it (blocking).
fn lock_dir(dir: &Path) -> std::io::Result<OwnedFd> {
    let file = std::fs::File::open(dir)?;
    // SAFETY: flock takes no pointers; the fd is open for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file.into())
}

/// `/proc/PID/stat`'s state and start time, or `None` when there is no such process.
pub fn process_stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// The state (field 3) and start time (field 22) of a `/proc/PID/stat` line; the command
/// name in parentheses may hold spaces and parentheses, so fields count from the last `)`.
fn parse_stat(text: &str) -> Option<(char, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Whether `pid` is the live (not zombie) process that started at `start`.
pub fn process_alive(pid: i32, start: u64) -> bool {
    matches!(process_stat(pid), Some((state, s)) if s == start && !matches!(state, 'Z' | 'X'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_check_id_refuses_paths_and_dots() {
        for bad in ["", ".", "..", "a/b", ".hidden", "a b", "é"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        for good in ["abc", "a-b_c.d+e", "0123456789abcdef"] {
            assert!(check_id(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn test_parse_stat_command_with_parentheses() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 777 1000 10";
        assert_eq!(parse_stat(line), Some(('S', 777)));
    }

    #[test]
    fn test_process_alive_this_process_yes_wrong_start_no() {
        let pid = std::process::id() as i32;
        let (_, start) = process_stat(pid).unwrap();
        assert!(process_alive(pid, start));
        assert!(!process_alive(pid, start + 1));
    }

    #[test]
    fn test_container_dir_create_twice_is_exists() {
        let root = std::env::temp_dir().join(format!("flick-state-{}", std::process::id()));
        let first = ContainerDir::create(&root, "c1").unwrap();
        drop(first);
        assert!(matches!(
            ContainerDir::create(&root, "c1"),
            Err(ContainerError::Exists(_))
        ));
        let dir = ContainerDir::open(&root, "c1").unwrap();
        assert!(matches!(dir.load(), Err(ContainerError::NotFound(_))));
        dir.remove().unwrap();
        assert!(matches!(
            ContainerDir::open(&root, "c1"),
            Err(ContainerError::NotFound(_))
        ));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn test_container_dir_create_mode_is_searchable_by_others_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let root = std::env::temp_dir().join(format!("flick-mode-{}", std::process::id()));
        let dir = ContainerDir::create(&root, "c1").unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o7777;
        dir.remove().unwrap();
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(mode, STATE_DIR_MODE);
    }
}
