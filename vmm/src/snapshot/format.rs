//! The snapshot file format, described once: the structs below are the bytes on disk (all
//! little-endian, `#[repr(C)]` without padding), in this order:
//!
//! ```text
//! 0      Header (128 bytes): magic, versions, image SHA-256, RAM size, counts, offsets,
//!        CRC-32 of the metadata (header included, its own field zeroed) and of the data
//! 128    metadata:
//!          segment_count × SegmentRecord   the image's PT_LOAD layout (page tables are rebuilt
//!                                          from it on restore, never read from the file)
//!          SavedVcpu                       registers, special registers (checked only), XSAVE
//!          device records                  device_bytes in all: DeviceRecord + its bytes, each
//!          page_count × u64                guest page numbers of the saved pages, ascending
//! data   (page-aligned) the saved pages, in index order
//! ```

use crate::memory::image::{Access, Segment};
use crate::vm::SavedVcpu;
use vm_memory::ByteValued;

/// `"FLICKSNP"`.
pub(crate) const MAGIC: [u8; 8] = *b"FLICKSNP";
/// Version of this file format (2: the VMM's own exception stubs, device records).
pub(crate) const FORMAT_VERSION: u32 = 2;

/// The fixed header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Header {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// `abi::ABI_VERSION` of the guest.
    pub abi_version: u32,
    /// SHA-256 of the image file the snapshot was taken of.
    pub image_sha256: [u8; 32],
    /// Guest RAM size.
    pub mem_size: u64,
    /// Number of [`SegmentRecord`]s.
    pub segment_count: u32,
    /// Bytes of device records.
    pub device_bytes: u32,
    /// Number of saved pages.
    pub page_count: u64,
    /// File offset of the first saved page.
    pub data_offset: u64,
    /// CRC-32 of the header (with this field zero) and the metadata.
    pub meta_crc: u32,
    /// CRC-32 of the data.
    pub data_crc: u32,
    /// Zero.
    pub reserved: [u64; 5],
}

/// Bytes of [`Header`].
pub(crate) const HEADER_SIZE: usize = 128;
const _: () = assert!(size_of::<Header>() == HEADER_SIZE);

// SAFETY: `#[repr(C)]` of integers and byte arrays, no padding (size asserted above: 8 + 4 + 4
// + 32 + 8 + 4 + 4 + 8 + 8 + 4 + 4 + 5 × 8): every bit pattern is a valid value.
unsafe impl ByteValued for Header {}

/// One saved segment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SegmentRecord {
    /// Start address.
    pub addr: u64,
    /// Bytes in memory.
    pub mem_size: u64,
    /// Bytes from the file.
    pub file_size: u64,
    /// Bit 0: writable; bit 1: executable.
    pub flags: u64,
    /// Zero.
    pub reserved: u64,
}

// SAFETY: `#[repr(C)]` of five u64: no padding, every bit pattern valid.
unsafe impl ByteValued for SegmentRecord {}

/// Most segments a snapshot may list.
pub(crate) const MAX_SEGMENTS: usize = crate::memory::image::MAX_LOAD_SEGMENTS;

/// The header of one device's saved state; `len` bytes follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DeviceRecord {
    /// First port of the device's range.
    pub port: u16,
    /// Zero.
    pub reserved: u16,
    /// Bytes of state that follow.
    pub len: u32,
}

// SAFETY: `#[repr(C)]` of u16, u16, u32: no padding, every bit pattern valid.
unsafe impl ByteValued for DeviceRecord {}

/// Most bytes of device state a snapshot may hold.
pub(crate) const MAX_DEVICE_BYTES: usize = 64 * 1024;

impl SegmentRecord {
    /// The record of `segment`.
    pub fn of(segment: &Segment) -> Self {
        Self {
            addr: segment.addr,
            mem_size: segment.mem_size,
            file_size: segment.file_size,
            flags: u64::from(segment.access.write) | (u64::from(segment.access.execute) << 1),
            reserved: 0,
        }
    }

    /// The segment it describes (validated later by `Image::from_layout`).
    pub fn segment(&self) -> Segment {
        Segment {
            addr: self.addr,
            mem_size: self.mem_size,
            file_size: self.file_size,
            file_offset: 0,
            access: Access {
                write: self.flags & 1 != 0,
                execute: self.flags & 2 != 0,
            },
        }
    }
}

/// Bytes of the metadata for these counts (`None` if it overflows).
pub(crate) fn meta_len(segment_count: u32, device_bytes: u32, page_count: u64) -> Option<usize> {
    (segment_count as usize)
        .checked_mul(size_of::<SegmentRecord>())?
        .checked_add(size_of::<SavedVcpu>())?
        .checked_add(device_bytes as usize)?
        .checked_add(usize::try_from(page_count).ok()?.checked_mul(8)?)
}

/// CRC-32 of `header` (its `meta_crc` taken as zero) and `meta`.
pub(crate) fn meta_crc(header: &Header, meta: &[u8]) -> u32 {
    let zeroed = Header {
        meta_crc: 0,
        ..*header
    };
    let mut crc = crc32fast::Hasher::new();
    crc.update(zeroed.as_slice());
    crc.update(meta);
    crc.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_meta_len_counts_every_part() {
        let len = meta_len(2, 10, 3).unwrap();
        assert_eq!(len, 2 * 40 + size_of::<SavedVcpu>() + 10 + 24);
        assert_eq!(meta_len(1, 0, u64::MAX), None);
    }

    #[test]
    fn test_segment_record_round_trips() {
        let segment = Segment {
            addr: 0x20_0000,
            mem_size: 0x3000,
            file_size: 0x2000,
            file_offset: 0,
            access: Access {
                write: true,
                execute: false,
            },
        };
        assert_eq!(SegmentRecord::of(&segment).segment(), segment);
    }

    #[test]
    fn test_meta_crc_ignores_its_own_field() {
        let header = Header {
            magic: MAGIC,
            meta_crc: 1,
            ..Default::default()
        };
        let other = Header {
            meta_crc: 2,
            ..header
        };
        assert_eq!(meta_crc(&header, b"x"), meta_crc(&other, b"x"));
        assert_ne!(meta_crc(&header, b"x"), meta_crc(&header, b"y"));
    }
}
