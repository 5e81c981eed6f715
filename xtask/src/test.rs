//! `cargo xtask test`: lint, build the VMM and every image, run the guest unit tests (each in
//! a microVM, through cargo and the guest runner) and the host workspace's tests, then say what
//! ran: passed, failed, ignored (and how many of those `SKIP_KVM_TESTS=1` switched off).
//! A run in which no test ran fails: a filter that matches nothing, or a broken harness.

use crate::{build_vmm, cargo, guest, lint, vmm_path};
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::process::{Command, ExitCode, Stdio};

/// Counts read from libtest's `test result:` lines (and the guest runner's, which match).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub filtered_out: u64,
    /// Ignored tests whose reason is `SKIP_KVM_TESTS=1`.
    pub skipped_kvm: u64,
}

impl Tally {
    /// Tests that ran.
    pub fn ran(&self) -> u64 {
        self.passed + self.failed
    }

    /// Adds what one line of test output says, if anything (colours or not).
    pub fn read_line(&mut self, line: &str) {
        let line = strip_colours(line);
        let line = line.as_str();
        if let Some(result) = line.strip_prefix("test result: ") {
            let count = |label: &str| {
                result
                    .split([';', '.'])
                    .filter_map(|part| part.trim().strip_suffix(label))
                    .find_map(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            self.passed += count(" passed");
            self.failed += count(" failed");
            self.ignored += count(" ignored");
            self.filtered_out += count(" filtered out");
        } else if line.starts_with("test ") && line.ends_with(" ... ignored, SKIP_KVM_TESTS=1") {
            self.skipped_kvm += 1;
        }
    }

    /// The closing line of `cargo xtask test`.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "cargo xtask test: {} tests ran: {} passed, {} failed; {} ignored",
            self.ran(),
            self.passed,
            self.failed,
            self.ignored
        );
        if self.skipped_kvm > 0 {
            text += &format!(
                " ({} of them KVM tests skipped by SKIP_KVM_TESTS=1, each named above)",
                self.skipped_kvm
            );
        }
        if self.filtered_out > 0 {
            text += &format!("; {} filtered out", self.filtered_out);
        }
        text
    }
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs `cmd` (a `cargo test`), echoing its stdout line by line into `tally`; true if it
/// succeeded.
fn run_counted(mut cmd: Command, tally: &mut Tally) -> Result<bool> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run cargo test")?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("cannot read the output of cargo test")?;
        tally.read_line(&line);
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    drop(out);
    Ok(child
        .wait()
        .context("cannot wait for cargo test")?
        .success())
}

/// Arguments for every test binary: the user's, plus colours when we print to a terminal
/// (libtest sees a pipe, ours).
fn harness_args(user_args: &[String]) -> Vec<String> {
    let mut args = Vec::new();
    if std::io::stdout().is_terminal() && !user_args.iter().any(|a| a.starts_with("--color")) {
        args.extend(["--color".to_owned(), "always".to_owned()]);
    }
    args.extend(user_args.iter().cloned());
    args
}

/// `cargo xtask test [-- ARGS]`.
pub fn run(user_args: &[String]) -> Result<ExitCode> {
    lint::run()?;
    guest::build(&[])?;
    build_vmm()?;
    let args = harness_args(user_args);
    let mut tally = Tally::default();

    eprintln!("test: guest unit tests, each in a microVM");
    let mut guest_tests = guest::guest_cargo();
    guest_tests
        .args(["test", "--workspace", "--no-fail-fast"])
        .env("FLICK_VMM", vmm_path())
        .arg("--")
        .args(&args);
    let guest_ok = run_counted(guest_tests, &mut tally)?;

    eprintln!("test: host workspace");
    let mut host_tests = cargo();
    host_tests
        .args(["test", "--workspace", "--release", "--no-fail-fast"])
        .env("FLICK_VMM", vmm_path())
        .env("FLICK_IMAGES", guest::images_dir())
        .arg("--")
        .args(&args);
    let host_ok = run_counted(host_tests, &mut tally)?;

    println!("{}", tally.summary());
    if !guest_ok || !host_ok || tally.failed > 0 {
        bail!("tests failed");
    }
    if tally.ran() == 0 {
        bail!(
            "no test ran: the filter {:?} matches no test, or a test harness is broken",
            user_args
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(lines: &[&str]) -> Tally {
        let mut tally = Tally::default();
        for line in lines {
            tally.read_line(line);
        }
        tally
    }

    #[test]
    fn test_tally_sums_result_lines() {
        let t = tally(&[
            "test result: ok. 12 passed; 0 failed; 3 ignored; 0 measured; 0 filtered out; \
             finished in 0.10s",
            "test result: FAILED. 4 passed; 2 failed; 0 ignored; 0 measured; 7 filtered out; \
             finished in 1.00s",
        ]);
        assert_eq!(
            t,
            Tally {
                passed: 16,
                failed: 2,
                ignored: 3,
                filtered_out: 7,
                skipped_kvm: 0
            }
        );
        assert_eq!(t.ran(), 18);
    }

    #[test]
    fn test_tally_counts_kvm_skips_by_reason() {
        let t = tally(&[
            "test test_a ... ignored, SKIP_KVM_TESTS=1",
            "test test_b ... ignored, slow",
            "test test_c ... ok",
        ]);
        assert_eq!(t.skipped_kvm, 1);
        assert_eq!(t.ran(), 0, "only result lines count tests that ran");
    }

    #[test]
    fn test_tally_reads_coloured_lines() {
        let t = tally(&[
            "test test_a ... \x1b[33mignored\x1b[0m, SKIP_KVM_TESTS=1",
            "test result: \x1b[32mok\x1b[0m. 1 passed; 0 failed; 1 ignored; 0 measured; 0 \
             filtered out; finished in 0.00s",
        ]);
        assert_eq!((t.passed, t.ignored, t.skipped_kvm), (1, 1, 1));
    }

    #[test]
    fn test_tally_ignores_other_output() {
        let t = tally(&[
            "running 3 tests",
            "test result is what we print",
            "passed; 3",
        ]);
        assert_eq!(t, Tally::default());
    }

    #[test]
    fn test_summary_names_skipped_kvm_tests() {
        let t = Tally {
            passed: 164,
            failed: 0,
            ignored: 77,
            filtered_out: 0,
            skipped_kvm: 77,
        };
        assert_eq!(
            t.summary(),
            "cargo xtask test: 164 tests ran: 164 passed, 0 failed; 77 ignored (77 of them KVM \
             tests skipped by SKIP_KVM_TESTS=1, each named above)"
        );
    }
}
