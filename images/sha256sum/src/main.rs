//! `sha256sum [FILE...]`: the SHA-256 digest of each file (`-` or none: stdin) in the format of
//! GNU coreutils (`DIGEST  NAME`, with a leading `\` and escapes for a name holding `\` or a
//! newline). Reads 1 MiB per VM exit; the `sha2` crate picks the CPU's SHA instructions when it
//! has them. A file that cannot be read is reported on stderr, and the status is 1.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write as _;
use kernel::eprintln;
use kernel::fs::File;
use kernel::io::{self, Read, Write};
use sha2::{Digest, Sha256};

kernel::main!(main);

fn digest(input: &mut dyn Read, buf: &mut [u8]) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    loop {
        match input.read(buf) {
            Ok(0) => return Ok(hasher.finalize().into()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// One output line, as coreutils writes it.
fn line(digest: &[u8; 32], name: &str) -> String {
    let mut text = String::new();
    let escape = name.contains('\\') || name.contains('\n');
    if escape {
        text.push('\\');
    }
    for byte in digest {
        let _ = write!(text, "{byte:02x}");
    }
    text.push_str("  ");
    if escape {
        text.push_str(&name.replace('\\', "\\\\").replace('\n', "\\n"));
    } else {
        text.push_str(name);
    }
    text.push('\n');
    text
}

fn main(args: kernel::Args) -> i32 {
    let mut names: Vec<&str> = args.skip(1).collect();
    if names.is_empty() {
        names.push("-");
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut status = 0;
    for name in names {
        let result = if name == "-" {
            digest(&mut io::stdin().lock(), &mut buf)
        } else {
            File::open(name).and_then(|mut file| digest(&mut file, &mut buf))
        };
        match result {
            Ok(digest) => {
                let _ = io::stdout().write_all(line(&digest, name).as_bytes());
            }
            Err(err) => {
                eprintln!("sha256sum: {name}: {err}");
                status = 1;
            }
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[kernel::test]
    fn test_sha256sum_line_escapes_names_as_coreutils_does() {
        let digest: [u8; 32] = Sha256::digest(b"").into();
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(line(&digest, "-"), alloc::format!("{empty}  -\n"));
        assert_eq!(
            line(&digest, "a\\b\nc"),
            alloc::format!("\\{empty}  a\\\\b\\nc\n")
        );
    }
}
