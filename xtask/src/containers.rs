//! `cargo xtask oci IMAGE` (an OCI image tarball of one flick image, for `docker load` and
//! `ctr images import`) and `cargo xtask install-runtime` (the runtime binary installed and
//! registered with Docker; containerd's and Kubernetes's entries printed). The formats live in
//! the `flick-runtime` crate; this is the front door.

use crate::{cargo, guest, project_root};
use anyhow::{Context, Result, bail};
use flick_runtime::layout::{self, ImageSpec};
use std::path::{Path, PathBuf};

/// Arguments of `cargo xtask oci`.
#[derive(clap::Args)]
pub struct Oci {
    /// The images (names in images/); each becomes `flick/NAME:latest`.
    #[arg(required = true)]
    images: Vec<String>,
    /// Where the tarballs go (`NAME.tar` each) [default: target/oci].
    #[arg(long)]
    output_dir: Option<PathBuf>,
}

/// Arguments of `cargo xtask install-runtime`.
#[derive(clap::Args)]
pub struct InstallRuntime {
    /// Where the binary goes.
    #[arg(long, default_value = "/usr/local/bin")]
    prefix: PathBuf,
    /// The runtime's name in Docker (`docker run --runtime=NAME`).
    #[arg(long, default_value = "flick")]
    name: String,
    /// Docker's daemon configuration to add the runtime to.
    #[arg(long, default_value = "/etc/docker/daemon.json")]
    daemon_json: PathBuf,
    /// Leave Docker's configuration alone (only install the binary and print the entries).
    #[arg(long)]
    no_docker: bool,
    /// Install this runtime binary instead of building one.
    #[arg(long)]
    binary: Option<PathBuf>,
}

/// Where `cargo xtask oci` writes by default.
pub fn oci_dir() -> PathBuf {
    project_root().join("target/oci")
}

/// Builds the images and writes their OCI tarballs; returns the tarballs' paths.
pub fn oci(args: Oci) -> Result<Vec<PathBuf>> {
    let built = guest::build(&args.images)?;
    let dir = args.output_dir.unwrap_or_else(oci_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let created = flick_runtime::timefmt::rfc3339(std::time::SystemTime::now());
    let mut tarballs = Vec::new();
    for (name, image_file) in args.images.iter().zip(built) {
        let output = dir.join(format!("{name}.tar"));
        let spec = ImageSpec {
            image_file,
            repository: format!("flick/{name}"),
            tag: "latest".to_owned(),
            created: created.clone(),
        };
        let written = layout::write_tarball(&spec, &output)?;
        println!(
            "{}: {} ({}; the image file {}, its layer {})",
            written.reference,
            output.display(),
            kib(written.tarball_size),
            kib(written.image_file_size),
            kib(written.layer_size),
        );
        tarballs.push(output);
    }
    println!("load with: docker load -i FILE   or: ctr images import FILE");
    Ok(tarballs)
}

fn kib(bytes: u64) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

/// Builds the runtime, installs it under `prefix`, registers it with Docker, and prints the
/// containerd and Kubernetes entries.
pub fn install_runtime(args: InstallRuntime) -> Result<()> {
    let built = match args.binary {
        Some(binary) => binary,
        None => build_runtime()?,
    };
    std::fs::create_dir_all(&args.prefix)
        .with_context(|| format!("cannot create {}", args.prefix.display()))?;
    let dest = args.prefix.join("flick-runtime");
    let staging = args.prefix.join(".flick-runtime.new");
    std::fs::copy(&built, &staging)
        .with_context(|| format!("cannot copy the runtime to {}", staging.display()))?;
    std::fs::rename(&staging, &dest)
        .with_context(|| format!("cannot install {}", dest.display()))?;
    println!("installed {}", dest.display());
    if !args.no_docker {
        add_docker_runtime(&args.daemon_json, &args.name, &dest)?;
        println!(
            "registered runtime '{}' in {} (reload dockerd: kill -HUP $(pidof dockerd)); \
             then: docker run --rm --runtime={} flick/hello",
            args.name,
            args.daemon_json.display(),
            args.name
        );
    }
    print!("{}", containerd_entries(&args.name, &dest));
    Ok(())
}

/// Builds flick-runtime and writes `flick/hello:latest` (already built) as an OCI tarball
/// under `out`, for `cargo xtask bench --containers`.
pub fn runtime_for_bench(out: &Path) -> Result<bench::RuntimeBuilt> {
    let runtime = build_runtime()?;
    let dir = out.join("containers");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let hello_tarball = dir.join("flick-hello.tar");
    let spec = ImageSpec {
        image_file: guest::images_dir().join("hello"),
        repository: "flick/hello".to_owned(),
        tag: "latest".to_owned(),
        created: flick_runtime::timefmt::rfc3339(std::time::SystemTime::now()),
    };
    layout::write_tarball(&spec, &hello_tarball)?;
    Ok(bench::RuntimeBuilt {
        runtime,
        hello_tarball,
    })
}

/// Builds `flick-runtime` (release) and returns its path.
pub fn build_runtime() -> Result<PathBuf> {
    let status = cargo()
        .args([
            "build",
            "--release",
            "--quiet",
            "--package",
            "flick-runtime",
        ])
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("building flick-runtime failed");
    }
    Ok(project_root().join("target/release/flick-runtime"))
}

/// Adds `runtimes.NAME.path = runtime` to Docker's daemon.json, keeping everything else.
pub fn add_docker_runtime(daemon_json: &Path, name: &str, runtime: &Path) -> Result<()> {
    let mut config = match std::fs::read_to_string(daemon_json) {
        Ok(text) if text.trim().is_empty() => serde_json::json!({}),
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", daemon_json.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({}),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", daemon_json.display())),
    };
    let Some(object) = config.as_object_mut() else {
        bail!("{} is not a JSON object", daemon_json.display());
    };
    let runtimes = object
        .entry("runtimes")
        .or_insert_with(|| serde_json::json!({}));
    let Some(runtimes) = runtimes.as_object_mut() else {
        bail!("'runtimes' in {} is not an object", daemon_json.display());
    };
    runtimes.insert(
        name.to_owned(),
        serde_json::json!({ "path": runtime.display().to_string() }),
    );
    if let Some(parent) = daemon_json.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let staging = daemon_json.with_extension("json.new");
    std::fs::write(&staging, serde_json::to_string_pretty(&config)? + "\n")
        .with_context(|| format!("cannot write {}", staging.display()))?;
    std::fs::rename(&staging, daemon_json)
        .with_context(|| format!("cannot write {}", daemon_json.display()))
}

/// containerd's CRI runtime entry and a Kubernetes RuntimeClass for the runtime at `path`.
pub fn containerd_entries(name: &str, path: &Path) -> String {
    format!(
        r#"
containerd (ctr): ctr run --runtime io.containerd.runc.v2 --runc-binary {path} IMAGE ID
containerd CRI (/etc/containerd/config.toml, then restart containerd):
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}.options]
      BinaryName = "{path}"
Kubernetes (then runtimeClassName: {name} in a pod's spec):
  apiVersion: node.k8s.io/v1
  kind: RuntimeClass
  metadata:
    name: {name}
  handler: {name}
"#,
        path = path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_add_docker_runtime_keeps_other_settings() {
        let dir = std::env::temp_dir().join(format!("xtask-daemon-json-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("daemon.json");
        std::fs::write(
            &file,
            r#"{"debug": true, "runtimes": {"other": {"path": "/x"}}}"#,
        )
        .unwrap();
        add_docker_runtime(&file, "flick", Path::new("/usr/local/bin/flick-runtime")).unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(config["debug"], true);
        assert_eq!(config["runtimes"]["other"]["path"], "/x");
        assert_eq!(
            config["runtimes"]["flick"]["path"],
            "/usr/local/bin/flick-runtime"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn test_add_docker_runtime_refuses_a_non_object() {
        let dir = std::env::temp_dir().join(format!("xtask-daemon-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("daemon.json");
        std::fs::write(&file, "[1, 2]").unwrap();
        assert!(add_docker_runtime(&file, "flick", Path::new("/r")).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
