//! Tiny guests, hand-assembled: a few instructions each, wrapped in a valid image by
//! [`crate::elf::ElfBuilder::guest`].

use abi::port;

/// `mov dx, imm16`.
pub fn mov_dx(value: u16) -> Vec<u8> {
    let [lo, hi] = value.to_le_bytes();
    vec![0x66, 0xba, lo, hi]
}

/// `mov eax, imm32`.
pub fn mov_eax(value: u32) -> Vec<u8> {
    let mut code = vec![0xb8];
    code.extend_from_slice(&value.to_le_bytes());
    code
}

/// `out dx, eax`.
pub const OUT_DX_EAX: u8 = 0xef;

/// Exits with the value in `eax`.
pub fn exit_with_eax() -> Vec<u8> {
    [mov_dx(port::EXIT), vec![OUT_DX_EAX]].concat()
}

/// Exits with `code`.
pub fn exit(code: u32) -> Vec<u8> {
    [mov_eax(code), exit_with_eax()].concat()
}

/// `jmp $`: spins forever.
pub const SPIN: [u8; 2] = [0xeb, 0xfe];

/// `ud2`.
pub const UD2: [u8; 2] = [0x0f, 0x0b];

/// An exception stub for `vector` as the VMM writes it (see `abi::exception`), padded to 16
/// bytes: hostile tests put such tables in images to check that the VMM never runs them.
pub fn exception_stub(vector: u8) -> Vec<u8> {
    let mut stub = vec![0x50, 0x52]; // push rax; push rdx
    stub.extend(mov_eax(u32::from(vector)));
    stub.extend(mov_dx(port::CRASH));
    stub.extend([OUT_DX_EAX, 0xf4, 0xeb, 0xfd]); // out; hlt; jmp back to hlt
    stub.resize(abi::exception::STUB_STRIDE, 0xcc);
    stub
}

/// A full stub table.
pub fn exception_stubs() -> Vec<u8> {
    (0..abi::exception::VECTORS as u8)
        .flat_map(exception_stub)
        .collect()
}

/// A loop that writes every width of value to each port in `first..end`, and reads each back.
pub fn port_spray(first: u16, end: u16) -> Vec<u8> {
    let mut code = vec![0xb9]; // mov ecx, first
    code.extend_from_slice(&u32::from(first).to_le_bytes());
    let top = code.len();
    code.extend([
        0x89, 0xca, // mov edx, ecx
        0x89, 0xc8, // mov eax, ecx
        0xee, // out dx, al
        0x66, 0xef, // out dx, ax
        0xef, // out dx, eax
        0xec, // in al, dx
        0x66, 0xed, // in ax, dx
        0xed, // in eax, dx
        0xff, 0xc1, // inc ecx
        0x81, 0xf9, // cmp ecx, end
    ]);
    code.extend_from_slice(&u32::from(end).to_le_bytes());
    let back = top as i64 - (code.len() as i64 + 2);
    code.extend([0x75, back as i8 as u8]); // jne top
    code
}
