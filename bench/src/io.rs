//! The I/O row of the bench: `sha256sum` of one large file (256 MiB by default) by the guest
//! image `sha256sum` through a volume and through stdin (a redirected file, and a pipe), against
//! native `sha256sum` (GNU coreutils) and against that same coreutils program in crun and in
//! Docker with the file's directory bind-mounted. Every run's digest must equal the native one.
//!
//! Each peer runs once untimed (page cache warm, images imported), then `runs` interleaved
//! rounds; a run's throughput is the file size over its wall time, spawn to exit (container
//! start-up included, as a user waits for it). The exits per MiB come from one more run of
//! each of ours with `--timeline=json`.
//!
//! Its own peers, not the cold-start ones: their payload is a static program, this one is
//! coreutils' dynamically linked `sha256sum` with its libraries in the rootfs, and a bind
//! mount. `--only io` runs this row alone.

use serde::Serialize;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The guest image it runs.
pub(crate) const IMAGE: &str = "sha256sum";
/// File size in MiB.
pub(crate) const MIB: u64 = 256;

/// What to measure, with what.
pub(crate) struct Plan<'a> {
    /// The VMM binary.
    pub(crate) vmm: &'a Path,
    /// The guest image `sha256sum`.
    pub(crate) image: &'a Path,
    /// Scratch space (the data file, the bundle, a private dockerd).
    pub(crate) dir: &'a Path,
    /// Size of the file in MiB.
    pub(crate) mib: u64,
    /// Timed runs per peer.
    pub(crate) runs: usize,
}

/// One peer's result.
#[derive(Debug, Serialize)]
pub(crate) struct Row {
    /// Its name.
    pub(crate) name: String,
    /// What runs.
    pub(crate) how: String,
    /// Best throughput, MiB/s (none: not measured).
    pub(crate) best_mib_s: Option<f64>,
    /// Median throughput, MiB/s.
    pub(crate) median_mib_s: Option<f64>,
    /// Best throughput against native's best.
    pub(crate) ratio_to_native: Option<f64>,
    /// VM exits per MiB hashed (ours only).
    pub(crate) exits_per_mib: Option<f64>,
    /// Why it was not measured, or what to know.
    pub(crate) note: Option<String>,
}

/// The whole comparison.
#[derive(Debug, Serialize)]
pub(crate) struct IoComparison {
    /// File size, MiB.
    pub(crate) mib: u64,
    /// Timed runs per peer.
    pub(crate) runs: usize,
    /// The file's SHA-256 (every run printed it).
    pub(crate) digest: String,
    /// Native first, then ours, then the containers.
    pub(crate) rows: Vec<Row>,
}

type Fallible<T> = Result<T, String>;

/// A peer: how to start one run, and how it tears down.
struct Peer {
    name: &'static str,
    how: String,
    command: Box<dyn Fn() -> Command>,
    /// Feed the data file on stdin.
    stdin_file: Option<PathBuf>,
    /// `--timeline=json` version of the command, for exits per MiB (ours).
    timeline: Option<Box<dyn Fn() -> Command>>,
}

/// Runs the comparison.
pub(crate) fn measure(plan: &Plan<'_>) -> Fallible<IoComparison> {
    std::fs::create_dir_all(plan.dir).map_err(|e| format!("{}: {e}", plan.dir.display()))?;
    let data_dir = plan.dir.join("io-data");
    let file = write_data(&data_dir, plan.mib)?;
    let digest = expected_digest(&file)?;
    let mut rows = Vec::new();
    let mut peers = Vec::new();
    let mut containers = Containers::default();
    let bundle = plan.dir.join("io-bundle");
    match write_rootfs(&bundle.join("rootfs")) {
        Ok(()) => {
            match crun_peer(plan.dir, &bundle, &data_dir, &mut containers) {
                Ok(peer) => peers.push(peer),
                Err(why) => rows.push(missing("crun", &why)),
            }
            match docker_peer(plan.dir, &bundle.join("rootfs"), &data_dir, &mut containers) {
                Ok(peer) => peers.push(peer),
                Err(why) => rows.push(missing("docker", &why)),
            }
        }
        Err(why) => {
            rows.push(missing("crun", &why));
            rows.push(missing("docker", &why));
        }
    }
    let mut all = ours_and_native(plan, &data_dir, &file);
    all.extend(peers);
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); all.len()];
    let mut failures: Vec<Option<String>> = vec![None; all.len()];
    for round in 0..=plan.runs {
        for (i, peer) in all.iter().enumerate() {
            if failures[i].is_some() {
                continue;
            }
            match run_once(peer, &digest) {
                // Round 0 warms the page cache and the containers up.
                Ok(seconds) if round > 0 => rates[i].push(plan.mib as f64 / seconds),
                Ok(_) => {}
                Err(why) => failures[i] = Some(why),
            }
        }
    }
    let native_best = best(&rates[0]);
    let mut measured: Vec<Row> = all
        .iter()
        .zip(rates.iter().zip(failures))
        .map(|(peer, (rates, failure))| {
            let best = best(rates);
            Row {
                name: peer.name.to_owned(),
                how: peer.how.clone(),
                best_mib_s: best,
                median_mib_s: median(rates),
                ratio_to_native: best.zip(native_best).map(|(b, n)| b / n),
                exits_per_mib: peer
                    .timeline
                    .as_ref()
                    .and_then(|t| exits_per_mib(t(), peer.stdin_file.as_deref(), plan.mib)),
                note: failure,
            }
        })
        .collect();
    drop(containers);
    measured.extend(rows);
    Ok(IoComparison {
        mib: plan.mib,
        runs: plan.runs,
        digest,
        rows: measured,
    })
}

fn missing(name: &str, why: &str) -> Row {
    Row {
        name: name.to_owned(),
        how: String::new(),
        best_mib_s: None,
        median_mib_s: None,
        ratio_to_native: None,
        exits_per_mib: None,
        note: Some(why.to_owned()),
    }
}

/// Native coreutils, then ours through a volume, a redirected stdin and a piped stdin.
fn ours_and_native(plan: &Plan<'_>, data_dir: &Path, file: &Path) -> Vec<Peer> {
    let (vmm, image) = (plan.vmm.to_owned(), plan.image.to_owned());
    let volume = format!("{}:/data:ro", data_dir.display());
    let native = {
        let file = file.to_owned();
        Peer {
            name: "native",
            how: format!("sha256sum {}", file.display()),
            command: Box::new(move || {
                let mut c = Command::new("sha256sum");
                c.arg(&file);
                c
            }),
            stdin_file: None,
            timeline: None,
        }
    };
    let ours_volume = {
        let (vmm, image, volume) = (vmm.clone(), image.clone(), volume.clone());
        let with = move |timeline: bool| {
            let mut c = Command::new(&vmm);
            c.arg("run").arg(&image).args(["--volume", &volume]);
            if timeline {
                c.arg("--timeline=json");
            }
            c.args(["--", "/data/data.bin"]);
            c
        };
        let timeline = with.clone();
        Peer {
            name: "ours (volume)",
            how: "vmm run sha256sum --volume DIR:/data:ro -- /data/data.bin".to_owned(),
            command: Box::new(move || with(false)),
            stdin_file: None,
            timeline: Some(Box::new(move || timeline(true))),
        }
    };
    let ours_stdin = {
        let (vmm, image) = (vmm.clone(), image.clone());
        let with = move |timeline: bool| {
            let mut c = Command::new(&vmm);
            c.arg("run").arg(&image);
            if timeline {
                c.arg("--timeline=json");
            }
            c
        };
        let timeline = with.clone();
        Peer {
            name: "ours (stdin file)",
            how: "vmm run sha256sum < data.bin".to_owned(),
            command: Box::new(move || with(false)),
            stdin_file: Some(file.to_owned()),
            timeline: Some(Box::new(move || timeline(true))),
        }
    };
    let ours_pipe = {
        let script = move |timeline: &str| {
            format!(
                "cat {} | {} run {} {timeline}",
                file.display(),
                vmm.display(),
                image.display()
            )
        };
        let (plain, timed) = (script(""), script("--timeline=json"));
        let shell = |script: String| {
            move || {
                let mut c = Command::new("sh");
                c.args(["-c", &script]);
                c
            }
        };
        Peer {
            name: "ours (stdin pipe)",
            how: "cat data.bin | vmm run sha256sum".to_owned(),
            command: Box::new(shell(plain)),
            stdin_file: None,
            timeline: Some(Box::new(shell(timed))),
        }
    };
    vec![native, ours_volume, ours_stdin, ours_pipe]
}

/// One run: its wall time in seconds, after checking its digest.
fn run_once(peer: &Peer, digest: &str) -> Fallible<f64> {
    let mut command = (peer.command)();
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command.stdin(match &peer.stdin_file {
        Some(path) => Stdio::from(File::open(path).map_err(|e| e.to_string())?),
        None => Stdio::null(),
    });
    let started = Instant::now();
    let child = command.spawn().map_err(|e| format!("cannot start: {e}"))?;
    let out = wait_bounded(child, Duration::from_secs(300))?;
    let seconds = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.starts_with(digest) {
        return Err(format!(
            "{}: status {}, printed {:?}, {}",
            peer.name,
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(seconds)
}

fn wait_bounded(child: Child, limit: Duration) -> Fallible<std::process::Output> {
    let id = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let guard = std::thread::spawn(move || {
        if done_rx.recv_timeout(limit).is_err()
            && let Ok(pid) = libc::pid_t::try_from(id)
        {
            // SAFETY: kill(2) takes no pointers; `pid` is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let out = child.wait_with_output().map_err(|e| e.to_string());
    let _ = done_tx.send(());
    let _ = guard.join();
    out
}

/// VM exits per MiB in one `--timeline=json` run (the report's last line on stderr).
fn exits_per_mib(mut command: Command, stdin: Option<&Path>, mib: u64) -> Option<f64> {
    if let Some(path) = stdin {
        command.stdin(File::open(path).ok()?);
    }
    let out = command.output().ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    let json = text.lines().rev().find(|l| l.starts_with('{'))?;
    let report: serde_json::Value = serde_json::from_str(json).ok()?;
    let total = report["exits"]["total"].as_u64()?;
    Some(total as f64 / mib as f64)
}

/// `dir/data.bin` of `mib` MiB of pseudo-random bytes (kept between runs).
fn write_data(dir: &Path, mib: u64) -> Fallible<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join("data.bin");
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == mib << 20) {
        return Ok(path);
    }
    let mut file = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        file.write_all(&block).map_err(|e| e.to_string())?;
    }
    Ok(path)
}

fn expected_digest(file: &Path) -> Fallible<String> {
    let out = Command::new("sha256sum")
        .arg(file)
        .output()
        .map_err(|e| format!("sha256sum (coreutils): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().next() {
        Some(digest) if out.status.success() && digest.len() == 64 => Ok(digest.to_owned()),
        _ => Err(format!("sha256sum printed {:?}", text.trim())),
    }
}

/// A rootfs holding `/usr/bin/sha256sum` and the shared libraries `ldd` lists for it.
fn write_rootfs(rootfs: &Path) -> Fallible<()> {
    let program = Path::new("/usr/bin/sha256sum");
    let ldd = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(|e| format!("ldd: {e}"))?;
    let mut files = vec![program.to_owned()];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        files.extend(path);
    }
    for sub in ["proc", "dev", "sys", "data"] {
        std::fs::create_dir_all(rootfs.join(sub)).map_err(|e| e.to_string())?;
    }
    for file in files {
        let dest = rootfs.join(file.strip_prefix("/").unwrap_or(&file));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        std::fs::copy(&file, &dest).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(())
}

/// What the container peers leave running (a private dockerd, crun state); stopped on drop.
#[derive(Default)]
struct Containers {
    dockerd: Option<Child>,
    crun_state: Option<PathBuf>,
}

impl Drop for Containers {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.dockerd.take() {
            if let Ok(pid) = libc::pid_t::try_from(daemon.id()) {
                // SAFETY: kill(2) takes no pointers; `pid` is our unreaped child.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = daemon.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        if let Some(state) = self.crun_state.take() {
            let _ = std::fs::remove_dir_all(state);
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// crun running coreutils' sha256sum with the data directory bind-mounted read-only. crun 1.8
/// refuses this host's hybrid cgroup layout: it runs in a private mount namespace without the
/// cgroup2 mount (as the cold-start bench does).
fn crun_peer(
    dir: &Path,
    bundle: &Path,
    data_dir: &Path,
    containers: &mut Containers,
) -> Fallible<Peer> {
    let crun = which("crun").ok_or("not installed (apt-get install crun)")?;
    let unshare = which("unshare").ok_or("needs unshare (apt-get install util-linux)")?;
    let config = oci_config(data_dir);
    std::fs::write(bundle.join("config.json"), config.to_string()).map_err(|e| e.to_string())?;
    let state = dir.join("io-crun-state");
    std::fs::create_dir_all(&state).map_err(|e| e.to_string())?;
    containers.crun_state = Some(state.clone());
    let counter = std::sync::atomic::AtomicU64::new(0);
    let script = format!(
        "umount /sys/fs/cgroup/unified 2>/dev/null; exec {} --root {} run --bundle {} \"$0\"",
        crun.display(),
        state.display(),
        bundle.display()
    );
    Ok(Peer {
        name: "crun",
        how: "crun run (coreutils sha256sum, DIR bind-mounted read-only)".to_owned(),
        command: Box::new(move || {
            let id = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut c = Command::new(&unshare);
            c.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
            c.arg(format!("flick-io-{}-{id}", std::process::id()));
            c
        }),
        stdin_file: None,
        timeline: None,
    })
}

/// A config.json like `runc spec` writes, running sha256sum on `/data/data.bin`, with
/// `data_dir` bind-mounted read-only at `/data`.
fn oci_config(data_dir: &Path) -> serde_json::Value {
    let mount = |dest: &str, kind: &str, source: &str, options: &[&str]| serde_json::json!({ "destination": dest, "type": kind, "source": source, "options": options });
    let namespaces =
        ["pid", "network", "ipc", "uts", "mount"].map(|t| serde_json::json!({ "type": t }));
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": ["/usr/bin/sha256sum", "/data/data.bin"],
            "env": ["PATH=/usr/bin:/bin"],
            "cwd": "/",
            "noNewPrivileges": true
        },
        "root": { "path": "rootfs", "readonly": true },
        "hostname": "flick-io",
        "mounts": [
            mount("/proc", "proc", "proc", &[]),
            mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
            mount("/data", "bind", &data_dir.display().to_string(), &["rbind", "ro"]),
        ],
        "linux": {
            "namespaces": namespaces
        }
    })
}

/// Docker running the same rootfs (imported as an image) with `-v DIR:/data:ro`, on a private
/// daemon (its own paths under `dir`, no host network changes).
fn docker_peer(
    dir: &Path,
    rootfs: &Path,
    data_dir: &Path,
    containers: &mut Containers,
) -> Fallible<Peer> {
    let cli = which("docker").ok_or("not installed (apt-get install docker.io)")?;
    let dockerd = which("dockerd").ok_or("no dockerd (apt-get install docker.io)")?;
    let root = dir.join("io-docker");
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    let host = format!("unix://{}", root.join("docker.sock").display());
    let log = File::create(root.join("dockerd.log")).map_err(|e| e.to_string())?;
    let daemon = Command::new(dockerd)
        .arg("--data-root")
        .arg(root.join("data"))
        .arg("--exec-root")
        .arg(root.join("exec"))
        .arg("--pidfile")
        .arg(root.join("dockerd.pid"))
        .args(["-H", &host, "--bridge=none", "--iptables=false"])
        .args([
            "--ip6tables=false",
            "--ip-masq=false",
            "--userland-proxy=false",
        ])
        .args(["--exec-opt", "native.cgroupdriver=cgroupfs"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start dockerd: {e}"))?;
    containers.dockerd = Some(daemon);
    let started = Instant::now();
    while !Command::new(&cli)
        .args(["-H", &host, "info"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "dockerd did not come up (see {})",
                root.join("dockerd.log").display()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let image = "flick-io-sha256sum";
    let import = format!(
        "tar -C {} -c . | {} -H {host} import - {image}",
        rootfs.display(),
        cli.display()
    );
    let imported = Command::new("sh")
        .args(["-c", &import])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    if !imported.success() {
        return Err("docker import failed".to_owned());
    }
    let volume = format!("{}:/data:ro", data_dir.display());
    Ok(Peer {
        name: "docker",
        how: "docker run --rm -v DIR:/data:ro (coreutils sha256sum)".to_owned(),
        command: Box::new(move || {
            let mut c = Command::new(&cli);
            c.args([
                "-H",
                &host,
                "run",
                "--rm",
                "--network",
                "none",
                "-v",
                &volume,
            ])
            .args([image, "/usr/bin/sha256sum", "/data/data.bin"]);
            c
        }),
        stdin_file: None,
        timeline: None,
    })
}

fn best(rates: &[f64]) -> Option<f64> {
    rates.iter().copied().reduce(f64::max)
}

fn median(rates: &[f64]) -> Option<f64> {
    let mut sorted = rates.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// The comparison as a Markdown table.
pub(crate) fn markdown(result: &IoComparison) -> String {
    let mut md = format!(
        "\n## I/O: sha256sum of a {} MiB file ({} runs each, best and median wall-clock throughput)\n\n\
         | peer | what runs | best MiB/s | median MiB/s | × native | exits/MiB |\n|---|---|---:|---:|---:|---:|\n",
        result.mib, result.runs
    );
    let number =
        |v: Option<f64>, digits: usize| v.map_or("–".to_owned(), |v| format!("{v:.digits$}"));
    for row in &result.rows {
        let what = match (&row.note, row.how.is_empty()) {
            (Some(note), true) => format!("not measured: {note}"),
            (Some(note), false) => format!("`{}` (failed: {note})", row.how.replace('|', "\\|")),
            (None, _) => format!("`{}`", row.how.replace('|', "\\|")),
        };
        md.push_str(&format!(
            "| {} | {what} | {} | {} | {} | {} |\n",
            row.name,
            number(row.best_mib_s, 0),
            number(row.median_mib_s, 0),
            number(row.ratio_to_native, 2),
            number(row.exits_per_mib, 2),
        ));
    }
    md.push_str(&format!("\nEvery run printed {}.\n", result.digest));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_median_of_even_and_odd_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn test_markdown_names_every_row_and_what_was_not_measured() {
        let result = IoComparison {
            mib: 256,
            runs: 3,
            digest: "ab".repeat(32),
            rows: vec![
                Row {
                    name: "native".into(),
                    how: "sha256sum f".into(),
                    best_mib_s: Some(300.0),
                    median_mib_s: Some(290.0),
                    ratio_to_native: Some(1.0),
                    exits_per_mib: None,
                    note: None,
                },
                missing("docker", "not installed"),
            ],
        };
        let md = markdown(&result);
        assert!(
            md.contains("| native | `sha256sum f` | 300 | 290 | 1.00 | – |"),
            "{md}"
        );
        assert!(
            md.contains("| docker | not measured: not installed |"),
            "{md}"
        );
    }
}
