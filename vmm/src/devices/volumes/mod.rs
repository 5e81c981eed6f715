//! Volumes: host directories shared with a guest under guest paths (`--volume
//! HOST_DIR:GUEST_PATH[:ro]`), and the device through which the guest uses them ([`device`]).
//!
//! The capability model is WASI's preopened directories. The VMM opens each host directory
//! once, at start, before any sandbox is installed ([`Volume::open`]); from then on the guest
//! can only name paths under a volume's guest path, and the VMM resolves each one beneath that
//! directory's fd with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` ([`resolve`]), so
//! that `..`, absolute symlinks, symlinks pointing out and `/proc/self/...` links cannot leave
//! it, whatever the guest or the host's other processes do meanwhile. Operations that change a
//! directory (create, remove, rename) first resolve the parent the same way and then act on a
//! single name in it. `:ro` is enforced here: open flags that could write are refused, and so
//! is every operation that changes the tree.

pub(crate) mod device;
pub(crate) mod resolve;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Most volumes one guest gets.
pub const MAX_VOLUMES: usize = 32;

/// A file descriptor shared by every guest that uses it (a volume's directory, a fleet's stdin
/// file); equal only to itself.
#[derive(Clone)]
pub struct SharedFd(Arc<OwnedFd>);

impl SharedFd {
    /// Shares `fd`.
    pub fn new(fd: OwnedFd) -> Self {
        Self(Arc::new(fd))
    }

    /// The fd, borrowed.
    pub fn borrow(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl std::fmt::Debug for SharedFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fd {}", self.0.as_raw_fd())
    }
}

impl PartialEq for SharedFd {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SharedFd {}

/// Why a volume cannot be given to a guest.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// Not `HOST_DIR:GUEST_PATH[:ro]`.
    #[error("volume {0:?}: expected HOST_DIR:GUEST_PATH[:ro]")]
    Syntax(String),
    /// The guest path is unusable.
    #[error("volume {spec:?}: guest path {why}")]
    GuestPath {
        /// The volume as given.
        spec: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The host directory cannot be opened.
    #[error("volume {spec:?}: cannot open {host} as a directory")]
    Open {
        /// The volume as given.
        spec: String,
        /// The host directory.
        host: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Two volumes at one guest path.
    #[error("two volumes at guest path {0}")]
    Duplicate(String),
    /// More volumes than a guest gets.
    #[error("{0} volumes; a guest gets at most {MAX_VOLUMES}")]
    TooMany(usize),
    /// The host kernel has no `openat2` (Linux 5.6 or later), which confinement needs.
    #[error("volume {0:?}: volumes need Linux 5.6 or later (the openat2 system call)")]
    NoOpenat2(String),
    /// A server's request named a directory outside every directory the server shares.
    #[error("volume {0:?}: not under a directory this server shares (vmm serve --volume-root)")]
    NotShared(String),
}

/// A volume as given on the command line, in a manifest or in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// The host directory.
    pub host: PathBuf,
    /// Where the guest sees it: an absolute path, `/` allowed.
    pub guest: String,
    /// The guest may only read.
    pub read_only: bool,
}

impl VolumeSpec {
    /// Parses `HOST_DIR:GUEST_PATH`, `HOST_DIR:GUEST_PATH:ro` or `...:rw` (a host path may
    /// hold `:`; a guest path may not).
    pub fn parse(text: &str) -> Result<Self, VolumeError> {
        let syntax = || VolumeError::Syntax(text.to_owned());
        let (rest, read_only) = match text.rsplit_once(':') {
            Some((rest, "ro")) => (rest, true),
            Some((rest, "rw")) => (rest, false),
            _ => (text, false),
        };
        let (host, guest) = rest.rsplit_once(':').ok_or_else(syntax)?;
        if host.is_empty() || guest.is_empty() {
            return Err(syntax());
        }
        let spec = Self {
            host: PathBuf::from(host),
            guest: guest.to_owned(),
            read_only,
        };
        spec.guest_components()?;
        Ok(spec)
    }

    /// The guest path's components; refuses what is not a plain absolute path.
    fn guest_components(&self) -> Result<Vec<Vec<u8>>, VolumeError> {
        let bad = |why| VolumeError::GuestPath {
            spec: self.to_string(),
            why,
        };
        let guest = self.guest.as_bytes();
        if guest.first() != Some(&b'/') {
            return Err(bad("must be absolute"));
        }
        if guest.len() > abi::fs::PATH_MAX as usize {
            return Err(bad("is too long"));
        }
        if guest.contains(&0) {
            return Err(bad("contains a NUL byte"));
        }
        let parts: Vec<&[u8]> = guest
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        if parts.iter().any(|c| *c == b"." || *c == b"..") {
            return Err(bad("must not contain . or .."));
        }
        Ok(parts.into_iter().map(<[u8]>::to_vec).collect())
    }
}

impl std::fmt::Display for VolumeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = if self.read_only { ":ro" } else { "" };
        write!(f, "{}:{}{mode}", self.host.display(), self.guest)
    }
}

/// A volume with its host directory open: what a guest's volume device uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    spec: VolumeSpec,
    components: Vec<Vec<u8>>,
    dir: SharedFd,
}

impl Volume {
    /// Opens the host directory of `spec` (`O_PATH`: a handle to resolve beneath, no access
    /// by itself).
    pub fn open(spec: &VolumeSpec) -> Result<Self, VolumeError> {
        let components = spec.guest_components()?;
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(&spec.host)
            .map_err(|source| VolumeError::Open {
                spec: spec.to_string(),
                host: spec.host.clone(),
                source,
            })?;
        // Every lookup will go through openat2: find out now whether the host has it.
        let probe = resolve::open_beneath(dir.as_fd(), c".", libc::O_PATH, 0);
        if probe.is_err() && resolve::last_errno() == libc::ENOSYS {
            return Err(VolumeError::NoOpenat2(spec.to_string()));
        }
        Ok(Self {
            spec: spec.clone(),
            components,
            dir: SharedFd::new(dir.into()),
        })
    }

    /// Opens every volume of `specs`, checking their number and that no two share a guest
    /// path.
    pub fn open_all(specs: &[VolumeSpec]) -> Result<Vec<Self>, VolumeError> {
        Self::open_each(specs, Self::open)
    }

    /// Opens every volume of `specs` with `open`, checking their number (before opening any)
    /// and that no two share a guest path.
    fn open_each(
        specs: &[VolumeSpec],
        open: impl Fn(&VolumeSpec) -> Result<Self, VolumeError>,
    ) -> Result<Vec<Self>, VolumeError> {
        if specs.len() > MAX_VOLUMES {
            return Err(VolumeError::TooMany(specs.len()));
        }
        let volumes = specs.iter().map(open).collect::<Result<Vec<_>, _>>()?;
        for (i, volume) in volumes.iter().enumerate() {
            if volumes[..i]
                .iter()
                .any(|v| v.components == volume.components)
            {
                return Err(VolumeError::Duplicate(volume.spec.guest.clone()));
            }
        }
        Ok(volumes)
    }

    /// What it was opened from.
    pub fn spec(&self) -> &VolumeSpec {
        &self.spec
    }

    /// The guest may only read.
    pub fn read_only(&self) -> bool {
        self.spec.read_only
    }

    /// The host directory.
    pub(crate) fn dir(&self) -> BorrowedFd<'_> {
        self.dir.borrow()
    }
}

/// The directories a server shares (`vmm serve --volume-root DIR`): a request's volumes must
/// lie beneath one of them, and are opened beneath its fd (`openat2(RESOLVE_BENEATH)`), so
/// that a symlink on the way cannot lead a client's volume out of them.
#[derive(Debug, Clone, Default)]
pub struct VolumeRoots(Vec<(PathBuf, SharedFd)>);

impl VolumeRoots {
    /// Opens each root (canonical paths: requests are matched against them).
    pub fn open(roots: &[PathBuf]) -> Result<Self, VolumeError> {
        let mut opened = Vec::new();
        for root in roots {
            let spec = VolumeSpec {
                host: root.clone(),
                guest: "/".into(),
                read_only: false,
            };
            let open_error = |source| VolumeError::Open {
                spec: spec.to_string(),
                host: root.clone(),
                source,
            };
            let canonical = std::fs::canonicalize(root).map_err(open_error)?;
            let volume = Volume::open(&VolumeSpec {
                host: canonical.clone(),
                ..spec.clone()
            })?;
            opened.push((canonical, volume.dir));
        }
        Ok(Self(opened))
    }

    /// Opens every volume of `specs` beneath these roots (see [`VolumeRoots::open_volume`]),
    /// with the checks of [`Volume::open_all`].
    pub fn open_all(&self, specs: &[VolumeSpec]) -> Result<Vec<Volume>, VolumeError> {
        Volume::open_each(specs, |spec| self.open_volume(spec))
    }

    /// Opens `spec`'s host directory (an absolute path without `..`) beneath the root that
    /// holds it.
    pub fn open_volume(&self, spec: &VolumeSpec) -> Result<Volume, VolumeError> {
        let not_shared = || VolumeError::NotShared(spec.to_string());
        let components = spec.guest_components()?;
        if !spec.host.is_absolute()
            || spec
                .host
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(not_shared());
        }
        let (root, rel) = self
            .0
            .iter()
            .find_map(|(root, fd)| Some((fd, spec.host.strip_prefix(root).ok()?)))
            .ok_or_else(not_shared)?;
        let rel: Vec<&[u8]> = rel
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(name) => Some(name.as_encoded_bytes()),
                _ => None,
            })
            .collect();
        let dir = resolve::open_beneath(
            root.borrow(),
            &resolve::relative(&rel),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
        .map_err(|code| VolumeError::Open {
            spec: spec.to_string(),
            host: spec.host.clone(),
            source: std::io::Error::other(describe(code)),
        })?;
        Ok(Volume {
            spec: spec.clone(),
            components,
            dir: SharedFd::new(dir),
        })
    }
}

/// Words for an `abi::errno` code, in errors the VMM reports itself.
fn describe(code: u32) -> &'static str {
    match code {
        abi::errno::NOT_FOUND => "no such directory",
        abi::errno::NOT_A_DIRECTORY => "not a directory",
        abi::errno::NOT_CAPABLE => "it leads outside the shared directory",
        abi::errno::PERMISSION_DENIED => "permission denied",
        _ => "cannot be opened",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_volume_spec_parses_modes_and_colons_in_host_paths() {
        let spec = VolumeSpec::parse("/srv/in:/data:ro").unwrap();
        assert_eq!(
            (spec.host.to_str(), spec.guest.as_str(), spec.read_only),
            (Some("/srv/in"), "/data", true)
        );
        assert!(!VolumeSpec::parse("/srv/out:/out").unwrap().read_only);
        assert!(!VolumeSpec::parse("/srv/out:/out:rw").unwrap().read_only);
        let colon = VolumeSpec::parse("/srv/a:b:/data").unwrap();
        assert_eq!(colon.host, PathBuf::from("/srv/a:b"));
        assert_eq!(spec.to_string(), "/srv/in:/data:ro");
    }

    #[test]
    fn test_volume_spec_refuses_bad_guest_paths() {
        for bad in [
            "/srv",
            ":/data",
            "/srv:",
            "/srv:data",
            "/srv:/data/../etc",
            "/srv:/./data",
        ] {
            assert!(VolumeSpec::parse(bad).is_err(), "{bad}");
        }
        assert!(
            VolumeSpec::parse("/srv:/").is_ok(),
            "a volume may be the whole tree"
        );
    }

    #[test]
    fn test_volume_open_refuses_files_and_missing_directories() {
        let file = VolumeSpec::parse("/proc/self/status:/data").unwrap();
        assert!(matches!(Volume::open(&file), Err(VolumeError::Open { .. })));
        let missing = VolumeSpec::parse("/nonexistent-flick-dir:/data").unwrap();
        assert!(matches!(
            Volume::open(&missing),
            Err(VolumeError::Open { .. })
        ));
    }

    #[test]
    fn test_volume_roots_open_only_what_lies_beneath_them() {
        let base = std::env::temp_dir().join(format!("flick-roots-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("shared/in")).unwrap();
        std::fs::create_dir_all(base.join("private")).unwrap();
        std::os::unix::fs::symlink(base.join("private"), base.join("shared/out")).unwrap();
        let roots = VolumeRoots::open(&[base.join("shared")]).unwrap();
        let spec = |host: PathBuf| VolumeSpec {
            host,
            guest: "/d".into(),
            read_only: true,
        };
        assert!(roots.open_volume(&spec(base.join("shared/in"))).is_ok());
        assert!(roots.open_volume(&spec(base.join("shared"))).is_ok());
        for refused in [
            base.join("private"),
            base.join("shared/../private"),
            base.join("shared/out"),
            PathBuf::from("shared/in"),
            PathBuf::from("/"),
        ] {
            assert!(
                roots.open_volume(&spec(refused.clone())).is_err(),
                "{refused:?}"
            );
        }
        assert!(
            VolumeRoots::default()
                .open_volume(&spec(base.join("shared")))
                .is_err()
        );
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn test_volume_open_all_refuses_duplicate_guest_paths() {
        let specs = [
            VolumeSpec::parse("/tmp:/data").unwrap(),
            VolumeSpec::parse("/:/data/").unwrap(),
        ];
        assert!(matches!(
            Volume::open_all(&specs),
            Err(VolumeError::Duplicate(_))
        ));
    }
}
