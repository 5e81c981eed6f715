//! `vmm serve` and `vmm run --via`: a server that keeps VMs ready and runs requests in them, and
//! the client that makes `run --via` behave like a local `vmm run`.
//!
//! - [`wire`]: the protocol (request, frames), described once;
//! - `server`: start-up (limits, threads, the ready line), the dispatcher and the runners;
//! - `socket`: claiming the socket path (owner-only, never over a live server or a file);
//! - `acceptor`: accepting connections and reading requests without ever blocking on a client;
//! - `targets`: opening a client's target (within `--allow`) and the bounded target cache;
//! - `taps`: which taps requests may give their guests (`--allow-tap`), and attaching them;
//! - `slots`: how a connection reaches its runner (reserved fds) and the runner's
//!   deadline-bounded reply;
//! - `pool`: the ready VMs and their refill; `log`: the request log, never in anyone's way;
//! - [`client`]: `vmm run --via`.
//!
//! The server keeps, for every snapshot named at start, `pool` VMs created (VM, memory slot,
//! vCPU) with the snapshot's pages already in place. A request takes one, rewrites its boot
//! info, runs it, streams the guest's output back and sends the exit status; the VM is then
//! destroyed and the refill thread creates a replacement. Requests for anything else (an
//! image, or a snapshot not pooled) are served cold through the launcher.
//!
//! A request's path through the threads, none of which waits on a client without a deadline:
//! the acceptor reads it (at most `--request-timeout` in all per connection), the dispatcher
//! opens and checks its target and hands the connection to an idle runner's slot, the runner
//! (sandboxed) runs the guest and sends the reply (until the request's timeout plus a grace),
//! and reports back; the dispatcher then closes the connection.

mod acceptor;
pub mod client;
mod log;
mod pool;
mod server;
mod slots;
mod socket;
mod taps;
mod targets;
pub mod wire;

pub use client::{ClientError, run_via};
pub use server::serve;
pub use socket::SocketError;
pub use wire::Request;

use crate::launch::TargetError;
use crate::vm::VmError;
use std::path::PathBuf;
use std::time::Duration;

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket could not be set up.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// A thread could not be started.
    #[error("cannot start the server's threads")]
    Spawn(#[source] std::io::Error),
    /// A thread could not confine itself.
    #[error("cannot sandbox the server's {thread} thread")]
    Sandbox {
        /// Which thread.
        thread: String,
        /// Why.
        #[source]
        source: crate::sandbox::SandboxError,
    },
    /// The server's descriptors could not be set up.
    #[error("cannot reserve the runners' client slots")]
    Slots(#[source] std::io::Error),
    /// A pooled snapshot is unusable.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// A `--volume-root` cannot be opened.
    #[error(transparent)]
    VolumeRoot(#[from] crate::devices::VolumeError),
    /// `--snapshot` named an image.
    #[error("--snapshot {0}: not a snapshot")]
    NotASnapshot(PathBuf),
    /// An `--allow` directory is unusable.
    #[error("--allow {path}")]
    Allow {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A socket others may connect to, with no limit on what they may run.
    #[error(
        "--socket-mode {mode:o} lets other users connect: name the directories whose files they may run with --allow DIR"
    )]
    OpenSocketWithoutAllow {
        /// The mode asked for.
        mode: u32,
    },
    /// A setting out of range.
    #[error("{0}")]
    BadConfig(String),
    /// The open-files limit is too low and cannot be raised.
    #[error(
        "serving needs up to {needed} open files ({why}), but RLIMIT_NOFILE allows at most {hard}: lower --pool or --workers, or raise the hard limit"
    )]
    FdLimit {
        /// What the server may hold at once.
        needed: u64,
        /// Where that number comes from.
        why: String,
        /// The hard limit.
        hard: u64,
    },
    /// The open-files limit could not be read or raised.
    #[error("cannot raise RLIMIT_NOFILE to {needed}")]
    SetFdLimit {
        /// What the server may hold at once.
        needed: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// KVM is unusable.
    #[error(transparent)]
    Vm(#[from] VmError),
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The Unix socket.
    pub socket: PathBuf,
    /// Permission bits of the socket (0o600: only the server's user may connect).
    pub socket_mode: u32,
    /// Directories whose files clients may run (empty: any file the server can read).
    pub allow: Vec<PathBuf>,
    /// Ready VMs kept per pooled snapshot.
    pub pool: usize,
    /// Snapshots to pool.
    pub snapshots: Vec<PathBuf>,
    /// Runner threads.
    pub workers: usize,
    /// Sandbox runners and the refill thread.
    pub seccomp: bool,
    /// The longest any request may run; requests without a timeout get this one, so that a
    /// guest that spins cannot hold a runner for ever.
    pub max_timeout: Duration,
    /// The longest a client may take to send its whole request.
    pub request_timeout: Duration,
    /// Bytes of validated targets kept in memory (file sizes), besides the pooled snapshots.
    pub cache_bytes: u64,
    /// No log line per request.
    pub quiet: bool,
    /// Reuse the VMs of pooled snapshots whose guests exited cleanly (`vm::recycle`).
    pub reuse: bool,
    /// The directories requests may share with their guests as volumes (none: requests with
    /// volumes are refused).
    pub volume_roots: Vec<PathBuf>,
    /// The taps requests may give their guests (`--net tap=NAME,...`): interface names in
    /// which `*` stands for any run of characters (none: requests with `net` are refused).
    pub allow_taps: Vec<String>,
}

impl ServeConfig {
    /// The defaults of `vmm serve`, for `socket`.
    pub fn new(socket: PathBuf) -> Self {
        Self {
            socket,
            socket_mode: 0o600,
            allow: Vec::new(),
            pool: 4,
            snapshots: Vec::new(),
            workers: 2,
            seccomp: true,
            max_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(5),
            cache_bytes: 256 << 20,
            quiet: false,
            reuse: true,
            volume_roots: Vec::new(),
            allow_taps: Vec::new(),
        }
    }
}
