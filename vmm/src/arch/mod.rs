//! x86-64 specifics: the guest memory layout, and the one-time setup a kernel would usually do
//! itself (page tables, GDT, TSS, IDT, boot info, register state), done here by the VMM so
//! that the guest starts at ring 3 with nothing left to do.

pub mod cpuid;
pub mod layout;
pub mod paging;
pub mod regs;
pub mod tables;

use crate::image::Image;
use crate::memory::{GuestRam, MemoryError};
use abi::BootInfo;
use layout::*;

/// Errors preparing guest memory.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The arguments do not fit in the boot-info area.
    #[error("arguments are too long ({len} bytes; at most {max})")]
    ArgsTooLong {
        /// Their packed size.
        len: usize,
        /// The room there is.
        max: usize,
    },
    /// Writing guest memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A restored snapshot's memory holds no valid boot info.
    #[error("the snapshot's guest memory holds no valid boot info")]
    BadBootInfo,
}

/// Host-side facts the guest learns through boot info.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostClock {
    /// TSC frequency in kHz, 0 if unknown.
    pub tsc_khz: u64,
    /// Wall-clock time at boot, ns since the Unix epoch.
    pub unix_ns: u64,
    /// Host TSC at that time (the guest TSC equals it).
    pub tsc: u64,
}

/// Writes the image-dependent part of guest memory: the segments, the page tables, and the
/// GDT, TSS and IDT.
pub fn load_image(ram: &GuestRam, image: &Image) -> Result<(), SetupError> {
    for segment in image.segments() {
        // Fresh anonymous memory is zero, so only the file part is copied.
        ram.write(segment.addr, image.file_bytes(segment))?;
    }
    load_privileged_structures(ram, image)
}

/// Writes what only the VMM decides: the page tables and the GDT, TSS and IDT for `image`'s
/// layout (also over a restored snapshot, whose own copies are not trusted).
pub fn load_privileged_structures(ram: &GuestRam, image: &Image) -> Result<(), SetupError> {
    paging::write_page_tables(ram, image)?;
    tables::write_system_tables(ram, image.exception_stubs())?;
    Ok(())
}

/// Packs `args` as NUL-terminated strings.
pub fn pack_args(args: &[&str]) -> Result<Vec<u8>, SetupError> {
    let len: usize = args.iter().map(|a| a.len() + 1).sum();
    let max = (BOOT_INFO_SIZE as usize) - size_of::<BootInfo>();
    if len > max {
        return Err(SetupError::ArgsTooLong { len, max });
    }
    let mut packed = Vec::with_capacity(len);
    for arg in args {
        packed.extend_from_slice(arg.as_bytes());
        packed.push(0);
    }
    Ok(packed)
}

/// What changes from one run to the next: written into boot info at boot, and rewritten when
/// a snapshot is restored.
#[derive(Debug, Clone, Copy)]
pub struct RunParams<'a> {
    /// Arguments, the image name first.
    pub args: &'a [&'a str],
    /// `KEY=VALUE` strings.
    pub env: &'a [&'a str],
    /// The host clock.
    pub clock: HostClock,
    /// [`abi::boot_flags`].
    pub flags: u32,
    /// Fresh random bits.
    pub random_seed: u64,
}

/// Writes the boot info for a fresh boot of `image`.
pub fn write_boot_info(
    ram: &GuestRam,
    image: &Image,
    params: RunParams<'_>,
) -> Result<(), SetupError> {
    let info = BootInfo {
        magic: abi::BOOT_INFO_MAGIC,
        abi_version: abi::ABI_VERSION,
        mem_size: ram.size(),
        heap_start: image.end(),
        heap_end: ram.size(),
        stack_bottom: STACK_BOTTOM,
        stack_top: STACK_TOP,
        ..Default::default()
    };
    write_run_params(ram, info, params)
}

/// Rewrites the per-run part of the boot info already in `ram` (a restored snapshot's).
pub fn rewrite_boot_info(ram: &GuestRam, params: RunParams<'_>) -> Result<(), SetupError> {
    let mut bytes = [0u8; size_of::<BootInfo>()];
    ram.read(BOOT_INFO_ADDR, &mut bytes)
        .map_err(|_| SetupError::BadBootInfo)?;
    let info = boot_info_from_bytes(&bytes);
    if info.magic != abi::BOOT_INFO_MAGIC {
        return Err(SetupError::BadBootInfo);
    }
    write_run_params(ram, info, params)
}

fn write_run_params(
    ram: &GuestRam,
    mut info: BootInfo,
    params: RunParams<'_>,
) -> Result<(), SetupError> {
    let all: Vec<&str> = params.args.iter().chain(params.env).copied().collect();
    let packed = pack_args(&all)?;
    let args_addr = BOOT_INFO_ADDR + size_of::<BootInfo>() as u64;
    info.argc = params.args.len() as u32;
    info.envc = params.env.len() as u32;
    info.flags = params.flags;
    info.args = args_addr;
    info.args_len = packed.len() as u64;
    info.tsc_khz = params.clock.tsc_khz;
    info.boot_unix_ns = params.clock.unix_ns;
    info.boot_tsc = params.clock.tsc;
    info.random_seed = params.random_seed;
    ram.write(BOOT_INFO_ADDR, &boot_info_bytes(&info))?;
    ram.write(args_addr, &packed)?;
    Ok(())
}

const U64_FIELDS: usize = 11;

/// The little-endian bytes of `info`, field by field in `#[repr(C)]` order.
fn boot_info_bytes(info: &BootInfo) -> Vec<u8> {
    let mut out = Vec::with_capacity(size_of::<BootInfo>());
    out.extend_from_slice(&info.magic.to_le_bytes());
    out.extend_from_slice(&info.abi_version.to_le_bytes());
    out.extend_from_slice(&info.argc.to_le_bytes());
    out.extend_from_slice(&info.envc.to_le_bytes());
    out.extend_from_slice(&info.flags.to_le_bytes());
    let fields: [u64; U64_FIELDS] = [
        info.args,
        info.args_len,
        info.mem_size,
        info.heap_start,
        info.heap_end,
        info.stack_bottom,
        info.stack_top,
        info.tsc_khz,
        info.boot_unix_ns,
        info.boot_tsc,
        info.random_seed,
    ];
    for field in fields {
        out.extend_from_slice(&field.to_le_bytes());
    }
    debug_assert_eq!(out.len(), size_of::<BootInfo>());
    out
}

fn boot_info_from_bytes(bytes: &[u8; size_of::<BootInfo>()]) -> BootInfo {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let field = |i: usize| u64_at(24 + 8 * i);
    BootInfo {
        magic: u64_at(0),
        abi_version: u32_at(8),
        argc: u32_at(12),
        envc: u32_at(16),
        flags: u32_at(20),
        args: field(0),
        args_len: field(1),
        mem_size: field(2),
        heap_start: field(3),
        heap_end: field(4),
        stack_bottom: field(5),
        stack_top: field(6),
        tsc_khz: field(7),
        boot_unix_ns: field(8),
        boot_tsc: field(9),
        random_seed: field(10),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_pack_args_nul_terminates_each() {
        assert_eq!(pack_args(&["a", "bc"]).unwrap(), b"a\0bc\0");
    }

    #[test]
    fn test_pack_args_refuses_overlong() {
        let long = "x".repeat(BOOT_INFO_SIZE as usize);
        assert!(matches!(
            pack_args(&[&long]),
            Err(SetupError::ArgsTooLong { .. })
        ));
    }

    #[test]
    fn test_boot_info_bytes_match_struct_layout() {
        let info = BootInfo {
            magic: 1,
            abi_version: 2,
            argc: 3,
            envc: 5,
            args: 4,
            boot_tsc: 99,
            random_seed: 77,
            ..Default::default()
        };
        let bytes = boot_info_bytes(&info);
        assert_eq!(
            boot_info_from_bytes(&bytes.clone().try_into().unwrap()),
            info
        );
        assert_eq!(&bytes[104..112], &77u64.to_le_bytes());
        assert_eq!(bytes.len(), size_of::<BootInfo>());
        assert_eq!(&bytes[0..8], &1u64.to_le_bytes());
        assert_eq!(&bytes[8..12], &2u32.to_le_bytes());
        assert_eq!(&bytes[12..16], &3u32.to_le_bytes());
        assert_eq!(&bytes[16..20], &5u32.to_le_bytes());
        assert_eq!(&bytes[24..32], &4u64.to_le_bytes());
        assert_eq!(&bytes[96..104], &99u64.to_le_bytes());
    }
}
