//! Loader validation without KVM: one test per class of bad input, each built byte by byte.
//! Every one must be refused with a clear error, never a panic.

use tests::asm;
use tests::elf::*;
use vmm::files::FileError;
use vmm::{Image, ImageError};

fn valid() -> ElfBuilder {
    ElfBuilder::guest(&asm::exit(0))
}

fn refuse(bytes: Vec<u8>) -> String {
    match Image::parse(bytes) {
        Ok(_) => panic!("a bad image was accepted"),
        Err(err) => err.to_string(),
    }
}

fn assert_refused(bytes: Vec<u8>, expected: &str) {
    let message = refuse(bytes);
    assert!(
        message.contains(expected),
        "expected '{expected}' in: {message}"
    );
}

#[test]
fn test_loader_valid_guest_is_accepted() {
    let image = Image::parse(valid().build()).expect("the reference image must load");
    assert_eq!(image.entry(), CODE_ADDR);
}

#[test]
fn test_loader_missing_file_is_refused() {
    let err = Image::from_file("/nonexistent/flick-image".as_ref()).unwrap_err();
    assert!(matches!(err, ImageError::File(FileError::Io { .. })));
    assert!(vmm::error_chain(&err).contains("No such file"));
}

#[test]
fn test_loader_directory_is_refused() {
    let err = Image::from_file(&tests::project_root()).unwrap_err();
    assert!(
        matches!(err, ImageError::File(FileError::Directory(_))),
        "{err}"
    );
}

#[test]
fn test_loader_device_is_refused() {
    let err = Image::from_file("/dev/zero".as_ref()).unwrap_err();
    assert!(
        matches!(err, ImageError::File(FileError::NotRegularFile(_))),
        "{err}"
    );
}

#[test]
fn test_loader_empty_file_is_refused() {
    let path = tests::write_scratch("loader-empty", "empty", b"");
    let err = Image::from_file(&path).unwrap_err();
    assert!(matches!(err, ImageError::Empty(_)), "{err}");
}

#[test]
fn test_loader_huge_sparse_file_is_refused_without_reading() {
    let path = tests::scratch_dir("loader-sparse").join("sparse");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(10 << 30).unwrap(); // 10 GiB, sparse: reading it would take a while
    let started = std::time::Instant::now();
    let err = Image::from_file(&path).unwrap_err();
    assert!(matches!(err, ImageError::TooLarge { .. }), "{err}");
    assert!(started.elapsed().as_secs() < 5, "the loader read the file");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn test_loader_random_bytes_are_refused() {
    let mut state = 0x1234_5678_9abc_def0u64;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    assert_refused(bytes, "not an ELF file");
}

#[test]
fn test_loader_truncated_header_is_refused() {
    let bytes = valid().build()[..40].to_vec();
    assert_refused(bytes, "truncated ELF header");
}

#[test]
fn test_loader_truncated_file_is_refused() {
    let full = valid().build();
    let bytes = full[..full.len() - 100].to_vec();
    assert_refused(bytes, "beyond the end of the file");
}

#[test]
fn test_loader_32_bit_elf_is_refused() {
    let mut b = valid();
    b.class = 1;
    assert_refused(b.build(), "32-bit");
}

#[test]
fn test_loader_big_endian_elf_is_refused() {
    let mut b = valid();
    b.data = 2;
    assert_refused(b.build(), "big-endian");
}

#[test]
fn test_loader_other_architecture_is_refused() {
    let mut b = valid();
    b.machine = EM_AARCH64;
    assert_refused(b.build(), "another architecture");
}

#[test]
fn test_loader_et_dyn_is_refused() {
    let mut b = valid();
    b.e_type = ET_DYN;
    assert_refused(b.build(), "ET_DYN");
}

#[test]
fn test_loader_et_rel_is_refused() {
    let mut b = valid();
    b.e_type = ET_REL;
    assert_refused(b.build(), "ET_REL");
}

#[test]
fn test_loader_interpreter_is_refused() {
    let b = valid().with(Phdr::other(
        PT_INTERP,
        b"/lib64/ld-linux-x86-64.so.2\0".to_vec(),
    ));
    assert_refused(b.build(), "PT_INTERP");
}

#[test]
fn test_loader_dynamic_and_tls_are_refused() {
    assert_refused(
        valid().with(Phdr::other(PT_DYNAMIC, vec![0; 16])).build(),
        "PT_DYNAMIC",
    );
    assert_refused(
        valid().with(Phdr::other(PT_TLS, vec![0; 16])).build(),
        "PT_TLS",
    );
}

#[test]
fn test_loader_missing_abi_note_is_refused() {
    assert_refused(
        valid().without(PT_NOTE).build(),
        "not an image for this VMM: no ABI note",
    );
}

#[test]
fn test_loader_host_program_is_refused() {
    let bytes = std::fs::read("/bin/true").unwrap();
    assert_refused(bytes, "not an image for this VMM");
}

#[test]
fn test_loader_other_abi_version_is_refused() {
    let b = valid()
        .without(PT_NOTE)
        .with(Phdr::other(PT_NOTE, abi_note(abi::ABI_VERSION + 1, 0)));
    assert_refused(b.build(), "ABI version");
}

#[test]
fn test_loader_program_headers_beyond_file_are_refused() {
    let mut b = valid();
    b.phoff = Some(1 << 40);
    assert_refused(b.build(), "program headers");
    let mut b = valid();
    b.phoff = Some(u64::MAX - 8);
    assert_refused(b.build(), "program headers");
    let mut b = valid();
    b.phoff = Some(b.build().len() as u64 - 30);
    assert_refused(b.build(), "beyond the end of the file");
    let mut b = valid();
    b.phnum = Some(u16::MAX);
    assert_refused(b.build(), "at most 64");
}

#[test]
fn test_loader_segment_beyond_file_is_refused() {
    let mut b = valid();
    b.phdrs[0].offset = Some(1 << 30);
    assert_refused(b.build(), "beyond the end of the file");
    let mut b = valid();
    b.phdrs[0].filesz = Some(1 << 20);
    b.phdrs[0].memsz = Some(1 << 20);
    assert_refused(b.build(), "beyond the end of the file");
}

#[test]
fn test_loader_filesz_above_memsz_is_refused() {
    let mut b = valid();
    b.phdrs[0].memsz = Some(16);
    assert_refused(b.build(), "exceeds memory size");
}

#[test]
fn test_loader_overflowing_address_is_refused() {
    let mut b = valid();
    b.phdrs[0].vaddr = u64::MAX - 0xfff;
    b.phdrs[0].memsz = Some(0x10_0000);
    assert_refused(b.build(), "overflows");
    let mut b = valid();
    b.phdrs[0].offset = Some(u64::MAX);
    assert_refused(b.build(), "beyond the end of the file");
}

#[test]
fn test_loader_overlapping_segments_are_refused() {
    let b = valid().with(Phdr::load(CODE_ADDR + 0x800, PF_R, vec![1; 64]));
    assert_refused(b.build(), "overlap");
}

#[test]
fn test_loader_segment_in_reserved_low_memory_is_refused() {
    let b = valid().with(Phdr::load(0x1000, PF_R, vec![1; 64]));
    assert_refused(b.build(), "reserved low memory");
}

#[test]
fn test_loader_segment_beyond_max_ram_is_refused() {
    let mut data = Phdr::load(0x1_0000_0000, PF_R | PF_W, vec![]);
    data.memsz = Some(1 << 40); // 1 TiB of bss: refused without allocating
    assert_refused(valid().with(data).build(), "beyond the largest guest RAM");
}

#[test]
fn test_loader_segment_beyond_mem_is_refused_at_boot() {
    let mut data = Phdr::load(0x80_0000, PF_R | PF_W, vec![]);
    data.memsz = Some(0x10_0000);
    let image = Image::parse(valid().with(data).build()).unwrap();
    let err = image.check_fits(4 << 20).unwrap_err();
    assert!(matches!(err, ImageError::TooLittleMemory { .. }), "{err}");
    assert!(err.to_string().contains("needs at least 10 MiB"), "{err}");
    image.check_fits(16 << 20).unwrap();
}

#[test]
fn test_loader_entry_outside_code_is_refused() {
    let mut b = valid();
    b.entry = 0x10_0000;
    assert_refused(b.build(), "entry point");
    let mut b = valid().with(Phdr::load(0x30_0000, PF_R | PF_W, vec![0; 64]));
    b.entry = 0x30_0000;
    assert_refused(b.build(), "entry point");
}

#[test]
fn test_loader_writable_executable_segment_is_refused() {
    let mut b = valid();
    b.phdrs[0].flags = PF_R | PF_W | PF_X;
    assert_refused(b.build(), "both writable and executable");
}

#[test]
fn test_loader_note_naming_its_own_stub_table_is_refused() {
    // ABI version 3 let an image name its own ring-0 exception stubs; now that field is
    // reserved: the stubs are the VMM's.
    let b = valid()
        .without(PT_NOTE)
        .with(Phdr::other(PT_NOTE, abi_note(abi::ABI_VERSION, TEXT_ADDR)));
    assert_refused(b.build(), "reserved fields");
}

#[test]
fn test_loader_paddr_differing_from_vaddr_is_refused() {
    let mut b = valid();
    b.phdrs[0].paddr = Some(0x40_0000);
    assert_refused(b.build(), "identity-mapped");
}

#[test]
fn test_loader_truncations_never_panic() {
    let full = valid().build();
    for len in 0..full.len() {
        let _ = Image::parse(full[..len].to_vec());
    }
}

#[test]
fn test_loader_built_images_are_accepted() {
    for name in ["hello", "exitcode", "panic"] {
        let image = Image::from_file(&tests::image(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(image.entry() >= 0x20_0000);
        assert!(
            image
                .segments()
                .iter()
                .all(|s| !(s.access.write && s.access.execute))
        );
    }
}
