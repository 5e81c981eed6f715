//! `cargo xtask bench --containers`: our microVM started by the container tooling people use,
//! against a process started by the same tooling. One private `dockerd` (and the containerd
//! it manages) with three runtimes registered: `flick` (flick-runtime), `runc` (Docker's
//! default) and `crun`. Each round runs, interleaved:
//! - `docker run --rm --network none --runtime=R IMAGE` for flick (`flick/hello`, our OCI
//!   image) and for runc and crun (a `FROM scratch`-style image holding only a static glibc
//!   hello);
//! - the same three through `ctr run --rm` with the runc shim and `--runc-binary R`.
//!
//! Every run's status and first output line are checked (our hello also prints the
//! environment Docker gives it). Also the images' sizes side by side. Self-contained (its
//! own daemon, images and statistics) so that it can move with the bench.
//!
//! crun 1.8 refuses this machine's hybrid cgroup layout, so it is registered as a small
//! wrapper that hides the cgroup2 mount in a private mount namespace first (DESIGN.md's
//! recipe); that costs it an `unshare` and a shell per runtime command.

use crate::error::{Error, Result};
use crate::measure::stats::summarize;
use crate::peers::peer::which;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Rounds by default.
pub const DEFAULT_ROUNDS: usize = 20;
/// Rounds with `--quick`.
pub const QUICK_ROUNDS: usize = 5;
/// The longest one run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest the daemon may take to answer.
const DAEMON_PATIENCE: Duration = Duration::from_secs(60);
/// A pause after each run, so what a run leaves (container removal) is not in the next.
const SETTLE: Duration = Duration::from_millis(50);
/// The containerd namespace of the ctr runs.
const CTR_NAMESPACE: &str = "flick-bench";
/// The native image's name.
const NATIVE_IMAGE: &str = "flick-bench/native-hello:latest";

/// One way of starting a container.
struct Peer {
    name: String,
    program: &'static str,
    args: Vec<String>,
    expect: &'static str,
    samples: Vec<f64>,
    failure: Option<String>,
}

/// What the xtask built for this section.
pub(crate) struct Plan<'a> {
    /// The runtime binary (`flick-runtime`).
    pub(crate) runtime: &'a Path,
    /// `flick/hello:latest` as an OCI tarball.
    pub(crate) hello_tarball: &'a Path,
    /// Where the report and scratch files go.
    pub(crate) dir: &'a Path,
    /// Interleaved rounds.
    pub(crate) rounds: usize,
}

/// Runs the section, prints its report and writes it to `DIR/containers.md`; returns whether
/// our runs all passed.
pub(crate) fn run(plan: &Plan) -> Result<bool> {
    let dir = plan.dir.join("containers");
    std::fs::create_dir_all(&dir).map_err(Error::io(format!("cannot create {}", dir.display())))?;
    for tool in ["dockerd", "docker", "ctr", "runc", "crun", "unshare", "cc"] {
        if which(tool).is_none() {
            return Err(Error::Check(format!(
                "{tool} is not installed (apt-get install docker.io containerd runc crun gcc)"
            )));
        }
    }
    let ours_size = std::fs::metadata(plan.hello_tarball)
        .map_err(Error::io(format!(
            "cannot read {}",
            plan.hello_tarball.display()
        )))?
        .len();
    let native_root = native_rootfs(&dir)?;
    let crun = crun_wrapper(&dir)?;
    let daemon = Daemon::start(&dir, plan.runtime, &crun)?;
    daemon.load(plan.hello_tarball, &native_root)?;
    let sizes = daemon.sizes(ours_size, &dir)?;
    let mut peers = peers(&daemon, plan.runtime, &crun);
    for peer in &mut peers {
        measure(peer, "warm-up"); // untimed: first-run costs, and a check that it works
    }
    for round in 0..plan.rounds {
        for peer in peers.iter_mut().filter(|p| p.failure.is_none()) {
            if let Some(ms) = measure(peer, &round.to_string()) {
                peer.samples.push(ms);
            }
        }
    }
    drop(daemon);
    let report = markdown(&peers, &sizes, plan.rounds);
    print!("{report}");
    let path = plan.dir.join("containers.md");
    std::fs::write(&path, &report)
        .map_err(Error::io(format!("cannot write {}", path.display())))?;
    println!("\nReport: {}", path.display());
    Ok(peers
        .iter()
        .filter(|p| p.name.contains("flick"))
        .all(|p| p.failure.is_none()))
}

/// The six peers: docker × (flick, runc, crun), then ctr × the same.
fn peers(daemon: &Daemon, runtime: &Path, crun: &Path) -> Vec<Peer> {
    let docker = |runtime: &str, image: &str| {
        let mut args = vec!["-H".to_owned(), daemon.host.clone()];
        args.extend(["run", "--rm", "--network", "none"].map(String::from));
        args.push(format!("--runtime={runtime}"));
        args.push(image.to_owned());
        args
    };
    let ctr = |binary: &Path, image: &str, entry: &str| {
        let mut args = vec![
            "--address".to_owned(),
            daemon.containerd.display().to_string(),
        ];
        args.extend(["--namespace", CTR_NAMESPACE, "run", "--rm"].map(String::from));
        args.extend(["--runtime", "io.containerd.runc.v2", "--runc-binary"].map(String::from));
        args.push(binary.display().to_string());
        args.extend([image.to_owned(), "{id}".to_owned(), entry.to_owned()]);
        args
    };
    let native_ref = format!("docker.io/{NATIVE_IMAGE}");
    let runc = which("runc").unwrap_or_else(|| PathBuf::from("runc"));
    let peer = |name: &str, program, args, expect| Peer {
        name: name.to_owned(),
        program,
        args,
        expect,
        samples: Vec::new(),
        failure: None,
    };
    const OURS: &str = "Hello from a unikernel!\n";
    vec![
        peer(
            "docker + flick (microVM)",
            "docker",
            docker("flick", "flick/hello"),
            OURS,
        ),
        peer(
            "docker + runc (process)",
            "docker",
            docker("runc", NATIVE_IMAGE),
            "hello\n",
        ),
        peer(
            "docker + crun (process)",
            "docker",
            docker("crun", NATIVE_IMAGE),
            "hello\n",
        ),
        peer(
            "ctr + flick (microVM)",
            "ctr",
            ctr(runtime, "docker.io/flick/hello:latest", "/hello"),
            OURS,
        ),
        peer(
            "ctr + runc (process)",
            "ctr",
            ctr(&runc, &native_ref, "/hello"),
            "hello\n",
        ),
        peer(
            "ctr + crun (process)",
            "ctr",
            ctr(crun, &native_ref, "/hello"),
            "hello\n",
        ),
    ]
}

/// One run of `peer`, in milliseconds; a failure marks the peer failed.
fn measure(peer: &mut Peer, run_id: &str) -> Option<f64> {
    let id = format!("flick-bench-{}-{run_id}", std::process::id());
    let args: Vec<String> = peer.args.iter().map(|a| a.replace("{id}", &id)).collect();
    let start = Instant::now();
    let outcome = bounded(Command::new(peer.program).args(&args));
    let elapsed = start.elapsed();
    std::thread::sleep(SETTLE);
    match outcome {
        Ok(out) if out.status.success() && out.stdout.starts_with(peer.expect.as_bytes()) => {
            Some(elapsed.as_secs_f64() * 1e3)
        }
        Ok(out) => {
            peer.failure = Some(format!(
                "{} (stdout {:?}, stderr {:?})",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            None
        }
        Err(err) => {
            peer.failure = Some(crate::chain(&err));
            None
        }
    }
}

/// Runs `cmd` to completion, killing it after [`RUN_TIMEOUT`].
fn bounded(cmd: &mut Command) -> Result<std::process::Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::io(format!("cannot run {cmd:?}")))?;
    let pid = child.id();
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match wait.recv_timeout(RUN_TIMEOUT) {
        Ok(out) => out.map_err(Error::io("cannot wait for a run")),
        Err(_) => {
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: kill(2) takes no pointers.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            Err(Error::TimedOut(RUN_TIMEOUT))
        }
    }
}

/// A rootfs holding only a static glibc hello (and `/dev`), as `FROM scratch` would.
fn native_rootfs(dir: &Path) -> Result<PathBuf> {
    let source = dir.join("hello.c");
    std::fs::write(
        &source,
        "#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n",
    )
    .map_err(Error::io(format!("cannot write {}", source.display())))?;
    let root = dir.join("native-rootfs");
    std::fs::create_dir_all(root.join("dev"))
        .map_err(Error::io(format!("cannot create {}", root.display())))?;
    let out = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(root.join("hello"))
        .arg(&source)
        .output()
        .map_err(Error::io("cannot run cc (apt-get install gcc libc6-dev)"))?;
    if !out.status.success() {
        return Err(Error::tool("cc -static", out.status, &out.stderr));
    }
    Ok(root)
}

/// crun behind `unshare`, without the hybrid layout's cgroup2 mount.
fn crun_wrapper(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("crun-hybrid");
    let script = "#!/bin/sh\n# crun 1.8 refuses a hybrid cgroup layout: hide the cgroup2 \
                  mount in a private mount namespace.\nexec unshare --mount --propagation \
                  private sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; exec crun \"$@\"' \
                  crun \"$@\"\n";
    std::fs::write(&path, script)
        .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)))
        .map_err(Error::io(format!("cannot write {}", path.display())))?;
    Ok(path)
}

/// Our private dockerd; dropping it removes our images' containers and stops it.
struct Daemon {
    host: String,
    containerd: PathBuf,
    child: Child,
    exec_root: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, runtime: &Path, crun: &Path) -> Result<Daemon> {
        // Socket paths are limited to 108 bytes: the exec root goes in /tmp.
        let exec_root = std::env::temp_dir().join(format!("flick-bench-{}", std::process::id()));
        std::fs::create_dir_all(&exec_root)
            .map_err(Error::io(format!("cannot create {}", exec_root.display())))?;
        let host = format!("unix://{}", exec_root.join("docker.sock").display());
        let log_path = dir.join("dockerd.log");
        let log = std::fs::File::create(&log_path)
            .map_err(Error::io(format!("cannot create {}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(Error::io("cannot duplicate dockerd.log"))?;
        let mut cmd = Command::new("dockerd");
        cmd.arg("--data-root")
            .arg(dir.join("docker-data"))
            .arg("--exec-root")
            .arg(&exec_root)
            .arg("--pidfile")
            .arg(exec_root.join("dockerd.pid"))
            .args([
                "-H",
                &host,
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
            ])
            .args(["--ip-masq=false", "--userland-proxy=false"])
            .args(["--exec-opt", "native.cgroupdriver=cgroupfs"])
            .arg("--add-runtime")
            .arg(format!("flick={}", runtime.display()))
            .arg("--add-runtime")
            .arg(format!("crun={}", crun.display()))
            .stdin(Stdio::null())
            .stdout(log_err)
            .stderr(log);
        // SAFETY: prctl in the child before exec; the daemon dies with the bench.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(Error::io("cannot start dockerd"))?;
        let daemon = Daemon {
            host,
            containerd: exec_root.join("containerd/containerd.sock"),
            child,
            exec_root,
        };
        let start = Instant::now();
        while !daemon.docker(&["info"]).is_ok_and(|o| o.status.success()) {
            if start.elapsed() > DAEMON_PATIENCE {
                return Err(Error::Check(format!(
                    "dockerd did not come up (see {})",
                    log_path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(daemon)
    }

    fn docker(&self, args: &[&str]) -> Result<std::process::Output> {
        bounded(Command::new("docker").args(["-H", &self.host]).args(args))
    }

    fn ctr(&self, args: &[&str]) -> Result<std::process::Output> {
        bounded(
            Command::new("ctr")
                .arg("--address")
                .arg(&self.containerd)
                .args(["--namespace", CTR_NAMESPACE])
                .args(args),
        )
    }

    /// Loads our tarball and imports the native rootfs, into Docker and containerd.
    fn load(&self, ours: &Path, native_root: &Path) -> Result<()> {
        let checked = |what: &str, out: std::process::Output| {
            if out.status.success() {
                Ok(())
            } else {
                Err(Error::tool(what, out.status, &out.stderr))
            }
        };
        let ours_str = ours.display().to_string();
        checked("docker load", self.docker(&["load", "-i", &ours_str])?)?;
        checked("ctr import", self.ctr(&["images", "import", &ours_str])?)?;
        let tar = native_root.with_extension("tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(native_root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .map_err(Error::io("cannot run tar"))?;
        if !status.success() {
            return Err(Error::Check("tar of the native rootfs failed".to_owned()));
        }
        let tar_str = tar.display().to_string();
        let entry = r#"ENTRYPOINT ["/hello"]"#;
        checked(
            "docker import",
            self.docker(&["import", "-c", entry, &tar_str, NATIVE_IMAGE])?,
        )?;
        let saved = native_root.with_extension("image.tar");
        let saved_str = saved.display().to_string();
        checked(
            "docker save",
            self.docker(&["save", "-o", &saved_str, NATIVE_IMAGE])?,
        )?;
        checked("ctr import", self.ctr(&["images", "import", &saved_str])?)
    }

    /// Image sizes as Docker reports them, and the tarballs' sizes.
    fn sizes(&self, ours_tarball: u64, dir: &Path) -> Result<Vec<(String, String, String)>> {
        let size = |image: &str| -> Result<u64> {
            let out = self.docker(&["image", "inspect", "--format", "{{.Size}}", image])?;
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .map_err(|_| Error::Check(format!("docker gives no size for {image}")))
        };
        let saved = dir.join("native-rootfs.image.tar");
        let native_tarball = std::fs::metadata(&saved)
            .map_err(Error::io(format!("cannot read {}", saved.display())))?
            .len();
        Ok(vec![
            (
                "`flick/hello` (ours: the image file and its marker)".to_owned(),
                kib(size("flick/hello")?),
                kib(ours_tarball),
            ),
            (
                "static glibc hello, `FROM scratch`".to_owned(),
                kib(size(NATIVE_IMAGE)?),
                kib(native_tarball),
            ),
            (
                "alpine".to_owned(),
                "not measured: no registry here".to_owned(),
                "–".to_owned(),
            ),
        ])
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) takes no pointers; `pid` is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let start = Instant::now();
        while start.elapsed() < DAEMON_PATIENCE {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.exec_root);
    }
}

fn kib(bytes: u64) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

/// `(min, median, p90)` of `samples`, in the unit of the samples; `None` when empty.
fn summary(samples: &[f64]) -> Option<(f64, f64, f64)> {
    summarize(samples).map(|s| (s.min_us, s.median_us, s.p90_us))
}

fn markdown(peers: &[Peer], sizes: &[(String, String, String)], rounds: usize) -> String {
    let mut out = format!(
        "## Containers: a microVM through Docker and containerd\n\n{rounds} interleaved rounds, \
         client spawn to exit, every run's status and greeting checked.\n\n\
         | how | min | median | p90 | × runc (same client) |\n|---|---:|---:|---:|---:|\n"
    );
    let median_of = |name: &str| {
        peers
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| summary(&p.samples))
            .map(|s| s.1)
    };
    for peer in peers {
        let client = peer.name.split(' ').next().unwrap_or("");
        let baseline = median_of(&format!("{client} + runc (process)"));
        match (summary(&peer.samples), &peer.failure) {
            (Some((min, median, p90)), None) => {
                let ratio = baseline.map_or("–".to_owned(), |b| format!("{:.2}×", median / b));
                out.push_str(&format!(
                    "| {} | {min:.0} ms | {median:.0} ms | {p90:.0} ms | {ratio} |\n",
                    peer.name
                ));
            }
            (_, Some(why)) => out.push_str(&format!("| {} | failed: {why} | | | |\n", peer.name)),
            (None, None) => out.push_str(&format!("| {} | no samples | | | |\n", peer.name)),
        }
    }
    if let (Some(ours), Some(runc)) = (
        median_of("docker + flick (microVM)"),
        median_of("docker + runc (process)"),
    ) {
        let met = if ours < runc { "met" } else { "not met" };
        out.push_str(&format!(
            "\nTarget: our microVM starts faster through Docker than Docker's default runtime \
             starts a process: {ours:.0} ms against {runc:.0} ms, {met}.\n"
        ));
    }
    out.push_str("\n| image | size (`docker image inspect`) | tarball |\n|---|---:|---:|\n");
    for (what, size, tarball) in sizes {
        out.push_str(&format!("| {what} | {size} | {tarball} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_summary_median_and_p90() {
        let samples: Vec<f64> = (1..=11).map(f64::from).collect();
        assert_eq!(summary(&samples), Some((1.0, 6.0, 10.0)));
        assert_eq!(summary(&[]), None);
    }

    #[test]
    fn test_markdown_judges_the_target_against_docker_runc() {
        let peer = |name: &str, samples: Vec<f64>| Peer {
            name: name.to_owned(),
            program: "docker",
            args: Vec::new(),
            expect: "",
            samples,
            failure: None,
        };
        let peers = [
            peer("docker + flick (microVM)", vec![100.0, 110.0, 120.0]),
            peer("docker + runc (process)", vec![200.0, 210.0, 220.0]),
        ];
        let text = markdown(&peers, &[], 3);
        assert!(text.contains("| docker + flick (microVM) | 100 ms | 110 ms | 118 ms | 0.52× |"));
        assert!(text.contains("110 ms against 210 ms, met"), "{text}");
    }
}
