//! The bench's one error type: what failed, with the cause kept as its source, and the chain
//! formatter the report uses for a failed peer's cell.

use std::time::Duration;

/// A failure of the bench, of a peer's setup, or of one run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call, file or process operation failed.
    #[error("{what}")]
    Io {
        /// What the bench was doing, e.g. "cannot write target/bench/report.md".
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// JSON could not be read or written.
    #[error("{what}")]
    Json {
        /// Whose JSON.
        what: String,
        /// Why it failed.
        #[source]
        source: serde_json::Error,
    },
    /// A program the bench runs (a compiler, `vmm snapshot`, `docker import`, ...) failed.
    #[error("{program} failed ({status}): {detail}")]
    Tool {
        /// The program.
        program: String,
        /// How it ended.
        status: String,
        /// The end of its error output.
        detail: String,
    },
    /// A run's exit status or output is not what the peer must give, or a setup check failed.
    #[error("{0}")]
    Check(String),
    /// A run outlived its time limit and was killed.
    #[error("killed after the time limit of {0:?}")]
    TimedOut(Duration),
    /// What the bench was doing when `source` happened.
    #[error("{what}")]
    Context {
        /// What the bench was doing.
        what: String,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },
}

/// The bench's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] saying what the bench was doing.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    /// An [`Error::Json`] saying whose JSON it was.
    pub(crate) fn json(what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> Error {
        let what = what.into();
        move |source| Error::Json { what, source }
    }

    /// An [`Error::Tool`] for `program`, which ended with `status` and printed `stderr`.
    pub(crate) fn tool(program: impl Into<String>, status: impl ToString, stderr: &[u8]) -> Error {
        Error::Tool {
            program: program.into(),
            status: status.to_string(),
            detail: String::from_utf8_lossy(stderr).trim().to_owned(),
        }
    }
}

/// Adds what the bench was doing to an error.
pub(crate) trait Context<T> {
    /// Wraps the error in [`Error::Context`] with `what`.
    fn context(self, what: impl Into<String>) -> Result<T>;
}

impl<T> Context<T> for Result<T> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Context {
            what: what.into(),
            source: Box::new(source),
        })
    }
}

/// `err` and every source under it, joined by ": " on one line.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_chain_joins_context_and_sources() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err: Result<()> = Err(Error::io("cannot read x")(io));
        let err = err.context("the report").unwrap_err();
        assert_eq!(chain(&err), "the report: cannot read x: no such file");
    }

    #[test]
    fn test_tool_error_keeps_the_end_of_stderr() {
        let err = Error::tool("cc", "exit status: 1", b"  bad.c: error\n");
        assert_eq!(err.to_string(), "cc failed (exit status: 1): bad.c: error");
    }
}
