//! The paravirtual console: `print!`/`println!` to the VMM's stdout, `eprint!`/`eprintln!` to
//! its stderr.
//!
//! Stdout is line-buffered: one VM exit per flushed buffer, on newline, when the buffer is full,
//! on [`flush`], on exit and on panic. Stderr is flushed at the end of every call.

use crate::global::Global;
use crate::hypercall;
use abi::hypercall::stream;
use core::fmt::{self, Write};

const BUFFER_SIZE: usize = 4096;

/// A console buffer. The stream is a type parameter, not a field, so that the buffers are all
/// zeros and live in `.bss`: the VMM copies nothing for them and the guest touches their pages
/// only when it prints.
struct LineBuffer<const STREAM: u32> {
    len: usize,
    bytes: [u8; BUFFER_SIZE],
}

impl<const STREAM: u32> LineBuffer<STREAM> {
    const fn new() -> Self {
        Self { len: 0, bytes: [0; BUFFER_SIZE] }
    }

    fn flush(&mut self) {
        if self.len > 0 {
            hypercall::console_write(STREAM, &self.bytes[..self.len]);
            self.len = 0;
        }
    }
}

impl<const STREAM: u32> LineBuffer<STREAM> {
    fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.len == BUFFER_SIZE {
                self.flush();
            }
            let n = bytes.len().min(BUFFER_SIZE - self.len);
            self.bytes[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
        }
    }
}

impl<const STREAM: u32> Write for LineBuffer<STREAM> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// A line formatted on the stack, for paths that must not allocate or use the buffers.
pub(crate) struct StackLine {
    len: usize,
    bytes: [u8; 256],
}

impl StackLine {
    pub(crate) const fn new() -> Self {
        Self { len: 0, bytes: [0; 256] }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Write for StackLine {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

static STDOUT: Global<LineBuffer<{ stream::STDOUT }>> = Global::new(LineBuffer::new());
static STDERR: Global<LineBuffer<{ stream::STDERR }>> = Global::new(LineBuffer::new());

/// Writes straight to the VMM, unbuffered: used when a buffer is busy (a panic while printing).
struct Unbuffered(u32);

impl Write for Unbuffered {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        hypercall::console_write(self.0, s.as_bytes());
        Ok(())
    }
}

fn print_to<const STREAM: u32>(global: &Global<LineBuffer<STREAM>>, args: fmt::Arguments, line_buffered: bool) {
    let done = global.with(|buf| {
        let _ = buf.write_fmt(args);
        let ends_line = buf.bytes[..buf.len].contains(&b'\n');
        if !line_buffered || ends_line {
            buf.flush();
        }
    });
    if done.is_none() {
        let _ = Unbuffered(STREAM).write_fmt(args);
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    print_to(&STDOUT, args, true);
}

#[doc(hidden)]
pub fn _eprint(args: fmt::Arguments) {
    print_to(&STDERR, args, false);
}

/// Writes raw bytes to stdout (for `kernel::io::stdout()`), in order with `print!`: small
/// writes go through the line buffer (sent on a newline, like `print!`), a write of a whole
/// buffer or more goes out directly, one exit per 64 KiB.
pub(crate) fn write_stdout(bytes: &[u8]) {
    let done = STDOUT.with(|buf| {
        if bytes.len() >= BUFFER_SIZE {
            buf.flush();
            hypercall::console_write(stream::STDOUT, bytes);
        } else {
            buf.push(bytes);
            if bytes.contains(&b'\n') {
                buf.flush();
            }
        }
    });
    if done.is_none() {
        hypercall::console_write(stream::STDOUT, bytes);
    }
}

/// Writes raw bytes to stderr, unbuffered (for `kernel::io::stderr()`).
pub(crate) fn write_stderr(bytes: &[u8]) {
    STDERR.with(LineBuffer::flush);
    hypercall::console_write(stream::STDERR, bytes);
}

/// Sends whatever stdout holds to the VMM.
///
/// ```ignore
/// kernel::print!("no newline yet");
/// kernel::console::flush();
/// ```
pub fn flush() {
    STDOUT.with(LineBuffer::flush);
    STDERR.with(LineBuffer::flush);
}

/// Prints to the VMM's stdout, like `std::print!`.
///
/// ```ignore
/// kernel::print!("{} + {} = ", 1, 2);
/// ```
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*)) };
}

/// Prints a line to the VMM's stdout, like `std::println!`.
///
/// ```ignore
/// kernel::println!("Hello from a unikernel!");
/// ```
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::_print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Prints to the VMM's stderr, like `std::eprint!`.
///
/// ```ignore
/// kernel::eprint!("warning: ");
/// ```
#[macro_export]
macro_rules! eprint {
    ($($arg:tt)*) => { $crate::console::_eprint(format_args!($($arg)*)) };
}

/// Prints a line to the VMM's stderr, like `std::eprintln!`.
///
/// ```ignore
/// kernel::eprintln!("something went wrong: {}", 42);
/// ```
#[macro_export]
macro_rules! eprintln {
    () => { $crate::eprint!("\n") };
    ($($arg:tt)*) => { $crate::console::_eprint(format_args!("{}\n", format_args!($($arg)*))) };
}
