//! A client's target: opened without side effects, within the directories the server was
//! told to serve, and the cache of validated targets.
//!
//! Opening: the path (absolute; the client makes it so) is opened with `O_PATH`, which neither
//! reads nor blocks nor has a device's open side effects, and `fstat`ed. With `--allow`, the
//! path the kernel reports for that descriptor (`/proc/self/fd/N`: symbolic links resolved,
//! as opened, so a link swapped in later changes nothing) must lie inside one of the allowed
//! directories. Only a regular file is then reopened for reading, through the same
//! descriptor, so the file read is the file checked.
//!
//! The cache: validated targets kept by file identity (device and inode, validated by size,
//! modification and change times), not by path: a file replaced at a path (a new inode) or
//! changed in place (new times; the change time cannot be set back) is read afresh and its old
//! contents dropped, and any number of links to one file share one entry. It holds
//! at most [`MAX_CACHED_TARGETS`] entries and `cache_bytes` bytes (file sizes), least recently
//! used first out; a target larger than that is served without being kept. Pooled snapshots
//! are pinned apart from it.

use crate::files::FileError;
use crate::launch::{Target, TargetError, TargetFile};
use std::collections::BTreeMap;
use std::fs::{File, Metadata};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Most targets kept in the cache (each cached snapshot holds one descriptor).
pub(crate) const MAX_CACHED_TARGETS: usize = 64;

/// What identifies the contents of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileId {
    /// The inode alone: where the cache looks (what else it holds only validates).
    fn inode(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Why a client's target cannot be served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResolveError {
    /// A relative path (the server's working directory means nothing to the client).
    #[error("{0}: the target's path must be absolute")]
    NotAbsolute(PathBuf),
    /// Outside every `--allow` directory.
    #[error("{0} is outside the directories this server runs files from (--allow)")]
    NotAllowed(PathBuf),
    /// Unusable.
    #[error(transparent)]
    Target(#[from] TargetError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TargetError {
    let path = path.to_owned();
    move |source| FileError::Io { path, source }.into()
}

/// A target ready to run, and its identity if it is a pooled snapshot.
pub(crate) struct Resolved {
    pub(crate) target: Target,
    pub(crate) pooled: Option<FileId>,
}

/// Opens targets and keeps the validated ones.
pub(crate) struct Targets {
    allow: Vec<PathBuf>,
    pinned: BTreeMap<FileId, Target>,
    /// Keyed by inode, so that a file changed in place replaces its own entry.
    cache: Cache<(u64, u64), (FileId, Target)>,
}

impl Targets {
    /// Serves files inside `allow` (canonical directories; empty: anywhere), caching up to
    /// `cache_bytes` of them.
    pub(crate) fn new(allow: Vec<PathBuf>, cache_bytes: u64) -> Self {
        Self {
            allow,
            pinned: BTreeMap::new(),
            cache: Cache::new(MAX_CACHED_TARGETS, cache_bytes),
        }
    }

    /// Opens a snapshot named at start (not limited by `--allow`) and keeps it for the pool.
    pub(crate) fn pin(&mut self, path: &Path) -> Result<(FileId, Target), TargetError> {
        let opened = open_path(path)?;
        let target = TargetFile::from_file(path, reopen(&opened, path)?)?.load()?;
        let id = FileId::of(&opened.meta);
        self.pinned.insert(id, target.clone());
        Ok((id, target))
    }

    /// The target at `path`, from the pool's, the cache, or the file.
    pub(crate) fn resolve(&mut self, path: &Path) -> Result<Resolved, ResolveError> {
        if !path.is_absolute() {
            return Err(ResolveError::NotAbsolute(path.to_owned()));
        }
        let opened = match open_path(path) {
            Ok(opened) => opened,
            // Whether something exists outside the allowed directories is not for a client
            // to learn.
            Err(_) if !self.lexically_allowed(path) => {
                return Err(ResolveError::NotAllowed(path.to_owned()));
            }
            Err(err) => return Err(err.into()),
        };
        let id = FileId::of(&opened.meta);
        // The pooled snapshots were named by whoever started the server: always served.
        if let Some(target) = self.pinned.get(&id) {
            return Ok(Resolved {
                target: target.at_path(path),
                pooled: Some(id),
            });
        }
        if !self.allow.is_empty() {
            let real = std::fs::read_link(format!("/proc/self/fd/{}", opened.file.as_raw_fd()))
                .map_err(io_error(path))?;
            if !self.allow.iter().any(|dir| real.starts_with(dir)) {
                return Err(ResolveError::NotAllowed(path.to_owned()));
            }
        }
        match self.cache.get(&id.inode()) {
            Some((known, target)) if known == id => {
                return Ok(Resolved {
                    target: target.at_path(path),
                    pooled: None,
                });
            }
            // The file changed since it was read: its old contents go.
            Some(_) => self.cache.remove(&id.inode()),
            None => {}
        }
        let target = TargetFile::from_file(path, reopen(&opened, path)?)?.load()?;
        // A file that changed while it was read is served as read, but not kept.
        if opened
            .file
            .metadata()
            .is_ok_and(|now| FileId::of(&now) == id)
        {
            self.cache
                .insert(id.inode(), opened.meta.size(), (id, target.clone()));
        }
        Ok(Resolved {
            target,
            pooled: None,
        })
    }

    /// Whether `path`, as written, names something inside an allowed directory (or there is
    /// no `--allow`).
    fn lexically_allowed(&self, path: &Path) -> bool {
        let plain = path
            .components()
            .all(|c| !matches!(c, std::path::Component::ParentDir));
        self.allow.is_empty() || (plain && self.allow.iter().any(|dir| path.starts_with(dir)))
    }
}

/// A path opened with `O_PATH` and checked to be a regular file.
struct Opened {
    file: File,
    meta: Metadata,
}

fn open_path(path: &Path) -> Result<Opened, TargetError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .map_err(io_error(path))?;
    let meta = file.metadata().map_err(io_error(path))?;
    if meta.is_dir() {
        return Err(FileError::Directory(path.to_owned()).into());
    }
    if !meta.is_file() {
        return Err(FileError::NotRegularFile(path.to_owned()).into());
    }
    Ok(Opened { file, meta })
}

/// Opens the file behind an `O_PATH` descriptor for reading: the same inode, whatever has
/// happened at its path since.
fn reopen(opened: &Opened, path: &Path) -> Result<File, TargetError> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(format!("/proc/self/fd/{}", opened.file.as_raw_fd()))
        .map_err(io_error(path))
}

/// A cache bounded in entries and in bytes, least recently used out first.
pub(crate) struct Cache<K, V> {
    entries: BTreeMap<K, Entry<V>>,
    max_entries: usize,
    max_bytes: u64,
    bytes: u64,
    clock: u64,
}

struct Entry<V> {
    value: V,
    bytes: u64,
    used: u64,
}

impl<K: Ord + Copy, V: Clone> Cache<K, V> {
    /// An empty cache for at most `max_entries` values and `max_bytes` bytes.
    pub(crate) fn new(max_entries: usize, max_bytes: u64) -> Self {
        Self {
            entries: BTreeMap::new(),
            max_entries,
            max_bytes,
            bytes: 0,
            clock: 0,
        }
    }

    /// The value for `key`, now the most recently used.
    pub(crate) fn get(&mut self, key: &K) -> Option<V> {
        self.clock += 1;
        let entry = self.entries.get_mut(key)?;
        entry.used = self.clock;
        Some(entry.value.clone())
    }

    /// Forgets the value for `key`.
    pub(crate) fn remove(&mut self, key: &K) {
        if let Some(old) = self.entries.remove(key) {
            self.bytes -= old.bytes;
        }
    }

    /// Keeps `value` (of `bytes` bytes), evicting the least recently used values to make room;
    /// a value larger than the whole cache is not kept.
    pub(crate) fn insert(&mut self, key: K, bytes: u64, value: V) {
        if bytes > self.max_bytes || self.max_entries == 0 {
            return;
        }
        self.remove(&key);
        while self.entries.len() >= self.max_entries || self.bytes + bytes > self.max_bytes {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            self.remove(&oldest);
        }
        self.clock += 1;
        self.bytes += bytes;
        self.entries.insert(
            key,
            Entry {
                value,
                bytes,
                used: self.clock,
            },
        );
    }

    /// Values kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cache_keeps_at_most_its_entry_count() {
        let mut cache = Cache::new(3, 1000);
        for key in 0..10 {
            cache.insert(key, 1, key);
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&9), Some(9));
        assert_eq!(cache.get(&0), None);
    }

    #[test]
    fn test_cache_keeps_at_most_its_bytes_and_evicts_the_least_recently_used() {
        let mut cache = Cache::new(10, 100);
        cache.insert(1, 40, 'a');
        cache.insert(2, 40, 'b');
        assert_eq!(cache.get(&1), Some('a'));
        cache.insert(3, 40, 'c');
        assert_eq!(cache.get(&2), None, "the least recently used goes first");
        assert_eq!(cache.get(&1), Some('a'));
        assert_eq!(cache.get(&3), Some('c'));
        assert!(cache.bytes <= 100);
        cache.insert(4, 101, 'd');
        assert_eq!(cache.get(&4), None, "larger than the cache: not kept");
        cache.insert(1, 30, 'e');
        assert_eq!(cache.get(&1), Some('e'));
        assert_eq!(cache.bytes, 70);
    }

    #[test]
    fn test_file_id_changes_when_the_file_at_a_path_is_replaced() {
        let dir = std::env::temp_dir().join(format!("flick-fileid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("target");
        std::fs::write(&path, b"one").unwrap();
        let first = FileId::of(&std::fs::metadata(&path).unwrap());
        let other = dir.join("other");
        std::fs::write(&other, b"two").unwrap();
        std::fs::rename(&other, &path).unwrap();
        let second = FileId::of(&std::fs::metadata(&path).unwrap());
        assert_ne!(first, second);
        std::fs::hard_link(&path, dir.join("link")).unwrap();
        let linked = FileId::of(&std::fs::metadata(dir.join("link")).unwrap());
        assert_eq!(linked.ino, second.ino);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn test_resolve_refuses_relative_paths_and_paths_outside_allow() {
        let dir = std::env::temp_dir().join(format!("flick-allow-{}", std::process::id()));
        let inside = dir.join("inside");
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::write(dir.join("outside"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.join("outside"), inside.join("link")).unwrap();
        let mut targets = Targets::new(vec![inside.canonicalize().unwrap()], 1 << 20);
        assert!(matches!(
            targets.resolve(Path::new("relative")),
            Err(ResolveError::NotAbsolute(_))
        ));
        let missing_outside = dir.join("missing");
        let sneaky = inside.join("..").join("outside");
        for path in [
            dir.join("outside"),
            inside.join("link"),
            missing_outside,
            sneaky,
        ] {
            assert!(
                matches!(targets.resolve(&path), Err(ResolveError::NotAllowed(_))),
                "{}",
                path.display()
            );
        }
        let missing_inside = inside.canonicalize().unwrap().join("missing");
        assert!(matches!(
            targets.resolve(&missing_inside),
            Err(ResolveError::Target(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
