//! The flick VMM: boots a flick image in a KVM microVM whose vCPU starts at ring 3.
//!
//! The library's rooms, from the bottom up (see `docs/ARCHITECTURE.md` for the map):
//! - [`arch`]: the guest memory layout and the one-time setup a guest kernel would do itself
//!   (page tables, GDT, TSS, IDT, exception stubs, boot info, registers);
//! - [`memory`]: guest RAM and the image loader; [`snapshot`]: the snapshot file format,
//!   validation and mapping; [`files`]: opening untrusted files;
//! - [`vm`]: the VM core (KVM setup, run loop, exits, hypercalls, console, watchdog,
//!   teardown, saved vCPU state); `devices`: the port bus and its devices;
//! - [`report`]: outcomes, timelines, crash reports; [`sandbox`]: the seccomp filters;
//! - [`launch`]: the one way from a file to a VM, which every product calls;
//! - the products, side by side over the launcher: [`launch::run`] and [`launch::snapshot`]
//!   (`vmm run`, `vmm snapshot`), [`debug`] (`vmm run --gdb`), [`fleet`] and [`serve`].
//!
//! The API used by the `vmm` binary and by the tests: [`launch`], [`debug`], [`fleet`], [`serve`], [`net`],
//! [`Target`], [`Image`], [`Outcome`], [`RunReport`], [`Console`], [`error_chain`], the
//! error types, a guest's input ([`StdinSource`], [`VolumeSpec`], [`Volume`]), and [`fuzzing`]. Everything else is `pub(crate)`.

pub mod arch;
pub mod debug;
pub(crate) mod devices;
pub mod files;
pub mod fleet;
pub mod fuzzing;
pub mod launch;
pub mod memory;
pub mod report;

/// Networking for guests (`--net`): the settings ([`net::NetSpec`]), attaching to a tap by
/// name or taking an open tap fd ([`net::Tap`]), and the attached device settings that go
/// into [`vm::DeviceConfig::net`] ([`net::NetConfig`]).
pub mod net {
    pub use crate::devices::net::spec::DEFAULT_TX_RATE;
    pub use crate::devices::net::{MTU, NetConfig, NetError, NetSpec, Tap, TapSource};
}
pub mod sandbox;
pub mod serve;
pub mod size;
pub mod snapshot;
pub mod vm;

pub use devices::{SharedFd, StdinSource, Volume, VolumeError, VolumeRoots, VolumeSpec};
pub use launch::{LaunchError, RunConfig, Target};
pub use memory::image::{Image, ImageError};
pub use report::{Outcome, RunReport};
pub use vm::{Console, VmConfig, VmError};

/// An error and its causes on one line, `outer: inner: innermost`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // `#[error(transparent)]` wrappers repeat their source's text: say it once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_error_chain_says_each_cause_once() {
        let err = launch::LaunchError::from(launch::TargetError::from(
            memory::image::ImageError::Empty("x".into()),
        ));
        assert_eq!(error_chain(&err), "x is empty");
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let err = files::FileError::Io {
            path: "p".into(),
            source: io,
        };
        assert_eq!(error_chain(&err), "cannot read p: gone");
    }
}
