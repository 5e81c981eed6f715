//! The reports. This module summarises the cold-start session per peer (statistics of both
//! clocks, peak RSS, ratio to its like: cold rows to the native process and the floor, the warm
//! `serve` row to the warm native pool) and judges the targets on it; [`markdown`] renders it
//! (with a README-ready block), [`fleet`] judges and renders the fleet bench, [`svg`] draws the
//! charts, [`format`] says how figures look, and [`write`] writes the files.

pub(crate) mod fleet;
pub(crate) mod format;
pub(crate) mod markdown;
pub(crate) mod svg;
pub(crate) mod write;

use crate::contracts::median;
use crate::error::Result;
use crate::measure::Part;
use crate::measure::machine::Machine;
use crate::measure::stats::{Summary, summarize};
use crate::measure::timeline::Timeline;
use crate::peers::peer::PeerResult;
use crate::session::BackToBack;
use crate::sha256::Comparison;
use crate::snapmem::SnapshotMemory;
use serde::Serialize;

/// The cold peer every cold ratio is relative to.
pub(crate) const NATIVE: &str = "native";
/// The floor of a KVM boot.
pub(crate) const FLOOR: &str = "floor";
/// The warm native peer, the like of `serve`.
pub(crate) const NATIVE_POOL: &str = crate::peers::pool::NAME;

/// One peer in the report.
#[derive(Serialize)]
pub(crate) struct PeerReport {
    /// `ok`, `failed` or `not installed`.
    pub(crate) status: &'static str,
    /// Timed runs that passed verification.
    pub(crate) runs: usize,
    /// Until the command returned (when `ok`).
    pub(crate) summary: Option<Summary>,
    /// Until the work was done: the last process of its group reaped (process peers).
    pub(crate) done: Option<Summary>,
    /// Fewest and most processes reaped after the command returned, per run.
    pub(crate) reaped_per_run: Option<(usize, usize)>,
    /// Median peak RSS, KiB: of the runs under `rss-probe`, or of the timed runs when the
    /// probe gave nothing (then the bench's own RSS is in it).
    pub(crate) peak_rss_kib: Option<u64>,
    /// The peer its ratio is taken to: `native` for cold rows and `serve-process`,
    /// `native-pool` for the warm in-process rows.
    pub(crate) like: &'static str,
    /// Median over its like's median (until the command returned).
    pub(crate) ratio_to_like: Option<f64>,
    /// Median until done over the native process's median until done.
    pub(crate) done_ratio_to_native: Option<f64>,
    /// Median over the floor's median (cold rows).
    pub(crate) ratio_to_floor: Option<f64>,
    /// The raw measurements and what was run.
    #[serde(flatten)]
    pub(crate) result: PeerResult,
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
        let reaped_per_run = result
            .reaped
            .iter()
            .min()
            .zip(result.reaped.iter().max())
            .map(|(a, b)| (*a, *b));
        PeerReport {
            status,
            runs: result.samples_us.len(),
            summary: summarize(&result.samples_us).filter(|_| ok),
            done: summarize(&result.done_us).filter(|_| ok),
            reaped_per_run,
            peak_rss_kib: median(&rss).filter(|_| ok).map(|k| k as u64),
            like: like(result.name),
            ratio_to_like: None,
            done_ratio_to_native: None,
            ratio_to_floor: None,
            result,
        }
    }

    /// Whether it is a warm row (a request to something started ahead).
    pub(crate) fn is_warm(&self) -> bool {
        crate::peers::WARM.contains(&self.result.name)
    }
}

/// The peer `name` is compared with.
fn like(name: &str) -> &'static str {
    match name {
        "serve" | "serve-fresh" | NATIVE_POOL => NATIVE_POOL,
        _ => NATIVE,
    }
}

/// A target and whether it was met.
#[derive(Serialize)]
pub(crate) struct Target {
    /// Cold against cold, or warm against warm.
    pub(crate) kind: &'static str,
    /// The target, and the issue that set it.
    pub(crate) target: String,
    /// What was measured.
    pub(crate) measured: String,
    /// Met or not.
    pub(crate) met: bool,
}

/// The whole cold-start report.
#[derive(Serialize)]
pub(crate) struct Report {
    /// Where and when.
    pub(crate) machine: Machine,
    /// Timed runs asked for per peer.
    pub(crate) runs_per_peer: usize,
    /// The pause after every run, ms.
    pub(crate) settle_ms: u64,
    /// Untimed runs per peer under `rss-probe`.
    pub(crate) rss_probe_runs: usize,
    /// The peers, in the order they ran in each round (cold, then warm).
    pub(crate) peers: Vec<PeerReport>,
    /// Back-to-back runs.
    pub(crate) back_to_back: Vec<BackToBackReport>,
    /// Our phase breakdown, or why it is unavailable.
    pub(crate) timeline: Option<Part<Timeline>>,
    /// The floor's phase breakdown, or why it is unavailable.
    pub(crate) floor_timeline: Option<Part<Timeline>>,
    /// The compute comparison, or why it was skipped.
    pub(crate) sha256: Option<Part<Comparison>>,
    /// Memory of VMs restored from one snapshot, or why it is missing.
    pub(crate) snapshot_memory: Option<Part<SnapshotMemory>>,
    /// The I/O row, or why it is missing.
    pub(crate) io: Option<Part<crate::io::IoComparison>>,
    /// The targets judged on the rows that ran.
    pub(crate) targets: Vec<Target>,
}

/// One peer's back-to-back runs, summarised.
#[derive(Serialize)]
pub(crate) struct BackToBackReport {
    /// Until each command returned, µs.
    pub(crate) summary: Option<Summary>,
    /// Median over the native process's back-to-back median.
    pub(crate) ratio_to_native: Option<f64>,
    /// The raw runs.
    #[serde(flatten)]
    pub(crate) runs: BackToBack,
}

/// What the session measured, for [`Report::new`].
pub(crate) struct Measured {
    pub(crate) runs_per_peer: usize,
    pub(crate) settle_ms: u64,
    pub(crate) rss_probe_runs: usize,
    pub(crate) results: Vec<PeerResult>,
    pub(crate) back_to_back: Vec<BackToBack>,
    pub(crate) timeline: Option<Result<Timeline>>,
    pub(crate) floor_timeline: Option<Result<Timeline>>,
    pub(crate) sha256: Option<Result<Comparison>>,
    pub(crate) snapshot_memory: Option<Result<SnapshotMemory>>,
    pub(crate) io: Option<Result<crate::io::IoComparison>>,
}

impl Report {
    /// Summarises the session.
    pub(crate) fn new(measured: Measured) -> Report {
        let mut peers: Vec<PeerReport> =
            measured.results.into_iter().map(PeerReport::new).collect();
        let median_of = |peers: &[PeerReport], name: &str| {
            peers
                .iter()
                .find(|p| p.result.name == name)
                .and_then(|p| p.summary)
                .map(|s| s.median_us)
        };
        let done_native = peers
            .iter()
            .find(|p| p.result.name == NATIVE)
            .and_then(|p| p.done)
            .map(|s| s.median_us);
        let floor = median_of(&peers, FLOOR);
        let likes: Vec<Option<f64>> = peers.iter().map(|p| median_of(&peers, p.like)).collect();
        for (peer, like) in peers.iter_mut().zip(likes) {
            let Some(s) = peer.summary else { continue };
            peer.ratio_to_like = like.map(|l| s.median_us / l);
            peer.done_ratio_to_native = done_native.zip(peer.done).map(|(n, d)| d.median_us / n);
            if !peer.is_warm() {
                peer.ratio_to_floor = floor.map(|f| s.median_us / f);
            }
        }
        let native_b2b = measured
            .back_to_back
            .iter()
            .find(|b| b.name == NATIVE)
            .and_then(|b| crate::contracts::median(&b.samples_us));
        let back_to_back = measured
            .back_to_back
            .into_iter()
            .map(|runs| {
                let summary = summarize(&runs.samples_us).filter(|_| runs.failure.is_none());
                BackToBackReport {
                    ratio_to_native: native_b2b.zip(summary).map(|(n, s)| s.median_us / n),
                    summary,
                    runs,
                }
            })
            .collect();
        Report {
            machine: Machine::detect(),
            runs_per_peer: measured.runs_per_peer,
            settle_ms: measured.settle_ms,
            rss_probe_runs: measured.rss_probe_runs,
            back_to_back,
            timeline: measured.timeline.map(Part::from_result),
            floor_timeline: measured.floor_timeline.map(Part::from_result),
            sha256: measured.sha256.map(Part::from_result),
            snapshot_memory: measured.snapshot_memory.map(Part::from_result),
            io: measured.io.map(Part::from_result),
            targets: targets(&peers),
            peers,
        }
    }

    /// Whether our own VMM failed (the bench then exits non-zero).
    pub(crate) fn ours_failed(&self) -> bool {
        self.peers
            .iter()
            .any(|p| p.result.name == "ours" && p.status != "ok")
    }
}

/// Ours cold within this many times the floor (issue 15, goal 1).
const FLOOR_TARGET_RATIO: f64 = 1.15;
/// A restore in a fresh process within this many times the native process (issue 6).
const RESTORE_TARGET_RATIO: f64 = 1.5;
/// A warm request within this many times the warm native process (issue 15, goal 4).
const WARM_TARGET_RATIO: f64 = 0.5;
/// `vmm run --via` as a fresh process within this many times the native process (issue 15).
const VIA_TARGET_RATIO: f64 = 1.5;

/// The targets, for the rows that ran: cold rows against cold rows, warm against warm.
fn targets(peers: &[PeerReport]) -> Vec<Target> {
    let find = |name: &str| peers.iter().find(|p| p.result.name == name);
    let median = |name: &'static str| {
        let median = find(name).and_then(|p| p.summary).map(|s| s.median_us);
        (format::short_label(name), median)
    };
    let done = |name: &'static str| {
        let median = find(name).and_then(|p| p.done).map(|s| s.median_us);
        (format::short_label(name), median)
    };
    [
        judge(
            "cold",
            format!(
                "ours within {FLOOR_TARGET_RATIO}× of the floor, until the command returns \
                 (issue 15)"
            ),
            median("ours"),
            median(FLOOR),
            FLOOR_TARGET_RATIO,
        ),
        judge(
            "cold",
            format!(
                "ours within {FLOOR_TARGET_RATIO}× of the floor, until the work is done (issue \
                 15; the floor has no helper: its work is done when it returns)"
            ),
            done("ours"),
            done(FLOOR),
            FLOOR_TARGET_RATIO,
        ),
        judge(
            "cold",
            "a restore costs no more than a cold boot (issue 15)".to_owned(),
            median("restore"),
            median("ours"),
            1.0,
        ),
        judge(
            "cold",
            format!("a restore within {RESTORE_TARGET_RATIO}× of the native process (issue 6)"),
            median("restore"),
            median(NATIVE),
            RESTORE_TARGET_RATIO,
        ),
        judge(
            "warm",
            "a warm request (serve) no slower than the same request to a warm native process \
             (issue 6, like for like)"
                .to_owned(),
            median("serve"),
            median(NATIVE_POOL),
            1.0,
        ),
        judge(
            "warm",
            format!(
                "a warm request (serve) within {WARM_TARGET_RATIO}× of a warm native process \
                 (issue 15, like for like)"
            ),
            median("serve"),
            median(NATIVE_POOL),
            WARM_TARGET_RATIO,
        ),
        judge(
            "fresh client",
            format!(
                "a fresh `vmm run --via` process within {VIA_TARGET_RATIO}× of the native \
                 process (issue 15)"
            ),
            median("serve-process"),
            median(NATIVE),
            VIA_TARGET_RATIO,
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Whether `a`'s median is within `ratio` times `b`'s (both named), when both were measured.
fn judge(
    kind: &'static str,
    target: String,
    (a_name, a): (&str, Option<f64>),
    (b_name, b): (&str, Option<f64>),
    ratio: f64,
) -> Option<Target> {
    let (a, b) = (a?, b?);
    Some(Target {
        kind,
        target,
        measured: format!(
            "{a_name} {} against {b_name} {} ({:.2}×)",
            format::ms(a),
            format::ms(b),
            a / b
        ),
        met: a <= ratio * b,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::peer::Setup;

    fn result(name: &'static str, samples: &[f64]) -> PeerResult {
        let setup = Setup::Failed {
            name,
            reason: String::new(),
        };
        let mut result = PeerResult::from_setup(&setup);
        result.failure = None;
        result.samples_us = samples.to_vec();
        result
    }

    fn report(results: Vec<PeerResult>) -> Report {
        Report::new(Measured {
            runs_per_peer: 1,
            settle_ms: 20,
            rss_probe_runs: 3,
            results,
            back_to_back: Vec::new(),
            timeline: None,
            floor_timeline: None,
            sha256: None,
            snapshot_memory: None,
            io: None,
        })
    }

    #[test]
    fn test_report_serve_is_compared_with_the_warm_native_pool() {
        let report = report(vec![
            result("native", &[1000.0]),
            result("serve", &[300.0]),
            result("native-pool", &[200.0]),
        ]);
        let serve = report
            .peers
            .iter()
            .find(|p| p.result.name == "serve")
            .unwrap();
        assert_eq!(serve.like, "native-pool");
        assert_eq!(serve.ratio_to_like, Some(1.5));
        let warm = report.targets.iter().filter(|t| t.kind == "warm");
        assert!(
            warm.into_iter().all(|t| !t.met),
            "serve is slower than the pool"
        );
    }

    #[test]
    fn test_report_ours_is_judged_against_the_floor() {
        let report = report(vec![result("ours", &[1100.0]), result("floor", &[1000.0])]);
        let ours = &report.peers[0];
        assert_eq!(ours.ratio_to_floor, Some(1.1));
        assert!(report.targets[0].target.contains("floor") && report.targets[0].met);
        assert_eq!(
            report.targets.len(),
            1,
            "no until-done target without done times"
        );
    }
}
