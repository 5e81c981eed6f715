//! `vmm fleet`: many microVMs from one VMM process, each its own VM with its own memory and
//! vCPU, booted C at a time on a pool of worker threads; with `--resident`, all kept alive at
//! once to measure density.
//!
//! - [`manifest`]: the `--manifest` file; [`report`]: what a fleet reports, as a table or JSON;
//! - `scheduler`: the threads that create VMs ahead, boot, park and release instances, and
//!   destroy the finished VMs;
//! - `hostmem`: host memory readings for the density figures.
//!
//! Instances share nothing but the read-only targets and the open `/dev/kvm`: each has its
//! own guest RAM, vCPU, console buffers and exit status. Every thread that touches a VM
//! (creator, worker, reaper) is sandboxed with the `FleetWorker` seccomp filter (the run loop's,
//! plus the ioctls that create a VM). Every
//! input is bounded: instances in all, worker threads, timeouts.

mod hostmem;
pub mod manifest;
pub mod report;
mod scheduler;

pub use report::{FleetReport, FleetSummary, InstanceResult, format_json, format_table};
pub use scheduler::MAX_CORES;

use crate::launch::{LaunchError, Target, TargetError};
use crate::vm::{VmConfig, VmError};
use std::path::PathBuf;

/// Most instances one fleet runs (across all groups).
pub const MAX_INSTANCES: usize = 100_000;
/// Most worker threads.
pub const MAX_CONCURRENCY: usize = 1024;

/// Errors before any instance runs.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A target is unusable.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// A group cannot run with its settings.
    #[error("{group}")]
    Group {
        /// The group's name.
        group: String,
        /// Why.
        #[source]
        source: LaunchError,
    },
    /// The manifest is unusable.
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    /// `/dev/kvm` could not be opened.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// More instances than a fleet runs.
    #[error("{0} instances requested; a fleet runs at most {MAX_INSTANCES}")]
    TooManyInstances(u128),
    /// Nothing to run.
    #[error("no instances to run (--count 0)")]
    NoInstances,
    /// `--concurrency` is out of range.
    #[error("--concurrency {0} is out of range (1 to {MAX_CONCURRENCY})")]
    Concurrency(usize),
    /// An instance's network device could not be set up.
    #[error("{instance}")]
    Net {
        /// Which instance, as its template numbers it: `instance N` of the fleet-wide `--net`,
        /// or `[[vm]] NAME instance N` of a manifest entry's own `net` (counted in the entry).
        instance: String,
        /// Why.
        #[source]
        source: crate::net::NetError,
    },
    /// Not even one worker thread could be started.
    #[error("cannot start worker threads")]
    Spawn(#[source] std::io::Error),
    /// `--cores` does not name a folder.
    #[error("--cores {0}: not a folder")]
    CoresDir(PathBuf),
}

/// One kind of instance: a target with its settings, `count` times.
#[derive(Debug, Clone)]
pub struct Group {
    /// A short name for reports (the target's file name by default).
    pub name: String,
    /// The image or snapshot.
    pub image: PathBuf,
    /// How many instances.
    pub count: usize,
    /// Each instance's settings.
    pub vm: VmConfig,
    /// The group's own network device (a manifest's `net`): its instance `k` (counted within
    /// the group) gets the tap named with `{i}` replaced by `k` and the address plus `k`.
    /// Without it, the fleet-wide [`FleetSpec::net`], if any.
    pub net: Option<crate::net::NetSpec>,
}

/// A whole fleet.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// The kinds of instance, run interleaved.
    pub groups: Vec<Group>,
    /// Worker threads.
    pub concurrency: usize,
    /// Keep every instance alive at once (the guests park in [`abi::port::WAIT`]).
    pub resident: bool,
    /// Run the next instance of a group in the VM of one that exited cleanly, returned to a
    /// fresh VM's state (`vm::recycle`), instead of destroying it and taking a new one.
    pub reuse: bool,
    /// Sandbox the workers.
    pub seccomp: bool,
    /// Write the cores of the first crashed instances (at most `MAX_CORES`) to this folder.
    pub cores: Option<PathBuf>,
    /// A network device for every instance of a group without a `net` of its own (`--net`):
    /// instance `n` (counted across the whole fleet, in boot order) gets the tap named with
    /// `{i}` replaced by `n` and the address plus `n` (see
    /// [`crate::net::NetSpec::for_instance`]). Every tap is attached before the first
    /// instance boots.
    pub net: Option<crate::net::NetSpec>,
}

/// A group with its target opened and checked.
struct Prepared {
    group: Group,
    target: Target,
}

/// Runs the fleet.
pub fn run_fleet(spec: &FleetSpec) -> Result<FleetReport, FleetError> {
    if spec.concurrency == 0 || spec.concurrency > MAX_CONCURRENCY {
        return Err(FleetError::Concurrency(spec.concurrency));
    }
    let total: u128 = spec.groups.iter().map(|g| g.count as u128).sum();
    if total > MAX_INSTANCES as u128 {
        return Err(FleetError::TooManyInstances(total));
    }
    if total == 0 {
        return Err(FleetError::NoInstances);
    }
    if let Some(dir) = &spec.cores
        && !dir.is_dir()
    {
        return Err(FleetError::CoresDir(dir.clone()));
    }
    let prepared = prepare(spec)?;
    scheduler::run(spec, &prepared, total as usize)
}

/// Opens each distinct target once and checks every group against it.
fn prepare(spec: &FleetSpec) -> Result<Vec<Prepared>, FleetError> {
    let mut opened: Vec<Target> = Vec::new();
    let mut prepared = Vec::new();
    for group in &spec.groups {
        let target = match opened.iter().find(|t| t.path() == group.image) {
            Some(target) => target.clone(),
            None => {
                let target = Target::open(&group.image)?;
                opened.push(target.clone());
                target
            }
        };
        let mut group = group.clone();
        group.vm.seccomp = spec.seccomp;
        crate::launch::check(&target, &group.vm).map_err(|source| FleetError::Group {
            group: group.name.clone(),
            source,
        })?;
        prepared.push(Prepared { group, target });
    }
    Ok(prepared)
}
