//! Hashes N MiB (first argument, default 64) of generated data with the `sha2` crate and
//! prints the digest and the time the guest measured. Byte `i` of the data is `i % 251`.

#![no_std]
#![no_main]

use kernel::println;
use kernel::time::Instant;
use sha2::{Digest, Sha256};

kernel::main!(main);

/// A block of the data that is a whole number of 251-byte periods.
const BLOCK: usize = 251 * 256;

/// The size in MiB from the first argument: 64 without one.
fn parse_mib(arg: Option<&str>) -> Option<u64> {
    arg.map_or(Some(64), |text| text.parse().ok())
}

/// The data's repeating block: byte `i` is `i % 251`.
fn data_block() -> [u8; BLOCK] {
    let mut block = [0u8; BLOCK];
    for (i, byte) in block.iter_mut().enumerate() {
        *byte = (i % 251) as u8;
    }
    block
}

fn main(mut args: kernel::Args) -> i32 {
    let Some(mib) = parse_mib(args.nth(1)) else {
        kernel::eprintln!("sha256: the argument is a number of MiB");
        return 2;
    };
    let block = data_block();
    let start = Instant::now();
    let mut hasher = Sha256::new();
    let mut left = mib * 1024 * 1024;
    while left > 0 {
        let n = left.min(BLOCK as u64) as usize;
        hasher.update(&block[..n]);
        left -= n as u64;
    }
    let digest = hasher.finalize();
    let elapsed = start.elapsed();
    for byte in digest {
        kernel::print!("{byte:02x}");
    }
    println!();
    println!("{mib} MiB in {} ns", elapsed.as_nanos());
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[kernel::test]
    fn test_parse_mib_defaults_to_64_and_refuses_non_numbers() {
        assert_eq!(parse_mib(None), Some(64));
        assert_eq!(parse_mib(Some("16")), Some(16));
        assert_eq!(parse_mib(Some("16M")), None);
    }

    #[kernel::test]
    fn test_data_block_is_whole_periods_of_251() {
        let block = data_block();
        assert_eq!(block.len() % 251, 0);
        assert_eq!(&block[..3], &[0, 1, 2]);
        assert_eq!(block[250], 250);
        assert_eq!(block[251], 0);
    }

    #[kernel::test]
    fn test_sha2_in_the_guest_matches_the_standard_vector() {
        // FIPS 180-2, appendix B.1: SHA-256("abc").
        let digest = Sha256::digest(b"abc");
        let expected = [
            0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae,
            0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61,
            0xf2, 0x00, 0x15, 0xad,
        ];
        assert_eq!(digest.as_slice(), &expected);
    }
}
