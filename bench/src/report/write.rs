//! Writes the reports into the output directory: `report.json`, `report.md`, `boot.svg` and
//! `phases.svg` for the cold-start bench; `fleet.json`, `fleet.md` and `fleet.svg` for the
//! fleet bench.

use super::fleet::{self, FleetReport, RATE_TARGET_PER_CORE};
use super::format::short_label;
use super::{Report, svg};
use crate::error::{Error, Result};
use crate::fleet::FleetBench;
use crate::measure::Part;
use crate::peers::ours::SNAPSHOT_PEERS;
use std::path::Path;

/// Writes the cold-start report into `dir`; returns its Markdown.
pub(crate) fn cold(report: &Report, dir: &Path) -> Result<String> {
    let json =
        serde_json::to_string_pretty(report).map_err(Error::json("cannot encode the report"))?;
    file(dir, "report.json", json + "\n")?;
    let md = report.markdown();
    file(dir, "report.md", md.clone())?;
    file(dir, "boot.svg", svg::boot_chart(&chart_bars(report)))?;
    let phases = match &report.timeline {
        Some(Part::Done(t)) => svg::phases_chart(&t.phases, Some(t.after_last_phase_us)),
        _ => svg::phases_chart(&[], None),
    };
    file(dir, "phases.svg", phases)?;
    Ok(md)
}

fn chart_bars(report: &Report) -> Vec<svg::Bar> {
    report
        .peers
        .iter()
        .filter_map(|p| {
            let s = p.summary?;
            Some(svg::Bar {
                label: short_label(p.result.name).to_owned(),
                median_us: s.median_us,
                p10_us: s.p10_us,
                p90_us: s.p90_us,
                highlight: p.result.name == "ours" || SNAPSHOT_PEERS.contains(&p.result.name),
            })
        })
        .collect()
}

/// Writes the fleet report into `dir`; returns its Markdown.
pub(crate) fn fleet(bench: &FleetBench, dir: &Path) -> Result<String> {
    let report = FleetReport::new(bench);
    let json = serde_json::to_string_pretty(&report)
        .map_err(Error::json("cannot encode the fleet report"))?;
    file(dir, "fleet.json", json + "\n")?;
    let md = fleet::markdown(&report);
    file(dir, "fleet.md", md.clone())?;
    let bars: Vec<svg::RateBar> = bench
        .rows
        .iter()
        .filter(|r| r.status == "ok")
        .map(|r| svg::RateBar {
            label: r.name.to_owned(),
            rate: r.launch_rate,
            highlight: r.name == "ours",
        })
        .collect();
    let title = format!(
        "Launch rate, {} instances {} at a time (per second, higher is better)",
        bench.count, bench.concurrency
    );
    let cores = bench.machine.cores;
    let target = RATE_TARGET_PER_CORE * cores as f64;
    let label = format!("target: {RATE_TARGET_PER_CORE:.0}/s per core × {cores}");
    let chart = svg::rate_chart(&title, &bars, Some((target, &label)));
    file(dir, "fleet.svg", chart)?;
    Ok(md)
}

/// Writes `text` into `dir/name`.
fn file(dir: &Path, name: &str, text: String) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(Error::io(format!("cannot write {}", path.display())))
}
