//! Returning used guest RAM to the contents of a fresh VM's, page by page, so that a VM can
//! serve another request (`vmm serve` reuses its pooled VMs; see `vm::recycle`).
//!
//! The contents a fresh VM starts with are held once per snapshot in a [`Reference`]: RAM
//! loaded exactly as a pooled VM's is (the snapshot's pages, the VMM's privileged structures),
//! and the list of its pages that are not zero. [`Reference::restore`] then looks at every
//! page the used RAM holds (`mincore`: a page the host never populated is still zero, or still
//! the snapshot's, unread), and makes it equal to the reference's page, or to zeros: a page that
//! already is equal is not written (no copy-on-write, no new host page), so a request that
//! touched a few pages costs a few page comparisons and copies. Two things make a VM not worth
//! keeping, and are refused rather than repaired: a change to a page below
//! [`VMM_OWNED_END`](crate::arch::layout::BOOT_INFO_ADDR) (the VMM's page tables, descriptor
//! tables, stubs and ring-0 stacks, which a guest that exited cleanly cannot have written: a
//! difference means something the VMM does not understand happened), and a request that left
//! more than a bound of extra pages populated (the VM would hold that memory in the pool).

use super::{GuestRam, RangeError};
use crate::arch::layout::{BOOT_INFO_ADDR, PAGE_SIZE};

/// Pages below this address are the VMM's own (see the module documentation).
pub(crate) const VMM_OWNED_END: u64 = BOOT_INFO_ADDR;

/// Why used RAM is not returned to a fresh VM's contents (the VM is destroyed instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResetRefused {
    /// A page of the VMM's privileged structures changed.
    #[error("the VMM's page at {0:#x} changed")]
    VmmPageChanged(u64),
    /// The request left too many pages populated to keep the VM in the pool.
    #[error("{populated} pages populated beyond the snapshot's (at most {max} are kept)")]
    TooManyPages {
        /// Pages populated that the reference does not hold.
        populated: usize,
        /// The bound.
        max: usize,
    },
    /// The RAM sizes differ (a bug in the caller).
    #[error("RAM of {used} bytes cannot be reset to a reference of {reference}")]
    SizeMismatch {
        /// The used RAM's size.
        used: u64,
        /// The reference's.
        reference: u64,
    },
    /// The host could not say which pages are populated.
    #[error("mincore failed")]
    Residency,
    /// A page could not be reached (a bug: pages come from the RAM's own size).
    #[error(transparent)]
    Range(#[from] RangeError),
}

/// What a reset did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResetStats {
    /// Pages compared.
    pub compared: usize,
    /// Pages rewritten with the reference's contents.
    pub restored: usize,
    /// Pages cleared to zeros (populated by the request, zero in a fresh VM).
    pub zeroed: usize,
}

/// The RAM of a fresh VM, to reset used RAM against.
#[derive(Debug)]
pub struct Reference {
    ram: GuestRam,
    /// Page numbers the reference holds (populated when it was loaded), ascending; every other
    /// page of a fresh VM is zero.
    pages: Vec<u64>,
}

impl Reference {
    /// `ram`, loaded as a fresh VM's is and never given to a guest.
    pub fn new(ram: GuestRam) -> Result<Self, ResetRefused> {
        let pages = ram.populated_pages().ok_or(ResetRefused::Residency)?;
        Ok(Self { ram, pages })
    }

    /// Makes every page of `used` equal to this reference's (see the module documentation).
    /// `max_extra_pages` bounds the pages `used` may hold beyond the reference's.
    pub fn restore(
        &self,
        used: &GuestRam,
        max_extra_pages: usize,
    ) -> Result<ResetStats, ResetRefused> {
        if used.size() != self.ram.size() {
            return Err(ResetRefused::SizeMismatch {
                used: used.size(),
                reference: self.ram.size(),
            });
        }
        let populated = used.populated_pages().ok_or(ResetRefused::Residency)?;
        let extra = populated
            .iter()
            .filter(|page| self.pages.binary_search(page).is_err())
            .count();
        if extra > max_extra_pages {
            return Err(ResetRefused::TooManyPages {
                populated: extra,
                max: max_extra_pages,
            });
        }
        let mut stats = ResetStats::default();
        let mut fresh = [0u8; PAGE_SIZE as usize];
        let zeros = [0u8; PAGE_SIZE as usize];
        for page in populated {
            let addr = page * PAGE_SIZE;
            let in_reference = self.pages.binary_search(&page).is_ok();
            let expected: &[u8] = if in_reference {
                self.ram.read(addr, &mut fresh)?;
                &fresh
            } else {
                &zeros
            };
            stats.compared += 1;
            let same = used.with_host_range(addr, PAGE_SIZE, |host, len| {
                // SAFETY: the range is one page of `used`'s live mapping, checked by
                // `with_host_range`; its guest is stopped (the caller's vCPU is not running),
                // so nothing writes the page while the slice lives.
                unsafe { std::slice::from_raw_parts(host, len) == expected }
            })?;
            if same {
                continue;
            }
            if addr < VMM_OWNED_END {
                return Err(ResetRefused::VmmPageChanged(addr));
            }
            used.write(addr, expected)
                .map_err(|_| RangeError::OutOfRam {
                    addr,
                    len: PAGE_SIZE,
                    size: crate::size::Size(used.size()),
                })?;
            if in_reference {
                stats.restored += 1;
            } else {
                stats.zeroed += 1;
            }
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram_with(pages: &[(u64, u8)]) -> GuestRam {
        let ram = GuestRam::new(8 << 20).unwrap();
        for (page, byte) in pages {
            ram.write(page * PAGE_SIZE, &[*byte; PAGE_SIZE as usize])
                .unwrap();
        }
        ram
    }

    fn page_of(ram: &GuestRam, page: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; PAGE_SIZE as usize];
        ram.read(page * PAGE_SIZE, &mut bytes).unwrap();
        bytes
    }

    #[test]
    fn test_restore_returns_written_pages_and_clears_new_ones() {
        let reference = Reference::new(ram_with(&[(0x40, 7), (0x300, 9)])).unwrap();
        let used = ram_with(&[(0x40, 7), (0x300, 9)]);
        // What a request leaves: a snapshot page changed, pages of its own written, a secret
        // in the middle of a page.
        used.write(0x300 * PAGE_SIZE + 100, b"secret").unwrap();
        used.write(0x500 * PAGE_SIZE, b"heap secret").unwrap();
        used.write(0x3ff * PAGE_SIZE + 4000, b"stack").unwrap();
        let stats = reference.restore(&used, 16).unwrap();
        assert_eq!(page_of(&used, 0x300), vec![9u8; PAGE_SIZE as usize]);
        assert_eq!(page_of(&used, 0x500), vec![0u8; PAGE_SIZE as usize]);
        assert_eq!(page_of(&used, 0x3ff), vec![0u8; PAGE_SIZE as usize]);
        assert_eq!(page_of(&used, 0x40), vec![7u8; PAGE_SIZE as usize]);
        assert_eq!((stats.restored, stats.zeroed), (1, 2), "{stats:?}");
        // A second reset finds nothing to do.
        let again = reference.restore(&used, 16).unwrap();
        assert_eq!((again.restored, again.zeroed), (0, 0), "{again:?}");
    }

    #[test]
    fn test_restore_refuses_a_changed_vmm_page() {
        let reference = Reference::new(ram_with(&[(0x8, 1)])).unwrap();
        let used = ram_with(&[(0x8, 1)]);
        used.write(0x8 * PAGE_SIZE + 8, &[2]).unwrap();
        assert_eq!(
            reference.restore(&used, 16),
            Err(ResetRefused::VmmPageChanged(0x8000))
        );
    }

    #[test]
    fn test_restore_refuses_a_request_that_populated_too_much() {
        let reference = Reference::new(ram_with(&[])).unwrap();
        let used = ram_with(&[(0x400, 1), (0x401, 0), (0x402, 3)]);
        assert!(matches!(
            reference.restore(&used, 2),
            Err(ResetRefused::TooManyPages {
                populated: 3,
                max: 2
            })
        ));
        assert!(reference.restore(&used, 3).is_ok());
    }

    #[test]
    fn test_restore_refuses_another_size() {
        let reference = Reference::new(GuestRam::new(4 << 20).unwrap()).unwrap();
        let used = GuestRam::new(6 << 20).unwrap();
        assert!(matches!(
            reference.restore(&used, 0),
            Err(ResetRefused::SizeMismatch { .. })
        ));
    }
}
