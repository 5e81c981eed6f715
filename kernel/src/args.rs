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

fn packed_strings() -> &'static [u8] {
    let info = crate::boot_info();
    if info.args == 0 || info.args_len == 0 {
        return &[];
    }
    // SAFETY: the VMM placed `args_len` bytes of strings at `args`, in boot-info memory that
    // stays mapped and unchanged for the life of the guest.
    unsafe { core::slice::from_raw_parts(info.args as *const u8, info.args_len as usize) }
}

/// The arguments of this boot.
pub fn args() -> Args {
    Args {
        rest: packed_strings(),
        remaining: crate::boot_info().argc as usize,
    }
}

/// The environment given with `vmm run --env KEY=VALUE`, as `(key, value)` pairs.
///
/// ```ignore
/// for (key, value) in kernel::vars() {
///     kernel::println!("{key}={value}");
/// }
/// ```
pub fn vars() -> impl Iterator<Item = (&'static str, &'static str)> {
    let info = crate::boot_info();
    let mut strings = Args {
        rest: packed_strings(),
        remaining: (info.argc + info.envc) as usize,
    };
    strings.by_ref().take(info.argc as usize).for_each(drop);
    strings.filter_map(|entry| entry.split_once('='))
}

/// The value of environment variable `name`, if set.
///
/// ```ignore
/// let level = kernel::env("LOG_LEVEL").unwrap_or("info");
/// ```
pub fn env(name: &str) -> Option<&'static str> {
    vars().find(|(key, _)| *key == name).map(|(_, value)| value)
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
