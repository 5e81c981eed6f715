//! How guest images are compiled: the crates of the guest workspace (`images/Cargo.toml`:
//! `kernel` and the images) are built by cargo run from `images/`, so that it reads
//! `images/.cargo/config.toml`, the one place that holds the link setup (target, target dir,
//! static non-PIE link through `kernel/link.ld` without the C runtime, the runner). A plain
//! `cargo build --release` in `images/` produces the very same files.

use crate::{cargo, project_root, quiet};
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The only target guests are built for; the VMM runs x86-64 guests.
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Where built images land.
pub fn images_dir() -> PathBuf {
    project_root().join("target/images")
}

/// The guest workspace's folder.
pub fn guest_workspace() -> PathBuf {
    project_root().join("images")
}

/// The target dir that `images/.cargo/config.toml` names.
fn guest_target_dir() -> PathBuf {
    project_root().join("target/guest")
}

/// A `cargo` command for the guest workspace: run from `images/` (cargo reads its config from
/// the working directory), with any flag variables of the caller removed, since they would
/// replace the config's link setup.
pub fn guest_cargo() -> Command {
    let mut cmd = cargo();
    cmd.current_dir(guest_workspace());
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

#[derive(Deserialize)]
struct GuestManifest {
    workspace: GuestWorkspace,
}

#[derive(Deserialize)]
struct GuestWorkspace {
    members: Vec<String>,
}

/// The `members` of `images/Cargo.toml`.
fn workspace_members() -> Result<Vec<String>> {
    let path = guest_workspace().join("Cargo.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let manifest: GuestManifest =
        toml::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))?;
    Ok(manifest.workspace.members)
}

/// The folders of `images/` that hold a crate.
fn image_folders(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        if entry.path().join("Cargo.toml").is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Checks that every folder is a workspace member: cargo's own error for one that is not
/// ("did not match any packages", or a hint about `package.workspace`) misleads.
fn check_members(folders: &[String], members: &[String]) -> Result<()> {
    let missing: Vec<&String> = folders.iter().filter(|f| !members.contains(f)).collect();
    match missing.as_slice() {
        [] => Ok(()),
        [one] => bail!(
            "images/{one} is not in the guest workspace: add \"{one}\" to members in \
             images/Cargo.toml"
        ),
        many => {
            let folders: Vec<String> = many.iter().map(|m| format!("images/{m}")).collect();
            let quoted: Vec<String> = many.iter().map(|m| format!("\"{m}\"")).collect();
            bail!(
                "{} are not in the guest workspace: add {} to members in images/Cargo.toml",
                folders.join(", "),
                quoted.join(", ")
            )
        }
    }
}

/// The names of all images: the folders of `images/` that hold a crate, each of which must be
/// listed in `images/Cargo.toml`.
pub fn all_images() -> Result<Vec<String>> {
    let folders = image_folders(&guest_workspace())?;
    check_members(&folders, &workspace_members()?)?;
    Ok(folders)
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
    let mut cmd = guest_cargo();
    cmd.args(["build", "--release"]);
    if quiet() {
        cmd.arg("--quiet");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn test_check_members_all_listed_passes() {
        let members = strings(&["../kernel", "hello", "panic"]);
        assert!(check_members(&strings(&["hello", "panic"]), &members).is_ok());
    }

    #[test]
    fn test_check_members_unlisted_folder_says_add_it_to_members() {
        let err = check_members(&strings(&["hello", "mine"]), &strings(&["hello"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "images/mine is not in the guest workspace: add \"mine\" to members in \
             images/Cargo.toml"
        );
    }

    #[test]
    fn test_check_members_two_unlisted_folders_names_both() {
        let err = check_members(&strings(&["a", "b"]), &[]).unwrap_err();
        assert!(
            err.to_string().contains("add \"a\", \"b\" to members"),
            "{err}"
        );
    }

    #[test]
    fn test_workspace_members_lists_the_kernel_and_hello() {
        let members = workspace_members().unwrap();
        assert!(members.contains(&"../kernel".to_owned()), "{members:?}");
        assert!(members.contains(&"hello".to_owned()), "{members:?}");
    }
}
