//! Real images booted through the `vmm` binary, checked by output and exit status.

use tests::{image, kvm_test, status, stderr, stdout, vmm_run};

#[kvm_test]
fn test_hello_greets_and_exits_zero() {
    let out = vmm_run(&image("hello"), &[], &[]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "Hello from a unikernel!\n");
}

#[kvm_test]
fn test_hello_prints_each_argument() {
    let out = vmm_run(&image("hello"), &[], &["one", "two words", "ünïcode"]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "Hello from a unikernel!\none\ntwo words\nünïcode\n"
    );
}

#[kvm_test]
fn test_exitcode_exits_with_given_codes() {
    for code in [0, 1, 7, 42, 100, 255] {
        let out = vmm_run(&image("exitcode"), &[], &[&code.to_string()]);
        assert_eq!(status(&out), code, "{}", stderr(&out));
    }
}

#[kvm_test]
fn test_exitcode_keeps_low_eight_bits() {
    let out = vmm_run(&image("exitcode"), &[], &["258"]);
    assert_eq!(status(&out), 2);
}

#[kvm_test]
fn test_panic_exits_101_with_message_and_location() {
    let out = vmm_run(&image("panic"), &[], &["x"]);
    let err = stderr(&out);
    assert_eq!(status(&out), 101, "{err}");
    assert_eq!(
        stdout(&out),
        "about to panic\n",
        "output before the panic must not be lost"
    );
    assert!(err.contains("panicked at panic/src/main.rs:"), "{err}");
    assert!(err.contains("deliberate panic with 2 argument(s)"), "{err}");
}

#[kvm_test]
fn test_hello_runs_with_large_memory() {
    let out = vmm_run(&image("hello"), &["--mem", "2G"], &[]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
}

#[kvm_test]
fn test_serial_driver_initialises_and_prints_through_com1() {
    let out = vmm_run(&image("serial"), &["--timeline=json"], &["a", "b"]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "hello over COM1\na\nb\nlast line without newline"
    );
    // Byte by byte in, a line at a time out: the console gets the UART's bytes in few writes.
    let timeline = stderr(&out);
    assert!(timeline.contains("\"0x3f8\":"), "{timeline}");
}
