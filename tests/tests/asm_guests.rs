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
    // mov rax, [0x2000]: the VMM's stub page is supervisor-only.
    let code = vec![0x48, 0x8b, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00];
    let out = boot("stubs", ElfBuilder::guest(&code), &[]);
    let err = stderr(&out);
    assert_eq!(status(&out), 134, "{err}");
    assert!(
        err.contains("read from a protected page from user mode"),
        "{err}"
    );
}

#[kvm_test]
fn test_guest_image_stub_table_never_runs_at_ring0() {
    // A hostile image puts its own "#UD stub" where ABI version 3 images kept theirs: it
    // would clear CR0.WP and exit with 77 from ring 0. The VMM's own stubs must report the
    // #UD instead; nothing of the image runs at ring 0.
    let mut page = asm::exception_stubs();
    let payload = [
        0x0f, 0x20, 0xc0, // mov rax, cr0
        0x48, 0x25, 0xff, 0xff, 0xfe, 0xff, // and rax, ~WP
        0x0f, 0x22, 0xc0, // mov cr0, rax
    ];
    let evil = [&payload[..], &asm::exit(77)].concat();
    page[6 * 16..6 * 16 + evil.len().min(16)].copy_from_slice(&evil[..evil.len().min(16)]);
    page.resize(0x800, 0xcc);
    page.extend(evil);
    let out = boot(
        "evilstub",
        ElfBuilder::guest_with_first_page(page, &asm::UD2),
        &[],
    );
    let err = stderr(&out);
    assert_eq!(status(&out), 134, "{err}");
    assert!(err.contains("invalid opcode (#UD, vector 6)"), "{err}");
    assert!(err.contains(&format!("at rip {CODE_ADDR:#x}")), "{err}");
}

#[kvm_test]
fn test_guest_crash_port_from_ring3_cannot_forge_a_report() {
    // out CRASH with vector 14 from ring 3: the port is closed to ring 3 (#GP), so no
    // "page fault" report with a frame of the guest's choosing can come out.
    let code = [
        asm::mov_eax(14),
        asm::mov_dx(port::CRASH),
        vec![asm::OUT_DX_EAX],
        asm::exit(0),
    ]
    .concat();
    let out = boot("forge", ElfBuilder::guest(&code), &[]);
    let err = stderr(&out);
    assert_eq!(status(&out), 134, "{err}");
    assert!(err.contains("general protection fault"), "{err}");
    assert!(!err.contains("page fault"), "{err}");
}

#[kvm_test]
fn test_guest_narrow_exit_write_is_a_bad_hypercall() {
    // out dx, al to the exit port: one rule for every port, 32-bit writes only.
    let code = [
        asm::mov_eax(7),
        asm::mov_dx(port::EXIT),
        vec![0xee],
        asm::exit(0),
    ]
    .concat();
    let out = boot("narrowexit", ElfBuilder::guest(&code), &[]);
    let err = stderr(&out);
    assert_eq!(status(&out), 134, "{err}");
    assert!(err.contains("takes a 32-bit write, got 1 bytes"), "{err}");
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
        // 32-bit accesses cover four ports: stop where the last one is still COM1's.
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

/// Exits 0 when the upper halves of ymm0 and zmm0 are zero, 1 when not (2 before AVX-512
/// was checked: the CPU has none). Raises #UD where the guest cannot use AVX at all.
fn vector_upper_halves_are_zero() -> Vec<u8> {
    let mut code = vec![
        0xc4, 0xe3, 0x7d, 0x39, 0xc1, 0x01, // vextracti128 xmm1, ymm0, 1
        0x66, 0x48, 0x0f, 0x7e, 0xc8, // movq rax, xmm1
        0x48, 0x85, 0xc0, // test rax, rax
        0x75, 0x1b, // jnz leak (+27)
        0x62, 0xf3, 0xfd, 0x48, 0x3b, 0xc1, 0x01, // vextracti64x4 ymm1, zmm0, 1
        0x66, 0x48, 0x0f, 0x7e, 0xc8, // movq rax, xmm1
        0x48, 0x85, 0xc0, // test rax, rax
        0x75, 0x0a, // jnz leak (+10)
    ];
    code.extend(asm::exit(0));
    code.extend(asm::exit(1)); // leak:
    code
}

/// Fills ymm0/zmm0 with ones, then exits 0.
fn vector_registers_filled() -> Vec<u8> {
    let mut code = vec![
        0x62, 0xf3, 0x7d, 0x48, 0x25, 0xc0, 0xff, // vpternlogd zmm0, zmm0, zmm0, 0xff
    ];
    code.extend(asm::exit(0));
    code
}

#[kvm_test]
fn test_guest_vector_registers_hold_nothing_of_the_host_or_other_guests() {
    let reader = write_scratch(
        "vector-leak",
        "reader",
        &ElfBuilder::guest(&vector_upper_halves_are_zero()).build(),
    );
    let writer = write_scratch(
        "vector-leak",
        "writer",
        &ElfBuilder::guest(&vector_registers_filled()).build(),
    );
    // The control: a guest that fills the registers and reads them back sees its ones.
    let both = [
        vector_registers_filled()[..7].to_vec(),
        vector_upper_halves_are_zero(),
    ]
    .concat();
    let control = write_scratch("vector-leak", "control", &ElfBuilder::guest(&both).build());
    let out = vmm_run(&control, &[], &[]);
    let err = stderr(&out);
    if status(&out) == 134 && err.contains("invalid opcode") {
        // Hardware KVM, where the VMM enables no AVX state for the guest: AVX raises #UD,
        // and there is no such state to leak.
        return;
    }
    assert_eq!(
        status(&out),
        1,
        "the reader must see a guest's own ones: {err}"
    );
    // A fresh VMM process: nothing of the host's own vector state reaches the guest.
    let out = vmm_run(&reader, &[], &[]);
    assert_eq!(
        status(&out),
        0,
        "host vector state visible to the guest: {}",
        stderr(&out)
    );
    // One worker thread boots the writer, then the reader: the second VM must not see the
    // first one's registers.
    let manifest = write_scratch(
        "vector-leak",
        "fleet.toml",
        format!(
            "[[vm]]\nimage = \"{}\"\n[[vm]]\nimage = \"{}\"\n",
            writer.display(),
            reader.display()
        )
        .as_bytes(),
    );
    let out = tests::vmm(&[
        "fleet",
        "--manifest",
        manifest.to_str().unwrap(),
        "--concurrency",
        "1",
        "--json",
    ]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    for instance in report["instances"].as_array().unwrap() {
        assert_eq!(instance["status"], 0, "{instance}");
    }
}

/// A guest that makes the poll hypercall with nothing to wait for (interest 0, 1 ms), then
/// exits 0.
fn poll_nothing_then_exit() -> Vec<u8> {
    [
        vec![0x48, 0x83, 0xec, 0x10], // sub rsp, 16: an abi::hypercall::Poll on the stack
        vec![0x48, 0xc7, 0x04, 0x24, 0x40, 0x42, 0x0f, 0x00], // timeout_ns = 1,000,000
        vec![0x48, 0xc7, 0x44, 0x24, 0x08, 0, 0, 0, 0], // interest = 0, ready = 0
        vec![0x48, 0x89, 0xe0],       // mov rax, rsp
        asm::mov_dx(port::POLL),
        vec![asm::OUT_DX_EAX],
        asm::exit(0),
    ]
    .concat()
}

#[kvm_test]
fn test_guest_poll_on_nothing_in_a_fleet_is_a_timed_wait_not_a_vmm_failure() {
    // Fleet workers have no stdin stream: their sandbox once left out ppoll, and one guest's
    // poll hypercall stopped the whole fleet with status 125.
    let path = write_scratch(
        "asm-guests",
        "poll-nothing",
        &ElfBuilder::guest(&poll_nothing_then_exit()).build(),
    );
    let out = tests::vmm(&["fleet", path.to_str().unwrap(), "--count", "2"]);
    assert_eq!(status(&out), 0, "{}{}", stdout(&out), stderr(&out));
}
