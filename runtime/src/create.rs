//! `create`: reads the bundle, makes the state directory and exec fifo, forks the container
//! process (see [`init`](crate::init)), puts it in its cgroup, runs the `prestart` and
//! `createRuntime` hooks, sends the terminal to the console socket, and writes the state and
//! the pid file. A failure at any step undoes the earlier ones: the process is killed, the
//! cgroup and the state directory removed, and one error line says why.

use crate::cgroup::{Cgroup, CgroupError};
use crate::console::{self, ConsoleError};
use crate::container::{self, ContainerDir, ContainerError, Saved};
use crate::hooks::{self, DEFAULT_HOOK_TIMEOUT, HookError};
use crate::init::{self, Channel, ChannelError, Msg};
use crate::spec::{Plan, SpecError};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::ForkResult;
use oci_spec::runtime::ContainerState;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The longest `create` waits for one message of the container process: its own steps are
/// quick, but a `createContainer` hook it runs may take up to the default hook timeout.
const SETUP_PATIENCE: Duration = Duration::from_secs(30).saturating_add(DEFAULT_HOOK_TIMEOUT);
/// The longest a killed container process may take to die.
const DEATH_PATIENCE: Duration = Duration::from_secs(5);
/// The exec fifo's mode (it is given to the container's user).
const EXEC_FIFO_MODE: u32 = 0o600;

/// What `create` was asked.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// `--root`.
    pub root: PathBuf,
    /// The container id.
    pub id: String,
    /// `--bundle`.
    pub bundle: PathBuf,
    /// `--pid-file`.
    pub pid_file: Option<PathBuf>,
    /// `--console-socket`.
    pub console_socket: Option<PathBuf>,
    /// `--systemd-cgroup`.
    pub systemd_cgroup: bool,
}

/// Errors of [`create`].
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The bundle is unusable.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The state directory is unusable (or the id taken).
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// Terminal mode without a console socket.
    #[error("config.json asks for a terminal but no --console-socket was given")]
    NoConsoleSocket,
    /// The terminal failed.
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// The cgroup failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// A hook failed.
    #[error(transparent)]
    Hook(#[from] HookError),
    /// The exec fifo, pid file or a fork failed.
    #[error("cannot {what}")]
    Sys {
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// Writing the pid file failed.
    #[error("cannot write the pid file {path}")]
    PidFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The channel to the container process failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The container process reported a failure.
    #[error("{0}")]
    InContainer(String),
    /// The container process died or stopped answering.
    #[error("the container process {0}")]
    Lost(&'static str),
}

fn sys(what: &str) -> impl FnOnce(nix::Error) -> CreateError + '_ {
    move |source| CreateError::Sys {
        what: what.to_owned(),
        source,
    }
}

/// Creates the container; on failure nothing is left behind.
pub fn create(request: &CreateRequest) -> Result<(), CreateError> {
    let plan = Plan::from_bundle(&request.id, &request.bundle, request.systemd_cgroup)?;
    if plan.terminal && request.console_socket.is_none() {
        return Err(CreateError::NoConsoleSocket);
    }
    let dir = ContainerDir::create(&request.root, &request.id)?;
    let mut made = Made::default();
    match create_in(&plan, &dir, request, &mut made) {
        Ok(()) => Ok(()),
        Err(err) => {
            made.undo();
            let _ = dir.remove();
            Err(err)
        }
    }
}

/// What a failed create must undo.
#[derive(Default)]
struct Made {
    pid: Option<i32>,
    cgroup: Option<Cgroup>,
}

impl Made {
    fn undo(self) {
        if let Some(pid) = self.pid {
            init::kill_now(pid);
            wait_until_dead(pid, DEATH_PATIENCE);
        }
        if let Some(cgroup) = self.cgroup {
            let _ = cgroup.remove();
        }
    }
}

/// Waits until `pid` is gone or a zombie (it is not our child: its reaper is the subreaper).
pub fn wait_until_dead(pid: i32, patience: Duration) -> bool {
    let start = Instant::now();
    loop {
        match container::process_stat(pid) {
            None | Some(('Z' | 'X', _)) => return true,
            Some(_) if start.elapsed() > patience => return false,
            Some(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn create_in(
    plan: &Plan,
    dir: &ContainerDir,
    request: &CreateRequest,
    made: &mut Made,
) -> Result<(), CreateError> {
    // Writable by the container's user (which may not be root) and nobody else (the state
    // directory lets anyone who knows its name pass; a stranger's byte would release
    // `start` without the container): mkfifo's mode passes through the umask, so the mode
    // and owner are set afterwards.
    nix::unistd::mkfifo(&dir.fifo(), Mode::from_bits_truncate(EXEC_FIFO_MODE))
        .map_err(sys("make the exec fifo"))?;
    nix::sys::stat::fchmodat(
        None,
        &dir.fifo(),
        Mode::from_bits_truncate(EXEC_FIFO_MODE),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(sys("set the exec fifo's mode"))?;
    let (uid, gid, _) = plan.user;
    std::os::unix::fs::chown(dir.fifo(), Some(uid), Some(gid)).map_err(|e| CreateError::Sys {
        what: "give the exec fifo to the container's user".into(),
        source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    let pty = match plan.terminal {
        true => Some(console::open_pty()?),
        false => None,
    };
    let state_fd = nix::fcntl::open(
        dir.path(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("open the state directory"))?;
    // SAFETY: `open` just returned this descriptor, owned by nobody else.
    let state_dir = unsafe { OwnedFd::from_raw_fd(state_fd) };
    let (ours, theirs) = Channel::pair()?;
    let (master, slave) = match pty {
        Some(pty) => (Some(pty.master), Some(pty.slave)),
        None => (None, None),
    };
    // SAFETY: the runtime is single-threaded here (no thread has been spawned yet), so the
    // child may do anything the parent could.
    match unsafe { nix::unistd::fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            drop(ours);
            drop(master);
            init::intermediate(plan, theirs, state_dir, slave)
        }
        ForkResult::Parent { child } => {
            drop((theirs, slave, state_dir));
            ours.set_timeout(SETUP_PATIENCE)?;
            let pid = match ours.recv() {
                Ok(Some(Msg::Pid(pid))) => pid,
                Ok(Some(Msg::Failed(why))) => return Err(CreateError::InContainer(why)),
                Ok(_) | Err(_) => return Err(CreateError::Lost("did not start")),
            };
            let _ = nix::sys::wait::waitpid(child, None);
            made.pid = Some(pid);
            let cgroup = made.cgroup.insert(Cgroup::new(
                &plan.cgroups_path,
                &plan.id,
                request.systemd_cgroup,
            )?);
            // The cgroup is made when its first process joins; limits need it to exist.
            cgroup.add(pid)?;
            cgroup.apply(&plan.resources)?;
            if let Some(adj) = plan.oom_score_adj {
                std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string()).map_err(
                    |e| CreateError::Sys {
                        what: "set oom_score_adj".into(),
                        source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                    },
                )?;
            }
            ours.send(&Msg::Go { pid })?;
            follow_setup(plan, &ours, pid)?;
            if let (Some(master), Some(socket)) = (&master, &request.console_socket) {
                console::send_master(socket, master)?;
            }
            drop(master);
            let pid_start = container::process_stat(pid)
                .map(|(_, start)| start)
                .ok_or(CreateError::Lost("died during set-up"))?;
            dir.save(&Saved {
                id: plan.id.clone(),
                pid,
                pid_start,
                bundle: plan.bundle.clone(),
                rootfs: plan.rootfs.clone(),
                created: crate::timefmt::rfc3339(std::time::SystemTime::now()),
                annotations: plan.annotations.clone(),
                cgroups_path: plan.cgroups_path.clone(),
                systemd_cgroup: request.systemd_cgroup,
                hooks: plan.hooks.clone(),
            })?;
            if let Some(path) = &request.pid_file {
                write_pid_file(path, pid)?;
            }
            ours.send(&Msg::Created)?;
            Ok(())
        }
    }
}

/// Answers the container process until it is ready: runs `prestart` and `createRuntime`
/// hooks when it asks, passes on its failure.
fn follow_setup(plan: &Plan, chan: &Channel, pid: i32) -> Result<(), CreateError> {
    loop {
        match chan.recv() {
            Ok(Some(Msg::RunHooks)) => {
                let state = hooks::state(
                    &plan.id,
                    ContainerState::Creating,
                    pid,
                    &plan.bundle,
                    &plan.annotations,
                );
                hooks::run("prestart", plan.hooks.prestart().as_deref(), &state)?;
                hooks::run(
                    "createRuntime",
                    plan.hooks.create_runtime().as_deref(),
                    &state,
                )?;
                chan.send(&Msg::HooksDone)?;
            }
            Ok(Some(Msg::Ready)) => return Ok(()),
            Ok(Some(Msg::Failed(why))) => return Err(CreateError::InContainer(why)),
            Ok(Some(_)) => return Err(CreateError::Lost("sent an unexpected message")),
            Ok(None) => return Err(CreateError::Lost("died during set-up")),
            Err(_) => return Err(CreateError::Lost("did not finish its set-up in time")),
        }
    }
}

/// Writes the pid file atomically (a new file renamed into place), as runc does.
fn write_pid_file(path: &Path, pid: i32) -> Result<(), CreateError> {
    let err = |source| CreateError::PidFile {
        path: path.to_owned(),
        source,
    };
    let name = path
        .file_name()
        .ok_or_else(|| err(std::io::ErrorKind::InvalidInput.into()))?;
    let staging = path.with_file_name(format!(".{}.new", name.to_string_lossy()));
    std::fs::write(&staging, pid.to_string()).map_err(err)?;
    std::fs::rename(&staging, path).map_err(err)
}
