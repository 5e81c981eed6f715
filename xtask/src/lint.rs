//! `cargo xtask lint`, also the first step of `cargo xtask test`: rustfmt and clippy
//! (`--all-targets -- -D warnings`) over the host workspace and over the guest workspace
//! (`kernel` and the images, with their own link setup). Every check runs; any finding fails.

use crate::{cargo, guest};
use anyhow::{Context, Result, bail};
use std::process::Command;

/// One check: what it is called, and the command that runs it.
struct Check {
    name: &'static str,
    command: Command,
}

fn checks() -> Vec<Check> {
    let quiet: &[&str] = if crate::quiet() { &["--quiet"] } else { &[] };
    let clippy = ["--workspace", "--all-targets", "--", "-D", "warnings"];
    let mut host_fmt = cargo();
    host_fmt.args(["fmt", "--all", "--check"]);
    let mut guest_fmt = guest::guest_cargo();
    guest_fmt.args(["fmt", "--all", "--check"]);
    let mut host_clippy = cargo();
    host_clippy.arg("clippy").args(quiet).args(clippy);
    let mut guest_clippy = guest::guest_cargo();
    // All features: the runner's test subjects in `images/panic` are behind one.
    guest_clippy
        .args(["clippy", "--all-features"])
        .args(quiet)
        .args(clippy);
    vec![
        Check {
            name: "rustfmt, host workspace",
            command: host_fmt,
        },
        Check {
            name: "rustfmt, guest workspace (kernel, images)",
            command: guest_fmt,
        },
        Check {
            name: "clippy, host workspace",
            command: host_clippy,
        },
        Check {
            name: "clippy, guest workspace (kernel, images)",
            command: guest_clippy,
        },
    ]
}

/// Runs every check; fails naming those that found something.
pub fn run() -> Result<()> {
    let mut failed = Vec::new();
    for mut check in checks() {
        eprintln!("lint: {}", check.name);
        let status = check
            .command
            .status()
            .with_context(|| format!("cannot run {}", check.name))?;
        if !status.success() {
            failed.push(check.name);
        }
    }
    if !failed.is_empty() {
        bail!(
            "lint failed: {} (`cargo fmt --all` in the repository root and in images/ \
             formats everything)",
            failed.join("; ")
        );
    }
    Ok(())
}
