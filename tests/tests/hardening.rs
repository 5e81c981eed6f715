//! The VMM under hostile or unlucky input from the command line and files: FIFOs where files
//! are expected, counts and durations at the edge of their types, guests that never reach the
//! point a command waits for, arguments that would split in the guest. Each ends in one clear
//! line and a non-zero status, within seconds, never a hang, a panic or an abort.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tests::elf::ElfBuilder;
use tests::{asm, image, kvm_test, status, stderr, write_scratch};

/// Runs `vmm` with `args`, killing it (and failing) if it is still running after `limit`.
fn vmm_within(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(tests::vmm_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start vmm");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vmm {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

fn assert_refused_within(args: &[&str], expected: &str) {
    let out = vmm_within(args, Duration::from_secs(10));
    let err = stderr(&out);
    assert_eq!(status(&out), 125, "{args:?}: {err}");
    assert!(
        err.contains(expected),
        "{args:?}: expected '{expected}' in {err}"
    );
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

fn fifo(name: &str) -> std::path::PathBuf {
    let path = tests::scratch_dir("hardening-fifo").join(name);
    let _ = std::fs::remove_file(&path);
    let status = Command::new("mkfifo").arg(&path).status().expect("mkfifo");
    assert!(status.success());
    path
}

#[test]
fn test_hardening_fifo_targets_are_refused_without_blocking() {
    let path = fifo("target");
    let path = path.to_str().unwrap();
    let out = tests::scratch_dir("hardening-fifo").join("out.snap");
    let out = out.to_str().unwrap();
    assert_refused_within(&["run", path], "not a regular file");
    assert_refused_within(&["run", "--from", path], "not a regular file");
    assert_refused_within(&["snapshot", path, "-o", out], "not a regular file");
    assert_refused_within(&["fleet", path, "--count", "1"], "not a regular file");
    assert_refused_within(&["fleet", "--manifest", path], "not a regular file");
}

#[test]
fn test_hardening_outputs_never_replace_what_is_not_a_regular_file() {
    let hello = image("hello");
    let hello = hello.to_str().unwrap();
    let fault = image("fault");
    let fault = fault.to_str().unwrap();
    let dir = tests::scratch_dir("hardening-outputs");
    let link = dir.join("link");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("/dev/null", &link).unwrap();
    let fifo = fifo("output");
    for out in [fifo.as_path(), link.as_path(), dir.as_path()] {
        let out = out.to_str().unwrap();
        let refused = "exists and is not a regular file";
        assert_refused_within(&["snapshot", hello, "-o", out], refused);
        assert_refused_within(&["run", fault, "--core", out, "--", "null"], refused);
    }
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

#[test]
fn test_hardening_huge_fleet_counts_are_refused_with_one_line() {
    let hello = image("hello");
    let hello = hello.to_str().unwrap();
    for count in ["1000000000", "18446744073709551615"] {
        assert_refused_within(&["fleet", hello, "--count", count], "at most 100000");
    }
    assert_refused_within(&["fleet", hello, "--count", "0"], "no instances");
    assert_refused_within(
        &["fleet", hello, "--concurrency", "100000"],
        "--concurrency 100000 is out of range",
    );
    let manifest = write_scratch(
        "hardening-manifest",
        "sum.toml",
        b"[[vm]]\nimage = \"a\"\ncount = 18446744073709551615\n[[vm]]\nimage = \"b\"\ncount = 9\n",
    );
    assert_refused_within(
        &["fleet", "--manifest", manifest.to_str().unwrap()],
        "instances in all",
    );
    assert_refused_within(&["fleet", "--manifest", "/dev/zero"], "not a regular file");
}

#[test]
fn test_hardening_durations_beyond_any_clock_are_refused() {
    let hello = image("hello");
    let hello = hello.to_str().unwrap();
    for flags in [
        &["run", hello, "--timeout", "9223372036854775808s"][..],
        &["fleet", hello, "--timeout", "9223372036854775808s"],
        &[
            "serve",
            "--socket",
            "/nonexistent/x",
            "--max-timeout",
            "18446744073709552s",
        ],
        &[
            "run",
            "--via",
            "/nonexistent/x",
            hello,
            "--timeout",
            "18446744073709552s",
        ],
    ] {
        assert_refused_within(flags, "out of range");
    }
}

#[kvm_test]
fn test_hardening_manifest_arguments_are_checked_like_the_command_line() {
    let hello = image("hello");
    for (entry, expected) in [
        ("args = [\"a\\u0000b\"]", "NUL byte"),
        ("env = [\"NOEQUALS\"]", "invalid environment entry"),
        ("env = [\"K=v\\u0000w\"]", "invalid environment entry"),
    ] {
        let manifest = write_scratch(
            "hardening-manifest-args",
            "m.toml",
            format!("[[vm]]\nimage = \"{}\"\n{entry}\n", hello.display()).as_bytes(),
        );
        assert_refused_within(
            &["fleet", "--manifest", manifest.to_str().unwrap()],
            expected,
        );
    }
}

#[kvm_test]
fn test_hardening_snapshot_of_a_guest_that_never_gets_there_times_out() {
    let spin = write_scratch(
        "hardening-spin",
        "spin",
        &ElfBuilder::guest(&asm::SPIN).build(),
    );
    let out = tests::scratch_dir("hardening-spin").join("spin.snap");
    let out = vmm_within(
        &[
            "snapshot",
            spin.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--timeout",
            "300ms",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(status(&out), 125, "{}", stderr(&out));
    assert!(stderr(&out).contains("it timed out"), "{}", stderr(&out));
}

#[kvm_test]
fn test_hardening_resident_fleet_release_of_a_spinning_guest_ends() {
    // out WAIT, then spin forever once released.
    let code = [
        asm::mov_dx(abi::port::WAIT),
        vec![asm::OUT_DX_EAX],
        asm::SPIN.to_vec(),
    ]
    .concat();
    let path = write_scratch(
        "hardening-release",
        "spinner",
        &ElfBuilder::guest(&code).build(),
    );
    let out = vmm_within(
        &[
            "fleet",
            path.to_str().unwrap(),
            "--count",
            "2",
            "--resident",
            "--timeout",
            "300ms",
            "--json",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the fleet's JSON report");
    assert_eq!(report["outcomes"]["timed out"], 2, "{report}");
}

#[kvm_test]
fn test_hardening_snapshot_layout_error_is_said_once() {
    let good = std::fs::read({
        let path = tests::scratch_dir("hardening-layout").join("hello.snap");
        tests::snapshot_image("hello", &path);
        path
    })
    .unwrap();
    // The first segment record's address (right after the 128-byte header) below the image
    // area; checksums fixed up so that the layout check is reached.
    let mut bad = good;
    bad[128..136].copy_from_slice(&0x1000u64.to_le_bytes());
    vmm::fuzzing::fix_snapshot_checksums(&mut bad);
    let path = write_scratch("hardening-layout", "bad.snap", &bad);
    let out = vmm_within(
        &["run", "--from", path.to_str().unwrap()],
        Duration::from_secs(10),
    );
    let err = stderr(&out);
    assert_eq!(status(&out), 125, "{err}");
    assert!(err.contains("lies outside the image area"), "{err}");
    assert_eq!(err.matches("corrupted snapshot").count(), 1, "{err}");
}

#[test]
fn test_hardening_via_client_does_not_wait_for_ever_on_a_silent_server() {
    // A "server" that accepts and never answers: the client's request has a timeout, so the
    // client gives up a few seconds after it.
    let dir = tests::scratch_dir("hardening-silent");
    let socket = dir.join("silent.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let held = std::thread::spawn(move || {
        let connection = listener.accept();
        std::thread::sleep(Duration::from_secs(8));
        drop(connection);
    });
    let hello = image("hello");
    let out = vmm_within(
        &[
            "run",
            "--via",
            socket.to_str().unwrap(),
            hello.to_str().unwrap(),
            "--timeout",
            "200ms",
        ],
        Duration::from_secs(7),
    );
    assert_eq!(status(&out), 125, "{}", stderr(&out));
    assert!(stderr(&out).starts_with("error: "), "{}", stderr(&out));
    drop(held);
}
