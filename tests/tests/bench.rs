//! `cargo xtask bench`: a quick bench of our VMM alone (and of a warm request through
//! `vmm serve`) exits 0 and writes a report that parses; so does a small `--fleet` run.
//! No timing is asserted: the machine's load decides the numbers.

use std::process::Command;
use std::sync::Mutex;
use tests::{kvm_test, project_root};

/// Both benches rebuild and copy the VMM and images: never run them at once.
static BENCH: Mutex<()> = Mutex::new(());

/// Runs `cargo xtask bench ARGS` and returns the JSON report `report` it wrote.
fn bench(args: &[&str], report: &str) -> serde_json::Value {
    let _one_at_a_time = BENCH.lock().unwrap_or_else(|e| e.into_inner());
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(project_root())
        .args(["xtask", "bench"])
        .args(args)
        .output()
        .expect("cannot run cargo xtask bench");
    assert!(
        out.status.success(),
        "cargo xtask bench failed: {}\n{}",
        tests::stdout(&out),
        tests::stderr(&out)
    );
    let path = project_root().join("target/bench").join(report);
    let text = std::fs::read_to_string(&path).expect("the report was not written");
    serde_json::from_str(&text).expect("the report parses")
}

#[kvm_test]
fn test_bench_quick_only_ours_reports_ten_runs() {
    let report = bench(&["--quick", "--only", "ours,serve"], "report.json");
    let peers = report["peers"].as_array().expect("report.json has peers");
    for name in ["ours", "serve"] {
        let peer = peers
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("report.json has no '{name}' entry"));
        assert_eq!(peer["status"], "ok", "{peer}");
        assert_eq!(peer["runs"], 10, "{peer}");
        assert_eq!(peer["samples_us"].as_array().map(Vec::len), Some(10));
    }
}

#[kvm_test]
fn test_bench_fleet_only_ours_reports_its_launch_rate() {
    let report = bench(&["--fleet", "10", "--only", "ours"], "fleet.json");
    let rows = report["rows"].as_array().expect("fleet.json has rows");
    assert_eq!(rows.len(), 1, "{report}");
    let ours = &rows[0];
    assert_eq!(ours["name"], "ours");
    assert_eq!(ours["status"], "ok", "{ours}");
    assert_eq!(ours["count"], 10);
    assert!(
        ours["launch_rate"].as_f64().is_some_and(|r| r > 0.0),
        "{ours}"
    );
    assert!(project_root().join("target/bench/fleet.svg").is_file());
}
