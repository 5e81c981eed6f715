//! Guest paths to host files: which volume a guest path lies in, and the system calls that
//! open what it names beneath that volume's directory and nowhere else.
//!
//! Every lookup goes through [`open_beneath`]: `openat2` with `RESOLVE_BENEATH` (no absolute
//! paths or symlinks, no `..` above the directory, checked by the kernel during the walk, so
//! a host process swapping directories for symlinks meanwhile cannot lead it out) and
//! `RESOLVE_NO_MAGICLINKS` (no `/proc/self/fd/N`-style links). Operations on a directory entry
//! (mkdir, unlink, rename) resolve the parent directory this way and then name one plain
//! component in it, so no symlink is ever followed by a path-taking system call of its own.

use super::Volume;
use abi::errno;
use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A guest path inside a volume: the volume's index and the components below its guest path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Located<'p> {
    /// Index into the guest's volumes.
    pub volume: usize,
    /// The components below the volume's guest path (no empty ones, no `.`; `..` kept, for
    /// the kernel to refuse when it would leave the volume).
    pub rest: Vec<&'p [u8]>,
}

/// Finds the volume of `path` (absolute, at most `PATH_MAX` bytes, no NUL): the one whose
/// guest path is its longest prefix, component by component.
pub(crate) fn locate<'p>(volumes: &[Volume], path: &'p [u8]) -> Result<Located<'p>, u32> {
    if path.len() > abi::fs::PATH_MAX as usize {
        return Err(errno::NAME_TOO_LONG);
    }
    if path.first() != Some(&b'/') || path.contains(&0) {
        return Err(errno::INVALID_INPUT);
    }
    let parts: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    let (volume, depth) = volumes
        .iter()
        .enumerate()
        .filter(|(_, v)| {
            v.components.len() <= parts.len()
                && v.components.iter().zip(&parts).all(|(a, b)| a == b)
        })
        .map(|(i, v)| (i, v.components.len()))
        .max_by_key(|&(_, depth)| depth)
        .ok_or(errno::NOT_FOUND)?;
    Ok(Located {
        volume,
        rest: parts[depth..].to_vec(),
    })
}

/// `components` joined with `/` as a C string; `.` for none (the volume's directory itself).
pub(crate) fn relative(components: &[&[u8]]) -> CString {
    if components.is_empty() {
        return c".".to_owned();
    }
    let joined = components.join(&b'/');
    // `locate` refused paths holding NUL.
    CString::new(joined).unwrap_or_else(|_| c".".to_owned())
}

/// The last component of a path inside a volume, and its parent directory opened beneath the
/// volume (`O_PATH`), for operations on one directory entry.
pub(crate) struct Entry {
    /// The parent directory.
    pub parent: OwnedFd,
    /// The entry's name: one plain component.
    pub name: CString,
}

/// Opens the parent of `rest` beneath `dir`; refuses the volume's root itself (it cannot be
/// removed or renamed, and always exists) and a final `..`.
pub(crate) fn entry(dir: BorrowedFd<'_>, rest: &[&[u8]]) -> Result<Entry, u32> {
    let Some((last, parent)) = rest.split_last() else {
        return Err(errno::PERMISSION_DENIED);
    };
    if *last == b".." {
        return Err(errno::INVALID_INPUT);
    }
    let parent = open_beneath(dir, &relative(parent), libc::O_PATH | libc::O_DIRECTORY, 0)?;
    let name = CString::new(*last).map_err(|_| errno::INVALID_INPUT)?;
    Ok(Entry { parent, name })
}

/// How often a lookup is retried when the kernel could not rule out that a racing rename let a
/// `..` escape (it then fails with `EAGAIN` rather than guess).
const RACE_RETRIES: usize = 8;

/// Opens `rel` beneath `dir` with `flags` (plus `O_CLOEXEC`) and, when creating, `mode`
/// (openat2 refuses a mode without `O_CREAT`).
pub(crate) fn open_beneath(
    dir: BorrowedFd<'_>,
    rel: &std::ffi::CStr,
    flags: i32,
    mode: u32,
) -> Result<OwnedFd, u32> {
    // SAFETY: open_how is plain integers; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    if flags & libc::O_CREAT != 0 {
        how.mode = u64::from(mode);
    }
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    for _ in 0..RACE_RETRIES {
        // SAFETY: `rel` is NUL-terminated, `how` a live open_how of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                rel.as_ptr(),
                &raw const how,
                size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: openat2 returned a new fd that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
        match last_errno() {
            libc::EAGAIN => continue,
            // Under RESOLVE_BENEATH, EXDEV means the path would leave the directory.
            libc::EXDEV => return Err(errno::NOT_CAPABLE),
            other => return Err(from_host(other)),
        }
    }
    Err(errno::INTERRUPTED)
}

/// The calling thread's `errno`.
pub(crate) fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The guest's code for a host `errno` (`abi::errno`; anything without a code of its own
/// is an I/O error).
pub(crate) fn from_host(host: i32) -> u32 {
    match host {
        libc::EPERM | libc::EACCES => errno::PERMISSION_DENIED,
        libc::ENOENT => errno::NOT_FOUND,
        libc::EINTR => errno::INTERRUPTED,
        libc::EBADF => errno::BAD_HANDLE,
        libc::EAGAIN => errno::WOULD_BLOCK,
        libc::EEXIST => errno::ALREADY_EXISTS,
        libc::EXDEV => errno::CROSSES_DEVICES,
        libc::ENOTDIR => errno::NOT_A_DIRECTORY,
        libc::EISDIR => errno::IS_A_DIRECTORY,
        libc::EINVAL => errno::INVALID_INPUT,
        libc::EMFILE | libc::ENFILE => errno::TOO_MANY_OPEN_FILES,
        libc::EFBIG => errno::FILE_TOO_LARGE,
        libc::ENOSPC | libc::EDQUOT => errno::STORAGE_FULL,
        libc::EROFS => errno::READ_ONLY,
        libc::ENAMETOOLONG => errno::NAME_TOO_LONG,
        libc::ENOTEMPTY => errno::DIRECTORY_NOT_EMPTY,
        libc::ELOOP => errno::FILESYSTEM_LOOP,
        libc::ENXIO | libc::ENODEV | libc::EOPNOTSUPP => errno::UNSUPPORTED,
        _ => errno::IO,
    }
}

#[cfg(test)]
mod tests {
    use super::super::VolumeSpec;
    use super::*;
    use std::os::fd::AsFd;

    fn volumes(guests: &[&str]) -> Vec<Volume> {
        guests
            .iter()
            .map(|g| Volume::open(&VolumeSpec::parse(&format!("/tmp:{g}")).unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn test_locate_picks_the_longest_guest_path() {
        let v = volumes(&["/data", "/data/in", "/"]);
        let found = locate(&v, b"/data/in/x.csv").unwrap();
        assert_eq!((found.volume, found.rest), (1, vec![&b"x.csv"[..]]));
        let found = locate(&v, b"/data//./inner/x").unwrap();
        assert_eq!((found.volume, found.rest), (0, vec![&b"inner"[..], b"x"]));
        assert_eq!(locate(&v, b"/etc/passwd").unwrap().volume, 2);
    }

    #[test]
    fn test_locate_matches_whole_components_only() {
        let v = volumes(&["/data"]);
        assert_eq!(locate(&v, b"/database/x"), Err(errno::NOT_FOUND));
        assert_eq!(locate(&v, b"/data").unwrap().rest, Vec::<&[u8]>::new());
    }

    #[test]
    fn test_locate_refuses_relative_nul_and_overlong_paths() {
        let v = volumes(&["/data"]);
        assert_eq!(locate(&v, b"data/x"), Err(errno::INVALID_INPUT));
        assert_eq!(locate(&v, b"/data/x\0y"), Err(errno::INVALID_INPUT));
        let long = [b'/'].repeat(abi::fs::PATH_MAX as usize + 1);
        assert_eq!(locate(&v, &long), Err(errno::NAME_TOO_LONG));
    }

    #[test]
    fn test_locate_keeps_dotdot_for_the_kernel_to_refuse() {
        let v = volumes(&["/data"]);
        let found = locate(&v, b"/data/../etc/passwd").unwrap();
        assert_eq!(found.rest, vec![&b".."[..], b"etc", b"passwd"]);
    }

    #[test]
    fn test_open_beneath_refuses_to_leave_the_directory() {
        let dir = std::fs::File::open("/tmp").unwrap();
        for path in [
            c"../etc/passwd",
            c"/etc/passwd",
            c"/proc/self/root/etc/passwd",
        ] {
            assert_eq!(
                open_beneath(dir.as_fd(), path, libc::O_RDONLY, 0).err(),
                Some(errno::NOT_CAPABLE),
                "{path:?}"
            );
        }
    }

    #[test]
    fn test_entry_refuses_the_root_and_a_final_dotdot() {
        let dir = std::fs::File::open("/tmp").unwrap();
        assert_eq!(
            entry(dir.as_fd(), &[]).err(),
            Some(errno::PERMISSION_DENIED)
        );
        assert_eq!(
            entry(dir.as_fd(), &[b"x", b".."]).err(),
            Some(errno::INVALID_INPUT)
        );
    }
}
