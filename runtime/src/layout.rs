//! Writes one flick image as an OCI image layout tarball that `docker load` and
//! `ctr images import` both accept.
//!
//! The tarball holds an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) and,
//! for Docker releases whose `docker load` reads only its own archive format, a `manifest.json`
//! naming the same blobs (newer `docker save` writes both the same way). The image has one
//! uncompressed layer: the image file, the [`marker`](crate::marker) that names it, and an
//! empty `/dev` where the runtime mounts `/dev/kvm`. Its configuration's entrypoint is the
//! image file, so `docker run IMAGE ARGS…` passes `ARGS` to the app; the label
//! [`IMAGE_ANNOTATION`](crate::marker::IMAGE_ANNOTATION) names the file too.

use crate::marker::{IMAGE_ANNOTATION, MARKER_FILE, Marker};
use oci_spec::OciSpecError;
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, HistoryBuilder, ImageConfigurationBuilder,
    ImageIndexBuilder, ImageManifestBuilder, MediaType, OciLayoutBuilder, Os, RootFsBuilder,
    Sha256Digest,
};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The annotation containerd reads for an imported image's full name.
const CONTAINERD_NAME_ANNOTATION: &str = "io.containerd.image.name";
/// The OCI annotation for an image's tag within a layout.
const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// What to write.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The flick image file (a static ELF built by `cargo xtask build`).
    pub image_file: PathBuf,
    /// The repository, e.g. `flick/hello`.
    pub repository: String,
    /// The tag, e.g. `latest`.
    pub tag: String,
    /// The image configuration's `created` time (RFC 3339).
    pub created: String,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    /// The tarball's size in bytes.
    pub tarball_size: u64,
    /// The layer's size in bytes (what `docker images` reports as the image's size).
    pub layer_size: u64,
    /// The image file's size in bytes.
    pub image_file_size: u64,
    /// `repository:tag`.
    pub reference: String,
    /// The manifest's digest, `sha256:…`.
    pub manifest_digest: String,
}

/// Errors of [`write_tarball`].
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The image file could not be read.
    #[error("cannot read {path}")]
    ReadImage {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The image file's name cannot be a path in the root file system.
    #[error("the image file name of {0} is not usable in an image")]
    BadName(PathBuf),
    /// The repository or tag is not a valid reference.
    #[error("'{0}' is not a valid image reference (lower-case repository, tag of [A-Za-z0-9_.-])")]
    BadReference(String),
    /// A document could not be built (a bug).
    #[error("cannot build the image metadata")]
    Metadata(#[source] OciSpecError),
    /// The tarball could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The tarball.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A blob: its bytes and their digest.
struct Blob {
    bytes: Vec<u8>,
    digest: Sha256Digest,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Self {
        let hex = format!("{:x}", Sha256::digest(&bytes));
        let digest = Sha256Digest::from_str(&hex).expect("sha256 hex is a valid digest");
        Self { bytes, digest }
    }

    fn path(&self) -> String {
        format!("blobs/sha256/{}", self.digest.digest())
    }

    fn descriptor(&self, media_type: MediaType) -> Descriptor {
        Descriptor::new(media_type, self.bytes.len() as u64, self.digest.clone())
    }
}

/// Writes the tarball for `spec` to `out`.
pub fn write_tarball(spec: &ImageSpec, out: &Path) -> Result<Written, LayoutError> {
    check_reference(&spec.repository, &spec.tag)?;
    let image = std::fs::read(&spec.image_file).map_err(|source| LayoutError::ReadImage {
        path: spec.image_file.clone(),
        source,
    })?;
    let file_name = spec
        .image_file
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && !n.starts_with('.') && *n != MARKER_FILE && *n != "dev")
        .ok_or_else(|| LayoutError::BadName(spec.image_file.clone()))?;
    let image_path = format!("/{file_name}");
    let write_err = |source| LayoutError::Write {
        path: out.to_owned(),
        source,
    };

    let layer = Blob::new(layer_tar(file_name, &image, &image_path).map_err(write_err)?);
    let config = Blob::new(config_json(spec, &image_path, &layer)?.into_bytes());
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config.descriptor(MediaType::ImageConfig))
        .layers(vec![layer.descriptor(MediaType::ImageLayer)])
        .build()
        .map_err(LayoutError::Metadata)?;
    let manifest = Blob::new(
        manifest
            .to_string()
            .map_err(LayoutError::Metadata)?
            .into_bytes(),
    );
    let reference = format!("{}:{}", spec.repository, spec.tag);
    let index = index_json(spec, &manifest)?;
    let docker_manifest = serde_json::json!([{
        "Config": config.path(),
        "RepoTags": [reference],
        "Layers": [layer.path()],
    }])
    .to_string();
    let oci_layout = OciLayoutBuilder::default()
        .image_layout_version("1.0.0")
        .build()
        .map_err(LayoutError::Metadata)?
        .to_string()
        .map_err(LayoutError::Metadata)?;

    let file = std::fs::File::create(out).map_err(write_err)?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let mut put = |path: &str, bytes: &[u8], mode: u32| append(&mut tar, path, bytes, mode);
    put("oci-layout", oci_layout.as_bytes(), 0o644).map_err(write_err)?;
    put("index.json", index.as_bytes(), 0o644).map_err(write_err)?;
    put("manifest.json", docker_manifest.as_bytes(), 0o644).map_err(write_err)?;
    for blob in [&layer, &config, &manifest] {
        put(&blob.path(), &blob.bytes, 0o644).map_err(write_err)?;
    }
    let mut writer = tar.into_inner().map_err(write_err)?;
    writer.flush().map_err(write_err)?;
    let tarball_size = std::fs::metadata(out).map_err(write_err)?.len();
    Ok(Written {
        tarball_size,
        layer_size: layer.bytes.len() as u64,
        image_file_size: image.len() as u64,
        reference,
        manifest_digest: format!("sha256:{}", manifest.digest.digest()),
    })
}

/// Refuses references Docker and containerd would refuse.
fn check_reference(repository: &str, tag: &str) -> Result<(), LayoutError> {
    let repo_ok = !repository.is_empty()
        && repository.split('/').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        });
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if repo_ok && tag_ok {
        Ok(())
    } else {
        Err(LayoutError::BadReference(format!("{repository}:{tag}")))
    }
}

/// The layer: `/dev/`, the image file, the marker.
fn layer_tar(file_name: &str, image: &[u8], image_path: &str) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dev = tar::Header::new_ustar();
    dev.set_entry_type(tar::EntryType::Directory);
    dev.set_mode(0o755);
    dev.set_size(0);
    dev.set_mtime(0);
    tar.append_data(&mut dev, "dev/", std::io::empty())?;
    append(&mut tar, file_name, image, 0o755)?;
    let marker = Marker {
        image: image_path.to_owned(),
    };
    append(&mut tar, MARKER_FILE, marker.to_json().as_bytes(), 0o644)?;
    tar.into_inner()
}

/// Appends a regular file owned by root with mtime 0 (the tarball is reproducible).
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    bytes: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(mode);
    header.set_size(bytes.len() as u64);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    tar.append_data(&mut header, path, bytes)
}

fn config_json(spec: &ImageSpec, image_path: &str, layer: &Blob) -> Result<String, LayoutError> {
    let labels = HashMap::from([(IMAGE_ANNOTATION.to_owned(), image_path.to_owned())]);
    let config = ConfigBuilder::default()
        .entrypoint(vec![image_path.to_owned()])
        .labels(labels)
        .build()
        .map_err(LayoutError::Metadata)?;
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(vec![format!("sha256:{}", layer.digest.digest())])
        .build()
        .map_err(LayoutError::Metadata)?;
    let history = HistoryBuilder::default()
        .created(spec.created.clone())
        .created_by(format!("cargo xtask oci ({image_path})"))
        .build()
        .map_err(LayoutError::Metadata)?;
    ImageConfigurationBuilder::default()
        .created(spec.created.clone())
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(config)
        .rootfs(rootfs)
        .history(vec![history])
        .build()
        .map_err(LayoutError::Metadata)?
        .to_string()
        .map_err(LayoutError::Metadata)
}

fn index_json(spec: &ImageSpec, manifest: &Blob) -> Result<String, LayoutError> {
    let full_name = if spec.repository.split('/').count() == 1 {
        format!("docker.io/library/{}:{}", spec.repository, spec.tag)
    } else if spec
        .repository
        .split('/')
        .next()
        .is_some_and(|h| h.contains('.'))
    {
        format!("{}:{}", spec.repository, spec.tag)
    } else {
        format!("docker.io/{}:{}", spec.repository, spec.tag)
    };
    let annotations = HashMap::from([
        (CONTAINERD_NAME_ANNOTATION.to_owned(), full_name),
        (REF_NAME_ANNOTATION.to_owned(), spec.tag.clone()),
    ]);
    let descriptor = DescriptorBuilder::default()
        .media_type(MediaType::ImageManifest)
        .size(manifest.bytes.len() as u64)
        .digest(manifest.digest.clone())
        .annotations(annotations)
        .build()
        .map_err(LayoutError::Metadata)?;
    ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![descriptor])
        .build()
        .map_err(LayoutError::Metadata)?
        .to_string()
        .map_err(LayoutError::Metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(tarball: &[u8]) -> HashMap<String, Vec<u8>> {
        let mut archive = tar::Archive::new(tarball);
        let mut out = HashMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            out.insert(path, bytes);
        }
        out
    }

    fn write_sample(dir: &Path) -> (Written, HashMap<String, Vec<u8>>) {
        let image = dir.join("hello");
        std::fs::write(&image, b"\x7fELF pretend").unwrap();
        let out = dir.join("hello.tar");
        let spec = ImageSpec {
            image_file: image,
            repository: "flick/hello".into(),
            tag: "latest".into(),
            created: "2026-01-01T00:00:00Z".into(),
        };
        let written = write_tarball(&spec, &out).unwrap();
        (written, entries(&std::fs::read(out).unwrap()))
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("flick-layout-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn test_write_tarball_blobs_match_their_digests() {
        let dir = temp_dir("digests");
        let (written, files) = write_sample(&dir);
        let blobs: Vec<_> = files.keys().filter(|k| k.starts_with("blobs/")).collect();
        assert_eq!(blobs.len(), 3);
        for path in blobs {
            let hex = format!("{:x}", Sha256::digest(&files[path]));
            assert_eq!(path, &format!("blobs/sha256/{hex}"));
        }
        assert_eq!(written.reference, "flick/hello:latest");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn test_write_tarball_layer_holds_image_marker_and_dev() {
        let dir = temp_dir("layer");
        let (_, files) = write_sample(&dir);
        let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        let layer_path = manifest[0]["Layers"][0].as_str().unwrap();
        let layer = entries(&files[layer_path]);
        assert_eq!(layer["hello"], b"\x7fELF pretend");
        let marker = Marker::parse(&layer[MARKER_FILE]).unwrap();
        assert_eq!(marker.image, "/hello");
        assert!(layer.contains_key("dev/"));
        assert_eq!(layer.len(), 3);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn test_write_tarball_index_names_the_image_for_containerd() {
        let dir = temp_dir("index");
        let (_, files) = write_sample(&dir);
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let annotations = &index["manifests"][0]["annotations"];
        assert_eq!(
            annotations[CONTAINERD_NAME_ANNOTATION],
            "docker.io/flick/hello:latest"
        );
        assert_eq!(annotations[REF_NAME_ANNOTATION], "latest");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn test_write_tarball_config_enters_at_the_image() {
        let dir = temp_dir("config");
        let (_, files) = write_sample(&dir);
        let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(&files[manifest[0]["Config"].as_str().unwrap()]).unwrap();
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!(["/hello"])
        );
        assert_eq!(config["config"]["Labels"][IMAGE_ANNOTATION], "/hello");
        assert_eq!(config["architecture"], "amd64");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn test_check_reference_upper_case_repository_is_refused() {
        assert!(check_reference("Flick/hello", "latest").is_err());
        assert!(check_reference("flick/hello", "-x").is_err());
        assert!(check_reference("flick/hello", "v1.0").is_ok());
    }
}
