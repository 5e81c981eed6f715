//! The cold-start session: every ready peer runs once untimed (warm-up and verification) and
//! has its peak RSS probed, then `runs` rounds of A B C A B C ..., so that drift of the machine
//! hits all peers alike; every run is verified and follows a pause. Then the back-to-back
//! bursts: runs with no pause in between, as a script calling a command in a loop makes them,
//! timed until each command returns.

use crate::error::{Error, chain};
use crate::measure::run::{RUN_TIMEOUT, Watchdog};
use crate::peers::peer::{Peer, PeerResult, Setup};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

/// A pause after every run, so that what a peer leaves behind (Docker removing its container,
/// a runtime removing its cgroup, our VMM's teardown helper) does not land in the next run.
pub(crate) const SETTLE: Duration = Duration::from_millis(20);
/// Untimed runs of each process peer under `rss-probe`.
pub(crate) const RSS_PROBE_RUNS: usize = 3;
/// Timed runs per back-to-back burst (each burst starts with one untimed run).
pub(crate) const BURST: usize = 10;
/// The peers that also run back to back.
pub(crate) const BACK_TO_BACK: [&str; 3] = ["ours", "floor", "native"];

/// Runs the session over `setups`; `probe` is the RSS probe, or why it is missing.
pub(crate) fn measure(
    setups: &[Setup],
    runs: usize,
    probe: Result<&Path, &Error>,
) -> Vec<PeerResult> {
    let watchdog = Watchdog::start(RUN_TIMEOUT);
    let mut results: Vec<PeerResult> = setups.iter().map(PeerResult::from_setup).collect();
    for (setup, result) in setups.iter().zip(results.iter_mut()) {
        if let Setup::Ready(peer) = setup {
            run_verified(peer, result, &watchdog, None);
            probe_rss(peer, result, probe);
        }
    }
    for round in 0..runs {
        for (setup, result) in setups.iter().zip(results.iter_mut()) {
            if let Setup::Ready(peer) = setup {
                run_verified(peer, result, &watchdog, Some(round));
            }
        }
    }
    results
}

/// Measures the peak RSS of `peer` under the RSS probe, unless the peer failed already. Without
/// a probe, the report falls back on `wait4`'s numbers (which include the bench's own RSS).
fn probe_rss(peer: &Peer, result: &mut PeerResult, probe: Result<&Path, &Error>) {
    if !peer.is_process() {
        result.probe_note = Some("measured in-process: no process of its own".to_owned());
        return;
    }
    let probe = match probe {
        Ok(probe) if result.failure.is_none() => probe,
        Ok(_) => return,
        Err(err) => {
            result.probe_note = Some(format!("rss-probe: {}", chain(err)));
            return;
        }
    };
    for i in 0..RSS_PROBE_RUNS {
        match peer.probe_rss(probe, &format!("rss{i}")) {
            Ok(kib) => result.probe_rss_kib.push(kib),
            Err(err) => result.probe_note = Some(chain(&err)),
        }
    }
}

/// One run of `peer`, recorded in `result` when `round` is given (else a warm-up). A failed
/// start or verification marks the peer failed; a failed peer is not run again.
fn run_verified(peer: &Peer, result: &mut PeerResult, watchdog: &Watchdog, round: Option<usize>) {
    if result.failure.is_some() {
        return;
    }
    let run_id = round.map_or_else(|| "warmup".to_owned(), |r| r.to_string());
    let outcome = peer
        .run_once(&run_id, watchdog)
        .and_then(|sample| peer.verify(&sample).map(|()| sample));
    match outcome {
        Ok(sample) if round.is_some() => result.record(&sample),
        Ok(_) => {}
        Err(err) => result.failure = Some(chain(&err)),
    }
    std::thread::sleep(SETTLE);
}

/// One peer's back-to-back runs.
#[derive(Serialize)]
pub(crate) struct BackToBack {
    /// The peer.
    pub(crate) name: &'static str,
    /// Bursts run.
    pub(crate) bursts: usize,
    /// Each timed run until the command returned, µs.
    pub(crate) samples_us: Vec<f64>,
    /// The bursts' wall time (first timed spawn → last return) over their timed runs, µs:
    /// what a loop of N runs takes, per run.
    pub(crate) loop_per_run_us: f64,
    /// Why the peer stopped, if it failed.
    pub(crate) failure: Option<String>,
}

/// `runs` back-to-back runs of each ready [`BACK_TO_BACK`] peer that has not failed, in bursts
/// of [`BURST`] interleaved across peers, a pause between bursts; each run is verified and
/// waits only for its command to return (what a script's loop waits for; our VMM's teardown
/// helpers are left to init, as they are in a shell).
pub(crate) fn back_to_back(
    setups: &[Setup],
    results: &[PeerResult],
    runs: usize,
) -> Vec<BackToBack> {
    let watchdog = Watchdog::start(RUN_TIMEOUT);
    let peers: Vec<&Peer> = setups
        .iter()
        .zip(results)
        .filter_map(|(setup, result)| match setup {
            Setup::Ready(peer)
                if BACK_TO_BACK.contains(&peer.name)
                    && peer.is_process()
                    && result.failure.is_none() =>
            {
                Some(peer)
            }
            _ => None,
        })
        .collect();
    let mut rows: Vec<BackToBack> = peers
        .iter()
        .map(|peer| BackToBack {
            name: peer.name,
            bursts: 0,
            samples_us: Vec::new(),
            loop_per_run_us: 0.0,
            failure: None,
        })
        .collect();
    let mut loop_time = vec![Duration::ZERO; peers.len()];
    let mut left = runs;
    let mut burst = 0;
    while left > 0 {
        let size = left.min(BURST);
        for ((peer, row), total) in peers.iter().zip(&mut rows).zip(&mut loop_time) {
            if row.failure.is_some() {
                continue;
            }
            match run_burst(peer, burst, size, &watchdog) {
                Ok((samples, wall)) => {
                    row.samples_us.extend(samples);
                    row.bursts += 1;
                    *total += wall;
                }
                Err(err) => row.failure = Some(chain(&err)),
            }
            std::thread::sleep(SETTLE);
        }
        left -= size;
        burst += 1;
    }
    for (row, total) in rows.iter_mut().zip(loop_time) {
        if !row.samples_us.is_empty() {
            row.loop_per_run_us = total.as_secs_f64() * 1e6 / row.samples_us.len() as f64;
        }
    }
    rows
}

/// One untimed run, then `size` timed runs with no pause; returns each run's time until it
/// returned (µs) and the wall time of the timed runs.
fn run_burst(
    peer: &Peer,
    burst: usize,
    size: usize,
    watchdog: &Watchdog,
) -> crate::error::Result<(Vec<f64>, Duration)> {
    let run = |i: usize| {
        let sample = peer.run_returned(&format!("b2b{burst}-{i}"), watchdog)?;
        peer.verify(&sample)?;
        Ok::<_, Error>(sample.wall.as_secs_f64() * 1e6)
    };
    run(size)?;
    let start = Instant::now();
    let samples = (0..size)
        .map(run)
        .collect::<crate::error::Result<Vec<f64>>>()?;
    Ok((samples, start.elapsed()))
}
