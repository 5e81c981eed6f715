//! `cargo xtask bench`: cold-start latency and peak memory of our VMM against its peers
//! (a static native process, namespaces, OCI runtimes, Docker, QEMU microvm), measured in one
//! interleaved session, plus our boot's phase breakdown and a compute comparison. Owns the
//! session: which peers run, in what order, and where the report goes (`target/bench/`).

mod containers;
mod docker;
mod fleet;
mod hostmem;
mod machine;
mod measure;
mod native;
mod oci;
mod peers;
mod qemu;
mod report;
mod serve;
mod sha256;
mod snapmem;
mod stats;
mod svg;
mod timeline;

use crate::{build_vmm, guest, project_root};
use anyhow::{Context, Result, bail};
use peers::{Peer, PeerResult, Setup};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Cold starts per peer by default.
const DEFAULT_RUNS: usize = 50;
/// Cold starts per peer with `--quick`.
const QUICK_RUNS: usize = 10;
/// Untimed runs of ours with `--timeline=json` (at most; never more than the timed runs).
const TIMELINE_RUNS: usize = 10;
/// A pause after every run, so that what a peer leaves behind (Docker removing its container,
/// a runtime removing its cgroup) does not land in the next peer's run.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(20);
/// Untimed runs of each peer under `rss-probe`.
const RSS_PROBE_RUNS: usize = 3;

/// What `--only` accepts: the peers in report order, then the compute comparison.
const NAMES: [&str; 12] = [
    "ours",
    "restore",
    "serve",
    "serve-process",
    "native",
    "true",
    "unshare",
    "crun",
    "runc",
    "docker",
    "qemu",
    "sha256",
];

/// Arguments of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Bench {
    /// Cold starts per peer [default: 50].
    #[arg(long, conflicts_with = "quick")]
    runs: Option<usize>,
    /// 10 cold starts per peer instead of 50.
    #[arg(long)]
    quick: bool,
    /// Only these peers (comma list of: ours, restore, serve, serve-process, native, true,
    /// unshare, crun, runc, docker, qemu, sha256; restore also measures the memory of VMs
    /// restored from one snapshot).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Bench this image (a name in images/ or a path) as "ours" instead of hello.
    #[arg(long)]
    image: Option<String>,
    /// The exit status that the image given with --image must end with.
    #[arg(long, default_value_t = 0, requires = "image")]
    expect_status: i32,
    /// Instead of cold starts: N instances per peer, 2 at a time (ours through `vmm fleet`),
    /// then a density run of resident VMs; report in target/bench/fleet.md [default N: 200,
    /// with --quick 50]. --only takes: ours, native, unshare, crun, density.
    #[arg(long, value_name = "N", num_args = 0..=1, conflicts_with_all = ["runs", "image"])]
    fleet: Option<Option<usize>>,
    /// Instead of cold starts: the "containers" section, `docker run` and `ctr run` of our
    /// microVM (flick-runtime) against runc and crun starting a static hello; report in
    /// target/bench/containers/report.md [rounds: 20, with --quick 5, or --runs].
    #[arg(long, conflicts_with_all = ["fleet", "image"])]
    containers: bool,
    /// Arguments for the image given with --image.
    #[arg(last = true, requires = "image")]
    args: Vec<String>,
}

/// Where the bench builds its peers and writes its report.
pub fn bench_dir() -> PathBuf {
    project_root().join("target/bench")
}

/// Runs the whole bench and prints the Markdown table.
pub fn run(args: Bench) -> Result<ExitCode> {
    if args.containers {
        let rounds = match (args.runs, args.quick) {
            (Some(n), _) => n.max(1),
            (None, true) => containers::QUICK_ROUNDS,
            (None, false) => containers::DEFAULT_ROUNDS,
        };
        return containers::run(rounds);
    }
    if let Some(count) = args.fleet {
        let count = match (count, args.quick) {
            (Some(n), _) => n.max(1),
            (None, true) => fleet::QUICK_COUNT,
            (None, false) => fleet::DEFAULT_COUNT,
        };
        check_only(&args.only, &fleet::NAMES)?;
        let selected = |name: &str| args.only.is_empty() || args.only.iter().any(|n| n == name);
        return fleet::run(count, args.quick, &selected);
    }
    let runs = match (args.runs, args.quick) {
        (Some(runs), _) => runs.max(1),
        (None, true) => QUICK_RUNS,
        (None, false) => DEFAULT_RUNS,
    };
    check_only(&args.only, &NAMES)?;
    let dir = bench_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let selected = |name: &str| args.only.is_empty() || args.only.iter().any(|n| n == name);
    let want_sha = selected("sha256") && sha256::image_exists();

    let want_snapmem = selected("restore");
    let ours_image = build_ours(args.image.as_deref(), want_sha, want_snapmem)?;
    let ours = peers::Ours {
        image: &ours_image,
        args: &args.args,
        is_hello: args.image.is_none(),
        expect_status: args.expect_status,
    };
    let setups = peers::prepare(&dir, &ours, &selected);
    let results = measure_session(&setups, runs);
    let timeline = selected("ours")
        .then(|| timeline::collect(&ours_image, &args.args, runs.min(TIMELINE_RUNS), SETTLE));
    let sha = match (want_sha, selected("sha256")) {
        (true, _) => Some(sha256::compare(&dir)),
        (false, true) => Some(Err(anyhow::anyhow!("image sha256 not built yet"))),
        (false, false) => None,
    };
    drop(setups); // stops our servers and removes OCI state before writing the report
    let snapmem = want_snapmem.then(|| {
        let idle = guest::images_dir().join(snapmem::IMAGE);
        snapmem::measure(&dir, &idle)
    });

    let report = report::Report::new(runs, results, timeline, sha, snapmem);
    report.write(&dir)?;
    print!("{}", report.markdown());
    println!("\nReport: {}", dir.join("report.md").display());
    Ok(if report.ours_failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Refuses an `--only` name that is not in `names`.
fn check_only(only: &[String], names: &[&str]) -> Result<()> {
    match only.iter().find(|n| !names.contains(&n.as_str())) {
        Some(unknown) => bail!(
            "--only: no peer named '{unknown}' (peers: {})",
            names.join(", ")
        ),
        None => Ok(()),
    }
}

/// Builds the VMM and the image benched as "ours" (plus `sha256` and `idle` when wanted);
/// returns the image's path.
fn build_ours(image: Option<&str>, with_sha: bool, with_idle: bool) -> Result<PathBuf> {
    build_vmm()?;
    let path_given = image.filter(|i| i.contains('/') || Path::new(i).is_file());
    let mut names = Vec::new();
    if path_given.is_none() {
        names.push(image.unwrap_or("hello").to_owned());
    }
    if with_sha {
        names.push(sha256::IMAGE.to_owned());
    }
    if with_idle {
        names.push(snapmem::IMAGE.to_owned());
    }
    let built = if names.is_empty() {
        Vec::new() // guest::build(&[]) would build every image
    } else {
        guest::build(&names)?
    };
    match path_given {
        Some(path) => Ok(PathBuf::from(path)),
        None => built.into_iter().next().context("the image was not built"),
    }
}

/// Runs every ready peer once untimed (warm-up and verification), then `runs` rounds of
/// A B C A B C ..., so that drift of the machine hits all peers alike.
fn measure_session(setups: &[Setup], runs: usize) -> Vec<PeerResult> {
    let watchdog = measure::Watchdog::start(measure::RUN_TIMEOUT);
    let mut results: Vec<PeerResult> = setups.iter().map(PeerResult::from_setup).collect();
    let probe = native::build_rss_probe(&bench_dir());
    for (setup, result) in setups.iter().zip(results.iter_mut()) {
        if let Setup::Ready(peer) = setup {
            run_verified(peer, result, &watchdog, None);
            probe_rss(peer, result, probe.as_deref());
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
fn probe_rss(peer: &Peer, result: &mut PeerResult, probe: Result<&Path, &anyhow::Error>) {
    if !peer.is_process() {
        result.probe_note = Some("measured in-process: no process of its own".to_owned());
        return;
    }
    let probe = match probe {
        Ok(probe) if result.failure.is_none() => probe,
        Ok(_) => return,
        Err(err) => {
            result.probe_note = Some(format!("rss-probe: {err:#}"));
            return;
        }
    };
    for i in 0..RSS_PROBE_RUNS {
        let cmd = peer.command(&format!("rss{i}"));
        match measure::probe_rss(probe, &cmd, &peer.output_file) {
            Ok(kib) => result.probe_rss_kib.push(kib),
            Err(err) => result.probe_note = Some(format!("{err:#}")),
        }
    }
}

/// One run of `peer`, recorded in `result` when `round` is given (else a warm-up). A failed
/// start or verification marks the peer failed; a failed peer is not run again.
fn run_verified(
    peer: &Peer,
    result: &mut PeerResult,
    watchdog: &measure::Watchdog,
    round: Option<usize>,
) {
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
        Err(err) => result.failure = Some(format!("{err:#}")),
    }
    std::thread::sleep(SETTLE);
}
