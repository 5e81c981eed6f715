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

/// Where a console buffer's bytes go when it flushes.
trait Sink {
    fn write(&mut self, bytes: &[u8]);
}

/// The VMM's console stream `STREAM`: one `console_write` hypercall (one VM exit) per write.
/// The stream is a type parameter, not a field, so that the buffers are all zeros and live in
/// `.bss`: the VMM copies nothing for them and the guest touches their pages only when it
/// prints.
struct Vmm<const STREAM: u32>;

impl<const STREAM: u32> Sink for Vmm<STREAM> {
    fn write(&mut self, bytes: &[u8]) {
        hypercall::console_write(STREAM, bytes);
    }
}

/// A console buffer in front of a [`Sink`].
struct LineBuffer<S: Sink> {
    len: usize,
    bytes: [u8; BUFFER_SIZE],
    sink: S,
}

impl<S: Sink> LineBuffer<S> {
    const fn new(sink: S) -> Self {
        Self {
            len: 0,
            bytes: [0; BUFFER_SIZE],
            sink,
        }
    }

    fn flush(&mut self) {
        if self.len > 0 {
            self.sink.write(&self.bytes[..self.len]);
            self.len = 0;
        }
    }

    /// Formats `args` into the buffer (flushing whenever it fills); then flushes everything
    /// when `line_buffered` is false or the buffer holds a newline.
    fn print(&mut self, args: fmt::Arguments, line_buffered: bool) {
        let _ = self.write_fmt(args);
        let ends_line = self.bytes[..self.len].contains(&b'\n');
        if !line_buffered || ends_line {
            self.flush();
        }
    }
}

impl<S: Sink> LineBuffer<S> {
    /// Appends `bytes`, flushing whenever the buffer fills.
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

    /// Raw bytes, line-buffered like [`LineBuffer::print`]; as many bytes as the whole buffer
    /// or more go to the sink in one write, after what was buffered.
    fn write_bytes(&mut self, bytes: &[u8]) {
        if bytes.len() >= BUFFER_SIZE {
            self.flush();
            self.sink.write(bytes);
        } else {
            self.push(bytes);
            if bytes.contains(&b'\n') {
                self.flush();
            }
        }
    }
}

impl<S: Sink> Write for LineBuffer<S> {
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
        Self {
            len: 0,
            bytes: [0; 256],
        }
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

static STDOUT: Global<LineBuffer<Vmm<{ stream::STDOUT }>>> = Global::new(LineBuffer::new(Vmm));
static STDERR: Global<LineBuffer<Vmm<{ stream::STDERR }>>> = Global::new(LineBuffer::new(Vmm));

/// Writes straight to the VMM, unbuffered: used when a buffer is busy (a panic while printing).
struct Unbuffered(u32);

impl Write for Unbuffered {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        hypercall::console_write(self.0, s.as_bytes());
        Ok(())
    }
}

fn print_to<const STREAM: u32>(
    global: &Global<LineBuffer<Vmm<STREAM>>>,
    args: fmt::Arguments,
    line_buffered: bool,
) {
    let done = global.with(|buf| buf.print(args, line_buffered));
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
/// writes go through the line buffer, a write of a whole buffer or more goes out directly, one
/// exit per 64 KiB.
pub(crate) fn write_stdout(bytes: &[u8]) {
    if STDOUT.with(|buf| buf.write_bytes(bytes)).is_none() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;
    use alloc::vec::Vec;

    /// A sink that keeps every write.
    #[derive(Default)]
    struct Recorder(Vec<Vec<u8>>);

    impl Sink for Recorder {
        fn write(&mut self, bytes: &[u8]) {
            self.0.push(bytes.to_vec());
        }
    }

    fn buffer() -> Box<LineBuffer<Recorder>> {
        Box::new(LineBuffer::new(Recorder::default()))
    }

    #[kernel::test]
    fn test_console_text_without_newline_stays_buffered_until_flush() {
        let mut buf = buffer();
        buf.print(format_args!("no newline {}", 1), true);
        assert!(buf.sink.0.is_empty());
        buf.flush();
        assert_eq!(buf.sink.0, [b"no newline 1".to_vec()]);
    }

    #[kernel::test]
    fn test_console_newline_flushes_the_whole_buffer_in_one_write() {
        let mut buf = buffer();
        buf.print(format_args!("first "), true);
        buf.print(format_args!("line\nand more"), true);
        assert_eq!(buf.sink.0, [b"first line\nand more".to_vec()]);
        assert_eq!(buf.len, 0);
    }

    #[kernel::test]
    fn test_console_full_buffer_flushes_in_buffer_sized_writes() {
        let mut buf = buffer();
        let text = "x".repeat(2 * BUFFER_SIZE + 10);
        buf.print(format_args!("{text}"), true);
        let sizes: Vec<usize> = buf.sink.0.iter().map(Vec::len).collect();
        assert_eq!(sizes, [BUFFER_SIZE, BUFFER_SIZE]);
        assert_eq!(buf.len, 10);
    }

    #[kernel::test]
    fn test_console_unbuffered_stream_writes_every_call() {
        let mut buf = buffer();
        buf.print(format_args!("a"), false);
        buf.print(format_args!("b"), false);
        assert_eq!(buf.sink.0, [b"a".to_vec(), b"b".to_vec()]);
    }

    #[kernel::test]
    fn test_console_flush_of_an_empty_buffer_writes_nothing() {
        let mut buf = buffer();
        buf.flush();
        assert!(buf.sink.0.is_empty());
    }

    #[kernel::test]
    fn test_console_raw_bytes_are_line_buffered_in_order_with_print() {
        let mut buf = buffer();
        buf.print(format_args!("printed "), true);
        buf.write_bytes(b"raw");
        assert!(buf.sink.0.is_empty());
        buf.write_bytes(b" line\n");
        assert_eq!(buf.sink.0, [b"printed raw line\n".to_vec()]);
    }

    #[kernel::test]
    fn test_console_large_raw_write_goes_out_whole_after_the_buffer() {
        let mut buf = buffer();
        buf.write_bytes(b"head");
        let big = [b'z'; BUFFER_SIZE + 1];
        buf.write_bytes(&big);
        assert_eq!(buf.sink.0, [b"head".to_vec(), big.to_vec()]);
        assert_eq!(buf.len, 0);
    }

    #[kernel::test]
    fn test_stack_line_truncates_at_its_capacity() {
        let mut line = StackLine::new();
        let _ = write!(line, "{}", "y".repeat(300));
        assert_eq!(line.as_bytes().len(), 256);
    }
}
