//! The image loader's front half: reads an image file and validates every field before any of
//! it is trusted. An [`Image`] that exists is a static x86-64 `ET_EXEC` with W^X, page-disjoint
//! `PT_LOAD` segments above the VMM's low memory, an entry in executable code, and a flick ABI
//! note of this VMM's version. Nothing in an image runs at ring 0: the exception stubs are the
//! VMM's own (see `arch::stubs`).
//!
//! Nothing here allocates or reads more than [`MAX_IMAGE_FILE_SIZE`] bytes, whatever the file
//! or its headers claim.

use crate::arch::layout::{IMAGE_MIN_ADDR, LARGE_PAGE_SIZE, MAX_MEM_SIZE, MAX_PTS, PAGE_SIZE};
use crate::files::{FileError, open_regular};
use crate::size::Size;
use abi::note::{AbiNoteDesc, DESC_SIZE};
use goblin::container::{Container, Ctx};
use goblin::elf::header::{EM_X86_64, ET_DYN, ET_EXEC, ET_REL};
use goblin::elf::program_header::{
    PF_R, PF_W, PF_X, PT_DYNAMIC, PT_INTERP, PT_LOAD, PT_NOTE, PT_TLS, ProgramHeader,
};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Largest image file the VMM reads.
pub const MAX_IMAGE_FILE_SIZE: u64 = 64 << 20;
/// Most `PT_LOAD` segments an image may have.
pub const MAX_LOAD_SEGMENTS: usize = 16;
/// Most program headers an image may have.
pub const MAX_PROGRAM_HEADERS: usize = 64;

const ELF_HEADER_SIZE: usize = 64;
const PROGRAM_HEADER_SIZE: usize = 56;

/// Why a file is not a bootable image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file cannot be opened, or is not a regular file.
    #[error("image: {0}")]
    File(#[from] FileError),
    /// The file could not be read.
    #[error("cannot read image {path}")]
    Io {
        /// The image path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is empty.
    #[error("{0} is empty")]
    Empty(PathBuf),
    /// The file is larger than the VMM reads.
    #[error("image {path} is too large ({size}; at most {max})", max = Size(MAX_IMAGE_FILE_SIZE))]
    TooLarge {
        /// The image path.
        path: PathBuf,
        /// The file size.
        size: Size,
    },
    /// The file is not ELF, or not an ELF this VMM boots.
    #[error("not an image for this VMM: {0}")]
    Foreign(String),
    /// The ELF is malformed.
    #[error("malformed image: {0}")]
    Malformed(String),
    /// The image does not fit in the guest RAM it was given.
    #[error("image needs at least {needed} of guest RAM; --mem gives {given}")]
    TooLittleMemory {
        /// What the image needs.
        needed: Size,
        /// What was given.
        given: Size,
    },
}

fn foreign(msg: impl Into<String>) -> ImageError {
    ImageError::Foreign(msg.into())
}

fn malformed(msg: impl Into<String>) -> ImageError {
    ImageError::Malformed(msg.into())
}

/// Exactly `len` bytes of `file` from its start, the size stat reported: in one `pread` (a
/// growing `read_to_end` takes four reads for hello's 88 KiB) into memory not zeroed first
/// (on the boot path, zeroing 88 KiB to overwrite it at once is work done twice). A file that
/// shrank meanwhile fails here; bytes appended meanwhile are not read.
fn read_exactly(file: &std::fs::File, len: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes: Vec<u8> = Vec::with_capacity(len);
    while bytes.len() < len {
        let filled = bytes.len();
        let spare = &mut bytes.spare_capacity_mut()[..len - filled];
        // SAFETY: pread writes at most `spare.len()` bytes into the vector's spare capacity,
        // which is allocated and ours; the offset is what has been read so far.
        let read = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                spare.len(),
                filled as libc::off_t,
            )
        };
        match read {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was read",
                ));
            }
            n if n < 0 => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
            // SAFETY: pread initialised these `n` bytes, just past the initialised ones.
            n => unsafe { bytes.set_len(filled + n as usize) },
        }
    }
    Ok(bytes)
}

/// Access rights of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Writable.
    pub write: bool,
    /// Executable.
    pub execute: bool,
}

/// A validated `PT_LOAD` segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical (= virtual) start address.
    pub addr: u64,
    /// Offset of its bytes in the file.
    pub file_offset: u64,
    /// Bytes taken from the file.
    pub file_size: u64,
    /// Bytes in memory (the rest is zero).
    pub mem_size: u64,
    /// Rights.
    pub access: Access,
}

impl Segment {
    /// One past the last byte in memory.
    pub fn end(&self) -> u64 {
        self.addr + self.mem_size
    }

    /// First page of the segment.
    pub fn first_page(&self) -> u64 {
        self.addr & !(PAGE_SIZE - 1)
    }

    /// One past the last page of the segment.
    pub fn page_end(&self) -> u64 {
        align_up(self.end(), PAGE_SIZE)
    }
}

/// A validated image.
#[derive(Debug)]
pub struct Image {
    bytes: Vec<u8>,
    entry: u64,
    segments: Vec<Segment>,
}

fn align_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align) * align
}

impl Image {
    /// Reads and validates the image at `path`.
    pub fn from_file(path: &Path) -> Result<Self, ImageError> {
        let (file, meta) = open_regular(path)?;
        Self::from_open_file(path, &file, &meta)
    }

    /// Reads and validates an image from a file [`open_regular`] opened.
    pub(crate) fn from_open_file(
        path: &Path,
        file: &std::fs::File,
        meta: &std::fs::Metadata,
    ) -> Result<Self, ImageError> {
        let io = |source| ImageError::Io {
            path: path.to_owned(),
            source,
        };
        if meta.len() == 0 {
            return Err(ImageError::Empty(path.to_owned()));
        }
        if meta.len() > MAX_IMAGE_FILE_SIZE {
            return Err(ImageError::TooLarge {
                path: path.to_owned(),
                size: Size(meta.len()),
            });
        }
        let bytes = read_exactly(file, meta.len() as usize).map_err(io)?;
        Self::parse(bytes)
    }

    /// Validates an image held in memory.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, ImageError> {
        check_ident(&bytes)?;
        let header = goblin::elf::Elf::parse_header(&bytes)
            .map_err(|err| malformed(format!("bad ELF header: {err}")))?;
        if header.e_machine != EM_X86_64 {
            return Err(foreign(format!(
                "built for another architecture (e_machine {}), not x86-64",
                header.e_machine
            )));
        }
        match header.e_type {
            ET_EXEC => {}
            ET_DYN => {
                return Err(foreign(
                    "a position-independent executable or shared library (ET_DYN); images are static ET_EXEC",
                ));
            }
            ET_REL => {
                return Err(foreign(
                    "an object file (ET_REL); images are static ET_EXEC",
                ));
            }
            other => return Err(foreign(format!("ELF type {other} is not ET_EXEC"))),
        }
        let headers = program_headers(&bytes, header.e_phoff, header.e_phnum, header.e_phentsize)?;
        let mut segments = Vec::new();
        let mut note = None;
        for ph in &headers {
            match ph.p_type {
                PT_INTERP => {
                    return Err(foreign("a dynamically linked program (it has PT_INTERP)"));
                }
                PT_DYNAMIC => return Err(foreign("it has dynamic relocations (PT_DYNAMIC)")),
                PT_TLS => return Err(foreign("it uses thread-local storage (PT_TLS)")),
                PT_LOAD => {
                    if let Some(segment) = load_segment(ph, bytes.len() as u64)? {
                        segments.push(segment);
                    }
                }
                PT_NOTE if note.is_none() => {
                    note = find_abi_note(&bytes, ph)?;
                }
                _ => {}
            }
        }
        let note = note.ok_or_else(|| foreign("no ABI note"))?;
        if note.abi_version != abi::ABI_VERSION {
            return Err(foreign(format!(
                "built for ABI version {}, this VMM speaks version {}",
                note.abi_version,
                abi::ABI_VERSION
            )));
        }
        if note.flags != 0 || note.reserved != 0 {
            return Err(malformed("ABI note: reserved fields are not zero"));
        }
        check_segments(&mut segments)?;
        let image = Image {
            bytes,
            entry: header.e_entry,
            segments,
        };
        image.check_entry()?;
        Ok(image)
    }

    /// An image known only by its layout (a restored snapshot's), checked by the same rules as
    /// a parsed one: page-disjoint W^X segments above low memory. It has no file bytes.
    pub fn from_layout(mut segments: Vec<Segment>) -> Result<Self, ImageError> {
        for s in &segments {
            let end = s.addr.checked_add(s.mem_size);
            if s.addr < IMAGE_MIN_ADDR || end.is_none_or(|end| end > MAX_MEM_SIZE) {
                return Err(malformed(format!(
                    "segment at {:#x} lies outside the image area",
                    s.addr
                )));
            }
            if s.file_size > s.mem_size || (s.access.write && s.access.execute) {
                return Err(malformed(format!("segment at {:#x} is invalid", s.addr)));
            }
        }
        check_segments(&mut segments)?;
        Ok(Image {
            bytes: Vec::new(),
            entry: segments[0].addr,
            segments: segments
                .into_iter()
                .map(|s| Segment {
                    file_offset: 0,
                    file_size: 0,
                    ..s
                })
                .collect(),
        })
    }

    /// Checks that the image and a minimal heap fit in `mem_size` bytes of guest RAM.
    pub fn check_fits(&self, mem_size: u64) -> Result<(), ImageError> {
        let needed = self.end() + crate::arch::layout::MIN_HEAP_SIZE;
        if needed > mem_size {
            let needed = align_up(needed, LARGE_PAGE_SIZE);
            return Err(ImageError::TooLittleMemory {
                needed: Size(needed),
                given: Size(mem_size),
            });
        }
        Ok(())
    }

    /// The entry point.
    pub fn entry(&self) -> u64 {
        self.entry
    }

    /// The `PT_LOAD` segments, sorted by address, page-disjoint.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// One past the last page of the last segment.
    pub fn end(&self) -> u64 {
        self.segments
            .last()
            .map_or(IMAGE_MIN_ADDR, Segment::page_end)
    }

    /// The file bytes of `segment` (validated to lie within the file).
    pub fn file_bytes(&self, segment: &Segment) -> &[u8] {
        let start = segment.file_offset as usize;
        &self.bytes[start..start + segment.file_size as usize]
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether a code address lies in the image's executable file bytes.
    fn executable_segment_containing(&self, addr: u64, len: u64) -> Option<&Segment> {
        self.segments.iter().find(|s| {
            s.access.execute
                && addr >= s.addr
                && addr
                    .checked_add(len)
                    .is_some_and(|end| end <= s.addr + s.file_size)
        })
    }

    fn check_entry(&self) -> Result<(), ImageError> {
        match self.executable_segment_containing(self.entry, 1) {
            Some(_) => Ok(()),
            None => Err(malformed(format!(
                "entry point {:#x} is not inside an executable segment",
                self.entry
            ))),
        }
    }
}

fn check_ident(bytes: &[u8]) -> Result<(), ImageError> {
    if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
        return Err(foreign("not an ELF file"));
    }
    if bytes.len() < ELF_HEADER_SIZE {
        return Err(malformed(format!(
            "truncated ELF header ({} bytes, need {ELF_HEADER_SIZE})",
            bytes.len()
        )));
    }
    match bytes[4] {
        2 => {}
        1 => return Err(foreign("a 32-bit ELF; images are 64-bit")),
        other => return Err(malformed(format!("unknown ELF class {other}"))),
    }
    match bytes[5] {
        1 => Ok(()),
        2 => Err(foreign("a big-endian ELF; images are little-endian x86-64")),
        other => Err(malformed(format!("unknown ELF data encoding {other}"))),
    }
}

fn program_headers(
    bytes: &[u8],
    phoff: u64,
    phnum: u16,
    phentsize: u16,
) -> Result<Vec<ProgramHeader>, ImageError> {
    if phnum == 0 {
        return Err(malformed("no program headers"));
    }
    if usize::from(phentsize) != PROGRAM_HEADER_SIZE {
        return Err(malformed(format!(
            "program header size {phentsize}, expected 56"
        )));
    }
    if usize::from(phnum) > MAX_PROGRAM_HEADERS {
        return Err(malformed(format!(
            "{phnum} program headers (at most {MAX_PROGRAM_HEADERS})"
        )));
    }
    let table_size = u64::from(phnum) * PROGRAM_HEADER_SIZE as u64;
    let end = phoff.checked_add(table_size);
    if end.is_none_or(|end| end > bytes.len() as u64) {
        return Err(malformed(format!(
            "program headers at {phoff:#x}..+{table_size:#x} lie beyond the end of the file ({} bytes)",
            bytes.len()
        )));
    }
    let ctx = Ctx::new(Container::Big, goblin::container::Endian::Little);
    ProgramHeader::parse(bytes, phoff as usize, usize::from(phnum), ctx)
        .map_err(|err| malformed(format!("bad program headers: {err}")))
}

fn load_segment(ph: &ProgramHeader, file_len: u64) -> Result<Option<Segment>, ImageError> {
    if ph.p_memsz == 0 {
        return Ok(None);
    }
    let at = ph.p_vaddr;
    if ph.p_filesz > ph.p_memsz {
        return Err(malformed(format!(
            "segment at {at:#x}: file size {:#x} exceeds memory size {:#x}",
            ph.p_filesz, ph.p_memsz
        )));
    }
    if ph
        .p_offset
        .checked_add(ph.p_filesz)
        .is_none_or(|end| end > file_len)
    {
        return Err(malformed(format!(
            "segment at {at:#x}: bytes {:#x}..+{:#x} lie beyond the end of the file ({file_len} bytes)",
            ph.p_offset, ph.p_filesz
        )));
    }
    if ph.p_paddr != ph.p_vaddr {
        return Err(malformed(format!(
            "segment at {at:#x}: physical address {:#x} differs (images are identity-mapped)",
            ph.p_paddr
        )));
    }
    let Some(end) = ph.p_vaddr.checked_add(ph.p_memsz) else {
        return Err(malformed(format!(
            "segment at {at:#x}: address + size overflows"
        )));
    };
    if at < IMAGE_MIN_ADDR {
        return Err(malformed(format!(
            "segment at {at:#x} overlaps the VMM's reserved low memory (images start at or above {IMAGE_MIN_ADDR:#x})"
        )));
    }
    if end > MAX_MEM_SIZE {
        return Err(malformed(format!(
            "segment at {at:#x}..{end:#x} ends beyond the largest guest RAM ({})",
            Size(MAX_MEM_SIZE)
        )));
    }
    let write = ph.p_flags & PF_W != 0;
    let execute = ph.p_flags & PF_X != 0;
    if write && execute {
        return Err(malformed(format!(
            "segment at {at:#x} is both writable and executable"
        )));
    }
    if ph.p_flags & (PF_R | PF_W | PF_X) == 0 {
        return Err(malformed(format!(
            "segment at {at:#x} has no access rights"
        )));
    }
    Ok(Some(Segment {
        addr: at,
        file_offset: ph.p_offset,
        file_size: ph.p_filesz,
        mem_size: ph.p_memsz,
        access: Access { write, execute },
    }))
}

fn check_segments(segments: &mut [Segment]) -> Result<(), ImageError> {
    if segments.is_empty() {
        return Err(malformed("no loadable segments"));
    }
    if segments.len() > MAX_LOAD_SEGMENTS {
        return Err(malformed(format!(
            "{} loadable segments (at most {MAX_LOAD_SEGMENTS})",
            segments.len()
        )));
    }
    segments.sort_by_key(|s| s.addr);
    for pair in segments.windows(2) {
        if pair[1].first_page() < pair[0].page_end() {
            return Err(malformed(format!(
                "segments at {:#x} and {:#x} overlap or share a page",
                pair[0].addr, pair[1].addr
            )));
        }
    }
    let first_chunk = segments[0].addr / LARGE_PAGE_SIZE;
    let last_chunk = (segments[segments.len() - 1].page_end() - 1) / LARGE_PAGE_SIZE;
    if last_chunk - first_chunk + 1 > MAX_PTS - 1 {
        return Err(malformed(format!(
            "image spans {:#x}..{:#x}, more than {} MiB",
            segments[0].addr,
            segments[segments.len() - 1].end(),
            (MAX_PTS - 1) * 2
        )));
    }
    Ok(())
}

/// Walks the notes of a `PT_NOTE` segment and returns the flick ABI note's descriptor.
fn find_abi_note(bytes: &[u8], ph: &ProgramHeader) -> Result<Option<AbiNoteDesc>, ImageError> {
    let start = ph.p_offset;
    let Some(end) = start
        .checked_add(ph.p_filesz)
        .filter(|&end| end <= bytes.len() as u64)
    else {
        return Err(malformed("note segment lies beyond the end of the file"));
    };
    let notes = &bytes[start as usize..end as usize];
    let align = if ph.p_align == 8 { 8 } else { 4 };
    let mut offset = 0usize;
    while offset + 12 <= notes.len() {
        let word = |at: usize| u32::from_le_bytes(notes[at..at + 4].try_into().unwrap());
        let (name_size, desc_size, note_type) = (
            word(offset) as usize,
            word(offset + 4) as usize,
            word(offset + 8),
        );
        let name_start = offset + 12;
        let desc_start = align_up((name_start + name_size) as u64, align) as usize;
        let next = align_up((desc_start + desc_size) as u64, align) as usize;
        if desc_start + desc_size > notes.len() {
            return Err(malformed("truncated note"));
        }
        let name = &notes[name_start..name_start + name_size];
        if name == abi::note::NAME && note_type == abi::note::TYPE {
            if desc_size != DESC_SIZE {
                return Err(malformed(format!(
                    "ABI note has {desc_size} descriptor bytes"
                )));
            }
            let desc = &notes[desc_start..desc_start + DESC_SIZE];
            return Ok(crate::memory::value_from_bytes::<AbiNoteDesc>(desc));
        }
        offset = next;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_file(bytes: &[u8]) -> std::fs::File {
        let dir = std::env::temp_dir().join(format!("flick-image-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.bin", bytes.len()));
        std::fs::write(&path, bytes).unwrap();
        std::fs::File::open(&path).unwrap()
    }

    #[test]
    fn test_read_exactly_reads_the_whole_file_in_order() {
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let file = scratch_file(&bytes);
        assert_eq!(read_exactly(&file, bytes.len()).unwrap(), bytes);
        assert_eq!(read_exactly(&file, 10).unwrap(), &bytes[..10]);
        assert!(read_exactly(&file, 0).unwrap().is_empty());
    }

    #[test]
    fn test_read_exactly_a_file_shorter_than_stat_said_fails() {
        let file = scratch_file(&[7u8; 5000]);
        let err = read_exactly(&file, 5001).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("shrank"), "{err}");
    }
}
