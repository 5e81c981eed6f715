//! The server's log: one line per request on stderr, written by a thread of its own through a
//! bounded queue, so that a stderr nobody reads (a full pipe) delays no runner and no client:
//! lines that do not fit are counted, and the count is logged once there is room again.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

/// Lines that may wait for stderr.
const QUEUE: usize = 1024;
/// Longest line logged (a client chooses the paths that lines name).
pub(crate) const MAX_LINE: usize = 1024;

/// Where threads send their log lines (cheap to clone).
#[derive(Clone)]
pub(crate) struct Log {
    lines: Option<mpsc::SyncSender<String>>,
    dropped: Arc<AtomicU64>,
}

impl Log {
    /// A log, and the writer that a thread of its own must run (none when `quiet`).
    pub(crate) fn new(quiet: bool) -> (Self, Option<LogWriter>) {
        let dropped = Arc::new(AtomicU64::new(0));
        if quiet {
            return (
                Self {
                    lines: None,
                    dropped,
                },
                None,
            );
        }
        let (lines, queue) = mpsc::sync_channel::<String>(QUEUE);
        let writer = LogWriter {
            queue,
            dropped: Arc::clone(&dropped),
        };
        (
            Self {
                lines: Some(lines),
                dropped,
            },
            Some(writer),
        )
    }

    /// Logs `line`, cut to [`MAX_LINE`] bytes (or counts it as dropped if the queue is
    /// full); never blocks.
    pub(crate) fn line(&self, line: String) {
        if let Some(lines) = &self.lines
            && lines.try_send(clip(&line, MAX_LINE).into_owned()).is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The end of the log that writes to stderr.
pub(crate) struct LogWriter {
    queue: mpsc::Receiver<String>,
    dropped: Arc<AtomicU64>,
}

impl LogWriter {
    /// Writes lines until every [`Log`] is gone.
    pub(crate) fn run(self) {
        write_lines(&self.queue, &self.dropped);
    }
}

fn write_lines(queue: &mpsc::Receiver<String>, dropped: &AtomicU64) {
    let stderr = std::io::stderr();
    while let Ok(line) = queue.recv() {
        let mut out = stderr.lock();
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let _ = writeln!(out, "serve: {lost} log lines dropped (stderr was not read)");
        }
        let _ = writeln!(out, "{}", one_line(&line));
    }
}

/// `text` as one line: control characters (a client's path may hold newlines or terminal
/// escapes) shown escaped, so that no client can forge a log line or an error frame's second
/// line.
pub(crate) fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// `text` cut to at most `max` bytes (on a character boundary, marked with `...`).
pub(crate) fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_one_line_escapes_newlines_and_terminal_escapes() {
        assert_eq!(one_line("/a b/c"), "/a b/c");
        assert_eq!(one_line("/x\n/y: pooled VM"), "/x\\n/y: pooled VM");
        assert!(!one_line("/\u{1b}[2J").contains('\u{1b}'));
    }

    #[test]
    fn test_clip_cuts_long_text_on_a_character_boundary() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("abcdefghij", 8), "abcde...");
        assert_eq!(clip("ééééé", 8), "éé...");
        assert!(clip(&"x".repeat(1 << 20), MAX_LINE).len() <= MAX_LINE);
    }

    #[test]
    fn test_log_never_blocks_and_counts_what_it_drops() {
        let (log, writer) = Log::new(false);
        for i in 0..QUEUE + 10 {
            log.line(format!("line {i}"));
        }
        assert_eq!(log.dropped.load(Ordering::Relaxed), 10);
        drop(writer);
        let (quiet, writer) = Log::new(true);
        assert!(writer.is_none());
        quiet.line("nothing".into());
    }
}
