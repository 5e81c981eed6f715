//! `cat [FILE...]`: copies each file (`-` or none: stdin) to stdout, like coreutils' `cat`
//! without options. Reads and writes in 1 MiB chunks: one VM exit per chunk each way (stdout
//! in 64 KiB exits). A file that cannot be read is reported on stderr, and the status is 1.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use kernel::eprintln;
use kernel::fs::File;
use kernel::io::{self, Read, Write};

kernel::main!(main);

fn copy(input: &mut dyn Read, buf: &mut [u8]) -> io::Result<()> {
    let mut out = io::stdout();
    loop {
        match input.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => out.write_all(&buf[..n])?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn main(args: kernel::Args) -> i32 {
    let mut names: Vec<&str> = args.skip(1).collect();
    if names.is_empty() {
        names.push("-");
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut status = 0;
    for name in names {
        let copied = if name == "-" {
            copy(&mut io::stdin().lock(), &mut buf)
        } else {
            File::open(name).and_then(|mut file| copy(&mut file, &mut buf))
        };
        if let Err(err) = copied {
            eprintln!("cat: {name}: {err}");
            status = 1;
        }
    }
    status
}
