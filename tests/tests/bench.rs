//! `cargo xtask bench`: a quick bench of our VMM alone exits 0 and writes a report that parses.
//! No timing is asserted: the machine's load decides the numbers.

use std::process::Command;
use tests::{project_root, require_kvm};

#[test]
fn test_bench_quick_only_ours_reports_ten_runs() {
    require_kvm!();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(project_root())
        .args(["xtask", "bench", "--quick", "--only", "ours"])
        .output()
        .expect("cannot run cargo xtask bench");
    assert!(
        out.status.success(),
        "cargo xtask bench failed: {}\n{}",
        tests::stdout(&out),
        tests::stderr(&out)
    );

    let path = project_root().join("target/bench/report.json");
    let text = std::fs::read_to_string(&path).expect("report.json was not written");
    let report: serde_json::Value = serde_json::from_str(&text).expect("report.json parses");
    let peers = report["peers"].as_array().expect("report.json has peers");
    let ours = peers
        .iter()
        .find(|p| p["name"] == "ours")
        .expect("report.json has an 'ours' entry");
    assert_eq!(ours["status"], "ok", "{ours}");
    assert_eq!(ours["runs"], 10, "{ours}");
    assert_eq!(ours["samples_us"].as_array().map(Vec::len), Some(10));
}
