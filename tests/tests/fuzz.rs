//! Property tests: the ELF loader, the hypercall decoder, the exit handler and the snapshot
//! reader take random and mutated inputs without a panic, through `vmm::fuzzing`.
//! `FLICK_FUZZ_CASES` sets the number of cases (default: a few thousand, as in the normal test
//! run; `cargo xtask fuzz --cases N` runs millions).

use tests::elf::{ElfBuilder, PF_R, PF_W, Phdr};
use tests::{asm, kvm_test};
use vmm::Image;
use vmm::fuzzing;
use vmm::memory::GuestRam;

fn cases() -> u64 {
    std::env::var("FLICK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

/// xorshift64*: deterministic, seeded per test, printed on failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A value biased towards the edges where bugs live.
    fn interesting(&mut self) -> u64 {
        match self.below(8) {
            0 => 0,
            1 => u64::MAX - self.below(64),
            2 => u64::from(u32::MAX) - self.below(64),
            3 => 1u64 << self.below(64),
            4 => (1u64 << self.below(64)).wrapping_sub(1),
            5 => 0x20_0000 + self.below(0x10000),
            _ => self.next(),
        }
    }
}

fn valid_image() -> Vec<u8> {
    ElfBuilder::guest(&asm::exit(0))
        .with(Phdr::load(0x30_0000, PF_R | PF_W, vec![7; 64]))
        .build()
}

fn mutate(rng: &mut Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    for _ in 0..=rng.below(8) {
        if bytes.is_empty() {
            break;
        }
        let len = bytes.len() as u64;
        match rng.below(5) {
            0 => {
                let at = rng.below(len) as usize;
                bytes[at] ^= 1 << rng.below(8);
            }
            1 => {
                // Overwrite a header or program-header field with an edge value.
                let at = rng.below(64 + 56 * 4).min(len.saturating_sub(8)) as usize;
                let value = rng.interesting().to_le_bytes();
                let end = (at + 8).min(bytes.len());
                bytes[at..end].copy_from_slice(&value[..end - at]);
            }
            2 => bytes.truncate(rng.below(len) as usize),
            3 => {
                let at = rng.below(len) as usize;
                bytes[at] = rng.next() as u8;
            }
            _ => bytes.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
        }
    }
    bytes
}

#[test]
fn test_fuzz_loader_never_panics_on_mutated_images() {
    let seed = 0x5eed_0001;
    let mut rng = Rng(seed);
    let base = valid_image();
    let mut accepted = 0;
    for case in 0..cases() {
        let input = mutate(&mut rng, base.clone());
        let result = std::panic::catch_unwind(|| Image::parse(input));
        match result {
            Ok(Ok(image)) => {
                accepted += 1;
                // Whatever was accepted must satisfy the loader's promises.
                assert!(
                    image
                        .segments()
                        .iter()
                        .all(|s| !(s.access.write && s.access.execute))
                );
                assert!(image.segments().iter().all(|s| s.addr >= 0x20_0000));
            }
            Ok(Err(err)) => assert!(!err.to_string().is_empty()),
            Err(_) => panic!("Image::parse panicked (seed {seed:#x}, case {case})"),
        }
    }
    assert!(
        accepted > 0,
        "no mutated image was accepted: the mutations are too destructive"
    );
}

#[test]
fn test_fuzz_loader_never_panics_on_random_bytes() {
    let seed = 0x5eed_0002;
    let mut rng = Rng(seed);
    for case in 0..cases() {
        let len = rng.below(512) as usize;
        let mut input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if rng.below(2) == 0 && input.len() >= 20 {
            // Give half of them a plausible ELF identity so the deeper checks run.
            input[..6].copy_from_slice(b"\x7fELF\x02\x01");
            input[16..20].copy_from_slice(&[2, 0, 62, 0]);
        }
        if std::panic::catch_unwind(|| Image::parse(input)).is_err() {
            panic!("Image::parse panicked (seed {seed:#x}, case {case})");
        }
    }
}

#[test]
fn test_fuzz_hypercall_decoder_never_panics() {
    let seed = 0x5eed_0003;
    let mut rng = Rng(seed);
    let ram = GuestRam::new(1 << 20).unwrap();
    let mut accepted = 0;
    for case in 0..cases() {
        let at = rng.interesting() as u32;
        let mut raw = Vec::new();
        raw.extend_from_slice(&rng.interesting().to_le_bytes());
        raw.extend_from_slice(&(rng.interesting() as u32).to_le_bytes());
        raw.extend_from_slice(&(rng.below(4) as u32).to_le_bytes());
        let _ = ram.write(
            u64::from(at) % (1 << 20),
            &raw[..raw.len().min((1 << 20) - (at as usize % (1 << 20)))],
        );
        let width = [1usize, 2, 4, 4, 4][rng.below(5) as usize];
        let data = &at.to_le_bytes()[..width];
        let port = abi::port::FIRST + rng.below(16) as u16;
        match std::panic::catch_unwind(|| fuzzing::hypercall(&ram, port, data)) {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(_) => panic!("the hypercall decoder panicked (seed {seed:#x}, case {case})"),
        }
    }
    assert!(
        accepted > 0,
        "no hypercall was accepted: the inputs miss the decoder"
    );
}

#[test]
fn test_fuzz_exit_handler_never_panics() {
    let seed = 0x5eed_0004;
    let mut rng = Rng(seed);
    let ram = GuestRam::new(1 << 20).unwrap();
    let mut exits = fuzzing::Exits::default();
    for _ in 0..cases() {
        let port = match rng.below(4) {
            0 | 1 => 0x500 + rng.below(16) as u16,
            // The stdin and volume devices.
            2 => 0x520 + rng.below(8) as u16,
            _ => rng.next() as u16,
        };
        let width = [1usize, 2, 4][rng.below(3) as usize];
        let mut data: Vec<u8> = (0..width).map(|_| rng.next() as u8).collect();
        let _ = exits.port(&ram, rng.below(2) == 0, port, &mut data);
    }
}

/// Every path (symlinks as their targets) and file under `dir`, with its contents.
fn tree(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let content = if meta.file_type().is_symlink() {
                std::fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else if meta.is_dir() {
                stack.push(path.clone());
                Vec::new()
            } else {
                std::fs::read(&path).unwrap()
            };
            all.push((path, content));
        }
    }
    all.sort();
    all
}

#[test]
fn test_fuzz_volume_requests_never_panic_or_leave_the_volume() {
    // Random file requests (ops, flags, handles, offsets, lengths, buffers and paths at the
    // edges, escape attempts among the paths) against a read-only and a read-write volume:
    // no panic, and nothing outside the read-write volume changes.
    let seed = 0x5eed_0006;
    let mut rng = Rng(seed);
    let dir = tests::scratch_dir("fuzz").join("volumes");
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["ro/sub", "rw", "outside"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::write(dir.join("ro/file"), "read only").unwrap();
    std::fs::write(dir.join("outside/secret"), "SECRET").unwrap();
    std::os::unix::fs::symlink(dir.join("outside"), dir.join("rw/out")).unwrap();
    std::os::unix::fs::symlink("../outside/secret", dir.join("ro/up")).unwrap();
    let kept = |dir: &std::path::Path| [tree(&dir.join("ro")), tree(&dir.join("outside"))];
    let before = kept(&dir);
    let specs = [
        vmm::VolumeSpec::parse(&format!("{}:/r:ro", dir.join("ro").display())).unwrap(),
        vmm::VolumeSpec::parse(&format!("{}:/w", dir.join("rw").display())).unwrap(),
    ];
    let devices = vmm::vm::DeviceConfig {
        volumes: vmm::Volume::open_all(&specs).unwrap(),
        ..Default::default()
    };
    let mut exits = fuzzing::Exits::with_devices(&devices);
    let ram = GuestRam::new(1 << 20).unwrap();
    let paths: [&[u8]; 12] = [
        b"/r/file",
        b"/r/sub",
        b"/r/up",
        b"/r/../outside/secret",
        b"/w/new",
        b"/w/dir/x",
        b"/w/out/secret",
        b"/w/out/planted",
        b"/w/../outside/planted",
        b"/w",
        b"/",
        b"/w/\0nul",
    ];
    for _ in 0..cases() {
        let path = paths[rng.below(paths.len() as u64) as usize];
        let path2 = paths[rng.below(paths.len() as u64) as usize];
        ram.write(0x2000, path).unwrap();
        ram.write(0x3000, path2).unwrap();
        let (op, handle, flags, offset, len) = (
            1 + rng.below(11),
            rng.below(8),
            rng.below(128),
            rng.below(64),
            rng.below(8192),
        );
        // Mostly sensible values, one in four at an edge.
        let mut pick = |good: u64| {
            if rng.below(4) == 0 {
                rng.interesting()
            } else {
                good
            }
        };
        let request = abi::fs::FsRequest {
            op: pick(op) as u32,
            handle: pick(handle) as u32,
            flags: pick(flags) as u32,
            errno: 0,
            offset: pick(offset),
            buf: pick(0x10000),
            len: pick(len),
            path: pick(0x2000),
            path_len: pick(path.len() as u64) as u32,
            path2_len: pick(path2.len() as u64) as u32,
            path2: pick(0x3000),
            result: 0,
        };
        ram.write_obj(0x1000, request).unwrap();
        let mut data = 0x1000u32.to_le_bytes();
        let _ = exits.port(&ram, true, abi::port::FS, &mut data);
    }
    assert!(
        kept(&dir) == before,
        "seed {seed:#x}: a read-only or outside file changed"
    );
}

/// Mutates a snapshot file, then (mostly) fixes up its checksums so that the checks behind
/// them are reached too.
fn mutate_snapshot(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for _ in 0..=rng.below(4) {
        let len = bytes.len() as u64;
        match rng.below(6) {
            // Header and metadata fields: counts, offsets, sizes, registers.
            0 | 1 => {
                let at = (rng.below(len.min(8192)) as usize) & !7;
                let value = rng.interesting().to_le_bytes();
                let end = (at + 8).min(bytes.len());
                bytes[at..end].copy_from_slice(&value[..end - at]);
            }
            2 => {
                let at = rng.below(len) as usize;
                bytes[at] ^= 1 << rng.below(8);
            }
            3 => bytes.truncate(rng.below(len) as usize),
            4 => bytes.extend((0..rng.below(8192)).map(|_| rng.next() as u8)),
            _ => {
                let at = rng.below(len) as usize;
                bytes[at] = rng.next() as u8;
            }
        }
    }
    if rng.below(8) != 0 {
        fuzzing::fix_snapshot_checksums(&mut bytes);
    }
    bytes
}

#[kvm_test]
fn test_fuzz_snapshot_reader_never_panics() {
    let path = tests::scratch_dir("fuzz").join("hello.snap");
    tests::snapshot_image("hello", &path);
    let base = std::fs::read(&path).unwrap();
    assert!(
        fuzzing::snapshot(&base).is_ok(),
        "the base snapshot must load"
    );
    let seed = 0x5eed_0005;
    let mut rng = Rng(seed);
    let mut accepted = 0;
    for case in 0..cases() / 4 {
        let input = mutate_snapshot(&mut rng, &base);
        match std::panic::catch_unwind(|| fuzzing::snapshot(&input)) {
            Ok(Ok(())) => accepted += 1,
            Ok(Err(err)) => assert!(!err.to_string().is_empty()),
            Err(_) => panic!("the snapshot reader panicked (seed {seed:#x}, case {case})"),
        }
    }
    assert!(
        accepted > 0,
        "no mutated snapshot was accepted: the mutations are too destructive"
    );
}
