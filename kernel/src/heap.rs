//! The heap: a talc allocator over the RAM that boot info reports free, claimed on the first
//! allocation (an app that never allocates never touches it). `alloc` works: `Vec`, `String`,
//! `BTreeMap`, `format!`.
//!
//! Running out of memory prints how much was asked and how much is free, then stops the guest
//! with status 134.
//!
//! ```ignore
//! extern crate alloc;
//! let mut squares = alloc::vec::Vec::new();
//! squares.extend((0..10u64).map(|i| i * i));
//! ```

use crate::global::Global;
use crate::hypercall;
use core::alloc::{GlobalAlloc, Layout};
use core::fmt::Write;
use talc::TalcCell;
use talc::source::Manual;

struct KernelHeap {
    talc: Global<Option<TalcCell<Manual>>>,
}

#[global_allocator]
static HEAP: KernelHeap = KernelHeap {
    talc: Global::new(None),
};

/// Heap usage figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes the heap manages.
    pub size: usize,
    /// Bytes in live allocations.
    pub allocated: usize,
    /// Bytes free.
    pub free: usize,
}

/// Current heap usage (all zero before the first allocation).
///
/// ```ignore
/// let stats = kernel::heap::stats();
/// kernel::println!("{} of {} bytes free", stats.free, stats.size);
/// ```
pub fn stats() -> HeapStats {
    HEAP.talc
        .with(|talc| match talc {
            Some(talc) => {
                let c = talc.counters();
                HeapStats {
                    size: c.claimed_bytes,
                    allocated: c.allocated_bytes,
                    free: c.available_bytes,
                }
            }
            None => HeapStats::default(),
        })
        .unwrap_or_default()
}

fn claim(slot: &mut Option<TalcCell<Manual>>) -> &TalcCell<Manual> {
    slot.get_or_insert_with(|| {
        let info = crate::boot_info();
        let talc = TalcCell::new(Manual);
        let size = info.heap_end.saturating_sub(info.heap_start) as usize;
        // SAFETY: the VMM reports [heap_start, heap_end) as RAM that nothing else uses, mapped
        // read-write for ring 3.
        unsafe { talc.claim(info.heap_start as *mut u8, size) };
        talc
    })
}

fn out_of_memory(layout: Layout) -> ! {
    crate::console::flush();
    let stats = stats();
    let mut line = crate::console::StackLine::new();
    let _ = writeln!(
        line,
        "out of memory: asked for {} bytes (align {}); {} of {} heap bytes free",
        layout.size(),
        layout.align(),
        stats.free,
        stats.size
    );
    hypercall::console_write(abi::hypercall::stream::STDERR, line.as_bytes());
    hypercall::exit(abi::exit_status::CRASH)
}

// SAFETY: delegates to talc, which upholds the GlobalAlloc contract; `Global` rules out
// re-entrant use (the guest has one vCPU and no interrupts at ring 3).
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = self
            .talc
            .with(|slot| unsafe { claim(slot).alloc(layout) })
            .unwrap_or(core::ptr::null_mut());
        if ptr.is_null() {
            out_of_memory(layout);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        self.talc
            .with(|slot| unsafe { claim(slot).dealloc(ptr, layout) });
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let new = self
            .talc
            .with(|slot| unsafe { claim(slot).realloc(ptr, layout, new_size) })
            .unwrap_or(core::ptr::null_mut());
        if new.is_null() {
            // SAFETY: the caller guarantees new_size with layout's alignment is a valid layout.
            out_of_memory(unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) });
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;
    use alloc::vec::Vec;

    // Each test runs in a VM of its own, and the harness allocates nothing before it: the
    // heap is untouched when a test starts.

    #[kernel::test]
    fn test_heap_is_unclaimed_before_the_first_allocation() {
        assert_eq!(stats(), HeapStats::default());
    }

    #[kernel::test]
    fn test_heap_claims_the_free_ram_that_boot_info_reports() {
        let _first = Box::new(7u64);
        let info = crate::boot_info();
        let range = (info.heap_end - info.heap_start) as usize;
        let stats = stats();
        assert!(stats.size <= range, "{stats:?} within {range}");
        assert!(
            stats.size > range - 4096,
            "{stats:?} claims all but metadata of {range}"
        );
        assert!(stats.allocated + stats.free <= stats.size, "{stats:?}");
    }

    #[kernel::test]
    fn test_heap_counts_allocations_and_frees() {
        let _warm = Box::new(0u8);
        let before = stats().allocated;
        let block: Vec<u8> = Vec::with_capacity(100_000);
        assert!(stats().allocated >= before + 100_000, "{:?}", stats());
        drop(block);
        assert_eq!(stats().allocated, before);
    }

    #[kernel::test]
    fn test_heap_serves_a_large_block_and_its_memory_is_usable() {
        let mut block = alloc::vec![0u8; 8 << 20];
        block[0] = 1;
        let last = block.len() - 1;
        block[last] = 2;
        assert_eq!(block.iter().map(|&b| u64::from(b)).sum::<u64>(), 3);
    }

    #[kernel::test]
    fn test_heap_realloc_keeps_the_contents() {
        let mut numbers: Vec<u32> = Vec::with_capacity(1);
        for i in 0..10_000 {
            numbers.push(i);
        }
        assert!(numbers.iter().copied().eq(0..10_000));
    }

    #[kernel::test]
    fn test_heap_honours_large_alignment() {
        let layout = Layout::from_size_align(64, 4096).unwrap();
        // SAFETY: the layout has a non-zero size; the block is freed with the same layout.
        unsafe {
            let ptr = HEAP.alloc(layout);
            assert_eq!(ptr as usize % 4096, 0);
            HEAP.dealloc(ptr, layout);
        }
    }
}
