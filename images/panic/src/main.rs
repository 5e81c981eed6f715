//! Panics on purpose, with a message built from its arguments, after printing a line that must
//! not be lost.

#![no_std]
#![no_main]

use kernel::println;

kernel::main!(main);

fn main(args: kernel::Args) -> i32 {
    println!("about to panic");
    let count = args.len();
    panic!("deliberate panic with {count} argument(s)");
}

// Subjects for tests of the guest test runner itself (tests/tests/guest_tests.rs checks each
// verdict): two pass, one panics as it should, and those of the `failing-tests` feature fail
// on purpose, each its own way, and one is ignored.
#[cfg(test)]
mod tests {
    #[kernel::test]
    fn test_runner_reports_a_passing_test_ok() {
        kernel::println!("output of a passing test");
    }

    #[kernel::test]
    fn test_runner_reports_a_test_whose_output_lacks_a_final_newline_ok() {
        kernel::print!("no newline at the end");
    }

    #[kernel::test]
    #[should_panic(expected = "expected panic")]
    fn test_runner_counts_an_expected_panic_as_passed() {
        panic!("expected panic");
    }

    #[cfg(feature = "failing-tests")]
    #[kernel::test]
    fn test_runner_reports_a_panic_as_failed() {
        kernel::println!("output before the failure");
        let code = 7;
        assert_eq!(code, 8, "deliberate failure in a guest test");
    }

    #[cfg(feature = "failing-tests")]
    #[kernel::test]
    fn test_runner_reports_a_crash_as_failed() {
        // SAFETY: not safe at all: the null page is unmapped, so this faults on purpose.
        let value = unsafe { core::ptr::null::<u64>().read_volatile() };
        kernel::println!("unreachable {value}");
    }

    #[cfg(feature = "failing-tests")]
    #[kernel::test]
    fn test_runner_reports_an_early_exit_as_failed() {
        kernel::exit(0);
    }

    #[cfg(feature = "failing-tests")]
    #[kernel::test]
    #[should_panic(expected = "another text")]
    fn test_runner_reports_a_panic_with_the_wrong_message_as_failed() {
        panic!("a message without the expected text");
    }

    #[cfg(feature = "failing-tests")]
    #[kernel::test]
    #[ignore = "shows how an ignored test is reported"]
    fn test_runner_reports_an_ignored_test_with_its_reason() {
        panic!("an ignored test must not run");
    }
}
