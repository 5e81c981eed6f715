//! `vmm serve` and `vmm run --via`: a request behaves like a local `vmm run`, and every request
//! gets a fresh VM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};
use tests::{image, kvm_test, status, stderr, stdout, vmm, vmm_bin};

struct Server {
    child: Child,
    socket: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn snapshot(dir: &Path, name: &str, image_name: &str) -> PathBuf {
    let path = dir.join(name);
    tests::snapshot_image(image_name, &path);
    path
}

fn start_server(dir: &Path, snapshots: &[&Path]) -> Server {
    start_server_with(dir, snapshots, &[])
}

fn start_server_with(dir: &Path, snapshots: &[&Path], flags: &[&str]) -> Server {
    let socket = dir.join("flick.sock");
    let mut cmd = Command::new(vmm_bin());
    cmd.args(["serve", "--socket", socket.to_str().unwrap(), "--pool", "2"]);
    cmd.args(flags);
    for snap in snapshots {
        cmd.args(["--snapshot", snap.to_str().unwrap()]);
    }
    let child = cmd.spawn().expect("cannot start vmm serve");
    let started = Instant::now();
    while !socket.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "vmm serve did not create its socket"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Server { child, socket }
}

fn via(server: &Server, target: &[&str], args: &[&str]) -> Output {
    let mut all = vec!["run", "--via", server.socket.to_str().unwrap()];
    all.extend_from_slice(target);
    all.push("--");
    all.extend_from_slice(args);
    vmm(&all)
}

#[kvm_test]
fn test_serve_behaves_like_a_local_run() {
    let dir = tests::scratch_dir("serve");
    let hello = snapshot(&dir, "hello.snap", "hello");
    let server = start_server(&dir, &[&hello]);

    let remote = via(&server, &["--from", hello.to_str().unwrap()], &["a", "b c"]);
    let local = vmm(&["run", "--from", hello.to_str().unwrap(), "--", "a", "b c"]);
    assert_eq!(status(&remote), 0, "{}", stderr(&remote));
    assert_eq!(stdout(&remote), stdout(&local));
    assert_eq!(stdout(&remote), "Hello from a unikernel!\na\nb c\n");

    // An image, not pooled: served cold.
    let out = via(&server, &[image("exitcode").to_str().unwrap()], &["5"]);
    assert_eq!(status(&out), 5, "{}", stderr(&out));

    // A crash: same status and report as locally.
    let out = via(&server, &[image("fault").to_str().unwrap()], &["null"]);
    assert_eq!(status(&out), 134);
    assert!(
        stderr(&out).contains("page fault (#PF, vector 14)"),
        "{}",
        stderr(&out)
    );

    // A panic: the guest's own stderr is relayed.
    let out = via(&server, &[image("panic").to_str().unwrap()], &[]);
    assert_eq!(status(&out), 101);
    assert!(
        stderr(&out).contains("deliberate panic"),
        "{}",
        stderr(&out)
    );
}

#[kvm_test]
fn test_serve_gives_every_request_a_fresh_vm() {
    let dir = tests::scratch_dir("serve-fresh");
    let warm = snapshot(&dir, "warmup.snap", "warmup");
    let server = start_server(&dir, &[&warm]);
    let mut seeds = Vec::new();
    for i in 0..6 {
        let arg = format!("request-{i}");
        let out = via(&server, &["--from", warm.to_str().unwrap()], &[&arg]);
        assert_eq!(status(&out), 0, "{}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains(&format!("args [\"{arg}\"]")), "{text}");
        seeds.push(
            text.lines()
                .find(|l| l.starts_with("seed "))
                .unwrap()
                .to_owned(),
        );
    }
    seeds.sort();
    seeds.dedup();
    assert_eq!(seeds.len(), 6, "each request must get its own VM and seed");
}

#[kvm_test]
fn test_serve_bad_target_is_a_clear_error() {
    let dir = tests::scratch_dir("serve-bad");
    let server = start_server(&dir, &[]);
    let out = via(&server, &["/bin/true"], &[]);
    assert_eq!(status(&out), 125);
    assert!(
        stderr(&out).contains("not an image for this VMM"),
        "{}",
        stderr(&out)
    );
    let out = via(&server, &["/nonexistent/image"], &[]);
    assert_eq!(status(&out), 125);
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
}

#[test]
fn test_via_without_server_is_a_clear_error() {
    let out = vmm(&[
        "run",
        "--via",
        "/nonexistent/flick.sock",
        image("hello").to_str().unwrap(),
    ]);
    assert_eq!(status(&out), 125);
    assert!(
        stderr(&out).starts_with("error: cannot reach vmm serve"),
        "{}",
        stderr(&out)
    );
}

#[kvm_test]
fn test_serve_checks_the_clients_memory_size() {
    let dir = tests::scratch_dir("serve-mem");
    let server = start_server(&dir, &[]);
    let hello = image("hello");
    for mem in ["1M", "5M", "64G"] {
        let out = vmm(&[
            "run",
            "--via",
            server.socket.to_str().unwrap(),
            "--mem",
            mem,
            hello.to_str().unwrap(),
        ]);
        assert_eq!(status(&out), 125, "--mem {mem}: {}", stderr(&out));
        assert!(stderr(&out).contains("--mem"), "{}", stderr(&out));
    }
    let out = vmm(&[
        "run",
        "--via",
        server.socket.to_str().unwrap(),
        "--mem",
        "32M",
        hello.to_str().unwrap(),
    ]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
}

#[kvm_test]
fn test_serve_without_seccomp_still_serves() {
    let dir = tests::scratch_dir("serve-noseccomp");
    let hello = snapshot(&dir, "hello.snap", "hello");
    let server = start_server_with(&dir, &[&hello], &["--no-seccomp"]);
    let out = via(&server, &["--from", hello.to_str().unwrap()], &["x"]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "Hello from a unikernel!\nx\n");
}

#[kvm_test]
fn test_serve_survives_being_stopped_and_continued() {
    let dir = tests::scratch_dir("serve-stop");
    let hello = snapshot(&dir, "hello.snap", "hello");
    let server = start_server(&dir, &[&hello]);
    let pid = server.child.id().to_string();
    for signal in ["-STOP", "-CONT"] {
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = via(&server, &["--from", hello.to_str().unwrap()], &[]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "Hello from a unikernel!\n");
}

#[kvm_test]
fn test_serve_caps_how_long_a_request_may_run() {
    let dir = tests::scratch_dir("serve-cap");
    let spin = tests::write_scratch(
        "serve-cap",
        "spin",
        &tests::elf::ElfBuilder::guest(&tests::asm::SPIN).build(),
    );
    let server = start_server_with(&dir, &[], &["--max-timeout", "300ms"]);
    let started = Instant::now();
    let out = via(&server, &[spin.to_str().unwrap()], &[]);
    assert_eq!(status(&out), 124, "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(20));
    // A client's own shorter timeout still applies.
    let out = vmm(&[
        "run",
        "--via",
        server.socket.to_str().unwrap(),
        "--timeout",
        "50ms",
        spin.to_str().unwrap(),
    ]);
    assert_eq!(status(&out), 124, "{}", stderr(&out));
}
