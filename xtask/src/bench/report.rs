//! The report: per peer summary statistics, peak RSS and ratio to the static native hello;
//! written as `report.json`, as a dated Markdown table `report.md` with the machine's facts,
//! and as the charts `boot.svg` and `phases.svg`.

use super::machine::Machine;
use super::peers::PeerResult;
use super::sha256::Comparison;
use super::snapmem::SnapshotMemory;
use super::stats::{Summary, median, summarize};
use super::svg;
use super::timeline::Timeline;
use anyhow::{Context, Result};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// The peer every ratio is relative to.
const BASELINE: &str = "native";

/// One peer in the report.
#[derive(Serialize)]
pub struct PeerReport {
    /// `ok`, `failed` or `not installed`.
    pub status: &'static str,
    /// Timed runs that passed verification.
    pub runs: usize,
    /// Statistics of the wall times (when `ok`).
    pub summary: Option<Summary>,
    /// Median peak RSS, KiB: of the runs under `rss-probe`, or of the timed runs when the
    /// probe gave nothing (then the bench's own RSS is in it).
    pub peak_rss_kib: Option<u64>,
    /// Median wall time over the native hello's median.
    pub ratio_to_native: Option<f64>,
    /// The raw measurements and what was run.
    #[serde(flatten)]
    pub result: PeerResult,
}

/// The whole report.
#[derive(Serialize)]
pub struct Report {
    /// Where and when.
    pub machine: Machine,
    /// Timed cold starts asked for per peer.
    pub runs_per_peer: usize,
    /// The peers, in the order they ran in each round.
    pub peers: Vec<PeerReport>,
    /// Our phase breakdown, or why it is unavailable.
    pub timeline: Option<Part<Timeline>>,
    /// The compute comparison, or why it was skipped.
    pub sha256: Option<Part<Comparison>>,
    /// Memory of VMs restored from one snapshot, or why it is missing.
    pub snapshot_memory: Option<Part<SnapshotMemory>>,
    /// The snapshot targets (issue 6), judged when their rows ran.
    pub targets: Vec<Target>,
}

/// A target and whether it was met.
#[derive(Serialize)]
pub struct Target {
    /// The target.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Met or not.
    pub met: bool,
}

/// Restoring in a fresh process may take this many times the native hello.
const RESTORE_TARGET_RATIO: f64 = 1.5;

/// An optional part of the report: there, or why not (`{"unavailable": "…"}` in JSON).
#[derive(Serialize)]
#[serde(untagged)]
pub enum Part<T> {
    /// Measured.
    Done(T),
    /// Not measured.
    Missing {
        /// Why.
        unavailable: String,
    },
}

impl<T> Part<T> {
    /// `Ok` as measured, `Err` as the reason it is missing.
    pub fn from_result<E: std::fmt::Display>(result: Result<T, E>) -> Part<T> {
        match result {
            Ok(done) => Part::Done(done),
            Err(err) => Part::Missing {
                unavailable: err.to_string(),
            },
        }
    }
}

impl PeerReport {
    fn new(result: PeerResult) -> PeerReport {
        let status = match (&result.install, &result.failure) {
            (Some(_), _) => "not installed",
            (None, Some(_)) => "failed",
            (None, None) => "ok",
        };
        let ok = status == "ok";
        let rss = if result.probe_rss_kib.is_empty() {
            &result.rss_kib
        } else {
            &result.probe_rss_kib
        };
        let rss: Vec<f64> = rss.iter().map(|&k| k as f64).collect();
        PeerReport {
            status,
            runs: result.samples_us.len(),
            summary: summarize(&result.samples_us).filter(|_| ok),
            peak_rss_kib: median(&rss).filter(|_| ok).map(|k| k as u64),
            ratio_to_native: None,
            result,
        }
    }
}

impl Report {
    /// Summarises the session.
    pub fn new(
        runs_per_peer: usize,
        results: Vec<PeerResult>,
        timeline: Option<Result<Timeline, String>>,
        sha256: Option<Result<Comparison>>,
        snapshot_memory: Option<Result<SnapshotMemory>>,
    ) -> Report {
        let mut peers: Vec<PeerReport> = results.into_iter().map(PeerReport::new).collect();
        let baseline = peers
            .iter()
            .find(|p| p.result.name == BASELINE)
            .and_then(|p| p.summary)
            .map(|s| s.median_us);
        for peer in &mut peers {
            peer.ratio_to_native = baseline.zip(peer.summary).map(|(b, s)| s.median_us / b);
        }
        Report {
            machine: Machine::detect(),
            runs_per_peer,
            timeline: timeline.map(Part::from_result),
            sha256: sha256.map(|r| Part::from_result(r.map_err(|e| format!("{e:#}")))),
            snapshot_memory: snapshot_memory
                .map(|r| Part::from_result(r.map_err(|e| format!("{e:#}")))),
            targets: targets(&peers),
            peers,
        }
    }

    /// Whether our own VMM failed (the bench then exits non-zero).
    pub fn ours_failed(&self) -> bool {
        self.peers
            .iter()
            .any(|p| p.result.name == "ours" && p.status != "ok")
    }

    /// Writes report.json, report.md, boot.svg and phases.svg into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
        };
        write("report.json", serde_json::to_string_pretty(self)? + "\n")?;
        write("report.md", self.markdown())?;
        write("boot.svg", svg::boot_chart(&self.chart_bars()))?;
        let phases = match &self.timeline {
            Some(Part::Done(t)) => svg::phases_chart(&t.phases, Some(t.after_last_phase_us)),
            _ => svg::phases_chart(&[], None),
        };
        write("phases.svg", phases)
    }

    fn chart_bars(&self) -> Vec<svg::Bar> {
        self.peers
            .iter()
            .filter_map(|p| {
                let s = p.summary?;
                Some(svg::Bar {
                    label: label(p.result.name).to_owned(),
                    median_us: s.median_us,
                    p10_us: s.p10_us,
                    p90_us: s.p90_us,
                    highlight: p.result.name == "ours"
                        || super::peers::SNAPSHOT_PEERS.contains(&p.result.name),
                })
            })
            .collect()
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let probe_runs = super::RSS_PROBE_RUNS;
        let settle_ms = super::SETTLE.as_millis();
        let mut md = format!("# flick cold-start bench, {}\n\n", m.date);
        let _ = writeln!(
            md,
            "Machine: Linux {}, {} ({} cores), /dev/kvm: {}; load average at the end {}.\n",
            m.kernel, m.cpu, m.cores, m.kvm, m.loadavg
        );
        let _ = writeln!(
            md,
            "{} cold starts per peer, interleaved (A B C A B C ...) after one untimed warm-up \
             run each. Wall time from spawn to `wait4`; every run follows a {settle_ms} ms pause, \
             so it starts on an idle CPU as a real cold start does (back-to-back runs, as \
             `hyperfine` makes them, are faster: caches and the vCPU stay warm). Peak RSS is \
             `ru_maxrss` of the process tree, median of {probe_runs} untimed runs under a tiny \
             static spawner: a child of the bench itself would carry the bench's RSS, which \
             Linux records at `execve`.\n",
            self.runs_per_peer
        );
        md.push_str("| peer | min | median | p90 | p99 | peak RSS | × native | what |\n");
        md.push_str("|---|---:|---:|---:|---:|---:|---:|---|\n");
        for peer in &self.peers {
            md.push_str(&peer_row(peer));
        }
        md.push_str(&snapshot_section(
            self.snapshot_memory.as_ref(),
            &self.targets,
        ));
        md.push_str(&timeline_section(self.timeline.as_ref()));
        md.push_str(&sha256_section(self.sha256.as_ref()));
        md
    }
}

/// A peer's name as the report shows it.
fn label(name: &str) -> &str {
    match name {
        "serve-process" => "serve (process)",
        other => other,
    }
}

/// The snapshot targets, for the rows that ran: a warm request through the pool faster than
/// the static native process; a restore in a fresh process within 1.5× of it.
fn targets(peers: &[PeerReport]) -> Vec<Target> {
    let median = |name: &str| {
        peers
            .iter()
            .find(|p| p.result.name == name)
            .and_then(|p| p.summary)
            .map(|s| s.median_us)
    };
    let Some(native) = median(BASELINE) else {
        return Vec::new();
    };
    let mut targets = Vec::new();
    if let Some(serve) = median("serve") {
        targets.push(Target {
            target: "a warm request through the pool (serve) is faster than the static native \
                     process"
                .to_owned(),
            measured: format!(
                "{} against {} ({:.2}×)",
                ms(serve),
                ms(native),
                serve / native
            ),
            met: serve < native,
        });
    }
    if let Some(restore) = median("restore") {
        targets.push(Target {
            target: format!(
                "a restore in a fresh process is within {RESTORE_TARGET_RATIO}× of the static \
                 native process"
            ),
            measured: format!(
                "{} against {} ({:.2}×)",
                ms(restore),
                ms(native),
                restore / native
            ),
            met: restore <= RESTORE_TARGET_RATIO * native,
        });
    }
    targets
}

fn snapshot_section(memory: Option<&Part<SnapshotMemory>>, targets: &[Target]) -> String {
    if memory.is_none() && targets.is_empty() {
        return String::new();
    }
    let mut md = String::from("\n## Snapshots\n\n");
    md.push_str(
        "restore: `vmm run --from` a snapshot of the image, a fresh process. serve: a request to \
         a `vmm serve` holding a pool of ready VMs of that snapshot, sent by the bench itself \
         and timed from connect to the exit-status frame (stdout and status checked). serve \
         (process): the same request from a fresh `vmm run --via` process. The server is started \
         once, before the runs.\n",
    );
    match memory {
        None => {}
        Some(Part::Missing { unavailable }) => {
            let _ = writeln!(
                md,
                "\nMemory of restored VMs: failed: {}.",
                cell(unavailable)
            );
        }
        Some(Part::Done(m)) => {
            let _ = writeln!(
                md,
                "\nMemory of {} resident VMs restored from one snapshot of `idle` (`vmm fleet \
                 target/bench/idle.snap --count {} --resident`): PSS of the VMM at the peak / VMs \
                 (its own pages included; the snapshot's pages shared through the page cache) \
                 **{:.0} KiB**, RSS growth / VM {:.0} KiB, MemAvailable drop / VM (kernel \
                 included) {:.0} KiB (measured once MemAvailable was steady, after {:.0} s{}).",
                m.count,
                m.count,
                m.pss_per_vm_kib,
                m.rss_per_vm_kib,
                m.mem_available_per_vm_kib,
                m.settled.waited_s,
                if m.settled.steady {
                    ""
                } else {
                    ", still moving"
                }
            );
        }
    }
    if !targets.is_empty() {
        md.push_str("\n| target | measured | met |\n|---|---|---|\n");
        for t in targets {
            let met = if t.met { "yes" } else { "**no**" };
            let _ = writeln!(md, "| {} | {} | {met} |", t.target, t.measured);
        }
    }
    md
}

fn peer_row(peer: &PeerReport) -> String {
    let r = &peer.result;
    let name = if r.name == "ours" {
        "**ours**".to_owned()
    } else {
        label(r.name).to_owned()
    };
    match (&peer.summary, &r.install, &r.failure) {
        (Some(s), _, _) => format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} |\n",
            ms(s.min_us),
            ms(s.median_us),
            ms(s.p90_us),
            ms(s.p99_us),
            peak_rss(peer.peak_rss_kib),
            peer.ratio_to_native
                .map_or_else(|| "–".to_owned(), |x| format!("{x:.2}×")),
            cell(&r.what)
        ),
        (None, Some(install), _) => {
            format!("| {name} | – | not installed | – | – | – | – | `{install}` |\n")
        }
        (None, None, failure) => {
            let reason = failure.as_deref().unwrap_or("no runs");
            format!(
                "| {name} | – | failed | – | – | – | – | {} |\n",
                cell(reason)
            )
        }
    }
}

fn timeline_section(timeline: Option<&Part<Timeline>>) -> String {
    let mut md = String::from("\n## Our boot, phase by phase\n\n");
    match timeline {
        None => return String::new(),
        Some(Part::Missing {
            unavailable: reason,
        }) => {
            let _ = writeln!(md, "{}.", cell(reason));
            return md;
        }
        Some(Part::Done(t)) => {
            let _ = writeln!(
                md,
                "Median of {} separate runs with `--timeline=json`, each after the same pause \
                 (their median wall time: {}).\n",
                t.runs,
                ms(t.wall_us)
            );
            md.push_str("| phase | duration | ends at |\n|---|---:|---:|\n");
            for p in &t.phases {
                let _ = writeln!(
                    md,
                    "| {} | {:.1} µs | {:.1} µs |",
                    cell(&p.phase),
                    p.duration_us,
                    p.since_start_us
                );
            }
            let _ = writeln!(
                md,
                "| process exit, reaped (after the last phase) | {:.1} µs | |",
                t.after_last_phase_us
            );
            if !t.details.is_empty() {
                let details = serde_json::Value::Object(t.details.clone());
                let _ = writeln!(md, "\nAlso reported: `{details}`");
            }
        }
    }
    md
}

fn sha256_section(sha: Option<&Part<Comparison>>) -> String {
    let mut md = String::from("\n## sha256: guest against native\n\n");
    match sha {
        None => return String::new(),
        Some(Part::Missing {
            unavailable: reason,
        }) => {
            let _ = writeln!(md, "Skipped: {}.", cell(reason));
        }
        Some(Part::Done(c)) => {
            let _ = writeln!(
                md,
                "{} MiB per run, {} runs of each side interleaved; digests equal ({}…).\n\n\
                 | | guest | native | guest / native |\n|---|---:|---:|---:|\n\
                 | best run | {:.0} MiB/s | {:.0} MiB/s | {:.2} |\n\
                 | median | {:.0} MiB/s | {:.0} MiB/s | {:.2} |",
                c.mib,
                super::sha256::RUNS,
                &c.digest[..16.min(c.digest.len())],
                c.guest_mib_s,
                c.native_mib_s,
                c.ratio,
                c.guest_median_mib_s,
                c.native_median_mib_s,
                c.guest_median_mib_s / c.native_median_mib_s
            );
        }
    }
    md
}

/// Microseconds as milliseconds with about three significant digits.
fn ms(us: f64) -> String {
    let ms = us / 1000.0;
    match ms {
        x if x < 10.0 => format!("{x:.2} ms"),
        x if x < 100.0 => format!("{x:.1} ms"),
        x => format!("{x:.0} ms"),
    }
}

fn peak_rss(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "–".to_owned(),
        |k| format!("{:.1} MiB", k as f64 / 1024.0),
    )
}

/// Text made safe for one Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ms_keeps_three_digits() {
        assert_eq!(ms(650.0), "0.65 ms");
        assert_eq!(ms(34_700.0), "34.7 ms");
        assert_eq!(ms(308_000.0), "308 ms");
    }

    #[test]
    fn test_cell_escapes_pipes_and_newlines() {
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }
}
