//! Hostile guests: each tiny guest tries one thing against the VMM. For each, the VMM stops
//! (or survives) with a clear report and status 124 or 134: never a panic, never a hang, and
//! output stays bounded.

use abi::port;
use tests::elf::{CODE_ADDR, ElfBuilder};
use tests::{asm, kvm_test, status, stderr, vmm_run, write_scratch};

struct Outcome {
    status: i32,
    stdout: Vec<u8>,
    stderr: String,
}

fn boot(name: &str, code: &[u8], flags: &[&str]) -> Outcome {
    let path = write_scratch("hostile", name, &ElfBuilder::guest(code).build());
    let mut all_flags = vec!["--timeout", "20s"];
    all_flags.extend_from_slice(flags);
    let started = std::time::Instant::now();
    let out = vmm_run(&path, &all_flags, &[]);
    assert!(started.elapsed().as_secs() < 30, "{name}: the VMM hung");
    let outcome = Outcome {
        status: status(&out),
        stdout: out.stdout.clone(),
        stderr: stderr(&out),
    };
    assert!(
        !outcome.stderr.contains("panicked"),
        "{name}: the VMM panicked: {}",
        outcome.stderr
    );
    outcome
}

fn assert_stopped(name: &str, code: &[u8], expected: &str) {
    let out = boot(name, code, &[]);
    assert_eq!(out.status, 134, "{name}: {}", out.stderr);
    assert!(
        out.stderr.contains(expected),
        "{name}: expected '{expected}' in:\n{}",
        out.stderr
    );
}

/// `sub rsp, 16` and a `ConsoleWrite { buf, len, stream }` at `[rsp + at]`.
fn console_struct_on_stack(at: u8, buf: i32, len: u32, stream: u32) -> Vec<u8> {
    let mut code = vec![0x48, 0x83, 0xec, 0x20]; // sub rsp, 32
    code.extend([0x48, 0xc7, 0x44, 0x24, at]); // mov qword [rsp+at], imm32 (sign-extended)
    code.extend(buf.to_le_bytes());
    code.extend([0xc7, 0x44, 0x24, at + 8]); // mov dword [rsp+at+8], len
    code.extend(len.to_le_bytes());
    code.extend([0xc7, 0x44, 0x24, at + 12]); // mov dword [rsp+at+12], stream
    code.extend(stream.to_le_bytes());
    code.extend([0x8d, 0x44, 0x24, at]); // lea eax, [rsp+at]
    code
}

fn console_call() -> Vec<u8> {
    [asm::mov_dx(port::CONSOLE_WRITE), vec![asm::OUT_DX_EAX]].concat()
}

#[kvm_test]
fn test_hostile_spray_every_port_is_stopped_at_the_first_closed_one() {
    // for port in 0..=0xffff: out dx, eax
    let code = [
        vec![0x31, 0xd2, 0xef, 0x66, 0xff, 0xc2, 0x75, 0xfb],
        asm::exit(0),
    ]
    .concat();
    assert_stopped("spray-all", &code, "general protection fault");
}

#[kvm_test]
fn test_hostile_read_every_port_is_stopped_at_the_first_closed_one() {
    // for port in 0..=0xffff: in eax, dx
    let code = [
        vec![0x31, 0xd2, 0xed, 0x66, 0xff, 0xc2, 0x75, 0xfb],
        asm::exit(0),
    ]
    .concat();
    assert_stopped("read-all", &code, "general protection fault");
}

#[kvm_test]
fn test_hostile_exit_port_takes_any_value() {
    for value in [0u32, 255, 256, 0x8000_0000, u32::MAX] {
        let out = boot("exit-values", &asm::exit(value), &[]);
        assert_eq!(out.status, (value & 0xff) as i32, "{}", out.stderr);
    }
}

#[kvm_test]
fn test_hostile_console_buffer_past_ram_is_refused() {
    let code = [
        console_struct_on_stack(0, 0x7fff_0000, 64, 1),
        console_call(),
        asm::exit(0),
    ]
    .concat();
    let out = boot("buffer-past-ram", &code, &[]);
    assert_eq!(out.status, 134, "{}", out.stderr);
    assert!(
        out.stderr.contains("bad hypercall: console write: buffer"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());
}

#[kvm_test]
fn test_hostile_console_length_that_wraps_is_refused() {
    let code = [
        console_struct_on_stack(0, -16, 64, 1),
        console_call(),
        asm::exit(0),
    ]
    .concat();
    let out = boot("wrapping-length", &code, &[]);
    assert_eq!(out.status, 134, "{}", out.stderr);
    assert!(out.stderr.contains("wraps around"), "{}", out.stderr);
}

#[kvm_test]
fn test_hostile_console_overlong_length_is_refused() {
    let code = [
        console_struct_on_stack(0, CODE_ADDR as i32, u32::MAX, 1),
        console_call(),
        asm::exit(0),
    ]
    .concat();
    let out = boot("overlong", &code, &[]);
    assert_eq!(out.status, 134, "{}", out.stderr);
    assert!(out.stderr.contains("exceeds the limit"), "{}", out.stderr);
}

#[kvm_test]
fn test_hostile_console_unknown_stream_is_refused() {
    let code = [
        console_struct_on_stack(0, CODE_ADDR as i32, 4, 99),
        console_call(),
        asm::exit(0),
    ]
    .concat();
    let out = boot("bad-stream", &code, &[]);
    assert_eq!(out.status, 134, "{}", out.stderr);
    assert!(out.stderr.contains("unknown stream 99"), "{}", out.stderr);
}

#[kvm_test]
fn test_hostile_unaligned_overlapping_struct_is_served() {
    // The struct sits at an odd address and its buffer is the struct itself: both are fine,
    // the VMM copies the struct before reading the buffer.
    let mut code = vec![0x48, 0x83, 0xec, 0x20, 0x48, 0x8d, 0x44, 0x24, 0x01]; // sub rsp, 32; lea rax, [rsp+1]
    code.extend([0x48, 0x89, 0x44, 0x24, 0x01]); // mov [rsp+1], rax: buf = the struct itself
    code.extend([0xc7, 0x44, 0x24, 0x09, 16, 0, 0, 0]); // len = 16
    code.extend([0xc7, 0x44, 0x24, 0x0d, 1, 0, 0, 0]); // stream = stdout
    code.extend(console_call());
    code.extend(asm::exit(7));
    let out = boot("unaligned-overlap", &code, &[]);
    assert_eq!(out.status, 7, "{}", out.stderr);
    assert_eq!(out.stdout.len(), 16);
}

#[kvm_test]
fn test_hostile_write_to_own_code_faults() {
    let mut code = vec![0xc6, 0x04, 0x25]; // mov byte [CODE_ADDR], 0x90
    code.extend((CODE_ADDR as u32).to_le_bytes());
    code.push(0x90);
    assert_stopped(
        "write-code",
        &code,
        "write to a protected page from user mode",
    );
}

#[kvm_test]
fn test_hostile_write_to_page_tables_faults() {
    let code = [0xc6, 0x04, 0x25, 0x00, 0x80, 0x00, 0x00, 0x41]; // mov byte [0x8000], 'A'
    assert_stopped(
        "write-page-tables",
        &code,
        "write to a not-present page from user mode",
    );
}

#[kvm_test]
fn test_hostile_write_to_idt_faults() {
    let mut code = vec![0xc6, 0x04, 0x25]; // mov byte [IDT], 'A'
    code.extend((vmm::arch::layout::IDT_ADDR as u32).to_le_bytes());
    code.push(0x41);
    assert_stopped(
        "write-idt",
        &code,
        "write to a protected page from user mode",
    );
}

#[kvm_test]
fn test_hostile_write_to_boot_info_faults() {
    let code = [0xc6, 0x04, 0x25, 0x00, 0x00, 0x03, 0x00, 0x41]; // mov byte [0x30000], 'A'
    assert_stopped(
        "write-boot-info",
        &code,
        "write to a protected page from user mode",
    );
}

#[kvm_test]
fn test_hostile_execute_data_faults() {
    // lea rax, [rsp - 8]; jmp rax: the stack is not executable
    let code = [0x48, 0x8d, 0x44, 0x24, 0xf8, 0xff, 0xe0];
    assert_stopped("exec-stack", &code, "instruction fetch from");
}

#[kvm_test]
fn test_hostile_stack_overflow_hits_the_guard_page() {
    let code = [0x50, 0xeb, 0xfd]; // loop: push rax
    assert_stopped(
        "push-forever",
        &code,
        "stack overflow: the stack's guard page",
    );
}

#[kvm_test]
fn test_hostile_wild_jumps_fault() {
    // mov rax, imm64; jmp rax
    for target in [
        0u64,
        0x8000,
        0x7fff_0000_0000,
        0xffff_8000_0000_0000,
        0x1234_5678_9abc_def0,
    ] {
        let mut code = vec![0x48, 0xb8];
        code.extend(target.to_le_bytes());
        code.extend([0xff, 0xe0]);
        let out = boot("wild-jump", &code, &[]);
        assert_eq!(out.status, 134, "{target:#x}: {}", out.stderr);
        assert!(
            out.stderr.contains("guest crashed"),
            "{target:#x}: {}",
            out.stderr
        );
    }
}

#[kvm_test]
fn test_hostile_privileged_instructions_fault() {
    let attempts: [(&str, &[u8]); 7] = [
        ("cli", &[0xfa]),
        ("hlt", &[0xf4]),
        ("lgdt", &[0x0f, 0x01, 0x14, 0x25, 0, 0, 0, 0]),
        ("mov cr3", &[0x0f, 0x22, 0xd8]),
        ("wrmsr", &[0x0f, 0x30]),
        ("rdmsr", &[0x0f, 0x32]),
        ("in 0x60", &[0xe4, 0x60]),
    ];
    for (name, code) in attempts {
        let out = boot("privileged", code, &[]);
        assert_eq!(out.status, 134, "{name}: {}", out.stderr);
        assert!(
            out.stderr.contains("general protection fault"),
            "{name}: {}",
            out.stderr
        );
    }
}

#[kvm_test]
fn test_hostile_infinite_loop_is_stopped_by_timeout() {
    let path = write_scratch("hostile", "spin", &ElfBuilder::guest(&asm::SPIN).build());
    let out = vmm_run(&path, &["--timeout", "200ms"], &[]);
    assert_eq!(status(&out), 124, "{}", stderr(&out));
}

#[kvm_test]
fn test_hostile_endless_output_is_bounded() {
    // Print the first 64 KiB of RAM above the image, forever.
    let mut code = console_struct_on_stack(0, CODE_ADDR as i32, 65536, 1);
    let top = code.len();
    code.extend(console_call());
    let back = top as i64 - (code.len() as i64 + 2);
    code.extend([0xeb, back as i8 as u8]); // jmp back to the call
    let out = boot("spam", &code, &["--max-output", "1M"]);
    assert_eq!(out.status, 134, "{}", out.stderr);
    assert!(
        out.stderr.contains("more than --max-output 1 MiB"),
        "{}",
        out.stderr
    );
    assert_eq!(
        out.stdout.len(),
        1 << 20,
        "output stops exactly at the limit"
    );
}

#[kvm_test]
fn test_hostile_endless_com1_output_is_bounded() {
    // mov dx, COM1; loop: out dx, al
    let code = [asm::mov_dx(port::COM1), vec![0xb0, b'x', 0xee, 0xeb, 0xfd]].concat();
    let out = boot("com1-spam", &code, &["--max-output", "64K"]);
    assert_eq!(out.status, 134, "{}", out.stderr);
    assert!(out.stdout.len() <= 64 << 10);
}

#[kvm_test]
fn test_hostile_malformed_sleep_is_refused() {
    let code = [asm::mov_dx(port::SLEEP), vec![0xee], asm::exit(0)].concat(); // out dx, al
    let out = boot("narrow-sleep", &code, &[]);
    assert_eq!(out.status, 134, "{}", out.stderr);
    assert!(
        out.stderr.contains("takes a 32-bit write"),
        "{}",
        out.stderr
    );
}

#[kvm_test]
fn test_hostile_output_nobody_reads_cannot_outlast_the_timeout() {
    // Endless output into a pipe that is never read: the VMM blocks in write(2) once the pipe
    // is full; `--timeout` must still stop the guest.
    let mut code = console_struct_on_stack(0, CODE_ADDR as i32, 65536, 1);
    let top = code.len();
    code.extend(console_call());
    let back = top as i64 - (code.len() as i64 + 2);
    code.extend([0xeb, back as i8 as u8]);
    let image = tests::write_scratch(
        "hostile-unread",
        "unread",
        &ElfBuilder::guest(&code).build(),
    );
    let started = std::time::Instant::now();
    let mut child = std::process::Command::new(tests::vmm_bin())
        .args(["run", image.to_str().unwrap(), "--timeout", "500ms"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let unread = child.stdout.take(); // held open, never read
    let deadline = started + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the VMM is still blocked writing 20 s after a 500 ms --timeout");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    drop(unread);
    assert_eq!(status.code(), Some(124), "{status:?}");
}
