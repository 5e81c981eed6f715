//! The bench of flick: cold-start latency (until the command returns and until its work is
//! done), peak memory, phases and back-to-back runs of our VMM against its peers (the floor of a
//! KVM boot, a static native process, namespaces, OCI runtimes, Docker, QEMU microvm; warm
//! requests to `vmm serve` against a warm pool of native processes), measured in one
//! interleaved session with every run verified; `--fleet`, launch rates and memory per
//! resident instance; and `--containers`, our microVM through Docker and containerd
//! (flick-runtime) against runc and crun starting a process. The xtask is its front door: it asks [`needs`] what to build, builds it
//! (the VMM, images, the native sha256), and calls [`run`] with the paths. The bench never
//! calls cargo; it compiles its own small C peers with `cc`.
//!
//! Layers, each using only those before it: [`contracts`] (what it shares with the VMM) and
//! [`error`]; [`measure`] (runs, statistics, timelines, host memory); [`peers`] (what runs);
//! [`session`], [`fleet`], [`snapmem`], [`sha256`], [`io`] (what is measured when); [`report`].

mod containers;
mod contracts;
mod error;
mod fleet;
mod io;
mod measure;
mod network;
mod peers;
mod report;
mod session;
mod sha256;
mod snapmem;

pub use error::{Error, Result, chain};

use measure::timeline;
use peers::ours::Ours;
use peers::peer::Setup;
use std::path::{Path, PathBuf};

/// Timed runs per peer by default.
const DEFAULT_RUNS: usize = 50;
/// Timed runs per peer with `--quick`.
const QUICK_RUNS: usize = 10;
/// Untimed runs of ours (and of the floor) with a timeline (at most the timed runs).
const TIMELINE_RUNS: usize = 10;
/// What `--only` accepts besides the peers: the back-to-back bursts, the compute comparison and
/// the I/O row.
const EXTRAS: [&str; 3] = ["back-to-back", "sha256", "io"];
/// Timed runs of each I/O peer (each hashes 256 MiB), by default and with `--quick`.
const IO_RUNS: (usize, usize) = (5, 2);
/// The image benched as ours by default.
const HELLO: &str = "hello";

/// What `cargo xtask bench` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Timed runs per peer (default 50, with `quick` 10).
    pub runs: Option<usize>,
    /// Fewer runs and instances.
    pub quick: bool,
    /// Only these peers (and extras); empty: all.
    pub only: Vec<String>,
    /// The image benched as ours (a name in `images/` or a path) instead of hello.
    pub image: Option<String>,
    /// The exit status that `image` must end with.
    pub expect_status: i32,
    /// The fleet bench instead, with this many instances per peer (`Some(None)`: default).
    pub fleet: Option<Option<usize>>,
    /// The network section instead (time to first response, throughput, density): inside
    /// network namespaces it makes; needs root, `ip` and `wrk`.
    pub network: bool,
    /// Arguments for `image`.
    pub args: Vec<String>,
    /// Where the report and the bench's scratch files go.
    pub out: PathBuf,
    /// The containers section instead (`docker run`/`ctr run` with flick-runtime, runc, crun).
    pub containers: bool,
}

/// What the bench needs built before [`run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    /// Images (names in `images/`) it boots.
    pub images: Vec<String>,
    /// Images it uses when they exist in `images/` (the compute comparison's).
    pub optional_images: Vec<String>,
    /// Whether it compares with the native sha256 program (`bench/native/sha256`).
    pub native_sha256: bool,
    /// Whether it needs the native HTTP server (`bench/native/httpd`, built static).
    pub native_httpd: bool,
    /// Whether it runs flick-runtime (and `flick/hello` as an OCI tarball).
    pub flick_runtime: bool,
}

/// What the xtask built for the bench.
#[derive(Debug, Clone)]
pub struct Built {
    /// The VMM binary.
    pub vmm: PathBuf,
    /// Where the images are.
    pub images_dir: PathBuf,
    /// The images built for this run (names).
    pub images: Vec<String>,
    /// The native sha256 program, or why it is missing (when it was needed).
    pub native_sha256: Option<std::result::Result<PathBuf, String>>,
    /// The native HTTP server (when it was needed).
    pub native_httpd: Option<PathBuf>,
    /// flick-runtime and `flick/hello:latest` as an OCI tarball (when they were needed).
    pub flick_runtime: Option<RuntimeBuilt>,
}

/// What the xtask built for the containers section.
#[derive(Debug, Clone)]
pub struct RuntimeBuilt {
    /// The `flick-runtime` binary.
    pub runtime: PathBuf,
    /// `flick/hello:latest` as an OCI image tarball (`cargo xtask oci hello`).
    pub hello_tarball: PathBuf,
}

/// Checks `options` and says what to build.
pub fn needs(options: &Options) -> Result<Needs> {
    if options.network {
        return Ok(Needs {
            images: vec![network::IMAGE.to_owned()],
            optional_images: Vec::new(),
            native_sha256: false,
            native_httpd: true,
            flick_runtime: false,
        });
    }
    if options.containers {
        return Ok(Needs {
            images: vec![HELLO.to_owned()],
            optional_images: Vec::new(),
            native_sha256: false,
            native_httpd: false,
            flick_runtime: true,
        });
    }
    if options.fleet.is_some() {
        check_only(&options.only, &fleet::NAMES)?;
        return Ok(Needs {
            images: vec![HELLO.to_owned(), fleet::IDLE.to_owned()],
            optional_images: Vec::new(),
            native_sha256: false,
            native_httpd: false,
            flick_runtime: false,
        });
    }
    check_only(&options.only, &cold_names())?;
    let selected = |name: &str| is_selected(&options.only, name);
    let mut images = Vec::new();
    if image_path(options.image.as_deref()).is_none() {
        images.push(options.image.clone().unwrap_or_else(|| HELLO.to_owned()));
    }
    if selected("restore") {
        images.push(snapmem::IMAGE.to_owned());
    }
    if selected("io") {
        images.push(io::IMAGE.to_owned());
    }
    images.dedup();
    let want_sha = selected("sha256");
    Ok(Needs {
        images,
        optional_images: want_sha
            .then(|| sha256::IMAGE.to_owned())
            .into_iter()
            .collect(),
        native_sha256: want_sha,
        native_httpd: false,
        flick_runtime: false,
    })
}

/// Runs the bench asked for, prints its Markdown report and writes the report into
/// `options.out`. Returns whether our own VMM passed every run (the bench fails otherwise).
pub fn run(options: &Options, built: &Built) -> Result<bool> {
    let dir = &options.out;
    std::fs::create_dir_all(dir)
        .map_err(error::Error::io(format!("cannot create {}", dir.display())))?;
    if options.network {
        return run_network(options, built);
    }
    if options.containers {
        return run_containers(options, built);
    }
    match options.fleet {
        Some(count) => run_fleet(options, built, count),
        None => run_cold(options, built),
    }
}

fn run_network(options: &Options, built: &Built) -> Result<bool> {
    let native = built
        .native_httpd
        .as_deref()
        .ok_or_else(|| Error::Check("the native HTTP server was not built".to_owned()))?;
    let httpd = built.images_dir.join(network::IMAGE);
    let plan = network::Plan {
        vmm: &built.vmm,
        httpd: &httpd,
        native,
        runs: options.runs.unwrap_or(if options.quick {
            network::QUICK_RUNS
        } else {
            network::DEFAULT_RUNS
        }),
        load: if options.quick {
            network::QUICK_LOAD
        } else {
            network::DEFAULT_LOAD
        },
        fleet: if options.quick {
            network::QUICK_FLEET
        } else {
            network::DEFAULT_FLEET
        },
        dir: &options.out,
    };
    let md = network::run(&plan)?;
    print!("{md}");
    let out = options.out.join("network.md");
    std::fs::write(&out, &md).map_err(Error::io(format!("cannot write {}", out.display())))?;
    println!("\nReport: {}", out.display());
    Ok(true)
}

fn run_containers(options: &Options, built: &Built) -> Result<bool> {
    let Some(runtime) = &built.flick_runtime else {
        return Err(Error::Check("flick-runtime was not built".to_owned()));
    };
    let rounds = match (options.runs, options.quick) {
        (Some(n), _) => n.max(1),
        (None, true) => containers::QUICK_ROUNDS,
        (None, false) => containers::DEFAULT_ROUNDS,
    };
    containers::run(&containers::Plan {
        runtime: &runtime.runtime,
        hello_tarball: &runtime.hello_tarball,
        dir: &options.out,
        rounds,
    })
}

fn run_fleet(options: &Options, built: &Built, count: Option<usize>) -> Result<bool> {
    let count = match (count, options.quick) {
        (Some(n), _) => n.max(1),
        (None, true) => fleet::QUICK_COUNT,
        (None, false) => fleet::DEFAULT_COUNT,
    };
    let resident = if options.quick {
        fleet::QUICK_RESIDENT_COUNT
    } else {
        fleet::RESIDENT_COUNT
    };
    let (hello, idle) = (
        built.images_dir.join(HELLO),
        built.images_dir.join(fleet::IDLE),
    );
    let plan = fleet::Plan {
        vmm: &built.vmm,
        hello: &hello,
        idle: &idle,
        dir: &options.out,
        count,
        resident,
    };
    let bench = fleet::run(&plan, &|name| is_selected(&options.only, name));
    let md = report::write::fleet(&bench, &options.out)?;
    print!("{md}");
    println!("\nReport: {}", options.out.join("fleet.md").display());
    Ok(!bench
        .rows
        .iter()
        .any(|r| r.name == "ours" && r.status != "ok"))
}

fn run_cold(options: &Options, built: &Built) -> Result<bool> {
    let runs = match (options.runs, options.quick) {
        (Some(runs), _) => runs.max(1),
        (None, true) => QUICK_RUNS,
        (None, false) => DEFAULT_RUNS,
    };
    let dir = options.out.as_path();
    let selected = |name: &str| is_selected(&options.only, name);
    let image = match image_path(options.image.as_deref()) {
        Some(path) => path,
        None => built
            .images_dir
            .join(options.image.as_deref().unwrap_or(HELLO)),
    };
    let ours = Ours {
        vmm: &built.vmm,
        image: &image,
        args: &options.args,
        is_hello: options.image.is_none(),
        expect_status: options.expect_status,
    };
    let hello = if peers::NEED_HELLO.iter().any(|n| selected(n)) {
        peers::native::build_hello(dir)
    } else {
        Err(Error::Check("no peer runs the static hello".to_owned()))
    };
    let setups = peers::prepare(dir, &ours, hello.as_deref(), &selected);
    let probe = peers::native::build_rss_probe(dir);
    let mut results = session::measure(&setups, runs, probe.as_deref());
    check_serve_reused(dir, &mut results);
    let back_to_back = if selected("back-to-back") {
        session::back_to_back(&setups, &results, runs)
    } else {
        Vec::new()
    };
    let timeline_runs = runs.min(TIMELINE_RUNS);
    let timeline = selected("ours")
        .then(|| timeline::collect(&|| ours.timeline_command(), timeline_runs, session::SETTLE));
    let floor_timeline = floor_program(&setups).map(|floor| {
        let command = || peers::floor::timeline_command(floor);
        timeline::collect(&command, timeline_runs, session::SETTLE)
    });
    let sha256 = selected("sha256").then(|| compare_sha256(built));
    drop(setups); // stops the servers and removes OCI state before the memory runs
    let snapshot_memory = selected("restore")
        .then(|| snapmem::measure(&built.vmm, dir, &built.images_dir.join(snapmem::IMAGE)));
    let io = selected("io").then(|| {
        let plan = io::Plan {
            vmm: &built.vmm,
            image: &built.images_dir.join(io::IMAGE),
            dir,
            mib: io::MIB,
            runs: if options.quick { IO_RUNS.1 } else { IO_RUNS.0 },
        };
        io::measure(&plan).map_err(Error::Check)
    });

    let report = report::Report::new(report::Measured {
        runs_per_peer: runs,
        settle_ms: u64::try_from(session::SETTLE.as_millis()).unwrap_or(u64::MAX),
        rss_probe_runs: session::RSS_PROBE_RUNS,
        results,
        back_to_back,
        timeline,
        floor_timeline,
        sha256,
        snapshot_memory,
        io,
    });
    let md = report::write::cold(&report, dir)?;
    print!("{md}");
    println!("\nReport: {}", dir.join("report.md").display());
    Ok(!report.ours_failed())
}

/// The floor's program, when the floor is a ready peer.
fn floor_program(setups: &[Setup]) -> Option<&Path> {
    setups.iter().find_map(|s| match s {
        Setup::Ready(peer) if peer.name == "floor" => Some(peer.program.as_path()),
        _ => None,
    })
}

fn compare_sha256(built: &Built) -> Result<sha256::Comparison> {
    if !built.images.iter().any(|i| i == sha256::IMAGE) {
        return Err(Error::Check(format!(
            "image {} not built (no images/{}/)",
            sha256::IMAGE,
            sha256::IMAGE
        )));
    }
    match &built.native_sha256 {
        Some(Ok(native)) => {
            sha256::compare(&built.vmm, &built.images_dir.join(sha256::IMAGE), native)
        }
        Some(Err(why)) => Err(Error::Check(format!("native sha256: {why}"))),
        None => Err(Error::Check("the native sha256 was not built".to_owned())),
    }
}

/// The `serve` row measures reused VMs only if the server reused them: its log says so per
/// request ("reused after N"). A server that could not reuse (a low `RLIMIT_MEMLOCK`, say)
/// would measure fresh VMs under the reuse row's name, so that row fails instead; otherwise
/// its description says how many requests ran in a reused VM.
fn check_serve_reused(dir: &std::path::Path, results: &mut [peers::peer::PeerResult]) {
    let Some(serve) = results
        .iter_mut()
        .find(|r| r.name == "serve" && r.failure.is_none() && !r.samples_us.is_empty())
    else {
        return;
    };
    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default();
    let requests = log.lines().filter(|l| l.contains("exit status")).count();
    let reused = log.lines().filter(|l| l.contains("(reused after")).count();
    if reused == 0 {
        serve.failure = Some(format!(
            "the server reused no VM in {requests} requests (see serve.log): this row would \
             measure fresh VMs"
        ));
    } else {
        serve.what.push_str(&format!(
            "; {reused} of {requests} requests ran in a reused VM"
        ));
    }
}

/// Every name `--only` accepts for the cold-start bench.
fn cold_names() -> Vec<&'static str> {
    peers::COLD
        .into_iter()
        .chain(peers::WARM)
        .chain(EXTRAS)
        .collect()
}

/// `image` when it names a file rather than an image in `images/`.
fn image_path(image: Option<&str>) -> Option<PathBuf> {
    image
        .filter(|i| i.contains('/') || Path::new(i).is_file())
        .map(PathBuf::from)
}

fn is_selected(only: &[String], name: &str) -> bool {
    only.is_empty() || only.iter().any(|n| n == name)
}

/// Refuses an `--only` name that is not in `names`.
fn check_only(only: &[String], names: &[&str]) -> Result<()> {
    match only.iter().find(|n| !names.contains(&n.as_str())) {
        Some(unknown) => Err(Error::Check(format!(
            "--only: no peer named '{unknown}' (peers: {})",
            names.join(", ")
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(only: &[&str]) -> Options {
        Options {
            runs: None,
            quick: true,
            only: only.iter().map(|s| (*s).to_owned()).collect(),
            image: None,
            expect_status: 0,
            fleet: None,
            network: false,
            args: Vec::new(),
            out: PathBuf::from("/nonexistent"),
            containers: false,
        }
    }

    #[test]
    fn test_needs_network_is_httpd_and_the_native_server() {
        let needs = needs(&Options {
            network: true,
            ..options(&[])
        })
        .unwrap();
        assert_eq!(needs.images, ["httpd"]);
        assert!(needs.native_httpd && !needs.native_sha256);
    }

    #[test]
    fn test_needs_ours_alone_is_hello_only() {
        let needs = needs(&options(&["ours"])).unwrap();
        assert_eq!(needs.images, ["hello"]);
        assert!(!needs.native_sha256);
    }

    #[test]
    fn test_needs_io_builds_the_sha256sum_image() {
        let needs = needs(&options(&["io"])).unwrap();
        assert!(needs.images.iter().any(|i| i == io::IMAGE), "{needs:?}");
        assert!(!needs.native_sha256);
    }

    #[test]
    fn test_needs_restore_adds_idle_and_sha256_the_native_program() {
        let needs = needs(&options(&["restore", "sha256"])).unwrap();
        assert_eq!(needs.images, ["hello", "idle"]);
        assert_eq!(needs.optional_images, ["sha256"]);
        assert!(needs.native_sha256);
    }

    #[test]
    fn test_needs_unknown_peer_is_refused() {
        let err = needs(&options(&["nope"])).unwrap_err();
        assert!(err.to_string().contains("no peer named 'nope'"), "{err}");
    }

    #[test]
    fn test_needs_fleet_takes_fleet_names() {
        let mut opts = options(&["density"]);
        opts.fleet = Some(None);
        assert_eq!(needs(&opts).unwrap().images, ["hello", "idle"]);
        opts.only = vec!["serve".to_owned()];
        assert!(needs(&opts).is_err());
    }
}
