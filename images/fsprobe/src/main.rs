//! `fsprobe COMMAND ARGS...`: one file operation per run, for the tests of volumes, stdin and
//! snapshots. Prints `ok ...` with what it got, or `err KIND` (the `kernel::io::ErrorKind`)
//! and exits 1.
//!
//! Commands: `read PATH`, `write PATH TEXT`, `append PATH TEXT`, `mkdir PATH`, `mkdirs PATH`,
//! `rm PATH`, `rmdir PATH`, `mv FROM TO`, `ls PATH`, `stat PATH`, `readat PATH OFFSET LEN`,
//! `seek PATH FROM OFFSET` (FROM: start, end, current), `openmany PATH N`, `repeat PATH N`
//! (reads PATH N times; prints each distinct content once), `stdin-lines`, `hold PATH`
//! (opens PATH, then reaches the snapshot point with it open), and `after-stdin COMMAND...`
//! (says `waiting` on stderr, then waits for a line on stdin, so that a test can change the
//! host's files meanwhile, knowing the VMM has opened the volumes by then).
//!
//! Its snapshot point comes first (before `main` reads its arguments), so that a snapshot of
//! it runs any command when restored.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::collections::BTreeSet;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use kernel::fs::{self, File, OpenOptions};
use kernel::io::{self, BufRead, Read, Seek, SeekFrom};
use kernel::println;

kernel::main!(main, snapshot = manual);

fn main(args: kernel::Args) -> i32 {
    if let ["hold", path] = args.skip(1).collect::<Vec<_>>().as_slice() {
        return hold(path);
    }
    kernel::snapshot_point();
    // After a restore, this run's arguments.
    let args: Vec<&str> = kernel::args().skip(1).collect();
    let args = match args.as_slice() {
        ["after-stdin", rest @ ..] => {
            kernel::eprintln!("waiting");
            let mut line = String::new();
            let _ = io::stdin().read_line(&mut line);
            rest
        }
        all => all,
    };
    match run(args) {
        Ok(()) => 0,
        Err(err) => {
            println!("err {:?}", err.kind());
            1
        }
    }
}

/// Reaches the snapshot point with `path` open.
fn hold(path: &str) -> i32 {
    let file = File::open(path);
    kernel::snapshot_point();
    match file {
        Ok(_) => println!("ok held"),
        Err(err) => println!("err {:?}", err.kind()),
    }
    0
}

fn number(text: &str) -> io::Result<u64> {
    text.parse().map_err(|_| io::ErrorKind::InvalidInput.into())
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(args: &[&str]) -> io::Result<()> {
    match args {
        ["read", path] => println!("ok {}", show(&fs::read(path)?)),
        ["write", path, text] => {
            fs::write(path, text)?;
            println!("ok");
        }
        ["append", path, text] => {
            let mut file = OpenOptions::new().append(true).create(true).open(path)?;
            io::Write::write_all(&mut file, text.as_bytes())?;
            println!("ok");
        }
        ["mkdir", path] => {
            fs::create_dir(path)?;
            println!("ok");
        }
        ["mkdirs", path] => {
            fs::create_dir_all(path)?;
            println!("ok");
        }
        ["rm", path] => {
            fs::remove_file(path)?;
            println!("ok");
        }
        ["rmdir", path] => {
            fs::remove_dir(path)?;
            println!("ok");
        }
        ["mv", from, to] => {
            fs::rename(from, to)?;
            println!("ok");
        }
        ["ls", path] => {
            let mut names = Vec::new();
            for entry in fs::read_dir(path)? {
                let entry = entry?;
                let kind = entry.file_type();
                let tag = if kind.is_dir() {
                    "/"
                } else if kind.is_symlink() {
                    "@"
                } else {
                    ""
                };
                names.push(alloc::format!("{}{tag}", entry.file_name()));
            }
            names.sort();
            println!("ok {}", names.join(" "));
        }
        ["stat", path] => {
            let meta = fs::metadata(path)?;
            println!(
                "ok len={} dir={} readonly={} modified={}",
                meta.len(),
                meta.is_dir(),
                meta.permissions().readonly(),
                meta.modified().as_secs() > 0
            );
        }
        ["readat", path, offset, len] => {
            let file = File::open(path)?;
            let mut buf = vec![0u8; number(len)?.min(1 << 20) as usize];
            let n = file.read_at(&mut buf, number(offset)?)?;
            println!("ok {}", show(&buf[..n]));
        }
        ["seek", path, from, offset] => {
            let mut file = File::open(path)?;
            let offset: i64 = offset
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput))?;
            let at = match *from {
                "start" => file.seek(SeekFrom::Start(offset as u64))?,
                "end" => file.seek(SeekFrom::End(offset))?,
                _ => file.seek(SeekFrom::Current(offset))?,
            };
            let mut rest = Vec::new();
            file.read_to_end(&mut rest)?;
            println!("ok at={at} rest={}", show(&rest));
        }
        ["openmany", path, count] => {
            let mut files = Vec::new();
            for _ in 0..number(count)? {
                match File::open(path) {
                    Ok(file) => files.push(file),
                    Err(err) => {
                        println!("opened {} then err {:?}", files.len(), err.kind());
                        files.clear();
                        // Closing them makes room again.
                        File::open(path)?;
                        println!("ok reopened");
                        return Ok(());
                    }
                }
            }
            println!("ok opened {}", files.len());
        }
        ["repeat", path, count] => {
            let mut seen = BTreeSet::new();
            let mut errors = BTreeSet::new();
            for _ in 0..number(count)? {
                match fs::read(path) {
                    Ok(bytes) => {
                        seen.insert(show(&bytes));
                    }
                    Err(err) => {
                        errors.insert(alloc::format!("{:?}", err.kind()));
                    }
                }
            }
            let seen: Vec<String> = seen.into_iter().collect();
            let errors: Vec<String> = errors.into_iter().collect();
            println!("ok seen=[{}] errors=[{}]", seen.join("|"), errors.join("|"));
        }
        ["stdin-lines"] => {
            let mut lines = 0;
            let mut last = String::new();
            for line in io::stdin().lock().lines() {
                last = line?;
                lines += 1;
            }
            println!("ok lines={lines} last={last}");
        }
        _ => {
            println!("usage: fsprobe COMMAND ARGS... (see the source)");
            return Err(io::ErrorKind::InvalidInput.into());
        }
    }
    Ok(())
}
