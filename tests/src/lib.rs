//! Test support shared by the integration tests in `tests/tests/`:
//! - [`elf`]: builds ELF files byte by byte, valid images and every kind of broken one;
//! - [`asm`]: tiny hand-assembled guests;
//! - [`netns`]: private network namespaces with a tap, and clients that talk only inside them;
//! - [`serve`]: a `vmm serve` started by a test, its stderr collected;
//! - locating the VMM binary and the built images (built once per test run);
//! - the KVM gate: every test that needs `/dev/kvm` is a [`kvm_test`]: it fails with a clear
//!   reason when `/dev/kvm` cannot be opened, and is ignored (listed by name, counted) when the
//!   tests were built with `SKIP_KVM_TESTS=1` on purpose.

pub mod asm;
pub mod elf;
pub mod netns;
pub mod serve;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace root.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Builds the VMM and images once per test binary, unless `cargo xtask test` already did.
fn ensure_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if std::env::var_os("FLICK_VMM").is_some() && std::env::var_os("FLICK_IMAGES").is_some() {
            return;
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(project_root())
            .args([
                "run",
                "--quiet",
                "--package",
                "xtask",
                "--",
                "--quiet",
                "build",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("cannot run cargo xtask build");
        assert!(status.success(), "cargo xtask build failed");
    });
}

/// The `vmm` binary.
pub fn vmm_bin() -> PathBuf {
    ensure_built();
    std::env::var_os("FLICK_VMM")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target/release/vmm"))
}

/// The built image `name`.
pub fn image(name: &str) -> PathBuf {
    ensure_built();
    let dir = std::env::var_os("FLICK_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target/images"));
    let path = dir.join(name);
    assert!(path.is_file(), "image {} was not built", path.display());
    path
}

pub use tests_macros::kvm_test;

/// Fails the calling test with the reason when `/dev/kvm` cannot be opened read-write.
/// [`kvm_test`] calls it first in every KVM test.
pub fn require_kvm() {
    if let Err(err) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!(
            "KVM tests need /dev/kvm read-write: {err}. Set SKIP_KVM_TESTS=1 to skip them on \
             purpose (each is then reported as ignored)."
        );
    }
}

/// The old way to mark a KVM test, kept so that tests written before `#[kvm_test]` still
/// compile: under `SKIP_KVM_TESTS=1` such a test would run and pass without doing anything,
/// so it fails instead, saying what to write.
#[deprecated(note = "write #[tests::kvm_test] instead of #[test] and require_kvm!()")]
#[macro_export]
macro_rules! require_kvm {
    () => {
        if cfg!(skip_kvm) {
            panic!("SKIP_KVM_TESTS=1 did not skip this KVM test: mark it #[tests::kvm_test]");
        }
        $crate::require_kvm();
    };
}

/// A unique scratch directory for one test.
pub fn scratch_dir(test: &str) -> PathBuf {
    let dir = project_root()
        .join("target/test-scratch")
        .join(format!("{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `bytes` to a scratch file and returns its path.
pub fn write_scratch(test: &str, name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch_dir(test).join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Runs `vmm` with `args` and captures its output.
pub fn vmm(args: &[&str]) -> Output {
    Command::new(vmm_bin())
        .args(args)
        .output()
        .expect("cannot start vmm")
}

/// Runs `vmm run IMAGE [flags] -- guest_args`.
pub fn vmm_run(image: &Path, flags: &[&str], guest_args: &[&str]) -> Output {
    let mut cmd = Command::new(vmm_bin());
    cmd.arg("run")
        .arg(image)
        .args(flags)
        .arg("--")
        .args(guest_args);
    cmd.output().expect("cannot start vmm")
}

/// Stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The exit status (panics if killed by a signal: the VMM must never die that way).
pub fn status(out: &Output) -> i32 {
    out.status.code().unwrap_or_else(|| {
        panic!(
            "vmm was killed by a signal: {:?}\n{}",
            out.status,
            stderr(out)
        )
    })
}

/// Snapshots the built image `name` into `path` with `vmm snapshot` (panics if that fails).
pub fn snapshot_image(name: &str, path: &Path) {
    let out = vmm(&[
        "snapshot",
        image(name).to_str().unwrap(),
        "-o",
        path.to_str().unwrap(),
    ]);
    assert_eq!(status(&out), 0, "vmm snapshot {name}: {}", stderr(&out));
}

/// Runs `cmd` (stdin closed, output captured) and kills it if it is still running after
/// `limit`, which fails the test with what it printed so far.
pub fn output_within(cmd: &mut Command, limit: std::time::Duration) -> Output {
    use std::process::Stdio;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    wait_within(child, limit)
}

/// Waits for `child` (its stdout and stderr piped) and collects its output; kills it if it is
/// still running after `limit`, which fails the test with what it printed so far.
pub fn wait_within(mut child: std::process::Child, limit: std::time::Duration) -> Output {
    use std::io::Read;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let out = String::from_utf8_lossy(&stdout.join().unwrap()).into_owned();
            let err = String::from_utf8_lossy(&stderr.join().unwrap()).into_owned();
            panic!("still running after {limit:?}\nstdout:\n{out}\nstderr:\n{err}");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// The `gdb` binary (the debugger tests need it: `apt-get install gdb`).
pub fn gdb_bin() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("gdb"))
        .find(|path| path.is_file());
    found.unwrap_or_else(|| panic!("the debugger tests need gdb: apt-get install gdb"))
}

/// Runs `gdb -batch` (no init files) with `commands` (one `-ex` each) on `args`, within 60 s.
pub fn gdb_batch(args: &[&Path], commands: &[&str]) -> Output {
    let mut cmd = Command::new(gdb_bin());
    cmd.args(["-nx", "-batch"]);
    for command in commands {
        cmd.arg("-ex").arg(command);
    }
    cmd.args(args);
    output_within(&mut cmd, std::time::Duration::from_secs(60))
}

/// A child process that is killed (and reaped) if the test lets go of it before waiting: a
/// failing assertion must not leave a VMM running behind the test.
pub struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    /// Guards `child`.
    pub fn new(child: std::process::Child) -> Self {
        Self(Some(child))
    }

    /// Waits for the child, at most `limit` (then it is killed and the test fails), and
    /// collects what it printed (its stdout and stderr must be piped).
    pub fn wait_within(mut self, limit: std::time::Duration) -> Output {
        wait_within(
            self.0.take().expect("a guarded child is waited for once"),
            limit,
        )
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
