//! Our boot's phase breakdown: untimed runs of `vmm run --timeline=json`, whose last stderr
//! line is one JSON object (`{"phases":[{"phase":…,"duration_us":…,"since_start_us":…}],
//! "exits":{…},"hypervisor":…}`), summarised as the median of each phase. Each run gets
//! `FLICK_SPAWN_NS` (the monotonic clock at spawn) so that the VMM's first phase, process start,
//! is exact. A VMM without the flag gives "timeline unavailable", not an error.

use super::stats::median;
use crate::vmm_path;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Tells the VMM when it was spawned (`CLOCK_MONOTONIC`, ns).
const SPAWN_TIME_ENV: &str = "FLICK_SPAWN_NS";

/// One phase as the VMM reports it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Phase {
    /// What the VMM did.
    pub phase: String,
    /// How long it took, µs.
    pub duration_us: f64,
    /// When it ended, µs since the VMM started (median over the runs when summarised).
    #[serde(default)]
    pub since_start_us: f64,
}

/// The VMM's timeline line, parsed.
#[derive(Debug, Deserialize)]
pub struct Line {
    /// The phases in order.
    pub phases: Vec<Phase>,
    /// The rest of the object (exit counts, hypervisor, …), kept as it is.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

/// The breakdown over several runs.
#[derive(Debug, Serialize)]
pub struct Timeline {
    /// Runs that gave a timeline.
    pub runs: usize,
    /// Each phase's median duration, in the VMM's order.
    pub phases: Vec<Phase>,
    /// Median wall time of these runs, spawn to `wait4`, µs.
    pub wall_us: f64,
    /// Median time from the end of the last phase to `wait4`'s return (process exit), µs.
    pub after_last_phase_us: f64,
    /// The other fields of the last run's line (exits, hypervisor, …).
    pub details: serde_json::Map<String, Value>,
}

/// Parses the timeline: the last non-empty line of the VMM's stderr.
pub fn parse(stderr: &str) -> Result<Line, String> {
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or("the VMM printed nothing on stderr")?;
    serde_json::from_str(last.trim()).map_err(|e| format!("{e} in the VMM's last line: {last}"))
}

/// Runs ours `runs` times with `--timeline=json`; `Err` says why no timeline is available.
/// Each run follows a pause of `settle`, like the timed runs.
pub fn collect(
    image: &Path,
    args: &[String],
    runs: usize,
    settle: Duration,
) -> Result<Timeline, String> {
    let mut lines = Vec::new();
    for _ in 0..runs {
        std::thread::sleep(settle);
        let start = Instant::now();
        let output = Command::new(vmm_path())
            .arg("run")
            .arg("--timeline=json")
            .arg(image)
            .arg("--")
            .args(args)
            .stdin(Stdio::null())
            .env(SPAWN_TIME_ENV, monotonic_ns().to_string())
            .output()
            .map_err(|e| format!("cannot start the VMM: {e}"))?;
        let wall_us = start.elapsed().as_secs_f64() * 1e6;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let line = parse(&stderr).map_err(|e| format!("timeline unavailable: {e}"))?;
        lines.push((line, wall_us));
    }
    summarize(lines)
}

/// `CLOCK_MONOTONIC` now, ns (the clock the VMM compares `FLICK_SPAWN_NS` with).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec that we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1_000_000_000 + nanos
}

/// The median of each phase over `runs` (timeline line, wall time in µs), phases named as in
/// the first line.
fn summarize(runs: Vec<(Line, f64)>) -> Result<Timeline, String> {
    let walls: Vec<f64> = runs.iter().map(|r| r.1).collect();
    let after: Vec<f64> = runs
        .iter()
        .map(|(line, wall)| wall - line.phases.last().map_or(0.0, |p| p.since_start_us))
        .collect();
    let lines: Vec<Line> = runs.into_iter().map(|r| r.0).collect();
    let first = lines.first().ok_or("timeline unavailable: no runs")?;
    let of = |name: &str, field: fn(&Phase) -> f64| -> f64 {
        let values: Vec<f64> = lines
            .iter()
            .flat_map(|l| l.phases.iter().filter(|p| p.phase == name).map(field))
            .collect();
        median(&values).unwrap_or(0.0)
    };
    let phases = first
        .phases
        .iter()
        .map(|p| Phase {
            phase: p.phase.clone(),
            duration_us: of(&p.phase, |p| p.duration_us),
            since_start_us: of(&p.phase, |p| p.since_start_us),
        })
        .collect();
    let details = lines.last().map(|l| l.rest.clone()).unwrap_or_default();
    Ok(Timeline {
        runs: lines.len(),
        phases,
        wall_us: median(&walls).unwrap_or(0.0),
        after_last_phase_us: median(&after).unwrap_or(0.0),
        details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = concat!(
        r#"{"phases":[{"phase":"open /dev/kvm","duration_us":12.5,"since_start_us":80.0},"#,
        r#"{"phase":"run","duration_us":100.0,"since_start_us":300.0}],"#,
        r#""exits":{"total":3},"hypervisor":"pvm"}"#
    );

    #[test]
    fn test_parse_last_line_is_the_timeline() {
        let stderr = format!("some log\n{LINE}\n");
        let line = parse(&stderr).unwrap();
        assert_eq!(line.phases.len(), 2);
        assert_eq!(line.phases[0].phase, "open /dev/kvm");
        assert_eq!(line.rest["hypervisor"], "pvm");
    }

    #[test]
    fn test_parse_usage_error_is_unavailable() {
        let stderr = "error: unexpected argument '--timeline' found (see 'vmm --help')\n";
        assert!(parse(stderr).is_err());
    }

    #[test]
    fn test_summarize_takes_each_phase_median() {
        let lines = ["10", "30", "20"].map(|d| (parse(&LINE.replace("12.5", d)).unwrap(), 500.0));
        let timeline = summarize(lines.into_iter().collect()).unwrap();
        assert_eq!(timeline.runs, 3);
        assert_eq!(timeline.phases[0].duration_us, 20.0);
        assert_eq!(timeline.phases[1].duration_us, 100.0);
        assert_eq!(timeline.after_last_phase_us, 200.0);
    }
}
