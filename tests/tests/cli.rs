//! The `vmm` command line: bad input gets one clear line on stderr and status 125.

use tests::{image, kvm_test, status, stderr, vmm, vmm_run, write_scratch};

fn assert_one_line_error(out: &std::process::Output, expected: &str) {
    let err = stderr(out);
    assert_eq!(status(out), 125, "{err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(expected), "expected '{expected}' in: {err}");
}

/// A usage error keeps clap's whole message: the error on its first line, then its tips and
/// the pointer to `--help`.
fn assert_usage_error(out: &std::process::Output, expected: &str) {
    let err = stderr(out);
    assert_eq!(status(out), 125, "{err}");
    let first = err.lines().next().unwrap_or_default();
    assert!(first.starts_with("error: "), "{err}");
    assert!(
        first.contains(expected),
        "expected '{expected}' in: {first}"
    );
    assert!(err.contains("--help"), "{err}");
}

#[test]
fn test_cli_unknown_flag_is_refused() {
    let out = vmm(&["run", "x", "--bogus"]);
    assert_usage_error(&out, "--bogus");
    assert!(
        stderr(&out).contains("use '-- --bogus'"),
        "clap's tip survives"
    );
}

#[test]
fn test_cli_missing_image_is_refused() {
    let out = vmm(&["run", "/nonexistent/image"]);
    assert_one_line_error(&out, "No such file or directory");
}

#[test]
fn test_cli_bad_mem_is_refused() {
    let hello = image("hello");
    let hello = hello.to_str().unwrap();
    assert_usage_error(&vmm(&["run", hello, "--mem", "lots"]), "invalid size");
    assert_one_line_error(&vmm(&["run", hello, "--mem", "1M"]), "below the minimum");
    assert_one_line_error(&vmm(&["run", hello, "--mem", "64G"]), "above the maximum");
    assert_one_line_error(&vmm(&["run", hello, "--mem", "5M"]), "multiple of 2 MiB");
}

#[test]
fn test_cli_bad_timeout_is_refused() {
    let out = vmm(&["run", "x", "--timeout", "soon"]);
    assert_usage_error(&out, "invalid duration");
    let out = vmm(&["run", "x", "--timeout", "0"]);
    assert_usage_error(&out, "is zero");
    let out = vmm(&["run", "x", "--timeout", "18446744073709552s"]);
    assert_usage_error(&out, "out of range");
}

#[test]
fn test_cli_host_program_is_refused() {
    let out = vmm_run("/bin/true".as_ref(), &[], &[]);
    assert_one_line_error(&out, "not an image for this VMM");
}

#[test]
fn test_cli_garbage_file_is_refused() {
    let path = write_scratch("cli-garbage", "garbage", b"\x7fELF\x02\x01\x01garbage");
    assert_one_line_error(&vmm_run(&path, &[], &[]), "truncated ELF header");
}

#[test]
fn test_cli_dev_zero_is_refused() {
    assert_one_line_error(
        &vmm_run("/dev/zero".as_ref(), &[], &[]),
        "not a regular file",
    );
}

#[test]
fn test_cli_help_documents_exit_statuses() {
    let out = vmm(&["run", "--help"]);
    let text = tests::stdout(&out);
    assert_eq!(status(&out), 0);
    for code in ["101", "124", "125", "134", "137", "141"] {
        assert!(text.contains(code), "--help lacks status {code}");
    }
}

#[kvm_test]
fn test_cli_blocked_syscall_is_reported_and_exits_125() {
    let out = vmm_run(&image("hello"), &["--debug-blocked-syscall"], &[]);
    // A VMM failure, never reported as a guest crash (134).
    assert_eq!(status(&out), 125, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("seccomp: blocked syscall socket (41)"),
        "{}",
        stderr(&out)
    );
}

#[kvm_test]
fn test_cli_no_seccomp_warns_and_still_runs() {
    let out = vmm_run(&image("hello"), &["--no-seccomp"], &[]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: --no-seccomp"),
        "{}",
        stderr(&out)
    );
    assert!(tests::stdout(&out).contains("Hello from a unikernel!"));
}

#[test]
fn test_cli_seccomp_list_is_short_and_explained() {
    let out = vmm(&["seccomp-list"]);
    assert_eq!(status(&out), 0);
    let text = tests::stdout(&out);
    // The plain runner's section comes first: at most 16 calls, each with a reason.
    let runner: Vec<&str> = text
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with('#'))
        .collect();
    assert!(text.starts_with("# runner"), "{text}");
    assert!((10..=16).contains(&runner.len()), "{text}");
    assert!(
        runner.iter().all(|l| l.split_whitespace().count() > 1),
        "{text}"
    );
    assert!(
        runner
            .iter()
            .any(|l| l.starts_with("ioctl ") && l.contains("KVM_RUN")),
        "{text}"
    );
    for absent in ["openat2", "clone", "getrandom", "pread64"] {
        assert!(
            !runner.iter().any(|l| l.starts_with(&format!("{absent} "))),
            "the plain runner allows {absent}: {text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("openat2 ") && l.contains("RESOLVE_BENEATH")),
        "{text}"
    );
    for role in ["# fleet worker", "# serve runner", "# watchdog"] {
        assert!(text.contains(role), "no {role} section: {text}");
    }
    assert!(!text.contains("socket"), "{text}");
}

#[test]
fn test_cli_vmm_panic_exits_125_not_as_a_guest_crash() {
    let out = vmm_run(&image("hello"), &["--debug-panic"], &[]);
    assert_eq!(status(&out), 125, "{}", stderr(&out));
    assert!(stderr(&out).contains("internal error"), "{}", stderr(&out));
}

#[kvm_test]
fn test_cli_closed_stdout_ends_the_guest_like_sigpipe() {
    // `yes`-like: the `alloc` image's "spam" mode would do; `sha256` over a long input too.
    // Here: a guest printing without end into a pipe whose reader has gone.
    let mut child = std::process::Command::new(tests::vmm_bin())
        .args([
            "run",
            image("hello").to_str().unwrap(),
            "--timeout",
            "20s",
            "--",
        ])
        .args(std::iter::repeat_n("line", 2000))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away at once
    let out = child.wait_with_output().unwrap();
    assert_eq!(status(&out), 141, "{}", stderr(&out));
}

#[test]
fn test_cli_image_name_suggests_the_built_image() {
    let dir = tests::scratch_dir("cli-suggest");
    std::fs::create_dir_all(dir.join("target/images")).unwrap();
    std::fs::copy(image("hello"), dir.join("target/images/hello")).unwrap();
    let run = |name: &str| {
        std::process::Command::new(tests::vmm_bin())
            .current_dir(&dir)
            .args(["run", name])
            .output()
            .unwrap()
    };
    let out = run("hello");
    assert_one_line_error(&out, "cannot read hello");
    assert!(
        stderr(&out).contains("(did you mean target/images/hello?)"),
        "{}",
        stderr(&out)
    );
    let out = run("nothing");
    assert_one_line_error(&out, "cannot read nothing");
    assert!(!stderr(&out).contains("did you mean"), "{}", stderr(&out));
}

#[test]
fn test_readme_states_the_sandbox_as_it_is() {
    let readme = std::fs::read_to_string(tests::project_root().join("README.md")).unwrap();
    let readme = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    let calls = vmm::sandbox::ALLOWED.len();
    let ioctls = vmm::sandbox::ALLOWED
        .iter()
        .find(|(name, _)| *name == "ioctl")
        .map(|(_, why)| why.matches("KVM_").count())
        .unwrap();
    let claim =
        format!("`vmm seccomp-list`; {calls} calls, `ioctl` limited to {ioctls} KVM requests");
    assert!(readme.contains(&claim), "README should say: {claim}");
}

/// Runs `vmm ARGS` with stdout or stderr on /dev/full (every write fails with ENOSPC).
fn vmm_with_full(args: &[&str], full_stdout: bool) -> std::process::Output {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let mut cmd = std::process::Command::new(tests::vmm_bin());
    cmd.args(args);
    if full_stdout {
        cmd.stdout(full);
    } else {
        cmd.stderr(full);
    }
    cmd.output().expect("cannot start vmm")
}

#[test]
fn test_cli_output_that_cannot_be_written_is_one_line_not_an_abort() {
    let out = vmm_with_full(&["seccomp-list"], true);
    assert_eq!(tests::status(&out), 125, "{}", tests::stderr(&out));
    let text = tests::stderr(&out);
    assert!(
        text.contains("cannot write the output") && !text.contains("panic"),
        "{text}"
    );
}

#[tests::kvm_test]
fn test_cli_guest_output_that_cannot_be_written_fails_the_run() {
    // As `echo hi > /dev/full` fails: a run whose output was lost must not look whole.
    let hello = tests::image("hello");
    let out = vmm_with_full(&["run", hello.to_str().unwrap()], true);
    assert_eq!(tests::status(&out), 125, "{}", tests::stderr(&out));
    let text = tests::stderr(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("cannot write the guest's stdout: No space left on device"),
        "{text}"
    );
    // A stderr that cannot be written costs the guest's diagnostics only.
    let out = vmm_with_full(&["run", hello.to_str().unwrap()], false);
    assert_eq!(tests::status(&out), 0);
    assert_eq!(tests::stdout(&out), "Hello from a unikernel!\n");
}

#[tests::kvm_test]
fn test_cli_crash_report_on_a_full_stderr_still_exits_134() {
    let fault = tests::image("fault");
    let out = vmm_with_full(&["run", fault.to_str().unwrap(), "--", "null"], false);
    assert_eq!(tests::status(&out), 134);
}

#[test]
fn test_cli_snapshot_over_its_own_image_is_refused_and_the_image_kept() {
    let image_bytes = std::fs::read(image("hello")).unwrap();
    let path = write_scratch("cli-same-file", "hello", &image_bytes);
    let link = path.with_file_name("hello-link");
    let _ = std::fs::remove_file(&link);
    std::fs::hard_link(&path, &link).unwrap();
    for out_path in [&path, &link] {
        let out = vmm(&[
            "snapshot",
            "-o",
            out_path.to_str().unwrap(),
            path.to_str().unwrap(),
        ]);
        assert_eq!(status(&out), 125, "{}", stderr(&out));
        assert!(
            stderr(&out).contains("is the file this command reads"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        image_bytes,
        "the image was replaced"
    );
}

#[test]
fn test_cli_core_over_its_own_image_is_refused() {
    let image_bytes = std::fs::read(image("fault")).unwrap();
    let path = write_scratch("cli-same-file", "fault", &image_bytes);
    let p = path.to_str().unwrap();
    let out = vmm(&["run", "--core", p, p, "--", "null"]);
    assert_eq!(status(&out), 125, "{}", stderr(&out));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        image_bytes,
        "the image was replaced"
    );
}
