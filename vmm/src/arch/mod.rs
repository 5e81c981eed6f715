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

/// Writes the boot info with `args` and `env`.
pub fn write_boot_info(
    ram: &GuestRam,
    image: &Image,
    args: &[&str],
    env: &[&str],
    clock: HostClock,
) -> Result<(), SetupError> {
    let all: Vec<&str> = args.iter().chain(env).copied().collect();
    let packed = pack_args(&all)?;
    let args_addr = BOOT_INFO_ADDR + size_of::<BootInfo>() as u64;
    let info = BootInfo {
        magic: abi::BOOT_INFO_MAGIC,
        abi_version: abi::ABI_VERSION,
        argc: args.len() as u32,
        envc: env.len() as u32,
        reserved: 0,
        args: args_addr,
        args_len: packed.len() as u64,
        mem_size: ram.size(),
        heap_start: image.end(),
        heap_end: ram.size(),
        stack_bottom: STACK_BOTTOM,
        stack_top: STACK_TOP,
        tsc_khz: clock.tsc_khz,
        boot_unix_ns: clock.unix_ns,
        boot_tsc: clock.tsc,
    };
    ram.write(BOOT_INFO_ADDR, &boot_info_bytes(&info))?;
    ram.write(args_addr, &packed)?;
    Ok(())
}

/// The little-endian bytes of `info`, field by field in `#[repr(C)]` order.
fn boot_info_bytes(info: &BootInfo) -> Vec<u8> {
    let mut out = Vec::with_capacity(size_of::<BootInfo>());
    out.extend_from_slice(&info.magic.to_le_bytes());
    out.extend_from_slice(&info.abi_version.to_le_bytes());
    out.extend_from_slice(&info.argc.to_le_bytes());
    out.extend_from_slice(&info.envc.to_le_bytes());
    out.extend_from_slice(&info.reserved.to_le_bytes());
    for field in [
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
    ] {
        out.extend_from_slice(&field.to_le_bytes());
    }
    debug_assert_eq!(out.len(), size_of::<BootInfo>());
    out
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
            ..Default::default()
        };
        let bytes = boot_info_bytes(&info);
        assert_eq!(bytes.len(), size_of::<BootInfo>());
        assert_eq!(&bytes[0..8], &1u64.to_le_bytes());
        assert_eq!(&bytes[8..12], &2u32.to_le_bytes());
        assert_eq!(&bytes[12..16], &3u32.to_le_bytes());
        assert_eq!(&bytes[16..20], &5u32.to_le_bytes());
        assert_eq!(&bytes[24..32], &4u64.to_le_bytes());
        assert_eq!(&bytes[96..104], &99u64.to_le_bytes());
    }
}
