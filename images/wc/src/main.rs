//! `wc [-l] [-w] [-c] [FILE...]`: newlines, words and bytes of each file (`-` or none: stdin),
//! and a total for more than one, in the layout of GNU coreutils 9.1 in the C locale: a word is
//! a run of printable non-space ASCII characters ended by whitespace (other bytes neither start
//! nor end one); numbers are as wide as the digits of the files' total size, at least 7 when an
//! input is not a regular file (stdin: the guest cannot tell, so it counts as a pipe), and 1
//! when only one number is printed for one input.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write as _;
use kernel::io::{self, Read, Write};
use kernel::{eprintln, fs};

kernel::main!(main);

#[derive(Default, Clone, Copy)]
struct Counts {
    lines: u64,
    words: u64,
    bytes: u64,
}

/// Counts as GNU wc's single-byte loop does.
struct Counter {
    counts: Counts,
    in_word: bool,
}

impl Counter {
    fn feed(&mut self, bytes: &[u8]) {
        self.counts.bytes += bytes.len() as u64;
        for &b in bytes {
            match b {
                b'\n' => {
                    self.counts.lines += 1;
                    self.end_word();
                }
                b'\r' | 0x0c | b'\t' | b' ' | 0x0b => self.end_word(),
                0x21..=0x7e => self.in_word = true,
                _ => {}
            }
        }
    }

    fn end_word(&mut self) {
        self.counts.words += u64::from(self.in_word);
        self.in_word = false;
    }

    fn finish(mut self) -> Counts {
        self.end_word();
        self.counts
    }
}

fn count(input: &mut dyn Read, buf: &mut [u8]) -> io::Result<Counts> {
    let mut counter = Counter {
        counts: Counts::default(),
        in_word: false,
    };
    loop {
        match input.read(buf) {
            Ok(0) => return Ok(counter.finish()),
            Ok(n) => counter.feed(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

struct Shown {
    lines: bool,
    words: bool,
    bytes: bool,
}

fn line(counts: &Counts, shown: &Shown, width: usize, name: Option<&str>) -> String {
    let mut text = String::new();
    for (on, value) in [
        (shown.lines, counts.lines),
        (shown.words, counts.words),
        (shown.bytes, counts.bytes),
    ] {
        if on {
            if !text.is_empty() {
                text.push(' ');
            }
            let _ = write!(text, "{value:>width$}");
        }
    }
    if let Some(name) = name {
        let _ = write!(text, " {name}");
    }
    text.push('\n');
    text
}

fn main(args: kernel::Args) -> i32 {
    let mut shown = Shown {
        lines: false,
        words: false,
        bytes: false,
    };
    let mut names: Vec<&str> = Vec::new();
    for arg in args.skip(1) {
        match arg {
            "-l" => shown.lines = true,
            "-w" => shown.words = true,
            "-c" => shown.bytes = true,
            name => names.push(name),
        }
    }
    if !(shown.lines || shown.words || shown.bytes) {
        shown = Shown {
            lines: true,
            words: true,
            bytes: true,
        };
    }
    let numbers = [shown.lines, shown.words, shown.bytes]
        .iter()
        .filter(|&&on| on)
        .count();
    let inputs: Vec<Option<&str>> = if names.is_empty() {
        vec![None]
    } else {
        names.iter().map(|n| Some(*n)).collect()
    };
    let width = number_width(&inputs, numbers);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = Counts::default();
    let mut status = 0;
    let mut out = io::stdout();
    for input in &inputs {
        let counted = match input {
            None | Some("-") => count(&mut io::stdin().lock(), &mut buf),
            Some(name) => fs::File::open(name).and_then(|mut file| count(&mut file, &mut buf)),
        };
        match counted {
            Ok(counts) => {
                total.lines += counts.lines;
                total.words += counts.words;
                total.bytes += counts.bytes;
                let _ = out.write_all(line(&counts, &shown, width, *input).as_bytes());
            }
            Err(err) => {
                eprintln!("wc: {}: {err}", input.unwrap_or("-"));
                status = 1;
            }
        }
    }
    if inputs.len() > 1 {
        let _ = out.write_all(line(&total, &shown, width, Some("total")).as_bytes());
    }
    status
}

/// GNU wc's `compute_number_width`: from the inputs' sizes, before any is read.
fn number_width(inputs: &[Option<&str>], numbers: usize) -> usize {
    if inputs.len() == 1 && numbers == 1 {
        return 1;
    }
    let mut sizes = Vec::new();
    for input in inputs {
        sizes.push(match input {
            None | Some("-") => Some(None),
            Some(name) => fs::metadata(name)
                .ok()
                .map(|m| m.is_file().then(|| m.len())),
        });
    }
    // The first input failing (a missing file) leaves every number 1 wide, as in GNU wc.
    if sizes.first().is_some_and(Option::is_none) {
        return 1;
    }
    let mut minimum = 1;
    let mut regular_total: u64 = 0;
    for size in sizes.into_iter().flatten() {
        match size {
            Some(len) => regular_total = regular_total.saturating_add(len),
            None => minimum = 7,
        }
    }
    let mut width = 1;
    while regular_total >= 10 {
        regular_total /= 10;
        width += 1;
    }
    width.max(minimum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(text: &[u8]) -> (u64, u64, u64) {
        let mut counter = Counter {
            counts: Counts::default(),
            in_word: false,
        };
        for chunk in text.chunks(3) {
            counter.feed(chunk);
        }
        let c = counter.finish();
        (c.lines, c.words, c.bytes)
    }

    #[kernel::test]
    fn test_wc_words_are_printable_runs_ended_by_whitespace() {
        assert_eq!(counts(b"one two\tthree\nfour"), (1, 4, 18));
        assert_eq!(
            counts(b"a\x01b c\x01"),
            (0, 2, 6),
            "control bytes neither start nor end a word"
        );
        assert_eq!(counts(b"\x01 \x01"), (0, 0, 3));
        assert_eq!(
            counts("caf\u{e9} x".as_bytes()),
            (0, 2, 7),
            "C locale: high bytes are not printable"
        );
    }

    #[kernel::test]
    fn test_wc_line_layout_pads_to_the_width() {
        let shown = Shown {
            lines: true,
            words: false,
            bytes: true,
        };
        let c = Counts {
            lines: 3,
            words: 9,
            bytes: 42,
        };
        assert_eq!(line(&c, &shown, 4, Some("f")), "   3   42 f\n");
        assert_eq!(line(&c, &shown, 1, None), "3 42\n");
    }
}
