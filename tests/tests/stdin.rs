//! Standard input and the console as streams: `vmm run` forwards its stdin (pipe, file,
//! nothing), a read blocks the guest without spinning and `--timeout` still holds, large
//! inputs move in large chunks, a closed stdout ends the guest at once (status 141), and
//! snapshots and fleets give each guest the stdin of its own run.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tests::{image, status, stderr, stdout};

/// `vmm run IMAGE FLAGS -- ARGS` with `input` on a pipe as its stdin (written by a thread, so
/// that a guest that stops reading cannot deadlock the test).
fn run_with_stdin(name: &str, flags: &[&str], args: &[&str], input: Vec<u8>) -> Output {
    let mut child = Command::new(tests::vmm_bin())
        .arg("run")
        .arg(image(name))
        .args(["--timeout", "20s"])
        .args(flags)
        .arg("--")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// The `out` exits on `port` in a `--timeline=json` report on stderr.
fn exits_on(out: &Output, port: u16) -> u64 {
    let text = stderr(out);
    let json = text
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no timeline in: {text}"));
    let report: serde_json::Value = serde_json::from_str(json).unwrap();
    report["exits"]["io_out"][format!("{port:#x}")]
        .as_u64()
        .unwrap_or(0)
}

fn generated(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 256) as u8).collect()
}

#[tests::kvm_test]
fn test_stdin_pipe_reaches_the_guest_unchanged() {
    let input = generated(3 << 20);
    let out = run_with_stdin("cat", &[], &[], input.clone());
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert!(out.stdout == input, "3 MiB through cat differ");
}

#[tests::kvm_test]
fn test_stdin_redirected_file_moves_one_exit_per_mib() {
    let path = tests::write_scratch("stdin", "eight-mib", &generated(8 << 20));
    let out = Command::new(tests::vmm_bin())
        .arg("run")
        .arg(image("sha256sum"))
        .arg("--timeline=json")
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .unwrap();
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let reads = exits_on(&out, abi::port::STDIN);
    // 8 reads of 1 MiB and the one that finds the end.
    assert!((8..=10).contains(&reads), "{reads} stdin exits for 8 MiB");
}

#[tests::kvm_test]
fn test_stdin_closed_is_empty_input() {
    let out = Command::new(tests::vmm_bin())
        .arg("run")
        .arg(image("fsprobe"))
        .args(["--", "stdin-lines"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "ok lines=0 last=\n");
}

#[tests::kvm_test]
fn test_stdin_closed_descriptor_is_empty_input_and_stays_unused() {
    // With fd 0 closed, the image file would be the next thing opened at 0: the guest must
    // see the end of input, not the image's bytes.
    let script = format!(
        "exec 0<&-; exec {} run {} -- stdin-lines",
        tests::vmm_bin().display(),
        image("fsprobe").display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "ok lines=0 last=\n");
}

#[tests::kvm_test]
fn test_stdin_lines_are_read_through_bufread() {
    let out = run_with_stdin(
        "fsprobe",
        &[],
        &["stdin-lines"],
        b"one\r\ntwo\nthree".to_vec(),
    );
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "ok lines=3 last=three\n");
}

#[tests::kvm_test]
fn test_stdin_read_waits_without_spinning() {
    // Input arrives after 300 ms: the guest waits in the VMM (a few exits), not in a loop.
    let mut child = Command::new(tests::vmm_bin())
        .arg("run")
        .arg(image("fsprobe"))
        .args(["--timeout", "20s", "--timeline=json", "--", "stdin-lines"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    child.stdin.take().unwrap().write_all(b"late\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "ok lines=1 last=late\n");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let waits = exits_on(&out, abi::port::POLL) + exits_on(&out, abi::port::STDIN);
    assert!(waits <= 10, "{waits} exits while waiting for input");
}

#[tests::kvm_test]
fn test_stdin_wait_is_stopped_by_the_timeout() {
    let mut child = Command::new(tests::vmm_bin())
        .arg("run")
        .arg(image("cat"))
        .args(["--timeout", "500ms"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Keep the pipe open and silent: the guest waits until --timeout stops it.
    let held = child.stdin.take();
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    drop(held);
    assert_eq!(status(&out), 124, "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tests::kvm_test]
fn test_stdout_closed_ends_a_streaming_guest_at_once() {
    // `yes | vmm run cat | head -c 1`: the reader leaves; the guest stops like a process
    // killed by SIGPIPE, long before --timeout.
    let mut child = Command::new(tests::vmm_bin())
        .arg("run")
        .arg(image("cat"))
        .args(["--timeout", "20s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let line = [b'y', b'\n'].repeat(32 * 1024);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) && input.write_all(&line).is_ok() {}
    });
    let mut first = [0u8; 1];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    let started = Instant::now();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert_eq!(status(&out), 141, "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        stderr(&out).is_empty(),
        "like SIGPIPE: silent: {}",
        stderr(&out)
    );
}

#[tests::kvm_test]
fn test_snapshot_restore_reads_the_stdin_of_its_own_run() {
    let snap = tests::scratch_dir("stdin").join("fsprobe.snap");
    tests::snapshot_image("fsprobe", &snap);
    let mut child = Command::new(tests::vmm_bin())
        .args(["run", "--from", snap.to_str().unwrap(), "--", "stdin-lines"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"restored\nrun\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "ok lines=2 last=run\n");
}

#[tests::kvm_test]
fn test_snapshot_with_a_file_open_is_refused() {
    let dir = tests::scratch_dir("stdin").join("held");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f"), "x").unwrap();
    let snap = dir.with_extension("snap");
    let out = tests::vmm(&[
        "snapshot",
        image("fsprobe").to_str().unwrap(),
        "-o",
        snap.to_str().unwrap(),
        "--volume",
        &format!("{}:/d", dir.display()),
        "--",
        "hold",
        "/d/f",
    ]);
    assert_eq!(status(&out), 125, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("open file"),
        "says why: {}",
        stderr(&out)
    );
    assert!(!snap.exists(), "no snapshot written");
}

#[tests::kvm_test]
fn test_snapshot_restore_gets_volumes_from_its_own_command_line() {
    let dir = tests::scratch_dir("stdin").join("restore-volume");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f"), "from the restore's volume").unwrap();
    let snap = dir.with_extension("snap");
    tests::snapshot_image("fsprobe", &snap);
    let volume = format!("{}:/v:ro", dir.display());
    let out = tests::vmm(&[
        "run",
        "--from",
        snap.to_str().unwrap(),
        "--volume",
        &volume,
        "--",
        "read",
        "/v/f",
    ]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "ok from the restore's volume\n");
    let out = tests::vmm(&[
        "run",
        "--from",
        snap.to_str().unwrap(),
        "--",
        "read",
        "/v/f",
    ]);
    assert_eq!(stdout(&out), "err NotFound\n", "no volume without --volume");
}

#[tests::kvm_test]
fn test_fleet_instances_get_their_manifest_stdin_and_volumes() {
    let dir = tests::scratch_dir("stdin").join("fleet");
    std::fs::create_dir_all(dir.join("shared")).unwrap();
    std::fs::write(dir.join("shared/f"), "shared file").unwrap();
    std::fs::write(dir.join("input.txt"), "a\nb\nc\n").unwrap();
    let probe = image("fsprobe");
    let manifest = dir.join("fleet.toml");
    std::fs::write(
        &manifest,
        format!(
            "[[vm]]\nname = \"lines\"\nimage = \"{probe}\"\ncount = 3\nstdin = \"input.txt\"\nargs = [\"stdin-lines\"]\n\n\
             [[vm]]\nname = \"empty\"\nimage = \"{probe}\"\ncount = 2\nargs = [\"stdin-lines\"]\n\n\
             [[vm]]\nname = \"files\"\nimage = \"{probe}\"\ncount = 2\nvolumes = [\"shared:/s:ro\"]\nargs = [\"read\", \"/s/f\"]\n",
            probe = probe.display()
        ),
    )
    .unwrap();
    let out = tests::vmm(&["fleet", "--manifest", manifest.to_str().unwrap(), "--json"]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let instances = report["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 7);
    for instance in instances {
        let expected = match instance["group"].as_str().unwrap() {
            "lines" => "ok lines=3 last=c\n",
            "empty" => "ok lines=0 last=\n",
            _ => "ok shared file\n",
        };
        assert_eq!(instance["stdout"], expected, "{instance}");
    }
}
