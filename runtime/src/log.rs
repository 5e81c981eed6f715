//! The runtime's log (`--log FILE`, `--log-format text|json`): containerd's runc shim reads
//! the last `"level":"error"` line of the JSON log to say why a command failed, so every error
//! goes there as well as to stderr.

use crate::timefmt::rfc3339;
use std::io::Write;
use std::path::PathBuf;

/// Where errors go besides stderr.
#[derive(Debug, Clone, Default)]
pub struct Log {
    /// `--log`.
    pub file: Option<PathBuf>,
    /// `--log-format json`.
    pub json: bool,
}

impl Log {
    /// The log of the global options.
    pub fn new(file: Option<PathBuf>, format: Option<&str>) -> Self {
        Self {
            file,
            json: format == Some("json"),
        }
    }

    /// Writes `message` as an error line to stderr and to the log file, if any.
    pub fn error(&self, message: &str) {
        eprintln!("flick-runtime: {message}");
        self.write("error", message);
    }

    /// Writes `message` as a warning line to the log file (stderr when there is none).
    pub fn warn(&self, message: &str) {
        if self.file.is_none() {
            eprintln!("flick-runtime: warning: {message}");
        }
        self.write("warning", message);
    }

    fn write(&self, level: &str, message: &str) {
        let Some(path) = &self.file else { return };
        let line = self.line(level, message);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path);
        if let Ok(mut file) = file {
            let _ = file.write_all(line.as_bytes());
        }
    }

    fn line(&self, level: &str, message: &str) -> String {
        let time = rfc3339(std::time::SystemTime::now());
        if self.json {
            let value = serde_json::json!({ "level": level, "msg": message, "time": time });
            format!("{value}\n")
        } else {
            format!("time=\"{time}\" level={level} msg={message:?}\n")
        }
    }
}

/// An error and its causes on one line, skipping a cause whose text its parent already
/// quotes (some libraries print their source in their own message).
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_json_line_has_level_msg_time() {
        let log = Log::new(None, Some("json"));
        let line: serde_json::Value =
            serde_json::from_str(log.line("error", "boom \"x\"").trim()).unwrap();
        assert_eq!(line["level"], "error");
        assert_eq!(line["msg"], "boom \"x\"");
        assert!(line["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn test_chain_skips_repeated_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: inner")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("inner")]
        struct Inner;
        assert_eq!(chain(&Outer(Inner)), "outer: inner");
    }
}
