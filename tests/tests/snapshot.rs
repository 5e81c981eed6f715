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
    pages[72..80].copy_from_slice(&u64::MAX.to_le_bytes()); // page count
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
    let out = vmm_run(&moved, &[], &[]);
    // A snapshot is not an image: `vmm run FILE` refuses it, `--from` restores it.
    assert_eq!(status(&out), 125);
    let out = restore(&moved, &["9"]);
    assert_eq!(status(&out), 9, "{}", stderr(&out));
}
