//! flick-runtime under the real daemons: a private `dockerd` (and the `containerd` it
//! manages) started by this test binary with private paths (its own data root, exec root and
//! socket) inside a network namespace the test made (`lo` up), so that its bridge, NAT rules
//! and published ports exist there alone and clients reach them only from there (`nsenter`),
//! the runtime registered through
//! `cargo xtask install-runtime`, our images loaded from `cargo xtask oci` tarballs. The
//! daemons are stopped at the end, so this file has its own harness (libtest-mimic): one
//! set-up, every case named as usual, one tear-down.
//!
//! Also the runtime's own command line with bad bundles, as containerd's shim would call it.

use libtest_mimic::{Arguments, Failed, Trial};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The images the cases run, loaded into both daemons.
const IMAGES: [&str; 5] = ["hello", "exitcode", "fault", "sysinfo", "httpd"];
/// The containerd namespace of the `ctr` cases.
const CTR_NAMESPACE: &str = "flick-tests";
/// The longest one daemon command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest the daemon may take to answer after it starts.
const DAEMON_PATIENCE: Duration = Duration::from_secs(60);

/// The daemons and paths every case uses.
struct Env {
    /// `unix://…` of our dockerd.
    docker_host: String,
    /// The network namespace our dockerd runs in (its bridge, NAT and published ports).
    docker_netns: PathBuf,
    /// containerd's socket (managed by our dockerd).
    containerd: PathBuf,
    /// The installed runtime.
    runtime: PathBuf,
    /// Scratch space for the runtime's own cases.
    scratch: PathBuf,
    /// The image files.
    images: PathBuf,
}

fn main() {
    let args = Arguments::from_args();
    // Every case boots guests: `SKIP_KVM_TESTS=1` at build time ignores them all, by name.
    let skip = cfg!(skip_kvm);
    let cases = cases();
    if skip || args.list {
        let trials = cases
            .into_iter()
            .map(|(name, _)| Trial::test(name, || Ok(())).with_ignored_flag(skip))
            .collect();
        if skip {
            eprintln!("skipped (SKIP_KVM_TESTS=1): every case of oci.rs");
        }
        libtest_mimic::run(&args, trials).exit();
    }
    let selected: Vec<_> = cases
        .into_iter()
        .filter(|(name, _)| {
            args.filter
                .as_deref()
                .is_none_or(|f| matching(&args, name, f))
        })
        .filter(|(name, _)| !args.skip.iter().any(|s| name.contains(s.as_str())))
        .collect();
    if selected.is_empty() {
        libtest_mimic::run(&args, Vec::new()).exit();
    }
    let daemons = match Daemons::start() {
        Ok(daemons) => daemons,
        Err(why) => {
            let why = Arc::new(why);
            let trials = selected
                .into_iter()
                .map(|(name, _)| {
                    let why = Arc::clone(&why);
                    Trial::test(name, move || Err(format!("set-up failed: {why}").into()))
                })
                .collect();
            libtest_mimic::run(&args, trials).exit();
        }
    };
    let env = Arc::new(daemons.env.clone());
    let trials = selected
        .into_iter()
        .map(|(name, case)| {
            let env = Arc::clone(&env);
            Trial::test(name, move || case(&env))
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    drop(daemons);
    conclusion.exit();
}

fn matching(args: &Arguments, name: &str, filter: &str) -> bool {
    if args.exact {
        name == filter
    } else {
        name.contains(filter)
    }
}

type Case = fn(&Env) -> Result<(), Failed>;

fn cases() -> Vec<(&'static str, Case)> {
    vec![
        (
            "test_docker_run_hello_prints_greeting_and_args",
            docker_run_hello,
        ),
        (
            "test_docker_run_exitcode_returns_its_code",
            docker_run_exitcode,
        ),
        (
            "test_docker_run_crash_report_in_logs_exits_134",
            docker_run_crash,
        ),
        (
            "test_docker_stop_spinning_guest_ends_within_timeout",
            docker_stop_spinning,
        ),
        (
            "test_docker_kill_spinning_guest_exits_137",
            docker_kill_spinning,
        ),
        (
            "test_docker_run_memory_limit_sizes_guest_ram",
            docker_memory_limit,
        ),
        (
            "test_docker_run_cpus_and_pids_limits_reach_the_vmm",
            docker_cpu_pids_limits,
        ),
        (
            "test_docker_ps_and_inspect_show_the_running_vmm",
            docker_ps_inspect,
        ),
        ("test_docker_run_terminal_mode_gives_a_tty", docker_terminal),
        (
            "test_docker_run_as_a_user_boots_with_the_kvm_group",
            docker_user,
        ),
        (
            "test_docker_run_as_a_user_on_the_host_network_boots",
            docker_user_host_network,
        ),
        (
            "test_docker_rm_force_leaves_nothing_behind",
            docker_rm_force,
        ),
        (
            "test_docker_run_non_flick_image_fails_with_one_line",
            docker_non_flick,
        ),
        (
            "test_docker_run_published_port_reaches_the_guest",
            docker_published_port,
        ),
        (
            "test_docker_run_network_of_another_container_leaves_it_alone",
            docker_network_of_another_container,
        ),
        (
            "test_docker_run_network_none_boots_without_a_nic",
            docker_network_none,
        ),
        (
            "test_docker_run_network_host_leaves_the_host_interfaces_alone",
            docker_network_host,
        ),
        ("test_ctr_run_hello_through_the_runc_shim", ctr_run_hello),
        (
            "test_ctr_run_in_a_namespace_without_cni_serves_the_page",
            ctr_network_namespace,
        ),
        (
            "test_ctr_run_pinned_namespace_after_each_ending_is_given_back",
            ctr_network_namespace_reused,
        ),
        (
            "test_ctr_run_namespace_with_a_dead_redirect_serves_the_page",
            ctr_network_namespace_dead_redirect,
        ),
        (
            "test_ctr_run_namespace_whose_address_a_killed_guest_took_fails_with_one_line",
            ctr_network_namespace_taken_address,
        ),
        ("test_ctr_run_exitcode_returns_its_code", ctr_run_exitcode),
        (
            "test_runtime_lifecycle_create_start_state_delete",
            runtime_lifecycle,
        ),
        (
            "test_runtime_create_missing_image_fails_and_leaves_nothing",
            runtime_missing_image,
        ),
        (
            "test_runtime_create_non_flick_binary_fails_and_leaves_nothing",
            runtime_non_flick,
        ),
        (
            "test_runtime_create_malformed_config_fails_and_leaves_nothing",
            runtime_malformed,
        ),
        (
            "test_runtime_create_without_a_network_failing_capabilities_fail_create",
            runtime_privileges_without_network,
        ),
        (
            "test_runtime_start_as_a_user_without_a_network_under_umask_077_boots",
            runtime_user_under_umask,
        ),
        (
            "test_runtime_create_twice_fails_and_keeps_the_first",
            runtime_double_create,
        ),
        (
            "test_runtime_start_unknown_id_fails_with_one_line",
            runtime_unknown_id,
        ),
        (
            "test_runtime_kill_created_container_stops_it",
            runtime_kill_created,
        ),
    ]
}

// ---------------------------------------------------------------------------------------
// Set-up and tear-down.

/// Our daemon; dropping it removes every container and stops it.
struct Daemons {
    env: Env,
    dockerd: Child,
    exec_root: PathBuf,
}

impl Clone for Env {
    fn clone(&self) -> Self {
        Env {
            docker_host: self.docker_host.clone(),
            docker_netns: self.docker_netns.clone(),
            containerd: self.containerd.clone(),
            runtime: self.runtime.clone(),
            scratch: self.scratch.clone(),
            images: self.images.clone(),
        }
    }
}

impl Daemons {
    fn start() -> Result<Daemons, String> {
        if let Err(err) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
        {
            return Err(format!(
                "KVM tests need /dev/kvm read-write: {err}. Set SKIP_KVM_TESTS=1 to skip them \
                 on purpose (each is then reported as ignored)."
            ));
        }
        for tool in ["dockerd", "docker", "ctr"] {
            if which(tool).is_none() {
                return Err(format!(
                    "{tool} is not installed (apt-get install docker.io containerd)"
                ));
            }
        }
        let root = tests::project_root();
        let scratch = tests::scratch_dir("oci");
        // Unix socket paths are limited to 108 bytes: the exec root (sockets) goes in /tmp.
        let exec_root = std::env::temp_dir().join(format!("flick-oci-{}", std::process::id()));
        let built_runtime = std::env::var_os("FLICK_RUNTIME")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/release/flick-runtime"));
        if !built_runtime.is_file() {
            return Err(format!(
                "{} is missing (cargo build --release -p flick-runtime)",
                built_runtime.display()
            ));
        }
        let images = tests::image("hello")
            .parent()
            .expect("images live in a directory")
            .to_owned();
        let daemon_json = scratch.join("daemon.json");
        let bin = scratch.join("bin");
        xtask(&[
            "install-runtime",
            "--binary",
            path_str(&built_runtime),
            "--prefix",
            path_str(&bin),
            "--daemon-json",
            path_str(&daemon_json),
        ])?;
        let tarballs = scratch.join("oci");
        let mut oci = vec!["oci", "--output-dir", path_str(&tarballs)];
        oci.extend(IMAGES);
        xtask(&oci)?;
        let socket = exec_root.join("docker.sock");
        let docker_host = format!("unix://{}", socket.display());
        std::fs::create_dir_all(&exec_root).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(scratch.join("dockerd.log")).map_err(|e| e.to_string())?;
        let mut cmd = Command::new("dockerd");
        cmd.arg("--config-file")
            .arg(&daemon_json)
            .arg("--data-root")
            .arg(scratch.join("docker-data"))
            .arg("--exec-root")
            .arg(&exec_root)
            .arg("--pidfile")
            .arg(exec_root.join("dockerd.pid"))
            .args([
                "-H",
                &docker_host,
                "--ip6tables=false",
                "--userland-proxy=false",
            ])
            .args(["--exec-opt", "native.cgroupdriver=cgroupfs"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        // SAFETY: prctl, unshare, socket, ioctl and close in the child before exec (no
        // allocation): the daemon dies with this test binary even if it is killed before its
        // tear-down (the main thread lives until the end), and it runs in a network namespace
        // of its own with `lo` up.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                loopback_up()
            });
        }
        let dockerd = cmd
            .spawn()
            .map_err(|e| format!("cannot start dockerd: {e}"))?;
        let env = Env {
            docker_host,
            docker_netns: PathBuf::from(format!("/proc/{}/ns/net", dockerd.id())),
            containerd: exec_root.join("containerd/containerd.sock"),
            runtime: bin.join("flick-runtime"),
            scratch: scratch.clone(),
            images,
        };
        let daemons = Daemons {
            env,
            dockerd,
            exec_root,
        };
        daemons.wait_until_up(&scratch.join("dockerd.log"))?;
        for image in IMAGES {
            let tarball = tarballs.join(format!("{image}.tar"));
            let out = docker(&daemons.env, &["load", "-i", path_str(&tarball)]);
            check(&out, 0).map_err(|e| format!("docker load {image}: {e:?}"))?;
            let out = ctr(&daemons.env, &["images", "import", path_str(&tarball)]);
            check(&out, 0).map_err(|e| format!("ctr images import {image}: {e:?}"))?;
        }
        Ok(daemons)
    }

    fn wait_until_up(&self, log: &Path) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let out = docker(&self.env, &["info", "--format", "{{.ServerVersion}}"]);
            if out.status.success() {
                return Ok(());
            }
            if start.elapsed() > DAEMON_PATIENCE {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let last: Vec<_> = text.lines().rev().take(3).collect();
                return Err(format!("dockerd did not come up: {}", last.join(" | ")));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        let out = docker(&self.env, &["ps", "-aq"]);
        let ids: Vec<String> = stdout(&out).split_whitespace().map(String::from).collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            let _ = docker(&self.env, &args);
        }
        if let Ok(pid) = i32::try_from(self.dockerd.id()) {
            // SAFETY: kill(2) takes no pointers; `pid` is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let start = Instant::now();
        while start.elapsed() < DAEMON_PATIENCE {
            if let Ok(Some(_)) = self.dockerd.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !matches!(self.dockerd.try_wait(), Ok(Some(_))) {
            let _ = self.dockerd.kill();
            let _ = self.dockerd.wait();
        }
        // Containers a failed case left under the runtime's own roots: delete them first.
        let roots = std::fs::read_dir(self.env.scratch.join("runtime-root"));
        for root in roots.into_iter().flatten().flatten() {
            let ids = std::fs::read_dir(root.path());
            for id in ids.into_iter().flatten().flatten() {
                let id = id.file_name().to_string_lossy().into_owned();
                let _ = runtime(&self.env, &root.path(), &["delete", "--force", &id]);
            }
        }
        let _ = std::fs::remove_dir_all(&self.exec_root);
        let _ = std::fs::remove_dir_all(&self.env.scratch);
    }
}

/// Brings `lo` up in this process's network namespace (between fork and exec: no allocation).
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: a zeroed ifreq is valid; the socket and ioctls use only our stack.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut request: libc::ifreq = std::mem::zeroed();
        request.ifr_name[..2].copy_from_slice(&[b'l' as libc::c_char, b'o' as libc::c_char]);
        let up = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut request) == 0 && {
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(sock, libc::SIOCSIFFLAGS, &request) == 0
        };
        let err = std::io::Error::last_os_error();
        libc::close(sock);
        if up { Ok(()) } else { Err(err) }
    }
}

fn xtask(args: &[&str]) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(tests::project_root())
        .args(["run", "--quiet", "--package", "xtask", "--"])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run cargo xtask: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("cargo xtask {}: {}", args[0], stderr(&out).trim()))
    }
}

// ---------------------------------------------------------------------------------------
// Helpers.

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Runs `cmd`, killing it after [`COMMAND_TIMEOUT`].
fn bounded(mut cmd: Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start a command");
    let pid = child.id() as i32;
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match wait.recv_timeout(COMMAND_TIMEOUT) {
        Ok(out) => out.expect("cannot wait for a command"),
        Err(_) => {
            // SAFETY: kill(2) takes no pointers.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("{cmd:?} did not finish within {COMMAND_TIMEOUT:?}");
        }
    }
}

fn docker(env: &Env, args: &[&str]) -> Output {
    let mut cmd = Command::new("docker");
    cmd.env("DOCKER_HOST", &env.docker_host).args(args);
    bounded(cmd)
}

fn ctr(env: &Env, args: &[&str]) -> Output {
    let mut cmd = Command::new("ctr");
    cmd.arg("--address")
        .arg(&env.containerd)
        .args(["--namespace", CTR_NAMESPACE])
        .args(args);
    bounded(cmd)
}

/// Runs the runtime. Its output goes to files, not pipes: a container process created by
/// it inherits its stdio (as it inherits the shim's pipes) and would hold pipes open.
fn runtime(env: &Env, root: &Path, args: &[&str]) -> Output {
    runtime_under_umask(env, root, 0o022, args)
}

/// [`runtime`] with the umask `mask` (a daemon's may be 027 or 077).
fn runtime_under_umask(env: &Env, root: &Path, mask: libc::mode_t, args: &[&str]) -> Output {
    use std::os::unix::process::ExitStatusExt;
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = env.scratch.join("runtime-output");
    std::fs::create_dir_all(&dir).unwrap();
    let (out_path, err_path) = (dir.join(format!("{n}.out")), dir.join(format!("{n}.err")));
    let mut command = Command::new(&env.runtime);
    // SAFETY: umask(2) is async-signal-safe and touches no memory.
    unsafe {
        command.pre_exec(move || {
            libc::umask(mask);
            Ok(())
        });
    }
    let mut child = command
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("cannot start flick-runtime");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > COMMAND_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break std::process::ExitStatus::from_raw(9);
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Fails unless `out` ended with `status`.
fn check(out: &Output, status: i32) -> Result<(), Failed> {
    if out.status.code() == Some(status) {
        Ok(())
    } else {
        Err(format!(
            "expected status {status}, got {:?}\nstdout: {}\nstderr: {}",
            out.status,
            stdout(out),
            stderr(out)
        )
        .into())
    }
}

fn ensure(condition: bool, what: impl FnOnce() -> String) -> Result<(), Failed> {
    if condition {
        Ok(())
    } else {
        Err(what().into())
    }
}

/// A container name unique to this run and case.
fn unique(case: &str) -> String {
    format!("flick-{case}-{}", std::process::id())
}

/// Waits until `docker logs` of `name` contains `text`.
fn wait_for_log(env: &Env, name: &str, text: &str) -> Result<(), Failed> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let out = docker(env, &["logs", name]);
        if stdout(&out).contains(text) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{name} never printed '{text}'").into())
}

fn inspect(env: &Env, name: &str, format: &str) -> String {
    stdout(&docker(env, &["inspect", "--format", format, name]))
        .trim()
        .to_owned()
}

/// The file `name` of the cgroup of `pid` in `controller` (v1), or of its v2 cgroup.
fn cgroup_file(pid: i32, controller: &str, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let v1 = controllers.split(',').any(|c| c == controller);
        let dir = if v1 {
            format!("/sys/fs/cgroup/{controller}{path}")
        } else if controllers.is_empty() && Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        {
            format!("/sys/fs/cgroup{path}")
        } else {
            continue;
        };
        if let Ok(value) = std::fs::read_to_string(Path::new(&dir).join(name)) {
            return Some(value.trim().to_owned());
        }
    }
    None
}

/// Whether any process's command line mentions `text` (a container id).
fn process_mentioning(text: &str) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(text)
            && pid != std::process::id() as i32
        {
            return Some(pid);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// Docker.

fn docker_run_hello(env: &Env) -> Result<(), Failed> {
    let out = docker(
        env,
        &[
            "run",
            "--rm",
            "--runtime=flick",
            "flick/hello",
            "one",
            "two words",
        ],
    );
    check(&out, 0)?;
    let text = stdout(&out);
    ensure(
        text.starts_with("Hello from a unikernel!\none\ntwo words\n"),
        || format!("unexpected output: {text}"),
    )?;
    ensure(text.contains("\nHOSTNAME="), || {
        format!("Docker's environment did not reach the app: {text}")
    })
}

fn docker_run_exitcode(env: &Env) -> Result<(), Failed> {
    for code in [0, 3, 42] {
        let out = docker(
            env,
            &[
                "run",
                "--rm",
                "--runtime=flick",
                "flick/exitcode",
                &code.to_string(),
            ],
        );
        check(&out, code)?;
    }
    Ok(())
}

fn docker_run_crash(env: &Env) -> Result<(), Failed> {
    let name = unique("crash");
    let out = docker(
        env,
        &[
            "run",
            "--name",
            &name,
            "--runtime=flick",
            "flick/fault",
            "null",
        ],
    );
    check(&out, 134)?;
    let logs = docker(env, &["logs", &name]);
    let text = stderr(&logs);
    docker(env, &["rm", &name]);
    ensure(text.contains("guest crashed: page fault"), || {
        format!("no crash report in docker logs: {text}")
    })?;
    ensure(text.contains("null pointer dereference"), || text.clone())
}

fn docker_stop_spinning(env: &Env) -> Result<(), Failed> {
    let name = unique("stop");
    let out = docker(
        env,
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--runtime=flick",
            "flick/sysinfo",
            "spin",
        ],
    );
    check(&out, 0)?;
    wait_for_log(env, &name, "spinning")?;
    let start = Instant::now();
    let out = docker(env, &["stop", "--time", "10", &name]);
    let took = start.elapsed();
    check(&out, 0)?;
    let status = inspect(env, &name, "{{.State.ExitCode}}");
    let logs = stderr(&docker(env, &["logs", &name]));
    docker(env, &["rm", "-f", &name]);
    ensure(took < Duration::from_secs(5), || {
        format!("docker stop took {took:?}: SIGTERM did not stop the guest")
    })?;
    ensure(status == "143", || format!("exit code {status}, not 143"))?;
    ensure(logs.contains("guest stopped by SIGTERM"), || logs.clone())
}

fn docker_kill_spinning(env: &Env) -> Result<(), Failed> {
    let name = unique("kill");
    let out = docker(
        env,
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--runtime=flick",
            "flick/sysinfo",
            "spin",
        ],
    );
    check(&out, 0)?;
    wait_for_log(env, &name, "spinning")?;
    check(&docker(env, &["kill", &name]), 0)?;
    let start = Instant::now();
    let mut state = inspect(env, &name, "{{.State.Status}} {{.State.ExitCode}}");
    while state != "exited 137" && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
        state = inspect(env, &name, "{{.State.Status}} {{.State.ExitCode}}");
    }
    docker(env, &["rm", "-f", &name]);
    ensure(state == "exited 137", || {
        format!("after docker kill: {state}")
    })
}

fn docker_memory_limit(env: &Env) -> Result<(), Failed> {
    for (limit, guest) in [
        (Some("64m"), "mem 60 MiB"),
        (Some("128m"), "mem 124 MiB"),
        (None, "mem 16 MiB"),
    ] {
        let mut args = vec!["run", "--rm", "--runtime=flick"];
        if let Some(limit) = limit {
            args.extend(["--memory", limit]);
        }
        args.push("flick/sysinfo");
        let out = docker(env, &args);
        check(&out, 0)?;
        let text = stdout(&out);
        ensure(text.starts_with(&format!("{guest}\n")), || {
            format!("with --memory {limit:?}: {text}")
        })?;
    }
    Ok(())
}

fn docker_cpu_pids_limits(env: &Env) -> Result<(), Failed> {
    let name = unique("limits");
    let out = docker(
        env,
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--runtime=flick",
            "--cpus",
            "0.5",
            "--pids-limit",
            "20",
            "--memory",
            "64m",
            "flick/sysinfo",
            "spin",
        ],
    );
    check(&out, 0)?;
    wait_for_log(env, &name, "spinning")?;
    let pid: i32 = inspect(env, &name, "{{.State.Pid}}").parse().unwrap_or(0);
    let pids_max = cgroup_file(pid, "pids", "pids.max");
    let quota =
        cgroup_file(pid, "cpu", "cpu.cfs_quota_us").or_else(|| cgroup_file(pid, "cpu", "cpu.max"));
    let memory = cgroup_file(pid, "memory", "memory.limit_in_bytes")
        .or_else(|| cgroup_file(pid, "memory", "memory.max"));
    docker(env, &["rm", "-f", &name]);
    ensure(pids_max.as_deref() == Some("20"), || {
        format!("pids.max {pids_max:?}")
    })?;
    ensure(
        matches!(quota.as_deref(), Some("50000") | Some("50000 100000")),
        || format!("cpu quota {quota:?}"),
    )?;
    ensure(memory.as_deref() == Some("67108864"), || {
        format!("memory limit {memory:?}")
    })
}

fn docker_ps_inspect(env: &Env) -> Result<(), Failed> {
    let name = unique("ps");
    let out = docker(
        env,
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--runtime=flick",
            "flick/sysinfo",
            "spin",
        ],
    );
    check(&out, 0)?;
    let id = stdout(&out).trim().to_owned();
    wait_for_log(env, &name, "spinning")?;
    let listed = stdout(&docker(env, &["ps", "--format", "{{.Names}} {{.Status}}"]));
    let status = inspect(env, &name, "{{.State.Status}} {{.HostConfig.Runtime}}");
    let pid: i32 = inspect(env, &name, "{{.State.Pid}}").parse().unwrap_or(0);
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let pid_ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let caps = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let bounding = caps
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    let our_ns = std::fs::read_link("/proc/self/ns/pid").ok();
    docker(env, &["rm", "-f", &name]);
    ensure(
        listed.lines().any(|l| l.starts_with(&format!("{name} Up"))),
        || format!("docker ps: {listed}"),
    )?;
    ensure(status == "running flick", || {
        format!("docker inspect: {status}")
    })?;
    ensure(cgroup.contains(&id), || {
        format!("the VMM (pid {pid}) is not in the container's cgroup: {cgroup}")
    })?;
    ensure(pid_ns.is_some() && pid_ns != our_ns, || {
        "the VMM is not in a pid namespace of its own".to_owned()
    })?;
    const CAP_SYS_ADMIN: u32 = 21;
    ensure(
        bounding.is_some_and(|b| b & (1 << CAP_SYS_ADMIN) == 0),
        || format!("the VMM kept CAP_SYS_ADMIN (CapBnd {bounding:x?})"),
    )
}

fn docker_user(env: &Env) -> Result<(), Failed> {
    run_hello_as_a_user(env, &[])
}

/// Without a network of its own the container process gives up its privileges before
/// `create` returns, long before `start` opens the exec fifo: it waits on the fifo, and
/// boots, as the user.
fn docker_user_host_network(env: &Env) -> Result<(), Failed> {
    run_hello_as_a_user(env, &["--network", "host"])
}

fn run_hello_as_a_user(env: &Env, extra: &[&str]) -> Result<(), Failed> {
    let mut args = vec!["run", "--rm", "--user", "1000:1000", "--cap-drop", "ALL"];
    args.extend(extra);
    args.extend(["--runtime=flick", "flick/hello", "as-user"]);
    let out = docker(env, &args);
    check(&out, 0)?;
    let text = stdout(&out);
    ensure(
        text.starts_with("Hello from a unikernel!\nas-user\n"),
        || format!("unexpected output: {text}"),
    )
}

fn docker_terminal(env: &Env) -> Result<(), Failed> {
    let out = docker(
        env,
        &["run", "--rm", "-t", "--runtime=flick", "flick/hello", "tty"],
    );
    check(&out, 0)?;
    let text = stdout(&out);
    ensure(
        text.starts_with("Hello from a unikernel!\r\ntty\r\n"),
        || format!("no terminal line endings: {text:?}"),
    )?;
    ensure(text.contains("TERM=xterm"), || text.clone())
}

fn docker_rm_force(env: &Env) -> Result<(), Failed> {
    let name = unique("rmf");
    let out = docker(
        env,
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--runtime=flick",
            "flick/sysinfo",
            "spin",
        ],
    );
    check(&out, 0)?;
    let id = stdout(&out).trim().to_owned();
    wait_for_log(env, &name, "spinning")?;
    let pid: i32 = inspect(env, &name, "{{.State.Pid}}").parse().unwrap_or(0);
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    check(&docker(env, &["rm", "-f", &name]), 0)?;
    let start = Instant::now();
    while process_mentioning(&id).is_some() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    ensure(process_mentioning(&id).is_none(), || {
        format!("a process of {id} outlived docker rm -f")
    })?;
    let state_dirs: Vec<_> =
        walk(&PathBuf::from(env.docker_host.trim_start_matches("unix://")).with_file_name(""))
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(&id))
            .collect();
    ensure(state_dirs.is_empty(), || {
        format!("left behind: {state_dirs:?}")
    })?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    ensure(!mounts.contains(&id), || format!("a mount of {id} is left"))?;
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let controller = controllers.split(',').next().unwrap_or("");
        let dir = match controller {
            "" => format!("/sys/fs/cgroup/unified{path}"),
            c => format!("/sys/fs/cgroup/{}{path}", c.trim_start_matches("name=")),
        };
        ensure(!path.contains(&id) || !Path::new(&dir).exists(), || {
            format!("cgroup {dir} is left")
        })?;
    }
    Ok(())
}

/// Every path under `dir` (no symlinks followed).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

fn docker_non_flick(env: &Env) -> Result<(), Failed> {
    // A plain rootfs: a text file as its entrypoint, no marker.
    let dir = env.scratch.join("plain-rootfs");
    std::fs::create_dir_all(dir.join("dev"))?;
    std::fs::write(dir.join("hello"), "not a flick image\n")?;
    let tar = env.scratch.join("plain.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .args(["-cf", path_str(&tar), "."])
        .status()?;
    ensure(status.success(), || "tar failed".to_owned())?;
    let image = unique("plain");
    check(
        &docker(
            env,
            &[
                "import",
                "-c",
                r#"ENTRYPOINT ["/hello"]"#,
                path_str(&tar),
                &image,
            ],
        ),
        0,
    )?;
    let out = docker(env, &["run", "--rm", "--runtime=flick", &image]);
    docker(env, &["rmi", &image]);
    ensure(out.status.code() != Some(0), || {
        "a plain image ran".to_owned()
    })?;
    let text = stderr(&out);
    ensure(text.contains("not a flick image"), || {
        format!("unclear error: {text}")
    })
}

// ---------------------------------------------------------------------------------------
// containerd.

fn ctr_run(env: &Env, args: &[&str]) -> Output {
    let mut all = vec![
        "run",
        "--rm",
        "--runtime",
        "io.containerd.runc.v2",
        "--runc-binary",
        path_str(&env.runtime),
    ];
    all.extend(args);
    ctr(env, &all)
}

// ---------------------------------------------------------------------------------------
// Networking: the guest takes over the container's interface.

/// Runs `program args` in the network namespace at `netns`.
fn in_netns(netns: &Path, program: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(program)
        .args(args);
    bounded(cmd)
}

/// `curl URL` from inside `netns`, retried for up to 10 s: the body of the first 200.
fn curl_from(netns: &Path, url: &str) -> Result<String, Failed> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(10) {
        let out = in_netns(netns, "curl", &["-sS", "--fail", "--max-time", "2", url]);
        if out.status.success() {
            return Ok(stdout(&out));
        }
        last = stderr(&out);
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("curl {url} never got a page: {last}").into())
}

/// The IPv4 addresses (`ip -4 -o addr`) of `interface` in `netns`.
fn ipv4_addresses(netns: &Path, interface: &str) -> String {
    stdout(&in_netns(
        netns,
        "ip",
        &["-4", "-o", "addr", "show", "dev", interface],
    ))
}

fn docker_published_port(env: &Env) -> Result<(), Failed> {
    let name = unique("port");
    let out = docker(
        env,
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--runtime=flick",
            "-p",
            "8080:80",
            "flick/httpd",
        ],
    );
    check(&out, 0)?;
    let result = (|| {
        wait_for_log(env, &name, "listening on")?;
        let address = inspect(env, &name, "{{.NetworkSettings.IPAddress}}");
        let logs = stdout(&docker(env, &["logs", &name]));
        ensure(logs.contains(&format!("listening on {address}:80")), || {
            format!("the guest does not hold the container's address {address}: {logs}")
        })?;
        let page = curl_from(&env.docker_netns, "http://127.0.0.1:8080/")?;
        ensure(page.contains("Hello from a flick microVM"), || {
            format!("unexpected page through the published port: {page}")
        })?;
        let page = curl_from(&env.docker_netns, &format!("http://{address}/"))?;
        ensure(page.contains("Hello from a flick microVM"), || {
            format!("unexpected page from the container's address: {page}")
        })?;
        let pid = inspect(env, &name, "{{.State.Pid}}");
        let container_netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let left = ipv4_addresses(&container_netns, "eth0");
        ensure(left.trim().is_empty(), || {
            format!("the container's eth0 still holds an address: {left}")
        })
    })();
    let _ = docker(env, &["rm", "-f", &name]);
    result
}

/// An image of one static native program that waits for a signal (a plain container for
/// runc, built here with `cc -static`).
fn waiting_native_image(env: &Env) -> Result<String, Failed> {
    let dir = env.scratch.join("waiting-rootfs");
    std::fs::create_dir_all(dir.join("dev"))?;
    let source = env.scratch.join("waiting.c");
    std::fs::write(
        &source,
        "#include <unistd.h>\nint main(void) { pause(); return 0; }\n",
    )?;
    let status = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(dir.join("wait"))
        .arg(&source)
        .status()?;
    ensure(status.success(), || "cc -static failed".to_owned())?;
    let tar = env.scratch.join("waiting.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .args(["-cf", path_str(&tar), "."])
        .status()?;
    ensure(status.success(), || "tar failed".to_owned())?;
    let image = unique("waiting");
    check(
        &docker(
            env,
            &[
                "import",
                "-c",
                r#"ENTRYPOINT ["/wait"]"#,
                path_str(&tar),
                &image,
            ],
        ),
        0,
    )?;
    Ok(image)
}

/// `--network container:X` joins X's namespace through X's process: a flick guest there boots
/// without a network device, and X (a plain runc container) keeps its interface's address.
fn docker_network_of_another_container(env: &Env) -> Result<(), Failed> {
    let image = waiting_native_image(env)?;
    let owner = unique("owner");
    let out = docker(env, &["run", "-d", "--name", &owner, &image]);
    check(&out, 0)?;
    let joiner = unique("joiner");
    let result = (|| {
        let pid = inspect(env, &owner, "{{.State.Pid}}");
        let owner_netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let before = ipv4_addresses(&owner_netns, "eth0");
        ensure(!before.trim().is_empty(), || {
            "the runc container has no address on eth0 to begin with".to_owned()
        })?;
        let network = format!("container:{owner}");
        let out = docker(
            env,
            &[
                "run",
                "--name",
                &joiner,
                "--runtime=flick",
                "--network",
                &network,
                "flick/httpd",
            ],
        );
        let logs = docker(env, &["logs", &joiner]);
        check(&out, 1)?;
        let text = stdout(&logs) + &stderr(&logs);
        ensure(text.contains("httpd: no network device"), || {
            format!("a guest in another container's namespace should get no network device: {text}")
        })?;
        let after = ipv4_addresses(&owner_netns, "eth0");
        ensure(after == before, || {
            format!("the runc container's eth0 changed: {before} -> {after}")
        })
    })();
    let _ = docker(env, &["rm", "-f", &joiner]);
    let _ = docker(env, &["rm", "-f", &owner]);
    let _ = docker(env, &["rmi", &image]);
    result
}

fn docker_network_none(env: &Env) -> Result<(), Failed> {
    let name = unique("nonet");
    let out = docker(
        env,
        &[
            "run",
            "--name",
            &name,
            "--runtime=flick",
            "--network",
            "none",
            "flick/httpd",
        ],
    );
    let logs = docker(env, &["logs", &name]);
    let _ = docker(env, &["rm", "-f", &name]);
    check(&out, 1)?;
    let text = stdout(&logs) + &stderr(&logs);
    ensure(text.contains("httpd: no network device"), || {
        format!("the guest should have booted without a network device: {text}")
    })
}

fn docker_network_host(env: &Env) -> Result<(), Failed> {
    let before = ipv4_addresses(&env.docker_netns, "docker0");
    ensure(!before.trim().is_empty(), || {
        "the daemon's bridge has no address to begin with".into()
    })?;
    let name = unique("hostnet");
    let out = docker(
        env,
        &[
            "run",
            "--name",
            &name,
            "--runtime=flick",
            "--network",
            "host",
            "flick/httpd",
        ],
    );
    let logs = docker(env, &["logs", &name]);
    let _ = docker(env, &["rm", "-f", &name]);
    let after = ipv4_addresses(&env.docker_netns, "docker0");
    ensure(before == after, || {
        format!("the host's bridge changed: {before} became {after}")
    })?;
    check(&out, 1)?;
    let text = stdout(&logs) + &stderr(&logs);
    ensure(text.contains("httpd: no network device"), || {
        format!("a guest in the host's namespace should get no network device: {text}")
    })
}

/// A process holding a network namespace of its own, killed when dropped.
struct Netns(Child);

impl Netns {
    fn new() -> Result<Netns, Failed> {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "120"])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start unshare: {e}"))?;
        let netns = Netns(child);
        // Wait until `sleep` runs in the new namespace.
        let start = Instant::now();
        while std::fs::read_link(netns.path()).ok() == std::fs::read_link("/proc/self/ns/net").ok()
        {
            if start.elapsed() > Duration::from_secs(5) {
                return Err("unshare --net did not make a namespace".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(netns)
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.0.id()))
    }

    /// Runs `ip ARGS` inside.
    fn ip(&self, args: &[&str]) -> Result<(), Failed> {
        check(&in_netns(&self.path(), "ip", args), 0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A namespace pinned to a file by a bind mount, as `ip netns add` and CNI runtimes pin a
/// pod's (`/var/run/netns/NAME`); unmounted when dropped.
struct PinnedNetns(PathBuf);

impl Netns {
    fn pin(&self, at: &Path) -> Result<PinnedNetns, Failed> {
        std::fs::write(at, "")?;
        let out = Command::new("mount")
            .arg("--bind")
            .arg(self.path())
            .arg(at)
            .output()?;
        check(&out, 0)?;
        Ok(PinnedNetns(at.to_owned()))
    }
}

impl Drop for PinnedNetns {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A pod's network made here, with no CNI: a veth pair between a client namespace
/// (10.99.3.1) and the container's (`eth0`, 10.99.3.2/24, default route via the client),
/// the container's pinned to a file as a CNI runtime pins a pod's (a `/proc/PID/ns/net` path
/// would name the namespace of another process, which the runtime leaves alone).
struct PodNetwork {
    client: Netns,
    container: Netns,
    pinned: PinnedNetns,
}

impl PodNetwork {
    fn new(env: &Env, id: &str) -> Result<PodNetwork, Failed> {
        let client = Netns::new()?;
        let container = Netns::new()?;
        client.ip(&["link", "set", "lo", "up"])?;
        client.ip(&[
            "link",
            "add",
            "veth-client",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &container.pid(),
        ])?;
        client.ip(&["addr", "add", "10.99.3.1/24", "dev", "veth-client"])?;
        client.ip(&["link", "set", "veth-client", "up"])?;
        container.ip(&["link", "set", "lo", "up"])?;
        container.ip(&["addr", "add", "10.99.3.2/24", "dev", "eth0"])?;
        container.ip(&["link", "set", "eth0", "up"])?;
        container.ip(&["route", "add", "default", "via", "10.99.3.1"])?;
        // Calico's shape: a gateway reachable only through a link-scope route, which must
        // come back before the route through it.
        container.ip(&[
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ])?;
        container.ip(&["route", "add", "10.99.4.0/24", "via", "169.254.1.1"])?;
        let pinned = container.pin(&env.scratch.join(format!("{id}.netns")))?;
        Ok(PodNetwork {
            client,
            container,
            pinned,
        })
    }

    /// `--with-ns` of `ctr run`.
    fn with_ns(&self) -> String {
        format!("network:{}", self.pinned.0.display())
    }

    /// `ctr run -d` of httpd in this namespace as container `id`.
    fn run_httpd(&self, env: &Env, id: &str) -> Output {
        ctr(
            env,
            &[
                "run",
                "-d",
                "--runtime",
                "io.containerd.runc.v2",
                "--runc-binary",
                path_str(&env.runtime),
                "--with-ns",
                &self.with_ns(),
                "docker.io/flick/httpd:latest",
                id,
                "/httpd",
            ],
        )
    }

    /// The guest's page, fetched from the client namespace.
    fn fetch_page(&self) -> Result<(), Failed> {
        let page = curl_from(&self.client.path(), "http://10.99.3.2/api/ctr")?;
        ensure(page.contains("\"path\":\"/api/ctr\""), || {
            format!("unexpected answer from the guest: {page}")
        })
    }

    /// `eth0` as the pod's network set it up: its address, the default route through it,
    /// the route through a link-scope gateway, no ingress qdisc.
    fn as_set_up(&self) -> Result<(), Failed> {
        let path = self.container.path();
        let addresses = ipv4_addresses(&path, "eth0");
        ensure(addresses.contains("10.99.3.2/24"), || {
            format!("eth0 did not get its address back: {addresses:?}")
        })?;
        let routes = stdout(&in_netns(&path, "ip", &["-4", "route", "show", "default"]));
        ensure(routes.contains("via 10.99.3.1 dev eth0"), || {
            format!("eth0 did not get its default route back: {routes:?}")
        })?;
        let routes = stdout(&in_netns(
            &path,
            "ip",
            &["-4", "route", "show", "10.99.4.0/24"],
        ));
        ensure(routes.contains("via 169.254.1.1 dev eth0"), || {
            format!("eth0 did not get its route through a link-scope gateway back: {routes:?}")
        })?;
        let qdiscs = stdout(&in_netns(&path, "tc", &["qdisc", "show", "dev", "eth0"]));
        ensure(!qdiscs.contains("ingress"), || {
            format!("eth0 keeps an ingress qdisc: {qdiscs:?}")
        })
    }
}

/// Stops task `id` with `signal`, then deletes it (the runtime's `delete`) and its container.
fn remove_ctr_task(env: &Env, id: &str, signal: &str) {
    let _ = ctr(env, &["task", "kill", "--signal", signal, id]);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10)
        && !ctr(env, &["task", "delete", id]).status.success()
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = ctr(env, &["container", "delete", id]);
}

/// `ctr run` with our runtime in a pinned namespace: the guest takes the container side's
/// address; the client fetches the page from it.
fn ctr_network_namespace(env: &Env) -> Result<(), Failed> {
    let id = unique("ctr-net");
    let pod = PodNetwork::new(env, &id)?;
    let out = pod.run_httpd(env, &id);
    let result = check(&out, 0).and_then(|()| {
        pod.fetch_page()?;
        let left = ipv4_addresses(&pod.container.path(), "eth0");
        ensure(left.trim().is_empty(), || {
            format!("the container's eth0 still holds an address: {left}")
        })
    });
    remove_ctr_task(env, &id, "SIGKILL");
    result
}

/// Containers one after another in a pod's pinned namespace, as a restart policy runs them:
/// each ending (the guest's own exit, a stop signal, `SIGKILL`) gives `eth0` back as it was,
/// and the next guest serves the page.
fn ctr_network_namespace_reused(env: &Env) -> Result<(), Failed> {
    let id = unique("ctr-reuse");
    let pod = PodNetwork::new(env, &id)?;
    let hello = format!("{id}-hello");
    let out = ctr_run(
        env,
        &[
            "--with-ns",
            &pod.with_ns(),
            "docker.io/flick/hello:latest",
            &hello,
            "/hello",
        ],
    );
    check(&out, 0)?;
    pod.as_set_up()
        .map_err(|e| when("after a guest that exited", e))?;
    for signal in ["SIGTERM", "SIGKILL"] {
        let httpd = format!("{id}-{}", signal.to_lowercase());
        let out = pod.run_httpd(env, &httpd);
        let served = check(&out, 0).and_then(|()| pod.fetch_page());
        remove_ctr_task(env, &httpd, signal);
        served.map_err(|e| when(&format!("the run ended by {signal}"), e))?;
        pod.as_set_up()
            .map_err(|e| when(&format!("after a guest stopped by {signal}"), e))?;
    }
    Ok(())
}

/// `failure`, saying when it happened.
fn when(context: &str, failure: Failed) -> Failed {
    format!("{context}: {}", failure.message().unwrap_or("failed")).into()
}

/// What a container killed before its runtime could clean up leaves (`delete` never ran):
/// an ingress qdisc on `eth0` redirecting to a tap that is gone. `flush`: its addresses
/// taken too.
fn leave_a_dead_redirect(pod: &PodNetwork, flush: bool) -> Result<(), Failed> {
    let path = pod.container.path();
    let tc = |args: &[&str]| check(&in_netns(&path, "tc", args), 0);
    pod.container.ip(&[
        "link", "add", "gone0", "type", "veth", "peer", "name", "gone1",
    ])?;
    tc(&["qdisc", "add", "dev", "eth0", "ingress"])?;
    tc(&[
        "filter", "add", "dev", "eth0", "parent", "ffff:", "protocol", "all", "u32", "match",
        "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", "gone0",
    ])?;
    pod.container.ip(&["link", "del", "gone0"])?;
    if flush {
        pod.container.ip(&["addr", "flush", "dev", "eth0"])?;
    }
    Ok(())
}

fn ctr_network_namespace_dead_redirect(env: &Env) -> Result<(), Failed> {
    let id = unique("ctr-dead");
    let pod = PodNetwork::new(env, &id)?;
    leave_a_dead_redirect(&pod, false)?;
    let out = pod.run_httpd(env, &id);
    let result = check(&out, 0).and_then(|()| pod.fetch_page());
    remove_ctr_task(env, &id, "SIGKILL");
    result
}

fn ctr_network_namespace_taken_address(env: &Env) -> Result<(), Failed> {
    let id = unique("ctr-taken");
    let pod = PodNetwork::new(env, &id)?;
    leave_a_dead_redirect(&pod, true)?;
    let out = ctr_run(
        env,
        &[
            "--with-ns",
            &pod.with_ns(),
            "docker.io/flick/hello:latest",
            &id,
            "/hello",
        ],
    );
    let text = stdout(&out) + &stderr(&out);
    ensure(out.status.code() != Some(0), || {
        format!("the guest booted without its network: {text}")
    })?;
    ensure(
        text.contains("killed earlier in this namespace took it"),
        || format!("unclear error: {text}"),
    )?;
    let qdiscs = stdout(&in_netns(
        &pod.container.path(),
        "tc",
        &["qdisc", "show", "dev", "eth0"],
    ));
    ensure(!qdiscs.contains("ingress"), || {
        format!("the dead redirect is still there: {qdiscs:?}")
    })
}

fn ctr_run_hello(env: &Env) -> Result<(), Failed> {
    let id = unique("ctr-hello");
    let out = ctr_run(
        env,
        &["docker.io/flick/hello:latest", &id, "/hello", "via-ctr"],
    );
    check(&out, 0)?;
    let text = stdout(&out);
    ensure(
        text.starts_with("Hello from a unikernel!\nvia-ctr\n"),
        || format!("unexpected output: {text}"),
    )
}

fn ctr_run_exitcode(env: &Env) -> Result<(), Failed> {
    let id = unique("ctr-exit");
    let out = ctr_run(
        env,
        &["docker.io/flick/exitcode:latest", &id, "/exitcode", "9"],
    );
    check(&out, 9)
}

// ---------------------------------------------------------------------------------------
// The runtime's own command line, as the shim calls it.

/// A bundle whose rootfs holds `files` (path, bytes) and whose config.json runs `args`.
fn bundle(env: &Env, case: &str, files: &[(&str, Vec<u8>)], args: &[&str]) -> PathBuf {
    let bundle = env.scratch.join("bundles").join(case);
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("dev")).unwrap();
    for (path, bytes) in files {
        std::fs::write(rootfs.join(path), bytes).unwrap();
    }
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/"
        },
        "root": { "path": "rootfs" },
        "hostname": "flick-test",
        "linux": {
            "namespaces": [
                { "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" },
                { "type": "network" }
            ]
        }
    });
    std::fs::write(bundle.join("config.json"), config.to_string()).unwrap();
    bundle
}

fn image_bytes(env: &Env, name: &str) -> Vec<u8> {
    std::fs::read(env.images.join(name)).unwrap()
}

fn marker(image: &str) -> Vec<u8> {
    format!(r#"{{"image":"{image}"}}"#).into_bytes()
}

/// Creates `id` from `bundle` and expects the failure `expected`; checks nothing is left.
fn create_fails(
    env: &Env,
    root: &Path,
    bundle: &Path,
    id: &str,
    expected: &str,
) -> Result<(), Failed> {
    let out = runtime(env, root, &["create", "--bundle", path_str(bundle), id]);
    ensure(out.status.code() == Some(1), || {
        format!("create: {:?}", out.status)
    })?;
    let text = stderr(&out);
    ensure(text.lines().count() == 1 && text.contains(expected), || {
        format!("expected one line with '{expected}', got: {text}")
    })?;
    ensure(!root.join(id).exists(), || {
        "the state directory is left".to_owned()
    })?;
    ensure(process_mentioning(id).is_none(), || {
        "a process is left".to_owned()
    })?;
    for controller in ["pids", "memory", "cpu", "unified"] {
        let dir = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join("flick")
            .join(id);
        ensure(!dir.exists(), || format!("{} is left", dir.display()))?;
    }
    Ok(())
}

fn runtime_root(env: &Env, case: &str) -> PathBuf {
    env.scratch.join("runtime-root").join(case)
}

fn runtime_lifecycle(env: &Env) -> Result<(), Failed> {
    let id = unique("life");
    let root = runtime_root(env, "life");
    let files = [
        ("hello", image_bytes(env, "hello")),
        ("flick.json", marker("/hello")),
    ];
    let bundle = bundle(env, "life", &files, &["/hello"]);
    let pid_file = bundle.join("pid");
    let out = runtime(
        env,
        &root,
        &[
            "create",
            "--bundle",
            path_str(&bundle),
            "--pid-file",
            path_str(&pid_file),
            &id,
        ],
    );
    check(&out, 0)?;
    let state: serde_json::Value =
        serde_json::from_slice(&runtime(env, &root, &["state", &id]).stdout)?;
    let pid: i64 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
    ensure(state["status"] == "created", || format!("state: {state}"))?;
    ensure(state["pid"] == pid, || {
        format!("pid file {pid}, state {state}")
    })?;
    check(&runtime(env, &root, &["start", &id]), 0)?;
    let start = Instant::now();
    let mut status = String::new();
    while start.elapsed() < Duration::from_secs(10) {
        let state: serde_json::Value =
            serde_json::from_slice(&runtime(env, &root, &["state", &id]).stdout)?;
        status = state["status"].as_str().unwrap_or("").to_owned();
        if status == "stopped" {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure(status == "stopped", || {
        format!("still {status} after start")
    })?;
    let kill = runtime(env, &root, &["kill", &id, "KILL"]);
    ensure(stderr(&kill).contains("it is stopped"), || {
        format!(
            "kill of a stopped container: {:?} {}",
            kill.status,
            stderr(&kill)
        )
    })?;
    check(&runtime(env, &root, &["delete", &id]), 0)?;
    ensure(!root.join(&id).exists(), || {
        "delete left the state directory".to_owned()
    })?;
    let out = runtime(env, &root, &["delete", &id]);
    ensure(stderr(&out).contains("does not exist"), || stderr(&out))
}

fn runtime_missing_image(env: &Env) -> Result<(), Failed> {
    let id = unique("missing");
    let bundle = bundle(
        env,
        "missing",
        &[("flick.json", marker("/nope"))],
        &["/nope"],
    );
    create_fails(
        env,
        &runtime_root(env, "missing"),
        &bundle,
        &id,
        "cannot read /nope",
    )
}

fn runtime_non_flick(env: &Env) -> Result<(), Failed> {
    let id = unique("nonflick");
    let native = std::fs::read("/bin/true")?;
    let bundle = bundle(
        env,
        "nonflick",
        &[("true", native), ("flick.json", marker("/true"))],
        &["/true"],
    );
    create_fails(
        env,
        &runtime_root(env, "nonflick"),
        &bundle,
        &id,
        "/true is not a usable flick image: not an image for this VMM",
    )
}

fn runtime_malformed(env: &Env) -> Result<(), Failed> {
    let id = unique("malformed");
    let bundle = bundle(env, "malformed", &[], &["/x"]);
    std::fs::write(bundle.join("config.json"), "{ \"ociVersion\": ")?;
    create_fails(
        env,
        &runtime_root(env, "malformed"),
        &bundle,
        &id,
        "malformed config.json",
    )
}

/// Without a network to connect nothing needs `CAP_NET_ADMIN` after `start`: the container
/// process gives up its privileges before "ready", so that a failure (here an ambient
/// capability outside the permitted set, which the kernel refuses) fails `create` with one
/// line, the one Docker shows, not the container after `start`.
fn runtime_privileges_without_network(env: &Env) -> Result<(), Failed> {
    let id = unique("privileges");
    let files = [
        ("hello", image_bytes(env, "hello")),
        ("flick.json", marker("/hello")),
    ];
    let bundle = bundle(env, "privileges", &files, &["/hello"]);
    let path = bundle.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    config["process"]["capabilities"] = serde_json::json!({
        "bounding": ["CAP_NET_RAW"], "effective": [], "permitted": [], "inheritable": [],
        "ambient": ["CAP_NET_RAW"]
    });
    config["linux"]["namespaces"]
        .as_array_mut()
        .expect("bundle() lists namespaces")
        .retain(|ns| ns["type"] != "network");
    std::fs::write(&path, config.to_string())?;
    create_fails(
        env,
        &runtime_root(env, "privileges"),
        &bundle,
        &id,
        "cannot set the ambient capabilities",
    )
}

/// A container of user 1000 without a network namespace of its own gives up root before
/// `create` returns and opens the exec fifo as that user: under the umask 077 of a daemon,
/// its state directory must still let it through, and `start` must find it waiting.
fn runtime_user_under_umask(env: &Env) -> Result<(), Failed> {
    let id = unique("umask");
    let root = runtime_root(env, "umask");
    let files = [
        ("hello", image_bytes(env, "hello")),
        ("flick.json", marker("/hello")),
    ];
    let bundle = bundle(env, "umask", &files, &["/hello"]);
    let path = bundle.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    config["process"]["user"] = serde_json::json!({ "uid": 1000, "gid": 1000 });
    config["linux"]["namespaces"]
        .as_array_mut()
        .expect("bundle() lists namespaces")
        .retain(|ns| ns["type"] != "network");
    std::fs::write(&path, config.to_string())?;
    let run = |args: &[&str]| runtime_under_umask(env, &root, 0o077, args);
    let result = check(&run(&["create", "--bundle", path_str(&bundle), &id]), 0)
        .and_then(|()| check(&run(&["start", &id]), 0));
    let _ = run(&["delete", "--force", &id]);
    result
}

fn runtime_double_create(env: &Env) -> Result<(), Failed> {
    let id = unique("double");
    let root = runtime_root(env, "double");
    let files = [
        ("hello", image_bytes(env, "hello")),
        ("flick.json", marker("/hello")),
    ];
    let bundle = bundle(env, "double", &files, &["/hello"]);
    check(
        &runtime(env, &root, &["create", "--bundle", path_str(&bundle), &id]),
        0,
    )?;
    let second = runtime(env, &root, &["create", "--bundle", path_str(&bundle), &id]);
    let state: serde_json::Value =
        serde_json::from_slice(&runtime(env, &root, &["state", &id]).stdout)?;
    check(&runtime(env, &root, &["delete", "--force", &id]), 0)?;
    ensure(second.status.code() == Some(1), || {
        "a second create succeeded".to_owned()
    })?;
    ensure(stderr(&second).contains("already exists"), || {
        stderr(&second)
    })?;
    ensure(state["status"] == "created", || {
        format!("the first container: {state}")
    })
}

fn runtime_unknown_id(env: &Env) -> Result<(), Failed> {
    let out = runtime(
        env,
        &runtime_root(env, "unknown"),
        &["start", "no-such-container"],
    );
    ensure(out.status.code() == Some(1), || format!("{:?}", out.status))?;
    ensure(
        stderr(&out) == "flick-runtime: container \"no-such-container\" does not exist\n",
        || stderr(&out),
    )
}

fn runtime_kill_created(env: &Env) -> Result<(), Failed> {
    let id = unique("killcreated");
    let root = runtime_root(env, "killcreated");
    let files = [
        ("hello", image_bytes(env, "hello")),
        ("flick.json", marker("/hello")),
    ];
    let bundle = bundle(env, "killcreated", &files, &["/hello"]);
    check(
        &runtime(env, &root, &["create", "--bundle", path_str(&bundle), &id]),
        0,
    )?;
    check(&runtime(env, &root, &["kill", &id, "TERM"]), 0)?;
    let start = Instant::now();
    let mut status = String::new();
    while start.elapsed() < Duration::from_secs(10) {
        let state: serde_json::Value =
            serde_json::from_slice(&runtime(env, &root, &["state", &id]).stdout)?;
        status = state["status"].as_str().unwrap_or("").to_owned();
        if status == "stopped" {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check(&runtime(env, &root, &["delete", &id]), 0)?;
    ensure(status == "stopped", || format!("SIGTERM left it {status}"))
}
