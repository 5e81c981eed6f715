//! x86-64 specifics: the guest memory layout, and the one-time setup a kernel would usually do
//! itself (page tables, GDT, TSS, IDT, exception stubs, boot info, register state), done here
//! by the VMM so that the guest starts at ring 3 with nothing left to do.

pub(crate) mod boot_info;
pub(crate) mod cpuid;
pub mod layout;
pub(crate) mod paging;
pub(crate) mod regs;
pub(crate) mod stubs;
pub(crate) mod tables;

pub use boot_info::SetupError;
pub(crate) use boot_info::{HostClock, RunParams, rewrite_boot_info, write_boot_info};

use crate::memory::GuestRam;
use crate::memory::image::Image;

/// Writes the image-dependent part of guest memory: the segments, then everything of
/// [`load_privileged_structures`].
pub(crate) fn load_image(ram: &GuestRam, image: &Image) -> Result<(), SetupError> {
    for segment in image.segments() {
        // Fresh anonymous memory is zero, so only the file part is copied.
        ram.write(segment.addr, image.file_bytes(segment))?;
    }
    load_privileged_structures(ram, image)
}

/// Writes what only the VMM decides: the page tables for `image`'s layout, the GDT, TSS and
/// IDT, and the exception stubs (also over a restored snapshot, whose own copies are never
/// trusted).
pub(crate) fn load_privileged_structures(ram: &GuestRam, image: &Image) -> Result<(), SetupError> {
    paging::write_page_tables(ram, image)?;
    tables::write_system_tables(ram)?;
    ram.write(layout::STUBS_ADDR, &stubs::page())?;
    Ok(())
}
