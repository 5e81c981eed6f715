//! The guest's console as the VMM sees it: where its stdout and stderr bytes go ([`Console`]),
//! and the `--max-output` budget they draw from ([`ConsoleOutput`]).

use crate::devices::{ConsoleSink, Stream};
use std::io::Write;
use std::time::Instant;

/// Where console output goes.
pub struct Console {
    /// The guest's stdout.
    pub stdout: Box<dyn Write + Send>,
    /// The guest's stderr.
    pub stderr: Box<dyn Write + Send>,
}

impl Console {
    /// The VMM process's own stdout and stderr.
    pub fn inherit() -> Self {
        Self {
            stdout: Box::new(std::io::stdout()),
            stderr: Box::new(std::io::stderr()),
        }
    }
}

/// A console with an output budget: what hypercalls and devices write through.
pub(crate) struct ConsoleOutput {
    console: Console,
    max_output: u64,
    written: u64,
    first_output: Option<Instant>,
}

impl ConsoleOutput {
    /// `console`, allowing `max_output` bytes in all.
    pub(crate) fn new(console: Console, max_output: u64) -> Self {
        Self {
            console,
            max_output,
            written: 0,
            first_output: None,
        }
    }

    /// Bytes written so far.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// When the first byte came.
    pub(crate) fn first_output(&self) -> Option<Instant> {
        self.first_output
    }

    /// The budget.
    pub(crate) fn max_output(&self) -> u64 {
        self.max_output
    }

    /// Flushes both streams.
    pub(crate) fn flush(&mut self) {
        let _ = self.console.stdout.flush();
        let _ = self.console.stderr.flush();
    }
}

impl ConsoleSink for ConsoleOutput {
    fn emit(&mut self, stream: Stream, bytes: &[u8]) -> bool {
        self.first_output.get_or_insert_with(Instant::now);
        let room = self.max_output.saturating_sub(self.written);
        let fits = bytes.len() as u64 <= room;
        let bytes = &bytes[..bytes.len().min(room as usize)];
        self.written += bytes.len() as u64;
        let out = match stream {
            Stream::Stdout => &mut self.console.stdout,
            Stream::Stderr => &mut self.console.stderr,
        };
        // A closed stdout (e.g. `| head`) must not stop the guest or the VMM.
        let _ = out.write_all(bytes).and_then(|()| out.flush());
        fits
    }
}
