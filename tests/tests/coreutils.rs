//! The images `cat`, `wc`, `sha256sum` and `sort` against GNU coreutils on the same inputs:
//! the same bytes out, the same status. The inputs' directory is a volume at its own host path,
//! so that the names the programs print are the same on both sides; stdin is a pipe on both.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use tests::{image, status, stderr};

/// Input files: text with tabs, blank lines, non-ASCII bytes and a control character, one
/// without a final newline, an empty one, a binary one, and a name holding a backslash.
fn inputs(test: &str) -> PathBuf {
    let dir = tests::scratch_dir("coreutils").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let readme = std::fs::read(tests::project_root().join("README.md")).unwrap();
    std::fs::write(dir.join("readme.md"), &readme).unwrap();
    std::fs::write(
        dir.join("mixed.txt"),
        "banana\tsplit\n\napple pie\nApple\ncherry\x01 \x01\ncaf\u{e9} au lait\napple pie\n\u{b5}s\nzebra\n  lead\n",
    )
    .unwrap();
    std::fs::write(dir.join("no-newline.txt"), "b\na\tz\na\nlast line").unwrap();
    std::fs::write(dir.join("empty"), "").unwrap();
    let binary: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("binary"), binary).unwrap();
    std::fs::write(dir.join("back\\slash"), "odd name\n").unwrap();
    dir
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_owned()
}

/// The guest `name` with `dir` as a read-write volume at its own path.
fn guest(name: &str, dir: &Path, args: &[String], input: &[u8]) -> Output {
    let volume = format!("{}:{}", dir.display(), dir.display());
    let mut command = Command::new(tests::vmm_bin());
    command
        .arg("run")
        .arg(image(name))
        .args(["--timeout", "30s", "--volume", &volume, "--"])
        .args(args);
    piped(command, input)
}

/// The coreutils program `name`, in the C locale.
fn native(name: &str, args: &[String], input: &[u8]) -> Output {
    let mut command = Command::new(name);
    command.args(args).env("LC_ALL", "C");
    piped(command, input)
}

fn piped(mut command: Command, input: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// Runs both on the same arguments and input; asserts the same stdout and status.
fn same(name: &str, dir: &Path, args: &[String], input: &[u8]) {
    let ours = guest(name, dir, args, input);
    let theirs = native(name, args, input);
    assert_eq!(
        status(&ours),
        theirs.status.code().unwrap(),
        "{name} {args:?}: {}",
        stderr(&ours)
    );
    assert!(
        ours.stdout == theirs.stdout,
        "{name} {args:?}:\nours:\n{}\ncoreutils:\n{}",
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&theirs.stdout)
    );
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[tests::kvm_test]
fn test_cat_matches_coreutils_on_files_and_stdin() {
    let dir = inputs("cat");
    let stdin = b"from stdin\n".to_vec();
    same("cat", &dir, &[path(&dir, "readme.md")], &[]);
    same("cat", &dir, &[path(&dir, "binary")], &[]);
    same("cat", &dir, &[], &stdin);
    same(
        "cat",
        &dir,
        &[
            path(&dir, "no-newline.txt"),
            "-".into(),
            path(&dir, "empty"),
        ],
        &stdin,
    );
    same(
        "cat",
        &dir,
        &[path(&dir, "missing"), path(&dir, "mixed.txt")],
        &[],
    );
}

#[tests::kvm_test]
fn test_wc_matches_coreutils() {
    let dir = inputs("wc");
    let all = [
        "readme.md",
        "mixed.txt",
        "no-newline.txt",
        "empty",
        "binary",
    ];
    for name in all {
        same("wc", &dir, &[path(&dir, name)], &[]);
        same("wc", &dir, &["-l".into(), path(&dir, name)], &[]);
    }
    let every: Vec<String> = all.iter().map(|n| path(&dir, n)).collect();
    same("wc", &dir, &every, &[]);
    same(
        "wc",
        &dir,
        &[args(&["-w", "-c"]), every.clone()].concat(),
        &[],
    );
    let text = std::fs::read(dir.join("mixed.txt")).unwrap();
    same("wc", &dir, &[], &text);
    same("wc", &dir, &args(&["-c"]), &text);
    same("wc", &dir, &[path(&dir, "mixed.txt"), "-".into()], &text);
    same(
        "wc",
        &dir,
        &[path(&dir, "missing"), path(&dir, "mixed.txt")],
        &[],
    );
}

#[tests::kvm_test]
fn test_sha256sum_matches_coreutils() {
    let dir = inputs("sha256sum");
    let names = [
        "readme.md",
        "binary",
        "empty",
        "no-newline.txt",
        "back\\slash",
    ];
    let every: Vec<String> = names.iter().map(|n| path(&dir, n)).collect();
    same("sha256sum", &dir, &every, &[]);
    let binary = std::fs::read(dir.join("binary")).unwrap();
    same("sha256sum", &dir, &[], &binary);
    same(
        "sha256sum",
        &dir,
        &[path(&dir, "missing"), "-".into()],
        b"x",
    );
}

#[tests::kvm_test]
fn test_sort_matches_coreutils_to_stdout() {
    let dir = inputs("sort");
    for flags in [&[][..], &["-r"], &["-u"], &["-r", "-u"]] {
        let files = [path(&dir, "mixed.txt"), path(&dir, "no-newline.txt")];
        same("sort", &dir, &[args(flags), files.to_vec()].concat(), &[]);
    }
    let readme = std::fs::read(dir.join("readme.md")).unwrap();
    same("sort", &dir, &[], &readme);
    same("sort", &dir, &[path(&dir, "empty")], &[]);
}

#[tests::kvm_test]
fn test_sort_writes_the_same_output_file_as_coreutils() {
    let dir = inputs("sort-o");
    let theirs_path = path(&dir, "sorted-by-coreutils");
    let ours_path = path(&dir, "sorted-by-guest");
    let input = path(&dir, "readme.md");
    let theirs = native("sort", &args(&["-o", &theirs_path, &input]), &[]);
    assert!(theirs.status.success());
    let ours = guest("sort", &dir, &args(&["-o", &ours_path, &input]), &[]);
    assert_eq!(status(&ours), 0, "{}", stderr(&ours));
    assert!(ours.stdout.is_empty());
    assert_eq!(
        std::fs::read(&ours_path).unwrap(),
        std::fs::read(&theirs_path).unwrap()
    );
    // In place, as coreutils allows: the output is written after every input was read.
    let ours = guest("sort", &dir, &args(&["-r", "-o", &input, &input]), &[]);
    assert_eq!(status(&ours), 0, "{}", stderr(&ours));
    let again = native("sort", &args(&["-r", &theirs_path]), &[]);
    assert_eq!(std::fs::read(&input).unwrap(), again.stdout);
}

#[tests::kvm_test]
fn test_sort_output_to_a_read_only_volume_fails_cleanly() {
    let dir = inputs("sort-ro");
    let volume = format!("{}:/in:ro", dir.display());
    let out = tests::vmm_run(
        &image("sort"),
        &["--volume", &volume],
        &["-o", "/in/out", "/in/mixed.txt"],
    );
    assert_eq!(status(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.join("out").exists());
}
