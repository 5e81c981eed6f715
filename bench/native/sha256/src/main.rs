//! `sha256 N`: hashes N MiB where byte i is `(i % 251) as u8`, then prints the digest in hex on
//! one line and `<N> MiB in <ns> ns` on the next, exactly as the guest image `sha256` does.

use sha2::{Digest, Sha256};
use std::process::ExitCode;
use std::time::Instant;

/// A whole number of 251-byte periods, so that consecutive chunks continue the pattern.
const CHUNK: usize = 251 * 256;

fn main() -> ExitCode {
    let Some(mib) = std::env::args().nth(1).and_then(|a| a.parse::<u64>().ok()) else {
        eprintln!("usage: sha256 MIB");
        return ExitCode::from(2);
    };
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
    let start = Instant::now();
    let mut hasher = Sha256::new();
    let mut left = mib * 1024 * 1024;
    while left > 0 {
        let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
        hasher.update(&chunk[..n]);
        left -= n as u64;
    }
    let digest = hasher.finalize();
    let ns = start.elapsed().as_nanos();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    println!("{hex}");
    println!("{mib} MiB in {ns} ns");
    ExitCode::SUCCESS
}
