//! Host memory of VMs restored from one snapshot: `idle` is snapshotted into `OUT/idle.snap`,
//! then `vmm fleet idle.snap --count 100 --resident` holds 100 restored VMs at once. Their
//! snapshot pages are mapped from the file (shared through the page cache), so the VMM's PSS
//! per VM is the honest figure beside its RSS per VM.

use crate::contracts::VmmFleet;
use crate::error::{Error, Result};
use crate::fleet::CONCURRENCY;
use crate::measure::hostmem;
use crate::peers::ours::vmm_fleet;
use crate::peers::serve::make_snapshot;
use serde::Serialize;
use std::path::Path;

/// The image whose instances park until released.
pub(crate) const IMAGE: &str = "idle";
/// Resident VMs restored from the snapshot.
pub(crate) const COUNT: usize = 100;

/// What 100 resident restored VMs cost.
#[derive(Debug, Serialize)]
pub(crate) struct SnapshotMemory {
    /// Resident VMs.
    pub(crate) count: usize,
    /// The VMM's PSS at the peak over the VMs, KiB (the VMM's own pages included).
    pub(crate) pss_per_vm_kib: f64,
    /// The VMM's RSS growth per VM, KiB.
    pub(crate) rss_per_vm_kib: f64,
    /// The host's `MemAvailable` drop per VM, KiB (kernel memory included).
    pub(crate) mem_available_per_vm_kib: f64,
    /// The wait for the kernel to finish freeing earlier VMs (MemAvailable is noisy until then).
    pub(crate) settled: hostmem::Settled,
    /// `vmm fleet`'s report.
    pub(crate) fleet: VmmFleet,
}

/// Snapshots `idle` (at `image`) into `dir/idle.snap` with `vmm` and holds [`COUNT`] restored
/// VMs.
pub(crate) fn measure(vmm: &Path, dir: &Path, image: &Path) -> Result<SnapshotMemory> {
    let snapshot = dir.join(format!("{IMAGE}.snap"));
    make_snapshot(vmm, image, &[], &snapshot)?;
    let settled = hostmem::settle();
    let fleet = vmm_fleet(vmm, &snapshot, COUNT, CONCURRENCY, &["--resident"])?;
    if fleet.peak_concurrent != COUNT || !fleet.all_exit_0() {
        return Err(Error::Check(format!(
            "{} of {COUNT} restored VMs were alive at once; outcomes {:?}",
            fleet.peak_concurrent, fleet.outcomes
        )));
    }
    Ok(SnapshotMemory {
        count: COUNT,
        pss_per_vm_kib: fleet.memory.pss_at_peak_kib as f64 / COUNT as f64,
        rss_per_vm_kib: fleet.rss_per_vm_kib,
        mem_available_per_vm_kib: fleet.mem_available_per_vm_kib,
        settled,
        fleet,
    })
}
