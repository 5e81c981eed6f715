//! `cargo xtask bench`: a quick bench of our VMM, the floor and the warm rows exits 0 and
//! writes a report that parses, with both clocks for ours and its teardown helper reaped; so
//! does a small `--fleet` run. Each writes into its own directory under the test target dir,
//! never into the user's `target/bench`. No timing is asserted: the machine's load decides the
//! numbers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use tests::{kvm_test, project_root};

/// Both benches rebuild and copy the VMM and images: never run them at once.
static BENCH: Mutex<()> = Mutex::new(());

/// A fresh output directory for one bench run.
fn out_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Runs `cargo xtask bench ARGS --out OUT` and returns the JSON report `report` it wrote.
fn bench(args: &[&str], out: &Path, report: &str) -> serde_json::Value {
    let _one_at_a_time = BENCH.lock().unwrap_or_else(|e| e.into_inner());
    let user_report = project_root().join("target/bench").join(report);
    let before = std::fs::metadata(&user_report)
        .and_then(|m| m.modified())
        .ok();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(project_root())
        .args(["xtask", "bench"])
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .expect("cannot run cargo xtask bench");
    assert!(
        output.status.success(),
        "cargo xtask bench failed: {}\n{}",
        tests::stdout(&output),
        tests::stderr(&output)
    );
    let after = std::fs::metadata(&user_report)
        .and_then(|m| m.modified())
        .ok();
    assert_eq!(before, after, "the bench touched {}", user_report.display());
    let text = std::fs::read_to_string(out.join(report)).expect("the report was not written");
    serde_json::from_str(&text).expect("the report parses")
}

fn peer<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["peers"]
        .as_array()
        .expect("report.json has peers")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("report.json has no '{name}' entry"))
}

fn numbers(value: &serde_json::Value) -> Vec<f64> {
    let array = value.as_array().expect("an array");
    array
        .iter()
        .map(|v| v.as_f64().expect("a number"))
        .collect()
}

#[kvm_test]
fn test_bench_quick_reports_ten_verified_runs_per_peer() {
    let out = out_dir("quick");
    let only = "ours,floor,serve,native-pool,back-to-back";
    let report = bench(&["--quick", "--only", only], &out, "report.json");
    for name in ["ours", "floor", "serve", "native-pool"] {
        let peer = peer(&report, name);
        assert_eq!(peer["status"], "ok", "{peer}");
        assert_eq!(peer["runs"], 10, "{peer}");
        assert_eq!(peer["samples_us"].as_array().map(Vec::len), Some(10));
    }
    assert_eq!(peer(&report, "serve")["like"], "native-pool");
    for timeline in ["timeline", "floor_timeline"] {
        let phases = report[timeline]["phases"].as_array();
        assert!(
            phases.is_some_and(|p| p.len() > 5),
            "{timeline}: {}",
            report[timeline]
        );
    }
    assert!(out.join("report.md").is_file() && out.join("boot.svg").is_file());
}

#[kvm_test]
fn test_bench_quick_ours_waits_for_its_teardown_helper() {
    let out = out_dir("helper");
    let report = bench(&["--quick", "--only", "ours"], &out, "report.json");
    let ours = peer(&report, "ours");
    let (returned, done) = (numbers(&ours["samples_us"]), numbers(&ours["done_us"]));
    assert_eq!(done.len(), returned.len(), "{ours}");
    assert!(returned.iter().zip(&done).all(|(r, d)| d >= r), "{ours}");
    let reaped = ours["reaped"].as_array().expect("reaped per run");
    assert!(reaped.iter().all(|n| n == 1), "one helper per run: {ours}");
}

#[kvm_test]
fn test_bench_quick_back_to_back_covers_ours_and_the_floor() {
    let out = out_dir("b2b");
    let report = bench(
        &["--quick", "--only", "ours,floor,back-to-back"],
        &out,
        "report.json",
    );
    let rows = report["back_to_back"]
        .as_array()
        .expect("back_to_back rows");
    let names: Vec<&str> = rows.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["ours", "floor"]);
    for row in rows {
        assert_eq!(row["failure"], serde_json::Value::Null, "{row}");
        assert_eq!(
            row["samples_us"].as_array().map(Vec::len),
            Some(10),
            "{row}"
        );
    }
}

#[kvm_test]
fn test_bench_fleet_only_ours_reports_its_launch_rate() {
    let out = out_dir("fleet");
    let report = bench(&["--fleet", "10", "--only", "ours"], &out, "fleet.json");
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
    assert!(out.join("fleet.svg").is_file());
}
