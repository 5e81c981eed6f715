//! The panic handler: flushes stdout, prints `panicked at FILE:LINE:COL: MESSAGE` on stderr
//! and exits with status 101.

use core::panic::PanicInfo;

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    crate::console::flush();
    match info.location() {
        Some(loc) => crate::eprintln!(
            "panicked at {}:{}:{}: {}",
            loc.file(),
            loc.line(),
            loc.column(),
            info.message()
        ),
        None => crate::eprintln!("panicked: {}", info.message()),
    }
    crate::hypercall::exit(abi::exit_status::PANIC)
}

#[cfg(test)]
mod tests {
    #[kernel::test]
    #[should_panic(expected = "deliberate panic 42")]
    fn test_panic_message_and_status_reach_the_runner() {
        let value = 42;
        panic!("deliberate panic {value}");
    }
}
