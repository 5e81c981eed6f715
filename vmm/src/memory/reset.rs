//! Returning used guest RAM to the contents of a fresh VM's, page by page, so that a VM can
//! serve another request (`vmm serve` reuses its pooled VMs; see `vm::recycle`).
//!
//! The contents a fresh VM starts with are held once per image or snapshot in a [`Reference`]:
//! RAM loaded exactly as a fresh VM's is (the image's segments or the snapshot's pages, the
//! VMM's privileged structures), and the list of the pages that may not be zero there, taken
//! from the image's or snapshot's own description (never from what the host says is resident,
//! which a page gone to swap would escape). [`Reference::restore`] then looks at every page
//! the used RAM holds (`mincore`; the used RAM must be locked in memory, so that no page the
//! guest populated can be elsewhere; a page the host never populated is still zero, or still
//! the snapshot's, unread), and makes it equal to the reference's page, or to zeros: a page
//! that already is equal is not written (no copy-on-write, no new host page). The cost is a
//! comparison per populated page (the image's or snapshot's own pages included, compared in
//! place with the reference's) and a copy per page the guest changed. Two things make a VM not worth
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
    /// The used RAM is not locked in memory: a page gone to swap would escape the comparison.
    #[error("its RAM is not locked in memory ({0})")]
    NotLocked(String),
    /// A page could not be reached (a bug: pages come from the RAM's own size).
    #[error(transparent)]
    Range(#[from] RangeError),
    /// A page could not be rewritten.
    #[error("cannot rewrite the page at {0:#x}: {1}")]
    Write(u64, String),
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
    /// Page numbers that may not be zero in a fresh VM, ascending; every other page is zero.
    pages: Vec<u64>,
}

impl Reference {
    /// `ram`, loaded as a fresh VM's is and never given to a guest; `pages` holds every page
    /// that may not be zero in it (the VMM's pages, below [`VMM_OWNED_END`], are added).
    pub fn new(ram: GuestRam, pages: impl IntoIterator<Item = u64>) -> Self {
        let mut pages: Vec<u64> = (0..VMM_OWNED_END / PAGE_SIZE)
            .chain(pages)
            .filter(|page| page * PAGE_SIZE < ram.size())
            .collect();
        pages.sort_unstable();
        pages.dedup();
        Self { ram, pages }
    }

    /// Makes every page of `used` equal to this reference's (see the module documentation).
    /// `max_extra_pages` bounds the pages `used` may hold beyond the reference's.
    pub fn restore(
        &self,
        used: &GuestRam,
        max_extra_pages: usize,
    ) -> Result<ResetStats, ResetRefused> {
        let populated = self.populated_within_bounds(used, max_extra_pages)?;
        self.rewrite(used, populated)
    }

    /// The pages `used` holds, if it may be restored at all: its size is this reference's, it
    /// is locked in memory, and it holds at most `max_extra_pages` beyond the reference's.
    /// The cheap refusals, checked before anything costlier (`vm::recycle`'s vCPU checks).
    pub fn populated_within_bounds(
        &self,
        used: &GuestRam,
        max_extra_pages: usize,
    ) -> Result<Vec<u64>, ResetRefused> {
        if used.size() != self.ram.size() {
            return Err(ResetRefused::SizeMismatch {
                used: used.size(),
                reference: self.ram.size(),
            });
        }
        if let Some(why) = used.lock_failure() {
            return Err(ResetRefused::NotLocked(why.to_owned()));
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
        Ok(populated)
    }

    /// Makes the `populated` pages of `used` (from [`Reference::populated_within_bounds`])
    /// equal to this reference's, or zero.
    pub fn rewrite(
        &self,
        used: &GuestRam,
        populated: Vec<u64>,
    ) -> Result<ResetStats, ResetRefused> {
        let mut stats = ResetStats::default();
        let mut fresh = [0u8; PAGE_SIZE as usize];
        let zeros = [0u8; PAGE_SIZE as usize];
        for page in populated {
            let addr = page * PAGE_SIZE;
            let in_reference = self.pages.binary_search(&page).is_ok();
            stats.compared += 1;
            let same = used.with_host_range(addr, PAGE_SIZE, |host, len| {
                // SAFETY: the range is one page of `used`'s live mapping, checked by
                // `with_host_range`; its guest is stopped (the caller's vCPU is not running),
                // so nothing writes the page while the slice lives.
                let now = unsafe { std::slice::from_raw_parts(host, len) };
                if !in_reference {
                    return Ok(now == zeros);
                }
                // Compared in place with the reference's page, not copied out first.
                self.ram.with_host_range(addr, PAGE_SIZE, |reference, len| {
                    // SAFETY: one page of the reference's own live mapping, which nothing
                    // writes after it was loaded.
                    now == unsafe { std::slice::from_raw_parts(reference, len) }
                })
            })??;
            if same {
                continue;
            }
            if addr < VMM_OWNED_END {
                return Err(ResetRefused::VmmPageChanged(addr));
            }
            let expected: &[u8] = if in_reference {
                self.ram.read(addr, &mut fresh)?;
                &fresh
            } else {
                &zeros
            };
            used.write(addr, expected)
                .map_err(|err| ResetRefused::Write(addr, err.to_string()))?;
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
        let mut ram = GuestRam::new(8 << 20).unwrap();
        for (page, byte) in pages {
            ram.write(page * PAGE_SIZE, &[*byte; PAGE_SIZE as usize])
                .unwrap();
        }
        assert!(ram.lock_on_fault(), "mlock2 (RLIMIT_MEMLOCK too low?)");
        ram
    }

    fn reference_of(pages: &[(u64, u8)]) -> Reference {
        Reference::new(ram_with(pages), pages.iter().map(|(page, _)| *page))
    }

    fn page_of(ram: &GuestRam, page: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; PAGE_SIZE as usize];
        ram.read(page * PAGE_SIZE, &mut bytes).unwrap();
        bytes
    }

    #[test]
    fn test_restore_returns_written_pages_and_clears_new_ones() {
        let reference = reference_of(&[(0x40, 7), (0x300, 9)]);
        let used = ram_with(&[(0x40, 7), (0x300, 9)]);
        // What a guest leaves: a snapshot page changed, pages of its own written, a secret in
        // the middle of a page.
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
        let reference = reference_of(&[(0x8, 1)]);
        let used = ram_with(&[(0x8, 1)]);
        used.write(0x8 * PAGE_SIZE + 8, &[2]).unwrap();
        assert_eq!(
            reference.restore(&used, 16),
            Err(ResetRefused::VmmPageChanged(0x8000))
        );
    }

    #[test]
    fn test_restore_refuses_a_guest_that_populated_too_much() {
        let reference = reference_of(&[]);
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
    fn test_restore_refuses_another_size_and_unlocked_ram() {
        let reference = reference_of(&[]);
        let mut other = GuestRam::new(6 << 20).unwrap();
        assert!(other.lock_on_fault());
        assert!(matches!(
            reference.restore(&other, 0),
            Err(ResetRefused::SizeMismatch { .. })
        ));
        let unlocked = GuestRam::new(8 << 20).unwrap();
        assert_eq!(
            reference.restore(&unlocked, 0),
            Err(ResetRefused::NotLocked("never locked".to_owned()))
        );
    }

    #[test]
    fn test_reference_pages_come_from_the_description_not_residency() {
        // A page the description names but the host does not hold (as if swapped out) is
        // still compared, and a page the host holds but the description does not name is
        // cleared.
        let ram = GuestRam::new(8 << 20).unwrap();
        ram.write(0x600 * PAGE_SIZE, &[5; PAGE_SIZE as usize])
            .unwrap();
        let reference = Reference::new(ram, [0x700]);
        let used = ram_with(&[(0x600, 5), (0x700, 6)]);
        let stats = reference.restore(&used, 16).unwrap();
        assert_eq!(page_of(&used, 0x600), vec![0u8; PAGE_SIZE as usize]);
        assert_eq!(page_of(&used, 0x700), vec![0u8; PAGE_SIZE as usize]);
        assert_eq!((stats.restored, stats.zeroed), (1, 1), "{stats:?}");
    }
}
