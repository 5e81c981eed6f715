//! Exits with the code given as its first argument (0 without one).

#![no_std]
#![no_main]

use kernel::eprintln;

kernel::main!(main);

fn main(mut args: kernel::Args) -> i32 {
    exit_code(args.nth(1))
}

/// The code named by the first argument; 2, with a message, when it is not an integer.
fn exit_code(arg: Option<&str>) -> i32 {
    match arg.map(str::parse::<i32>) {
        None => 0,
        Some(Ok(code)) => code,
        Some(Err(err)) => {
            eprintln!("exitcode: the argument must be an integer: {err}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[kernel::test]
    fn test_exit_code_is_the_argument() {
        assert_eq!(exit_code(None), 0);
        assert_eq!(exit_code(Some("7")), 7);
        assert_eq!(exit_code(Some("-1")), -1);
    }

    #[kernel::test]
    fn test_exit_code_of_a_non_integer_is_2() {
        assert_eq!(exit_code(Some("seven")), 2);
    }
}
