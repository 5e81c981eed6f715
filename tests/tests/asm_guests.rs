//! KVM tests with tiny hand-assembled guests: entry state, faults, triple fault, timeout, port
//! spray. Each boots through the real `vmm` binary.

use abi::port;
use tests::elf::{CODE_ADDR, ElfBuilder};
use tests::{asm, kvm_test, status, stderr, stdout, vmm_run, write_scratch};

fn boot(name: &str, builder: ElfBuilder, flags: &[&str]) -> std::process::Output {
    let path = write_scratch("asm-guests", name, &builder.build());
    vmm_run(&path, flags, &[])
}

#[kvm_test]
fn test_guest_starts_at_cpl3() {
    // mov eax, cs; and eax, 3; exit(eax)
    let code = [vec![0x8c, 0xc8, 0x83, 0xe0, 0x03], asm::exit_with_eax()].concat();
    let out = boot("cpl", ElfBuilder::guest(&code), &[]);
    assert_eq!(status(&out), 3, "CPL must be 3; stderr: {}", stderr(&out));
}

#[kvm_test]
fn test_guest_gets_boot_info_in_rdi() {
    // mov rax, rdi; shr rax, 12; exit(eax): boot info lives at 0x30000.
    let code = [
        vec![0x48, 0x89, 0xf8, 0x48, 0xc1, 0xe8, 0x0c],
        asm::exit_with_eax(),
    ]
    .concat();
    let out = boot("rdi", ElfBuilder::guest(&code), &[]);
    assert_eq!(status(&out), 0x30, "{}", stderr(&out));
}

#[kvm_test]
fn test_guest_stack_pointer_is_stack_top() {
    // mov rax, rsp; shr rax, 16; exit(eax): the stack top is 0x200000.
    let code = [
        vec![0x48, 0x89, 0xe0, 0x48, 0xc1, 0xe8, 0x10],
        asm::exit_with_eax(),
    ]
    .concat();
    let out = boot("rsp", ElfBuilder::guest(&code), &[]);
    assert_eq!(status(&out), 0x20, "{}", stderr(&out));
}

#[kvm_test]
fn test_guest_fault_reports_vector_and_rip() {
    let code = [vec![0x90, 0x90], asm::UD2.to_vec()].concat();
    let out = boot("ud2", ElfBuilder::guest(&code), &[]);
    let err = stderr(&out);
    assert_eq!(status(&out), 134, "{err}");
    assert!(err.contains("invalid opcode (#UD, vector 6)"), "{err}");
    assert!(err.contains(&format!("rip {:#x}", CODE_ADDR + 2)), "{err}");
    assert!(err.contains("user mode"), "{err}");
}

#[kvm_test]
fn test_guest_null_read_reports_page_fault_with_cr2() {
    // mov rax, [0x10]
    let code = vec![0x48, 0x8b, 0x04, 0x25, 0x10, 0x00, 0x00, 0x00];
    let out = boot("null", ElfBuilder::guest(&code), &[]);
    let err = stderr(&out);
    assert_eq!(status(&out), 134, "{err}");
    assert!(err.contains("page fault (#PF, vector 14)"), "{err}");
    assert!(err.contains("faulting address (cr2) 0x10"), "{err}");
    assert!(err.contains("null pointer dereference"), "{err}");
}

#[kvm_test]
fn test_guest_cannot_read_exception_stubs() {
    // mov rax, [0x200000]: the stub page is supervisor-only.
    let code = vec![0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00];
    let out = boot("stubs", ElfBuilder::guest(&code), &[]);
    let err = stderr(&out);
    assert_eq!(status(&out), 134, "{err}");
    assert!(
        err.contains("read from a protected page from user mode"),
        "{err}"
    );
}

#[kvm_test]
fn test_guest_triple_fault_is_reported() {
    // The #UD stub loads an empty IDT and faults again: #UD -> #GP -> #DF -> shutdown.
    let mut stubs = asm::exception_stubs();
    let broken = [0x6a, 0x00, 0x6a, 0x00, 0x0f, 0x01, 0x1c, 0x24, 0x0f, 0x0b]; // push 0; push 0; lidt [rsp]; ud2
    stubs[6 * 16..6 * 16 + broken.len()].copy_from_slice(&broken);
    let out = boot(
        "triple",
        ElfBuilder::guest_with_stubs(stubs, &asm::UD2),
        &[],
    );
    let err = stderr(&out);
    assert_eq!(status(&out), 134, "{err}");
    assert!(err.contains("triple fault"), "{err}");
}

#[kvm_test]
fn test_guest_infinite_loop_is_stopped_by_timeout() {
    let started = std::time::Instant::now();
    let out = boot(
        "spin",
        ElfBuilder::guest(&asm::SPIN),
        &["--timeout", "300ms"],
    );
    assert_eq!(status(&out), 124, "{}", stderr(&out));
    assert!(stderr(&out).contains("--timeout"), "{}", stderr(&out));
    assert!(started.elapsed().as_secs() < 20);
}

#[kvm_test]
fn test_guest_port_spray_is_survived() {
    let code = [
        // 32-bit accesses cover four ports: stop where the last one is still open.
        asm::port_spray(port::WAIT + 1, port::LAST - 2),
        asm::port_spray(port::COM1, port::COM1 + port::COM1_LEN - 3),
        asm::exit(42),
    ]
    .concat();
    let out = boot("spray", ElfBuilder::guest(&code), &["--timeout", "30s"]);
    assert_eq!(status(&out), 42, "{}", stderr(&out));
}

#[kvm_test]
fn test_guest_closed_port_faults() {
    // out 0x80, al: the I/O bitmap closes every port outside the abi range and COM1.
    let code = vec![0xe6, 0x80];
    let out = boot("port80", ElfBuilder::guest(&code), &[]);
    let err = stderr(&out);
    assert_eq!(status(&out), 134, "{err}");
    assert!(err.contains("general protection fault"), "{err}");
}

#[kvm_test]
fn test_guest_bad_hypercall_is_stopped() {
    // console write whose struct address lies past RAM
    let code = [
        asm::mov_eax(0xffff_fff0),
        asm::mov_dx(port::CONSOLE_WRITE),
        vec![asm::OUT_DX_EAX],
        asm::exit(0),
    ]
    .concat();
    let out = boot("badcall", ElfBuilder::guest(&code), &[]);
    let err = stderr(&out);
    assert_eq!(status(&out), 134, "{err}");
    assert!(err.contains("bad hypercall: console write"), "{err}");
    assert!(stdout(&out).is_empty());
}
