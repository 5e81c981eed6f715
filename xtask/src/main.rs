//! `cargo xtask`: builds, runs and tests flick. The only place that knows how guests are
//! compiled: freestanding `no_std` static ELFs for the host target, linked by
//! `kernel/link.ld` (see DESIGN.md).

mod bench;
mod containers;
mod guest;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::{Command, ExitCode};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test flick images")]
struct Cli {
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
    /// Measure cold starts of our VMM against its peers; report in target/bench/.
    Bench(bench::Bench),
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
    /// Build everything and run the whole test suite.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
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
            build_vmm()?;
            let built = guest::build(&images)?;
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
            build_vmm()?;
            let built = guest::build(std::slice::from_ref(&image))?;
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
        Task::Bench(args) => bench::run(args),
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
        Task::Test { args } => {
            build_vmm()?;
            guest::build(&[])?;
            let status = cargo()
                .args(["test", "--workspace", "--release", "--no-fail-fast"])
                .env("FLICK_VMM", vmm_path())
                .env("FLICK_IMAGES", guest::images_dir())
                .arg("--")
                .args(&args)
                .status()
                .context("cannot run cargo test")?;
            if !status.success() {
                bail!("tests failed");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
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
    let target_dir = project_root().join("target/vmm-static");
    let status = cargo()
        .args(["build", "--release", "--quiet", "--package", "vmm"])
        .args(["--target", guest::GUEST_TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Ctarget-feature=+crt-static\x1f-Crelocation-model=static",
        )
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("building the VMM failed");
    }
    let built = target_dir.join(guest::GUEST_TARGET).join("release/vmm");
    let dest = vmm_path();
    std::fs::create_dir_all(dest.parent().expect("target/release"))?;
    // Replace rather than overwrite: a running copy may hold the old file open.
    let staging = dest.with_extension("new");
    std::fs::copy(&built, &staging).with_context(|| format!("cannot copy {}", built.display()))?;
    std::fs::rename(&staging, &dest)
        .with_context(|| format!("cannot install {}", dest.display()))?;
    Ok(())
}
