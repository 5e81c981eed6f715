//! A target: the file a product was asked to boot, opened and sniffed once. An ELF is an
//! image to boot; a file starting with the snapshot magic is a snapshot to restore. Both are
//! validated here before any VM exists, and the guest's name (its `argv[0]`) is decided here
//! too, once for every product.
//!
//! Opening has two steps so that `vmm run` can overlap the costly one with VM creation:
//! [`TargetFile::open`] opens without blocking, refuses non-regular files and reads the first
//! bytes (and a snapshot's header, for its RAM size); [`TargetFile::load`] reads and validates
//! the rest. [`Target::open`] does both.

use crate::files::{FileError, open_regular};
use crate::memory::image::{Image, ImageError};
use crate::snapshot::{self, Pages, Snapshot, SnapshotError};
use std::fs::{File, Metadata};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a target cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Not a readable regular file.
    #[error(transparent)]
    File(#[from] FileError),
    /// A bad image.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A bad snapshot.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// What the first bytes say.
#[derive(Debug, Clone, Copy)]
enum Sniffed {
    /// An ELF, or anything that is not a snapshot: the image loader says what is wrong.
    Image,
    /// A snapshot, with its header's RAM size.
    Snapshot { mem_size: u64 },
}

/// A target file, opened and sniffed but not yet read.
#[derive(Debug)]
pub struct TargetFile {
    path: PathBuf,
    file: File,
    meta: Metadata,
    sniffed: Sniffed,
}

impl TargetFile {
    /// Opens `path` (never blocking: a FIFO is refused, not waited on) and sniffs its kind.
    pub fn open(path: &Path) -> Result<Self, TargetError> {
        Self::open_expecting(path, false)
    }

    /// Like [`TargetFile::open`], but judges the file as a snapshot whatever its first bytes
    /// say (`vmm run --from`): anything else is refused with the snapshot reader's reason.
    pub fn open_snapshot(path: &Path) -> Result<Self, TargetError> {
        Self::open_expecting(path, true)
    }

    /// Like [`TargetFile::open`], for a file the caller opened itself, read-only and without
    /// blocking (`vmm serve` opens a client's target its own way: see `serve::targets`).
    pub fn from_file(path: &Path, file: File) -> Result<Self, TargetError> {
        let meta = file.metadata().map_err(|source| FileError::Io {
            path: path.to_owned(),
            source,
        })?;
        if !meta.is_file() {
            return Err(FileError::NotRegularFile(path.to_owned()).into());
        }
        Self::sniff(path, file, meta, false)
    }

    fn open_expecting(path: &Path, snapshot_only: bool) -> Result<Self, TargetError> {
        let (file, meta) = open_regular(path)?;
        Self::sniff(path, file, meta, snapshot_only)
    }

    fn sniff(
        path: &Path,
        file: File,
        meta: Metadata,
        snapshot_only: bool,
    ) -> Result<Self, TargetError> {
        let mut magic = [0u8; 8];
        let is_snapshot = snapshot_only
            || (file.read_exact_at(&mut magic, 0).is_ok() && magic == snapshot::format::MAGIC);
        let sniffed = if is_snapshot {
            Sniffed::Snapshot {
                mem_size: snapshot::peek(&file, meta.len())?.mem_size,
            }
        } else {
            Sniffed::Image
        };
        Ok(Self {
            path: path.to_owned(),
            file,
            meta,
            sniffed,
        })
    }

    /// Whether it is a snapshot.
    pub fn is_snapshot(&self) -> bool {
        matches!(self.sniffed, Sniffed::Snapshot { .. })
    }

    /// The RAM its VM gets: a snapshot's own size, else `requested`.
    pub fn mem_size(&self, requested: u64) -> u64 {
        match self.sniffed {
            Sniffed::Snapshot { mem_size } => mem_size,
            Sniffed::Image => requested,
        }
    }

    /// Reads and validates the whole target, for any number of VMs.
    pub fn load(self) -> Result<Target, TargetError> {
        self.load_as(Pages::Shared)
    }

    /// Reads and validates the whole target for one VM: a snapshot's pages are then read
    /// straight into that VM's RAM when it is loaded, instead of into a memfd first.
    pub fn load_for_one_vm(self) -> Result<Target, TargetError> {
        self.load_as(Pages::Once)
    }

    fn load_as(self, pages: Pages) -> Result<Target, TargetError> {
        let kind =
            match self.sniffed {
                Sniffed::Image => TargetKind::Image(Arc::new(Image::from_open_file(
                    &self.path, &self.file, &self.meta,
                )?)),
                Sniffed::Snapshot { .. } => TargetKind::Snapshot(Arc::new(
                    Snapshot::from_open_file(&self.path, &self.file, self.meta.len(), pages)?,
                )),
            };
        Ok(Target {
            name: guest_name(&self.path),
            path: self.path,
            kind,
        })
    }
}

/// What a target holds.
#[derive(Clone)]
pub enum TargetKind {
    /// An image to boot.
    Image(Arc<Image>),
    /// A snapshot to restore.
    Snapshot(Arc<Snapshot>),
}

/// A validated image or snapshot, ready to become any number of VMs.
#[derive(Clone)]
pub struct Target {
    path: PathBuf,
    name: String,
    kind: TargetKind,
}

impl Target {
    /// Opens, sniffs and validates `path`.
    pub fn open(path: &Path) -> Result<Self, TargetError> {
        TargetFile::open(path)?.load()
    }

    /// The same validated contents, as if opened from `path` (another link to the same file):
    /// the guest's name follows the path.
    pub fn at_path(&self, path: &Path) -> Target {
        Target {
            path: path.to_owned(),
            name: guest_name(path),
            kind: self.kind.clone(),
        }
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The guest's name: its `argv[0]`, and the name reports use.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Image or snapshot.
    pub fn kind(&self) -> &TargetKind {
        &self.kind
    }

    /// The image layout the guest runs (a snapshot's has no file bytes).
    pub fn layout(&self) -> &Arc<Image> {
        match &self.kind {
            TargetKind::Image(image) => image,
            TargetKind::Snapshot(snapshot) => snapshot.layout(),
        }
    }

    /// The RAM its VM gets: a snapshot's own size, else `requested`.
    pub fn mem_size(&self, requested: u64) -> u64 {
        match &self.kind {
            TargetKind::Snapshot(snapshot) => snapshot.mem_size,
            TargetKind::Image(_) => requested,
        }
    }
}

/// The name of the guest booted from `path`: the file name, like a program's `argv[0]`.
pub fn guest_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(|| "image".to_owned(), |n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_guest_name_is_the_file_name() {
        assert_eq!(guest_name(Path::new("/a/b/hello")), "hello");
        assert_eq!(guest_name(Path::new("/")), "image");
    }

    #[test]
    fn test_open_unknown_bytes_are_judged_as_an_image() {
        let path = std::env::temp_dir().join(format!("flick-target-{}", std::process::id()));
        std::fs::write(&path, b"#!/bin/sh\n").unwrap();
        let err = Target::open(&path).err().unwrap();
        assert!(err.to_string().contains("not an ELF file"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }
}
