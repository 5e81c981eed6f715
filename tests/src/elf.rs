//! An ELF writer for tests: every field is a public knob, so a test can build the one broken
//! image it needs.

/// `PT_LOAD`.
pub const PT_LOAD: u32 = 1;
/// `PT_DYNAMIC`.
pub const PT_DYNAMIC: u32 = 2;
/// `PT_INTERP`.
pub const PT_INTERP: u32 = 3;
/// `PT_NOTE`.
pub const PT_NOTE: u32 = 4;
/// `PT_TLS`.
pub const PT_TLS: u32 = 7;
/// Executable.
pub const PF_X: u32 = 1;
/// Writable.
pub const PF_W: u32 = 2;
/// Readable.
pub const PF_R: u32 = 4;
/// `ET_REL`.
pub const ET_REL: u16 = 1;
/// `ET_EXEC`.
pub const ET_EXEC: u16 = 2;
/// `ET_DYN`.
pub const ET_DYN: u16 = 3;
/// `EM_X86_64`.
pub const EM_X86_64: u16 = 62;
/// `EM_AARCH64`.
pub const EM_AARCH64: u16 = 183;

/// A program header; `data` is placed in the file, the rest is written as given (overrides
/// included) so tests can lie about it.
#[derive(Clone, Debug)]
pub struct Phdr {
    /// `p_type`.
    pub p_type: u32,
    /// `p_flags`.
    pub flags: u32,
    /// `p_vaddr`.
    pub vaddr: u64,
    /// `p_paddr` (defaults to `vaddr`).
    pub paddr: Option<u64>,
    /// File bytes.
    pub data: Vec<u8>,
    /// `p_memsz` (defaults to the data's length).
    pub memsz: Option<u64>,
    /// `p_filesz` override.
    pub filesz: Option<u64>,
    /// `p_offset` override.
    pub offset: Option<u64>,
    /// `p_align`.
    pub align: u64,
}

impl Phdr {
    /// A `PT_LOAD` of `data` at `vaddr`.
    pub fn load(vaddr: u64, flags: u32, data: Vec<u8>) -> Self {
        Phdr {
            p_type: PT_LOAD,
            flags,
            vaddr,
            paddr: None,
            data,
            memsz: None,
            filesz: None,
            offset: None,
            align: 0x1000,
        }
    }

    /// Any other header carrying `data`.
    pub fn other(p_type: u32, data: Vec<u8>) -> Self {
        Phdr {
            p_type,
            flags: PF_R,
            vaddr: 0,
            paddr: None,
            data,
            memsz: None,
            filesz: None,
            offset: None,
            align: 4,
        }
    }
}

/// Builds an ELF64 file.
#[derive(Clone, Debug)]
pub struct ElfBuilder {
    /// `EI_CLASS` (2 = 64-bit).
    pub class: u8,
    /// `EI_DATA` (1 = little-endian).
    pub data: u8,
    /// `e_type`.
    pub e_type: u16,
    /// `e_machine`.
    pub machine: u16,
    /// `e_entry`.
    pub entry: u64,
    /// Program headers, in order.
    pub phdrs: Vec<Phdr>,
    /// `e_phoff` override.
    pub phoff: Option<u64>,
    /// `e_phnum` override.
    pub phnum: Option<u16>,
}

/// Where [`ElfBuilder::guest`] starts its text: one page of filler (or of whatever a hostile
/// test puts there), then the code.
pub const TEXT_ADDR: u64 = 0x20_0000;
/// Where [`ElfBuilder::guest`] puts the code (and the entry).
pub const CODE_ADDR: u64 = 0x20_1000;

/// The ABI note bytes for `version`, with `reserved` in its reserved field (0 is valid; ABI
/// version 3 put the address of the image's own exception stubs there).
pub fn abi_note(version: u32, reserved: u64) -> Vec<u8> {
    let mut note = Vec::new();
    note.extend_from_slice(&(abi::note::NAME.len() as u32).to_le_bytes());
    note.extend_from_slice(&(abi::note::DESC_SIZE as u32).to_le_bytes());
    note.extend_from_slice(&abi::note::TYPE.to_le_bytes());
    note.extend_from_slice(abi::note::NAME);
    note.resize(24, 0);
    note.extend_from_slice(&version.to_le_bytes());
    note.extend_from_slice(&0u32.to_le_bytes());
    note.extend_from_slice(&reserved.to_le_bytes());
    note
}

impl ElfBuilder {
    /// A valid image: a page of `int3` at [`TEXT_ADDR`], `code` at [`CODE_ADDR`], the ABI note.
    pub fn guest(code: &[u8]) -> Self {
        Self::guest_with_first_page(Vec::new(), code)
    }

    /// A valid image whose first text page holds `first_page` (e.g. a would-be stub table).
    pub fn guest_with_first_page(first_page: Vec<u8>, code: &[u8]) -> Self {
        let mut text = first_page;
        text.resize(0x1000, 0xcc);
        text.extend_from_slice(code);
        ElfBuilder {
            class: 2,
            data: 1,
            e_type: ET_EXEC,
            machine: EM_X86_64,
            entry: CODE_ADDR,
            phdrs: vec![
                Phdr::load(TEXT_ADDR, PF_R | PF_X, text),
                Phdr::other(PT_NOTE, abi_note(abi::ABI_VERSION, 0)),
            ],
            phoff: None,
            phnum: None,
        }
    }

    /// Adds a program header.
    pub fn with(mut self, phdr: Phdr) -> Self {
        self.phdrs.push(phdr);
        self
    }

    /// Removes every header of type `p_type`.
    pub fn without(mut self, p_type: u32) -> Self {
        self.phdrs.retain(|p| p.p_type != p_type);
        self
    }

    /// The file bytes.
    pub fn build(&self) -> Vec<u8> {
        let phoff = 64u64;
        let mut file = vec![0u8; 64 + 56 * self.phdrs.len()];
        let mut placed = Vec::new();
        for ph in &self.phdrs {
            let offset = if ph.p_type == PT_LOAD {
                let page = (file.len() as u64).div_ceil(0x1000) * 0x1000;
                page + (ph.vaddr % 0x1000)
            } else {
                file.len() as u64
            };
            file.resize(offset as usize, 0);
            file.extend_from_slice(&ph.data);
            placed.push(offset);
        }
        file[0..4].copy_from_slice(b"\x7fELF");
        file[4] = self.class;
        file[5] = self.data;
        file[6] = 1;
        file[16..18].copy_from_slice(&self.e_type.to_le_bytes());
        file[18..20].copy_from_slice(&self.machine.to_le_bytes());
        file[20..24].copy_from_slice(&1u32.to_le_bytes());
        file[24..32].copy_from_slice(&self.entry.to_le_bytes());
        file[32..40].copy_from_slice(&self.phoff.unwrap_or(phoff).to_le_bytes());
        file[52..54].copy_from_slice(&64u16.to_le_bytes());
        file[54..56].copy_from_slice(&56u16.to_le_bytes());
        let phnum = self.phnum.unwrap_or(self.phdrs.len() as u16);
        file[56..58].copy_from_slice(&phnum.to_le_bytes());
        file[58..60].copy_from_slice(&64u16.to_le_bytes());
        for (i, (ph, offset)) in self.phdrs.iter().zip(placed).enumerate() {
            let at = 64 + 56 * i;
            let len = ph.data.len() as u64;
            let fields: [u64; 6] = [
                ph.offset.unwrap_or(offset),
                ph.vaddr,
                ph.paddr.unwrap_or(ph.vaddr),
                ph.filesz.unwrap_or(len),
                ph.memsz.unwrap_or(len),
                ph.align,
            ];
            file[at..at + 4].copy_from_slice(&ph.p_type.to_le_bytes());
            file[at + 4..at + 8].copy_from_slice(&ph.flags.to_le_bytes());
            for (j, value) in fields.iter().enumerate() {
                file[at + 8 + 8 * j..at + 16 + 8 * j].copy_from_slice(&value.to_le_bytes());
            }
        }
        file
    }
}
