//! Guest memory and what goes into it: [`GuestRam`] (one anonymous mapping, populated lazily
//! by the host kernel on first touch) and the image loader ([`image`]).
//!
//! The VMM reads and writes guest memory only by copying in and out (vm-memory's `Bytes`,
//! whole `#[repr(C)]` values through `ByteValued`), and only after checking the guest-given
//! range against the RAM size with overflow checks.

pub mod image;
pub(crate) mod reset;

use crate::size::Size;
use vm_memory::mmap::FromRangesError;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

/// Why a guest-given range cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The range wraps around the address space.
    #[error("range {addr:#x}+{len:#x} wraps around")]
    Overflow {
        /// Start.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// The range reaches past the end of guest RAM.
    #[error("range {addr:#x}+{len:#x} lies outside guest RAM ({size})")]
    OutOfRam {
        /// Start.
        addr: u64,
        /// Length.
        len: u64,
        /// RAM size.
        size: Size,
    },
}

/// Errors creating or filling guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The mapping could not be created.
    #[error("cannot map {0} of guest RAM")]
    Map(Size, #[source] vm_memory::mmap::FromRangesError),
    /// A copy into guest RAM failed.
    #[error("cannot write guest RAM at {0:#x}")]
    Write(u64, #[source] vm_memory::GuestMemoryError),
}

/// The guest's RAM, from guest-physical 0 to `size`. Clones share the mapping.
#[derive(Debug, Clone)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    size: u64,
    /// Its pages stay in memory once populated ([`GuestRam::lock_on_fault`]): `Ok`, or why
    /// not (never asked, or the host's refusal).
    locked: Result<(), String>,
}

impl GuestRam {
    /// Maps `size` bytes of RAM (lazily: nothing is touched).
    ///
    /// The mapping is shared anonymous memory (shmem), not private: a guest that reads a page
    /// before writing it then gets a page of its own at once, where private memory would map
    /// the shared zero page and replace it on the first write, a copy-on-write that makes the
    /// kernel call every MMU notifier of the process, one per VM. With thousands of VMs in one
    /// process (`vmm fleet --resident`) that made each boot cost time in proportion to the VMs
    /// already there (measured: 2.1 ms of CPU per VM at 3000 resident, 1.3 ms with shmem). The
    /// memory is shared with no other process: nothing forks once guest RAM exists (a child
    /// would share it, not copy it), and the teardown helper shares the whole address space.
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        let map_err = |err: FromRangesError| MemoryError::Map(Size(size), err);
        let region = MmapRegion::build(
            None,
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        )
        .map_err(|err| map_err(err.into()))?;
        let region = GuestRegionMmap::new(region, GuestAddress(0))
            .ok_or(FromRangesError::InvalidGuestRegion)
            .map_err(map_err)?;
        let mem = GuestMemoryMmap::from_regions(vec![region]).map_err(|err| map_err(err.into()))?;
        Ok(Self {
            mem,
            size,
            locked: Err("never locked".to_owned()),
        })
    }

    /// Keeps every page of this RAM in memory from the moment it is populated (the ones
    /// populated already included): `mlock2(MLOCK_ONFAULT)`, which allocates nothing ahead.
    /// A VM that may be reused needs it (`memory::reset` finds the pages a guest populated
    /// with `mincore`, which does not see a page gone to swap). Call it after the RAM is
    /// loaded (a snapshot's pages are mapped over parts of it). `false` if the host refuses
    /// (`RLIMIT_MEMLOCK` too low): the RAM is then not reused.
    pub(crate) fn lock_on_fault(&mut self) -> bool {
        const MLOCK_ONFAULT: libc::c_uint = 1;
        // SAFETY: the range is exactly this RAM's own live mapping; mlock2 changes no memory.
        let rc = unsafe {
            libc::mlock2(
                self.host_address() as *const libc::c_void,
                self.size as usize,
                MLOCK_ONFAULT,
            )
        };
        self.locked = if rc == 0 {
            Ok(())
        } else {
            let err = std::io::Error::last_os_error();
            Err(format!(
                "mlock2: {err}; RLIMIT_MEMLOCK allows less than this RAM beside the RAM locked already"
            ))
        };
        self.locked.is_ok()
    }

    /// Why [`GuestRam::lock_on_fault`] does not hold, if it does not.
    pub(crate) fn lock_failure(&self) -> Option<&str> {
        self.locked.as_ref().err().map(String::as_str)
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Host address of guest-physical 0.
    pub fn host_address(&self) -> u64 {
        use vm_memory::GuestMemoryBackend;
        let region = self.mem.iter().next().expect("guest RAM has one region");
        region.as_ptr() as u64
    }

    /// The numbers of the 4 KiB pages the host has populated, ascending (all of them if the
    /// host cannot tell).
    pub fn resident_page_list(&self) -> Vec<u64> {
        self.populated_pages()
            .unwrap_or_else(|| (0..self.size.div_ceil(4096)).collect())
    }

    /// The numbers of the 4 KiB pages the host has populated, ascending; `None` if the host
    /// cannot tell (`mincore` failed).
    pub(crate) fn populated_pages(&self) -> Option<Vec<u64>> {
        let pages = self.size.div_ceil(4096) as usize;
        let mut residency = vec![0u8; pages];
        // SAFETY: the range is our own live mapping; mincore writes one byte per page into a
        // vector of exactly that many bytes.
        let rc = unsafe {
            libc::mincore(
                self.host_address() as *mut libc::c_void,
                self.size as usize,
                residency.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return None;
        }
        Some(
            residency
                .iter()
                .enumerate()
                .filter(|(_, b)| **b & 1 != 0)
                .map(|(i, _)| i as u64)
                .collect(),
        )
    }

    /// Number of 4 KiB pages of RAM the host has populated (touched by VMM or guest).
    pub fn resident_pages(&self) -> Option<u64> {
        Some(self.resident_page_list().len() as u64)
    }

    /// Checks that `addr..addr+len` lies in RAM.
    pub fn check_range(&self, addr: u64, len: u64) -> Result<(), RangeError> {
        let end = addr
            .checked_add(len)
            .ok_or(RangeError::Overflow { addr, len })?;
        if end > self.size {
            return Err(RangeError::OutOfRam {
                addr,
                len,
                size: Size(self.size),
            });
        }
        Ok(())
    }

    /// Runs `io` on the host memory behind the guest-given range `addr..addr+len`, after
    /// checking it: the zero-copy path of stdin and file transfers, where one `read(2)` or
    /// `pwrite(2)` fills or drains the guest's buffer directly. `io` gets the host address and
    /// the length, and must not keep the pointer.
    pub(crate) fn with_host_range<R>(
        &self,
        addr: u64,
        len: u64,
        io: impl FnOnce(*mut u8, usize) -> R,
    ) -> Result<R, RangeError> {
        use vm_memory::GuestMemoryBackend;
        self.check_range(addr, len)?;
        if len == 0 {
            return Ok(io(std::ptr::NonNull::dangling().as_ptr(), 0));
        }
        let slice = self
            .mem
            .get_slice(GuestAddress(addr), len as usize)
            .map_err(|_| RangeError::OutOfRam {
                addr,
                len,
                size: Size(self.size),
            })?;
        let guard = slice.ptr_guard_mut();
        Ok(io(guard.as_ptr(), len as usize))
    }

    /// Copies `bytes` to `addr` (VMM-chosen addresses only).
    pub fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), MemoryError> {
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|err| MemoryError::Write(addr, err))
    }

    /// Copies `buf.len()` bytes from a guest-given `addr`, after checking the range.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), RangeError> {
        self.check_range(addr, buf.len() as u64)?;
        self.mem
            .read_slice(buf, GuestAddress(addr))
            .map_err(|_| RangeError::OutOfRam {
                addr,
                len: buf.len() as u64,
                size: Size(self.size),
            })
    }

    /// Copies a whole value out of a guest-given `addr`, after checking the range.
    pub fn read_obj<T: ByteValued>(&self, addr: u64) -> Result<T, RangeError> {
        let len = size_of::<T>() as u64;
        self.check_range(addr, len)?;
        self.mem
            .read_obj(GuestAddress(addr))
            .map_err(|_| RangeError::OutOfRam {
                addr,
                len,
                size: Size(self.size),
            })
    }

    /// Copies a whole value to `addr` (VMM-chosen addresses only).
    pub fn write_obj<T: ByteValued>(&self, addr: u64, value: T) -> Result<(), MemoryError> {
        self.mem
            .write_obj(value, GuestAddress(addr))
            .map_err(|err| MemoryError::Write(addr, err))
    }

    /// Reads a little-endian `u64` at a guest-given address.
    pub fn read_u64(&self, addr: u64) -> Result<u64, RangeError> {
        let mut bytes = [0u8; 8];
        self.read(addr, &mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }
}

/// A `#[repr(C)]` value from exactly `size_of::<T>()` bytes at any alignment (file bytes, a
/// device's saved state); `None` when the length differs.
pub(crate) fn value_from_bytes<T: ByteValued + Default>(bytes: &[u8]) -> Option<T> {
    let mut value = T::default();
    let slot = value.as_mut_slice();
    if slot.len() != bytes.len() {
        return None;
    }
    slot.copy_from_slice(bytes);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_check_range_rejects_wraparound() {
        let ram = GuestRam::new(1 << 20).unwrap();
        assert!(matches!(
            ram.check_range(u64::MAX - 4, 16),
            Err(RangeError::Overflow { .. })
        ));
    }

    #[test]
    fn test_check_range_rejects_past_end() {
        let ram = GuestRam::new(1 << 20).unwrap();
        assert!(ram.check_range((1 << 20) - 16, 16).is_ok());
        assert!(matches!(
            ram.check_range((1 << 20) - 15, 16),
            Err(RangeError::OutOfRam { .. })
        ));
        assert!(matches!(
            ram.check_range(1 << 40, 0),
            Err(RangeError::OutOfRam { .. })
        ));
    }

    #[test]
    fn test_with_host_range_sees_guest_bytes_and_checks_the_range() {
        let ram = GuestRam::new(1 << 20).unwrap();
        ram.write(0x3000, b"abc").unwrap();
        let seen = ram
            .with_host_range(0x3000, 3, |ptr, len| {
                // SAFETY: the range was checked and lies in the live mapping.
                unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec()
            })
            .unwrap();
        assert_eq!(seen, b"abc");
        assert!(ram.with_host_range(u64::MAX, 2, |_, _| ()).is_err());
        assert!(ram.with_host_range(1 << 20, 1, |_, _| ()).is_err());
        assert_eq!(ram.with_host_range(1 << 20, 0, |_, len| len), Ok(0));
    }

    #[test]
    fn test_read_after_write_round_trips() {
        let ram = GuestRam::new(1 << 20).unwrap();
        ram.write(0x1234, b"flick").unwrap();
        let mut buf = [0u8; 5];
        ram.read(0x1234, &mut buf).unwrap();
        assert_eq!(&buf, b"flick");
    }
}
