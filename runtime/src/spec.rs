//! Reads a bundle's `config.json` (with `oci-spec`) into a [`Plan`]: everything the runtime
//! does for one container, checked once, before anything is created.
//!
//! What of the runtime spec a microVM uses, and what it does not:
//! - `process.args`: `args[0]` is the entrypoint (our images set it to the image file) and
//!   names the app's program; `args[1..]` are the app's arguments. `process.env` is the app's
//!   environment. `process.terminal` selects the console socket.
//! - `linux.resources.memory.limit` sizes guest RAM (see [`guest_ram`]); all resources go to
//!   the container's cgroup, which holds the VMM, so CPU, pids and memory limits apply to it.
//! - `linux.namespaces`: created or joined (a path); a mount namespace is always made, since
//!   the runtime pivots into the root file system. User and time namespaces are refused.
//! - `hooks`, `hostname`, `root.readonly`, `process.rlimits`, `process.noNewPrivileges`,
//!   `process.capabilities`, `process.user`: as runc does (a user other than root also gets
//!   `/dev/kvm`'s group, which the VMM needs).
//! - Not applied, because the guest has no file system, no devices and no system calls of its
//!   own: `mounts` (the VMM sees only the root file system and `/dev/kvm`), `linux.devices`,
//!   `linux.seccomp` (the VMM confines its run loop with its own, narrower filter),
//!   `maskedPaths`, `readonlyPaths`, AppArmor and SELinux labels, `process.cwd`.

use crate::marker::{self, IMAGE_ANNOTATION};
use nix::sched::CloneFlags;
use oci_spec::runtime::{
    Hooks, LinuxCapabilities, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    LinuxNamespaceType, LinuxResources, PosixRlimit, Spec,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Guest RAM when the container has no memory limit: `vmm run`'s default (16 MiB).
pub fn default_guest_ram() -> u64 {
    vmm::VmConfig::default().mem_size
}

/// What a memory limit keeps for the VMM itself: its peak RSS booting `hello` is about 2 MiB,
/// plus the kernel memory KVM charges to the cgroup (vCPU, page tables), about 1 MiB.
pub const VMM_HEADROOM: u64 = 4 << 20;

/// `/dev/kvm`'s device numbers (major, minor): allowed in the container's device cgroup,
/// made in its `/dev`.
pub const KVM_DEVICE: (u64, u64) = (10, 232);

/// `/dev/net/tun`'s device numbers: allowed in the container's device cgroup, for the tap
/// that joins the guest to the container's network (Docker allows it already).
pub const TUN_DEVICE: (u64, u64) = (10, 200);

/// Errors of [`Plan::from_bundle`].
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The bundle directory does not exist.
    #[error("bundle {0} does not exist")]
    NoBundle(PathBuf),
    /// config.json is missing or not a runtime spec.
    #[error("malformed config.json in {path}")]
    Malformed {
        /// The bundle.
        path: PathBuf,
        /// Why.
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// A required part is missing.
    #[error("config.json has no {0}")]
    Missing(&'static str),
    /// A namespace kind the runtime does not support.
    #[error("config.json asks for a {0} namespace, which flick-runtime does not support")]
    UnsupportedNamespace(String),
    /// An environment entry is not `KEY=VALUE`.
    #[error("config.json has an invalid environment entry '{0}' (expected KEY=VALUE)")]
    BadEnv(String),
    /// The image annotation is unusable.
    #[error("annotation {IMAGE_ANNOTATION}")]
    BadAnnotation(#[source] marker::MarkerError),
    /// The memory limit leaves too little guest RAM.
    #[error("memory limit of {limit} bytes: after the VMM's {headroom} MiB the guest RAM is unusable", headroom = VMM_HEADROOM >> 20)]
    MemoryLimit {
        /// The limit.
        limit: i64,
        /// Why.
        #[source]
        source: vmm::LaunchError,
    },
}

/// One namespace of the container: made anew, or joined at `path`.
#[derive(Debug, Clone)]
pub struct NamespacePlan {
    /// The namespace's kind.
    pub kind: CloneFlags,
    /// A namespace to join instead of a new one.
    pub path: Option<PathBuf>,
}

/// Everything the runtime does for one container.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The container's id.
    pub id: String,
    /// The bundle, absolute.
    pub bundle: PathBuf,
    /// The root file system, absolute.
    pub rootfs: PathBuf,
    /// Mount the root file system read-only.
    pub root_readonly: bool,
    /// `config.json`'s annotations.
    pub annotations: HashMap<String, String>,
    /// The image path the annotation gives, checked.
    pub image_annotation: Option<String>,
    /// The app's arguments (after its program name).
    pub args: Vec<String>,
    /// The app's environment, `KEY=VALUE` each.
    pub env: Vec<String>,
    /// Give the container a terminal (through `--console-socket`).
    pub terminal: bool,
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Namespaces, in the order they are joined or made.
    pub namespaces: Vec<NamespacePlan>,
    /// The hostname, set in a new UTS namespace.
    pub hostname: Option<String>,
    /// The cgroup path (`linux.cgroupsPath`, or a default under `flick`).
    pub cgroups_path: PathBuf,
    /// Resources for the cgroup, `/dev/kvm` allowed.
    pub resources: LinuxResources,
    /// `oom_score_adj` for the VMM.
    pub oom_score_adj: Option<i32>,
    /// Lifecycle hooks.
    pub hooks: Hooks,
    /// Resource limits of the VMM process.
    pub rlimits: Vec<PosixRlimit>,
    /// Set `no_new_privs`.
    pub no_new_privileges: bool,
    /// The VMM's capabilities (`None`: keep the runtime's).
    pub capabilities: Option<LinuxCapabilities>,
    /// The VMM's user and group ids, and its additional groups.
    pub user: (u32, u32, Vec<u32>),
}

impl Plan {
    /// Reads `bundle/config.json` for container `id`.
    pub fn from_bundle(id: &str, bundle: &Path, systemd_cgroup: bool) -> Result<Self, SpecError> {
        let bundle =
            std::fs::canonicalize(bundle).map_err(|_| SpecError::NoBundle(bundle.to_owned()))?;
        let spec =
            Spec::load(bundle.join("config.json")).map_err(|source| SpecError::Malformed {
                path: bundle.clone(),
                source,
            })?;
        Self::from_spec(id, &bundle, &spec, systemd_cgroup)
    }

    /// The plan for `spec` of a bundle at `bundle` (absolute).
    pub fn from_spec(
        id: &str,
        bundle: &Path,
        spec: &Spec,
        systemd_cgroup: bool,
    ) -> Result<Self, SpecError> {
        let process = spec
            .process()
            .as_ref()
            .ok_or(SpecError::Missing("process"))?;
        let args = process.args().as_deref().unwrap_or_default();
        if args.is_empty() {
            return Err(SpecError::Missing("process.args"));
        }
        let env = process.env().clone().unwrap_or_default();
        if let Some(bad) = env.iter().find(|e| !valid_env(e)) {
            return Err(SpecError::BadEnv(bad.clone()));
        }
        let root = spec.root().as_ref().ok_or(SpecError::Missing("root"))?;
        let rootfs = bundle.join(root.path());
        let annotations = spec.annotations().clone().unwrap_or_default();
        let image_annotation = annotations.get(IMAGE_ANNOTATION).cloned();
        if let Some(path) = &image_annotation {
            marker::check_image_path(path).map_err(SpecError::BadAnnotation)?;
        }
        let linux = spec.linux().as_ref();
        let mut resources = linux
            .and_then(|l| l.resources().clone())
            .unwrap_or_default();
        let limit = resources.memory().as_ref().and_then(|m| m.limit());
        let mem_size = guest_ram(limit)?;
        allow_devices(&mut resources);
        let namespaces = namespaces(linux.and_then(|l| l.namespaces().as_deref()))?;
        let new_uts = namespaces
            .iter()
            .any(|n| n.kind == CloneFlags::CLONE_NEWUTS && n.path.is_none());
        let cgroups_path = linux
            .and_then(|l| l.cgroups_path().clone())
            .unwrap_or_else(|| default_cgroups_path(id, systemd_cgroup));
        Ok(Plan {
            id: id.to_owned(),
            bundle: bundle.to_owned(),
            rootfs,
            root_readonly: root.readonly().unwrap_or(false),
            annotations,
            image_annotation,
            args: args[1..].to_vec(),
            env,
            terminal: process.terminal().unwrap_or(false),
            mem_size,
            namespaces,
            hostname: spec.hostname().clone().filter(|_| new_uts),
            cgroups_path,
            resources,
            oom_score_adj: process.oom_score_adj(),
            hooks: spec.hooks().clone().unwrap_or_default(),
            rlimits: process.rlimits().clone().unwrap_or_default(),
            no_new_privileges: process.no_new_privileges().unwrap_or(false),
            capabilities: process.capabilities().clone(),
            user: (
                process.user().uid(),
                process.user().gid(),
                process.user().additional_gids().clone().unwrap_or_default(),
            ),
        })
    }

    /// The flags of the namespaces made anew.
    pub fn new_namespace_flags(&self) -> CloneFlags {
        self.namespaces
            .iter()
            .filter(|n| n.path.is_none())
            .fold(CloneFlags::empty(), |all, n| all | n.kind)
    }
}

/// Guest RAM for a memory limit: the limit less [`VMM_HEADROOM`], rounded down to 2 MiB and
/// capped at the VMM's maximum; [`default_guest_ram`] without a limit (none, 0 or -1).
pub fn guest_ram(limit: Option<i64>) -> Result<u64, SpecError> {
    use vmm::arch::layout::{LARGE_PAGE_SIZE, MAX_MEM_SIZE};
    let Some(limit) = limit.filter(|l| *l > 0) else {
        return Ok(default_guest_ram());
    };
    let usable = (limit as u64)
        .saturating_sub(VMM_HEADROOM)
        .min(MAX_MEM_SIZE);
    let ram = usable - usable % LARGE_PAGE_SIZE;
    vmm::launch::check_mem_size(ram).map_err(|source| SpecError::MemoryLimit { limit, source })?;
    Ok(ram)
}

/// `KEY=VALUE` with a non-empty key and no NUL, as `vmm run --env` takes it.
fn valid_env(entry: &str) -> bool {
    matches!(entry.split_once('='), Some((key, _)) if !key.is_empty()) && !entry.contains('\0')
}

/// Adds `rw` on `/dev/kvm` and `/dev/net/tun` to the device allowlist (after Docker's
/// deny-all).
fn allow_devices(resources: &mut LinuxResources) {
    let mut devices = resources.devices().clone().unwrap_or_default();
    for (major, minor) in [KVM_DEVICE, TUN_DEVICE] {
        let rule: LinuxDeviceCgroup = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(major as i64)
            .minor(minor as i64)
            .access("rw")
            .build()
            .expect("every field of the rule is set");
        devices.push(rule);
    }
    resources.set_devices(Some(devices));
}

fn namespaces(
    given: Option<&[oci_spec::runtime::LinuxNamespace]>,
) -> Result<Vec<NamespacePlan>, SpecError> {
    let mut plans = Vec::new();
    for ns in given.unwrap_or_default() {
        let kind = match ns.typ() {
            LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
            LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
            LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
            LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
            LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
            LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
            other @ (LinuxNamespaceType::User | LinuxNamespaceType::Time) => {
                return Err(SpecError::UnsupportedNamespace(other.to_string()));
            }
        };
        plans.push(NamespacePlan {
            kind,
            path: ns.path().clone(),
        });
    }
    if !plans.iter().any(|n| n.kind == CloneFlags::CLONE_NEWNS) {
        plans.push(NamespacePlan {
            kind: CloneFlags::CLONE_NEWNS,
            path: None,
        });
    }
    Ok(plans)
}

/// runc's defaults: `/ID` under cgroupfs (here under `flick/`), `system.slice:flick:ID`
/// under systemd.
fn default_cgroups_path(id: &str, systemd_cgroup: bool) -> PathBuf {
    if systemd_cgroup {
        PathBuf::from(format!("system.slice:flick:{id}"))
    } else {
        PathBuf::from(format!("/flick/{id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_json(extra: serde_json::Value) -> Spec {
        let mut base = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": { "args": ["/hello", "a", "b"], "env": ["PATH=/bin", "X=1"], "cwd": "/", "user": { "uid": 0, "gid": 0 } },
            "root": { "path": "rootfs" },
            "linux": { "namespaces": [{ "type": "pid" }, { "type": "network" }] }
        });
        for (key, value) in extra.as_object().unwrap() {
            base[key] = value.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    fn plan(extra: serde_json::Value) -> Result<Plan, SpecError> {
        Plan::from_spec("c1", Path::new("/b"), &spec_json(extra), false)
    }

    #[test]
    fn test_plan_args_after_the_entrypoint_are_the_apps() {
        let plan = plan(serde_json::json!({})).unwrap();
        assert_eq!(plan.args, ["a", "b"]);
        assert_eq!(plan.env, ["PATH=/bin", "X=1"]);
        assert_eq!(plan.rootfs, Path::new("/b/rootfs"));
        assert_eq!(plan.cgroups_path, Path::new("/flick/c1"));
    }

    #[test]
    fn test_plan_always_has_a_mount_namespace() {
        let plan = plan(serde_json::json!({})).unwrap();
        let flags = plan.new_namespace_flags();
        assert!(flags.contains(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID));
        assert!(!flags.contains(CloneFlags::CLONE_NEWUTS));
    }

    #[test]
    fn test_plan_user_namespace_is_refused() {
        let err = plan(serde_json::json!({ "linux": { "namespaces": [{ "type": "user" }] } }));
        assert!(matches!(err, Err(SpecError::UnsupportedNamespace(_))));
    }

    #[test]
    fn test_plan_without_process_is_refused() {
        let mut spec = spec_json(serde_json::json!({}));
        spec.set_process(None);
        let err = Plan::from_spec("c1", Path::new("/b"), &spec, false);
        assert!(matches!(err, Err(SpecError::Missing("process"))));
    }

    #[test]
    fn test_plan_bad_env_entry_is_refused() {
        let err = plan(
            serde_json::json!({ "process": { "args": ["/x"], "env": ["NOEQUALS"], "cwd": "/", "user": { "uid": 0, "gid": 0 } } }),
        );
        assert!(matches!(err, Err(SpecError::BadEnv(_))));
    }

    #[test]
    fn test_plan_annotation_escaping_the_rootfs_is_refused() {
        let err = plan(serde_json::json!({ "annotations": { IMAGE_ANNOTATION: "/../x" } }));
        assert!(matches!(err, Err(SpecError::BadAnnotation(_))));
    }

    #[test]
    fn test_plan_allows_dev_kvm_and_tun_after_the_given_rules() {
        let plan = plan(serde_json::json!({
            "linux": { "resources": { "devices": [{ "allow": false, "access": "rwm" }] } }
        }))
        .unwrap();
        let devices = plan.resources.devices().clone().unwrap();
        assert_eq!(devices.len(), 3);
        assert!(devices[1].allow() && devices[2].allow());
        assert_eq!(
            (devices[1].major(), devices[1].minor()),
            (Some(10), Some(232))
        );
        assert_eq!(
            (devices[2].major(), devices[2].minor()),
            (Some(10), Some(200))
        );
    }

    #[test]
    fn test_guest_ram_64m_limit_leaves_headroom() {
        assert_eq!(guest_ram(Some(64 << 20)).unwrap(), 60 << 20);
    }

    #[test]
    fn test_guest_ram_rounds_down_to_2m() {
        assert_eq!(guest_ram(Some((100 << 20) + 12345)).unwrap(), 96 << 20);
    }

    #[test]
    fn test_guest_ram_no_limit_is_the_default() {
        assert_eq!(guest_ram(None).unwrap(), 16 << 20);
        assert_eq!(guest_ram(Some(-1)).unwrap(), 16 << 20);
    }

    #[test]
    fn test_guest_ram_tiny_limit_is_refused() {
        assert!(matches!(
            guest_ram(Some(6 << 20)),
            Err(SpecError::MemoryLimit { .. })
        ));
    }

    #[test]
    fn test_guest_ram_huge_limit_is_capped() {
        let capped = guest_ram(Some(1 << 40)).unwrap();
        assert_eq!(capped, vmm::arch::layout::MAX_MEM_SIZE);
    }
}
