//! The flick VMM: boots a flick image in a KVM microVM whose vCPU starts at ring 3.
//!
//! - [`image`]: reads and validates image files.
//! - [`arch`]: the guest memory layout and the one-time setup (page tables, GDT, TSS, IDT,
//!   boot info, registers) that the VMM does in the guest kernel's place.
//! - [`vm`]: KVM setup and the run loop; [`exit`]: what each VM exit means;
//!   [`hypercall`]: validation of guest-given arguments; [`devices`]: the COM1 UART;
//!   [`crash`]: crash reports.
//! - [`run`]: all of the above for one image, as `vmm run` does it.

pub mod arch;
pub mod crash;
pub mod devices;
pub mod exit;
pub mod hypercall;
pub mod image;
pub mod memory;
pub mod size;
pub mod symbols;
pub mod teardown;
pub mod timeline;
pub mod vm;

pub use exit::Console;
pub use image::{Image, ImageError};
pub use vm::{Outcome, RunReport, Vm, VmConfig, VmError};

use std::path::PathBuf;
use std::time::Duration;

/// Errors of [`run`]: all of them mean the guest never ran (exit status 125).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The image is unusable.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// `--mem` is out of range.
    #[error("--mem {given} is {why}")]
    BadMemSize {
        /// The requested size.
        given: size::Size,
        /// What is wrong.
        why: String,
    },
    /// The VM could not be created.
    #[error(transparent)]
    Vm(#[from] VmError),
}

/// What `vmm run` boots.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The image file.
    pub image: PathBuf,
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Stop the guest after this long.
    pub timeout: Option<Duration>,
    /// Arguments after the image name.
    pub args: Vec<String>,
    /// Environment for the app, `KEY=VALUE` each.
    pub env: Vec<String>,
    /// Count the guest RAM pages touched (one `mincore` after the run).
    pub measure_ram: bool,
    /// Leave the VM's teardown to a helper process so the caller can exit at once.
    pub detach_teardown: bool,
}

/// Checks a guest RAM size against the documented bounds.
pub fn check_mem_size(mem_size: u64) -> Result<(), RunError> {
    use arch::layout::{LARGE_PAGE_SIZE, MAX_MEM_SIZE, MIN_MEM_SIZE};
    let bad = |why: String| {
        Err(RunError::BadMemSize {
            given: size::Size(mem_size),
            why,
        })
    };
    if mem_size < MIN_MEM_SIZE {
        return bad(format!("below the minimum of {}", size::Size(MIN_MEM_SIZE)));
    }
    if mem_size > MAX_MEM_SIZE {
        return bad(format!("above the maximum of {}", size::Size(MAX_MEM_SIZE)));
    }
    if !mem_size.is_multiple_of(LARGE_PAGE_SIZE) {
        return bad("not a multiple of 2 MiB".to_owned());
    }
    Ok(())
}

/// Loads, boots and runs one image to completion.
///
/// `timeline` carries the instants measured before the call (process start, arguments).
pub fn run(
    config: &RunConfig,
    console: Console,
    mut timeline: timeline::Timeline,
) -> Result<RunReport, RunError> {
    check_mem_size(config.mem_size)?;
    let image = Image::from_file(&config.image)?;
    image.check_fits(config.mem_size)?;
    timeline.image_loaded = Some(std::time::Instant::now());
    let name = config
        .image
        .file_name()
        .map_or_else(|| "image".to_owned(), |n| n.to_string_lossy().into_owned());
    let args = std::iter::once(name)
        .chain(config.args.iter().cloned())
        .collect();
    let vm_config = VmConfig {
        mem_size: config.mem_size,
        timeout: config.timeout,
        args,
        env: config.env.clone(),
    };
    let mut vm = Vm::new(&image, &vm_config, timeline)?;
    let mut report = vm.run(console)?;
    if config.measure_ram {
        report.ram_pages_touched = vm.ram().resident_pages();
    }
    if config.detach_teardown {
        teardown::detach(vm);
    } else {
        drop(vm);
    }
    report.timeline.torn_down = Some(std::time::Instant::now());
    Ok(report)
}
