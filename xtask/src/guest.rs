//! How guest images are compiled: the crates in `images/` (their own workspace), for the host
//! target, with their own target dir, `panic = "abort"`, and a static, non-PIE link through
//! `kernel/link.ld` without the C runtime.

use crate::{cargo, project_root};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;

/// The only target guests are built for; the VMM runs x86-64 guests.
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Where built images land.
pub fn images_dir() -> PathBuf {
    project_root().join("target/images")
}

fn guest_target_dir() -> PathBuf {
    project_root().join("target/guest")
}

/// The names of all images: the folders of `images/` that hold a crate.
pub fn all_images() -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(project_root().join("images")).context("cannot list images/")? {
        let entry = entry?;
        if entry.path().join("Cargo.toml").is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// The rustc flags of every guest crate.
fn guest_rustflags() -> String {
    let script = project_root().join("kernel/link.ld");
    [
        "-Crelocation-model=static".to_owned(),
        "-Cforce-frame-pointers=yes".to_owned(),
        "-Cforce-unwind-tables=yes".to_owned(),
        "-Clink-arg=-nostdlib".to_owned(),
        "-Clink-arg=-static".to_owned(),
        "-Clink-arg=-no-pie".to_owned(),
        "-Clink-arg=-Wl,--build-id=none".to_owned(),
        format!("-Clink-arg=-T{}", script.display()),
    ]
    .join("\x1f")
}

/// Builds `names` (all images when empty) and copies them to `target/images/`.
pub fn build(names: &[String]) -> Result<Vec<PathBuf>> {
    let known = all_images()?;
    let names = if names.is_empty() {
        known.clone()
    } else {
        names.to_vec()
    };
    for name in &names {
        if !known.contains(name) {
            bail!("no image named '{name}' (images: {})", known.join(", "));
        }
    }
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--quiet", "--target", GUEST_TARGET])
        .arg("--manifest-path")
        .arg(project_root().join("images/Cargo.toml"))
        .arg("--target-dir")
        .arg(guest_target_dir())
        .env_remove("RUSTFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", guest_rustflags());
    for name in &names {
        cmd.args(["--package", name]);
    }
    let status = cmd
        .status()
        .context("cannot run cargo for the guest images")?;
    if !status.success() {
        bail!("building images failed");
    }
    let out_dir = images_dir();
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let built_dir = guest_target_dir().join(GUEST_TARGET).join("release");
    names
        .iter()
        .map(|name| {
            let dest = out_dir.join(name);
            std::fs::copy(built_dir.join(name), &dest)
                .with_context(|| format!("cannot copy image {name} to {}", dest.display()))?;
            Ok(dest)
        })
        .collect()
}
