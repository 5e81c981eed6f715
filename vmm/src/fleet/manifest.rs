//! `vmm fleet --manifest FILE`: a TOML file of `[[vm]]` tables (`image`, `count`, `args`,
//! `env`, `mem`, `timeout`, `max_output`, `name`, `volumes`, `stdin`, `net`), read into
//! [`Group`]s.
//! Relative image, volume and stdin paths are relative to the manifest's folder. The file is
//! untrusted: its size, every count and their sum are bounded, arguments and environment are
//! checked like the command line's (when the launcher checks each group), volumes and stdin
//! files are opened here, on the main thread, as the command line's are.
//!
//! Every instance of an entry gets the entry's volumes (one open directory, shared) and its
//! `stdin` file from the start (each instance at an offset of its own); without `stdin`, an
//! empty standard input. An entry's `net` (`vmm run --net`'s text) gives each of its
//! instances a network device: instance `k` of the entry gets the tap named with `{i}`
//! replaced by `k` and the address plus `k`; it is checked here for every instance (names,
//! addresses inside the network), and the taps are attached when the fleet starts.

use super::{Group, MAX_INSTANCES};
use crate::devices::{StdinSource, Volume, VolumeSpec};
use crate::files::{ReadError, read_regular};
use crate::net::NetSpec;
use crate::size::{parse_size, parse_timeout};
use crate::vm::VmConfig;
use std::path::{Path, PathBuf};

/// Largest manifest read.
pub const MAX_MANIFEST_SIZE: u64 = 1 << 20;

/// Why a manifest cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Unreadable, not a regular file, or too large.
    #[error("manifest")]
    Read(#[from] ReadError),
    /// Not UTF-8 TOML of the expected shape.
    #[error("manifest {path}: {why}")]
    Syntax {
        /// The manifest.
        path: PathBuf,
        /// The parser's message.
        why: String,
    },
    /// An entry's field is invalid.
    #[error("manifest {path}: vm #{entry}: {field}: {why}")]
    Field {
        /// The manifest.
        path: PathBuf,
        /// 1-based entry number.
        entry: usize,
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The manifest as a whole is invalid.
    #[error("manifest {path}: {why}")]
    Invalid {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    vm: Vec<ManifestEntry>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestEntry {
    image: PathBuf,
    #[serde(default = "one")]
    count: u64,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    mem: Option<String>,
    timeout: Option<String>,
    max_output: Option<String>,
    name: Option<String>,
    volumes: Option<Vec<String>>,
    stdin: Option<PathBuf>,
    net: Option<String>,
}

fn one() -> u64 {
    1
}

/// Reads a manifest; entries without `mem`, `timeout` or `max_output` take `defaults`' (the
/// command line's flags).
pub fn read(path: &Path, defaults: &VmConfig) -> Result<Vec<Group>, ManifestError> {
    let invalid = |why: String| ManifestError::Invalid {
        path: path.to_owned(),
        why,
    };
    let bytes = read_regular(path, MAX_MANIFEST_SIZE)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| ManifestError::Syntax {
        path: path.to_owned(),
        why: "not UTF-8 text".into(),
    })?;
    let manifest: Manifest = toml::from_str(text).map_err(|e| ManifestError::Syntax {
        path: path.to_owned(),
        why: e.message().to_owned(),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut groups = Vec::new();
    let mut total: u64 = 0;
    for (i, entry) in manifest.vm.into_iter().enumerate() {
        let field = |field: &'static str, why: String| ManifestError::Field {
            path: path.to_owned(),
            entry: i + 1,
            field,
            why,
        };
        total = total
            .checked_add(entry.count)
            .filter(|&t| t <= MAX_INSTANCES as u64)
            .ok_or_else(|| invalid(format!("more than {MAX_INSTANCES} instances in all")))?;
        let relative_to_manifest = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        let image = relative_to_manifest(&entry.image);
        let volumes = match &entry.volumes {
            None => defaults.devices.volumes.clone(),
            Some(texts) => {
                let specs = texts
                    .iter()
                    .map(|text| {
                        let mut spec =
                            VolumeSpec::parse(text).map_err(|e| field("volumes", e.to_string()))?;
                        spec.host = relative_to_manifest(&spec.host);
                        Ok(spec)
                    })
                    .collect::<Result<Vec<_>, ManifestError>>()?;
                Volume::open_all(&specs).map_err(|e| field("volumes", crate::error_chain(&e)))?
            }
        };
        let stdin = match &entry.stdin {
            None => StdinSource::Empty,
            Some(path) => StdinSource::file(&relative_to_manifest(path))
                .map_err(|e| field("stdin", crate::error_chain(&e)))?,
        };
        let net = match &entry.net {
            None => None,
            Some(text) => {
                let spec =
                    NetSpec::parse(text).map_err(|e| field("net", crate::error_chain(&e)))?;
                // A manifest is untrusted: `fd=N` would name one of the fleet's own
                // descriptors (another instance's tap, a snapshot, /dev/kvm).
                if let crate::net::TapSource::Fd(_) = spec.tap {
                    return Err(field(
                        "net",
                        "fd=N names one of the fleet's own descriptors: name a tap (tap=NAME)"
                            .into(),
                    ));
                }
                // The last instance's tap name and address are the ones that can go wrong.
                if let Some(last) = entry.count.checked_sub(1) {
                    spec.for_instance(last as usize)
                        .map_err(|e| field("net", crate::error_chain(&e)))?;
                }
                Some(spec)
            }
        };
        let name = entry
            .name
            .clone()
            .unwrap_or_else(|| crate::launch::guest_name(&image));
        let vm = VmConfig {
            mem_size: entry
                .mem
                .map_or(Ok(defaults.mem_size), |m| parse_size(&m))
                .map_err(|e| field("mem", e))?,
            timeout: match entry.timeout {
                Some(t) => Some(parse_timeout(&t).map_err(|e| field("timeout", e))?),
                None => defaults.timeout,
            },
            max_output: entry
                .max_output
                .map_or(Ok(defaults.max_output), |m| parse_size(&m))
                .map_err(|e| field("max_output", e))?,
            args: entry.args,
            env: entry.env,
            devices: crate::devices::DeviceConfig {
                stdin,
                volumes,
                net: None,
            },
            ..defaults.clone()
        };
        groups.push(Group {
            name,
            image,
            count: entry.count as usize,
            vm,
            net,
        });
    }
    if groups.is_empty() {
        return Err(invalid("no [[vm]] entries".into()));
    }
    let mut names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(invalid(
            "two entries have the same name: give each a distinct `name`".into(),
        ));
    }
    if total == 0 {
        return Err(invalid(
            "no instances to run (no [[vm]] entry has a count above 0)".into(),
        ));
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn defaults() -> VmConfig {
        VmConfig {
            max_output: 1 << 20,
            ..VmConfig::default()
        }
    }

    fn scratch(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("flick-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn test_manifest_is_read_with_defaults_and_relative_paths() {
        let path = scratch(
            "fleet.toml",
            "[[vm]]\nimage = \"hello\"\ncount = 3\nargs = [\"a\"]\n\n[[vm]]\nimage = \"/abs/spin\"\nname = \"spinner\"\nmem = \"32M\"\ntimeout = \"1s\"\n",
        );
        let groups = read(&path, &defaults()).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].image, path.parent().unwrap().join("hello"));
        assert_eq!((groups[0].count, groups[0].vm.mem_size), (3, 16 << 20));
        assert_eq!(groups[1].name, "spinner");
        assert_eq!(groups[1].vm.mem_size, 32 << 20);
        assert_eq!(groups[1].vm.timeout, Some(Duration::from_secs(1)));
    }

    #[test]
    fn test_manifest_unknown_keys_are_refused() {
        let path = scratch("colour.toml", "[[vm]]\nimage = \"x\"\ncolour = \"red\"\n");
        assert!(read(&path, &defaults()).is_err());
    }

    #[test]
    fn test_manifest_without_instances_says_so_in_its_own_terms() {
        let path = scratch("none.toml", "[[vm]]\nimage = \"a\"\ncount = 0\n");
        let err = crate::error_chain(&read(&path, &defaults()).unwrap_err());
        assert!(err.contains("no [[vm]] entry has a count above 0"), "{err}");
        assert!(!err.contains("--count"), "{err}");
    }

    #[test]
    fn test_manifest_counts_that_overflow_are_refused() {
        let path = scratch(
            "many.toml",
            "[[vm]]\nimage = \"a\"\ncount = 18446744073709551615\n[[vm]]\nimage = \"b\"\ncount = 2\n",
        );
        let err = read(&path, &defaults()).unwrap_err();
        assert!(err.to_string().contains("instances in all"), "{err}");
        let path = scratch("big.toml", "[[vm]]\nimage = \"a\"\ncount = 1000000000\n");
        assert!(read(&path, &defaults()).is_err());
    }

    #[test]
    fn test_manifest_device_is_refused_without_reading() {
        let err = read(Path::new("/dev/zero"), &defaults()).unwrap_err();
        assert!(
            crate::error_chain(&err).contains("not a regular file"),
            "{err}"
        );
    }

    #[test]
    fn test_manifest_volumes_and_stdin_are_opened_relative_to_it() {
        let path = scratch(
            "input.toml",
            "[[vm]]\nimage = \"a\"\nvolumes = [\".:/data:ro\"]\nstdin = \"input.toml\"\n[[vm]]\nimage = \"b\"\n",
        );
        let groups = read(&path, &defaults()).unwrap();
        let volumes = &groups[0].vm.devices.volumes;
        assert_eq!(volumes.len(), 1);
        assert_eq!(volumes[0].spec().host, path.parent().unwrap().join("."));
        assert!(volumes[0].read_only());
        assert!(matches!(groups[0].vm.devices.stdin, StdinSource::File(_)));
        assert_eq!(
            groups[1].vm.devices.stdin,
            StdinSource::Empty,
            "no stdin: empty"
        );
    }

    #[test]
    fn test_manifest_bad_volumes_and_stdin_are_refused() {
        for (name, text) in [
            (
                "vol-syntax.toml",
                "[[vm]]\nimage = \"a\"\nvolumes = [\"nocolon\"]\n",
            ),
            (
                "vol-missing.toml",
                "[[vm]]\nimage = \"a\"\nvolumes = [\"missing-dir:/data\"]\n",
            ),
            (
                "stdin-dev.toml",
                "[[vm]]\nimage = \"a\"\nstdin = \"/dev/zero\"\n",
            ),
            (
                "stdin-missing.toml",
                "[[vm]]\nimage = \"a\"\nstdin = \"missing\"\n",
            ),
        ] {
            let err = read(&scratch(name, text), &defaults()).unwrap_err();
            assert!(matches!(err, ManifestError::Field { .. }), "{name}: {err}");
        }
    }

    #[test]
    fn test_manifest_net_is_read_per_entry() {
        let path = scratch(
            "net.toml",
            "[[vm]]\nimage = \"a\"\ncount = 3\nnet = \"tap=fa{i},ip=10.1.0.2/24,gw=10.1.0.1\"\n[[vm]]\nimage = \"b\"\n",
        );
        let groups = read(&path, &defaults()).unwrap();
        let net = groups[0].net.as_ref().unwrap();
        assert_eq!(net.tap, crate::net::TapSource::Name("fa{i}".into()));
        assert_eq!(net.gateway, Some(std::net::Ipv4Addr::new(10, 1, 0, 1)));
        assert!(groups[1].net.is_none());
    }

    #[test]
    fn test_manifest_bad_net_is_refused_before_any_tap_is_touched() {
        for (name, text) in [
            (
                "net-syntax.toml",
                "[[vm]]\nimage = \"a\"\nnet = \"tap=t0\"\n",
            ),
            (
                "net-overflow.toml",
                "[[vm]]\nimage = \"a\"\ncount = 10\nnet = \"tap=t{i},ip=10.1.0.250/24\"\n",
            ),
            (
                "net-mac.toml",
                "[[vm]]\nimage = \"a\"\ncount = 2\nnet = \"tap=t{i},ip=10.1.0.2/24,mac=02:00:00:00:00:01\"\n",
            ),
            (
                "net-fd.toml",
                "[[vm]]\nimage = \"a\"\ncount = 2\nnet = \"fd=5,ip=10.1.0.2/24\"\n",
            ),
            (
                "net-fd-once.toml",
                "[[vm]]\nimage = \"a\"\nnet = \"fd=5,ip=10.1.0.2/24\"\n",
            ),
        ] {
            let err = read(&scratch(name, text), &defaults()).unwrap_err();
            assert!(
                matches!(err, ManifestError::Field { field: "net", .. }),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn test_manifest_zero_timeout_is_refused() {
        let path = scratch("zero.toml", "[[vm]]\nimage = \"a\"\ntimeout = \"0s\"\n");
        assert!(read(&path, &defaults()).is_err());
    }
}
