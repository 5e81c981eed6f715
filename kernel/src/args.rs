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

impl Args {
    /// The first `count` of the NUL-terminated strings packed in `strings`.
    fn packed(strings: &'static [u8], count: usize) -> Args {
        Args {
            rest: strings,
            remaining: count,
        }
    }
}

/// The arguments of this boot.
pub fn args() -> Args {
    Args::packed(packed_strings(), crate::boot_info().argc as usize)
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
    packed_vars(packed_strings(), info.argc as usize, info.envc as usize)
}

/// The `KEY=VALUE` entries that follow `argc` arguments in `strings`, split at the first `=`;
/// an entry without `=` is skipped.
fn packed_vars(
    strings: &'static [u8],
    argc: usize,
    envc: usize,
) -> impl Iterator<Item = (&'static str, &'static str)> {
    let mut strings = Args::packed(strings, argc.saturating_add(envc));
    strings.by_ref().take(argc).for_each(drop);
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
        let Some(end) = self.rest.iter().position(|&b| b == 0) else {
            // Fewer strings than counted: stop, and keep `len()` true.
            self.remaining = 0;
            return None;
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[kernel::test]
    fn test_args_split_at_nul_bytes() {
        let args = Args::packed(b"img\0one\0two words\0", 3);
        assert_eq!(args.collect::<Vec<_>>(), ["img", "one", "two words"]);
    }

    #[kernel::test]
    fn test_args_stop_after_count_strings() {
        let mut args = Args::packed(b"img\0one\0K=V\0", 2);
        assert_eq!(args.len(), 2);
        assert_eq!(args.next(), Some("img"));
        assert_eq!(args.next(), Some("one"));
        assert_eq!(args.next(), None);
    }

    #[kernel::test]
    fn test_args_missing_final_nul_ends_iteration_and_length() {
        let mut args = Args::packed(b"img\0tail", 2);
        assert_eq!(args.next(), Some("img"));
        assert_eq!(args.next(), None);
        assert_eq!(args.len(), 0);
    }

    #[kernel::test]
    fn test_args_non_utf8_string_reads_as_empty() {
        let args = Args::packed(b"img\0\xff\xfe\0ok\0", 3);
        assert_eq!(args.collect::<Vec<_>>(), ["img", "", "ok"]);
    }

    #[kernel::test]
    fn test_vars_follow_the_arguments_and_split_at_first_equals() {
        let vars = packed_vars(b"img\0a\0K=V\0X=1=2\0", 2, 2);
        assert_eq!(vars.collect::<Vec<_>>(), [("K", "V"), ("X", "1=2")]);
    }

    #[kernel::test]
    fn test_vars_entry_without_equals_is_skipped() {
        let vars = packed_vars(b"img\0NOEQUALS\0K=\0", 1, 2);
        assert_eq!(vars.collect::<Vec<_>>(), [("K", "")]);
    }

    #[kernel::test]
    fn test_args_from_the_vmm_are_the_runner_command_line() {
        // The runner boots each test VM with `-- --flick-run PATH`.
        let args: Vec<&str> = args().skip(1).collect();
        assert_eq!(
            args,
            [
                "--flick-run",
                "args::tests::test_args_from_the_vmm_are_the_runner_command_line"
            ]
        );
    }
}
