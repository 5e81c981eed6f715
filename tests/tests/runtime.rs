//! The kernel runtime through real images: crash reports for every fault kind, the heap, the
//! clock, the environment, compute at native speed, and the boot timeline.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use tests::{image, kvm_test, status, stderr, stdout, vmm_run};

fn fault(kind: &str) -> (i32, String) {
    let out = vmm_run(&image("fault"), &[], &[kind]);
    (status(&out), stderr(&out))
}

fn assert_crash(kind: &str, expected: &[&str]) {
    let (code, err) = fault(kind);
    assert_eq!(code, 134, "{kind}: {err}");
    for text in expected {
        assert!(err.contains(text), "{kind}: expected '{text}' in:\n{err}");
    }
    assert!(err.contains("registers:"), "{kind}: {err}");
}

#[kvm_test]
fn test_fault_null_dereference_is_named() {
    assert_crash(
        "null",
        &[
            "page fault (#PF, vector 14)",
            "read from a not-present page from user mode",
            "null pointer dereference",
            "<fault::null_dereference+",
            "backtrace:",
            "<fault::main+",
        ],
    );
}

#[kvm_test]
fn test_crash_report_backtrace_names_source_lines() {
    let (code, err) = fault("null");
    assert_eq!(code, 134, "{err}");
    let source =
        std::fs::read_to_string(tests::project_root().join("images/fault/src/main.rs")).unwrap();
    let line_of = |text: &str| 1 + source.lines().position(|l| l.contains(text)).unwrap();
    let frames: Vec<&str> = err
        .lines()
        .filter(|l| l.trim_start().starts_with('#'))
        .collect();
    // The faulting line in the app (through the inlined `read_volatile`), then its caller's.
    let fault_at = format!(
        "images/fault/src/main.rs:{} (inlined core::ptr::read_volatile at library/core/src/ptr/",
        line_of("pointer.read_volatile()")
    );
    assert!(frames[0].contains("<fault::null_dereference+"), "{err}");
    assert!(frames[0].contains(&fault_at), "{fault_at} in {err}");
    let call_at = format!(
        "images/fault/src/main.rs:{}>",
        line_of("=> null_dereference()")
    );
    assert!(frames[1].contains(&call_at), "{call_at} in {err}");
    assert!(frames[2].contains("kernel/src/lib.rs:"), "{err}");
    assert!(
        !err.contains("backtrace cut"),
        "a whole chain is not cut: {err}"
    );
}

#[kvm_test]
fn test_crash_report_says_when_the_backtrace_is_cut() {
    let (code, err) = fault("stack-overflow");
    assert_eq!(code, 134, "{err}");
    assert!(err.contains("... backtrace cut at 32 frames"), "{err}");
}

#[kvm_test]
fn test_fault_write_to_code_is_a_protection_fault() {
    assert_crash(
        "write-code",
        &[
            "page fault",
            "write to a protected page from user mode",
            "<fault::write_to_code+",
        ],
    );
}

#[kvm_test]
fn test_fault_stack_overflow_hits_the_guard_page() {
    assert_crash(
        "stack-overflow",
        &[
            "page fault",
            "stack overflow: the stack's guard page",
            "<fault::recurse+",
        ],
    );
}

#[kvm_test]
fn test_fault_ud2_is_invalid_opcode() {
    assert_crash("ud2", &["invalid opcode (#UD, vector 6)", "<fault::main+"]);
}

#[kvm_test]
fn test_fault_divide_by_zero_is_divide_error() {
    assert_crash("div0", &["divide error (#DE, vector 0)", "<fault::main+"]);
}

#[kvm_test]
fn test_fault_int3_is_breakpoint() {
    assert_crash("int3", &["breakpoint (#BP, vector 3)"]);
}

#[kvm_test]
fn test_fault_privileged_instruction_is_general_protection() {
    assert_crash(
        "privileged",
        &["general protection fault (#GP, vector 13)", "<fault::main+"],
    );
}

#[kvm_test]
fn test_fault_wild_jump_is_an_instruction_fetch_fault() {
    assert_crash(
        "wild-jump",
        &[
            "page fault",
            "instruction fetch from a not-present page",
            "cr2) 0x7fff00000000",
        ],
    );
}

#[kvm_test]
fn test_fault_unknown_kind_is_a_usage_error() {
    let (code, err) = fault("gremlins");
    assert_eq!(code, 2, "{err}");
}

/// The same computation as `images/alloc`, run natively.
fn host_checksum(rounds: u64) -> (u64, usize) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut kept: Vec<Vec<u8>> = Vec::new();
    let mut map = BTreeMap::new();
    let mut sum = 0u64;
    for i in 0..rounds {
        let size = (next() % 2000 + 1) as usize;
        let block = vec![(i & 0xff) as u8; size];
        sum = sum
            .wrapping_mul(31)
            .wrapping_add(block.iter().map(|&b| u64::from(b)).sum::<u64>());
        if next() % 3 == 0 {
            kept.push(block);
        }
        if kept.len() > 100 {
            let victim = (next() % kept.len() as u64) as usize;
            kept.swap_remove(victim);
        }
        map.insert(next() % 5000, i);
    }
    for (key, value) in &map {
        sum = sum.wrapping_mul(1_000_003) ^ (key * 31 + value);
    }
    (sum, map.len())
}

#[kvm_test]
fn test_alloc_checksum_matches_host() {
    let out = vmm_run(&image("alloc"), &[], &[]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let (sum, entries) = host_checksum(20_000);
    let text = stdout(&out);
    assert!(text.contains(&format!("checksum {sum}\n")), "{text}");
    assert!(text.contains(&format!("entries {entries}\n")), "{text}");
}

#[kvm_test]
fn test_alloc_out_of_memory_reports_and_exits_134() {
    let out = vmm_run(&image("alloc"), &["--mem", "8M"], &["oom"]);
    let err = stderr(&out);
    assert_eq!(status(&out), 134, "{err}");
    assert!(
        err.contains("out of memory: asked for 1048576 bytes"),
        "{err}"
    );
    assert!(err.contains("heap bytes free"), "{err}");
}

#[kvm_test]
fn test_sha256_digest_matches_host() {
    let mib = 8u64;
    let out = vmm_run(&image("sha256"), &[], &[&mib.to_string()]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let block: Vec<u8> = (0..251 * 256).map(|i| (i % 251) as u8).collect();
    let mut hasher = Sha256::new();
    let mut left = (mib * 1024 * 1024) as usize;
    while left > 0 {
        let n = left.min(block.len());
        hasher.update(&block[..n]);
        left -= n;
    }
    let expected: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(expected.as_str()));
    let timing = lines.next().unwrap_or_default();
    assert!(
        timing.starts_with("8 MiB in ") && timing.ends_with(" ns"),
        "{timing}"
    );
}

#[kvm_test]
fn test_clock_sleep_and_wall_time_are_sane() {
    let out = vmm_run(&image("clock"), &[], &[]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let number = |prefix: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no '{prefix}' in {text}"));
        line[prefix.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let slept_us = number("slept ");
    assert!(
        (45_000..5_000_000).contains(&slept_us),
        "slept {slept_us} us"
    );
    // The wall clock moves with the TSC from the boot info's pair (a boot TSC that is not the
    // guest's own, as the host's counter is not on hardware KVM, would freeze it).
    let wall_us = number("wall clock advanced ");
    assert!(
        (45_000..5_000_000).contains(&wall_us),
        "the wall clock advanced {wall_us} us over a 50 ms sleep"
    );
    let guest_unix = number("unix time ");
    let host_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        guest_unix.abs_diff(host_unix) < 60,
        "guest {guest_unix} host {host_unix}"
    );
    assert!(number("tsc ") > 0);
}

#[kvm_test]
fn test_clock_sleep_respects_timeout() {
    let out = vmm_run(&image("clock"), &["--timeout", "20ms"], &[]);
    assert_eq!(status(&out), 124, "{}", stderr(&out));
}

#[kvm_test]
fn test_env_reaches_the_app() {
    let out = vmm_run(
        &image("hello"),
        &["--env", "GREETING=hi", "--env", "EMPTY="],
        &["arg"],
    );
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "Hello from a unikernel!\narg\nGREETING=hi\nEMPTY=\n"
    );
}

#[test]
fn test_env_without_equals_is_refused() {
    let out = vmm_run(&image("hello"), &["--env", "NOVALUE"], &[]);
    assert_eq!(status(&out), 125);
    assert!(stderr(&out).contains("KEY=VALUE"), "{}", stderr(&out));
}

#[kvm_test]
fn test_timeline_json_counts_at_most_three_exits_for_hello() {
    let out = vmm_run(&image("hello"), &["--timeline=json"], &[]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let err = stderr(&out);
    let json = err.lines().last().unwrap_or_default();
    assert!(json.starts_with("{\"phases\":["), "{json}");
    let total: u64 = json
        .split("\"total\":")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(total <= 3, "hello took {total} exits: {json}");
    for phase in [
        "open /dev/kvm",
        "create VM",
        "first KVM_RUN",
        "guest entered main",
        "guest exit",
        "VM teardown",
    ] {
        assert!(json.contains(phase), "missing phase {phase}: {json}");
    }
    assert!(json.contains("\"console_bytes\":24"), "{json}");
}

#[kvm_test]
fn test_timeline_text_names_the_hypervisor() {
    let out = vmm_run(&image("hello"), &["--timeline"], &[]);
    let err = stderr(&out);
    assert!(err.contains("hypervisor: "), "{err}");
    assert!(err.contains("VM exits: 3"), "{err}");
}

#[kvm_test]
fn test_boot_info_asks_for_milestones_only_when_measuring() {
    let kvm = vmm::vm::open_kvm().unwrap();
    let target = vmm::Target::open(&image("hello")).unwrap();
    for milestones in [false, true] {
        let config = vmm::VmConfig {
            milestones,
            ..vmm::VmConfig::default()
        };
        let vm = vmm::launch::build(&kvm, &target, &config, Default::default()).unwrap();
        let info: abi::BootInfo = vm
            .ram()
            .read_obj(vmm::arch::layout::BOOT_INFO_ADDR)
            .unwrap();
        assert_eq!(
            info.flags & abi::boot_flags::MILESTONES != 0,
            milestones,
            "flags {:#x}",
            info.flags
        );
    }
}
