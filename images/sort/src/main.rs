//! `sort [-r] [-u] [-o OUTPUT] [FILE...]`: the lines of every file (`-` or none: stdin), sorted
//! byte by byte as GNU `sort` does in the C locale, to stdout or (with `-o`) to a file written
//! in a volume once every input has been read (so OUTPUT may be an input too). `-r` reverses,
//! `-u` keeps one of each run of equal lines. Status 2 on an unreadable input or output.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use kernel::io::{self, BufWriter, Read, Write};
use kernel::{eprintln, fs};

kernel::main!(main);

struct Options<'a> {
    reverse: bool,
    unique: bool,
    output: Option<&'a str>,
    inputs: Vec<&'a str>,
}

fn parse(args: kernel::Args) -> Result<Options<'static>, &'static str> {
    let mut options = Options {
        reverse: false,
        unique: false,
        output: None,
        inputs: Vec::new(),
    };
    let mut args = args.skip(1);
    while let Some(arg) = args.next() {
        match arg {
            "-r" => options.reverse = true,
            "-u" => options.unique = true,
            "-o" => options.output = Some(args.next().ok_or("option requires an argument -- 'o'")?),
            output if output.starts_with("-o") => options.output = Some(&output[2..]),
            "-" => options.inputs.push("-"),
            other if other.starts_with('-') => {
                return Err("unknown option (sort takes -r, -u, -o FILE)");
            }
            input => options.inputs.push(input),
        }
    }
    if options.inputs.is_empty() {
        options.inputs.push("-");
    }
    Ok(options)
}

/// Writes each line and its newline, in 64 KiB writes.
fn write_lines(out: impl Write, lines: &[&[u8]]) -> io::Result<()> {
    let mut out = BufWriter::new(out);
    for line in lines {
        out.write_all(line)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

fn main(args: kernel::Args) -> i32 {
    let options = match parse(args) {
        Ok(options) => options,
        Err(why) => {
            eprintln!("sort: {why}");
            return 2;
        }
    };
    let mut text = Vec::new();
    for input in &options.inputs {
        let start = text.len();
        let read = if *input == "-" {
            io::stdin().read_to_end(&mut text).map(drop)
        } else {
            fs::File::open(input)
                .and_then(|mut file| file.read_to_end(&mut text))
                .map(drop)
        };
        if let Err(err) = read {
            eprintln!("sort: cannot read: {input}: {err}");
            return 2;
        }
        // Each input's last line ends there, newline or not.
        if text.len() > start && text.last() != Some(&b'\n') {
            text.push(b'\n');
        }
    }
    // Lines without their newline: "a" sorts before "a\tb", as in GNU sort.
    let mut lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    lines.pop();
    lines.sort_unstable();
    if options.unique {
        lines.dedup();
    }
    if options.reverse {
        lines.reverse();
    }
    let written = match options.output {
        Some(path) => fs::File::create(path).and_then(|file| write_lines(file, &lines)),
        None => write_lines(io::stdout(), &lines),
    };
    if let Err(err) = written {
        eprintln!(
            "sort: cannot write: {}: {err}",
            options.output.unwrap_or("-")
        );
        return 2;
    }
    0
}
