//! Signals: the names `kill` accepts (`KILL`, `SIGKILL`, `9`), and how the container process
//! answers the ones that ask it to stop.
//!
//! The VMM is the first process of the container's pid namespace, and the kernel delivers to
//! such a process only the signals it has a handler for (and SIGKILL). So the container
//! process installs handlers for SIGTERM, SIGINT, SIGHUP and SIGQUIT that stop the guest at
//! once: `docker stop` ends a spinning guest without waiting for its timeout. The handler
//! exits with `128 + signal`, the status a process killed by that signal reports.

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use std::str::FromStr;

/// The signals that stop the guest.
pub const STOP_SIGNALS: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// Errors of [`parse`].
#[derive(Debug, thiserror::Error)]
#[error("unknown signal '{0}'")]
pub struct UnknownSignal(pub String);

/// Parses `KILL`, `SIGKILL`, `kill` or `9`.
pub fn parse(text: &str) -> Result<Signal, UnknownSignal> {
    let unknown = || UnknownSignal(text.to_owned());
    if let Ok(number) = text.parse::<i32>() {
        return Signal::try_from(number).map_err(|_| unknown());
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| unknown())
}

/// Installs the stop handlers (in the container process).
pub fn install_stop_handlers() -> nix::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(stop_guest),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in STOP_SIGNALS {
        // SAFETY: the handler only calls async-signal-safe functions (write, _exit).
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

/// Says why and exits at once: the kernel tears the VM down with the process.
extern "C" fn stop_guest(signal: libc::c_int) {
    let message: &[u8] = match signal {
        libc::SIGTERM => b"flick-runtime: guest stopped by SIGTERM\n",
        libc::SIGINT => b"flick-runtime: guest stopped by SIGINT\n",
        libc::SIGHUP => b"flick-runtime: guest stopped by SIGHUP\n",
        _ => b"flick-runtime: guest stopped by SIGQUIT\n",
    };
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is a static string.
    unsafe {
        libc::write(2, message.as_ptr().cast(), message.len());
        libc::_exit(128 + signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_names_numbers_and_prefixes() {
        assert_eq!(parse("KILL").unwrap(), Signal::SIGKILL);
        assert_eq!(parse("SIGTERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse("term").unwrap(), Signal::SIGTERM);
        assert_eq!(parse("9").unwrap(), Signal::SIGKILL);
        assert_eq!(parse("15").unwrap(), Signal::SIGTERM);
    }

    #[test]
    fn test_parse_unknown_is_an_error() {
        assert!(parse("NOPE").is_err());
        assert!(parse("999").is_err());
        assert!(parse("").is_err());
    }
}
