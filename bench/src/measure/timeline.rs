//! Phase breakdowns: untimed runs of a program that prints a `--timeline=json` line as its
//! last line on stderr (our `vmm run --timeline=json`, the floor's `--timeline`), summarised as
//! the median of each phase. Each run gets the spawn time in [`SPAWN_TIME_ENV`], so that the
//! first phase, process start → main, is exact.

use crate::contracts::{Phase, SPAWN_TIME_ENV, TimelineLine, median, parse_timeline};
use crate::error::{Context, Error, Result};
use serde::Serialize;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The breakdown over several runs.
#[derive(Debug, Serialize)]
pub(crate) struct Timeline {
    /// Runs that gave a timeline.
    pub(crate) runs: usize,
    /// Each phase's median duration, in the program's order.
    pub(crate) phases: Vec<Phase>,
    /// Median wall time of these runs, spawn to `wait4`, µs.
    pub(crate) wall_us: f64,
    /// Median time from the end of the last phase to `wait4`'s return (process exit), µs.
    pub(crate) after_last_phase_us: f64,
    /// The other fields of the last run's line (exits, hypervisor, …).
    pub(crate) details: serde_json::Map<String, serde_json::Value>,
}

/// Runs `command()` `runs` times, each after a pause of `settle` like the timed runs, and
/// summarises the timelines it printed.
pub(crate) fn collect(
    command: &dyn Fn() -> Command,
    runs: usize,
    settle: Duration,
) -> Result<Timeline> {
    let mut lines = Vec::new();
    for _ in 0..runs {
        std::thread::sleep(settle);
        let mut cmd = command();
        let start = Instant::now();
        let output = cmd
            .stdin(Stdio::null())
            .env(SPAWN_TIME_ENV, monotonic_ns().to_string())
            .output()
            .map_err(Error::io(format!(
                "cannot start {}",
                cmd.get_program().to_string_lossy()
            )))?;
        let wall_us = start.elapsed().as_secs_f64() * 1e6;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let line = parse_timeline(&stderr).context("timeline unavailable")?;
        lines.push((line, wall_us));
    }
    summarize(lines)
}

/// `CLOCK_MONOTONIC` now, ns (the clock a timeline compares [`SPAWN_TIME_ENV`] with).
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
fn summarize(runs: Vec<(TimelineLine, f64)>) -> Result<Timeline> {
    let walls: Vec<f64> = runs.iter().map(|r| r.1).collect();
    let after: Vec<f64> = runs
        .iter()
        .map(|(line, wall)| wall - line.phases.last().map_or(0.0, |p| p.since_start_us))
        .collect();
    let lines: Vec<TimelineLine> = runs.into_iter().map(|r| r.0).collect();
    let first = lines
        .first()
        .ok_or_else(|| Error::Check("timeline unavailable: no runs".to_owned()))?;
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
        r#""exits":{"total":3,"io_out":{"0x500":1},"io_in":{},"mmio":0,"other":0},"#,
        r#""console_bytes":24,"ram_pages_touched":16,"hypervisor":"pvm","exit_status":0}"#
    );

    #[test]
    fn test_summarize_takes_each_phase_median() {
        let lines =
            ["10", "30", "20"].map(|d| (parse_timeline(&LINE.replace("12.5", d)).unwrap(), 500.0));
        let timeline = summarize(lines.into_iter().collect()).unwrap();
        assert_eq!(timeline.runs, 3);
        assert_eq!(timeline.phases[0].duration_us, 20.0);
        assert_eq!(timeline.phases[1].duration_us, 100.0);
        assert_eq!(timeline.after_last_phase_us, 200.0);
    }

    #[test]
    fn test_collect_without_a_timeline_line_is_unavailable() {
        let err = collect(&|| Command::new("true"), 1, Duration::ZERO).unwrap_err();
        assert!(err.to_string().contains("timeline unavailable"), "{err}");
    }
}
