//! The compute comparison: the guest image `sha256` against a native build of the same
//! algorithm (`bench/native/sha256`, built by the xtask), both hashing the same generated data;
//! reports each side's MiB/s and checks that the digests agree.

use crate::contracts::median;
use crate::error::{Context, Error, Result};
use serde::Serialize;
use std::path::Path;
use std::process::{Command, Stdio};

/// The guest image's name.
pub(crate) const IMAGE: &str = "sha256";
/// How much data each run hashes.
const MIB: u64 = 64;
/// Runs of each side (interleaved); the best throughput counts, as the run that the rest of the
/// machine disturbed least.
pub(crate) const RUNS: usize = 7;

/// Guest against native.
#[derive(Debug, Serialize)]
pub(crate) struct Comparison {
    /// Data hashed per run.
    pub(crate) mib: u64,
    /// Best guest throughput, MiB/s.
    pub(crate) guest_mib_s: f64,
    /// Best native throughput, MiB/s.
    pub(crate) native_mib_s: f64,
    /// guest / native, of the best runs.
    pub(crate) ratio: f64,
    /// Median guest throughput, MiB/s.
    pub(crate) guest_median_mib_s: f64,
    /// Median native throughput, MiB/s.
    pub(crate) native_median_mib_s: f64,
    /// The digest (both sides printed it).
    pub(crate) digest: String,
}

/// What one run printed: the digest and the time it reported.
#[derive(Debug, PartialEq)]
struct Output {
    digest: String,
    ns: u64,
}

/// Runs the guest image `image` under `vmm` and the native program `native` [`RUNS`] times
/// each, interleaved, and compares.
pub(crate) fn compare(vmm: &Path, image: &Path, native: &Path) -> Result<Comparison> {
    let mib = MIB.to_string();
    let (mut guest_rates, mut native_rates) = (Vec::new(), Vec::new());
    let mut digests = None;
    for _ in 0..RUNS {
        let guest = run(Command::new(vmm).arg("run").arg(image).args(["--", &mib]))
            .context("guest sha256")?;
        let host = run(Command::new(native).arg(&mib)).context("native sha256")?;
        guest_rates.push(rate(&guest));
        native_rates.push(rate(&host));
        digests = Some((guest.digest, host.digest));
    }
    let (guest_digest, native_digest) =
        digests.ok_or_else(|| Error::Check("no runs".to_owned()))?;
    if guest_digest != native_digest {
        return Err(Error::Check(format!(
            "digests differ: guest {guest_digest}, native {native_digest}"
        )));
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

fn run(cmd: &mut Command) -> Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(Error::io(format!("cannot start {program}")))?;
    if !output.status.success() {
        return Err(Error::tool(program, output.status, &output.stderr));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    parse(&text).ok_or_else(|| Error::Check(format!("unexpected output: {}", text.trim())))
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
