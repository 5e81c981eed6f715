//! Snapshots: a guest saved at its kernel's snapshot point, restored in fresh VMs.
//!
//! [`format`] describes the file. A snapshot restored into many VMs ([`Pages::Shared`]:
//! `vmm fleet`, `vmm serve`) has its saved pages copied once into a sealed memfd (their
//! checksum checked on the way) and mapped from there `MAP_PRIVATE` into each VM: VMs
//! restored in one process share the pages they never write. A snapshot restored into one VM
//! ([`Pages::Once`]: `vmm run --from`) has its pages read straight into that VM's RAM, their
//! checksum checked over the bytes read, before the guest runs: no memfd, no second copy, no
//! copy-on-write faults. Either way the guest runs on a private copy whose checksum matched,
//! so nothing done to the file afterwards (truncated, rewritten in place) reaches a restored
//! guest or the VMM.
//! Writing is atomic: a temporary file in the same folder, renamed over the target.
//!
//! A snapshot is untrusted input: every count, offset and page number is checked against the
//! file size and the RAM size, metadata and data are checksummed, and the privileged state is
//! not taken from the file at all: page tables, GDT, IDT, TSS and exception stubs are rebuilt
//! from the (validated) segment layout, pages below the boot info (where those live) are
//! refused, the special registers are the VMM's own, and only the RFLAGS bits a ring-3 guest
//! can hold survive.

pub(crate) mod format;

use crate::arch::{self, layout::BOOT_INFO_ADDR, layout::PAGE_SIZE};
use crate::devices::DeviceState;
use crate::files::{FileError, open_regular};
use crate::memory::GuestRam;
use crate::memory::image::{Image, ImageError};
use crate::size::Size;
use crate::vm::SavedVcpu;
use format::{DeviceRecord, HEADER_SIZE, Header, SegmentRecord};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vm_memory::ByteValued;

/// Why a snapshot cannot be written or used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file cannot be opened, or is not a regular file.
    #[error("snapshot: {0}")]
    File(#[from] FileError),
    /// The file could not be written (or something other than a regular file is in the way).
    #[error(transparent)]
    Write(#[from] crate::files::WriteError),
    /// The file could not be read or written.
    #[error("snapshot {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a snapshot of this format.
    #[error("not a snapshot for this VMM: {0}")]
    Foreign(String),
    /// Damaged or inconsistent.
    #[error("corrupted snapshot: {0}")]
    Corrupted(String),
    /// The saved layout is invalid.
    #[error("corrupted snapshot")]
    Layout(#[source] ImageError),
    /// The guest never reached its snapshot point.
    #[error("the guest stopped before its snapshot point ({0})")]
    NoSnapshotPoint(String),
}

fn corrupted(what: impl Into<String>) -> SnapshotError {
    SnapshotError::Corrupted(what.into())
}

fn image_sha256(image: &Image) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(image.bytes()).into()
}

/// What `vmm snapshot` reports.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Pages saved.
    pub pages: u64,
    /// Bytes in the file.
    pub file_size: u64,
}

/// Writes the snapshot of a guest stopped at its snapshot point, atomically: readers of `path`
/// (and VMs restored from an earlier file there) never see a half-written file.
pub fn write(
    path: &Path,
    image: &Image,
    ram: &GuestRam,
    vcpu: &SavedVcpu,
    devices: &[DeviceState],
) -> Result<Summary, SnapshotError> {
    let pages = saved_pages(ram);
    let mut meta = Vec::new();
    for segment in image.segments() {
        meta.extend_from_slice(SegmentRecord::of(segment).as_slice());
    }
    meta.extend_from_slice(vcpu.as_slice());
    let mut device_bytes = 0usize;
    for state in devices {
        let record = DeviceRecord {
            port: state.port,
            reserved: 0,
            len: state.bytes.len() as u32,
        };
        meta.extend_from_slice(record.as_slice());
        meta.extend_from_slice(&state.bytes);
        device_bytes += size_of::<DeviceRecord>() + state.bytes.len();
    }
    if device_bytes > format::MAX_DEVICE_BYTES {
        return Err(corrupted("device state too large to save"));
    }
    for page in &pages {
        meta.extend_from_slice(&page.to_le_bytes());
    }
    let data_offset = (HEADER_SIZE + meta.len()).div_ceil(PAGE_SIZE as usize) * PAGE_SIZE as usize;
    let mut data = vec![0u8; pages.len() * PAGE_SIZE as usize];
    for (i, page) in pages.iter().enumerate() {
        let chunk = &mut data[i * PAGE_SIZE as usize..(i + 1) * PAGE_SIZE as usize];
        ram.read(page * PAGE_SIZE, chunk)
            .map_err(|e| corrupted(e.to_string()))?;
    }
    let mut header = Header {
        magic: format::MAGIC,
        format_version: format::FORMAT_VERSION,
        abi_version: abi::ABI_VERSION,
        image_sha256: image_sha256(image),
        mem_size: ram.size(),
        segment_count: image.segments().len() as u32,
        device_bytes: device_bytes as u32,
        page_count: pages.len() as u64,
        data_offset: data_offset as u64,
        meta_crc: 0,
        data_crc: crc32fast::hash(&data),
        reserved: [0; 5],
    };
    header.meta_crc = format::meta_crc(&header, &meta);
    crate::files::write_atomically(path, |file| {
        file.write_all(header.as_slice())?;
        file.write_all(&meta)?;
        file.write_all(&vec![0u8; data_offset - HEADER_SIZE - meta.len()])?;
        file.write_all(&data)?;
        Ok(())
    })?;
    Ok(Summary {
        pages: pages.len() as u64,
        file_size: (data_offset + data.len()) as u64,
    })
}

/// The guest pages worth saving: resident (touched), not all zero, and not the VMM's own
/// structures below the boot info (rebuilt on every restore).
fn saved_pages(ram: &GuestRam) -> Vec<u64> {
    let resident = ram.resident_page_list();
    let mut page = vec![0u8; PAGE_SIZE as usize];
    resident
        .into_iter()
        .filter(|&n| n * PAGE_SIZE >= BOOT_INFO_ADDR)
        .filter(|&n| ram.read(n * PAGE_SIZE, &mut page).is_ok() && page.iter().any(|&b| b != 0))
        .collect()
}

/// The header fields that decide how to map RAM, read and checked without reading the rest.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peeked {
    /// Guest RAM size.
    pub mem_size: u64,
}

/// Reads and checks the header of an open snapshot file.
fn read_header(file: &File, file_len: u64) -> Result<Header, SnapshotError> {
    if file_len < HEADER_SIZE as u64 {
        let mut magic = [0u8; 8];
        if file.read_exact_at(&mut magic, 0).is_ok() && magic != format::MAGIC {
            return Err(SnapshotError::Foreign("bad magic".into()));
        }
        return Err(corrupted(format!(
            "truncated: {file_len} bytes, the header alone is {HEADER_SIZE}"
        )));
    }
    let mut header = Header::default();
    file.read_exact_at(header.as_mut_slice(), 0)
        .map_err(|e| corrupted(format!("cannot read the header: {e}")))?;
    if header.magic != format::MAGIC {
        return Err(SnapshotError::Foreign("bad magic".into()));
    }
    if header.format_version != format::FORMAT_VERSION {
        return Err(SnapshotError::Foreign(format!(
            "format version {}, this VMM reads version {}",
            header.format_version,
            format::FORMAT_VERSION
        )));
    }
    if header.abi_version != abi::ABI_VERSION {
        return Err(SnapshotError::Foreign(format!(
            "made for ABI version {}, this VMM speaks version {}",
            header.abi_version,
            abi::ABI_VERSION
        )));
    }
    crate::launch::check_mem_size(header.mem_size).map_err(|e| corrupted(e.to_string()))?;
    Ok(header)
}

/// Peeks at the header of an open snapshot file (cheap: one read).
pub(crate) fn peek(file: &File, file_len: u64) -> Result<Peeked, SnapshotError> {
    read_header(file, file_len).map(|h| Peeked {
        mem_size: h.mem_size,
    })
}

/// How a snapshot's saved pages reach guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pages {
    /// Copied once into a sealed memfd, mapped copy-on-write into every VM restored from it.
    Shared,
    /// Read from the file into each VM's RAM when it is loaded (one VM: `vmm run --from`),
    /// the data's checksum checked over the bytes read.
    Once,
}

/// Where the saved pages are read from.
enum PageSource {
    /// A sealed memfd holding them in index order ([`Pages::Shared`]).
    Sealed(File),
    /// The snapshot file itself ([`Pages::Once`]): its data section and checksum.
    File { file: File, offset: u64, crc: u32 },
}

/// A validated snapshot, ready to be mapped into guest RAM.
pub struct Snapshot {
    /// The saved pages, in index order.
    source: PageSource,
    /// Guest RAM size it was taken with.
    pub mem_size: u64,
    /// SHA-256 of the image it was taken of.
    pub image_sha256: [u8; 32],
    layout: Arc<Image>,
    vcpu: SavedVcpu,
    devices: Vec<DeviceState>,
    pages: Vec<u64>,
}

impl Snapshot {
    /// Opens and validates `path`, for any number of VMs.
    pub fn open(path: &Path) -> Result<Self, SnapshotError> {
        let (file, meta) = open_regular(path)?;
        Self::from_open_file(path, &file, meta.len(), Pages::Shared)
    }

    /// Validates a snapshot file [`open_regular`] opened; its pages reach RAM as `pages` says.
    pub(crate) fn from_open_file(
        path: &Path,
        file: &File,
        file_len: u64,
        pages: Pages,
    ) -> Result<Self, SnapshotError> {
        let header = read_header(file, file_len)?;
        let ram_pages = header.mem_size / PAGE_SIZE;
        if header.segment_count == 0 || header.segment_count as usize > format::MAX_SEGMENTS {
            return Err(corrupted(format!("{} segments", header.segment_count)));
        }
        if header.device_bytes as usize > format::MAX_DEVICE_BYTES {
            return Err(corrupted(format!(
                "{} bytes of device state",
                header.device_bytes
            )));
        }
        if header.page_count > ram_pages {
            return Err(corrupted(format!(
                "{} pages for {} of RAM",
                header.page_count,
                Size(header.mem_size)
            )));
        }
        if header.reserved != [0; 5] {
            return Err(corrupted("reserved header bytes are not zero"));
        }
        let meta_len =
            format::meta_len(header.segment_count, header.device_bytes, header.page_count)
                .ok_or_else(|| corrupted("metadata size overflows"))?;
        let min_data = (HEADER_SIZE + meta_len).div_ceil(PAGE_SIZE as usize) as u64 * PAGE_SIZE;
        let data_len = header.page_count * PAGE_SIZE;
        if header.data_offset < min_data || header.data_offset % PAGE_SIZE != 0 {
            return Err(corrupted(format!("data offset {:#x}", header.data_offset)));
        }
        if header
            .data_offset
            .checked_add(data_len)
            .is_none_or(|end| end != file_len)
        {
            return Err(corrupted(format!(
                "truncated or padded: {file_len} bytes, expected {}",
                header.data_offset.saturating_add(data_len)
            )));
        }
        let mut meta = vec![0u8; meta_len];
        file.read_exact_at(&mut meta, HEADER_SIZE as u64)
            .map_err(|source| SnapshotError::Io {
                path: path.to_owned(),
                source,
            })?;
        if format::meta_crc(&header, &meta) != header.meta_crc {
            return Err(corrupted("metadata checksum mismatch"));
        }
        let parsed = parse_meta(&header, &meta)?;
        if parsed.pages.windows(2).any(|w| w[0] >= w[1])
            || parsed.pages.last().is_some_and(|&p| p >= ram_pages)
        {
            return Err(corrupted("page index out of order or beyond RAM"));
        }
        if parsed
            .pages
            .first()
            .is_some_and(|&p| p * PAGE_SIZE < BOOT_INFO_ADDR)
        {
            return Err(corrupted(
                "it saves pages of the VMM's own structures (below the boot info)",
            ));
        }
        let layout = Image::from_layout(parsed.segments).map_err(SnapshotError::Layout)?;
        if layout.end() + arch::layout::MIN_HEAP_SIZE > header.mem_size {
            return Err(corrupted("the image does not fit the snapshot's RAM"));
        }
        if !parsed.vcpu.is_flick_guest() {
            return Err(corrupted("saved control registers are not a flick guest's"));
        }
        if !parsed.vcpu.xsave_is_loadable() {
            return Err(corrupted("saved FPU/SSE state is invalid"));
        }
        let source = match pages {
            Pages::Shared => PageSource::Sealed(copy_to_sealed_memfd(
                file,
                header.data_offset,
                data_len,
                header.data_crc,
            )?),
            Pages::Once => PageSource::File {
                file: file.try_clone().map_err(|source| SnapshotError::Io {
                    path: path.to_owned(),
                    source,
                })?,
                offset: header.data_offset,
                crc: header.data_crc,
            },
        };
        Ok(Snapshot {
            source,
            mem_size: header.mem_size,
            image_sha256: header.image_sha256,
            layout: Arc::new(layout),
            vcpu: parsed.vcpu,
            devices: parsed.devices,
            pages: parsed.pages,
        })
    }

    /// The saved vCPU state.
    pub fn vcpu(&self) -> &SavedVcpu {
        &self.vcpu
    }

    /// The saved device states.
    pub fn devices(&self) -> &[DeviceState] {
        &self.devices
    }

    /// The image layout the snapshot was taken with (no file bytes, so no symbols).
    pub fn layout(&self) -> &Arc<Image> {
        &self.layout
    }

    /// The numbers of the guest pages it saves (every other page of its RAM is zero).
    pub(crate) fn page_numbers(&self) -> &[u64] {
        &self.pages
    }

    /// Pages saved.
    pub fn page_count(&self) -> usize {
        self.pages.len()
    }

    /// Puts the saved pages into `ram`, then rebuilds the privileged structures from the
    /// validated layout. Shared pages are mapped copy-on-write; with `populate`, every page is
    /// copied in now (`MAP_POPULATE` on a private writable mapping breaks copy-on-write at
    /// once): a VM prepared ahead of a request (`vmm serve`) then takes no host page fault
    /// while it runs. Pages read once are copied into `ram` and their checksum checked.
    pub fn map_into(&self, ram: &GuestRam, populate: bool) -> Result<(), SnapshotError> {
        if ram.size() != self.mem_size {
            return Err(corrupted("RAM size differs from the snapshot's"));
        }
        match &self.source {
            PageSource::Sealed(memfd) => self.map_sealed(memfd, ram, populate)?,
            PageSource::File { file, offset, crc } => self.read_pages(file, *offset, *crc, ram)?,
        }
        arch::load_privileged_structures(ram, &self.layout)
            .map_err(|e| corrupted(e.to_string()))?;
        Ok(())
    }

    /// The saved pages as runs of consecutive guest pages: (guest address, offset in the
    /// data, length), in index order.
    fn runs(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        let mut i = 0;
        std::iter::from_fn(move || {
            if i >= self.pages.len() {
                return None;
            }
            let mut run = 1;
            while i + run < self.pages.len() && self.pages[i + run] == self.pages[i] + run as u64 {
                run += 1;
            }
            let item = (
                self.pages[i] * PAGE_SIZE,
                i as u64 * PAGE_SIZE,
                run as u64 * PAGE_SIZE,
            );
            i += run;
            Some(item)
        })
    }

    /// Reads the data section of `file` at `offset` into `ram`, run by run, and checks its
    /// checksum over the bytes read (what the guest will run on).
    fn read_pages(
        &self,
        file: &File,
        offset: u64,
        expected_crc: u32,
        ram: &GuestRam,
    ) -> Result<(), SnapshotError> {
        let mut crc = crc32fast::Hasher::new();
        for (guest, data, len) in self.runs() {
            // The page numbers were checked against the RAM size; `with_host_range` checks the
            // run again.
            ram.with_host_range(guest, len, |host, len| {
                // SAFETY: `host..host+len` is guest RAM that `with_host_range` checked; the
                // guest has not run yet and nothing else refers to these bytes while the
                // slice lives (this one call).
                let pages = unsafe { std::slice::from_raw_parts_mut(host, len) };
                file.read_exact_at(pages, offset + data)?;
                crc.update(pages);
                Ok::<(), std::io::Error>(())
            })
            .map_err(|e| corrupted(format!("page at {guest:#x}: {e}")))?
            .map_err(|e| corrupted(format!("cannot read the data: {e}")))?;
        }
        if crc.finalize() != expected_crc {
            return Err(corrupted("data checksum mismatch"));
        }
        Ok(())
    }

    fn map_sealed(
        &self,
        memfd: &File,
        ram: &GuestRam,
        populate: bool,
    ) -> Result<(), SnapshotError> {
        let populate_flag = if populate { libc::MAP_POPULATE } else { 0 };
        for (guest, offset, len) in self.runs() {
            // SAFETY: [guest, guest+len) lies inside `ram` (page numbers were checked against
            // its size); the VMM holds no references into guest RAM, only copies, so replacing
            // the pages under the mapping (MAP_FIXED) invalidates nothing. The memfd is sealed:
            // its pages cannot change or go away under the mapping.
            let mapped = unsafe {
                libc::mmap(
                    (ram.host_address() + guest) as *mut libc::c_void,
                    len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_FIXED | populate_flag,
                    memfd.as_raw_fd(),
                    offset as libc::off_t,
                )
            };
            if mapped == libc::MAP_FAILED {
                return Err(SnapshotError::Io {
                    path: PathBuf::from("<snapshot pages>"),
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        Ok(())
    }
}

/// The parts of the metadata.
struct Meta {
    segments: Vec<crate::memory::image::Segment>,
    vcpu: SavedVcpu,
    devices: Vec<DeviceState>,
    pages: Vec<u64>,
}

/// A record of the metadata.
fn value<T: ByteValued + Default>(bytes: &[u8]) -> Result<T, SnapshotError> {
    crate::memory::value_from_bytes(bytes).ok_or_else(|| corrupted("metadata too short"))
}

fn parse_meta(header: &Header, meta: &[u8]) -> Result<Meta, SnapshotError> {
    let (segments, rest) =
        meta.split_at(header.segment_count as usize * size_of::<SegmentRecord>());
    let segments = segments
        .chunks_exact(size_of::<SegmentRecord>())
        .map(|c| value(c).map(|r: SegmentRecord| r.segment()))
        .collect::<Result<Vec<_>, _>>()?;
    let (vcpu, rest) = rest.split_at(size_of::<SavedVcpu>());
    let vcpu: SavedVcpu = value(vcpu)?;
    let (mut records, index) = rest.split_at(header.device_bytes as usize);
    let mut devices = Vec::new();
    while !records.is_empty() {
        let (head, rest) = records
            .split_at_checked(size_of::<DeviceRecord>())
            .ok_or_else(|| corrupted("device record truncated"))?;
        let record: DeviceRecord = value(head)?;
        let (bytes, rest) = rest
            .split_at_checked(record.len as usize)
            .ok_or_else(|| corrupted("device record truncated"))?;
        if record.reserved != 0 || devices.iter().any(|d: &DeviceState| d.port == record.port) {
            return Err(corrupted("device records are invalid"));
        }
        devices.push(DeviceState {
            port: record.port,
            bytes: bytes.to_vec(),
        });
        records = rest;
    }
    let pages = index
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunks")))
        .collect();
    Ok(Meta {
        segments,
        vcpu,
        devices,
        pages,
    })
}

/// Copies `len` bytes at `offset` of `file` into a new memfd, checking their CRC on the way,
/// and seals it against every change.
fn copy_to_sealed_memfd(
    file: &File,
    offset: u64,
    len: u64,
    expected_crc: u32,
) -> Result<File, SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: PathBuf::from("<snapshot pages>"),
        source,
    };
    // SAFETY: memfd_create with a static NUL-terminated name; the fd is checked below.
    let fd = unsafe {
        libc::memfd_create(
            c"flick-snapshot".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let memfd = unsafe { File::from_raw_fd(fd) };
    memfd.set_len(len).map_err(io)?;
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; (len.min(1 << 20)) as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset + done)
            .map_err(|e| corrupted(format!("cannot read the data: {e}")))?;
        crc.update(&buf[..n]);
        memfd.write_all_at(&buf[..n], done).map_err(io)?;
        done += n as u64;
    }
    if crc.finalize() != expected_crc {
        return Err(corrupted("data checksum mismatch"));
    }
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on our own memfd; no writable shared mapping of it exists.
    if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    Ok(memfd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_sealed_memfd_refuses_writes() {
        let path = std::env::temp_dir().join(format!("flick-memfd-{}", std::process::id()));
        std::fs::write(&path, [7u8; 8192]).unwrap();
        let file = File::open(&path).unwrap();
        let crc = crc32fast::hash(&[7u8; 4096]);
        let memfd = copy_to_sealed_memfd(&file, 4096, 4096, crc).unwrap();
        assert!(memfd.write_all_at(b"x", 0).is_err());
        assert!(memfd.set_len(0).is_err());
        assert!(copy_to_sealed_memfd(&file, 0, 4096, crc ^ 1).is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
