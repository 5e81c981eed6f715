//! The `flick-runtime` command line without containers: what needs no KVM and no daemon.
//! (Containers and bad bundles are tested with the real daemons in `tests/tests/oci.rs`,
//! which runs the binary built for these tests.)

use std::process::{Command, Output};

fn runtime(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flick-runtime"))
        .args(args)
        .output()
        .expect("cannot run flick-runtime")
}

fn scratch_root(test: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("flick-runtime-cli-{test}-{}", std::process::id()))
}

#[test]
fn test_features_prints_the_features_document() {
    let out = runtime(&["features"]);
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ociVersionMin"], "1.0.0");
    assert_eq!(doc["linux"]["cgroup"]["v1"], true);
}

#[test]
fn test_state_unknown_id_is_one_error_line() {
    let root = scratch_root("state");
    let out = runtime(&["--root", root.to_str().unwrap(), "state", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr, "flick-runtime: container \"nope\" does not exist\n");
}

#[test]
fn test_delete_bad_id_is_refused() {
    let root = scratch_root("badid");
    let out = runtime(&["--root", root.to_str().unwrap(), "delete", "../etc"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid container id"));
}

#[test]
fn test_exec_is_refused_with_a_reason() {
    let out = runtime(&["exec", "some-id", "sh"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'exec' is not supported"));
}

#[test]
fn test_error_goes_to_the_json_log_for_the_shim() {
    let root = scratch_root("log");
    std::fs::create_dir_all(&root).unwrap();
    let log = root.join("log.json");
    let out = runtime(&[
        "--root",
        root.to_str().unwrap(),
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "kill",
        "nope",
        "KILL",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&log).unwrap().trim()).unwrap();
    assert_eq!(line["level"], "error");
    assert_eq!(line["msg"], "container \"nope\" does not exist");
    std::fs::remove_dir_all(root).unwrap();
}
