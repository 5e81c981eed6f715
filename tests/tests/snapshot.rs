//! Snapshots: `vmm snapshot` then `vmm run --from`, and every way a snapshot file can be bad.

use std::path::{Path, PathBuf};
use tests::elf::ElfBuilder;
use tests::{asm, image, kvm_test, status, stderr, stdout, vmm, vmm_run, write_scratch};

fn take_snapshot(name: &str, image_name: &str) -> PathBuf {
    let path = tests::scratch_dir("snapshot").join(name);
    tests::snapshot_image(image_name, &path);
    path
}

fn restore(path: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["run", "--from", path.to_str().unwrap(), "--"];
    all.extend_from_slice(args);
    vmm(&all)
}

#[kvm_test]
fn test_snapshot_restore_runs_with_fresh_arguments() {
    let snap = take_snapshot("hello.snap", "hello");
    let out = restore(&snap, &["one", "two"]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "Hello from a unikernel!\none\ntwo\n");
    let out = restore(&snap, &[]);
    assert_eq!(stdout(&out), "Hello from a unikernel!\n");
}

#[kvm_test]
fn test_snapshot_taken_after_app_initialisation() {
    let path = tests::scratch_dir("snapshot").join("warmup.snap");
    let made = vmm(&[
        "snapshot",
        image("warmup").to_str().unwrap(),
        "-o",
        path.to_str().unwrap(),
    ]);
    assert_eq!(status(&made), 0, "{}", stderr(&made));
    assert_eq!(
        stdout(&made),
        "initialised 17984 primes\n",
        "initialisation runs once, at snapshot time"
    );
    let first = restore(&path, &["a"]);
    let second = restore(&path, &["b", "c"]);
    assert_eq!(status(&first), 0, "{}", stderr(&first));
    let (first, second) = (stdout(&first), stdout(&second));
    assert!(
        first.starts_with("largest prime 199999\nargs [\"a\"]\n"),
        "{first}"
    );
    assert!(
        second.starts_with("largest prime 199999\nargs [\"b\", \"c\"]\n"),
        "{second}"
    );
    let seed = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("seed "))
            .unwrap()
            .to_owned()
    };
    assert_ne!(
        seed(&first),
        seed(&second),
        "two restored VMs must not share their random seed"
    );
}

#[kvm_test]
fn test_snapshot_of_guest_without_snapshot_point_is_refused() {
    let raw = write_scratch("snapshot", "raw", &ElfBuilder::guest(&asm::exit(3)).build());
    let out_path = tests::scratch_dir("snapshot").join("raw.snap");
    let out = vmm(&[
        "snapshot",
        raw.to_str().unwrap(),
        "-o",
        out_path.to_str().unwrap(),
    ]);
    assert_eq!(status(&out), 125, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("stopped before its snapshot point (it exited with 3)"),
        "{}",
        stderr(&out)
    );
}

fn assert_refused(name: &str, bytes: &[u8], expected: &str) {
    let path = write_scratch("snapshot-bad", name, bytes);
    let out = restore(&path, &[]);
    let err = stderr(&out);
    assert_eq!(status(&out), 125, "{name}: {err}");
    assert_eq!(err.lines().count(), 1, "{name}: one line expected: {err}");
    assert!(
        err.contains(expected),
        "{name}: expected '{expected}' in {err}"
    );
}

#[kvm_test]
fn test_snapshot_damaged_files_are_refused() {
    let good = std::fs::read(take_snapshot("good.snap", "hello")).unwrap();
    assert_refused("empty", &[], "truncated");
    assert_refused("truncated", &good[..good.len() - 4096], "truncated");
    assert_refused("header-only", &good[..200], "truncated");
    let mut foreign = good.clone();
    foreign[0] = b'X';
    assert_refused("foreign", &foreign, "not a snapshot for this VMM");
    let mut version = good.clone();
    version[8] = 99;
    assert_refused("version", &version, "format version 99");
    let mut abi_version = good.clone();
    abi_version[12] = 0xee;
    assert_refused("abi", &abi_version, "ABI version");
    let mut meta = good.clone();
    meta[200] ^= 0x40;
    assert_refused("metadata", &meta, "metadata checksum mismatch");
    let mut data = good.clone();
    let last = data.len() - 100;
    data[last] ^= 1;
    assert_refused("data", &data, "data checksum mismatch");
    let mut pages = good.clone();
    pages[64..72].copy_from_slice(&u64::MAX.to_le_bytes()); // page count
    assert_refused("page-count", &pages, "pages for");
    let mut mem = good.clone();
    mem[48..56].copy_from_slice(&(1u64 << 40).to_le_bytes()); // RAM size
    assert_refused("mem", &mem, "above the maximum");
    let random: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    assert_refused("random", &random, "not a snapshot for this VMM");
}

#[test]
fn test_snapshot_missing_file_is_refused() {
    let out = restore(Path::new("/nonexistent/flick.snap"), &[]);
    assert_eq!(status(&out), 125);
    assert!(stderr(&out).contains("No such file"), "{}", stderr(&out));
}

#[kvm_test]
fn test_snapshot_restore_does_not_need_the_image() {
    let snap = take_snapshot("moved.snap", "exitcode");
    let moved = tests::scratch_dir("snapshot-moved").join("copy.snap");
    std::fs::copy(&snap, &moved).unwrap();
    let out = restore(&moved, &["9"]);
    assert_eq!(status(&out), 9, "{}", stderr(&out));
    // `vmm run FILE` tells a snapshot from an image by its first bytes, as fleet and serve do.
    let out = vmm_run(&moved, &[], &["8"]);
    assert_eq!(status(&out), 8, "{}", stderr(&out));
    // `--from` insists on a snapshot.
    let out = restore(&image("exitcode"), &[]);
    assert_eq!(status(&out), 125);
    assert!(stderr(&out).contains("not a snapshot"), "{}", stderr(&out));
}

/// An asm guest that puts a value in xmm0 and a rounding mode in MXCSR, reaches the snapshot
/// point, and after the restore exits 0 only if both survived (1 if not).
fn sse_guest() -> Vec<u8> {
    const VALUE: u64 = 0x1122_3344_5566_7788;
    let mut code = vec![0x48, 0xb8]; // mov rax, VALUE
    code.extend(VALUE.to_le_bytes());
    code.extend([0x66, 0x48, 0x0f, 0x6e, 0xc0]); // movq xmm0, rax
    code.extend([0x68, 0x80, 0x7f, 0x00, 0x00]); // push 0x7f80 (round toward zero)
    code.extend([0x0f, 0xae, 0x14, 0x24]); // ldmxcsr [rsp]
    code.extend([0x31, 0xc0]); // xor eax, eax
    code.extend(asm::mov_dx(abi::port::SNAPSHOT));
    code.push(asm::OUT_DX_EAX); // the snapshot point
    code.extend([0x66, 0x48, 0x0f, 0x7e, 0xc0]); // movq rax, xmm0
    code.extend([0x48, 0xbb]); // mov rbx, VALUE
    code.extend(VALUE.to_le_bytes());
    code.extend([0x48, 0x39, 0xd8]); // cmp rax, rbx
    code.extend([0x75, 29]); // jne fail
    code.extend([0x0f, 0xae, 0x1c, 0x24]); // stmxcsr [rsp]
    code.extend([0x8b, 0x04, 0x24]); // mov eax, [rsp]
    code.extend([0x25, 0x00, 0x60, 0x00, 0x00]); // and eax, 0x6000
    code.extend([0x3d, 0x00, 0x60, 0x00, 0x00]); // cmp eax, 0x6000
    code.extend([0x75, 10]); // jne fail
    code.extend(asm::exit(0));
    code.extend(asm::exit(1)); // fail:
    code
}

#[kvm_test]
fn test_snapshot_restore_keeps_sse_state() {
    let image = write_scratch(
        "snapshot-sse",
        "sse",
        &ElfBuilder::guest(&sse_guest()).build(),
    );
    let snap = tests::scratch_dir("snapshot-sse").join("sse.snap");
    let made = vmm(&[
        "snapshot",
        image.to_str().unwrap(),
        "-o",
        snap.to_str().unwrap(),
    ]);
    assert_eq!(status(&made), 0, "{}", stderr(&made));
    let out = restore(&snap, &[]);
    assert_eq!(
        status(&out),
        0,
        "xmm0 or MXCSR lost in the restore: {}",
        stderr(&out)
    );
}

#[kvm_test]
fn test_snapshot_restore_is_immune_to_later_file_changes() {
    // `clock` sleeps 50 ms after the restore, then runs code it has not touched yet: the
    // snapshot file is truncated meanwhile. The restored guest must not notice.
    let snap = take_snapshot("clock.snap", "clock");
    for cut in [0u64, 4096] {
        let copy = tests::scratch_dir("snapshot-truncate").join(format!("clock-{cut}.snap"));
        std::fs::copy(&snap, &copy).unwrap();
        let child = std::process::Command::new(tests::vmm_bin())
            .args(["run", "--from", copy.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let file = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
        file.set_len(cut).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(status(&out), 0, "{}", stderr(&out));
        assert!(stdout(&out).starts_with("slept "), "{}", stdout(&out));
    }
}

#[kvm_test]
fn test_snapshot_read_once_refuses_data_changed_after_validation() {
    // `vmm run --from` validates the file, then reads its pages straight into guest RAM:
    // bytes changed in between are caught by the data checksum, over what was read.
    use std::os::unix::fs::FileExt;
    let snap = take_snapshot("once.snap", "hello");
    let copy = tests::scratch_dir("snapshot-once").join("hello-changed.snap");
    std::fs::copy(&snap, &copy).unwrap();
    let target = vmm::launch::TargetFile::open(&copy)
        .unwrap()
        .load_for_one_vm()
        .unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&copy)
        .unwrap();
    let at = file.metadata().unwrap().len() - 100;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 1], at).unwrap();
    let err = vmm::launch::load_ram(&target, target.mem_size(0), false).unwrap_err();
    assert!(err.to_string().contains("data checksum mismatch"), "{err}");
    file.write_all_at(&byte, at).unwrap();
    assert!(vmm::launch::load_ram(&target, target.mem_size(0), false).is_ok());
}

#[kvm_test]
fn test_snapshot_rewrite_replaces_the_file_atomically() {
    let dir = tests::scratch_dir("snapshot-atomic");
    let path = dir.join("same.snap");
    tests::snapshot_image("hello", &path);
    let before = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
    tests::snapshot_image("exitcode", &path);
    let after = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
    assert_ne!(
        before, after,
        "a rewrite must be a new file renamed over the old one"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "same.snap")
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    let out = restore(&path, &["4"]);
    assert_eq!(status(&out), 4, "{}", stderr(&out));
}

#[kvm_test]
fn test_snapshot_with_pages_of_the_vmm_structures_is_refused() {
    // A crafted snapshot (checksums fixed up) that saves the exception-stub page: the VMM
    // never takes its own structures from a file.
    let good = std::fs::read(take_snapshot("stubs.snap", "hello")).unwrap();
    let mut bad = good.clone();
    // The page index follows the header (128 bytes), the segment records (40 bytes each), the
    // saved vCPU (4552 bytes) and the device records (see vmm/src/snapshot/format.rs).
    let u32_at = |at: usize| u32::from_le_bytes(good[at..at + 4].try_into().unwrap()) as usize;
    let index_at = 128 + u32_at(56) * 40 + 4552 + u32_at(60);
    assert_eq!(
        u64::from_le_bytes(bad[index_at..index_at + 8].try_into().unwrap()),
        0x30,
        "the first saved page is the boot info's"
    );
    bad[index_at..index_at + 8].copy_from_slice(&2u64.to_le_bytes()); // the stub page
    vmm::fuzzing::fix_snapshot_checksums(&mut bad);
    let path = write_scratch("snapshot-stubs", "evil.snap", &bad);
    let out = restore(&path, &[]);
    assert_eq!(status(&out), 125, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("VMM's own structures"),
        "{}",
        stderr(&out)
    );
}
