//! Opening untrusted files: images, snapshots and manifests are named by users and clients,
//! and may be FIFOs, devices, directories or huge. [`open_regular`] never blocks (a FIFO with
//! no writer would hang `open(2)`), and refuses anything that is not a regular file before a
//! byte is read. [`reserve_standard_fds`] keeps later opens off fds 0-2 when the VMM was
//! started with one of them closed. [`write_atomically`] writes a file that readers never see
//! half-written, and never replaces anything but a regular file.

use std::fs::{File, Metadata};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why a file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be opened or read.
    #[error("cannot read {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The path is a directory.
    #[error("{0} is a directory")]
    Directory(PathBuf),
    /// The path is a device, socket or FIFO.
    #[error("{0} is not a regular file")]
    NotRegularFile(PathBuf),
}

/// Opens `/dev/null` on each of fds 0, 1 and 2 that is closed, so that no file the VMM opens
/// later (an image, a snapshot, a guest's volume file) lands on a standard stream's number,
/// where guest input would be read from it or console output written into it.
pub fn reserve_standard_fds() {
    use std::os::fd::IntoRawFd;
    for fd in [libc::STDIN_FILENO, libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: F_GETFD only asks whether the descriptor is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            // The lowest free number is this one (the lower ones are open by now); kept open
            // for the life of the process.
            let null = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null");
            let _ = null.map(IntoRawFd::into_raw_fd);
        }
    }
}

/// Opens `path` read-only without blocking, and checks that it is a regular file.
pub(crate) fn open_regular(path: &Path) -> Result<(File, Metadata), FileError> {
    let io = |source| FileError::Io {
        path: path.to_owned(),
        source,
    };
    // O_NONBLOCK: opening a FIFO must not wait for a writer. It changes nothing for the
    // regular files accepted below.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if meta.is_dir() {
        return Err(FileError::Directory(path.to_owned()));
    }
    if !meta.is_file() {
        return Err(FileError::NotRegularFile(path.to_owned()));
    }
    Ok((file, meta))
}

/// Reads a whole regular file of at most `max` bytes (text such as a manifest).
pub(crate) fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    let (file, meta) = open_regular(path)?;
    if meta.len() > max {
        return Err(ReadError::TooLarge {
            path: path.to_owned(),
            size: meta.len(),
            max,
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // A file that grows while being read is cut at `max`, never read without end.
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| FileError::Io {
            path: path.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge {
            path: path.to_owned(),
            size: bytes.len() as u64,
            max,
        });
    }
    Ok(bytes)
}

/// Why [`read_regular`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Not a readable regular file.
    #[error(transparent)]
    File(#[from] FileError),
    /// Larger than allowed.
    #[error("{path} is too large ({size} bytes; at most {max})")]
    TooLarge {
        /// The path.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
}

/// Why a file cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Something that is not a regular file (a directory, FIFO, device, socket or symbolic
    /// link) is in the way.
    #[error("{0} exists and is not a regular file")]
    NotRegularFile(PathBuf),
    /// The output would replace the file the command reads (its image or snapshot).
    #[error("{0} is the file this command reads: write the output elsewhere")]
    SameAsInput(PathBuf),
    /// The file could not be written.
    #[error("cannot write {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Checks that `path` may be (re)placed by [`write_atomically`]: nothing is there yet, or a
/// regular file is (a symbolic link is not followed: it is refused).
pub(crate) fn check_replaceable(path: &Path) -> Result<(), WriteError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() => Ok(()),
        Ok(_) => Err(WriteError::NotRegularFile(path.to_owned())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(WriteError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// [`check_replaceable`], and `path` is not the file `input` names (by device and inode: a
/// hard link or another spelling of the same path counts), which the write would replace.
pub(crate) fn check_replaceable_by_output_of(path: &Path, input: &Path) -> Result<(), WriteError> {
    use std::os::unix::fs::MetadataExt;
    check_replaceable(path)?;
    if let (Ok(out), Ok(read)) = (std::fs::symlink_metadata(path), std::fs::metadata(input))
        && (out.dev(), out.ino()) == (read.dev(), read.ino())
    {
        return Err(WriteError::SameAsInput(path.to_owned()));
    }
    Ok(())
}

/// Writes `path` whole or not at all: `fill` writes a new file beside it, which is synced and
/// renamed over `path`, so that a reader sees the old file or the new one, never a part.
/// Refuses to replace anything but a regular file (see [`check_replaceable`]).
pub(crate) fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<(), WriteError> {
    check_replaceable(path)?;
    let io = |source| WriteError::Io {
        path: path.to_owned(),
        source,
    };
    let (temp, mut file) = create_beside(path).map_err(io)?;
    let written = (|| {
        fill(&mut file)?;
        file.sync_all()?;
        // Checked again as late as possible: something may have appeared meanwhile.
        check_replaceable(path).map_err(std::io::Error::other)?;
        std::fs::rename(&temp, path)
    })();
    if let Err(source) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(io(source));
    }
    Ok(())
}

/// A new file next to `path` (same folder, so that a rename replaces `path` atomically).
fn create_beside(path: &Path) -> std::io::Result<(PathBuf, File)> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    for attempt in 0..100u32 {
        let temp_name = format!(".{name}.{}.{attempt}.tmp", std::process::id());
        let temp = dir.map_or_else(|| PathBuf::from(&temp_name), |d| d.join(&temp_name));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
        {
            Ok(file) => return Ok((temp, file)),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "no free temporary name",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_open_regular_refuses_a_fifo_without_blocking() {
        let dir = std::env::temp_dir().join(format!("flick-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let err = open_regular(&fifo).unwrap_err();
        assert!(matches!(err, FileError::NotRegularFile(_)), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn test_open_regular_refuses_devices_and_directories() {
        assert!(matches!(
            open_regular(Path::new("/dev/zero")),
            Err(FileError::NotRegularFile(_))
        ));
        assert!(matches!(
            open_regular(Path::new("/")),
            Err(FileError::Directory(_))
        ));
    }

    #[test]
    fn test_write_atomically_replaces_a_regular_file_only() {
        let dir = std::env::temp_dir().join(format!("flick-write-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out");
        std::fs::write(&path, b"old").unwrap();
        write_atomically(&path, |f| std::io::Write::write_all(f, b"new")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let link = dir.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let err = write_atomically(&link, |_| Ok(())).unwrap_err();
        assert!(matches!(err, WriteError::NotRegularFile(_)), "{err}");
        assert!(matches!(
            write_atomically(Path::new("/dev/null"), |_| Ok(())),
            Err(WriteError::NotRegularFile(_))
        ));
        assert!(matches!(
            write_atomically(&dir, |_| Ok(())),
            Err(WriteError::NotRegularFile(_))
        ));
        // A failed fill leaves the old file and no temporary file behind.
        let err = write_atomically(&path, |_| Err(std::io::Error::other("full"))).unwrap_err();
        assert!(matches!(err, WriteError::Io { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn test_create_beside_stays_in_the_folder() {
        let dir = std::env::temp_dir().join(format!("flick-beside-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (temp, _) = create_beside(&dir.join("x.snap")).unwrap();
        assert_eq!(temp.parent(), Some(dir.as_path()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn test_read_regular_refuses_oversized_files() {
        let path = std::env::temp_dir().join(format!("flick-read-{}", std::process::id()));
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_regular(&path, 10).unwrap(), b"0123456789");
        assert!(matches!(
            read_regular(&path, 9),
            Err(ReadError::TooLarge { .. })
        ));
        std::fs::remove_file(&path).unwrap();
    }
}
