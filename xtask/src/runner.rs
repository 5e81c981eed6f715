//! `cargo xtask runner IMAGE [ARGS...]`: cargo's runner for guest crates
//! (`images/.cargo/config.toml` → `images/runner` → here).
//!
//! - An app (`cargo run -- ARGS`): becomes `vmm run IMAGE -- ARGS`, with the VMM's exit status.
//! - A guest test binary (`cargo test`; it carries the symbol `__FLICK_TEST_HARNESS`): the
//!   runner asks the guest for its tests (`--flick-list`), boots one VM per selected test
//!   (`--flick-run PATH`, see `kernel/src/testing.rs`), and reports like libtest: a line per
//!   test, the output of each failure, `test result: ...`, status 101 on failure. One VM per
//!   test costs a boot each (a few milliseconds) and buys isolation: a test that panics (the
//!   kernel's panic handler ends the VM with 101), crashes the CPU or hangs fails alone, with
//!   its message or the VMM's crash report, and every test starts from a fresh kernel.
//!
//! Under `SKIP_KVM_TESTS=1` no VM boots: the tests are named from the image's `__flick_test
//! PATH` symbols and each is reported as `ignored, SKIP_KVM_TESTS=1`, like the host's KVM tests.
//!
//! `FLICK_VMM` names the VMM (default `target/release/vmm`); `FLICK_VMM_FLAGS` adds flags to
//! every `vmm run` (e.g. `--mem 64M`); test VMs get `--timeout 60s` unless it sets one.

use crate::vmm_path;
use anyhow::{Context, Result, bail};
use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output};
use std::time::Instant;

/// The symbol that marks a guest test binary (`kernel::__test_entry!`).
const TEST_HARNESS_SYMBOL: &str = "__FLICK_TEST_HARNESS";
/// What the guest prints last, on a line of its own, after a test returned
/// (`kernel::testing::PASSED_MARKER`).
const PASSED_MARKER: &str = "flick-test: passed";

/// The test's own output (stdout without the newline and marker line that the guest adds);
/// and whether the marker ended it.
fn split_marker(stdout: &str) -> (&str, bool) {
    match stdout.strip_suffix(&format!("\n{PASSED_MARKER}\n")) {
        Some(output) => (output, true),
        None => (stdout, false),
    }
}
/// The prefix of the symbol that `#[kernel::test]` gives each test's registration.
const TEST_SYMBOL_PREFIX: &str = "__flick_test ";
/// The ignore reason of every test under `SKIP_KVM_TESTS=1`, as for host KVM tests.
const SKIP_KVM_REASON: &str = "SKIP_KVM_TESTS=1";
/// The timeout of a test VM unless `FLICK_VMM_FLAGS` sets one.
const TEST_TIMEOUT: &str = "60s";
/// Exit status of a test run with failures, as libtest's.
const TESTS_FAILED: u8 = 101;
/// Exit status when the runner cannot start the guest, as the VMM's.
const CANNOT_START: u8 = 125;

/// `cargo xtask runner IMAGE [ARGS...]`.
pub fn run(image: &Path, args: &[OsString]) -> Result<ExitCode> {
    let symbols = read_symbols(image)?;
    if symbols.is_test_binary {
        return run_test_binary(image, symbols.tests, args);
    }
    let Some(vmm) = find_vmm() else {
        return Ok(ExitCode::from(CANNOT_START));
    };
    let err = Command::new(&vmm)
        .arg("run")
        .arg(image)
        .args(vmm_flags())
        .arg("--")
        .args(args)
        .exec();
    bail!("cannot start {}: {err}", vmm.display())
}

/// The VMM to boot with; `None`, after saying how to build it, when there is none.
fn find_vmm() -> Option<PathBuf> {
    let vmm = std::env::var_os("FLICK_VMM")
        .map(PathBuf::from)
        .unwrap_or_else(vmm_path);
    if vmm.is_file() {
        return Some(vmm);
    }
    eprintln!(
        "error: no VMM at {}: build it with `cargo xtask build` (in {})",
        vmm.display(),
        crate::project_root().display()
    );
    None
}

/// Whether `SKIP_KVM_TESTS=1` switches KVM tests off, guest tests included.
fn skip_kvm() -> bool {
    std::env::var("SKIP_KVM_TESTS").is_ok_and(|v| v == "1")
}

fn run_test_binary(image: &Path, test_paths: Vec<String>, args: &[OsString]) -> Result<ExitCode> {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_str().map(str::to_owned))
        .collect::<Option<_>>()
        .context("test arguments must be UTF-8")?;
    let options = match Options::parse(&args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(TESTS_FAILED));
        }
    };
    if skip_kvm() {
        // Named from the image's symbols: no VM boots, every test is reported ignored.
        let tests = test_paths
            .into_iter()
            .map(|path| GuestTest {
                name: name_of(&path).to_owned(),
                ignore: Some(SKIP_KVM_REASON.to_owned()),
                should_panic: ShouldPanic::No,
            })
            .collect();
        return report(None, tests, &options);
    }
    let Some(vmm) = find_vmm() else {
        return Ok(ExitCode::from(CANNOT_START));
    };
    let mut flags = vmm_flags();
    if !flags.iter().any(|f| f.starts_with("--timeout")) {
        flags.extend(["--timeout".to_owned(), TEST_TIMEOUT.to_owned()]);
    }
    let guest = Guest { vmm, image, flags };
    let listing = guest.boot(&["--flick-list"])?;
    if listing.status.code() != Some(0) {
        std::io::stderr().write_all(&listing.stderr)?;
        eprintln!(
            "error: {} did not list its tests (status {:?}); guest tests run in microVMs and \
             need /dev/kvm: set SKIP_KVM_TESTS=1 to skip them on purpose",
            image.display(),
            listing.status.code()
        );
        return Ok(ExitCode::from(CANNOT_START));
    }
    let tests = parse_list(&String::from_utf8_lossy(&listing.stdout))?;
    report(Some(&guest), tests, &options)
}

/// `FLICK_VMM_FLAGS`, split at whitespace.
fn vmm_flags() -> Vec<String> {
    std::env::var("FLICK_VMM_FLAGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// What the runner reads from an image's symbol table.
struct Symbols {
    /// It defines the harness's marker symbol.
    is_test_binary: bool,
    /// The paths of its tests, from the `__flick_test PATH` symbols of `#[kernel::test]`.
    tests: Vec<String>,
}

fn read_symbols(image: &Path) -> Result<Symbols> {
    let bytes = std::fs::read(image).with_context(|| format!("cannot read {}", image.display()))?;
    let elf = goblin::elf::Elf::parse(&bytes)
        .with_context(|| format!("{} is not an ELF image", image.display()))?;
    let names = elf
        .syms
        .iter()
        .filter_map(|sym| elf.strtab.get_at(sym.st_name));
    let mut symbols = Symbols {
        is_test_binary: false,
        tests: Vec::new(),
    };
    for name in names {
        if name == TEST_HARNESS_SYMBOL {
            symbols.is_test_binary = true;
        } else if let Some(path) = name.strip_prefix(TEST_SYMBOL_PREFIX) {
            symbols.tests.push(path.to_owned());
        }
    }
    Ok(symbols)
}

/// A test's name as libtest prints it: its path without the crate name (as
/// `kernel::testing::TestCase::name` does).
fn name_of(path: &str) -> &str {
    path.split_once("::").map_or(path, |(_crate, rest)| rest)
}

/// The libtest options a guest test binary understands.
#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    filters: Vec<String>,
    skip: Vec<String>,
    exact: bool,
    list: bool,
    ignored: bool,
    include_ignored: bool,
    nocapture: bool,
    color: Option<bool>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match arg.as_str() {
                "--exact" => options.exact = true,
                "--list" => options.list = true,
                "--ignored" => options.ignored = true,
                "--include-ignored" => options.include_ignored = true,
                "--nocapture" | "--no-capture" | "--show-output" => options.nocapture = true,
                "--skip" => options.skip.push(value("--skip")?),
                "--color" => options.color = parse_color(&value("--color")?)?,
                // Tests run one after the other; quiet output is the normal output.
                "--test-threads" => {
                    value("--test-threads")?;
                }
                "-q" | "--quiet" => {}
                other if other.starts_with("--test-threads=") => {}
                other => {
                    if let Some(color) = other.strip_prefix("--color=") {
                        options.color = parse_color(color)?;
                    } else if other.starts_with('-') {
                        return Err(format!("guest tests do not support the option {other}"));
                    } else {
                        options.filters.push(other.to_owned());
                    }
                }
            }
        }
        Ok(options)
    }

    /// Whether a test named `name` (ignored or not) is selected.
    fn selects(&self, name: &str, ignored: bool) -> bool {
        let matches = |pattern: &String| {
            if self.exact {
                name == pattern
            } else {
                name.contains(pattern.as_str())
            }
        };
        let by_name = self.filters.is_empty() || self.filters.iter().any(matches);
        let skipped = self.skip.iter().any(matches);
        let by_ignore = !self.ignored || ignored;
        by_name && !skipped && by_ignore
    }

    fn runs_ignored(&self) -> bool {
        self.ignored || self.include_ignored
    }
}

fn parse_color(value: &str) -> Result<Option<bool>, String> {
    match value {
        "auto" => Ok(None),
        "always" => Ok(Some(true)),
        "never" => Ok(Some(false)),
        other => Err(format!("--color takes auto, always or never, not {other}")),
    }
}

/// One test as the guest lists it.
#[derive(Debug, PartialEq, Eq)]
struct GuestTest {
    name: String,
    /// `Some(reason)` (maybe empty) when `#[ignore]`d.
    ignore: Option<String>,
    should_panic: ShouldPanic,
}

#[derive(Debug, PartialEq, Eq)]
enum ShouldPanic {
    No,
    Yes,
    WithMessage(String),
}

/// Parses the guest's `--flick-list` output.
fn parse_list(text: &str) -> Result<Vec<GuestTest>> {
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let ["test", name, ignore, should_panic] = fields.as_slice() else {
                bail!("the guest listed its tests in a form the runner does not know: {line:?}");
            };
            let ignore = match *ignore {
                "-" => None,
                "ignored" => Some(String::new()),
                other => match other.strip_prefix("ignored: ") {
                    Some(reason) => Some(reason.to_owned()),
                    None => bail!("unknown ignore field in {line:?}"),
                },
            };
            let should_panic = match *should_panic {
                "-" => ShouldPanic::No,
                "panics" => ShouldPanic::Yes,
                other => match other.strip_prefix("panics: ") {
                    Some(text) => ShouldPanic::WithMessage(text.to_owned()),
                    None => bail!("unknown should_panic field in {line:?}"),
                },
            };
            Ok(GuestTest {
                name: (*name).to_owned(),
                ignore,
                should_panic,
            })
        })
        .collect()
}

/// How to boot the image under test.
struct Guest<'a> {
    vmm: PathBuf,
    image: &'a Path,
    flags: Vec<String>,
}

impl Guest<'_> {
    fn boot(&self, guest_args: &[&str]) -> Result<Output> {
        Command::new(&self.vmm)
            .arg("run")
            .arg(self.image)
            .args(&self.flags)
            .arg("--")
            .args(guest_args)
            .output()
            .with_context(|| format!("cannot start {}", self.vmm.display()))
    }
}

/// The verdict on one test VM.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Passed,
    /// Failed, with a note for the failure report (may be empty).
    Failed(String),
}

/// Judges one test VM by its exit status, its output and what the test expected.
fn judge(test: &GuestTest, status: Option<i32>, stdout: &str, stderr: &str) -> Verdict {
    let returned = status == Some(0) && split_marker(stdout).1;
    let panicked = status == Some(101);
    let failed = |note: &str| Verdict::Failed(note.to_owned());
    match (&test.should_panic, returned, panicked) {
        (ShouldPanic::No, true, _) => Verdict::Passed,
        (ShouldPanic::No, false, true) => failed(""),
        (ShouldPanic::Yes, _, true) => Verdict::Passed,
        (ShouldPanic::WithMessage(text), _, true) if stderr.contains(text.as_str()) => {
            Verdict::Passed
        }
        (ShouldPanic::WithMessage(text), _, true) => Verdict::Failed(format!(
            "note: panic did not contain expected string\n      expected substring: {text:?}"
        )),
        (ShouldPanic::Yes | ShouldPanic::WithMessage(_), true, _) => {
            failed("note: test did not panic as expected")
        }
        (_, false, false) => Verdict::Failed(match status {
            Some(0) => "note: the test ended the VM with status 0 before returning".to_owned(),
            Some(124) => "note: the test VM timed out".to_owned(),
            Some(134) => {
                "note: the guest crashed (status 134; the VMM's report is above)".to_owned()
            }
            Some(code) => format!("note: the test VM exited with status {code}"),
            None => "note: the VMM was killed by a signal".to_owned(),
        }),
    }
}

/// Colours for result words, as libtest's.
struct Paint(bool);

impl Paint {
    fn word(&self, word: &str, code: u8) -> String {
        if self.0 {
            format!("\x1b[{code}m{word}\x1b[0m")
        } else {
            word.to_owned()
        }
    }
}

/// Runs `tests` as `options` select them, one VM each, and reports like libtest. Without a
/// `guest` (`SKIP_KVM_TESTS=1`) every test is reported as ignored.
fn report(guest: Option<&Guest>, mut tests: Vec<GuestTest>, options: &Options) -> Result<ExitCode> {
    tests.sort_by(|a, b| a.name.cmp(&b.name));
    let total = tests.len();
    tests.retain(|t| options.selects(&t.name, t.ignore.is_some()));
    let filtered_out = total - tests.len();

    let mut out = std::io::stdout().lock();
    if options.list {
        for test in &tests {
            writeln!(out, "{}: test", test.name)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let paint = Paint(
        options
            .color
            .unwrap_or_else(|| std::io::stdout().is_terminal()),
    );
    let started = Instant::now();
    let (mut passed, mut ignored) = (0, 0);
    let mut failures: Vec<(String, String)> = Vec::new();
    let plural = if tests.len() == 1 { "" } else { "s" };
    writeln!(out, "\nrunning {} test{plural}", tests.len())?;
    for test in &tests {
        let runs = guest.filter(|_| test.ignore.is_none() || options.runs_ignored());
        let Some(guest) = runs else {
            let reason = test.ignore.as_deref().unwrap_or(SKIP_KVM_REASON);
            let word = paint.word("ignored", 33);
            match reason {
                "" => writeln!(out, "test {} ... {word}", test.name)?,
                reason => writeln!(out, "test {} ... {word}, {reason}", test.name)?,
            }
            ignored += 1;
            continue;
        };
        let should_panic = match test.should_panic {
            ShouldPanic::No => "",
            _ => " - should panic",
        };
        write!(out, "test {}{should_panic} ... ", test.name)?;
        out.flush()?;
        let vm = guest.boot(&["--flick-run", &test.name])?;
        let stdout = String::from_utf8_lossy(&vm.stdout);
        let stderr = String::from_utf8_lossy(&vm.stderr);
        let (output, _) = split_marker(&stdout);
        let shown = if output.is_empty() || output.ends_with('\n') {
            output.to_owned()
        } else {
            format!("{output}\n")
        };
        if options.nocapture {
            write!(out, "\n{shown}")?;
            std::io::stderr().write_all(stderr.as_bytes())?;
        }
        match judge(test, vm.status.code(), &stdout, &stderr) {
            Verdict::Passed => {
                passed += 1;
                writeln!(out, "{}", paint.word("ok", 32))?;
            }
            Verdict::Failed(note) => {
                writeln!(out, "{}", paint.word("FAILED", 31))?;
                let mut report = format!("{shown}{stderr}");
                if !note.is_empty() {
                    report += &format!("{note}\n");
                }
                failures.push((test.name.clone(), report));
            }
        }
    }
    if !failures.is_empty() {
        writeln!(out, "\nfailures:\n")?;
        for (name, report) in &failures {
            writeln!(out, "---- {name} stdout ----\n{report}")?;
        }
        writeln!(out, "failures:")?;
        for (name, _) in &failures {
            writeln!(out, "    {name}")?;
        }
    }
    let verdict = if failures.is_empty() {
        paint.word("ok", 32)
    } else {
        paint.word("FAILED", 31)
    };
    writeln!(
        out,
        "\ntest result: {verdict}. {passed} passed; {} failed; {ignored} ignored; 0 measured; \
         {filtered_out} filtered out; finished in {:.2}s\n",
        failures.len(),
        started.elapsed().as_secs_f64()
    )?;
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(TESTS_FAILED)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|a| a.to_string()).collect()
    }

    fn plain(name: &str) -> GuestTest {
        GuestTest {
            name: name.to_owned(),
            ignore: None,
            should_panic: ShouldPanic::No,
        }
    }

    #[test]
    fn test_options_filters_and_flags_parse_like_libtest() {
        let options = Options::parse(&args(&[
            "heap",
            "--exact",
            "--skip",
            "slow",
            "--color=never",
            "--test-threads",
            "1",
            "-q",
        ]))
        .unwrap();
        assert_eq!(options.filters, ["heap"]);
        assert_eq!(options.skip, ["slow"]);
        assert!(options.exact);
        assert_eq!(options.color, Some(false));
    }

    #[test]
    fn test_name_of_drops_the_crate_name() {
        assert_eq!(
            name_of("kernel::heap::tests::test_a"),
            "heap::tests::test_a"
        );
        assert_eq!(name_of("lonely"), "lonely");
    }

    #[test]
    fn test_options_unknown_flag_is_refused() {
        let err = Options::parse(&args(&["--bench"])).unwrap_err();
        assert_eq!(err, "guest tests do not support the option --bench");
    }

    #[test]
    fn test_options_select_by_substring_exact_skip_and_ignored() {
        let by_substring = Options::parse(&args(&["heap"])).unwrap();
        assert!(by_substring.selects("heap::tests::test_a", false));
        assert!(!by_substring.selects("time::tests::test_b", false));
        let exact = Options::parse(&args(&["--exact", "heap"])).unwrap();
        assert!(!exact.selects("heap::tests::test_a", false));
        let skip = Options::parse(&args(&["--skip", "test_a"])).unwrap();
        assert!(!skip.selects("heap::tests::test_a", false));
        let only_ignored = Options::parse(&args(&["--ignored"])).unwrap();
        assert!(!only_ignored.selects("x", false));
        assert!(only_ignored.selects("x", true));
    }

    #[test]
    fn test_parse_list_reads_every_field() {
        let tests = parse_list(
            "test\ta::test_x\t-\t-\n\
             test\ta::test_y\tignored: slow\tpanics: boom\n\
             test\ta::test_z\tignored\tpanics\n",
        )
        .unwrap();
        assert_eq!(tests[0], plain("a::test_x"));
        assert_eq!(tests[1].ignore.as_deref(), Some("slow"));
        assert_eq!(
            tests[1].should_panic,
            ShouldPanic::WithMessage("boom".into())
        );
        assert_eq!(tests[2].ignore.as_deref(), Some(""));
        assert_eq!(tests[2].should_panic, ShouldPanic::Yes);
    }

    #[test]
    fn test_parse_list_unknown_line_is_an_error() {
        assert!(parse_list("running 3 tests\n").is_err());
    }

    #[test]
    fn test_judge_returned_test_passes_only_with_marker() {
        let test = plain("t");
        let ok = format!("output\n\n{PASSED_MARKER}\n");
        assert_eq!(judge(&test, Some(0), &ok, ""), Verdict::Passed);
        assert!(matches!(
            judge(&test, Some(0), "output\n", ""),
            Verdict::Failed(note) if note.contains("before returning")
        ));
    }

    #[test]
    fn test_split_marker_finds_it_after_output_with_or_without_a_final_newline() {
        let marker = format!("\n{PASSED_MARKER}\n");
        assert_eq!(split_marker(&marker), ("", true));
        assert_eq!(split_marker(&format!("line\n{marker}")), ("line\n", true));
        assert_eq!(split_marker(&format!("partial{marker}")), ("partial", true));
        assert_eq!(split_marker("no marker\n"), ("no marker\n", false));
        let mid = format!("{marker}after\n");
        assert_eq!(split_marker(&mid), (mid.as_str(), false));
    }

    #[test]
    fn test_judge_panic_fails_a_plain_test() {
        let verdict = judge(
            &plain("t"),
            Some(101),
            "",
            "panicked at src/x.rs:1:1: boom\n",
        );
        assert_eq!(verdict, Verdict::Failed(String::new()));
    }

    #[test]
    fn test_judge_should_panic_checks_the_expected_text() {
        let mut test = plain("t");
        test.should_panic = ShouldPanic::WithMessage("boom".into());
        let stderr = "panicked at src/x.rs:1:1: boom\n";
        assert_eq!(judge(&test, Some(101), "", stderr), Verdict::Passed);
        assert!(matches!(
            judge(&test, Some(101), "", "panicked at src/x.rs:1:1: other\n"),
            Verdict::Failed(note) if note.contains("expected substring")
        ));
        let returned = format!("\n{PASSED_MARKER}\n");
        assert!(matches!(
            judge(&test, Some(0), &returned, ""),
            Verdict::Failed(note) if note.contains("did not panic")
        ));
    }

    #[test]
    fn test_judge_crash_and_timeout_fail_even_when_a_panic_was_expected() {
        let mut test = plain("t");
        test.should_panic = ShouldPanic::Yes;
        assert!(matches!(
            judge(&test, Some(134), "", ""),
            Verdict::Failed(note) if note.contains("crashed")
        ));
        assert!(matches!(
            judge(&test, Some(124), "", ""),
            Verdict::Failed(note) if note.contains("timed out")
        ));
    }
}
