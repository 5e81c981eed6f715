//! flick's OCI runtime: the container tooling people already use (Docker, containerd and,
//! through containerd's CRI, Kubernetes) starts a flick microVM where it would start a process.
//!
//! The binary `flick-runtime` speaks runc's command line (`create`, `start`, `state`, `kill`,
//! `delete`, `features`, `ps`), which is what containerd's runc shim calls. The container's
//! process is the VMM itself: it is forked by `create` into the container's namespaces and
//! cgroups, waits on an exec fifo as runc's init does, and on `start` boots the image with
//! [`vmm::launch::run`] in-process; the app's exit code is the container's.
//!
//! Always built (the xtask uses them without the runtime):
//! - [`marker`]: how an OCI image says which file in its root file system is the flick image;
//! - [`layout`]: writes an OCI image layout tarball of one flick image (`cargo xtask oci`);
//! - [`timefmt`]: RFC 3339 timestamps for both.
//!
//! With the `runtime` feature (the default): [`spec`] reads `config.json` into a plan,
//! [`container`] owns the state directory and status, [`create`] forks the container
//! process, [`init`] is that process, [`network`] gives its guest the container's network
//! interface, [`cgroup`], [`console`], [`hooks`], [`signals`] and [`commands`] do the rest,
//! and [`log`] writes the error line runc's callers read.

pub mod layout;
pub mod marker;
pub mod timefmt;

#[cfg(feature = "runtime")]
pub(crate) mod cgroup;
#[cfg(feature = "runtime")]
pub mod commands;
#[cfg(feature = "runtime")]
pub(crate) mod console;
#[cfg(feature = "runtime")]
pub mod container;
#[cfg(feature = "runtime")]
pub mod create;
#[cfg(feature = "runtime")]
pub(crate) mod hooks;
#[cfg(feature = "runtime")]
pub(crate) mod init;
#[cfg(feature = "runtime")]
pub mod log;
#[cfg(feature = "runtime")]
pub(crate) mod network;
#[cfg(feature = "runtime")]
pub(crate) mod signals;
#[cfg(feature = "runtime")]
pub(crate) mod spec;
