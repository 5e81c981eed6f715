//! `vmm serve` and `vmm run --via`: a server that keeps VMs ready and runs requests in them, and
//! the client that makes `run --via` behave like a local `vmm run`.
//!
//! - [`wire`]: the protocol (request, frames), described once;
//! - `server`: the acceptor and the runner threads; `pool`: the ready VMs and their refill;
//! - [`client`]: `vmm run --via`.
//!
//! The server keeps, for every snapshot named at start, `pool` VMs created (VM, memory slot,
//! vCPU) with the snapshot's pages already in place. A request takes one, rewrites its boot
//! info, runs it, streams the guest's output back and sends the exit status; the VM is then
//! destroyed and the refill thread creates a replacement. Requests for anything else (an
//! image, or a snapshot not pooled) are served cold through the launcher.

pub mod client;
mod pool;
mod server;
pub mod wire;

pub use client::{ClientError, run_via};
pub use server::serve;
pub use wire::Request;

use crate::launch::TargetError;
use crate::vm::VmError;
use std::path::PathBuf;
use std::time::Duration;

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket could not be set up.
    #[error("cannot listen on {path}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start the server's threads")]
    Spawn(#[source] std::io::Error),
    /// A pooled snapshot is unusable.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// `--snapshot` named an image.
    #[error("--snapshot {0}: not a snapshot")]
    NotASnapshot(PathBuf),
    /// KVM is unusable.
    #[error(transparent)]
    Vm(#[from] VmError),
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The Unix socket.
    pub socket: PathBuf,
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
}
