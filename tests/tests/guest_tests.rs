//! Guest crates in the cargo workflow: `cargo run` and `cargo test` inside `images/`, through
//! the runner of `images/.cargo/config.toml`. The test subjects of the runner are the `panic`
//! image's guest tests with its `failing-tests` feature: each verdict is checked here.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;
use tests::{image, kvm_test, project_root, status, stderr, stdout, vmm_bin};

/// `cargo ARGS` run in `dir` as a developer would, with the VMM that this test run built.
fn cargo_in(dir: &Path, args: &[&str]) -> Output {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    Command::new(cargo)
        .current_dir(dir)
        .args(args)
        .env("FLICK_VMM", vmm_bin())
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("cannot run cargo")
}

/// The runner's report on the `panic` image's test subjects (run once for all tests here).
fn subjects_report() -> &'static (i32, String) {
    static REPORT: OnceLock<(i32, String)> = OnceLock::new();
    REPORT.get_or_init(|| {
        let out = cargo_in(
            &project_root().join("images"),
            &["test", "--package", "panic", "--features", "failing-tests"],
        );
        (status(&out), format!("{}{}", stdout(&out), stderr(&out)))
    })
}

/// The report's failure section for `test` (up to the next section).
fn failure_of(test: &str) -> String {
    let report = &subjects_report().1;
    let header = format!("---- tests::{test} stdout ----");
    let start = report
        .find(&header)
        .unwrap_or_else(|| panic!("no failure section for {test}:\n{report}"));
    let rest = &report[start + header.len()..];
    let end = ["\n---- ", "\nfailures:"]
        .iter()
        .filter_map(|marker| rest.find(marker))
        .min()
        .unwrap_or(rest.len());
    rest[..end].to_owned()
}

#[kvm_test]
fn test_guest_tests_failure_exits_101_with_libtest_summary() {
    let (code, report) = subjects_report();
    assert_eq!(*code, 101, "{report}");
    assert!(
        report.contains("test result: FAILED. 3 passed; 4 failed; 1 ignored; 0 measured;"),
        "{report}"
    );
}

#[kvm_test]
fn test_guest_tests_passing_test_reported_ok() {
    let report = &subjects_report().1;
    assert!(
        report.contains("test tests::test_runner_reports_a_passing_test_ok ... ok"),
        "{report}"
    );
    assert!(
        !report.contains("output of a passing test"),
        "a passing test's output is captured: {report}"
    );
}

#[kvm_test]
fn test_guest_tests_output_without_final_newline_reported_ok() {
    let report = &subjects_report().1;
    let name = "tests::test_runner_reports_a_test_whose_output_lacks_a_final_newline_ok";
    assert!(report.contains(&format!("test {name} ... ok")), "{report}");
}

#[kvm_test]
fn test_guest_tests_expected_panic_reported_ok() {
    let report = &subjects_report().1;
    assert!(
        report.contains(
            "test tests::test_runner_counts_an_expected_panic_as_passed - should panic ... ok"
        ),
        "{report}"
    );
}

#[kvm_test]
fn test_guest_tests_panic_reported_failed_with_message_and_output() {
    let report = &subjects_report().1;
    assert!(
        report.contains("test tests::test_runner_reports_a_panic_as_failed ... FAILED"),
        "{report}"
    );
    let failure = failure_of("test_runner_reports_a_panic_as_failed");
    assert!(failure.contains("output before the failure"), "{failure}");
    assert!(
        failure.contains("panicked at panic/src/main.rs:")
            && failure.contains("deliberate failure in a guest test"),
        "{failure}"
    );
}

#[kvm_test]
fn test_guest_tests_crash_reported_failed_with_crash_report() {
    let report = &subjects_report().1;
    assert!(
        report.contains("test tests::test_runner_reports_a_crash_as_failed ... FAILED"),
        "{report}"
    );
    let failure = failure_of("test_runner_reports_a_crash_as_failed");
    assert!(
        failure.contains("null pointer dereference")
            && failure.contains("<panic::tests::test_runner_reports_a_crash_as_failed+"),
        "{failure}"
    );
}

#[kvm_test]
fn test_guest_tests_early_exit_reported_failed() {
    let failure = failure_of("test_runner_reports_an_early_exit_as_failed");
    assert!(failure.contains("before returning"), "{failure}");
}

#[kvm_test]
fn test_guest_tests_wrong_panic_message_reported_failed() {
    let failure = failure_of("test_runner_reports_a_panic_with_the_wrong_message_as_failed");
    assert!(
        failure.contains("expected substring: \"another text\""),
        "{failure}"
    );
}

#[kvm_test]
fn test_guest_tests_ignored_test_named_with_reason_and_not_run() {
    let report = &subjects_report().1;
    assert!(
        report.contains(
            "test tests::test_runner_reports_an_ignored_test_with_its_reason ... ignored, shows \
             how an ignored test is reported"
        ),
        "{report}"
    );
    assert!(!report.contains("an ignored test must not run"), "{report}");
}

#[kvm_test]
fn test_guest_tests_filter_selects_by_name() {
    let out = cargo_in(
        &project_root().join("images"),
        &["test", "--package", "exitcode", "--", "non_integer"],
    );
    let text = stdout(&out);
    assert_eq!(status(&out), 0, "{text}{}", stderr(&out));
    assert!(
        text.contains("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out"),
        "{text}"
    );
}

#[kvm_test]
fn test_cargo_run_in_an_image_crate_boots_it_with_the_arguments() {
    let out = cargo_in(
        &project_root().join("images/exitcode"),
        &["run", "--", "42"],
    );
    assert_eq!(status(&out), 42, "{}", stderr(&out));
}

#[kvm_test]
fn test_cargo_run_in_the_guest_workspace_boots_the_named_image() {
    // From images/ cargo names the image by a relative path: the runner must keep it valid.
    let out = cargo_in(
        &project_root().join("images"),
        &["run", "--package", "exitcode", "--", "43"],
    );
    assert_eq!(status(&out), 43, "{}", stderr(&out));
}

#[test]
fn test_guest_tests_skip_kvm_names_each_test_ignored_without_booting() {
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(project_root().join("images"))
        .args(["test", "--package", "exitcode"])
        .env("SKIP_KVM_TESTS", "1")
        .env("FLICK_VMM", project_root().join("target/no-such-vmm"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("cannot run cargo");
    let text = stdout(&out);
    assert_eq!(status(&out), 0, "{text}{}", stderr(&out));
    assert!(
        text.contains("test tests::test_exit_code_is_the_argument ... ignored, SKIP_KVM_TESTS=1"),
        "{text}"
    );
    assert!(
        text.contains("test result: ok. 0 passed; 0 failed; 2 ignored;"),
        "{text}"
    );
}

#[test]
fn test_runner_without_a_vmm_says_how_to_build_it() {
    let out = Command::new(project_root().join("images/runner"))
        .arg(image("hello"))
        .env("FLICK_VMM", project_root().join("target/no-such-vmm"))
        .output()
        .expect("cannot run images/runner");
    assert_eq!(status(&out), 125, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("build it with `cargo xtask build`"),
        "{}",
        stderr(&out)
    );
}
