//! `vmm serve` and `vmm run --via`: a request behaves like a local `vmm run`, and every request
//! gets a VM as fresh as a new one (a reused VM included).

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tests::serve::Server;
use tests::{image, kvm_test, status, stderr, stdout, vmm, vmm_bin};
use vmm::serve::wire::frame;

fn snapshot(dir: &Path, name: &str, image_name: &str) -> PathBuf {
    let path = dir.join(name);
    tests::snapshot_image(image_name, &path);
    path
}

fn start_server(dir: &Path, snapshots: &[&Path]) -> Server {
    start_server_with(dir, snapshots, &[])
}

fn serve_command(dir: &Path, snapshots: &[&Path], flags: &[&str]) -> Command {
    let socket = dir.join("flick.sock");
    let mut cmd = Command::new(vmm_bin());
    cmd.args(["serve", "--socket", socket.to_str().unwrap()]);
    if !flags.contains(&"--pool") {
        cmd.args(["--pool", "2"]);
    }
    cmd.args(flags);
    for snap in snapshots {
        cmd.args(["--snapshot", snap.to_str().unwrap()]);
    }
    cmd
}

fn start_server_with(dir: &Path, snapshots: &[&Path], flags: &[&str]) -> Server {
    Server::spawn(
        serve_command(dir, snapshots, flags),
        &dir.join("flick.sock"),
    )
}

fn via(server: &Server, target: &[&str], args: &[&str]) -> Output {
    let mut all = vec!["run", "--via", server.socket.to_str().unwrap()];
    all.extend_from_slice(target);
    all.push("--");
    all.extend_from_slice(args);
    vmm(&all)
}

/// Waits (bounded) for `child` to exit; None if it did not within `limit` (it is then killed).
fn finish_within(mut child: Child, limit: Duration) -> Option<Output> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Runs `vmm ARGS` and returns its output, or None if it did not finish within `limit`.
fn vmm_within(args: &[&str], limit: Duration) -> Option<Output> {
    let child = Command::new(vmm_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start vmm");
    finish_within(child, limit)
}

/// `vmm run --via` that must finish within `limit`.
fn via_within(server: &Server, target: &[&str], args: &[&str], limit: Duration) -> Output {
    let mut all = vec!["run", "--via", server.socket.to_str().unwrap()];
    all.extend_from_slice(target);
    all.push("--");
    all.extend_from_slice(args);
    vmm_within(&all, limit).unwrap_or_else(|| {
        panic!(
            "vmm run --via {target:?} did not finish within {limit:?}; server log: {:?}",
            server.lines()
        )
    })
}

/// A raw client: connects and sends a request for `target`, reading nothing.
fn send_request(socket: &Path, target: &Path, args: &[&str]) -> UnixStream {
    let request = vmm::serve::Request {
        target: target.to_owned(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: Vec::new(),
        timeout_ms: None,
        max_output: 1 << 40,
        mem_size: 16 << 20,
        volumes: Vec::new(),
        stdin: false,
        net: None,
    };
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .write_all(&vmm::serve::wire::encode_request(&request).unwrap())
        .unwrap();
    stream
}

/// Reads frames until EXIT, ERROR or the end of the connection, each read bounded by
/// `limit`; returns the frames.
fn read_reply(stream: &mut UnixStream, limit: Duration) -> Vec<(u8, Vec<u8>)> {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut frames = Vec::new();
    while let Ok((kind, payload)) = vmm::serve::wire::read_frame(stream) {
        let last = kind == frame::EXIT || kind == frame::ERROR;
        frames.push((kind, payload));
        if last {
            break;
        }
    }
    frames
}

/// A guest that writes 64 KiB to stdout per exit, for ever.
fn chatty_guest(test: &str) -> PathBuf {
    use tests::asm::{OUT_DX_EAX, mov_dx, mov_eax};
    let struct_offset = 16u64;
    let struct_addr = tests::elf::CODE_ADDR + struct_offset;
    let mut code = mov_eax(u32::try_from(struct_addr).unwrap());
    code.extend(mov_dx(abi::port::CONSOLE_WRITE));
    code.extend([OUT_DX_EAX, 0xeb, 0xfd]); // out dx, eax; jmp back to the out
    code.resize(struct_offset as usize, 0xcc);
    code.extend_from_slice(&tests::elf::TEXT_ADDR.to_le_bytes()); // buf
    code.extend_from_slice(&abi::hypercall::CONSOLE_WRITE_MAX.to_le_bytes()); // len
    code.extend_from_slice(&abi::hypercall::stream::STDOUT.to_le_bytes()); // stream
    tests::write_scratch(
        test,
        "chatty",
        &tests::elf::ElfBuilder::guest(&code).build(),
    )
}

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
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

/// A 16-byte secret of this test run, and its coded form (each byte plus one) for `seek`.
fn secret_pair() -> (String, String) {
    let secret = format!("flick-s{:09}", std::process::id() % 1_000_000_000);
    let coded = secret.bytes().map(|b| char::from(b + 1)).collect();
    (secret, coded)
}

#[kvm_test]
fn test_serve_reused_vm_keeps_nothing_of_the_request_before() {
    let dir = tests::scratch_dir("serve-reuse");
    let snap = snapshot(&dir, "secret.snap", "secret");
    let from = ["--from", snap.to_str().unwrap()];
    let server = start_server_with(&dir, &[&snap], &["--pool", "1", "--workers", "1"]);
    let (secret, coded) = secret_pair();

    // The seeker finds what a planter leaves in its own run: memory and XMM registers.
    let out = via(&server, &from, &["both", &secret]);
    assert_eq!(status(&out), 1, "{}", stdout(&out));
    for place in [
        "xmm",
        "mxcsr",
        "the x87 control word",
        "static",
        "stack",
        "heap",
        "boot info",
    ] {
        assert!(
            stdout(&out).contains(&format!("found in {place}")),
            "{}",
            stdout(&out)
        );
    }

    // One request plants the secret; the next runs in the same VM, reused, and finds nothing.
    for round in 1..=3 {
        let out = via(&server, &from, &["plant", &secret]);
        assert_eq!(status(&out), 0, "{}", stderr(&out));
        let out = via(&server, &from, &["seek", &coded]);
        assert_eq!(
            (status(&out), stdout(&out)),
            (0, "clean\n".to_owned()),
            "round {round}: {}",
            stderr(&out)
        );
        // The seek ran in the very VM the plant ran in: the one that had served one request
        // more (whatever the planter's VM had served before).
        assert!(
            server.wait_for_lines("exit status 0", 2 * round, Duration::from_secs(5)),
            "{:?}",
            server.lines()
        );
        let lines = server.lines();
        let requests: Vec<&String> = lines.iter().filter(|l| l.contains("exit status")).collect();
        let [.., plant, seek] = requests.as_slice() else {
            panic!("round {round}: no request lines: {lines:?}");
        };
        let served = |line: &str| {
            line.split("(reused after ")
                .nth(1)
                .and_then(|rest| rest.split(')').next())
                .map_or(0, |n| n.parse::<u32>().unwrap())
        };
        assert_eq!(
            served(seek),
            served(plant) + 1,
            "round {round}: the seek did not run in the planter's VM: {plant} / {seek}"
        );
    }
}

/// Plants a secret in a pool of one VM, then runs `secret MODE` in that VM (reused) with the
/// client flags `flags`, which must end with `status`; the request after it must get a VM that
/// is not the reused one.
fn assert_vm_not_reused_after(test: &str, flags: &[&str], mode: &str, status_after: i32) {
    let dir = tests::scratch_dir(test);
    let snap = snapshot(&dir, "secret.snap", "secret");
    let server = start_server_with(&dir, &[&snap], &["--pool", "1", "--workers", "1"]);
    let (secret, _) = secret_pair();
    let from = ["--from", snap.to_str().unwrap()];
    let out = via(&server, &from, &["plant", &secret]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let out = via(&server, &[&from[..], flags].concat(), &[mode]);
    assert_eq!(status(&out), status_after, "{}", stderr(&out));
    let reused = format!("(reused after 1), exit status {status_after}");
    assert!(
        server.wait_for_line(&reused, Duration::from_secs(5)),
        "{:?}",
        server.lines()
    );
    let out = via(&server, &from, &["plant", &secret]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert!(server.wait_for_lines("exit status 0", 2, Duration::from_secs(5)));
    let last = server
        .lines()
        .into_iter()
        .rev()
        .find(|l| l.contains(".snap: "))
        .unwrap();
    assert!(
        !last.contains("reused"),
        "the VM of `secret {mode}` was reused: {last}"
    );
}

#[kvm_test]
fn test_serve_never_reuses_the_vm_of_a_timed_out_guest() {
    // A guest stopped by its timeout made no exception (nothing of the VMM's changed) and no
    // exit hypercall: only the rule that a reused VM's guest exited keeps its VM out.
    assert_vm_not_reused_after("serve-reuse-timeout", &["--timeout", "200ms"], "spin", 124);
}

#[kvm_test]
fn test_serve_never_reuses_the_vm_of_a_crashed_guest() {
    assert_vm_not_reused_after("serve-reuse-crash", &[], "crash", 134);
}

#[kvm_test]
fn test_serve_no_reuse_gives_every_request_a_new_vm() {
    let dir = tests::scratch_dir("serve-no-reuse");
    let snap = snapshot(&dir, "secret.snap", "secret");
    let from = ["--from", snap.to_str().unwrap()];
    let server = start_server_with(
        &dir,
        &[&snap],
        &["--pool", "1", "--workers", "1", "--no-reuse"],
    );
    let (secret, _) = secret_pair();
    for _ in 0..3 {
        let out = via(&server, &from, &["plant", &secret]);
        assert_eq!(status(&out), 0, "{}", stderr(&out));
    }
    let lines = server.lines();
    assert!(!lines.iter().any(|l| l.contains("reused")), "{lines:?}");
}

#[kvm_test]
fn test_via_into_a_closed_pipe_ends_at_once_with_141() {
    let dir = tests::scratch_dir("serve-via-pipe");
    let chatty = chatty_guest("serve-via-pipe");
    let server = start_server(&dir, &[]);
    let mut child = Command::new(vmm_bin())
        .args(["run", "--via", server.socket.to_str().unwrap()])
        .arg(&chatty)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read a little of the guest's output, then close the pipe, as `| head -c 4096` does.
    let mut first = [0u8; 4096];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let out = finish_within(child, Duration::from_secs(10))
        .expect("vmm run --via went on writing into a closed pipe");
    assert_eq!(status(&out), 141, "{}", stderr(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

// A `--via` whose stdout cannot be written (a full disk) fails as a local run does: one line,
// status 125, not output dropped without a word.
#[kvm_test]
fn test_via_into_a_full_stdout_is_one_line_and_125() {
    let dir = tests::scratch_dir("serve-via-full");
    let server = start_server(&dir, &[]);
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let child = Command::new(vmm_bin())
        .args(["run", "--via", server.socket.to_str().unwrap()])
        .arg(image("hello"))
        .stdout(full)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish_within(child, Duration::from_secs(10)).expect("--via into /dev/full hung");
    assert_eq!(status(&out), 125, "{}", stderr(&out));
    let text = stderr(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("cannot write the guest's stdout"), "{text}");
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
fn test_via_with_timeline_is_refused_whatever_the_order() {
    for args in [
        [
            "run",
            "--timeline",
            "--via",
            "/nonexistent.sock",
            "/nonexistent",
        ],
        [
            "run",
            "--via",
            "/nonexistent.sock",
            "--timeline",
            "/nonexistent",
        ],
    ] {
        let out = vmm(&args);
        assert_eq!(status(&out), 125, "{args:?}");
        assert!(
            stderr(&out).contains("--timeline cannot be used with --via"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
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

// Issue 9, item 2: replies reach their own clients, however many descriptors the server holds.
#[kvm_test]
fn test_serve_with_hundreds_of_pooled_vms_answers_each_client_with_its_own_reply() {
    let dir = tests::scratch_dir("serve-fds");
    let hello = snapshot(&dir, "hello.snap", "hello");
    // 460 pooled VMs hold over 900 descriptors (the numbers the first design gave clients),
    // and 600 requests go through the whole pool once and more.
    let server = start_server_with(&dir, &[&hello], &["--pool", "460", "--workers", "4"]);
    for round in 0..75 {
        let clients: Vec<_> = (0..8)
            .map(|i| {
                let arg = format!("request-{round}-{i}");
                let (socket, hello) = (server.socket.clone(), hello.clone());
                std::thread::spawn(move || {
                    let mut stream = send_request(&socket, &hello, &[&arg]);
                    (arg, read_reply(&mut stream, Duration::from_secs(20)))
                })
            })
            .collect();
        for client in clients {
            let (arg, frames) = client.join().unwrap();
            let text: Vec<u8> = frames
                .iter()
                .filter(|(kind, _)| *kind == frame::STDOUT)
                .flat_map(|(_, payload)| payload.clone())
                .collect();
            assert_eq!(
                String::from_utf8_lossy(&text),
                format!("Hello from a unikernel!\n{arg}\n"),
                "{arg}: {frames:?}"
            );
            assert_eq!(
                frames.last(),
                Some(&(frame::EXIT, 0i32.to_le_bytes().to_vec()))
            );
        }
    }
}

// The boot info's clock pairs the wall clock with the guest's own TSC, whether the server
// reads it from KVM (its first VM) or knows it to be the host's counter (later ones, on PVM):
// the guest's wall clock moves with its sleep every time.
#[kvm_test]
fn test_serve_guests_wall_clock_moves_on_every_request() {
    let dir = tests::scratch_dir("serve-clock");
    let server = start_server(&dir, &[]);
    for round in 0..3 {
        let out = via(&server, &[image("clock").to_str().unwrap()], &[]);
        assert_eq!(status(&out), 0, "round {round}: {}", stderr(&out));
        let text = stdout(&out);
        let wall_us: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("wall clock advanced "))
            .and_then(|rest| rest.trim_end_matches(" us").parse().ok())
            .unwrap_or_else(|| panic!("round {round}: {text}"));
        assert!(
            (45_000..5_000_000).contains(&wall_us),
            "round {round}: the wall clock advanced {wall_us} us over a 50 ms sleep"
        );
    }
}

// Issue 9, item 4: a silent client, a client dripping its request and a FIFO stall nobody.
#[kvm_test]
fn test_serve_silent_and_dripping_clients_do_not_stall_others() {
    let dir = tests::scratch_dir("serve-slow");
    let server = start_server(&dir, &[]);
    let _silent = UnixStream::connect(&server.socket).unwrap();
    let mut dripping = UnixStream::connect(&server.socket).unwrap();
    let fifo = dir.join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let hello = image("hello");
    for i in 0..3 {
        dripping.write_all(b"{").unwrap();
        let out = via_within(
            &server,
            &[hello.to_str().unwrap()],
            &["x"],
            Duration::from_secs(3),
        );
        assert_eq!(status(&out), 0, "request {i}: {}", stderr(&out));
        let out = via_within(
            &server,
            &[fifo.to_str().unwrap()],
            &[],
            Duration::from_secs(3),
        );
        assert_eq!(status(&out), 125);
        assert!(
            stderr(&out).contains("not a regular file"),
            "{}",
            stderr(&out)
        );
        // A directory where an image is expected: refused at once as well.
        let out = via_within(
            &server,
            &[dir.to_str().unwrap()],
            &[],
            Duration::from_secs(3),
        );
        assert_eq!(status(&out), 125, "{}", stderr(&out));
        assert!(stderr(&out).contains("directory"), "{}", stderr(&out));
    }
}

// Idle connections that never time out during the test (a minute each) and keep coming: the
// server still reads a client that sends its request at once, because a new connection takes
// the place of the one that has been sending longest (before, the 128 read at once held the
// listener shut for their whole request timeout), and the displaced one is told why. The
// server holds a bounded number of descriptors meanwhile (issue 9, item 4).
#[kvm_test]
fn test_serve_idle_connections_cannot_shut_out_a_prompt_client() {
    let dir = tests::scratch_dir("serve-idle-flood");
    let server = start_server_with(&dir, &[], &["--request-timeout", "60s", "--quiet"]);
    let mut flood: Vec<UnixStream> = (0..300)
        .map(|_| UnixStream::connect(&server.socket).unwrap())
        .collect();
    let out = via_within(
        &server,
        &[image("hello").to_str().unwrap()],
        &["past the idle"],
        Duration::from_secs(10),
    );
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "Hello from a unikernel!\npast the idle\n");
    let fds = std::fs::read_dir(format!("/proc/{}/fd", server.child.id()))
        .unwrap()
        .count();
    assert!(fds < 250, "{fds} descriptors open for 300 idle connections");
    let first = &mut flood[0];
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (kind, why) =
        vmm::serve::wire::read_frame(first).expect("the oldest idle connection was not told");
    assert_eq!(kind, frame::ERROR);
    let why = String::from_utf8_lossy(&why);
    assert!(why.contains("newer connections came"), "{why}");
}

// Issue 9, item 4: a request has a bounded time in all, not per read.
#[kvm_test]
fn test_serve_refuses_a_request_not_sent_within_the_request_timeout() {
    let dir = tests::scratch_dir("serve-drip");
    let server = start_server_with(&dir, &[], &["--request-timeout", "500ms"]);
    let request = vmm::serve::Request {
        target: image("hello"),
        args: Vec::new(),
        env: Vec::new(),
        timeout_ms: None,
        max_output: 1 << 20,
        mem_size: 16 << 20,
        volumes: Vec::new(),
        stdin: false,
        net: None,
    };
    let bytes = vmm::serve::wire::encode_request(&request).unwrap();
    assert!(bytes.len() > 50);
    let mut dripping = UnixStream::connect(&server.socket).unwrap();
    let started = Instant::now();
    let mut refused = None;
    // One byte every 100 ms of a request of more than 50 bytes: far more than 500 ms in all.
    for byte in &bytes[..50] {
        if dripping.write_all(&[*byte]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        dripping.set_nonblocking(true).unwrap();
        if let Ok((kind, payload)) = vmm::serve::wire::read_frame(&mut dripping) {
            refused = Some((kind, String::from_utf8_lossy(&payload).into_owned()));
            break;
        }
        dripping.set_nonblocking(false).unwrap();
    }
    let (kind, why) = refused.expect("the dripping client was never refused");
    assert_eq!(kind, frame::ERROR);
    assert!(why.contains("not sent in full within"), "{why}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

// Issue 9, item 5: clients that never read their replies hold no runner past the deadline.
#[kvm_test]
fn test_serve_clients_that_never_read_do_not_pin_the_runners() {
    let dir = tests::scratch_dir("serve-noread");
    let chatty = chatty_guest("serve-noread");
    let server = start_server_with(&dir, &[], &["--workers", "2", "--max-timeout", "500ms"]);
    // Two clients, as many as runners, ask for endless output and never read it.
    let mut stalled: Vec<UnixStream> = (0..2)
        .map(|_| send_request(&server.socket, &chatty, &[]))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let out = via_within(
        &server,
        &[image("hello").to_str().unwrap()],
        &["still", "served"],
        Duration::from_secs(10),
    );
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "Hello from a unikernel!\nstill\nserved\n");
    // The stalled clients' connections were given up and closed: reading ends.
    for stream in &mut stalled {
        let frames = read_reply(stream, Duration::from_secs(10));
        assert!(!frames.is_empty());
        assert!(frames.iter().all(|(kind, _)| *kind == frame::STDOUT));
    }
    assert!(server.wait_for_line("output dropped", Duration::from_secs(5)));
}

// Issue 9, item 6: a file replaced at a path is served as it now is.
#[kvm_test]
fn test_serve_runs_the_file_now_at_a_path_not_a_cached_one() {
    let dir = tests::scratch_dir("serve-replace");
    let server = start_server(&dir, &[]);
    let app = dir.join("app");
    std::fs::copy(image("hello"), &app).unwrap();
    let out = via(&server, &[app.to_str().unwrap()], &[]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "Hello from a unikernel!\n");
    let staged = dir.join("app.new");
    std::fs::copy(image("exitcode"), &staged).unwrap();
    std::fs::rename(&staged, &app).unwrap();
    let out = via(&server, &[app.to_str().unwrap()], &["7"]);
    assert_eq!(status(&out), 7, "{}", stderr(&out));
    // Rewritten in place (same inode).
    std::fs::write(&app, std::fs::read(image("hello")).unwrap()).unwrap();
    let out = via(&server, &[app.to_str().unwrap()], &["again"]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "Hello from a unikernel!\nagain\n");
}

/// An image of about `size` bytes: `hello` with padding after its last byte.
fn padded_hello(path: &Path, size: usize) {
    let mut bytes = std::fs::read(image("hello")).unwrap();
    let mut filler = 0x9e37_79b9u32;
    bytes.extend((bytes.len()..size).map(|_| {
        filler = filler.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        filler.to_le_bytes()[3]
    }));
    std::fs::write(path, bytes).unwrap();
}

// Issue 9, item 6: links to one file share one cache entry.
#[kvm_test]
fn test_serve_memory_does_not_grow_with_links_to_one_image() {
    let dir = tests::scratch_dir("serve-links");
    let server = start_server(&dir, &[]);
    let big = dir.join("big");
    padded_hello(&big, 16 << 20);
    let links: Vec<PathBuf> = (0..12).map(|i| dir.join(format!("link-{i}"))).collect();
    for link in &links {
        std::fs::hard_link(&big, link).unwrap();
    }
    let out = via(&server, &[big.to_str().unwrap()], &[]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let before = rss(server.child.id());
    for link in &links {
        let out = via(&server, &[link.to_str().unwrap()], &[]);
        assert_eq!(status(&out), 0, "{}", stderr(&out));
    }
    let grown = rss(server.child.id()).saturating_sub(before);
    assert!(grown < 48 << 20, "the server grew by {grown} bytes");
}

// Issue 9, item 6: the cache holds at most --cache-size bytes of distinct images.
#[kvm_test]
fn test_serve_memory_stays_within_the_cache_size() {
    let dir = tests::scratch_dir("serve-cache");
    let server = start_server_with(&dir, &[], &["--cache-size", "8M"]);
    let before = rss(server.child.id());
    for i in 0..10 {
        let path = dir.join(format!("image-{i}"));
        padded_hello(&path, 4 << 20);
        let out = via(&server, &[path.to_str().unwrap()], &[]);
        assert_eq!(status(&out), 0, "{}", stderr(&out));
    }
    let grown = rss(server.child.id()).saturating_sub(before);
    assert!(grown < 24 << 20, "the server grew by {grown} bytes");
}

/// `vmm serve` under `prlimit --nofile=SOFT:HARD`.
fn serve_under_fd_limit(dir: &Path, limit: &str, flags: &[&str]) -> Command {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={limit}")).arg("--");
    let inner = serve_command(dir, &[], flags);
    cmd.arg(inner.get_program()).args(inner.get_args());
    cmd
}

// Issue 9, item 7: a low soft limit is raised.
#[kvm_test]
fn test_serve_raises_a_low_soft_open_files_limit() {
    let dir = tests::scratch_dir("serve-nofile");
    let hello = snapshot(&dir, "hello.snap", "hello");
    let cmd = serve_under_fd_limit(
        &dir,
        "64:4096",
        &["--snapshot", hello.to_str().unwrap(), "--workers", "4"],
    );
    let server = Server::spawn(cmd, &dir.join("flick.sock"));
    for i in 0..4 {
        let arg = format!("request-{i}");
        let out = via(&server, &["--from", hello.to_str().unwrap()], &[&arg]);
        assert_eq!(status(&out), 0, "{}", stderr(&out));
        assert_eq!(stdout(&out), format!("Hello from a unikernel!\n{arg}\n"));
    }
}

// Issue 9, item 7: a hard limit too low for what was asked is a clear refusal at start.
#[kvm_test]
fn test_serve_refuses_to_start_under_a_too_low_hard_open_files_limit() {
    let dir = tests::scratch_dir("serve-nofile-hard");
    let hello = snapshot(&dir, "hello.snap", "hello");
    let mut cmd = serve_under_fd_limit(
        &dir,
        "512:512",
        &["--snapshot", hello.to_str().unwrap(), "--pool", "300"],
    );
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish_within(child, Duration::from_secs(10)).expect("vmm serve kept running");
    assert_eq!(status(&out), 125);
    assert!(stderr(&out).contains("RLIMIT_NOFILE"), "{}", stderr(&out));
    assert!(!dir.join("flick.sock").exists());
}

/// Runs a `vmm serve` that must refuse to start; returns its stderr.
fn refused_start(cmd: &mut Command) -> String {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish_within(child, Duration::from_secs(10)).expect("vmm serve kept running");
    assert_eq!(status(&out), 125, "{}", stderr(&out));
    stderr(&out)
}

// Issue 9, item 8: a file at the socket path is never removed.
#[kvm_test]
fn test_serve_leaves_a_file_at_its_socket_path_alone() {
    let dir = tests::scratch_dir("serve-file-at-path");
    let path = dir.join("flick.sock");
    std::fs::write(&path, b"precious").unwrap();
    let why = refused_start(&mut serve_command(&dir, &[], &[]));
    assert!(why.contains("exists and is not a socket"), "{why}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

// Issue 9, item 8: a second server does not take the path of a running one.
#[kvm_test]
fn test_serve_refuses_to_start_while_another_server_answers() {
    let dir = tests::scratch_dir("serve-twice");
    let first = start_server(&dir, &[]);
    let why = refused_start(&mut serve_command(&dir, &[], &[]));
    assert!(why.contains("another server is listening"), "{why}");
    let out = via(&first, &[image("exitcode").to_str().unwrap()], &["3"]);
    assert_eq!(status(&out), 3, "{}", stderr(&out));
}

// Issue 9, item 8: a stale socket (its server killed) is replaced.
#[kvm_test]
fn test_serve_replaces_a_stale_socket() {
    let dir = tests::scratch_dir("serve-stale");
    let first = start_server(&dir, &[]);
    drop(first);
    let path = dir.join("flick.sock");
    assert!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket()
    );
    let second = start_server(&dir, &[]);
    let out = via(&second, &[image("exitcode").to_str().unwrap()], &["4"]);
    assert_eq!(status(&out), 4, "{}", stderr(&out));
}

fn socket_mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

// Issue 9, item 9: the socket is owner-only whatever the umask.
#[kvm_test]
fn test_serve_socket_is_owner_only_whatever_the_umask() {
    let dir = tests::scratch_dir("serve-umask");
    let inner = serve_command(&dir, &[], &[]);
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "umask 0; exec \"$0\" \"$@\""])
        .arg(inner.get_program())
        .args(inner.get_args());
    let server = Server::spawn(cmd, &dir.join("flick.sock"));
    assert_eq!(socket_mode(&server.socket), 0o600);
}

// Issue 9, item 9: a socket others may use needs --allow, which limits what they may run.
#[kvm_test]
fn test_serve_wider_socket_mode_needs_allow_and_allow_limits_targets() {
    let dir = tests::scratch_dir("serve-allow");
    let why = refused_start(&mut serve_command(&dir, &[], &["--socket-mode", "660"]));
    assert!(why.contains("--allow"), "{why}");
    let served = dir.join("served");
    std::fs::create_dir_all(&served).unwrap();
    let inside = served.join("hello");
    std::fs::copy(image("hello"), &inside).unwrap();
    let sneaky = served.join("sneaky");
    std::os::unix::fs::symlink(image("exitcode"), &sneaky).unwrap();
    let server = start_server_with(
        &dir,
        &[],
        &["--socket-mode", "660", "--allow", served.to_str().unwrap()],
    );
    assert_eq!(socket_mode(&server.socket), 0o660);
    let out = via(&server, &[inside.to_str().unwrap()], &[]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    for outside in [image("exitcode"), sneaky] {
        let out = via(&server, &[outside.to_str().unwrap()], &["1"]);
        assert_eq!(status(&out), 125, "{}", stderr(&out));
        assert!(
            stderr(&out).contains("outside the directories"),
            "{}",
            stderr(&out)
        );
    }
}

// Issue 9, item 9: durations that would overflow a millisecond count are refused, not cut.
#[test]
fn test_serve_and_via_refuse_timeouts_that_would_overflow() {
    let huge = "18446744073709552s";
    let out = vmm_within(
        &[
            "serve",
            "--socket",
            "/nonexistent/s.sock",
            "--max-timeout",
            huge,
        ],
        Duration::from_secs(10),
    )
    .expect("vmm serve kept running");
    assert_eq!(status(&out), 125);
    assert!(stderr(&out).contains("out of range"), "{}", stderr(&out));
    let hello = image("hello");
    let out = vmm(&[
        "run",
        "--via",
        "/nonexistent/s.sock",
        "--timeout",
        huge,
        hello.to_str().unwrap(),
    ]);
    assert_eq!(status(&out), 125);
    assert!(stderr(&out).contains("out of range"), "{}", stderr(&out));
}

// Issue 9, item 9 (relative): a target path JSON cannot carry is an error, not a panic.
#[test]
fn test_via_refuses_a_target_path_that_is_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tests::scratch_dir("via-utf8");
    let socket = dir.join("s.sock");
    let _ = std::fs::remove_file(&socket);
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let name = std::ffi::OsStr::from_bytes(b"/tmp/\xff-image");
    let out = Command::new(vmm_bin())
        .args(["run", "--via", socket.to_str().unwrap()])
        .arg(name)
        .output()
        .unwrap();
    assert_eq!(status(&out), 125, "{}", stderr(&out));
    assert!(stderr(&out).starts_with("error:"), "{}", stderr(&out));
}

// Issue 14: a ready line, and one log line per request unless --quiet.
#[kvm_test]
fn test_serve_says_when_it_is_ready_and_logs_each_request() {
    let dir = tests::scratch_dir("serve-log");
    let hello = snapshot(&dir, "hello.snap", "hello");
    let server = start_server(&dir, &[&hello]);
    let ready = server.lines()[0].clone();
    assert_eq!(
        ready,
        format!(
            "listening on {} (pool 2 of {}; 2 workers)",
            server.socket.display(),
            hello.display()
        )
    );
    let out = via(&server, &["--from", hello.to_str().unwrap()], &[]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let logged = format!("{}: pooled VM, exit status 0", hello.display());
    assert!(
        server.wait_for_line(&logged, Duration::from_secs(5)),
        "{:?}",
        server.lines()
    );
    drop(server);

    let quiet_dir = tests::scratch_dir("serve-quiet");
    let quiet = start_server_with(&quiet_dir, &[&hello], &["--quiet"]);
    let out = via(&quiet, &["--from", hello.to_str().unwrap()], &[]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(quiet.lines().len(), 1, "{:?}", quiet.lines());
}

#[kvm_test]
fn test_serve_request_with_net_without_allow_tap_is_refused_with_a_reason() {
    let dir = tests::scratch_dir("serve-net");
    let server = start_server(&dir, &[]);
    let request = || {
        vmm(&[
            "run",
            "--via",
            server.socket.to_str().unwrap(),
            image("echo").to_str().unwrap(),
            "--net",
            "tap=tap0,ip=10.99.0.2/24",
        ])
    };
    let mut out = request();
    // The socket file appears a moment before the server listens on it.
    for _ in 0..100 {
        if !stderr(&out).contains("cannot reach") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        out = request();
    }
    assert_eq!(status(&out), 125);
    assert!(stderr(&out).contains("--allow-tap"), "{}", stderr(&out));
}

#[kvm_test]
fn test_serve_error_frame_is_one_line_whatever_the_path_and_zero_timeout_is_refused() {
    let dir = tests::scratch_dir("serve-one-line");
    let server = start_server(&dir, &[]);
    // A path with a newline and a forged log line after it: the reply is one escaped line.
    let forged = Path::new("/nonexistent\n/tmp/x: pooled VM, exit status 0");
    let mut stream = send_request(&server.socket, forged, &[]);
    let frames = read_reply(&mut stream, Duration::from_secs(10));
    let (kind, text) = frames.last().expect("a reply");
    assert_eq!(*kind, frame::ERROR);
    assert!(!text.contains(&b'\n'), "{}", String::from_utf8_lossy(text));
    // A zero timeout is refused, as on the command line, instead of stopping the guest at once.
    let request = vmm::serve::Request {
        target: tests::image("hello"),
        args: Vec::new(),
        env: Vec::new(),
        timeout_ms: Some(0),
        max_output: 1 << 20,
        mem_size: 16 << 20,
        volumes: Vec::new(),
        stdin: false,
        net: None,
    };
    let mut stream = UnixStream::connect(&server.socket).unwrap();
    stream
        .write_all(&vmm::serve::wire::encode_request(&request).unwrap())
        .unwrap();
    let frames = read_reply(&mut stream, Duration::from_secs(10));
    let (kind, text) = frames.last().expect("a reply");
    assert_eq!(*kind, frame::ERROR, "{}", String::from_utf8_lossy(text));
    assert!(String::from_utf8_lossy(text).contains("timeout"));
}
