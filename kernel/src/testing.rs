//! The guest side of guest unit tests (`#[kernel::test]`; libtest needs `std`).
//!
//! Each `#[kernel::test]` puts a [`TestCase`] in the `.flick_tests` link section, which
//! `kernel/link.ld` gathers into one array between `__flick_tests_start` and
//! `__flick_tests_end`. In a test build (`cargo test`, `cfg(test)`), [`main!`](crate::main)
//! makes the image's entry point [`run`] instead of the app's `main`, and marks the image with
//! the symbol `__FLICK_TEST_HARNESS`, by which the runner (`cargo xtask runner`, cargo's
//! runner in `images/.cargo/config.toml`) tells a test binary from an app.
//!
//! The runner boots one VM per test, so that a test that panics, crashes the CPU or hangs costs
//! only its own VM and every test starts from a fresh kernel (a fresh heap, empty buffers).
//! It speaks to the guest through arguments:
//! - `--flick-list`: one line per test, `test<TAB>PATH<TAB>IGNORED<TAB>SHOULD_PANIC`, where
//!   IGNORED is `-` or `ignored[: reason]` and SHOULD_PANIC is `-`, `panics` or
//!   `panics: expected text`;
//! - `--flick-run PATH`: runs that test, then prints a newline and [`PASSED_MARKER`] on stdout
//!   and exits 0. A panic exits 101 through the kernel's panic handler, with
//!   `panicked at FILE:LINE:COL: MESSAGE` on stderr, as in an app.
//!
//! PATH is the test's module path without the crate name, as libtest prints it. Each
//! registration's symbol is `__flick_test PATH` (crate name included), so that the runner can
//! name the tests without booting the image when `SKIP_KVM_TESTS=1` switches VMs off.

use crate::{Args, print, println};

/// Printed on stdout after a test returned: the runner counts a test as passed only with it,
/// so a test that ends the VM early with `kernel::exit(0)` does not pass.
pub const PASSED_MARKER: &str = "flick-test: passed";

/// Whether a test is expected to panic.
#[derive(Clone, Copy, Debug)]
pub enum ShouldPanic {
    /// It must return.
    No,
    /// It must panic.
    Yes,
    /// It must panic with a message that contains this text.
    WithMessage(&'static str),
}

/// One `#[kernel::test]`, as the attribute registers it.
#[derive(Debug)]
pub struct TestCase {
    /// `module_path!()::name`, the crate name included.
    pub path: &'static str,
    /// The test function.
    pub run: fn(),
    /// `Some(reason)` for `#[ignore]` (the reason may be empty).
    pub ignore: Option<&'static str>,
    /// What `#[should_panic]` asks.
    pub should_panic: ShouldPanic,
}

impl TestCase {
    /// The path libtest would print: without the crate name.
    pub fn name(&self) -> &'static str {
        self.path
            .split_once("::")
            .map_or(self.path, |(_crate, rest)| rest)
    }
}

unsafe extern "C" {
    static __flick_tests_start: u8;
    static __flick_tests_end: u8;
}

/// Every registered test, in link order.
pub fn registered() -> &'static [TestCase] {
    let start = (&raw const __flick_tests_start).cast::<TestCase>();
    let end = (&raw const __flick_tests_end).cast::<TestCase>();
    let len = (end as usize - start as usize) / size_of::<TestCase>();
    // SAFETY: link.ld puts only `.flick_tests` input sections between the two symbols, and
    // `#[kernel::test]` puts exactly one `TestCase` static in each; they are 8-aligned and a
    // multiple of 8 long, so they lie back to back without padding, immutable for the run.
    unsafe { core::slice::from_raw_parts(start, len) }
}

/// Text for one field of a `--flick-list` line: no tabs or line breaks.
struct Field(&'static str);

impl core::fmt::Display for Field {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for c in self.0.chars() {
            let c = if c == '\t' || c == '\n' || c == '\r' {
                ' '
            } else {
                c
            };
            core::fmt::Write::write_char(f, c)?;
        }
        Ok(())
    }
}

fn list(tests: &[TestCase]) {
    for test in tests {
        print!("test\t{}\t", test.name());
        match test.ignore {
            None => print!("-"),
            Some("") => print!("ignored"),
            Some(reason) => print!("ignored: {}", Field(reason)),
        }
        match test.should_panic {
            ShouldPanic::No => println!("\t-"),
            ShouldPanic::Yes => println!("\tpanics"),
            ShouldPanic::WithMessage(text) => println!("\tpanics: {}", Field(text)),
        }
    }
}

/// Exit status for a command line the harness does not understand.
const USAGE: i32 = 2;

/// The entry point of a test build: lists or runs tests as the arguments say.
pub fn run(mut args: Args) -> i32 {
    let _image = args.next();
    let tests = registered();
    match (args.next(), args.next(), args.next()) {
        (Some("--flick-list"), None, None) => {
            list(tests);
            0
        }
        (Some("--flick-run"), Some(name), None) => {
            let Some(test) = tests.iter().find(|t| t.name() == name) else {
                crate::eprintln!("flick-test: no test named {name}");
                return USAGE;
            };
            (test.run)();
            // On a line of its own even after output without a final newline.
            println!("\n{PASSED_MARKER}");
            0
        }
        _ => {
            crate::eprintln!(
                "This is a guest test binary with {} tests: run it with `cargo test` in its \
                 crate, or `cargo xtask test`, which boot a VM per test. By hand: `vmm run \
                 BINARY -- --flick-list`, then `vmm run BINARY -- --flick-run PATH`.",
                tests.len()
            );
            USAGE
        }
    }
}

/// Defines the entry point of a test build (used by [`main!`](crate::main)).
#[doc(hidden)]
#[macro_export]
macro_rules! __test_entry {
    () => {
        #[unsafe(no_mangle)]
        fn __flick_app_main() -> i32 {
            $crate::testing::run($crate::args())
        }

        #[unsafe(no_mangle)]
        fn __flick_app_takes_own_snapshot() -> bool {
            false
        }

        /// Tells the runner that this image is a test binary.
        #[used]
        #[unsafe(no_mangle)]
        static __FLICK_TEST_HARNESS: u8 = 1;
    };
}
