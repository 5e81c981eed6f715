//! The boot-info block: what the guest learns from the VMM at entry (`RDI` points at it), in
//! the layout of `abi::BootInfo`, followed by the packed arguments and environment. Written at
//! boot, and its per-run part rewritten when a snapshot is restored.

use super::layout::{BOOT_INFO_ADDR, BOOT_INFO_SIZE, STACK_BOTTOM, STACK_TOP};
use crate::memory::image::Image;
use crate::memory::{GuestRam, MemoryError};
use abi::BootInfo;

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
pub(crate) struct HostClock {
    /// TSC frequency in kHz, 0 if unknown.
    pub tsc_khz: u64,
    /// Wall-clock time at boot, ns since the Unix epoch.
    pub unix_ns: u64,
    /// Host TSC at that time (the guest TSC equals it).
    pub tsc: u64,
}

/// What changes from one run to the next: written into boot info at boot, and rewritten when
/// a snapshot is restored.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunParams<'a> {
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

/// Room for the packed arguments and environment after the struct.
pub(crate) const ARGS_ROOM: usize = BOOT_INFO_SIZE as usize - size_of::<BootInfo>();

/// Packs `args` as NUL-terminated strings.
pub(crate) fn pack_args(args: &[&str]) -> Result<Vec<u8>, SetupError> {
    let len: usize = args.iter().map(|a| a.len() + 1).sum();
    if len > ARGS_ROOM {
        return Err(SetupError::ArgsTooLong {
            len,
            max: ARGS_ROOM,
        });
    }
    let mut packed = Vec::with_capacity(len);
    for arg in args {
        packed.extend_from_slice(arg.as_bytes());
        packed.push(0);
    }
    Ok(packed)
}

/// Writes the boot info for a fresh boot of `image`.
pub(crate) fn write_boot_info(
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

/// Rewrites the per-run part of the boot info already in `ram` (a restored snapshot's). The
/// layout fields (memory size, heap, stack) are the VMM's, not the file's.
pub(crate) fn rewrite_boot_info(
    ram: &GuestRam,
    image: &Image,
    params: RunParams<'_>,
) -> Result<(), SetupError> {
    let saved: BootInfo = ram
        .read_obj(BOOT_INFO_ADDR)
        .map_err(|_| SetupError::BadBootInfo)?;
    if saved.magic != abi::BOOT_INFO_MAGIC || saved.abi_version != abi::ABI_VERSION {
        return Err(SetupError::BadBootInfo);
    }
    write_boot_info(ram, image, params)
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
    ram.write_obj(BOOT_INFO_ADDR, info)?;
    ram.write(args_addr, &packed)?;
    Ok(())
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
    fn test_boot_info_is_written_where_the_guest_reads_it() {
        let ram = GuestRam::new(16 << 20).unwrap();
        let image = Image::from_layout(vec![crate::memory::image::Segment {
            addr: 0x20_0000,
            file_offset: 0,
            file_size: 0,
            mem_size: 0x1000,
            access: crate::memory::image::Access {
                write: false,
                execute: true,
            },
        }])
        .unwrap();
        let params = RunParams {
            args: &["hello", "a"],
            env: &["K=V"],
            clock: HostClock::default(),
            flags: 0,
            random_seed: 77,
        };
        write_boot_info(&ram, &image, params).unwrap();
        let info: BootInfo = ram.read_obj(BOOT_INFO_ADDR).unwrap();
        assert_eq!((info.argc, info.envc, info.random_seed), (2, 1, 77));
        assert_eq!(info.heap_start, 0x20_1000);
        let mut packed = vec![0u8; info.args_len as usize];
        ram.read(info.args, &mut packed).unwrap();
        assert_eq!(packed, b"hello\0a\0K=V\0");
        // A restore keeps the layout and replaces the per-run part.
        let again = RunParams {
            args: &["hello"],
            env: &[],
            random_seed: 5,
            ..params
        };
        rewrite_boot_info(&ram, &image, again).unwrap();
        let info: BootInfo = ram.read_obj(BOOT_INFO_ADDR).unwrap();
        assert_eq!((info.argc, info.envc, info.random_seed), (1, 0, 5));
    }
}
