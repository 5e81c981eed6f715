//! Names for code addresses in crash reports, from the image's ELF symbol table.
//!
//! Only read on the crash path. The table comes from an untrusted file, so parsing is fenced:
//! any failure (or a panic inside the parser) just means addresses stay unnamed.

/// A sorted table of function symbols.
#[derive(Debug, Default)]
pub(crate) struct Symbols {
    functions: Vec<(u64, u64, String)>,
}

/// Most symbols kept (a huge table is not worth the memory on the crash path).
const MAX_SYMBOLS: usize = 200_000;

impl Symbols {
    /// The function symbols of the ELF file `bytes` (empty if it has no usable symbol table).
    pub(crate) fn from_elf(bytes: &[u8]) -> Self {
        let parsed = std::panic::catch_unwind(|| goblin::elf::Elf::parse(bytes).ok());
        let Ok(Some(elf)) = parsed else {
            return Self::default();
        };
        let mut functions: Vec<(u64, u64, String)> = elf
            .syms
            .iter()
            .filter(|sym| sym.is_function() && sym.st_value != 0)
            .take(MAX_SYMBOLS)
            .filter_map(|sym| {
                let name = elf.strtab.get_at(sym.st_name)?;
                Some((
                    sym.st_value,
                    sym.st_size,
                    format!("{:#}", rustc_demangle::demangle(name)),
                ))
            })
            .collect();
        functions.sort_by_key(|f| f.0);
        Symbols { functions }
    }

    /// `name+0xoffset` for the function containing `addr`, if any.
    pub(crate) fn describe(&self, addr: u64) -> Option<String> {
        let index = self
            .functions
            .partition_point(|f| f.0 <= addr)
            .checked_sub(1)?;
        let (start, size, name) = &self.functions[index];
        let offset = addr - start;
        // Symbols without a size (asm) are trusted for a page at most.
        let limit = if *size == 0 { 4096 } else { *size };
        (offset < limit).then(|| format!("{name}+{offset:#x}"))
    }
}
