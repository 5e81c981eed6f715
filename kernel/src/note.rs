//! The ABI note that marks this ELF as a flick image (see `abi::note`).

use abi::note::{DESC_SIZE, NAME, TYPE};

/// The note as it lies in `.note.flick`: header, name padded to 4 bytes, descriptor.
#[repr(C, align(8))]
struct AbiNote {
    name_size: u32,
    desc_size: u32,
    note_type: u32,
    name: [u8; 12],
    abi_version: u32,
    flags: u32,
    reserved: u64,
}

const fn padded_name() -> [u8; 12] {
    let mut out = [0u8; 12];
    let mut i = 0;
    while i < NAME.len() {
        out[i] = NAME[i];
        i += 1;
    }
    out
}

#[used]
#[unsafe(link_section = ".note.flick")]
static ABI_NOTE: AbiNote = AbiNote {
    name_size: NAME.len() as u32,
    desc_size: DESC_SIZE as u32,
    note_type: TYPE,
    name: padded_name(),
    abi_version: abi::ABI_VERSION,
    flags: 0,
    reserved: 0,
};
