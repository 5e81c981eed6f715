//! The contract between an OCI image of a flick app and the runtime: which file of the
//! container's root file system is the flick image.
//!
//! The runtime looks first for the annotation [`IMAGE_ANNOTATION`] in the bundle's
//! `config.json` (containerd's CRI passes pod annotations, `ctr run --annotation` and newer
//! Docker pass their own), then for the file [`MARKER_FILE`] at the root of the root file
//! system, which `cargo xtask oci` writes into every image because Docker drops image
//! annotations on the way to the runtime (urunc's `urunc.json` does the same).

use serde::{Deserialize, Serialize};

/// The `config.json` annotation (and image label) naming the image file, an absolute path
/// inside the container's root file system.
pub const IMAGE_ANNOTATION: &str = "org.flick.image";

/// The marker file, at the root of the container's root file system.
pub const MARKER_FILE: &str = "flick.json";

/// The largest marker file read; anything larger is not ours.
pub const MAX_MARKER_SIZE: u64 = 64 * 1024;

/// The content of [`MARKER_FILE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// The image file: an absolute path inside the root file system.
    pub image: String,
}

/// Errors of [`Marker::parse`] and [`check_image_path`].
#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    /// The marker is not the JSON we write.
    #[error("{MARKER_FILE} is malformed")]
    Malformed(#[source] serde_json::Error),
    /// The image path is not usable.
    #[error("the image path '{0}' must be absolute, without '..', and not '/'")]
    BadImagePath(String),
}

impl Marker {
    /// Parses a marker file's bytes and checks its image path.
    pub fn parse(bytes: &[u8]) -> Result<Self, MarkerError> {
        let marker: Marker = serde_json::from_slice(bytes).map_err(MarkerError::Malformed)?;
        check_image_path(&marker.image)?;
        Ok(marker)
    }

    /// The marker's JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a struct of strings serializes")
    }
}

/// Checks that `path` names a file inside the root file system: absolute, no `..`, not `/`.
pub fn check_image_path(path: &str) -> Result<(), MarkerError> {
    let bad = || MarkerError::BadImagePath(path.to_owned());
    if !path.starts_with('/') || path.contains('\0') {
        return Err(bad());
    }
    let mut components = 0;
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return Err(bad());
        }
        components += 1;
    }
    if components == 0 {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_marker_round_trip_keeps_the_image_path() {
        let marker = Marker {
            image: "/hello".into(),
        };
        assert_eq!(Marker::parse(marker.to_json().as_bytes()).unwrap(), marker);
    }

    #[test]
    fn test_marker_parse_garbage_is_malformed() {
        assert!(matches!(
            Marker::parse(b"not json"),
            Err(MarkerError::Malformed(_))
        ));
    }

    #[test]
    fn test_check_image_path_relative_or_dotdot_is_refused() {
        for bad in ["hello", "/", "/../etc/passwd", "/a/../../b", "", "/a\0b"] {
            assert!(check_image_path(bad).is_err(), "{bad:?}");
        }
        for good in ["/hello", "/apps/./hello", "/a/b/c"] {
            assert!(check_image_path(good).is_ok(), "{good:?}");
        }
    }
}
