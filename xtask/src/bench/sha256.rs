//! The compute comparison: the guest image `sha256` against a native build of the same
//! algorithm (`xtask/bench-native/sha256`), both hashing the same generated data; reports
//! each side's MiB/s and checks that the digests agree.

use super::stats::median;
use crate::{cargo, project_root, vmm_path};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The guest image's name.
pub const IMAGE: &str = "sha256";
/// How much data each run hashes.
const MIB: u64 = 64;
/// Runs of each side (interleaved); the best throughput counts, as the run that the rest of the
/// machine disturbed least.
pub const RUNS: usize = 7;

/// Guest against native.
#[derive(Debug, Serialize)]
pub struct Comparison {
    /// Data hashed per run.
    pub mib: u64,
    /// Best guest throughput, MiB/s.
    pub guest_mib_s: f64,
    /// Best native throughput, MiB/s.
    pub native_mib_s: f64,
    /// guest / native, of the best runs.
    pub ratio: f64,
    /// Median guest throughput, MiB/s.
    pub guest_median_mib_s: f64,
    /// Median native throughput, MiB/s.
    pub native_median_mib_s: f64,
    /// The digest (both sides printed it).
    pub digest: String,
}

/// What one run printed: the digest and the time it reported.
#[derive(Debug, PartialEq)]
struct Output {
    digest: String,
    ns: u64,
}

/// Whether the lead's guest image exists yet.
pub fn image_exists() -> bool {
    project_root()
        .join("images")
        .join(IMAGE)
        .join("Cargo.toml")
        .is_file()
}

/// Builds the native side, runs both `RUNS` times and compares.
pub fn compare(dir: &Path) -> Result<Comparison> {
    let native = build_native(dir)?;
    let image = crate::guest::images_dir().join(IMAGE);
    let mib = MIB.to_string();
    let (mut guest_rates, mut native_rates) = (Vec::new(), Vec::new());
    let mut digests = None;
    for _ in 0..RUNS {
        let guest = run(Command::new(vmm_path())
            .arg("run")
            .arg(&image)
            .args(["--", &mib]))
        .context("guest sha256")?;
        let host = run(Command::new(&native).arg(&mib)).context("native sha256")?;
        guest_rates.push(rate(&guest));
        native_rates.push(rate(&host));
        digests = Some((guest.digest, host.digest));
    }
    let (guest_digest, native_digest) = digests.context("no runs")?;
    if guest_digest != native_digest {
        bail!("digests differ: guest {guest_digest}, native {native_digest}");
    }
    let best = |rates: &[f64]| rates.iter().copied().fold(0.0, f64::max);
    let (guest_mib_s, native_mib_s) = (best(&guest_rates), best(&native_rates));
    Ok(Comparison {
        mib: MIB,
        guest_mib_s,
        native_mib_s,
        ratio: guest_mib_s / native_mib_s,
        guest_median_mib_s: median(&guest_rates).unwrap_or(0.0),
        native_median_mib_s: median(&native_rates).unwrap_or(0.0),
        digest: guest_digest,
    })
}

fn rate(output: &Output) -> f64 {
    MIB as f64 / (output.ns.max(1) as f64 / 1e9)
}

/// Builds the native crate into `dir/native-target` and returns the binary.
fn build_native(dir: &Path) -> Result<PathBuf> {
    let target_dir = dir.join("native-target");
    let manifest = project_root().join("xtask/bench-native/sha256/Cargo.toml");
    let status = cargo()
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .context("cannot run cargo for the native sha256")?;
    if !status.success() {
        bail!("building the native sha256 failed");
    }
    Ok(target_dir.join("release").join(IMAGE))
}

fn run(cmd: &mut Command) -> Result<Output> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "{}; stderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse(&text).with_context(|| format!("unexpected output: {}", text.trim()))
}

/// Finds the digest line (64 hex digits) and the `<N> MiB in <ns> ns` line.
fn parse(text: &str) -> Option<Output> {
    let digest = text
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit()))?;
    let ns = text.lines().find_map(|l| {
        let (_, rest) = l.trim().split_once(" MiB in ")?;
        rest.strip_suffix(" ns")?.trim().parse().ok()
    })?;
    Some(Output {
        digest: digest.to_ascii_lowercase(),
        ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_two_lines_gives_digest_and_time() {
        let digest = "ab".repeat(32);
        let out = parse(&format!("{digest}\n64 MiB in 123456 ns\n")).unwrap();
        assert_eq!(out, Output { digest, ns: 123456 });
    }

    #[test]
    fn test_parse_missing_time_is_none() {
        assert_eq!(parse(&"ab".repeat(32)), None);
    }
}
