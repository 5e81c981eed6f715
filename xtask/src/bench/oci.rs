//! The OCI peers (crun, runc): a bundle in `target/bench/bundle` (a rootfs holding only the
//! static hello, and a config.json in the style of `runc spec` with `terminal: false` and args
//! `["/hello"]`), a private state root per runtime, and the cleanup of any container left over.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// An OCI runtime.
#[derive(Clone, Copy)]
pub enum Runtime {
    /// crun (C).
    Crun,
    /// runc (Go).
    Runc,
}

impl Runtime {
    /// Its program name, also the peer's name.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Crun => "crun",
            Runtime::Runc => "runc",
        }
    }
}

/// A runtime ready to run the bundle; dropping it deletes leftover containers and its state.
pub struct Prepared {
    /// The program a run starts.
    pub program: PathBuf,
    /// Its arguments (`{id}` stands for the container id).
    pub args: Vec<String>,
    runtime: Runtime,
    runtime_path: PathBuf,
    unshare: Option<PathBuf>,
    state: PathBuf,
}

/// Writes the bundle and the state root for `runtime` (installed at `program`).
pub fn prepare(
    dir: &Path,
    runtime: Runtime,
    program: &Path,
    unshare: Option<&Path>,
    hello: &Path,
) -> Result<Prepared> {
    let bundle = write_bundle(dir, hello)?;
    let state = dir.join(format!("{}-state", runtime.name()));
    std::fs::create_dir_all(&state)
        .with_context(|| format!("cannot create {}", state.display()))?;
    if matches!(runtime, Runtime::Crun) && unshare.is_none() {
        anyhow::bail!("crun needs unshare here (apt-get install util-linux)");
    }
    let mut prepared = Prepared {
        program: PathBuf::new(),
        args: Vec::new(),
        runtime,
        runtime_path: program.to_owned(),
        unshare: unshare.map(Path::to_owned),
        state,
    };
    let run = ["run", "--bundle", &bundle.display().to_string(), "{id}"].map(String::from);
    (prepared.program, prepared.args) = prepared.invocation(&run);
    Ok(prepared)
}

impl Prepared {
    /// The program and arguments that run `runtime --root STATE <verb>`. crun 1.8 refuses the
    /// host's hybrid cgroup layout, so it runs in a private mount namespace without the cgroup2
    /// mount (DESIGN.md).
    fn invocation(&self, verb: &[String]) -> (PathBuf, Vec<String>) {
        let mut words = vec!["--root".to_owned(), self.state.display().to_string()];
        words.extend(verb.iter().cloned());
        match (self.runtime, &self.unshare) {
            (Runtime::Crun, Some(unshare)) => {
                let mut line = shell_quote(&self.runtime_path.display().to_string());
                for word in &words {
                    line.push(' ');
                    line.push_str(&shell_quote(word));
                }
                let script = format!("umount /sys/fs/cgroup/unified 2>/dev/null; exec {line}");
                let args = ["--mount", "--propagation", "private", "sh", "-c", &script];
                (unshare.clone(), args.map(String::from).to_vec())
            }
            _ => (self.runtime_path.clone(), words),
        }
    }
}

/// `word` quoted for `sh` when it holds anything but plain path characters.
fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-{}=,:".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        let leftovers = std::fs::read_dir(&self.state)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir());
        for entry in leftovers {
            let id = entry.file_name().to_string_lossy().into_owned();
            let (program, args) = self.invocation(&["delete".into(), "-f".into(), id]);
            let _ = Command::new(program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// Writes `dir/bundle` (rootfs with `/hello`, config.json) and returns its path.
pub fn write_bundle(dir: &Path, hello: &Path) -> Result<PathBuf> {
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    for sub in ["proc", "dev", "sys"] {
        let path = rootfs.join(sub);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
    }
    std::fs::copy(hello, rootfs.join("hello")).context("cannot copy hello into the rootfs")?;
    let config = serde_json::to_string_pretty(&config(&["/hello"]))?;
    std::fs::write(bundle.join("config.json"), config).context("cannot write config.json")?;
    Ok(bundle)
}

/// A config.json like `runc spec` writes, not interactive, running `args`.
fn config(args: &[&str]) -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    let namespaces =
        ["pid", "network", "ipc", "uts", "mount", "cgroup"].map(|t| json!({ "type": t }));
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps, "ambient": caps
            },
            "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
            "noNewPrivileges": true
        },
        "root": { "path": "rootfs", "readonly": true },
        "hostname": "flick-bench",
        "mounts": mounts(),
        "linux": {
            "resources": { "devices": [{ "allow": false, "access": "rwm" }] },
            "namespaces": namespaces,
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

fn mount(dest: &str, kind: &str, source: &str, options: &[&str]) -> Value {
    json!({ "destination": dest, "type": kind, "source": source, "options": options })
}

fn mounts() -> Value {
    let noexec = ["nosuid", "noexec", "nodev"];
    json!([
        mount("/proc", "proc", "proc", &[]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"]
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5"
            ]
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
        ),
        mount("/dev/mqueue", "mqueue", "mqueue", &noexec),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"]
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"]
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_config_is_not_interactive_and_runs_hello() {
        let config = config(&["/hello"]);
        assert_eq!(config["process"]["terminal"], false);
        assert_eq!(config["process"]["args"], json!(["/hello"]));
        assert_eq!(config["root"]["path"], "rootfs");
    }

    #[test]
    fn test_config_unshares_every_namespace() {
        let config = config(&["/hello"]);
        let kinds: Vec<&str> = config["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["pid", "network", "ipc", "uts", "mount", "cgroup"]);
    }

    #[test]
    fn test_shell_quote_leaves_paths_and_quotes_the_rest() {
        assert_eq!(shell_quote("/a/b-c_d.e"), "/a/b-c_d.e");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
