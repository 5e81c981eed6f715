//! `cargo xtask`: builds, runs and tests flick. The front door for guests, which are
//! freestanding `no_std` static ELFs for the host target, built with the link setup of
//! `images/.cargo/config.toml` (see [`guest`] and docs/PLATFORM.md).

mod containers;
mod guest;
mod lint;
mod runner;
mod test;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test flick images")]
struct Cli {
    /// Hide cargo's build output (shown by default: progress on a terminal, one line per
    /// crate otherwise).
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the VMM (release) and images into target/images/<name>.
    Build {
        /// Images to build (default: all in images/).
        images: Vec<String>,
    },
    /// Build and boot an image (default: hello); exits with the guest's status.
    Run {
        /// The image to boot.
        #[arg(default_value = "hello")]
        image: String,
        /// Guest RAM, e.g. 16M.
        #[arg(long)]
        mem: Option<String>,
        /// Stop the guest after this long, e.g. 2s.
        #[arg(long)]
        timeout: Option<String>,
        /// Arguments for the app.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Measure cold starts of our VMM against its peers; report in target/bench/ (or --out).
    Bench(BenchArgs),
    /// Feed the ELF loader, hypercall decoder and exit handler N random and mutated inputs.
    Fuzz {
        /// Cases per target.
        #[arg(long, default_value_t = 1_000_000)]
        cases: u64,
    },
    /// Write an OCI image tarball of an image (for `docker load`, `ctr images import`).
    Oci(containers::Oci),
    /// Build flick-runtime, install it and register it with Docker; print containerd's and
    /// Kubernetes's entries.
    InstallRuntime(containers::InstallRuntime),
    /// Lint (as `lint` does), build everything, run the guest unit tests in microVMs and the
    /// whole host test suite; fails on any finding, any failed test, or when no test ran.
    Test {
        /// Arguments for every test binary (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// rustfmt and clippy (`-D warnings`) over the host workspace and the guest crates.
    Lint,
    /// Cargo's runner for guest crates (images/runner): boots an image, or runs a guest test
    /// binary one VM per test.
    #[command(hide = true)]
    Runner {
        /// The image cargo built.
        image: PathBuf,
        /// Its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

static QUIET: AtomicBool = AtomicBool::new(false);

/// Whether nested cargo builds run with `--quiet` (`cargo xtask --quiet ...`).
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    QUIET.store(cli.quiet, Ordering::Relaxed);
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Task::Build { images } => {
            // Images first: a wrong name fails in a second, not after the VMM's build.
            let built = guest::build(&images)?;
            build_vmm()?;
            for path in built {
                println!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Task::Run {
            image,
            mem,
            timeout,
            args,
        } => {
            let built = guest::build(std::slice::from_ref(&image))?;
            build_vmm()?;
            let mut cmd = Command::new(vmm_path());
            cmd.arg("run").arg(&built[0]);
            if let Some(mem) = mem {
                cmd.args(["--mem", &mem]);
            }
            if let Some(timeout) = timeout {
                cmd.args(["--timeout", &timeout]);
            }
            cmd.arg("--").args(&args);
            let status = cmd.status().context("cannot start the VMM")?;
            Ok(ExitCode::from(status.code().unwrap_or(1) as u8))
        }
        Task::Bench(args) => run_bench(args),
        Task::Oci(args) => containers::oci(args).map(|_| ExitCode::SUCCESS),
        Task::InstallRuntime(args) => {
            containers::install_runtime(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Fuzz { cases } => {
            let status = cargo()
                .args(["test", "--release", "--package", "tests", "--test", "fuzz"])
                .env("FLICK_FUZZ_CASES", cases.to_string())
                .status()
                .context("cannot run cargo test")?;
            if !status.success() {
                bail!("fuzzing found a failure");
            }
            Ok(ExitCode::SUCCESS)
        }
        Task::Test { args } => test::run(&args),
        Task::Lint => {
            lint::run()?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Runner { image, args } => runner::run(&image, &args),
    }
}

/// Arguments of `cargo xtask bench` (the `bench` crate does the work).
#[derive(clap::Args)]
struct BenchArgs {
    /// Timed runs per peer [default: 50].
    #[arg(long, conflicts_with = "quick")]
    runs: Option<usize>,
    /// 10 timed runs per peer instead of 50 (with --fleet: 50 instances, 100 resident).
    #[arg(long)]
    quick: bool,
    /// Only these (comma list of peers: ours, restore, floor, native, true, unshare, crun,
    /// runc, docker, qemu, serve, serve-process, native-pool; and back-to-back, sha256, io (the
    /// I/O row: sha256sum of 256 MiB through a volume and stdin against coreutils, crun and
    /// Docker); restore also measures the memory of VMs restored from one snapshot).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Bench this image (a name in images/ or a path) as "ours" instead of hello.
    #[arg(long)]
    image: Option<String>,
    /// The exit status that the image given with --image must end with.
    #[arg(long, default_value_t = 0, requires = "image")]
    expect_status: i32,
    /// Instead of cold starts: N instances per peer, 2 at a time (ours through `vmm fleet`),
    /// then the memory of 1000 resident instances per peer; report in fleet.md [default N:
    /// 200, with --quick 50]. --only takes: ours, native, unshare, crun, density.
    #[arg(long, value_name = "N", num_args = 0..=1, conflicts_with_all = ["runs", "image"])]
    fleet: Option<Option<usize>>,
    /// Instead of cold starts: networking, inside network namespaces it makes (time to first
    /// response against a native server, unshare, crun and Docker, wrk throughput with exits
    /// per request, a fleet's density on one bridge); report in network.md. Needs root, ip
    /// and wrk.
    #[arg(long, conflicts_with_all = ["fleet", "image", "only"])]
    network: bool,
    /// Where the report goes [default: target/bench].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Instead of cold starts: `docker run` and `ctr run` of our microVM (flick-runtime)
    /// against runc and crun starting a static hello, interleaved rounds [default: 20, with
    /// --quick 5, or --runs]; report in containers.md.
    #[arg(long, conflicts_with_all = ["fleet", "image", "only"])]
    containers: bool,
    /// Arguments for the image given with --image.
    #[arg(last = true, requires = "image")]
    args: Vec<String>,
}

/// Builds what the bench needs, then runs it.
fn run_bench(args: BenchArgs) -> Result<ExitCode> {
    let options = bench::Options {
        runs: args.runs,
        quick: args.quick,
        only: args.only,
        image: args.image,
        expect_status: args.expect_status,
        fleet: args.fleet,
        network: args.network,
        args: args.args,
        out: args
            .out
            .unwrap_or_else(|| project_root().join("target/bench")),
        containers: args.containers,
    };
    let needs = bench::needs(&options)?;
    let available = guest::all_images()?;
    let mut images = needs.images.clone();
    images.extend(
        needs
            .optional_images
            .iter()
            .filter(|i| available.contains(i))
            .cloned(),
    );
    if !images.is_empty() {
        guest::build(&images)?; // an empty list would build every image
    }
    build_vmm()?;
    let native_sha256 = needs
        .native_sha256
        .then(|| build_native_sha256().map_err(|e| format!("{e:#}")));
    let native_httpd = if needs.native_httpd {
        Some(build_native_httpd()?)
    } else {
        None
    };
    let flick_runtime = match needs.flick_runtime {
        true => Some(containers::runtime_for_bench(&options.out)?),
        false => None,
    };
    let built = bench::Built {
        vmm: vmm_path(),
        images_dir: guest::images_dir(),
        images,
        native_sha256,
        native_httpd,
        flick_runtime,
    };
    let ours_ok = bench::run(&options, &built)?;
    Ok(if ours_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Builds the native side of the bench's sha256 comparison (its own workspace, its own target
/// dir) and returns the binary.
fn build_native_sha256() -> Result<PathBuf> {
    let target_dir = project_root().join("target/bench-native");
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--manifest-path"])
        .arg(project_root().join("bench/native/sha256/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    if quiet() {
        cmd.arg("--quiet");
    }
    let status = cmd
        .status()
        .context("cannot run cargo for the native sha256")?;
    if !status.success() {
        bail!("building the native sha256 failed");
    }
    Ok(target_dir.join("release/sha256"))
}

/// Builds the native peer of the network section (`bench/native/httpd`) static and non-PIE,
/// as the VMM is built, and returns the binary.
fn build_native_httpd() -> Result<PathBuf> {
    let manifest = project_root().join("bench/native/httpd/Cargo.toml");
    build_static(
        &["--manifest-path", &manifest.to_string_lossy()],
        "bench-native",
        "native-httpd",
    )
    .context("building the native HTTP server failed")
}

/// `cargo build --release ARGS` as a static, non-PIE executable in `target/DIR`; the binary
/// `NAME` built.
fn build_static(args: &[&str], dir: &str, name: &str) -> Result<PathBuf> {
    let target_dir = project_root().join("target").join(dir);
    let mut cmd = cargo();
    cmd.args(["build", "--release"])
        .args(args)
        .args(["--target", guest::GUEST_TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Ctarget-feature=+crt-static\x1f-Crelocation-model=static",
        );
    if quiet() {
        cmd.arg("--quiet");
    }
    let status = cmd.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build {} failed", args.join(" "));
    }
    Ok(target_dir
        .join(guest::GUEST_TARGET)
        .join("release")
        .join(name))
}

/// The workspace root.
pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// A `cargo` command run from the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(project_root());
    cmd
}

/// Where `cargo xtask build` puts the VMM.
pub fn vmm_path() -> PathBuf {
    project_root().join("target/release/vmm")
}

/// Builds the VMM as a static, non-PIE executable and copies it to `target/release/vmm`.
///
/// Measured here: a dynamically linked VMM spends about 0.6 ms in the loader and in lazy
/// binding before and during argument parsing; static non-PIE needs no relocations at start.
pub fn build_vmm() -> Result<()> {
    let built = build_static(&["--package", "vmm"], "vmm-static", "vmm")
        .context("building the VMM failed")?;
    let dest = vmm_path();
    std::fs::create_dir_all(dest.parent().expect("target/release"))?;
    // Replace rather than overwrite: a running copy may hold the old file open.
    let staging = dest.with_extension("new");
    std::fs::copy(&built, &staging).with_context(|| format!("cannot copy {}", built.display()))?;
    std::fs::rename(&staging, &dest)
        .with_context(|| format!("cannot install {}", dest.display()))?;
    Ok(())
}
