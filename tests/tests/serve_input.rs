//! `vmm run --via` with input: the client's stdin reaches the guest through the socket, and a
//! request's volumes are shared only from beneath the server's `--volume-root` directories.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use tests::serve::Server;
use tests::{image, kvm_test, status, stderr, stdout, vmm_bin};

/// `vmm serve` with `flags` on a socket in `dir`, listening.
fn start_server(dir: &Path, flags: &[&str]) -> Server {
    let socket = dir.join("flick.sock");
    let mut cmd = Command::new(vmm_bin());
    cmd.args(["serve", "--socket", socket.to_str().unwrap()])
        .args(flags)
        .stdout(Stdio::null());
    Server::spawn(cmd, &socket)
}

/// `vmm run --via SOCKET FLAGS fsprobe -- ARGS` with `input` on its stdin.
fn via(server: &Server, flags: &[&str], args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(vmm_bin())
        .args(["run", "--via", server.socket.to_str().unwrap()])
        .args(flags)
        .arg(image("fsprobe"))
        .args(["--timeout", "20s", "--"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn shared_tree(test: &str) -> PathBuf {
    let dir = tests::scratch_dir("serve-input").join(test);
    std::fs::create_dir_all(dir.join("shared/data")).unwrap();
    std::fs::create_dir_all(dir.join("private")).unwrap();
    std::fs::write(dir.join("shared/data/f"), "shared through serve").unwrap();
    std::fs::write(dir.join("private/f"), "private").unwrap();
    dir
}

#[kvm_test]
fn test_serve_via_forwards_the_clients_stdin() {
    let dir = shared_tree("stdin");
    let server = start_server(&dir, &[]);
    let out = via(&server, &[], &["stdin-lines"], b"first\nsecond\n");
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "ok lines=2 last=second\n");
}

#[kvm_test]
fn test_serve_shares_a_volume_beneath_its_root() {
    let dir = shared_tree("root");
    let root = dir.join("shared");
    let server = start_server(&dir, &["--volume-root", root.to_str().unwrap()]);
    let volume = format!("{}:/d:ro", root.join("data").display());
    let out = via(&server, &["--volume", &volume], &["read", "/d/f"], b"");
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "ok shared through serve\n");
}

#[kvm_test]
fn test_serve_refuses_volumes_outside_its_roots() {
    let dir = shared_tree("outside");
    let root = dir.join("shared");
    std::os::unix::fs::symlink(dir.join("private"), root.join("link")).unwrap();
    let with_root = start_server(&dir, &["--volume-root", root.to_str().unwrap()]);
    for host in [
        dir.join("private"),
        root.join("link"),
        root.join("../private"),
    ] {
        let volume = format!("{}:/d", host.display());
        let out = via(&with_root, &["--volume", &volume], &["read", "/d/f"], b"");
        assert_eq!(status(&out), 125, "{host:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "the guest never ran");
    }
    drop(with_root);
    let without = start_server(&dir, &[]);
    let volume = format!("{}:/d", root.join("data").display());
    let out = via(&without, &["--volume", &volume], &["read", "/d/f"], b"");
    assert_eq!(status(&out), 125, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--volume-root"),
        "says how to share: {}",
        stderr(&out)
    );
}

/// `vmm run --via SOCKET fsprobe -- stdin-lines` in one of the forms below, stdin from
/// /dev/null or piped with `input`.
fn stdin_lines(server: &Server, form: &str, input: Option<&[u8]>) -> Output {
    let socket = server.socket.to_str().unwrap().to_owned();
    let probe = image("fsprobe").to_str().unwrap().to_owned();
    let args: Vec<&str> = match form {
        // The fast path's form: parsed without clap.
        "plain" => vec!["run", "--via", &socket, &probe, "--", "stdin-lines"],
        // Flags in another order: clap's path.
        _ => vec!["run", &probe, "--via", &socket, "--", "stdin-lines"],
    };
    let mut child = Command::new(vmm_bin())
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = input {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

#[kvm_test]
fn test_serve_via_stdin_from_dev_null_is_an_empty_input_in_either_parser() {
    let dir = shared_tree("null");
    let server = start_server(&dir, &[]);
    for form in ["plain", "parsed"] {
        let out = stdin_lines(&server, form, None);
        assert_eq!(status(&out), 0, "{form}: {}", stderr(&out));
        assert_eq!(stdout(&out), "ok lines=0 last=\n", "{form}");
    }
}

#[kvm_test]
fn test_serve_via_plain_form_forwards_stdin_as_the_parsed_form_does() {
    let dir = shared_tree("plain");
    let server = start_server(&dir, &[]);
    for form in ["plain", "parsed"] {
        let out = stdin_lines(&server, form, Some(b"one\ntwo\nthree\n"));
        assert_eq!(status(&out), 0, "{form}: {}", stderr(&out));
        assert_eq!(stdout(&out), "ok lines=3 last=three\n", "{form}");
    }
}
