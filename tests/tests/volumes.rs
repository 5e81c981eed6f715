//! Volumes (`vmm run --volume HOST_DIR:GUEST_PATH[:ro]`): the `fsprobe` image does one file
//! operation per run through `kernel::fs`; hostile tests try every way out of a volume, and
//! each checks the host tree outside the volume byte for byte before and after. Tiny asm
//! guests send the volume device malformed requests.

use abi::port;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use tests::elf::{CODE_ADDR, ElfBuilder};
use tests::{asm, image, status, stderr, stdout, vmm_run, write_scratch};

/// A scratch tree: `vol/` (shared with the guest: `hello.txt`, `sub/inner.txt`) and
/// `outside/` (`secret`), which no guest may touch.
struct Tree {
    root: PathBuf,
}

impl Tree {
    fn new(test: &str) -> Self {
        let root = tests::scratch_dir("volumes").join(test);
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("vol/sub")).unwrap();
        std::fs::create_dir_all(root.join("outside")).unwrap();
        std::fs::write(root.join("vol/hello.txt"), "hello, volume").unwrap();
        std::fs::write(root.join("vol/sub/inner.txt"), "inner").unwrap();
        std::fs::write(root.join("outside/secret"), "SECRET").unwrap();
        Tree { root }
    }

    fn vol(&self) -> PathBuf {
        self.root.join("vol")
    }

    fn outside(&self) -> PathBuf {
        self.root.join("outside")
    }

    fn volume(&self, mode: &str) -> String {
        format!("{}:/d{mode}", self.vol().display())
    }

    fn symlink(&self, target: impl AsRef<Path>, name: &str) {
        std::os::unix::fs::symlink(target, self.vol().join(name)).unwrap();
    }
}

/// Every path under `dir` with its contents (files) or link target (symlinks).
fn snapshot_tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut all = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let content = if meta.file_type().is_symlink() {
                std::fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else if meta.is_dir() {
                stack.push(path.clone());
                b"<dir>".to_vec()
            } else {
                std::fs::read(&path).unwrap()
            };
            all.insert(path, content);
        }
    }
    all
}

/// Runs `fsprobe ARGS` with `volumes`; checks that the VMM neither panicked nor hung.
fn probe(volumes: &[String], args: &[&str]) -> Output {
    let mut flags = vec!["--timeout", "20s"];
    for volume in volumes {
        flags.extend(["--volume", volume.as_str()]);
    }
    let started = std::time::Instant::now();
    let out = vmm_run(&image("fsprobe"), &flags, args);
    assert!(started.elapsed().as_secs() < 30, "the VMM hung");
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    out
}

/// Runs `fsprobe ARGS` and returns its one line of answer (`ok ...` or `err KIND`).
fn answer(volumes: &[String], args: &[&str]) -> String {
    let out = probe(volumes, args);
    let code = status(&out);
    assert!(code == 0 || code == 1, "status {code}: {}", stderr(&out));
    stdout(&out).trim_end().to_owned()
}

#[tests::kvm_test]
fn test_volume_file_is_read_through_its_guest_path() {
    let tree = Tree::new("read");
    let v = [tree.volume(":ro")];
    assert_eq!(answer(&v, &["read", "/d/hello.txt"]), "ok hello, volume");
    assert_eq!(answer(&v, &["read", "/d/sub/../sub/inner.txt"]), "ok inner");
    assert_eq!(answer(&v, &["ls", "/d"]), "ok hello.txt sub/");
    assert_eq!(
        answer(&v, &["stat", "/d/hello.txt"]),
        "ok len=13 dir=false readonly=true modified=true"
    );
}

#[tests::kvm_test]
fn test_volume_read_write_operations_change_only_the_volume() {
    let tree = Tree::new("write");
    let outside = snapshot_tree(&tree.outside());
    let v = [tree.volume("")];
    assert_eq!(answer(&v, &["write", "/d/new.txt", "written"]), "ok");
    assert_eq!(answer(&v, &["append", "/d/new.txt", "+more"]), "ok");
    assert_eq!(answer(&v, &["mkdirs", "/d/a/b/c"]), "ok");
    assert_eq!(
        answer(&v, &["mv", "/d/new.txt", "/d/a/b/c/moved.txt"]),
        "ok"
    );
    assert_eq!(answer(&v, &["rm", "/d/hello.txt"]), "ok");
    assert_eq!(answer(&v, &["rmdir", "/d/sub"]), "err DirectoryNotEmpty");
    assert_eq!(
        std::fs::read_to_string(tree.vol().join("a/b/c/moved.txt")).unwrap(),
        "written+more"
    );
    assert!(!tree.vol().join("hello.txt").exists());
    assert_eq!(snapshot_tree(&tree.outside()), outside);
}

#[tests::kvm_test]
fn test_volume_path_outside_every_volume_is_not_found() {
    let tree = Tree::new("novolume");
    assert_eq!(
        answer(&[tree.volume("")], &["read", "/etc/passwd"]),
        "err NotFound"
    );
    assert_eq!(answer(&[], &["read", "/d/hello.txt"]), "err NotFound");
}

#[tests::kvm_test]
fn test_volume_dotdot_escape_is_refused() {
    let tree = Tree::new("dotdot");
    let outside = snapshot_tree(&tree.outside());
    let v = [tree.volume("")];
    for path in [
        "/d/../outside/secret",
        "/d/sub/../../outside/secret",
        "/d/..",
    ] {
        assert_eq!(answer(&v, &["read", path]), "err OutsideVolume", "{path}");
    }
    assert_eq!(
        answer(&v, &["write", "/d/../outside/planted", "x"]),
        "err OutsideVolume"
    );
    assert_eq!(
        answer(&v, &["mkdir", "/d/../outside/dir"]),
        "err OutsideVolume"
    );
    assert_eq!(snapshot_tree(&tree.outside()), outside);
}

#[tests::kvm_test]
fn test_volume_absolute_symlink_is_refused() {
    let tree = Tree::new("absolute");
    tree.symlink(tree.outside().join("secret"), "abs-file");
    tree.symlink(tree.outside(), "abs-dir");
    tree.symlink("/etc/passwd", "etc-passwd");
    let outside = snapshot_tree(&tree.outside());
    let v = [tree.volume("")];
    for path in ["/d/abs-file", "/d/abs-dir/secret", "/d/etc-passwd"] {
        assert_eq!(answer(&v, &["read", path]), "err OutsideVolume", "{path}");
    }
    assert_eq!(
        answer(&v, &["write", "/d/abs-file", "overwritten"]),
        "err OutsideVolume"
    );
    assert_eq!(
        answer(&v, &["write", "/d/abs-dir/planted", "x"]),
        "err OutsideVolume"
    );
    assert_eq!(snapshot_tree(&tree.outside()), outside);
}

#[tests::kvm_test]
fn test_volume_relative_symlink_pointing_out_is_refused() {
    let tree = Tree::new("relative");
    tree.symlink("../outside/secret", "up-file");
    tree.symlink("sub/../../outside", "up-dir");
    tree.symlink("hello.txt", "inside");
    let outside = snapshot_tree(&tree.outside());
    let v = [tree.volume("")];
    assert_eq!(answer(&v, &["read", "/d/up-file"]), "err OutsideVolume");
    assert_eq!(
        answer(&v, &["read", "/d/up-dir/secret"]),
        "err OutsideVolume"
    );
    assert_eq!(answer(&v, &["rm", "/d/up-dir/secret"]), "err OutsideVolume");
    assert_eq!(
        answer(&v, &["mv", "/d/up-dir/secret", "/d/stolen"]),
        "err OutsideVolume"
    );
    assert_eq!(
        answer(&v, &["read", "/d/inside"]),
        "ok hello, volume",
        "a symlink within the volume is followed"
    );
    assert_eq!(snapshot_tree(&tree.outside()), outside);
}

#[tests::kvm_test]
fn test_volume_proc_self_root_tricks_are_refused() {
    let tree = Tree::new("proc");
    tree.symlink("/proc/self/root/etc/passwd", "proc-root");
    tree.symlink("/proc/self/cwd", "proc-cwd");
    tree.symlink("/proc/self/fd/0", "proc-fd");
    let v = [tree.volume("")];
    for path in ["/d/proc-root", "/d/proc-cwd/README.md", "/d/proc-fd"] {
        assert_eq!(answer(&v, &["read", path]), "err OutsideVolume", "{path}");
    }
    assert_eq!(
        answer(&v, &["read", "/d/../../../../proc/self/root/etc/passwd"]),
        "err OutsideVolume"
    );
}

#[tests::kvm_test]
fn test_volume_removing_a_symlink_never_touches_its_target() {
    let tree = Tree::new("unlink");
    tree.symlink(tree.outside().join("secret"), "link");
    let outside = snapshot_tree(&tree.outside());
    assert_eq!(answer(&[tree.volume("")], &["rm", "/d/link"]), "ok");
    assert!(std::fs::symlink_metadata(tree.vol().join("link")).is_err());
    assert_eq!(snapshot_tree(&tree.outside()), outside);
}

/// Runs `flip` on a thread while `fsprobe repeat PATH 3000` reads `path`; the guest's answer.
fn race(tree: &Tree, path: &str, flip: impl Fn() + Send + 'static) -> String {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed().as_secs() < 25 {
                flip();
            }
        })
    };
    let got = answer(&[tree.volume("")], &["repeat", path, "3000"]);
    stop.store(true, Ordering::Relaxed);
    flipper.join().unwrap();
    assert!(got.starts_with("ok seen=["), "{got}");
    got
}

#[tests::kvm_test]
fn test_volume_symlink_race_never_reads_outside() {
    // The host swaps `flip` between a symlink into the volume and one pointing out, while the
    // guest reads `flip/secret` over and over: the kernel checks each lookup as it walks, so
    // the guest sees the inside file or an error, never the outside one.
    let tree = Tree::new("race-symlink");
    std::fs::create_dir(tree.vol().join("real")).unwrap();
    std::fs::write(tree.vol().join("real/secret"), "inside").unwrap();
    std::os::unix::fs::symlink("real", tree.vol().join("flip")).unwrap();
    let vol = tree.vol();
    let got = race(&tree, "/d/flip/secret", move || {
        for target in ["real", "../outside"] {
            let staged = vol.join("staged");
            let _ = std::fs::remove_file(&staged);
            std::os::unix::fs::symlink(target, &staged).unwrap();
            std::fs::rename(&staged, vol.join("flip")).unwrap();
        }
    });
    assert!(!got.contains("SECRET"), "read outside the volume: {got}");
    assert_eq!(
        std::fs::read(tree.outside().join("secret")).unwrap(),
        b"SECRET"
    );
}

#[tests::kvm_test]
fn test_volume_directory_moved_out_during_lookup_never_reads_outside() {
    // The guest opens `a/b/../../hello.txt` while the host moves `a` out of the volume and
    // back: a `..` walked from the moved directory would reach `outside/hello.txt`.
    let tree = Tree::new("race-rename");
    std::fs::create_dir_all(tree.vol().join("a/b")).unwrap();
    std::fs::write(tree.outside().join("hello.txt"), "SECRET").unwrap();
    let (inside, outside) = (tree.vol().join("a"), tree.outside().join("a"));
    let got = race(&tree, "/d/a/b/../../hello.txt", move || {
        let _ = std::fs::rename(&inside, &outside);
        let _ = std::fs::rename(&outside, &inside);
    });
    assert!(!got.contains("SECRET"), "read outside the volume: {got}");
}

#[tests::kvm_test]
fn test_volume_read_only_refuses_every_write() {
    let tree = Tree::new("readonly");
    let before = snapshot_tree(&tree.root);
    let v = [tree.volume(":ro")];
    for args in [
        &["write", "/d/hello.txt", "x"][..],
        &["write", "/d/new.txt", "x"],
        &["append", "/d/hello.txt", "x"],
        &["mkdir", "/d/dir"],
        &["rm", "/d/hello.txt"],
        &["rmdir", "/d/sub"],
        &["mv", "/d/hello.txt", "/d/moved"],
    ] {
        assert_eq!(answer(&v, args), "err ReadOnlyFilesystem", "{args:?}");
    }
    assert_eq!(snapshot_tree(&tree.root), before);
}

#[tests::kvm_test]
fn test_volume_file_growing_while_read_is_read_cleanly() {
    let tree = Tree::new("grow");
    let path = tree.vol().join("log");
    let initial: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &initial).unwrap();
    let child = Command::new(tests::vmm_bin())
        .args(["run", image("cat").to_str().unwrap(), "--timeout", "20s"])
        .args(["--volume", &tree.volume(":ro"), "--", "/d/log"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    for _ in 0..64 {
        file.write_all(&[b'+'; 64 * 1024]).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let final_bytes = std::fs::read(&path).unwrap();
    assert!(out.stdout.len() >= initial.len());
    assert_eq!(
        out.stdout[..],
        final_bytes[..out.stdout.len()],
        "a prefix of the file"
    );
}

#[tests::kvm_test]
fn test_volume_file_shrinking_while_read_ends_cleanly() {
    let tree = Tree::new("shrink");
    let path = tree.vol().join("data");
    let initial: Vec<u8> = (0..32u32 << 20).map(|i| (i % 253) as u8).collect();
    std::fs::write(&path, &initial).unwrap();
    let child = Command::new(tests::vmm_bin())
        .args(["run", image("cat").to_str().unwrap(), "--timeout", "20s"])
        .args(["--volume", &tree.volume(":ro"), "--", "/d/data"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert!(out.stdout.len() <= initial.len());
    assert_eq!(
        out.stdout[..],
        initial[..out.stdout.len()],
        "a prefix of the file"
    );
}

#[tests::kvm_test]
fn test_volume_directory_deleted_under_the_guest_gives_errors() {
    let tree = Tree::new("deleted");
    let mut child = Command::new(tests::vmm_bin())
        .args([
            "run",
            image("fsprobe").to_str().unwrap(),
            "--timeout",
            "20s",
        ])
        .args(["--volume", &tree.volume(""), "--"])
        .args(["after-stdin", "write", "/d/sub/new.txt", "x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the guest says it waits, the VMM has opened the volume: now delete it.
    let mut stderr_lines = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr_lines, &mut line).unwrap();
    assert_eq!(line, "waiting\n");
    std::fs::remove_dir_all(tree.vol()).unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(status(&out), 1, "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "err NotFound");
    assert!(!tree.vol().exists(), "nothing was recreated");
    assert_eq!(
        std::fs::read(tree.outside().join("secret")).unwrap(),
        b"SECRET"
    );
}

#[tests::kvm_test]
fn test_volume_huge_and_negative_offsets_are_errors() {
    let tree = Tree::new("offsets");
    let v = [tree.volume(":ro")];
    assert_eq!(
        answer(
            &v,
            &["readat", "/d/hello.txt", "18446744073709551615", "16"]
        ),
        "err InvalidInput"
    );
    assert_eq!(
        answer(&v, &["readat", "/d/hello.txt", "9223372036854775800", "16"]),
        "err InvalidInput"
    );
    assert_eq!(
        answer(&v, &["readat", "/d/hello.txt", "4611686018427387904", "16"]),
        "ok",
        "far but valid: nothing there"
    );
    assert_eq!(
        answer(&v, &["seek", "/d/hello.txt", "current", "-1"]),
        "err InvalidInput"
    );
    assert_eq!(
        answer(&v, &["seek", "/d/hello.txt", "end", "-6"]),
        "ok at=7 rest=volume"
    );
    assert_eq!(
        answer(&v, &["seek", "/d/hello.txt", "end", "-100"]),
        "err InvalidInput"
    );
}

#[tests::kvm_test]
fn test_volume_too_many_open_files_is_an_error_the_app_recovers_from() {
    let tree = Tree::new("many");
    let got = answer(&[tree.volume(":ro")], &["openmany", "/d/hello.txt", "1000"]);
    assert_eq!(
        got,
        format!(
            "opened {} then err TooManyOpenFiles\nok reopened",
            abi::fs::MAX_OPEN_FILES
        )
    );
}

#[test]
fn test_volume_bad_specs_are_refused_before_boot() {
    let tree = Tree::new("specs");
    for (spec, expected) in [
        ("nocolon".to_owned(), "expected HOST_DIR:GUEST_PATH"),
        (
            format!("{}:relative", tree.vol().display()),
            "must be absolute",
        ),
        (format!("{}:/d/../x", tree.vol().display()), ". or .."),
        (
            format!("{}:/d", tree.vol().join("hello.txt").display()),
            "cannot open",
        ),
        ("/nonexistent-flick:/d".to_owned(), "cannot open"),
    ] {
        let out = vmm_run(&image("fsprobe"), &["--volume", &spec], &["ls", "/d"]);
        assert_eq!(status(&out), 125, "{spec}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{spec}: {}", stderr(&out));
    }
    let twice = tree.volume("");
    let out = vmm_run(
        &image("fsprobe"),
        &["--volume", &twice, "--volume", &twice],
        &["ls", "/d"],
    );
    assert_eq!(status(&out), 125);
    assert!(stderr(&out).contains("two volumes"), "{}", stderr(&out));
}

#[tests::kvm_test]
fn test_volume_fifo_in_the_volume_is_refused_without_hanging() {
    let tree = Tree::new("fifo");
    let fifo = tree.vol().join("fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    assert_eq!(
        answer(&[tree.volume("")], &["read", "/d/fifo"]),
        "err Unsupported"
    );
}

/// A guest that sends the volume (or stdin) device the struct at the end of its code, then
/// exits 0: `code`, then `request`'s bytes.
fn device_request_guest(name: &str, port: u16, request: &[u8]) -> Output {
    // mov eax, imm32; mov dx, port; out dx, eax; exit(0): 5 + 4 + 1 + 10 bytes.
    let struct_addr = CODE_ADDR + 20;
    let mut code = asm::mov_eax(struct_addr as u32);
    code.extend(asm::mov_dx(port));
    code.push(asm::OUT_DX_EAX);
    code.extend(asm::exit(0));
    assert_eq!(code.len(), 20);
    code.extend_from_slice(request);
    let path = write_scratch("volumes", name, &ElfBuilder::guest(&code).build());
    let tree = Tree::new(&format!("{name}-tree"));
    let out = vmm_run(
        &path,
        &["--timeout", "20s", "--volume", &tree.volume("")],
        &[],
    );
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    out
}

fn fs_request(request: abi::fs::FsRequest) -> Vec<u8> {
    let fields: [u64; 9] = [
        u64::from(request.op) | u64::from(request.handle) << 32,
        u64::from(request.flags) | u64::from(request.errno) << 32,
        request.offset,
        request.buf,
        request.len,
        request.path,
        u64::from(request.path_len) | u64::from(request.path2_len) << 32,
        request.path2,
        request.result,
    ];
    fields.iter().flat_map(|f| f.to_le_bytes()).collect()
}

fn assert_bad_request(out: &Output, what: &str) {
    assert_eq!(status(out), 134, "{what}: {}", stderr(out));
    assert!(
        stderr(out).contains("bad hypercall"),
        "{what}: {}",
        stderr(out)
    );
}

#[tests::kvm_test]
fn test_hostile_fs_transfer_over_the_limit_stops_the_guest() {
    let request = fs_request(abi::fs::FsRequest {
        op: abi::fs::op::READ,
        buf: 0x30_0000,
        len: abi::MAX_TRANSFER + 1,
        ..Default::default()
    });
    let out = device_request_guest("fs-too-long", port::FS, &request);
    assert_bad_request(&out, "transfer over 1 MiB");
    assert!(stderr(&out).contains("volumes"), "{}", stderr(&out));
}

#[tests::kvm_test]
fn test_hostile_fs_buffer_outside_ram_stops_the_guest() {
    let request = fs_request(abi::fs::FsRequest {
        op: abi::fs::op::READ,
        buf: u64::MAX - 8,
        len: 64,
        ..Default::default()
    });
    let out = device_request_guest("fs-buffer", port::FS, &request);
    assert_bad_request(&out, "buffer past the end of RAM");
}

#[tests::kvm_test]
fn test_hostile_fs_path_outside_ram_stops_the_guest() {
    let request = fs_request(abi::fs::FsRequest {
        op: abi::fs::op::OPEN,
        flags: abi::fs::open_flags::READ,
        path: 1 << 40,
        path_len: 16,
        ..Default::default()
    });
    let out = device_request_guest("fs-path", port::FS, &request);
    assert_bad_request(&out, "path outside RAM");
}

#[tests::kvm_test]
fn test_hostile_fs_unknown_operation_stops_the_guest() {
    let request = fs_request(abi::fs::FsRequest {
        op: 0xdead,
        ..Default::default()
    });
    let out = device_request_guest("fs-op", port::FS, &request);
    assert_bad_request(&out, "unknown operation");
}

#[tests::kvm_test]
fn test_hostile_fs_huge_path_length_is_an_error_not_a_read() {
    // A 4 GiB path length is refused before anything is read; the guest goes on to exit 0.
    let request = fs_request(abi::fs::FsRequest {
        op: abi::fs::op::OPEN,
        flags: abi::fs::open_flags::READ,
        path: 0x30_0000,
        path_len: u32::MAX,
        ..Default::default()
    });
    let out = device_request_guest("fs-path-len", port::FS, &request);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
}

#[tests::kvm_test]
fn test_hostile_stdin_buffer_outside_ram_stops_the_guest() {
    let mut request = (u64::MAX - 8).to_le_bytes().to_vec();
    request.extend(64u32.to_le_bytes());
    request.extend([0u8; 12]);
    let out = device_request_guest("stdin-buffer", port::STDIN, &request);
    assert_bad_request(&out, "stdin buffer past the end of RAM");
    assert!(stderr(&out).contains("stdin"), "{}", stderr(&out));
}

#[tests::kvm_test]
fn test_hostile_stdin_read_over_the_limit_stops_the_guest() {
    let mut request = 0x30_0000u64.to_le_bytes().to_vec();
    request.extend((abi::MAX_TRANSFER as u32 + 1).to_le_bytes());
    request.extend([0u8; 12]);
    let out = device_request_guest("stdin-too-long", port::STDIN, &request);
    assert_bad_request(&out, "stdin read over 1 MiB");
}
