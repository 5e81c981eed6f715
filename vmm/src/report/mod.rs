//! What a finished run reports: how the guest ended ([`Outcome`]), what it did ([`RunReport`],
//! [`ExitStats`]), when each boot phase ended ([`timeline`]), and, after a crash, what the
//! guest was doing ([`crash`], with names from [`symbols`] and source lines from [`lines`]).
//!
//! This room only describes runs; it never touches a VM. The VM core fills a [`RunReport`].

pub(crate) mod core_dump;
pub(crate) mod crash;
pub(crate) mod lines;
pub mod stats;
pub(crate) mod symbols;
pub mod timeline;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
pub use timeline::Timeline;

/// How the guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The app exited with this code.
    Exited(i32),
    /// `--timeout` stopped it.
    TimedOut(Duration),
    /// It crashed; the report says how.
    Crashed(String),
    /// Its stdout was closed (`| head -1`): it stopped as SIGPIPE stops a process.
    BrokenPipe,
    /// The debugger killed it (gdb's `kill`): it stopped as SIGKILL stops a process.
    Killed,
}

impl Outcome {
    /// The `vmm` process exit status for this outcome.
    pub fn exit_status(&self) -> i32 {
        match self {
            Outcome::Exited(code) => code & 0xff,
            Outcome::TimedOut(_) => abi::exit_status::TIMEOUT,
            Outcome::Crashed(_) => abi::exit_status::CRASH,
            Outcome::BrokenPipe => abi::exit_status::BROKEN_PIPE,
            Outcome::Killed => 128 + libc::SIGKILL,
        }
    }

    /// What `vmm run` prints on stderr about this outcome (nothing for a normal exit).
    pub fn message(&self) -> Option<String> {
        match self {
            // A process that SIGPIPE stops says nothing either.
            Outcome::Exited(_) | Outcome::BrokenPipe => None,
            Outcome::TimedOut(limit) => Some(format!(
                "vmm: guest stopped: it ran longer than --timeout {limit:?}\n"
            )),
            Outcome::Crashed(text) => Some(format!("vmm: {text}")),
            Outcome::Killed => Some("vmm: guest killed by the debugger\n".to_owned()),
        }
    }
}

/// Counts of VM exits, for `--timeline` and the tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExitStats {
    /// `out` exits per port.
    pub io_out: BTreeMap<u16, u64>,
    /// `in` exits per port.
    pub io_in: BTreeMap<u16, u64>,
    /// MMIO exits.
    pub mmio: u64,
    /// Other exits.
    pub other: u64,
    /// Port accesses to no device.
    pub unknown_port_accesses: u64,
    /// Console bytes written by the guest.
    pub console_bytes: u64,
}

impl ExitStats {
    /// All exits counted.
    pub fn total(&self) -> u64 {
        self.io_out.values().sum::<u64>()
            + self.io_in.values().sum::<u64>()
            + self.mmio
            + self.other
    }
}

/// Everything a finished run reports.
#[derive(Debug)]
pub struct RunReport {
    /// How the guest ended.
    pub outcome: Outcome,
    /// Exit counts.
    pub stats: ExitStats,
    /// Phase instants.
    pub timeline: Timeline,
    /// Boot milestones reported by the guest.
    pub milestones: Vec<(u32, Instant)>,
    /// First console output.
    pub first_output: Option<Instant>,
    /// Guest RAM pages resident after the run (when measured).
    pub ram_pages_touched: Option<u64>,
    /// After a crash: the guest's registers at the fault, for a core file.
    pub(crate) crash: Option<Box<crash::CrashState>>,
}
