//! Source lines (`file:line`) for code addresses in crash reports, from the image's DWARF line
//! tables (images are built with `debug = "line-tables-only"`).
//!
//! Only read on the crash path, over the image bytes the VMM already holds. The tables come
//! from an untrusted file, so parsing is fenced like the symbol table's: a missing, compressed
//! or malformed section (or a panic inside the parser) just means addresses get no line.

use addr2line::Context;
use addr2line::gimli::{self, EndianSlice, LittleEndian, SectionId};

type Reader<'a> = EndianSlice<'a, LittleEndian>;

/// The line tables of one image.
pub(crate) struct Lines<'a> {
    context: Option<Context<Reader<'a>>>,
}

impl<'a> Lines<'a> {
    /// The line tables of the ELF file `bytes` (none if it has no usable DWARF).
    pub(crate) fn from_elf(bytes: &'a [u8]) -> Self {
        let context = std::panic::catch_unwind(|| load(bytes)).ok().flatten();
        Lines { context }
    }

    /// `file:line` of the code at `addr` in the function that holds it; when that code was
    /// inlined from another function, that function and its own `file:line` follow.
    pub(crate) fn describe(&self, addr: u64) -> Option<String> {
        let context = self.context.as_ref()?;
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut frames = context.find_frames(addr).skip_all_loads().ok()?;
            let mut innermost = None;
            let mut outermost = None;
            // Innermost (inlined) first; a corrupt table cannot make this loop long.
            for _ in 0..MAX_INLINE_DEPTH {
                let Ok(Some(frame)) = frames.next() else {
                    break;
                };
                let place = frame.location.as_ref().and_then(place);
                let function = frame
                    .function
                    .as_ref()
                    .and_then(|f| f.raw_name().ok())
                    .map(|name| format!("{:#}", rustc_demangle::demangle(&name)));
                if innermost.is_none() {
                    innermost = Some((function, place.clone()));
                }
                outermost = Some(place);
            }
            let (inner_function, inner_place) = innermost?;
            let outer_place = outermost.flatten();
            match (outer_place, inner_function, inner_place) {
                (Some(outer), Some(function), Some(inner)) if outer != inner => {
                    Some(format!("{outer} (inlined {function} at {inner})"))
                }
                (Some(outer), ..) => Some(outer),
                (None, _, inner) => inner,
            }
        }));
        found.ok().flatten()
    }
}

/// Most inlined frames looked at for one address.
const MAX_INLINE_DEPTH: usize = 64;

fn place(location: &addr2line::Location<'_>) -> Option<String> {
    Some(format!("{}:{}", shorten(location.file?), location.line?))
}

/// Builds the context from the ELF's `.debug_*` sections.
fn load(bytes: &[u8]) -> Option<Context<Reader<'_>>> {
    let elf = goblin::elf::Elf::parse(bytes).ok()?;
    let section = |id: SectionId| -> Result<Reader<'_>, ()> {
        let data = elf
            .section_headers
            .iter()
            .find(|sh| elf.shdr_strtab.get_at(sh.sh_name) == Some(id.name()))
            .filter(|sh| {
                sh.sh_type != goblin::elf::section_header::SHT_NOBITS
                    && sh.sh_flags & u64::from(goblin::elf::section_header::SHF_COMPRESSED) == 0
            })
            .and_then(|sh| {
                let start = usize::try_from(sh.sh_offset).ok()?;
                let end = start.checked_add(usize::try_from(sh.sh_size).ok()?)?;
                bytes.get(start..end)
            })
            .unwrap_or(&[]);
        Ok(EndianSlice::new(data, LittleEndian))
    };
    let dwarf = gimli::Dwarf::load(section).ok()?;
    Context::from_dwarf(dwarf).ok()
}

/// Drops the toolchain's build prefix from the standard library's paths
/// (`/rustc/<commit>/library/core/...` → `library/core/...`).
fn shorten(file: &str) -> &str {
    file.strip_prefix("/rustc/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(file, |(_, path)| path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_lines_of_garbage_are_empty() {
        let lines = Lines::from_elf(b"\x7fELF not really");
        assert_eq!(lines.describe(0x20_0000), None);
        let lines = Lines::from_elf(&[]);
        assert_eq!(lines.describe(0), None);
    }

    #[test]
    fn test_shorten_drops_the_toolchain_prefix_only() {
        assert_eq!(
            shorten("/rustc/0123abcd/library/core/src/panicking.rs"),
            "library/core/src/panicking.rs"
        );
        assert_eq!(shorten("src/main.rs"), "src/main.rs");
        assert_eq!(shorten("/rustc/"), "/rustc/");
    }
}
