//! The arguments given to `vmm run IMAGE -- ARGS...`.

/// Iterator over the arguments; the first is the image's name, like `argv[0]`.
///
/// ```ignore
/// for arg in kernel::args().skip(1) {
///     kernel::println!("{arg}");
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Args {
    rest: &'static [u8],
    remaining: usize,
}

/// The arguments of this boot.
pub fn args() -> Args {
    let info = crate::boot_info();
    let rest = if info.args == 0 || info.args_len == 0 {
        &[][..]
    } else {
        // SAFETY: the VMM placed `args_len` bytes of arguments at `args`, in boot-info memory
        // that stays mapped and unchanged for the life of the guest.
        unsafe { core::slice::from_raw_parts(info.args as *const u8, info.args_len as usize) }
    };
    Args { rest, remaining: info.argc as usize }
}

impl Iterator for Args {
    type Item = &'static str;

    fn next(&mut self) -> Option<&'static str> {
        if self.remaining == 0 {
            return None;
        }
        let end = self.rest.iter().position(|&b| b == 0)?;
        let (arg, rest) = self.rest.split_at(end);
        self.rest = &rest[1..];
        self.remaining -= 1;
        // The VMM only passes UTF-8; anything else reads as empty rather than panicking.
        Some(core::str::from_utf8(arg).unwrap_or(""))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for Args {}
