//! Snapshots: a guest saved at its kernel's snapshot point, restored in a fresh VM.
//!
//! The file, all little-endian:
//!
//! ```text
//! 0      header (HEADER_SIZE bytes): magic, format and ABI versions, image SHA-256, RAM size,
//!        exception-stub address, counts and offsets, CRC-32 of the metadata and of the data
//! 128    segments: the image's PT_LOAD layout (to rebuild page tables on restore)
//!        registers (kvm_regs), special registers (kvm_sregs), XSAVE area, COM1 pending bytes
//!        page index: the guest page number of every saved page, ascending
//! data   (page-aligned) the saved pages, in index order: every page that is not all zero
//! ```
//!
//! Restoring maps the data pages straight from the file, `MAP_PRIVATE`: restored VMs share the
//! pages they never write, through the page cache. A snapshot is untrusted input: every count,
//! offset and page number is checked against the file size and the RAM size, the metadata and
//! the data are checksummed, and the privileged state is not taken from the file at all: the
//! page tables, GDT, IDT and TSS are rebuilt from the (validated) segment layout, the special
//! registers are the VMM's own, and only the flags a ring-3 guest can hold survive in RFLAGS.

use crate::arch::{self, layout::PAGE_SIZE};
use crate::image::{Access, Image, ImageError, Segment};
use crate::memory::GuestRam;
use crate::size::Size;
use kvm_bindings::{kvm_regs, kvm_sregs};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// `"FLICKSNP"`.
pub const MAGIC: [u8; 8] = *b"FLICKSNP";
/// Version of this file format.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the fixed header.
pub const HEADER_SIZE: usize = 128;
/// Bytes per saved segment.
const SEGMENT_SIZE: usize = 40;
/// Bytes of the saved XSAVE area.
pub const XSAVE_SIZE: usize = 4096;
/// Most COM1 bytes kept.
const MAX_PENDING: usize = 4096;

/// Why a snapshot cannot be written or used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
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
    #[error("corrupted snapshot: {0}")]
    Layout(#[source] ImageError),
    /// The guest never reached its snapshot point.
    #[error("the guest stopped before its snapshot point ({0})")]
    NoSnapshotPoint(String),
}

fn corrupted(what: impl Into<String>) -> SnapshotError {
    SnapshotError::Corrupted(what.into())
}

/// The vCPU and device state saved with a snapshot.
#[derive(Clone)]
pub struct SavedState {
    /// General registers at the snapshot point.
    pub regs: kvm_regs,
    /// Special registers (checked on restore, never loaded).
    pub sregs: kvm_sregs,
    /// FPU/SSE state: the legacy XSAVE area (`kvm_xsave.region`).
    pub xsave: Vec<u8>,
    /// COM1 bytes not yet handed on.
    pub com1_pending: Vec<u8>,
}

fn pod_bytes<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: T is one of the kvm_bindings register structs: plain integers, no references,
    // read as bytes only.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

fn pod_from<T: Copy + Default>(bytes: &[u8]) -> T {
    let mut value = T::default();
    let n = bytes.len().min(size_of::<T>());
    // SAFETY: T is a kvm_bindings register struct of plain integers, for which every bit
    // pattern is valid; at most size_of::<T>() bytes are copied into it.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut value as *mut T).cast::<u8>(), n)
    };
    value
}

fn image_sha256(image: &Image) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(image.bytes()).into()
}

/// Writes the snapshot of a guest stopped at its snapshot point.
pub fn write(
    path: &Path,
    image: &Image,
    ram: &GuestRam,
    state: &SavedState,
) -> Result<Summary, SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    };
    let pages = saved_pages(ram);
    let mut meta = Vec::new();
    for s in image.segments() {
        meta.extend_from_slice(&s.addr.to_le_bytes());
        meta.extend_from_slice(&s.mem_size.to_le_bytes());
        meta.extend_from_slice(&s.file_size.to_le_bytes());
        let flags = u64::from(s.access.write) | (u64::from(s.access.execute) << 1);
        meta.extend_from_slice(&flags.to_le_bytes());
        meta.extend_from_slice(&0u64.to_le_bytes());
    }
    meta.extend_from_slice(pod_bytes(&state.regs));
    meta.extend_from_slice(pod_bytes(&state.sregs));
    let mut xsave = state.xsave.clone();
    xsave.resize(XSAVE_SIZE, 0);
    meta.extend_from_slice(&xsave);
    let pending = &state.com1_pending[..state.com1_pending.len().min(MAX_PENDING)];
    meta.extend_from_slice(pending);
    for page in &pages {
        meta.extend_from_slice(&page.to_le_bytes());
    }
    let data_offset = (HEADER_SIZE + meta.len()).div_ceil(PAGE_SIZE as usize) * PAGE_SIZE as usize;
    let mut data_crc = crc32fast::Hasher::new();
    let mut data = vec![0u8; pages.len() * PAGE_SIZE as usize];
    for (i, page) in pages.iter().enumerate() {
        let chunk = &mut data[i * PAGE_SIZE as usize..(i + 1) * PAGE_SIZE as usize];
        ram.read(page * PAGE_SIZE, chunk)
            .map_err(|e| corrupted(e.to_string()))?;
    }
    data_crc.update(&data);
    let mut header = Header {
        abi_version: abi::ABI_VERSION,
        image_sha256: image_sha256(image),
        mem_size: ram.size(),
        exception_stubs: image.exception_stubs(),
        segment_count: image.segments().len() as u32,
        pending_len: pending.len() as u32,
        page_count: pages.len() as u64,
        data_offset: data_offset as u64,
        meta_crc: 0,
        data_crc: data_crc.finalize(),
    };
    header.meta_crc = meta_crc(&header, &meta);
    let mut file = File::create(path).map_err(io)?;
    file.write_all(&header.to_bytes()).map_err(io)?;
    file.write_all(&meta).map_err(io)?;
    file.write_all(&vec![0u8; data_offset - HEADER_SIZE - meta.len()])
        .map_err(io)?;
    file.write_all(&data).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(Summary {
        pages: pages.len() as u64,
        file_size: (data_offset + data.len()) as u64,
    })
}

/// What `vmm snapshot` reports.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Pages saved.
    pub pages: u64,
    /// Bytes in the file.
    pub file_size: u64,
}

/// The guest pages worth saving: resident (touched) and not all zero.
fn saved_pages(ram: &GuestRam) -> Vec<u64> {
    let resident = ram.resident_page_list();
    let mut page = vec![0u8; PAGE_SIZE as usize];
    resident
        .into_iter()
        .filter(|&n| ram.read(n * PAGE_SIZE, &mut page).is_ok() && page.iter().any(|&b| b != 0))
        .collect()
}

struct Header {
    abi_version: u32,
    image_sha256: [u8; 32],
    mem_size: u64,
    exception_stubs: u64,
    segment_count: u32,
    pending_len: u32,
    page_count: u64,
    data_offset: u64,
    meta_crc: u32,
    data_crc: u32,
}

impl Header {
    fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.abi_version.to_le_bytes());
        b[16..48].copy_from_slice(&self.image_sha256);
        b[48..56].copy_from_slice(&self.mem_size.to_le_bytes());
        b[56..64].copy_from_slice(&self.exception_stubs.to_le_bytes());
        b[64..68].copy_from_slice(&self.segment_count.to_le_bytes());
        b[68..72].copy_from_slice(&self.pending_len.to_le_bytes());
        b[72..80].copy_from_slice(&self.page_count.to_le_bytes());
        b[80..88].copy_from_slice(&self.data_offset.to_le_bytes());
        b[88..92].copy_from_slice(&self.meta_crc.to_le_bytes());
        b[92..96].copy_from_slice(&self.data_crc.to_le_bytes());
        b
    }

    fn parse(b: &[u8; HEADER_SIZE]) -> Result<Self, SnapshotError> {
        if b[0..8] != MAGIC {
            return Err(SnapshotError::Foreign("bad magic".into()));
        }
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(SnapshotError::Foreign(format!(
                "format version {version}, this VMM reads version {FORMAT_VERSION}"
            )));
        }
        let abi_version = u32_at(12);
        if abi_version != abi::ABI_VERSION {
            return Err(SnapshotError::Foreign(format!(
                "made for ABI version {abi_version}, this VMM speaks version {}",
                abi::ABI_VERSION
            )));
        }
        Ok(Header {
            abi_version,
            image_sha256: b[16..48].try_into().unwrap(),
            mem_size: u64_at(48),
            exception_stubs: u64_at(56),
            segment_count: u32_at(64),
            pending_len: u32_at(68),
            page_count: u64_at(72),
            data_offset: u64_at(80),
            meta_crc: u32_at(88),
            data_crc: u32_at(92),
        })
    }
}

fn meta_crc(header: &Header, meta: &[u8]) -> u32 {
    let mut bytes = header.to_bytes();
    bytes[88..92].fill(0);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes);
    crc.update(meta);
    crc.finalize()
}

/// A validated snapshot, ready to be mapped into guest RAM.
pub struct Snapshot {
    file: File,
    /// Guest RAM size it was taken with.
    pub mem_size: u64,
    /// SHA-256 of the image it was taken of.
    pub image_sha256: [u8; 32],
    layout: Image,
    state: SavedState,
    pages: Vec<u64>,
    data_offset: u64,
}

impl Snapshot {
    /// Opens and validates `path`.
    pub fn open(path: &Path) -> Result<Self, SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(SnapshotError::Foreign(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        let file_len = meta.len();
        let mut head = [0u8; HEADER_SIZE];
        if file_len < HEADER_SIZE as u64 {
            return Err(corrupted(format!(
                "truncated: {file_len} bytes, the header alone is {HEADER_SIZE}"
            )));
        }
        file.read_exact(&mut head).map_err(io)?;
        let header = Header::parse(&head)?;
        crate::check_mem_size(header.mem_size).map_err(|e| corrupted(e.to_string()))?;
        let ram_pages = header.mem_size / PAGE_SIZE;
        if header.segment_count == 0
            || header.segment_count as usize > crate::image::MAX_LOAD_SEGMENTS
        {
            return Err(corrupted(format!("{} segments", header.segment_count)));
        }
        if header.pending_len as usize > MAX_PENDING {
            return Err(corrupted(format!(
                "{} pending COM1 bytes",
                header.pending_len
            )));
        }
        if header.page_count > ram_pages {
            return Err(corrupted(format!(
                "{} pages for {} of RAM",
                header.page_count,
                Size(header.mem_size)
            )));
        }
        let meta_len = header.segment_count as usize * SEGMENT_SIZE
            + size_of::<kvm_regs>()
            + size_of::<kvm_sregs>()
            + XSAVE_SIZE
            + header.pending_len as usize
            + header.page_count as usize * 8;
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
        file.read_exact(&mut meta).map_err(io)?;
        if meta_crc(&header, &meta) != header.meta_crc {
            return Err(corrupted("metadata checksum mismatch"));
        }
        let (segments, rest) = meta.split_at(header.segment_count as usize * SEGMENT_SIZE);
        let layout = Image::from_layout(parse_segments(segments), header.exception_stubs)
            .map_err(SnapshotError::Layout)?;
        if layout.end() + arch::layout::MIN_HEAP_SIZE > header.mem_size {
            return Err(corrupted("the image does not fit the snapshot's RAM"));
        }
        let (regs, rest) = rest.split_at(size_of::<kvm_regs>());
        let (sregs, rest) = rest.split_at(size_of::<kvm_sregs>());
        let (xsave, rest) = rest.split_at(XSAVE_SIZE);
        let (pending, index) = rest.split_at(header.pending_len as usize);
        let pages: Vec<u64> = index
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        if pages.windows(2).any(|w| w[0] >= w[1]) || pages.last().is_some_and(|&p| p >= ram_pages) {
            return Err(corrupted("page index out of order or beyond RAM"));
        }
        let state = SavedState {
            regs: pod_from(regs),
            sregs: pod_from(sregs),
            xsave: xsave.to_vec(),
            com1_pending: pending.to_vec(),
        };
        check_privileged_state(&state.sregs)?;
        let snapshot = Snapshot {
            file,
            mem_size: header.mem_size,
            image_sha256: header.image_sha256,
            layout,
            state,
            pages,
            data_offset: header.data_offset,
        };
        snapshot.check_data(header.data_crc)?;
        Ok(snapshot)
    }

    fn check_data(&self, expected: u32) -> Result<(), SnapshotError> {
        use std::os::unix::fs::FileExt;
        let mut crc = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 64 * PAGE_SIZE as usize];
        let total = self.pages.len() as u64 * PAGE_SIZE;
        let mut done = 0u64;
        while done < total {
            let n = (total - done).min(buf.len() as u64) as usize;
            self.file
                .read_exact_at(&mut buf[..n], self.data_offset + done)
                .map_err(|e| corrupted(format!("cannot read the data: {e}")))?;
            crc.update(&buf[..n]);
            done += n as u64;
        }
        if crc.finalize() != expected {
            return Err(corrupted("data checksum mismatch"));
        }
        Ok(())
    }

    /// The saved vCPU state.
    pub fn state(&self) -> &SavedState {
        &self.state
    }

    /// The image layout the snapshot was taken with (no file bytes, so no symbols).
    pub fn layout(&self) -> Image {
        Image::from_layout(
            self.layout.segments().to_vec(),
            self.layout.exception_stubs(),
        )
        .expect("validated when opened")
    }

    /// Reads only the RAM size from a snapshot's header (to map RAM before validating the rest).
    pub fn peek_mem_size(path: &Path) -> Result<u64, SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: path.to_owned(),
            source,
        };
        let mut head = [0u8; HEADER_SIZE];
        let mut file = File::open(path).map_err(io)?;
        let mut got = 0;
        while got < HEADER_SIZE {
            match file.read(&mut head[got..]).map_err(io)? {
                0 => break,
                n => got += n,
            }
        }
        if got < HEADER_SIZE {
            if got >= MAGIC.len() && head[..MAGIC.len()] != MAGIC {
                return Err(SnapshotError::Foreign("bad magic".into()));
            }
            return Err(corrupted(format!(
                "truncated: {got} bytes, the header alone is {HEADER_SIZE}"
            )));
        }
        let header = Header::parse(&head)?;
        crate::check_mem_size(header.mem_size).map_err(|e| corrupted(e.to_string()))?;
        Ok(header.mem_size)
    }

    /// Maps the saved pages into `ram` (copy-on-write from the file), then rebuilds the
    /// privileged structures from the validated layout.
    pub fn map_into(&self, ram: &GuestRam) -> Result<(), SnapshotError> {
        self.map_into_with(ram, false)
    }

    /// Like [`Snapshot::map_into`]; with `populate`, every page is copied in now
    /// (`MAP_POPULATE` on a private mapping breaks copy-on-write at once): a VM prepared ahead
    /// of a request (`vmm serve`) then takes no host page fault while it runs, at the cost of
    /// sharing nothing with other VMs.
    pub fn map_into_with(&self, ram: &GuestRam, populate: bool) -> Result<(), SnapshotError> {
        let populate_flag = if populate { libc::MAP_POPULATE } else { 0 };
        if ram.size() != self.mem_size {
            return Err(corrupted("RAM size differs from the snapshot's"));
        }
        let mut i = 0;
        while i < self.pages.len() {
            let mut run = 1;
            while i + run < self.pages.len() && self.pages[i + run] == self.pages[i] + run as u64 {
                run += 1;
            }
            let guest = self.pages[i] * PAGE_SIZE;
            let offset = self.data_offset + i as u64 * PAGE_SIZE;
            let len = run as u64 * PAGE_SIZE;
            // SAFETY: [guest, guest+len) lies inside `ram` (page numbers were checked against
            // its size); the VMM holds no references into guest RAM, only copies, so replacing
            // the pages under the mapping (MAP_FIXED) invalidates nothing.
            let mapped = unsafe {
                libc::mmap(
                    (ram.host_address() + guest) as *mut libc::c_void,
                    len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_FIXED | populate_flag,
                    self.file.as_raw_fd(),
                    offset as libc::off_t,
                )
            };
            if mapped == libc::MAP_FAILED {
                return Err(SnapshotError::Io {
                    path: PathBuf::from("<snapshot>"),
                    source: std::io::Error::last_os_error(),
                });
            }
            i += run;
        }
        arch::load_privileged_structures(ram, &self.layout)
            .map_err(|e| corrupted(e.to_string()))?;
        Ok(())
    }
}

fn parse_segments(bytes: &[u8]) -> Vec<Segment> {
    bytes
        .chunks_exact(SEGMENT_SIZE)
        .map(|c| {
            let at = |i: usize| u64::from_le_bytes(c[i * 8..i * 8 + 8].try_into().unwrap());
            Segment {
                addr: at(0),
                mem_size: at(1),
                file_size: at(2),
                file_offset: 0,
                access: Access {
                    write: at(3) & 1 != 0,
                    execute: at(3) & 2 != 0,
                },
            }
        })
        .collect()
}

/// The privileged registers a flick guest always has; a snapshot whose saved ones differ was
/// not taken by this VMM (a ring-3 guest cannot change them).
fn check_privileged_state(sregs: &kvm_sregs) -> Result<(), SnapshotError> {
    let ours = arch::regs::initial_sregs();
    let same = sregs.cr0 == ours.cr0
        && sregs.cr3 == ours.cr3
        && sregs.cr4 == ours.cr4
        && sregs.efer == ours.efer
        && sregs.cs.selector == ours.cs.selector
        && sregs.gdt.base == ours.gdt.base
        && sregs.idt.base == ours.idt.base
        && sregs.tr.base == ours.tr.base;
    if same {
        Ok(())
    } else {
        Err(corrupted("saved control registers are not a flick guest's"))
    }
}

/// RFLAGS bits a ring-3 guest may hold: the arithmetic flags, TF, DF, and the fixed bit 1.
/// IOPL, NT, RF, VM, AC, VIF, VIP, ID and IF are not taken from a file.
pub const GUEST_RFLAGS: u64 = 0x0cd5 | 0x2 | 0x100;

/// The registers a restored guest resumes with: the saved ones, with RFLAGS masked and `rax`
/// set to 1 ("restored") as the snapshot hypercall's result.
pub fn restored_regs(saved: &kvm_regs) -> kvm_regs {
    kvm_regs {
        rax: 1,
        rflags: (saved.rflags & GUEST_RFLAGS) | 0x2,
        ..*saved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_header_round_trips() {
        let header = Header {
            abi_version: abi::ABI_VERSION,
            image_sha256: [7; 32],
            mem_size: 16 << 20,
            exception_stubs: 0x20_0000,
            segment_count: 3,
            pending_len: 5,
            page_count: 16,
            data_offset: 0x2000,
            meta_crc: 0xdead_beef,
            data_crc: 0x1234_5678,
        };
        let parsed = Header::parse(&header.to_bytes()).unwrap();
        assert_eq!(parsed.to_bytes(), header.to_bytes());
    }

    #[test]
    fn test_header_of_other_format_is_foreign() {
        let mut bytes = [0u8; HEADER_SIZE];
        assert!(matches!(
            Header::parse(&bytes),
            Err(SnapshotError::Foreign(_))
        ));
        bytes[0..8].copy_from_slice(&MAGIC);
        bytes[8..12].copy_from_slice(&99u32.to_le_bytes());
        assert!(matches!(
            Header::parse(&bytes),
            Err(SnapshotError::Foreign(_))
        ));
    }

    #[test]
    fn test_restored_regs_drop_iopl_and_mark_restore() {
        let saved = kvm_regs {
            rax: 0,
            rflags: 0x3202 | 0x4000 | 0x40_0000,
            rip: 0x20_1000,
            ..Default::default()
        };
        let regs = restored_regs(&saved);
        assert_eq!(regs.rax, 1);
        assert_eq!(regs.rip, 0x20_1000);
        assert_eq!(regs.rflags & 0x3000, 0, "IOPL");
        assert_eq!(regs.rflags & 0x200, 0, "IF");
        assert_eq!(regs.rflags & 0x4000, 0, "NT");
        assert_ne!(regs.rflags & 0x2, 0);
    }
}
