//! The memory intrinsics that `core` calls. The host target's compiler_builtins does not
//! provide them; `rep movsb`/`rep stosb` are fast at ring 3.

use core::arch::asm;

/// Copies `n` bytes forward.
///
/// # Safety
/// `dest` and `src` are valid for `n` bytes and do not overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges; `rep movsb` touches exactly them.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
            options(nostack, preserves_flags));
    }
    dest
}

/// Copies `n` bytes between possibly overlapping ranges.
///
/// # Safety
/// `dest` and `src` are valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // SAFETY: dest does not start inside src, so a forward copy never reads a byte it wrote.
        return unsafe { memcpy(dest, src, n) };
    }
    // SAFETY: dest starts inside src: copy backwards from the last byte, then restore DF.
    unsafe {
        asm!("std", "rep movsb", "cld",
            inout("rcx") n => _, inout("rdi") dest.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
            options(nostack));
    }
    dest
}

/// Fills `n` bytes with `c`.
///
/// # Safety
/// `dest` is valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range; `rep stosb` writes exactly it.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8,
            options(nostack, preserves_flags));
    }
    dest
}

/// Compares `n` bytes.
///
/// # Safety
/// `a` and `b` are valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: i < n and the caller guarantees both ranges.
        let (x, y) = unsafe { (a.add(i).read(), b.add(i).read()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// Compares `n` bytes for equality (zero when equal).
///
/// # Safety
/// `a` and `b` are valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

/// The prebuilt `core` references the unwinder's personality routine; with `panic = "abort"`
/// it is never called.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

/// The prebuilt `alloc` (built to unwind) has cleanup paths that end in the unwinder's
/// `_Unwind_Resume` (`format!` pulls one in); with `panic = "abort"` nothing ever unwinds, so
/// they are never taken. Should one be, the guest stops at `ud2` with a crash report.
#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_Resume() -> ! {
    loop {
        // SAFETY: `ud2` only raises #UD, which the VMM's exception stubs report.
        unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[kernel::test]
    fn test_memmove_overlapping_forward_copy() {
        let mut bytes = *b"abcdef__";
        // SAFETY: both ranges lie in `bytes`.
        unsafe { memmove(bytes.as_mut_ptr().add(2), bytes.as_ptr(), 6) };
        assert_eq!(&bytes, b"ababcdef");
    }

    #[kernel::test]
    fn test_memmove_overlapping_backward_copy() {
        let mut bytes = *b"__abcdef";
        // SAFETY: both ranges lie in `bytes`.
        unsafe { memmove(bytes.as_mut_ptr(), bytes.as_ptr().add(2), 6) };
        assert_eq!(&bytes, b"abcdefef");
    }

    #[kernel::test]
    fn test_memmove_leaves_the_direction_flag_clear() {
        let mut bytes = *b"__abcd";
        // SAFETY: both ranges lie in `bytes`.
        unsafe { memmove(bytes.as_mut_ptr().add(2), bytes.as_ptr(), 4) };
        let flags: u64;
        // SAFETY: reads RFLAGS through the stack; no other effect.
        unsafe { core::arch::asm!("pushfq", "pop {}", out(reg) flags) };
        assert_eq!(flags & (1 << 10), 0, "DF must be clear after memmove");
        assert_eq!(&bytes, b"____ab");
    }

    #[kernel::test]
    fn test_memset_fills_exactly_the_range() {
        let mut bytes = [0u8; 8];
        // SAFETY: the range lies in `bytes`.
        unsafe { memset(bytes.as_mut_ptr().add(1), 0x1ab, 6) };
        assert_eq!(bytes, [0, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0]);
    }

    #[kernel::test]
    fn test_memcmp_orders_by_the_first_differing_byte() {
        let (a, b) = (b"abcx", b"abdx");
        // SAFETY: both ranges are 4 bytes long.
        let (less, equal, greater) = unsafe {
            (
                memcmp(a.as_ptr(), b.as_ptr(), 4),
                memcmp(a.as_ptr(), a.as_ptr(), 4),
                memcmp(b.as_ptr(), a.as_ptr(), 4),
            )
        };
        assert!(less < 0 && equal == 0 && greater > 0);
        // SAFETY: as above; only the first 2 bytes, which are equal.
        assert_eq!(unsafe { bcmp(a.as_ptr(), b.as_ptr(), 2) }, 0);
    }
}
