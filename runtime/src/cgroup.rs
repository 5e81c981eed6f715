//! The container's cgroup, through youki's `libcgroups` (cgroup v1, hybrid, v2 and systemd):
//! made and limited at `create`, holding the VMM, removed at `delete`. Because the VMM is the
//! container's process, `docker run --memory/--cpus/--pids-limit` limit the VM.

use libcgroups::common::{
    AnyCgroupManager, AnyManagerError, CgroupConfig, CgroupManager, ControllerOpt,
    CreateCgroupSetupError,
};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;
use std::path::Path;

/// Errors of the container's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The cgroup hierarchy could not be used.
    #[error("cannot set up the cgroup {path}")]
    Setup {
        /// The cgroup path.
        path: String,
        /// Why.
        #[source]
        source: Box<CreateCgroupSetupError>,
    },
    /// Limits could not be applied, the process not added, or the cgroup not removed.
    #[error("cannot {what} the cgroup {path}")]
    Manage {
        /// What failed.
        what: &'static str,
        /// The cgroup path.
        path: String,
        /// Why.
        #[source]
        source: Box<AnyManagerError>,
    },
}

/// A container's cgroup.
pub struct Cgroup {
    manager: AnyCgroupManager,
    path: String,
}

impl Cgroup {
    /// The cgroup at `path` (`linux.cgroupsPath`) of container `id`; made when first used.
    pub fn new(path: &Path, id: &str, systemd: bool) -> Result<Self, CgroupError> {
        let config = CgroupConfig {
            cgroup_path: path.to_owned(),
            systemd_cgroup: systemd,
            container_name: id.to_owned(),
        };
        let manager = libcgroups::common::create_cgroup_manager(config).map_err(|source| {
            CgroupError::Setup {
                path: path.display().to_string(),
                source: Box::new(source),
            }
        })?;
        Ok(Self {
            manager,
            path: path.display().to_string(),
        })
    }

    /// Applies the resource limits.
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        let options = ControllerOpt {
            resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        };
        self.manager
            .apply(&options)
            .map_err(|source| self.error("limit", source))
    }

    /// Moves `pid` into the cgroup.
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        self.manager
            .add_task(Pid::from_raw(pid))
            .map_err(|source| self.error("join", source))
    }

    /// Every process in the cgroup.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        self.manager
            .get_all_pids()
            .map(|pids| pids.into_iter().map(Pid::as_raw).collect())
            .map_err(|source| self.error("list the processes of", source))
    }

    /// Kills what is left in the cgroup and removes it.
    pub fn remove(&self) -> Result<(), CgroupError> {
        self.manager
            .remove()
            .map_err(|source| self.error("remove", source))
    }

    fn error(&self, what: &'static str, source: AnyManagerError) -> CgroupError {
        CgroupError::Manage {
            what,
            path: self.path.clone(),
            source: Box::new(source),
        }
    }
}
