//! Property tests: the ELF loader and the hypercall decoder take random and mutated inputs
//! without a panic. `FLICK_FUZZ_CASES` sets the number of cases (default: a few thousand, as
//! in the normal test run; `cargo xtask fuzz --cases N` runs millions).

use abi::hypercall::{CONSOLE_WRITE_MAX, stream};
use tests::asm;
use tests::elf::{ElfBuilder, PF_R, PF_W, Phdr};
use vmm::Image;
use vmm::exit::{Console, Exit, ExitHandler};
use vmm::hypercall::decode_console_write;
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
        let result = std::panic::catch_unwind(|| decode_console_write(&ram, at));
        match result {
            Ok(Ok(req)) => {
                assert!(req.stream == stream::STDOUT || req.stream == stream::STDERR);
                assert!(req.len <= CONSOLE_WRITE_MAX);
                assert!(ram.check_range(req.buf, u64::from(req.len)).is_ok());
            }
            Ok(Err(_)) => {}
            Err(_) => panic!("decode_console_write panicked (seed {seed:#x}, case {case})"),
        }
    }
}

#[test]
fn test_fuzz_exit_handler_never_panics() {
    let seed = 0x5eed_0004;
    let mut rng = Rng(seed);
    let ram = GuestRam::new(1 << 20).unwrap();
    let console = Console {
        stdout: Box::new(std::io::sink()),
        stderr: Box::new(std::io::sink()),
    };
    let mut handler = ExitHandler::new(console);
    for _ in 0..cases() {
        let port = if rng.below(2) == 0 {
            0x500 + rng.below(16) as u16
        } else {
            rng.next() as u16
        };
        let width = [1usize, 2, 4][rng.below(3) as usize];
        let mut data: Vec<u8> = (0..width).map(|_| rng.next() as u8).collect();
        if port == abi::port::SLEEP {
            continue; // would really sleep
        }
        let exit = if rng.below(2) == 0 {
            Exit::IoOut { port, data: &data }
        } else {
            Exit::IoIn {
                port,
                data: &mut data,
            }
        };
        let _ = handler.handle(&ram, exit);
    }
}
